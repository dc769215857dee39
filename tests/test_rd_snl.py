"""RD and SNL: the distances and structural losses against hand-worked cases, CRAM, the switches (all off =
RD exactly), channels taken from the teacher, the RD4AD paper shapes, and train -> eval -> checkpoint
through the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unistad_edu.data import MVTecDataset
from unistad_edu.engine import TrainConfig, fit
from unistad_edu.inference import evaluate
from unistad_edu.layers import Bottleneck, Decoder, cosine_distance
from unistad_edu.methods import METHODS, build_model, make_config
from unistad_edu.methods.base import Batch
from unistad_edu.methods.rd import RD, position_cosine_distance
from unistad_edu.methods.snl import (
    CRAM,
    SNL,
    channel_cosine_distance,
    cross_level_affinity,
    inter_affinity_loss,
    intra_affinity_loss,
    position_affinity,
)

ALL_OFF = dict(spatial_channel=False, intra_affinity=False, inter_affinity=False, cram=False)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for this module


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def feats64(lite0_teacher):
    """Lite0 features of two 64 px images, as the engine's cache serves them (grids 16, 8, 4)."""
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    return images, lite0_teacher(images)


# ---- distances -------------------------------------------------------------------------------------------
def test_cosine_distance_is_one_minus_cos_and_safe_at_zero():
    a, b = _rand(5, 7, seed=1), _rand(5, 7, seed=2)
    expect = 1 - F.cosine_similarity(a, b, dim=1)
    torch.testing.assert_close(cosine_distance(a, b, dim=1).squeeze(1), expect)
    assert cosine_distance(a, 3 * a, dim=1).abs().max() < 1e-6  # scale does not matter
    torch.testing.assert_close(
        cosine_distance(a, -a, dim=1), torch.full((5, 1), 2.0)
    )  # opposite: 2
    z = torch.zeros(1, 4)
    assert cosine_distance(z, z, dim=1).item() == 0  # two dead vectors agree (1 - cos would say 1)
    assert cosine_distance(z, torch.ones(1, 4), dim=1).item() == pytest.approx(0.5)


def test_position_and_channel_cosine_see_different_things():
    t = _rand(2, 6, 4, 4, seed=3)
    assert position_cosine_distance(t, t).abs().max() < 1e-6
    assert channel_cosine_distance(t, t).abs().max() < 1e-6
    # scale every position by its own positive factor: each channel vector keeps its direction -> the
    # per-position distance is 0, but each channel's spatial map changes shape -> the per-channel one is not
    scale = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(4)) * 5 + 0.1
    s = t * scale
    assert position_cosine_distance(t, s).abs().max() < 1e-5
    assert channel_cosine_distance(t, s).min() > 1e-3
    # and the other way round: scale every channel -> channel maps keep their shape, position vectors turn
    s = t * torch.linspace(0.2, 4, 6).view(1, 6, 1, 1)
    assert channel_cosine_distance(t, s).abs().max() < 1e-5
    assert position_cosine_distance(t, s).mean() > 1e-3
    # hand-worked: flip the sign of channel 2 -> that channel's cosine is -1 (distance 2), others 0
    s = t.clone()
    s[:, 2] *= -1
    d = channel_cosine_distance(t, s)  # (B, C)
    assert d.shape == (2, 6)
    torch.testing.assert_close(d[:, 2], torch.full((2,), 2.0))
    assert d[:, [0, 1, 3, 4, 5]].abs().max() < 1e-6


# ---- affinities -------------------------------------------------------------------------------------------
def test_intra_affinity_zero_for_identical_positive_otherwise():
    t = _rand(2, 8, 6, 6, seed=5)
    assert intra_affinity_loss(t, t.clone()) == 0
    # an affinity compares *relations*: an orthogonal mix of the channels and a positive scale per position
    # leave every position-position cosine unchanged
    q, _ = torch.linalg.qr(_rand(8, 8, seed=6))
    s = torch.einsum("dc,bchw->bdhw", q, t) * (torch.rand(2, 1, 6, 6) + 0.5)
    assert intra_affinity_loss(t, s) < 1e-10
    assert intra_affinity_loss(t, _rand(2, 8, 6, 6, seed=7)) > 1e-3
    # hand-worked: two positions, orthogonal in the teacher (cos 0), parallel in the student (cos 1):
    # both off-diagonal entries differ by 1 -> mean squared difference 1
    t2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)  # (B, C, h, w): position j = e_j
    s2 = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 2, 1, 2)  # both positions = e_0
    assert intra_affinity_loss(t2, s2).item() == pytest.approx(1.0)
    torch.testing.assert_close(position_affinity(t2)[0], torch.eye(2))


def test_intra_affinity_subsampling_is_unbiased():
    t, s = _rand(2, 8, 8, 8, seed=8), _rand(2, 8, 8, 8, seed=9)  # 64 positions
    full = intra_affinity_loss(t, s, max_positions=64).item()
    torch.manual_seed(0)
    draws = [intra_affinity_loss(t, s, max_positions=12).item() for _ in range(400)]
    assert len(set(draws)) > 10  # a fresh subset each call
    assert np.mean(draws) == pytest.approx(
        full, rel=0.05
    )  # the mean over draws is the full-grid loss
    assert intra_affinity_loss(t, t, max_positions=12) == 0


def test_inter_affinity_zero_for_identical_positive_otherwise():
    fine, coarse = _rand(2, 4, 8, 8, seed=10), _rand(2, 6, 4, 4, seed=11)
    g = cross_level_affinity(fine, coarse)
    assert g.shape == (2, 4, 6)  # channel x channel, across levels of different widths
    # hand-worked: a fine channel that is the coarse channel repeated in 2 x 2 blocks, pooled back to the
    # coarse grid, is that channel -> cosine 1
    rep = F.interpolate(coarse[:, :1], scale_factor=2, mode="nearest")  # (B, 1, 8, 8)
    torch.testing.assert_close(cross_level_affinity(rep, coarse)[:, 0, 0], torch.ones(2))
    t = [fine, coarse]
    assert inter_affinity_loss(t, [fine.clone(), coarse.clone()]) == 0
    # a positive scale per channel does not change which places a channel fires at
    scaled = [fine * torch.rand(1, 4, 1, 1).add(0.5), coarse * torch.rand(1, 6, 1, 1).add(0.5)]
    assert inter_affinity_loss(t, scaled) < 1e-10
    assert inter_affinity_loss(t, [_rand(2, 4, 8, 8, seed=12), coarse]) > 1e-3


# ---- CRAM ----------------------------------------------------------------------------------------------------
def test_cram_shapes_assignment_and_gradients():
    torch.manual_seed(0)
    cram = CRAM(dim=16, centres=5, alpha=10.0)
    x = _rand(3, 16, 4, 4, seed=13)
    z, compact, a = cram(x)
    assert z.shape == (3, 16, 4, 4) and a.shape == (3, 5, 4, 4) and compact.ndim == 0
    torch.testing.assert_close(
        a.sum(1), torch.ones(3, 4, 4)
    )  # a soft assignment over the K centres
    # gradient reaches the centres through the rebuilt embedding and through the compactness loss
    z.pow(2).sum().backward()
    assert cram.centres.grad is not None and cram.centres.grad.abs().sum() > 0
    cram.centres.grad = None
    cram(x)[1].backward()
    assert cram.centres.grad.abs().sum() > 0


def test_cram_matches_a_brute_force_netvlad_rebuild():
    """z_i = sum_k a_ik (c_k + beta V_k), V_k = sum_j a_jk (x_j - c_k) / sum_j a_jk, a = softmax_k(alpha cos),
    computed position by position and centre by centre in float64."""
    torch.manual_seed(0)
    x = _rand(2, 6, 3, 3, seed=15)
    for beta in (0.0, 0.3, 1.0):
        cram = CRAM(dim=6, centres=4, alpha=5.0, residual=beta)
        z, compact, a = cram(x)
        c = F.normalize(cram.centres.detach().double(), dim=1).numpy()  # (K, D)
        for b in range(2):
            xs = F.normalize(x[b].double().flatten(1), dim=0).numpy().T  # (N, D)
            logits = 5.0 * xs @ c.T  # (N, K)
            A = np.exp(logits - logits.max(1, keepdims=True))
            A /= A.sum(1, keepdims=True)
            V = [sum(A[i, k] * (xs[i] - c[k]) for i in range(9)) / A[:, k].sum() for k in range(4)]
            ref = np.stack(
                [sum(A[i, k] * (c[k] + beta * V[k]) for k in range(4)) for i in range(9)]
            )  # (N, D)
            np.testing.assert_allclose(z[b].detach().flatten(1).T.numpy(), ref, atol=1e-5)
            np.testing.assert_allclose(a[b].detach().flatten(1).T.numpy(), A, atol=1e-6)


def test_cram_pulls_an_off_centre_input_towards_its_centre():
    """Centres e1, e2 in 4-d, hard assignment. An image whose every position is u = (e1 + e3) / sqrt(2), off
    both centres (cos 0.707 to e1): with beta = 0.5 its code is 0.5 e1 + 0.5 u (hand-computed), cos 0.924 to
    e1 -- pulled half-way to the centre; with beta = 1 (our first version) the centres cancel and u passes
    on unchanged. And the code moves with the centre (weight 1 - beta) while the assignment stays."""
    e = torch.eye(4)
    u = F.normalize(e[0] + e[2], dim=0)
    x = u.view(1, 4, 1, 1).expand(1, 4, 2, 2)
    cram = CRAM(dim=4, centres=2, alpha=200.0, residual=0.5)
    with torch.no_grad():
        cram.centres.copy_(e[:2])
    z, compact, a = cram(x)
    assert a[:, 0].min() > 0.999 and compact.item() == pytest.approx(1 - 0.5**0.5, abs=1e-4)
    want = torch.tensor([0.5 + 0.5 * 0.5**0.5, 0.0, 0.5 * 0.5**0.5, 0.0])  # (0.854, 0, 0.354, 0)
    torch.testing.assert_close(z[0, :, 0, 0], want, atol=1e-4, rtol=0)
    assert F.cosine_similarity(z[0, :, 0, 0], e[0], dim=0).item() == pytest.approx(0.9239, abs=1e-4)
    cram.residual = 1.0
    torch.testing.assert_close(cram(x)[0][0, :, 0, 0], u, atol=1e-4, rtol=0)  # nothing pulled
    # one anomalous position among normal ones (3 on e1, 1 at u): its code keeps 1/8 of u's e3 part, not all
    cram.residual = 0.5
    mixed = torch.stack([e[0], e[0], e[0], u], dim=1).view(1, 4, 2, 2)
    z = cram(mixed)[0][0].flatten(1)  # (4, N)
    assert z[2, 3].item() == pytest.approx(
        0.5 * 0.25 * 0.5**0.5, abs=1e-4
    )  # beta * (1/4) * u's e3 part
    # the centre's role: rotate centre 0 a little towards e2 (u still assigned to it): the code follows
    with torch.no_grad():
        cram.centres.copy_(torch.stack([F.normalize(e[0] + 0.1 * e[1], dim=0), e[1]]))
    c0 = F.normalize(e[0] + 0.1 * e[1], dim=0)
    m0 = u  # the image's cluster mean (every position at u)
    torch.testing.assert_close(cram(x)[0][0, :, 0, 0], c0 + 0.5 * (m0 - c0), atol=1e-4, rtol=0)


# ---- the models -------------------------------------------------------------------------------------------
def test_rd_channels_follow_the_teacher(feats64, lite0_teacher):
    images, feats = feats64
    model = build_model("rd", lite0_teacher, image_size=64)
    assert model.channels == [lv.channels for lv in lite0_teacher.feature_info] == [24, 40, 112]
    assert model.embed_channels == 224
    out = model(Batch(image=None, features=feats))  # needs_images=False: the engine passes no image
    assert [tuple(s.shape) for s in out["student"]] == [
        tuple(feats[n].shape) for n in lite0_teacher.layer_names
    ]
    assert out["embedding"].shape == (2, 224, 2, 2)
    # a different backbone: other channels, nothing hard-coded
    from unistad_edu import load_teacher

    r18 = load_teacher("resnet18", weights=None)
    m = build_model("rd", r18, image_size=64)
    out = m(Batch(image=images))
    assert [s.shape[1] for s in out["student"]] == [64, 128, 256] == m.channels
    maps = m.anomaly_maps(Batch(image=images))
    assert [tuple(v.shape) for v in maps.values()] == [(2, 1, 16, 16), (2, 1, 8, 8), (2, 1, 4, 4)]


def test_rd_loss_and_maps_are_one_minus_cos(feats64, lite0_teacher):
    _, feats = feats64
    model = build_model("rd", lite0_teacher, image_size=64, rd_loss="position", rdpp=False).eval()
    batch = Batch(image=None, features=feats)
    out = model(batch)
    maps = model.anomaly_maps(batch)
    expect_loss = 0.0
    for name, s in zip(lite0_teacher.layer_names, out["student"]):
        cos = F.cosine_similarity(feats[name], s, dim=1)  # (B, h, w)
        torch.testing.assert_close(maps[name][:, 0], 1 - cos, atol=1e-5, rtol=1e-4)
        expect_loss += (1 - cos).mean()
    torch.testing.assert_close(model.loss(batch), expect_loss, atol=1e-5, rtol=1e-4)
    assert model.cfg.scoring.fuse == "sum" and model.cfg.scoring.blur_sigma == 4.0
    res = model.score(Batch(image=torch.zeros(2, 3, 64, 64), features=feats))
    assert res.anomaly_map.shape == (2, 1, 64, 64)


def test_rd_flattened_loss_is_the_official_per_image_cosine(feats64, lite0_teacher):
    """rd_loss="flattened": per level, 1 - cos of the whole level flattened per image (RD4AD's loss_fucntion,
    written here with torch's CosineSimilarity on .view(B, -1)), the mean over images, summed over levels;
    the map stays the per-position one. SNL's base term follows the same switch."""
    _, feats = feats64
    batch = Batch(image=None, features=feats)
    model = build_model("rd", lite0_teacher, image_size=64, rd_loss="flattened", rdpp=False).eval()
    with torch.no_grad():
        out = model(batch)
    cos = torch.nn.CosineSimilarity()
    want = sum(
        torch.mean(1 - cos(feats[n].view(feats[n].shape[0], -1), s.view(s.shape[0], -1)))
        for n, s in zip(lite0_teacher.layer_names, out["student"])
    )
    terms = model.loss_terms(batch)
    assert list(terms) == ["flattened_cosine"]
    torch.testing.assert_close(terms["flattened_cosine"], want, atol=1e-5, rtol=1e-4)
    position = build_model(
        "rd", lite0_teacher, image_size=64, rd_loss="position", rdpp=False
    ).eval()  # same weights (init_seed), Eq. 2
    with torch.no_grad():
        assert (
            abs(position.loss(batch).item() - want.item()) > 1e-3
        )  # a different quantity, the same outputs
    torch.testing.assert_close(
        model.anomaly_maps(batch)[lite0_teacher.layer_names[0]],
        position.anomaly_maps(batch)[lite0_teacher.layer_names[0]],
    )
    snl = build_model("snl", lite0_teacher, image_size=64, rd_loss="flattened", **ALL_OFF).eval()
    torch.testing.assert_close(snl.loss(batch), want, atol=1e-5, rtol=1e-4)
    assert (
        make_config("rd", "paper").rd_loss == "flattened"
        and make_config("rd", "cpu").rd_loss == "flattened"  # chosen on validation
        and make_config("snl", "cpu").rd_loss == "position"  # chosen on validation
    )
    with pytest.raises(ValueError, match="rd_loss"):
        make_config("rd", "cpu", rd_loss="per-image")


def test_rd4ad_paper_shapes():
    cfg = make_config("rd", "paper")
    assert (
        cfg.teacher,
        cfg.image_size,
        cfg.optimizer,
        cfg.lr,
        cfg.betas,
        cfg.batch_size,
        cfg.epochs,
    ) == ("wide_resnet50_2", 256, "adam", 0.005, (0.5, 0.999), 16, 200)
    # WideResNet-50 layers 1-3 (channels from its feature_info; not built here, 68 M parameters)
    ch, st = [256, 512, 1024], [4, 8, 16]
    bott = Bottleneck(ch, st, cfg.embed_channels, cfg.oce_blocks, cfg.block_width)
    assert bott.mff.out_channels == 3072  # RD4AD: 3 x 1024 concatenated
    t = [torch.zeros(1, c, 64 // s, 64 // s) for c, s in zip(ch, st)]
    with torch.no_grad():
        z = bott.eval()(t)
    assert z.shape == (1, 2048, 2, 2)
    assert len(bott.oce) == 3 and bott.oce[0].body[3].stride == (2, 2)
    dec = Decoder(2048, ch, list(cfg.decoder_blocks), cfg.block_width, cfg.linear_outputs)
    assert [len(s) for s in dec.stages] == [3, 4, 6]  # coarse -> fine, as RD4AD's de-ResNet
    assert dec.stages[0][0].body[3].in_channels == 512  # wide bottleneck width = out / 2


def test_snl_all_switches_off_is_rd(feats64, lite0_teacher):
    _, feats = feats64
    batch = Batch(image=None, features=feats)
    rd = build_model(
        "rd", lite0_teacher, image_size=64, rd_loss="position", rdpp=False
    ).eval()  # SNL's loss rule (and no RD++ projection, as SNL's preset)
    snl = build_model("snl", lite0_teacher, image_size=64, **ALL_OFF).eval()
    a, b = rd.state_dict(), snl.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    torch.testing.assert_close(snl.loss(batch), rd.loss(batch))
    assert list(snl.terms_from(snl(batch))) == ["position_cosine"]
    # SNL with everything on keeps RD's weights too (CRAM is drawn after them)
    full = build_model("snl", lite0_teacher, image_size=64)
    c = full.state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert {k for k in c if k not in a} == {"cram.centres"}


@pytest.mark.parametrize(
    "switch,term",
    [
        ("spatial_channel", "channel_cosine"),
        ("intra_affinity", "intra_affinity"),
        ("inter_affinity", "inter_affinity"),
        ("cram", "cram"),
    ],
)
def test_each_switch_adds_its_term_with_its_weight(feats64, lite0_teacher, switch, term):
    _, feats = feats64
    batch = Batch(image=None, features=feats)
    base = build_model("snl", lite0_teacher, image_size=64, **ALL_OFF).eval()
    on = build_model("snl", lite0_teacher, image_size=64, **{**ALL_OFF, switch: True}).eval()
    on2 = build_model(
        "snl", lite0_teacher, image_size=64, **{**ALL_OFF, switch: True, f"{switch}_weight": 2.0}
    ).eval()
    t1, t2 = on.terms_from(on(batch)), on2.terms_from(on2(batch))
    assert set(t1) == {"position_cosine", term}
    assert t1[term] > 0
    w1 = getattr(on.cfg, f"{switch}_weight")  # the default weight (CRAM's is 0.1)
    torch.testing.assert_close(
        t2[term], (2.0 / w1) * t1[term]
    )  # the weight scales exactly its term
    if switch == "cram":  # the module changes what the decoder sees, so the base term changes too
        assert any(n.startswith("cram.") for n, _ in on.named_parameters())
        assert not any(n.startswith("cram.") for n, _ in base.named_parameters())
        assert not torch.allclose(t1["position_cosine"], base.loss(batch))
    else:  # a loss term only: the model is the same, the loss grows by exactly the term
        torch.testing.assert_close(on.loss(batch), base.loss(batch) + t1[term])
    # and the term's value is the standalone loss on the same teacher/student levels
    out = on(batch)
    if switch == "intra_affinity":  # 64 px: grids of 256 positions or fewer -> no sampling
        expect = sum(intra_affinity_loss(t, s) for t, s in zip(out["teacher"], out["student"]))
        torch.testing.assert_close(on.terms_from(out)[term], expect)


def test_snl_gradients_and_frozen_teacher(feats64, lite0_teacher):
    _, feats = feats64
    model = build_model("snl", lite0_teacher, image_size=64).train()
    assert model.needs_images is False and RD.needs_images is False
    model.loss(Batch(image=None, features=feats)).backward()
    assert model.cram.centres.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.trainable_parameters())
    assert all(p.grad is None and not p.requires_grad for p in lite0_teacher.parameters())
    assert not lite0_teacher.training


# ---- train -> eval -> checkpoint through the engine -----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    from unistad_edu.synthetic import make_synthetic

    data = make_synthetic(
        tmp_path_factory.mktemp("syn") / "syn", size=64, n_train=8, n_test_good=2, n_test_defect=2
    )
    return MVTecDataset(data, "train", image_size=64), MVTecDataset(data, "test", image_size=64)


@pytest.mark.parametrize("name", ["rd", "snl"])
def test_fit_and_evaluate(lite0_teacher, tiny_set, tmp_path, name):
    assert METHODS[name] is {"rd": RD, "snl": SNL}[name]
    train, test = tiny_set
    model = build_model(name, lite0_teacher, image_size=64, batch_size=8)
    res = fit(model, train, TrainConfig(epochs=2, progress=False), out=tmp_path / "run")
    losses = [h["loss"] for h in res.history]
    assert len(losses) == 2 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert res.threshold is not None and np.isfinite(res.threshold)
    table = evaluate(model, test, progress=False)
    assert table["method"] == name and set(table["categories"]) == set(test.categories)
    vals = [v for v in table["mean"].values() if v is not None]
    assert vals and all(np.isfinite(v) and 0 <= v <= 1 for v in vals)
    # the checkpoint round trip (and trained != fresh) of every method: tests/test_contract.py
