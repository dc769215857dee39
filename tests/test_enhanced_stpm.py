"""Enhanced STPM: both teachers frozen and different, pair 1 is STPM exactly, the attention student, the
three combination rules against hand-combined maps, the reconstruction pair (pasted anomalies in, the clean
teacher as the target), the normal scales from the held-out images, and train -> eval ->
checkpoint (with the second teacher's weights checked) through the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from unistad_edu.data import MVTecDataset
from unistad_edu.engine import TrainConfig, fit
from unistad_edu.inference import evaluate
from unistad_edu.methods import METHODS, build_model, make_config
from unistad_edu.methods.base import Batch
from unistad_edu.methods.enhanced_stpm import CBAM, EnhancedSTPM, NonLocal, load_teacher2
from unistad_edu.methods.stpm import STPM
from unistad_edu.scoring import ScoringConfig, score

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for this module


@pytest.fixture(scope="module")
def lite1_teacher():
    return load_teacher2("tf_efficientnet_lite1")  # the cpu preset's second teacher, offline


def _model(t1, t2, **kw):
    cfg = make_config("enhanced_stpm", "cpu", **{"image_size": 64, **kw})
    return EnhancedSTPM(t1, cfg, teacher2=t2)


def _eq1(t, s, names):
    """STPM's Eq. 1 written out: sum over levels of 0.5 / (h w) sum_{c,h,w} (t/|t| - s/|s|)^2, batch mean."""
    total = 0.0
    for name in names:
        a, b = t[name].float(), s[name].float()
        a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
        total = total + 0.5 * ((a - b) ** 2).sum(dim=(1, 2, 3)).mean() / (a.shape[-2] * a.shape[-1])
    return total


@pytest.fixture(scope="module")
def batch64():
    return Batch(image=torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))


def test_second_teacher_loads_offline_and_differs(lite0_teacher, lite1_teacher):
    d = lite1_teacher.describe()
    assert d["name"] == "tf_efficientnet_lite1" and "lite1" in d["weights_source"]
    assert d["weights_hash"] != lite0_teacher.weights_hash
    assert [lv.stride for lv in lite1_teacher.feature_info] == [4, 8, 16]
    cfg = make_config("enhanced_stpm", "paper")
    assert (cfg.teacher, cfg.teacher2, cfg.optimizer, cfg.lr, cfg.epochs) == (
        "resnet18",
        "resnet34",
        "sgd",
        0.4,
        100,
    )


def test_both_teachers_frozen(lite0_teacher, lite1_teacher, batch64):
    model = _model(lite0_teacher, lite1_teacher)
    assert model.teacher is lite0_teacher and model.teacher2 is lite1_teacher
    before = [p.detach().clone() for t in (lite1_teacher, lite0_teacher) for p in t.parameters()]
    model.train()
    for t in (model.teacher, model.teacher2):
        assert not t.training and not any(
            m.training for m in t.modules()
        )  # BatchNorm stays in eval
        assert not any(p.requires_grad for p in t.parameters())
    assert model.student.training and model.pair2.student.training
    trainable = {id(p) for p in model.trainable_parameters()}
    assert not trainable & {id(p) for t in (lite0_teacher, lite1_teacher) for p in t.parameters()}
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
    for _ in range(2):
        loss = model.loss(batch64)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = list(lite1_teacher.parameters()) + list(lite0_teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert all(p.grad is None for p in after)
    assert all(p.grad is not None for p in model.trainable_parameters())  # both students learn
    # neither teacher is saved in a checkpoint
    keys = model.state_for_checkpoint()
    assert not any(k.startswith(("teacher.", "pair2.teacher.")) for k in keys)
    assert any(k.startswith("pair2.student.") for k in keys) and any(
        k.startswith("student.") for k in keys
    )


def test_pair1_is_stpm_and_pair2_loss_adds(lite0_teacher, lite1_teacher, batch64):
    model = _model(lite0_teacher, lite1_teacher, pair2_weight=0.0).eval()
    stpm = build_model("stpm", lite0_teacher, image_size=64).eval()
    stpm.load_from_checkpoint(
        {k: v for k, v in model.state_dict().items() if k.startswith("student.")}
    )
    torch.testing.assert_close(
        model.loss(batch64), stpm.loss(batch64)
    )  # pair 1 = STPM's Eq. 1 loss
    p1 = STPM.anomaly_maps(stpm, batch64)
    maps = model.level_maps(batch64)
    assert list(maps) == [f"p1.{n}" for n in lite0_teacher.layer_names] + [
        f"p2.{n}" for n in lite1_teacher.layer_names
    ]
    for n in lite0_teacher.layer_names:
        torch.testing.assert_close(maps[f"p1.{n}"], p1[n])
    # pair 2's term is STPM's Eq. 1 on teacher 2 (its own features, never the cached teacher-1 ones), written out
    full = _model(lite0_teacher, lite1_teacher, pair2_weight=1.0, pair2_student="forward").eval()
    cached = Batch(image=batch64.image, features=lite0_teacher(batch64.image))
    x = batch64.image

    with torch.no_grad():
        pair2 = _eq1(
            lite1_teacher(x),
            full.pair2.student(lite1_teacher.normalize(x)),
            lite1_teacher.layer_names,
        )
    terms = full.loss_terms(cached)
    torch.testing.assert_close(terms["pair1"], model.loss(batch64))
    torch.testing.assert_close(terms["pair2"], pair2, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(full.loss(cached), terms["pair1"] + terms["pair2"])
    assert pair2 > 0


def test_reconstruction_pair_sees_anomalies_and_matches_the_clean_teacher(
    lite0_teacher, lite1_teacher, batch64
):
    from unistad_edu.methods.enhanced_stpm import paste_anomalies

    x = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    assert torch.equal(paste_anomalies(x, 0.0, (0.02, 0.15)), x)  # prob 0: untouched
    out = paste_anomalies(x, 1.0, (0.05, 0.10), torch.Generator().manual_seed(0))
    assert torch.equal(
        x, torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    )  # input kept
    for i in range(
        6
    ):  # prob 1: every image differs inside one rectangle of the asked area, nowhere else
        changed = (out[i] != x[i]).any(dim=0)  # (H, W)
        rows, cols = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
        assert len(rows) and len(cols)
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert h * w <= 0.10 * 64 * 64 * 1.25 and 2 <= h and 2 <= w
        assert not changed[: rows[0]].any() and not changed[rows[-1] + 1 :].any()
    # in training, pair 2's student gets the pasted image, its teacher the clean one; pair 1 is untouched
    model = _model(
        lite0_teacher,
        lite1_teacher,
        pair2_input="anomalous",
        anomaly_prob=1.0,
        pair2_student="forward",
    ).train()
    clean = _model(
        lite0_teacher, lite1_teacher, pair2_input="clean", pair2_student="forward"
    ).train()
    with torch.no_grad():
        got = model.loss_terms(batch64)
        x2 = paste_anomalies(
            batch64.image, 1.0, model.cfg.anomaly_area, torch.Generator().manual_seed(1)
        )
        expect = _eq1(
            lite1_teacher(batch64.image),
            model.pair2.student(lite1_teacher.normalize(x2)),
            lite1_teacher.layer_names,
        )
        plain = clean.loss_terms(batch64)
    torch.testing.assert_close(got["pair2"], expect, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got["pair1"], plain["pair1"])
    assert not torch.allclose(
        got["pair2"], plain["pair2"]
    )  # the pasted patches changed pair 2's task


def test_reconstruction_decoder_rebuilds_the_second_teacher_from_its_own_features(
    lite0_teacher, lite1_teacher, batch64
):
    """The default pair 2 (``pair2_student="decoder"``): its student reads only the second teacher's features of
    the clean image (normal images in training) and rebuilds every level; its loss term is STPM's Eq. 1 between
    the teacher and that rebuild, written out here."""
    from unistad_edu.methods.enhanced_stpm import AttentionDecoder

    model = _model(lite0_teacher, lite1_teacher).eval()
    assert model.cfg.pair2_student == "decoder" and model.cfg.pair2_input == "clean"
    assert (
        isinstance(model.pair2.student, AttentionDecoder)
        and len(model.pair2.student.attention) == 2
    )
    x = batch64.image
    with torch.no_grad():
        t2 = lite1_teacher(x)
        rebuilt = model.pair2.student(t2)
        terms = model.loss_terms(batch64)
    assert [tuple(rebuilt[n].shape) for n in lite1_teacher.layer_names] == [
        tuple(t2[n].shape) for n in lite1_teacher.layer_names
    ]
    torch.testing.assert_close(
        terms["pair2"], _eq1(t2, rebuilt, lite1_teacher.layer_names), rtol=1e-4, atol=1e-6
    )


def test_decoder_attention_fills_a_position_in_from_far_away():
    """At 256 px (embedding 8 x 8) the convolutions alone never carry a change in the bottom-right corner of
    the input levels to the top-left output position; one self-attention layer at the bottleneck does."""
    from types import SimpleNamespace

    from unistad_edu.methods.enhanced_stpm import AttentionDecoder

    levels = [
        SimpleNamespace(name=n, channels=c, stride=s)
        for n, c, s in (("a", 8, 4), ("b", 16, 8), ("c", 32, 16))
    ]
    g = torch.Generator().manual_seed(0)
    feats = {
        lv.name: torch.randn(1, lv.channels, 256 // lv.stride, 256 // lv.stride, generator=g)
        for lv in levels
    }
    moved = {k: v.clone() for k, v in feats.items()}
    for k in moved:
        moved[k][..., -4:, -4:] += 5.0  # the bottom-right corner of every level
    for layers, reaches in ((0, False), (1, True)):
        dec = AttentionDecoder(levels, seed=0, attn_layers=layers, heads=4).eval()
        with torch.no_grad():
            a, b = (
                dec(feats)["a"][..., :4, :4],
                dec(moved)["a"][..., :4, :4],
            )  # top-left of the finest level
        assert (not torch.allclose(a, b, atol=1e-6)) == reaches, layers


def test_attention_student(lite0_teacher, lite1_teacher):
    model = _model(lite0_teacher, lite1_teacher, pair2_student="forward")
    for lv in lite1_teacher.feature_info:
        stage = model.pair2.student.model.get_submodule(lv.name)
        assert isinstance(stage, nn.Sequential) and isinstance(stage[1], CBAM)
    assert not any(
        isinstance(m, CBAM) for m in model.student.modules()
    )  # pair 1 stays a plain STPM student
    plain = _model(lite0_teacher, lite1_teacher, attention="none", pair2_student="forward")
    assert not any(isinstance(m, (CBAM, NonLocal)) for m in plain.modules())
    # CBAM with zeroed weights gates by sigmoid(0) twice: x * 0.5 * 0.5
    cbam = CBAM(8)
    for p in cbam.parameters():
        nn.init.zeros_(p)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(cbam(x), 0.25 * x)
    # the non-local block starts as the identity and, once its output conv is non-zero, lets a position
    # see far-away ones (a convolution of its size could not)
    nl = NonLocal(8, grid=4)
    torch.testing.assert_close(nl(x), x)
    nn.init.normal_(nl.out.weight)
    far = x.clone()
    far[:, :, 4, 4] += 3.0
    assert (nl(far)[:, :, 0, 0] - nl(x)[:, :, 0, 0]).abs().max() > 1e-4


def test_paper_preset_on_random_resnets():
    from unistad_edu import load_teacher

    r18, r34 = load_teacher("resnet18", weights=None), load_teacher("resnet34", weights=None)
    model = EnhancedSTPM(
        r18,
        make_config("enhanced_stpm", "paper", image_size=64, pair2_student="forward"),
        teacher2=r34,
    )
    assert [lv.name for lv in r34.feature_info] == ["layer1", "layer2", "layer3"]
    for (
        lv
    ) in r34.feature_info:  # CBAM after each of ResNet-34's stages 1-3, sized from feature_info
        stage = model.pair2.student.model.get_submodule(lv.name)
        assert isinstance(stage[1], CBAM) and stage[1].mlp[0].in_channels == lv.channels
    maps = model.eval().level_maps(Batch(image=torch.rand(1, 3, 64, 64)))
    assert [tuple(m.shape) for m in maps.values()] == [
        (1, 1, 16, 16),
        (1, 1, 8, 8),
        (1, 1, 4, 4),
    ] * 2


@pytest.mark.parametrize("combine", ["product", "pair_sum", "mean"])
def test_combination_rules(lite0_teacher, lite1_teacher, batch64, combine):
    model = _model(lite0_teacher, lite1_teacher, combine=combine).eval()
    assert (
        model.cfg.scoring.fuse == {"product": "product", "pair_sum": "sum", "mean": "mean"}[combine]
    )
    with torch.no_grad():
        model.level_scale.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
        model.pair_scale.copy_(torch.tensor([0.5, 4.0]))
        raw = list(model.level_maps(batch64).values())  # six (B, 1, h, w)
        out = model.score(batch64)
    up = [F.interpolate(m, size=(64, 64), mode="bilinear", align_corners=False) for m in raw]
    if combine == "product":  # all six multiplied
        expect = up[0] * up[1] * up[2] * up[3] * up[4] * up[5]
    elif combine == "mean":  # each map over its normal scale, averaged
        expect = sum(u / s for u, s in zip(up, [1, 2, 3, 4, 5, 6])) / 6
    else:  # product within a pair (at the pair's finest grid), over the pair's scale, summed

        def pair(ms):
            size = ms[0].shape[-2:]
            p = torch.ones_like(ms[0])
            for m in ms:
                p = p * F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            return F.interpolate(p, size=(64, 64), mode="bilinear", align_corners=False)

        expect = pair(raw[:3]) / 0.5 + pair(raw[3:]) / 4.0
    ref = score({"x": expect}, 64, ScoringConfig(fuse="sum", blur_sigma=4.0, image_score="max"))
    torch.testing.assert_close(out.anomaly_map, ref.anomaly_map, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.pred_score, ref.pred_score, rtol=1e-4, atol=1e-6)


def test_normal_scales_come_from_the_held_out_normal_images(lite0_teacher, lite1_teacher, batch64):
    model = _model(lite0_teacher, lite1_teacher).train()
    model.loss(batch64)
    assert model.stats_steps == 0 and torch.equal(
        model.level_scale, torch.ones(6)
    )  # training: untouched
    model.eval()
    other = Batch(image=torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(5)))
    model.calibrate([batch64, other])
    with torch.no_grad():  # the exact means over all five images, weighted by batch size
        maps = [model.level_maps(b) for b in (batch64, other)]
        level = torch.stack([(2 * maps[0][k].mean() + 3 * maps[1][k].mean()) / 5 for k in maps[0]])
        pairs = [model._split(m) for m in maps]
        pair = torch.stack(
            [
                (
                    2 * model.pair_product(pairs[0][j]).mean()
                    + 3 * model.pair_product(pairs[1][j]).mean()
                )
                / 5
                for j in range(2)
            ]
        )
    torch.testing.assert_close(model.level_scale, level, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(model.pair_scale, pair, rtol=1e-5, atol=1e-8)
    assert model.stats_steps == 1


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    from unistad_edu.synthetic import make_synthetic

    data = make_synthetic(
        tmp_path_factory.mktemp("syn") / "syn", size=64, n_train=8, n_test_good=2, n_test_defect=2
    )
    return MVTecDataset(data, "train", image_size=64), MVTecDataset(data, "test", image_size=64)


def test_fit_evaluate_checkpoint(lite0_teacher, lite1_teacher, tiny_set, tmp_path):
    from unistad_edu.checkpoint import CheckpointError, load_checkpoint
    from unistad_edu.teacher import load_teacher

    assert METHODS["enhanced_stpm"] is EnhancedSTPM and EnhancedSTPM.needs_images
    train, test = tiny_set
    model = build_model(
        "enhanced_stpm", lite0_teacher, image_size=64, batch_size=8, combine="pair_sum"
    )
    res = fit(model, train, TrainConfig(epochs=2, progress=False), out=tmp_path / "run")
    losses = [h["loss"] for h in res.history]
    assert len(losses) == 2 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert res.threshold is not None and np.isfinite(res.threshold)
    assert int(model.stats_steps) > 0 and not torch.equal(model.pair_scale, torch.ones(2))
    table = evaluate(model, test, progress=False)
    assert table["method"] == "enhanced_stpm" and set(table["categories"]) == set(test.categories)
    vals = [v for v in table["mean"].values() if v is not None]
    assert vals and all(np.isfinite(v) and 0 <= v <= 1 for v in vals)
    # round trip: the second teacher is rebuilt from its name, the normal scales come from the file
    loaded = load_checkpoint(tmp_path / "run", teacher=lite0_teacher)
    assert loaded.cfg == model.cfg and torch.equal(loaded.pair_scale, model.pair_scale)
    # equal scores after the round trip (and trained != fresh), for every method: tests/test_contract.py
    # a checkpoint refuses a different second teacher (same architecture, other weights)
    other = EnhancedSTPM(
        lite0_teacher, model.cfg, teacher2=load_teacher("tf_efficientnet_lite1", weights=None)
    )
    with pytest.raises(ValueError, match="second teacher"):
        other.load_from_checkpoint(model.state_for_checkpoint())
    assert issubclass(CheckpointError, ValueError)


def test_both_teachers_run_at_the_precision_asked(lite0_teacher, lite1_teacher):
    """``--precision`` reaches the second teacher too (it once kept measuring "auto" on its own)."""
    from unistad_edu.inference import precision_of

    model = _model(lite0_teacher, lite1_teacher)
    before = (lite0_teacher.precision, lite1_teacher.precision)
    try:
        prec = precision_of(model, "fp32", "cpu")
        assert (
            model.teacher.precision is prec
            and model.teacher2.precision is prec
            and prec.name == "fp32"
        )
    finally:
        lite0_teacher.precision, lite1_teacher.precision = before
