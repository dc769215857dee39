"""UniSTAD: the global student never sees its k x k window, the local student sees nothing else (and not
itself); the loss terms and maps against hand-computed cases; the refinement is parameter-free, keeps
shapes, drops an unsupported spike and keeps a feature-supported region; the paper preset on a ViT; and
train -> evaluate -> checkpoint through the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from unistad_edu.data import MVTecDataset
from unistad_edu.engine import TrainConfig, fit
from unistad_edu.inference import evaluate
from unistad_edu.methods import METHODS, build_model, make_config
from unistad_edu.methods.base import Batch
from unistad_edu.methods.unistad import UniSTAD
from unistad_edu.refine import AffinityRefiner, affinity

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for this module


def _small(teacher, size=128, **kw):
    """8 x 8 token grid at 128 px (Lite0 stride 16), tiny students with two layers each."""
    cfg = dict(image_size=size, hidden_dim=32, num_heads=4, ffn_dim=64, layers=2)
    return build_model("unistad", teacher, **{**cfg, **kw})


def _window(r, c, k, n=8):
    """Tokens of the k x k window centred on (r, c) of an n x n grid, clipped at the borders (by hand)."""
    h = k // 2
    rows, cols = range(max(0, r - h), min(n, r + h + 1)), range(max(0, c - h), min(n, c + h + 1))
    return [rr * n + cc for rr in rows for cc in cols]


# ---- the masks, as behaviour of the students ------------------------------------------------------------
@pytest.mark.parametrize("token", [(4, 4), (0, 0), (7, 3)])
def test_global_student_output_ignores_its_whole_window(lite0_teacher, token):
    model = _small(lite0_teacher, global_window=5).eval()
    r, c = token
    i, window = r * 8 + c, _window(r, c, 5)
    assert i in window and len(window) == {(4, 4): 25, (0, 0): 9, (7, 3): 15}[token]
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 64, model.in_channels, generator=g)
    inside = tokens.clone()
    inside[:, window] = 10 * torch.randn(
        2, len(window), model.in_channels, generator=g
    )  # the token itself too
    outside = tokens.clone()
    j = next(t for t in range(64) if t not in window)
    outside[:, j] += 10 * torch.randn(model.in_channels, generator=g)
    with torch.no_grad():
        base = model.global_student(tokens)[:, i]
        # two layers deep and still blind: context tokens are never mixed, so nothing leaks back in two hops
        torch.testing.assert_close(model.global_student(inside)[:, i], base, rtol=1e-5, atol=1e-5)
        assert (
            model.global_student(outside)[:, i] - base
        ).abs().max() > 1e-3  # the rest of the image counts
        # the window did change the other tokens' predictions (the change was real)
        assert (model.global_student(inside) - model.global_student(tokens)).abs().max() > 1e-2


@pytest.mark.parametrize("token", [(4, 4), (0, 0), (7, 3)])
def test_local_student_sees_only_its_neighbourhood_not_itself(lite0_teacher, token):
    model = _small(lite0_teacher, local_window=3).eval()
    r, c = token
    i = r * 8 + c
    neighbours = [t for t in _window(r, c, 3) if t != i]
    far = [t for t in range(64) if t not in neighbours and t != i]
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(2, 64, model.in_channels, generator=g)
    with torch.no_grad():
        base = model.local_student(tokens)[:, i]
        changed = tokens.clone()
        changed[:, far] = 10 * torch.randn(2, len(far), model.in_channels, generator=g)
        torch.testing.assert_close(model.local_student(changed)[:, i], base, rtol=1e-5, atol=1e-5)
        itself = tokens.clone()
        itself[:, i] += 10 * torch.randn(model.in_channels, generator=g)
        torch.testing.assert_close(model.local_student(itself)[:, i], base, rtol=1e-5, atol=1e-5)
        near = tokens.clone()
        near[:, neighbours[0]] += 10 * torch.randn(model.in_channels, generator=g)
        assert (model.local_student(near)[:, i] - base).abs().max() > 1e-3


# ---- loss terms and maps on hand-made students ------------------------------------------------------------
class _Fixed(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, tokens):
        return self.fn(tokens)


def _with_students(model, global_fn, local_fn):
    model.global_student, model.local_student = _Fixed(global_fn), _Fixed(local_fn)
    return model


def test_loss_terms_and_weights_against_hand_computed_values(lite0_teacher):
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    batch = Batch(image=None, features=lite0_teacher(x))  # features only, as the engine trains it
    # global = the teacher exactly; local = twice the teacher: same direction, double the energy
    model = _with_students(_small(lite0_teacher), lambda t: t, lambda t: 2 * t)
    terms = model.terms_from(model(batch))
    assert terms["distill"].item() == pytest.approx(0, abs=1e-5)  # cosine ignores the scale
    assert terms["consistency"].item() == pytest.approx(0, abs=1e-5)
    assert terms["rec"].item() == pytest.approx(
        1.0, rel=1e-5
    )  # ||2t - t||^2 / ||t||^2 = 1, global adds 0
    assert model.loss(batch).item() == pytest.approx(1.0, rel=1e-4)
    model.cfg.w_rec = 0.25
    assert model.loss(batch).item() == pytest.approx(0.25, rel=1e-4)
    # local = minus the teacher: cosine distance 2 at every token of every level
    model = _with_students(
        _small(lite0_teacher, w_rec=0.0, w_consistency=0.5), lambda t: t, lambda t: -t
    )
    terms = model.terms_from(model(batch))
    assert terms["distill"].item() == pytest.approx(2.0, rel=1e-5)  # 0 (global) + 2 (local)
    assert terms["consistency"].item() == pytest.approx(
        0.5 * 2.0, rel=1e-5
    )  # weighted by w_consistency
    assert model.loss(batch).item() == pytest.approx(2.0 + 0.5 * 2.0, rel=1e-4)


def test_maps_are_the_three_broken_consistencies(lite0_teacher):
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    batch = Batch(image=x, features=lite0_teacher(x))
    bad = 2 * 8 + 5  # the one token the local student gets wrong

    def local(t):
        out = t.clone()
        out[:, bad] = -t[:, bad]  # opposite direction at every level: cosine distance 2
        return out

    model = _with_students(_small(lite0_teacher, refine=False), lambda t: t, local).eval()
    maps = model.anomaly_maps(batch)
    assert list(maps) == ["teacher_global", "teacher_local", "global_local"]
    assert all(m.shape == (1, 1, 8, 8) for m in maps.values())
    assert maps["teacher_global"].abs().max() < 1e-5
    for name in ("teacher_local", "global_local"):
        m = maps[name].flatten()
        assert m[bad].item() == pytest.approx(2.0, rel=1e-5)
        assert torch.cat([m[:bad], m[bad + 1 :]]).abs().max() < 1e-5
    out = model.score(batch)  # shared scoring: the mean of the three maps, at the image size
    assert out.anomaly_map.shape == (1, 1, 128, 128) and set(out.level_maps) == set(maps)
    # a subset of maps is a config choice
    model.cfg.maps = ("teacher_local",)
    assert list(model.anomaly_maps(batch)) == ["teacher_local"]
    with pytest.raises(ValueError, match="maps must be"):
        make_config("unistad", maps=("teacher_teacher",))


# ---- refinement -----------------------------------------------------------------------------------------
def _scene(seed=0, n=16, distinct_region=True):
    """Hand-made features on an n x n grid: background tokens near one direction, a 4 x 4 region near another
    (or, with distinct_region=False, near the background direction too)."""
    g = torch.Generator().manual_seed(seed)
    C = 32
    normal, odd = torch.zeros(C), torch.zeros(C)
    normal[0], odd[1] = 1.0, 1.0
    feats = normal[:, None, None].repeat(1, n, n) + 0.08 * torch.randn(C, n, n, generator=g)
    region = (slice(3, 7), slice(9, 13))
    if distinct_region:
        feats[:, region[0], region[1]] = odd[:, None, None] + 0.08 * torch.randn(
            C, 4, 4, generator=g
        )
    score_map = torch.zeros(1, 1, n, n)
    score_map[0, 0, region[0], region[1]] = 1.0  # a region of high score
    spike = (12, 3)
    score_map[0, 0, spike[0], spike[1]] = 1.0  # a lone spike on a normal-looking token
    return feats[None], score_map, region, spike


def test_refinement_drops_an_unsupported_spike_and_keeps_a_supported_region():
    feats, m, region, spike = _scene()
    refined = AffinityRefiner(steps=3, knn=8, temperature=0.1, alpha=1.0)(m, feats)
    assert refined.shape == m.shape
    assert refined[0, 0, spike[0], spike[1]] < 0.3  # the spike's feature twins elsewhere score 0
    assert (
        refined[0, 0, region[0], region[1]].mean() > 0.8
    )  # its tokens' nearest features are each other
    # control 1: the same map with a region whose features look like the background fades as well --
    # it is the features, not the shape of the map, that keep the region
    feats_plain, _, _, _ = _scene(distinct_region=False)
    faded = AffinityRefiner(steps=3, knn=8, temperature=0.1, alpha=1.0)(m, feats_plain)
    assert faded[0, 0, region[0], region[1]].mean() < 0.5
    # control 2: a spatial blur of the same strength would not separate them this way
    blurred = torch.nn.functional.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=False)
    assert blurred[0, 0, region[0], region[1]].mean() < 0.8
    # steps = 0 is the identity; alpha < 1 keeps part of the original
    torch.testing.assert_close(AffinityRefiner(steps=0)(m, feats), m)
    kept = AffinityRefiner(steps=3, knn=8, temperature=0.1, alpha=0.5)(m, feats)[
        0, 0, spike[0], spike[1]
    ]
    assert kept >= 0.5
    # UniSTAD's (mild) defaults do the same, less strongly: the spike loses a quarter, the region nothing
    c = make_config("unistad")
    mild = AffinityRefiner(c.refine_steps, c.refine_knn, c.refine_temperature, c.refine_alpha)
    out = mild(m, feats)
    assert out[0, 0, spike[0], spike[1]] < 0.8 and out[0, 0, region[0], region[1]].mean() > 0.95


def test_refinement_is_untrained_and_a_random_walk():
    r = AffinityRefiner()
    assert list(r.parameters()) == [] and list(r.buffers()) == []
    feats, m, _, _ = _scene(seed=1)
    P = affinity(feats, knn=8, temperature=0.1)
    assert P.shape == (1, 256, 256)
    torch.testing.assert_close(P.sum(-1), torch.ones(1, 256))  # rows are probabilities
    assert ((P > 0).sum(-1) <= 9).all()  # k neighbours (ties aside)
    assert (P.diagonal(dim1=1, dim2=2) > 0).all()  # a token is its own nearest neighbour
    # radius: nothing moves further than that many rows/columns in one step
    P1 = affinity(feats, knn=8, temperature=0.1, radius=1).view(
        1, 16, 16, 16, 16
    )  # (B, r, c, r', c')
    rr, cc = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    dist = torch.maximum(
        (rr[:, :, None, None] - rr[None, None]).abs(), (cc[:, :, None, None] - cc[None, None]).abs()
    )
    assert (P1[0][dist > 1] == 0).all() and (P1[0][dist <= 1] > 0).any()
    # a constant map stays constant (averages of equal values)
    const = torch.full_like(m, 0.7)
    torch.testing.assert_close(r(const, feats), const)
    out = r({"a": m, "b": 2 * m}, feats)  # dicts of maps, each keeps its shape; linear in the map
    assert set(out) == {"a", "b"} and out["a"].shape == m.shape
    torch.testing.assert_close(out["b"], 2 * out["a"])


def test_refine_switch_changes_no_parameter(lite0_teacher):
    on, off = _small(lite0_teacher, refine=True), _small(lite0_teacher, refine=False)
    assert on.state_for_checkpoint().keys() == off.state_for_checkpoint().keys()
    assert sum(p.numel() for p in on.trainable_parameters()) == sum(
        p.numel() for p in off.trainable_parameters()
    )
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(4))
    b = Batch(image=x)
    on.eval(), off.eval()
    off.load_state_dict(on.state_dict())
    with torch.no_grad():
        m_on, m_off = on.anomaly_maps(b), off.anomaly_maps(b)
    feats = on.tokens(lite0_teacher(x))
    for k in m_on:  # refine = the refiner applied to the unrefined maps, with the teacher's tokens
        torch.testing.assert_close(m_on[k], on.refiner(m_off[k], feats), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(m_on[k], m_off[k])


# ---- presets, the ViT teacher, the engine ------------------------------------------------------------------
def test_presets_and_paper_preset_on_a_vit_teacher():
    from unistad_edu import load_teacher

    assert METHODS["unistad"] is UniSTAD and UniSTAD.needs_images is False
    cpu = make_config("unistad", "cpu")
    assert (cpu.teacher, cpu.image_size, cpu.refine) == ("tf_efficientnet_lite0", 256, True)
    cfg = make_config("unistad", "paper")
    assert (cfg.teacher, cfg.teacher_layers, cfg.image_size) == (
        "vit_small_patch14_dinov2",
        (2, 5, 8),
        224,
    )
    teacher = load_teacher(cfg.teacher, weights=None, layers=cfg.teacher_layers)
    model = build_model("unistad", teacher, preset="paper")
    assert model.grid == (16, 16) and model.in_channels == 3 * 384
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    batch = Batch(image=x, features=teacher(x))  # ViT features carry "cls": the students ignore it
    model.train()
    loss = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and model.global_student.query.weight.grad is not None
    model.eval()
    maps = model.anomaly_maps(batch)
    assert all(m.shape == (1, 1, 16, 16) for m in maps.values())
    with pytest.raises(ValueError, match="multiple"):
        build_model("unistad", teacher, preset="paper", image_size=230)


def test_fit_and_evaluate(lite0_teacher, tmp_path):
    from unistad_edu.synthetic import make_synthetic

    data = make_synthetic(tmp_path / "syn", size=64, n_train=10, n_test_good=3, n_test_defect=1)
    train = MVTecDataset(data, "train", image_size=64)
    test = MVTecDataset(data, "test", image_size=64)
    model = build_model(
        "unistad", lite0_teacher, image_size=64, hidden_dim=32, num_heads=4, ffn_dim=64
    )
    assert model.grid == (4, 4) and model.global_window == (
        3,
        3,
    )  # the 7 x 7 window clipped on 4 x 4
    res = fit(model, train, TrainConfig(epochs=2, progress=False), out=tmp_path / "run")
    assert len(res.history) == 2 and all(np.isfinite(h["loss"]) for h in res.history)
    table = evaluate(model, test, progress=False)
    assert table["method"] == "unistad" and set(table["categories"]) == set(test.categories)
    assert all(np.isfinite(v) and 0 <= v <= 1 for v in table["mean"].values() if v is not None)
    # the checkpoint round trip of every method: tests/test_contract.py
