"""The unified-reconstruction switches do what they say: a noisy bottleneck makes the student's input (never
its target) random while training only; hard-point mining scales the gradient of the best-reconstructed
positions by its factor and leaves the rest and the loss's value alone (checked against the plain loss's
gradient, position by position)."""

from __future__ import annotations

import pytest
import torch

from unistad_edu.methods import build_model, make_config
from unistad_edu.methods.base import Batch
from unistad_edu.methods.rd import distillation_loss, position_cosine_distance

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher():
    from unistad_edu.teacher import load_teacher

    return load_teacher(precision="fp32")


@pytest.mark.parametrize("name", ["rd", "snl"])
def test_a_noisy_bottleneck_is_random_while_training_only(teacher, name):
    x = Batch(image=torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    noisy = build_model(name, teacher, image_size=64, bottleneck_dropout=0.3, bottleneck_jitter=0.0)
    # alpha 0 said explicitly: RD's preset has a jitter
    clean = build_model(name, teacher, image_size=64, bottleneck_jitter=0.0)
    noisy.train()
    a, b = noisy(x), noisy(x)
    assert any(
        not torch.equal(s1, s2) for s1, s2 in zip(a["student"], b["student"])
    )  # random input
    assert all(torch.equal(t1, t2) for t1, t2 in zip(a["teacher"], b["teacher"]))  # clean targets
    noisy.eval()
    a, b = noisy(x), noisy(x)
    assert all(torch.equal(s1, s2) for s1, s2 in zip(a["student"], b["student"]))
    clean.train()
    c, d = clean(x), clean(x)
    assert all(torch.equal(s1, s2) for s1, s2 in zip(c["student"], d["student"]))  # p = 0: no noise


def test_feature_jitter_hand_computed_scale_and_its_spread():
    """UniAD's rule by hand: f = (3, 4), alpha 2 -> sigma = 2 * 5 / 2 = 5; the added noise divided by sigma is a
    standard normal (mean 0, std 1 over 200 000 draws), every sample hit at prob 1, about half at prob 0.5."""
    from unistad_edu.layers import add_jitter, norm_jitter_sigma

    f = torch.tensor([[3.0, 4.0]])
    assert norm_jitter_sigma(f, 2.0, dim=-1).item() == pytest.approx(5.0)
    torch.manual_seed(0)
    x = torch.randn(400, 50, 10)  # (B, L, C)
    sigma = norm_jitter_sigma(x, 20.0, dim=-1)  # (B, L, 1)
    z = (add_jitter(x, sigma) - x) / sigma
    assert abs(z.mean().item()) < 0.01 and z.std().item() == pytest.approx(1.0, abs=0.01)
    hit = (add_jitter(x, sigma, prob=0.5) != x).flatten(1).any(dim=1)  # (B,)
    assert 0.4 < hit.float().mean().item() < 0.6
    assert torch.equal(add_jitter(x, sigma, prob=0.0), x)


def _student_outputs(name, out):
    """The student's predictions and the clean targets of a forward output, as two lists of tensors."""
    keys = {
        "rd": ("student", "teacher"),
        "snl": ("student", "teacher"),
        "unistad": (("global", "local"), ("target",)),
        "dual_student": ("preds", "targets"),
    }[name]
    if name == "unistad":
        return [out[k] for k in keys[0]], [out[k] for k in keys[1]]
    return list(out[keys[0]]), list(out[keys[1]])


@pytest.mark.parametrize(
    "name, switch",
    [
        ("rd", "bottleneck_jitter"),
        ("snl", "bottleneck_jitter"),
        ("unistad", "input_jitter"),
        ("dual_student", "bottleneck_jitter"),
    ],
)
def test_the_jitter_switch_is_random_while_training_only(teacher, name, switch):
    """The feature jitter as the noise of any reconstruction student: the student's predictions are random
    while training, its targets clean; in eval mode it is the clean model (same initial weights)."""
    small = (
        {"hidden_dim": 32, "num_heads": 4, "ffn_dim": 64, "dec_layers": 2, "ee_image_size": None}
        if name == "dual_student"
        else {}
    )
    x = Batch(image=torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    noisy = build_model(name, teacher, image_size=64, **small, **{switch: 20.0}).train()
    clean = build_model(name, teacher, image_size=64, **small, **{switch: 0.0}).train()
    (s1, t1), (s2, t2) = (_student_outputs(name, noisy(x)) for _ in range(2))
    assert any(not torch.equal(a, b) for a, b in zip(s1, s2))  # random input
    assert all(torch.equal(a, b) for a, b in zip(t1, t2))  # clean targets
    s3, _ = _student_outputs(name, clean(x))
    s4, _ = _student_outputs(name, clean(x))
    assert all(torch.equal(a, b) for a, b in zip(s3, s4))  # alpha 0: no noise
    # eval mode: the clean model (fresh ones: the training forwards above moved batch-norm statistics)
    noisy = build_model(name, teacher, image_size=64, **small, **{switch: 20.0}).eval()
    clean = build_model(name, teacher, image_size=64, **small, **{switch: 0.0}).eval()
    with torch.no_grad():
        s5, _ = _student_outputs(name, noisy(x))
        s6, _ = _student_outputs(name, clean(x))
    assert all(torch.equal(a, b) for a, b in zip(s5, s6))
    with pytest.raises(ValueError, match=switch):
        build_model(name, teacher, image_size=64, **small, **{switch: -1.0})


@pytest.mark.parametrize("rule", ["position", "flattened"])
@pytest.mark.parametrize("q, f", [(0.5, 0.1), (0.9, 0.0), (0.25, 0.5)])
def test_hard_mining_scales_the_gradient_of_the_easy_positions(rule, q, f):
    g = torch.Generator().manual_seed(3)
    t = [torch.randn(2, 5, 4, 4, generator=g), torch.randn(2, 7, 2, 2, generator=g)]
    s0 = [x + 0.5 * torch.randn(x.shape, generator=g) for x in t]
    plain = [x.clone().requires_grad_(True) for x in s0]
    mined = [x.clone().requires_grad_(True) for x in s0]
    lp = distillation_loss(t, plain, rule)
    lm = distillation_loss(t, mined, rule, hm_quantile=q, hm_factor=f)
    assert lm.item() == pytest.approx(lp.item())  # the value is unchanged
    lp.backward()
    lm.backward()
    for tl, sp, sm in zip(t, plain, mined):
        d = position_cosine_distance(tl, sp.detach())[:, 0]  # (B, h, w)
        easy = (d < torch.quantile(d.flatten(), q))[:, None].expand_as(sp)
        assert easy.any() and (~easy).any()
        torch.testing.assert_close(sm.grad[easy], f * sp.grad[easy])
        torch.testing.assert_close(sm.grad[~easy], sp.grad[~easy])


def test_the_presets_switches_and_their_ranges(teacher):
    # as chosen on the validation set: RD's cpu preset takes the loose loss, not the noisy bottleneck; RD4AD's
    # recipe (the paper preset) neither
    # and, over that, the noise as a feature jitter of alpha 5 (not the dropout)
    cfg = build_model("rd", teacher, image_size=64).cfg
    assert cfg.bottleneck_dropout == 0.0 and cfg.hm_quantile == 0.9 and cfg.bottleneck_jitter == 5.0
    paper = make_config("rd", "paper")
    assert paper.hm_quantile == 0.0 and paper.bottleneck_jitter == 0.0 and not paper.rdpp
    assert make_config("snl", "cpu").bottleneck_jitter == 0.0
    # the dual students' decoder: the jitter too (alpha 5), neither dropout nor mining; Dinomaly's recipe none
    dual, dual_paper = make_config("dual_student", "cpu"), make_config("dual_student", "paper")
    assert (dual.bottleneck_jitter, dual.bottleneck_dropout, dual.hm_quantile) == (5.0, 0.0, 0.0)
    assert (dual_paper.bottleneck_jitter, dual_paper.bottleneck_dropout) == (0.0, 0.2)
    for bad in ({"hm_quantile": 1.0}, {"hm_factor": 1.5}, {"bottleneck_dropout": 1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            build_model("rd", teacher, image_size=64, **bad)


def _leaf(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)


@pytest.mark.parametrize("q, f", [(0.5, 0.1), (0.9, 0.0)])
def test_uniad_loose_loss_scales_the_easy_positions_gradient(teacher, q, f):
    """UniAD's hm_quantile / hm_factor against its plain MSE on the same reconstruction: the same value; at the
    positions whose squared error (mean over channels) is below the quantile the gradient is f times the plain
    one, elsewhere equal."""
    target = torch.randn(2, 6, 4, 4, generator=torch.Generator().manual_seed(1))
    grads, values = {}, {}
    for name, kw in (
        ("plain", {"hm_quantile": 0.0}),
        ("mined", {"hm_quantile": q, "hm_factor": f}),
    ):
        model = build_model("uniad", teacher, image_size=64, **kw)
        rec = _leaf((2, 6, 4, 4), 2)
        model.forward = lambda batch, rec=rec: {"rec": rec, "target": target}
        loss = model.loss(Batch(image=None))
        loss.backward()
        grads[name], values[name] = rec.grad, loss.item()
    assert values["mined"] == pytest.approx(values["plain"])
    err = (_leaf((2, 6, 4, 4), 2).detach() - target).pow(2).mean(dim=1)  # (B, h, w)
    easy = (err < torch.quantile(err.flatten(), q))[:, None].expand_as(target)
    assert easy.any() and (~easy).any()
    torch.testing.assert_close(grads["mined"][easy], f * grads["plain"][easy])
    torch.testing.assert_close(grads["mined"][~easy], grads["plain"][~easy])


def test_unistad_loose_loss_scales_each_students_easy_tokens(teacher):
    """UniSTAD's mining on all three terms at once (distill, rec and the students' consistency): the loss value
    is unchanged; each student's gradient at its own best-predicted half of the tokens (cosine distance to the
    teacher, mean over levels) is 0.1 of the plain one, elsewhere equal."""
    from unistad_edu.layers import level_cosine_distance, to_tokens

    q, f = 0.5, 0.1
    model0 = build_model("unistad", teacher, image_size=64)
    C = sum(model0.level_channels)
    target = torch.randn(2, C, 4, 4, generator=torch.Generator().manual_seed(1))
    grads, values, preds = {}, {}, {}
    for name, kw in (
        ("plain", {"hm_quantile": 0.0}),
        ("mined", {"hm_quantile": q, "hm_factor": f}),
    ):
        model = build_model("unistad", teacher, image_size=64, **kw)
        g, loc = _leaf((2, C, 4, 4), 2), _leaf((2, C, 4, 4), 3)
        model.forward = lambda batch, g=g, loc=loc: {"target": target, "global": g, "local": loc}
        loss = model.loss(Batch(image=None))
        loss.backward()
        grads[name], values[name], preds = (
            {"global": g.grad, "local": loc.grad},
            loss.item(),
            {"global": g, "local": loc},
        )
    assert values["mined"] == pytest.approx(values["plain"])
    for k in ("global", "local"):
        d = level_cosine_distance(
            to_tokens(target), to_tokens(preds[k].detach()), model0.level_channels
        )
        d = d.reshape(2, 4, 4)
        easy = (d < torch.quantile(d.flatten(), q))[:, None].expand_as(target)
        assert easy.any() and (~easy).any()
        torch.testing.assert_close(grads["mined"][k][easy], f * grads["plain"][k][easy])
        torch.testing.assert_close(grads["mined"][k][~easy], grads["plain"][k][~easy])


def test_uniad_input_dropout_is_random_while_training_only(teacher):
    x = Batch(image=torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    noisy = build_model("uniad", teacher, image_size=64, jitter=False, input_dropout=0.5).train()
    a, b = noisy(x), noisy(x)
    assert torch.equal(a["target"], b["target"])  # the teacher's tokens are the clean target
    assert not torch.equal(a["input"], b["input"]) and not torch.equal(a["rec"], b["rec"])
    zeroed = a["input"] == 0
    share = zeroed.float().mean().item()
    assert 0.4 < share < 0.6  # about p of the token values dropped ...
    kept = ~zeroed  # ... the rest scaled by 1 / (1 - p)
    torch.testing.assert_close(a["input"][kept], 2 * a["target"][kept])
    noisy.eval()
    a, b = noisy(x), noisy(x)
    assert torch.equal(a["input"], a["target"]) and torch.equal(a["rec"], b["rec"])


def test_unistad_input_dropout_is_random_while_training_only(teacher):
    x = Batch(image=torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    noisy = build_model("unistad", teacher, image_size=64, input_dropout=0.3)
    noisy.train()
    a, b = noisy(x), noisy(x)
    assert not torch.equal(a["global"], b["global"]) and not torch.equal(a["local"], b["local"])
    assert torch.equal(a["target"], b["target"])  # the teacher tokens are the clean target
    noisy.eval()
    a, b = noisy(x), noisy(x)
    assert torch.equal(a["global"], b["global"]) and torch.equal(a["local"], b["local"])
    clean = build_model("unistad", teacher, image_size=64).train()
    assert torch.equal(
        clean(x)["global"], clean(x)["global"]
    )  # p = 0 (and no student dropout): no noise


@pytest.mark.parametrize(
    "name, bad",
    [
        ("uniad", {"hm_quantile": 1.0}),
        ("uniad", {"hm_factor": -0.1}),
        ("uniad", {"input_dropout": 1.0}),
        ("unistad", {"hm_quantile": -0.5}),
        ("unistad", {"input_dropout": 1.0}),
    ],
)
def test_the_new_switches_are_ranged(teacher, name, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_model(name, teacher, image_size=64, **bad)
    cfg = build_model(name, teacher, image_size=64).cfg
    # the cpu presets as chosen on the validation set: both take the loose loss, neither the input dropout
    assert cfg.hm_quantile == 0.9
    assert getattr(cfg, "input_dropout", 0.0) == 0.0


# ---- RD++'s projection (methods/rd_plus.py) -------------------------------------------------------------------
def test_rdpp_noise_is_one_rectangle_of_the_official_size_and_amplitude():
    """At 256 px RD++'s rectangles have sides 10..31 px; every changed pixel lies inside one such box and moved by
    at most 0.2; at 64 px the range shrinks to 7 px."""
    from unistad_edu.methods.rd_plus import noise_patches, patch_size_range

    assert patch_size_range(256) == (10, 31) and patch_size_range(64) == (7, 7)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 256, 256, generator=g)
    out = noise_patches(images, generator=g)
    diff = (out - images).abs()
    assert diff.max() <= 0.2 + 1e-6
    for d in diff.amax(dim=1):  # (256, 256) per image
        ys, xs = torch.nonzero(d > 0, as_tuple=True)
        h, w = int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1
        assert 10 <= h <= 31 and 10 <= w <= 31
        assert len(ys) > 0.9 * h * w  # a filled rectangle, not scattered pixels


def test_rdpp_losses_are_the_official_cosines_weighted():
    """Against torch's cosine_similarity by hand: reconstruct = mean per-position 1 - cos of the two projections,
    contrast = mean per image 1 - cos of the flattened noised teacher level and clean projection; weights 0.2 x
    (0.01, 0.1) / 1.11."""
    import torch.nn.functional as F

    from unistad_edu.methods.rd_plus import losses

    g = torch.Generator().manual_seed(1)
    shapes = [(3, 4, 8, 8), (3, 6, 4, 4)]
    tn, pn, pc = ([torch.randn(s, generator=g) for s in shapes] for _ in range(3))
    out = losses(tn, pn, pc, weight=0.2)
    rec = sum((1 - F.cosine_similarity(a, b, dim=1)).mean() for a, b in zip(pn, pc))
    con = sum(
        (1 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)).mean() for a, b in zip(tn, pc)
    )
    assert out["rdpp_reconstruct"].item() == pytest.approx(0.2 * 0.01 / 1.11 * rec.item(), rel=1e-5)
    assert out["rdpp_contrast"].item() == pytest.approx(0.2 * 0.1 / 1.11 * con.item(), rel=1e-5)


@pytest.mark.parametrize("name", ["rd", "snl"])
def test_rdpp_the_bottleneck_reads_the_projection_the_target_stays_the_teacher(teacher, name):
    x = Batch(image=torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)))
    plain = build_model(name, teacher, image_size=64, rdpp=False)
    assert plain.projection is None and not plain.needs_images and "projected" not in plain(x)
    # as chosen on the validation set: RD's cpu preset takes RD++'s projection, SNL's does not; RD4AD's
    # recipe has none
    assert make_config(name, "cpu").rdpp == (name == "rd") and not make_config(name, "paper").rdpp
    m = build_model(name, teacher, image_size=64, rdpp=True).eval()
    assert m.needs_images  # the noised copy goes through the teacher while training
    out = m(x)
    with torch.no_grad():
        expected = m.projection(out["teacher"])
        for a, b in zip(out["projected"], expected):
            torch.testing.assert_close(a, b)
        torch.nn.init.zeros_(m.projection.levels[0].net[0].weight)  # change the projection only
        again = m(x)
    assert all(torch.equal(a, b) for a, b in zip(out["teacher"], again["teacher"]))
    assert not torch.allclose(out["student"][0], again["student"][0])
    m.train()
    terms = m.loss_terms(x)
    assert {"rdpp_reconstruct", "rdpp_contrast"} <= set(terms)
    sum(terms.values()).backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0
        for p in m.projection.parameters()
        if p.dim() > 1
    )
    assert all(p.grad is None for p in m.teacher.parameters())


def test_rdpp_trains_from_the_cache_with_images_and_round_trips(teacher, tmp_path):
    """Through the engine (feature cache on, so the images are kept because the loss needs them): the projection
    learns, the teacher stays bit-identical, and the checkpoint loads with its projection."""
    from unistad_edu.checkpoint import load_checkpoint
    from unistad_edu.data import MVTecDataset
    from unistad_edu.engine import TrainConfig, fit
    from unistad_edu.synthetic import make_synthetic

    data = make_synthetic(
        tmp_path / "d", size=64, n_train=6, n_test_good=1, n_test_defect=1, categories=("bolt",)
    )
    train = MVTecDataset(data, "train", image_size=64)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    m = build_model("rd", teacher, image_size=64, rdpp=True, batch_size=3)
    w0 = m.projection.levels[1].net[0].weight.detach().clone()
    fit(
        m,
        train,
        TrainConfig(epochs=1, progress=False, precision="fp32", holdout_fraction=0.0),
        out=tmp_path / "r",
    )
    assert not torch.equal(w0, m.projection.levels[1].net[0].weight)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    loaded = load_checkpoint(tmp_path / "r", teacher=teacher)
    assert loaded.cfg.rdpp and torch.equal(
        loaded.projection.levels[1].net[0].weight, m.projection.levels[1].net[0].weight
    )


# ---- ReContrast's encoder (methods/recontrast.py) -----------------------------------------------------------
def test_recontrast_encoder_is_a_trainable_copy_at_a_scaled_learning_rate(teacher):
    from unistad_edu.engine import make_optimizer

    m = build_model("rd", teacher, image_size=64, recontrast=True, rdpp=False, lr=0.002)
    assert m.needs_images and build_model("rd", teacher, image_size=64).encoder is None
    mine, theirs = dict(m.encoder.state_dict()), teacher.pyramid.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(
        torch.equal(mine[k], theirs[k]) and mine[k].data_ptr() != theirs[k].data_ptr() for k in mine
    )
    assert all(p.requires_grad for p in m.encoder.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    m.train()
    assert (
        not m.encoder.training and m.decoder.training
    )  # the copy's BatchNorm keeps ImageNet's statistics
    lrs = sorted(g["lr"] for g in make_optimizer(m).param_groups)
    assert lrs == pytest.approx([0.002 * 1e-5 / 2e-3, 0.002])  # the official 1e-5 beside 2e-3
    with pytest.raises(ValueError, match="cannot both"):
        build_model("rd", teacher, image_size=64, recontrast=True, rdpp=True)
    with pytest.raises(ValueError, match="recontrast_lr_scale"):
        build_model(
            "rd", teacher, image_size=64, recontrast=True, rdpp=False, recontrast_lr_scale=0.0
        )


def test_recontrast_pairs_each_encoder_with_the_decoding_of_the_other(teacher):
    """In eval mode (BatchNorm per image) the decoder's output for the joint batch splits into what it makes of
    each encoder alone: the frozen levels are compared with the decoding of the trainable encoder's, the
    trainable encoder's with the decoding of the frozen teacher's."""
    m = build_model("rd", teacher, image_size=64, recontrast=True, rdpp=False).eval()
    with torch.no_grad():  # move the copy away from the teacher, so the two halves differ
        for p in m.encoder.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        x = Batch(image=torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4)))
        out = m(x)
        t = m.teacher_levels(x)
        feats = m.encoder(teacher.normalize(x.image))
        e = [feats[n].float() for n in teacher.layer_names]
        shapes = [tuple(f.shape[-2:]) for f in t]
        from_e = m.decoder(m.bottleneck(e), shapes)
        from_t = m.decoder(m.bottleneck(t), shapes)
    n = len(t)
    assert len(out["teacher"]) == len(out["student"]) == 2 * n
    for i in range(n):
        torch.testing.assert_close(out["teacher"][i], t[i])
        torch.testing.assert_close(out["teacher"][n + i], e[i])
        torch.testing.assert_close(out["student"][i], from_e[i].float(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out["student"][n + i], from_t[i].float(), rtol=1e-4, atol=1e-5)
    maps = m.anomaly_maps(x)
    assert list(maps) == [*teacher.layer_names, *(f"encoder.{k}" for k in teacher.layer_names)]


def test_recontrast_trains_the_copy_slowly_and_leaves_the_teacher(teacher, tmp_path):
    """Through the engine: the copy moves, the teacher stays bit-identical, the saved optimiser state holds the
    encoder's group at 0.005 x the scheduled learning rate, and the run loads with its trained copy."""
    from unistad_edu.checkpoint import load_checkpoint, load_train_state
    from unistad_edu.data import MVTecDataset
    from unistad_edu.engine import TrainConfig, fit, make_optimizer
    from unistad_edu.synthetic import make_synthetic

    data = make_synthetic(
        tmp_path / "d", size=64, n_train=6, n_test_good=1, n_test_defect=1, categories=("bolt",)
    )
    train = MVTecDataset(data, "train", image_size=64)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    m = build_model("rd", teacher, image_size=64, recontrast=True, rdpp=False, batch_size=3)
    fit(
        m,
        train,
        TrainConfig(epochs=1, progress=False, precision="fp32", holdout_fraction=0.0),
        out=tmp_path / "r",
    )
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    moved = [
        k
        for k, v in m.encoder.state_dict().items()
        if not torch.equal(v, teacher.pyramid.state_dict()[k])
    ]
    assert moved
    again = build_model("rd", teacher, image_size=64, recontrast=True, rdpp=False, batch_size=3)
    opt = make_optimizer(again)
    load_train_state(tmp_path / "r", again, opt)
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs[0] == pytest.approx(0.005 * lrs[1])
    loaded = load_checkpoint(tmp_path / "r", teacher=teacher)
    assert all(
        torch.equal(v, m.encoder.state_dict()[k]) for k, v in loaded.encoder.state_dict().items()
    )
