"""Dual heterogeneous students: Noisy-OR against hand-computed numbers and monotone; the scoring path's
per-image terms; running score statistics; hard-point mining; the EE student never sees the teacher's patch
tokens; a ViT teacher; and train -> evaluate (all four combine rules) -> checkpoint through the engine."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unistad_edu.data import MVTecDataset
from unistad_edu.engine import TrainConfig, fit
from unistad_edu.inference import evaluate
from unistad_edu.methods import METHODS, build_model, make_config
from unistad_edu.methods.base import Batch
from unistad_edu.methods.dual_student import (
    DualStudent,
    global_cosine_distance,
    scale_easy_gradients,
)
from unistad_edu.scoring import ScoringConfig, combine_scores, noisy_or, noisy_or_nll, score

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for this module


def _small(teacher, size=64, **kw):
    cfg = dict(
        image_size=size,
        hidden_dim=32,
        num_heads=4,
        ffn_dim=64,
        dec_layers=2,
        ee_image_size=None,
        semantic_target="embedding",
    )  # the teacher's own embedding: cheap; the imagenet target has its own test
    return build_model("dual_student", teacher, **{**cfg, **kw})


# ---- Noisy-OR --------------------------------------------------------------------------------------------
def test_noisy_or_hand_computed_and_monotone():
    t = torch.tensor
    assert noisy_or(t([0.3]), t([0.5])).item() == pytest.approx(0.65)  # 1 - 0.7 * 0.5
    assert noisy_or(t([0.2]), t([0.1]), t([0.5])).item() == pytest.approx(
        0.64
    )  # 1 - 0.8 * 0.9 * 0.5
    assert noisy_or(t([0.0]), t([0.0])).item() == 0 and noisy_or(t([1.0]), t([0.2])).item() == 1
    # -log(1 - P) from logits: p = 0.3 and 0.5 -> -log(0.35)
    z = t([math.log(0.3 / 0.7)]), t([0.0])
    assert noisy_or_nll(*z).item() == pytest.approx(-math.log(0.35), rel=1e-6)
    # monotone in each argument, strictly while the other is below 1
    p = torch.linspace(0, 0.99, 34)
    grid = noisy_or(p[:, None], p[None, :])  # (34, 34)
    assert (grid.diff(dim=0) > 0).all() and (grid.diff(dim=1) > 0).all()
    zs = torch.linspace(
        -30, 30, 61, dtype=torch.float64
    )  # float64: softplus(-30) + 30 is exact there
    nll = noisy_or_nll(zs[:, None], zs[None, :])
    assert (nll.diff(dim=0) > 0).all() and (nll.diff(dim=1) > 0).all()
    nll32 = noisy_or_nll(zs[:, None].float(), zs[None, :].float())  # float32: never decreasing
    assert (nll32.diff(dim=0) >= 0).all() and (nll32.diff(dim=1) >= 0).all()


def test_scoring_path_combines_a_map_score_with_per_image_terms():
    g = torch.Generator().manual_seed(0)
    maps = {"a": torch.rand(3, 1, 8, 8, generator=g)}
    cfg = ScoringConfig(fuse="mean", blur_sigma=0, image_score="max")
    plain = score(maps, 16, cfg)
    assert plain.image_scores == {} and plain.probability is None  # unchanged without terms
    s_map = (
        F.interpolate(maps["a"], size=(16, 16), mode="bilinear", align_corners=False)
        .flatten(1)
        .max(1)
        .values
    )
    torch.testing.assert_close(plain.pred_score, s_map)
    sem = torch.tensor([0.1, 0.5, 0.9])
    calib = {"map": (1.0, 0.5), "semantic": (0.5, 0.2)}
    z_map, z_sem = (s_map - 1.0) / 0.5, (sem - 0.5) / 0.2
    out = {
        rule: score(maps, 16, cfg, image_terms={"semantic": sem}, combine=rule, calibration=calib)
        for rule in ("map", "terms", "sum", "noisy_or")
    }
    torch.testing.assert_close(out["map"].pred_score, s_map)
    torch.testing.assert_close(out["terms"].pred_score, z_sem)
    torch.testing.assert_close(out["sum"].pred_score, z_map + z_sem)
    P = 1 - (1 - torch.sigmoid(z_map)) * (1 - torch.sigmoid(z_sem))
    torch.testing.assert_close(out["noisy_or"].probability, P)
    torch.testing.assert_close(out["noisy_or"].pred_score, -torch.log1p(-P), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["noisy_or"].image_scores["semantic"], sem)
    torch.testing.assert_close(
        out["noisy_or"].anomaly_map, plain.anomaly_map
    )  # the pixel map is the map's
    # a hand-computed case: z = 2 and z = 0 -> P = 1 - (1 - sigmoid(2)) * 0.5 = 0.940399
    one, _ = combine_scores(
        {"map": torch.tensor([2.0]), "semantic": torch.tensor([0.1])},
        "noisy_or",
        {"map": (1.0, 0.5), "semantic": (0.1, 1.0)},
    )
    assert 1 - math.exp(-one.item()) == pytest.approx(0.940399, abs=1e-6)
    # the image score does not saturate where P does (P == 1.0 in float32 for both)
    hi, p_hi = combine_scores({"map": torch.tensor([40.0, 50.0])}, "noisy_or")
    assert p_hi[0] == p_hi[1] == 1.0 and hi[1] > hi[0]
    with pytest.raises(ValueError, match="combine must be"):
        combine_scores({"map": s_map}, "max")


# ---- pieces ------------------------------------------------------------------------------------------------
def test_global_cosine_and_hard_mining_gradients():
    t = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    assert global_cosine_distance(t, 3 * t).abs().max() < 1e-6
    torch.testing.assert_close(global_cosine_distance(t, -t), torch.full((2,), 2.0))
    # one flattened cosine per image, not a mean of per-point cosines
    s = t.clone()
    s[:, :, 0, 0] = -s[:, :, 0, 0]
    per_point = (1 - F.cosine_similarity(t, s, dim=1)).mean(dim=(1, 2))
    flat = 1 - (t * s).flatten(1).sum(1) / (t.flatten(1).norm(dim=1) * s.flatten(1).norm(dim=1))
    torch.testing.assert_close(global_cosine_distance(t, s), flat)
    assert not torch.allclose(flat, per_point)
    # mining: the easiest half of the points (smallest distance) get 0.1 of their gradient
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    w = torch.randn(2, 4, 3, 3)
    d = torch.arange(18.0).view(2, 3, 3)  # distinct distances: the 9 smallest are image 0
    (scale_easy_gradients(x, d, quantile=0.5, factor=0.1) * w).sum().backward()
    easy = (d < torch.quantile(d.flatten(), 0.5))[:, None].expand_as(w)
    torch.testing.assert_close(x.grad[easy], 0.1 * w[easy])
    torch.testing.assert_close(x.grad[~easy], w[~easy])
    # ... and only through that use: another use of the same tensor gets its full gradient
    x.grad = None
    y = x * 1.0
    (scale_easy_gradients(y, d, 0.5, 0.1) * w).sum().add((y * w).sum()).backward()
    torch.testing.assert_close(x.grad[easy], 1.1 * w[easy])


def test_running_score_statistics_are_buffers(lite0_teacher):
    model = _small(lite0_teacher, calib_momentum=0.5)
    model._update_calibration(
        torch.tensor([1.0, 3.0]), torch.tensor([0.2, 0.2])
    )  # first batch: taken as is
    (m_mean, m_std), (s_mean, s_std) = model.calibration()["map"], model.calibration()["semantic"]
    assert (m_mean.item(), m_std.item()) == pytest.approx((2.0, 1.0))
    assert s_mean.item() == pytest.approx(0.2) and s_std.item() == pytest.approx(
        1e-6
    )  # floored, not 0
    model._update_calibration(
        torch.tensor([2.0, 2.0]), torch.tensor([0.2, 0.2])
    )  # EMA: E[s] and E[s^2]
    m_mean, m_std = model.calibration()["map"]
    assert m_mean.item() == pytest.approx(2.0) and m_std.item() == pytest.approx(
        math.sqrt(0.5)
    )  # 4.5 - 4
    # before calibrate, the Noisy-OR's anchors come from mean and std as if Gaussian: p = 0.5 at mean +
    # 1.6449 std (the 95 % point), p = 0.01 at the mean
    offset, temp = model.or_calibration()["map"]
    assert offset.item() == pytest.approx(2.0 + 1.644854 * math.sqrt(0.5), rel=1e-5)
    assert temp.item() == pytest.approx(1.644854 * math.sqrt(0.5) / math.log(99), rel=1e-5)
    state = model.state_for_checkpoint()
    assert {
        "loc_mean",
        "loc_sq",
        "sem_mean",
        "sem_sq",
        "calib_steps",
        "loc_median",
        "loc_upper",
        "sem_median",
        "sem_upper",
        "quantiles_known",
    } <= set(state)


def test_noisy_or_branches_sit_near_zero_on_normal_scores_and_either_one_fires(lite0_teacher):
    """Hand-set normal quantiles (median 1, 95 % point 2 for the map score; 0.3 / 0.5 for the semantic one):
    p = 0.01 at the median, 0.5 at the 95 % point, sigmoid(ln 99) = 0.99 one more spread above; P of two
    typical branches is 1 - 0.99^2, and one branch firing is enough for P >= its own p (an OR, not a sum)."""
    model = _small(lite0_teacher)
    for k, (med, up) in {"loc": (1.0, 2.0), "sem": (0.3, 0.5)}.items():
        getattr(model, f"{k}_median").fill_(med)
        getattr(model, f"{k}_upper").fill_(up)
    model.quantiles_known.fill_(True)
    model.cfg.combine = "noisy_or"
    calib = model.score_calibration()

    def P(s_loc, s_sem):
        return combine_scores(
            {"map": torch.tensor([s_loc]), "semantic": torch.tensor([s_sem])}, "noisy_or", calib
        )[1].item()

    def p(s, name):  # one branch alone: the other far below its normal range (p ~ 0)
        return P(s, -1e3) if name == "map" else P(-1e3, s)

    assert p(1.0, "map") == pytest.approx(0.01, rel=1e-4) and p(0.3, "semantic") == pytest.approx(
        0.01, rel=1e-4
    )
    assert p(2.0, "map") == pytest.approx(0.5, rel=1e-5) and p(0.5, "semantic") == pytest.approx(
        0.5, rel=1e-5
    )
    assert p(3.0, "map") == pytest.approx(0.99, rel=1e-5)
    assert P(1.0, 0.3) == pytest.approx(1 - 0.99**2, rel=1e-4)  # a typical normal image: P ~ 0.02
    assert P(3.0, 0.3) == pytest.approx(1 - 0.01 * 0.99, rel=1e-4)  # the local branch fires alone
    assert P(1.0, 0.7) == pytest.approx(
        1 - 0.99 * 0.01, rel=1e-4
    )  # the semantic branch fires alone
    # the sum rule keeps plain z-scores (mean / std), untouched by the Noisy-OR's anchors
    model.cfg.combine = "sum"
    assert model.score_calibration() is not calib and set(model.score_calibration()) == {
        "map",
        "semantic",
    }


def test_ee_student_never_sees_the_teachers_patch_tokens(lite0_teacher):
    model = _small(lite0_teacher, size=64).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 64, 64, generator=g)
    feats = lite0_teacher(x)
    feats["cls"] = lite0_teacher.embedding_of(
        feats
    )  # as a teacher built with embedding=True gives it
    noise = {
        k: (10 * torch.randn(v.shape, generator=g) if k != "cls" else v) for k, v in feats.items()
    }
    with torch.no_grad():
        a = model(Batch(image=x, features=feats))
        b = model(
            Batch(image=x, features=noise)
        )  # every patch token replaced, the class token kept
        c = model(
            Batch(image=torch.rand(2, 3, 64, 64, generator=g), features=feats)
        )  # other pixels
    torch.testing.assert_close(a["semantic"], b["semantic"])  # the semantic branch did not notice
    assert not torch.allclose(
        a["maps"]["local_0"], b["maps"]["local_0"]
    )  # ... while the ED branch did
    assert not torch.allclose(a["semantic"], c["semantic"])  # the EE student reads the image
    torch.testing.assert_close(
        a["maps"]["local_0"], c["maps"]["local_0"]
    )  # the ED student does not
    # its gradients come only from the class token: the patch tokens do not reach its parameters either
    model.train()
    grads = []
    for f in (feats, noise):
        model.zero_grad()
        torch.manual_seed(0)
        model(Batch(image=x, features=f))["semantic"].sum().backward()
        grads.append(
            torch.cat([p.grad.flatten() for p in model.ee.parameters() if p.grad is not None])
        )
    torch.testing.assert_close(grads[0], grads[1])


def test_cnn_class_token_is_the_pooled_deepest_level(lite0_teacher):
    model = _small(lite0_teacher).eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    feats = lite0_teacher(x)  # levels only: the model pools the deepest level itself
    emb = model.teacher_embedding(Batch(image=x), feats)
    torch.testing.assert_close(emb, feats["blocks.4"].mean(dim=(2, 3)))
    assert model.ee.head.out_features == 112


def test_imagenet_semantic_target_is_the_whole_networks_embedding(lite0_teacher):
    """semantic_target="imagenet": the target is the pre-logit embedding of the full ImageNet network the teacher
    was cut from -- checked against the offline classifier (its logits = its head applied to that embedding)."""
    from unistad_edu.teacher import load_teacher

    model = _small(lite0_teacher, semantic_target="imagenet", semantic_image_size=96).eval()
    assert model.semantic_dim == 1280 and model.ee.head.out_features == 1280
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    emb = model.teacher_embedding(Batch(image=x), {})  # (2, 1280)
    classifier = load_teacher("tf_efficientnet_lite0", classifier=True)
    mean, std = (
        torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1),
        torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1),
    )
    xs = F.interpolate(
        (x - mean) / std, size=(96, 96), mode="bilinear", align_corners=False, antialias=True
    )
    with torch.no_grad():
        torch.testing.assert_close(classifier.classifier(emb), classifier(xs), rtol=1e-4, atol=1e-4)
    assert not any(
        k.startswith("semantic_net.") for k in model.state_for_checkpoint()
    )  # frozen, not saved
    assert all(not p.requires_grad for p in model.semantic_net.parameters())
    assert not any(
        p is q for p in model.trainable_parameters() for q in model.semantic_net.parameters()
    )
    model.train()
    assert not model.semantic_net.training and model.ee.training


def test_vit_teacher_groups_are_averaged_and_its_cls_is_the_target():
    from unistad_edu import load_teacher

    teacher = load_teacher("vit_small_patch14_dinov2", weights=None, layers=(2, 3, 4, 5, 11))
    model = build_model(
        "dual_student",
        teacher,
        image_size=56,
        ed_groups=((0, 1), (2, 3)),
        hidden_dim=32,
        num_heads=4,
        ffn_dim=64,
        dec_layers=2,
        ee_backbone="test_vit",
        ee_image_size=64,
    )
    assert (
        model.group_channels == [384, 384] and model.input_channels == 384
    )  # means, not concatenations
    assert model.grid == (4, 4) and model.ed.chunks == [
        [1],
        [0],
    ]  # last decoder layer -> first group
    x = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(4))
    feats = teacher(x)
    out = model(Batch(image=x, features=feats))
    torch.testing.assert_close(out["targets"][0], (feats["blocks.2"] + feats["blocks.3"]) / 2)
    model.train()
    loss = model.loss(Batch(image=x, features=feats))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is None for p in teacher.parameters())
    cfg = make_config("dual_student", "paper")
    assert (cfg.teacher, cfg.image_size, cfg.ed_groups, cfg.dec_layers) == (
        "vit_base_patch14_reg4_dinov2",
        392,
        ((0, 1, 2, 3), (4, 5, 6, 7)),
        8,
    )
    assert cfg.teacher_layers == (2, 3, 4, 5, 6, 7, 8, 9, 11) and cfg.bottleneck_dropout == 0.2


# ---- the engine -------------------------------------------------------------------------------------------
def test_fit_evaluate_every_combine_rule_and_checkpoint(lite0_teacher, tmp_path):
    from unistad_edu.checkpoint import load_checkpoint
    from unistad_edu.synthetic import make_synthetic

    assert METHODS["dual_student"] is DualStudent and DualStudent.needs_images
    data = make_synthetic(tmp_path / "syn", size=64, n_train=10, n_test_good=3, n_test_defect=1)
    train = MVTecDataset(data, "train", image_size=64)
    test = MVTecDataset(data, "test", image_size=64)
    model = _small(lite0_teacher)
    res = fit(model, train, TrainConfig(epochs=2, progress=False), out=tmp_path / "run")
    assert len(res.history) == 2 and all(np.isfinite(h["loss"]) for h in res.history)
    assert (
        int(model.calib_steps) > 0 and model.calibration()["map"][1] > 1e-6
    )  # statistics were gathered
    model.eval()
    scores = {}
    for rule in ("noisy_or", "sum", "local", "semantic"):
        model.cfg.combine = rule  # one trained model, scored four ways
        table, res_ = evaluate(model, test, progress=False, return_outputs=True)
        assert all(
            np.isfinite(v) and 0 <= v <= 1 for v in table["mean"].values() if v is not None
        ), rule
        scores[rule] = res_["scores"]
    assert not np.allclose(scores["local"], scores["semantic"])
    # evaluate's Noisy-OR report: each branch's median p on the normal test images, recomputed image by image
    model.cfg.combine = "noisy_or"
    table = evaluate(model, test, progress=False)
    calib = {k: (float(o), float(t)) for k, (o, t) in model.or_calibration().items()}
    p = {"map": [], "semantic": []}
    for i in range(len(test)):
        if test.records[i].label:
            continue
        with torch.no_grad():
            o = model(Batch(image=test[i]["image"][None]))
            s_loc = float(score(o["maps"], 64, model.cfg.scoring).pred_score)
        for name, s in (("map", s_loc), ("semantic", float(o["semantic"]))):
            p[name].append(1 / (1 + math.exp(-(s - calib[name][0]) / calib[name][1])))
    got = table["noisy_or"]["median_p_normal"]
    assert table["noisy_or"]["normal_images"] == len(p["map"]) > 0
    for name in p:
        assert got[name] == pytest.approx(float(np.median(p[name])), rel=1e-3, abs=1e-6)
    model.cfg.combine = "sum"
    assert "noisy_or" not in evaluate(model, test, progress=False)
    # the rules, recomputed by hand from the components
    batch = Batch(image=torch.stack([test[i]["image"] for i in range(4)]))
    with torch.no_grad():
        out = model(batch)
        s_loc = score(out["maps"], 64, model.cfg.scoring).pred_score
    (off_l, t_l), (off_s, t_s) = model.or_calibration()["map"], model.or_calibration()["semantic"]
    z_l, z_s = (s_loc - off_l) / t_l, (out["semantic"] - off_s) / t_s
    model.cfg.combine = "noisy_or"
    o = model.score(batch)
    torch.testing.assert_close(
        o.probability, 1 - (1 - torch.sigmoid(z_l)) * (1 - torch.sigmoid(z_s))
    )
    model.cfg.combine = "local"
    torch.testing.assert_close(model.score(batch).pred_score, s_loc)
    model.cfg.combine = "noisy_or"
    loaded = load_checkpoint(tmp_path / "run", teacher=lite0_teacher)
    for k in (
        "loc_mean",
        "loc_sq",
        "sem_mean",
        "sem_sq",
        "loc_median",
        "loc_upper",
        "sem_median",
        "sem_upper",
        "quantiles_known",
    ):
        torch.testing.assert_close(getattr(loaded, k), getattr(model, k))
    # equal scores after the round trip, for every method: tests/test_contract.py


def test_engine_calibrates_on_heldout_normals_in_eval_mode(lite0_teacher, tmp_path):
    """After fit, the statistics are those of the held-out normal images scored in eval mode (recomputed
    here image by image), not the training batches' running average."""
    from unistad_edu.engine import held_out
    from unistad_edu.synthetic import make_synthetic

    data = make_synthetic(tmp_path / "syn", size=64, n_train=10, n_test_good=1, n_test_defect=1)
    train = MVTecDataset(data, "train", image_size=64)
    model = _small(lite0_teacher)
    cfg = TrainConfig(epochs=1, progress=False, holdout_fraction=0.3, precision="fp32")
    fit(model, train, cfg)
    _, held = held_out(train, cfg)
    assert len(held) >= 2
    model.eval()
    loc, sem = [], []
    with torch.no_grad():
        for i in range(len(held)):
            b = Batch(image=held[i]["image"][None])
            out = model(b)
            loc.append(float(score(out["maps"], 64, model.cfg.scoring).pred_score))
            sem.append(float(out["semantic"]))
    (mu_l, sd_l), (mu_s, sd_s) = model.calibration()["map"], model.calibration()["semantic"]
    np.testing.assert_allclose(
        [float(mu_l), float(sd_l)], [np.mean(loc), np.std(loc)], rtol=1e-3, atol=1e-5
    )
    np.testing.assert_allclose(
        [float(mu_s), float(sd_s)], [np.mean(sem), np.std(sem)], rtol=1e-3, atol=1e-5
    )
    # the Noisy-OR's anchors: numpy's quantiles of the same scores (linear interpolation, torch's default)
    assert bool(model.quantiles_known)
    for name, s in (("map", loc), ("semantic", sem)):
        q50, q95 = np.quantile(s, [0.5, 0.95])
        offset, temp = model.or_calibration()[name]
        np.testing.assert_allclose(
            [float(offset), float(temp)],
            [q95, max((q95 - q50) / math.log(99), 1e-6)],
            rtol=1e-3,
            atol=1e-6,
        )
