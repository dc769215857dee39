"""explain.py: the differentiable image score and its attributions, checked against independent references
(the no-grad scoring path, finite differences, IG's completeness axiom, a brute-force occlusion)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unistad_edu import build_model, explain
from unistad_edu.methods.base import Batch

SIZE = 64


@pytest.fixture(scope="module")
def model(lite0_teacher):
    torch.manual_seed(0)
    m = build_model(
        "stpm", lite0_teacher, image_size=SIZE
    ).eval()  # random student: differs from the teacher
    return m


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, SIZE, SIZE, generator=g)


def test_score_function_equals_the_scoring_path_and_has_gradients(model, images):
    f = explain.score_function(model)
    before = model.teacher.precision
    with torch.no_grad():
        ref = model.score(Batch(image=images)).pred_score  # the no-grad path (bf16 teacher on CPU)
    x = images.clone().requires_grad_(True)
    s = f(x)
    assert s.shape == (2,) and s.requires_grad
    torch.testing.assert_close(s.detach(), ref.float(), rtol=3e-2, atol=1e-4)
    assert model.teacher.precision == before  # restored after the float32 call
    (g,) = torch.autograd.grad(s.sum(), x)
    assert g.abs().sum() > 0


def test_gradient_matches_finite_differences(model, images):
    f = explain.score_function(model)
    x = images[:1].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x).sum(), x)
    direction = torch.randn_like(x, generator=torch.Generator().manual_seed(2))
    direction /= direction.norm()
    eps = 1e-3
    with torch.no_grad():
        numeric = (f(x + eps * direction) - f(x - eps * direction)).item() / (2 * eps)
    analytic = float((g * direction).sum())
    assert analytic == pytest.approx(numeric, rel=0.1, abs=1e-3)


def test_integrated_gradients_is_complete_on_a_smooth_score():
    # f(x) = mean of squared pixels: smooth, so the path integral is computed almost exactly
    def f(x):
        return x.pow(2).mean(dim=(1, 2, 3))

    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    base = torch.zeros_like(x)
    attr, delta = explain.integrated_gradients(f, x, base, n_steps=64)
    assert attr.shape == (1, 16, 16)
    np.testing.assert_allclose(
        attr[0], (x[0] ** 2).sum(0).numpy() / x[0].numel(), rtol=1e-3, atol=1e-7
    )
    assert abs(delta[0]) < 1e-5


def test_integrated_gradients_on_the_model_score(model, images):
    # the image score is a max over positions: piecewise smooth, so the Riemann sum carries a visible gap
    # (lesson 10 shows it), but sign and size of the difference are right and delta reports the gap exactly
    f = explain.score_function(model)
    x, base = images[:1], images[1:2]
    attr, delta = explain.integrated_gradients(f, x, base, n_steps=64)
    with torch.no_grad():
        gap = float(f(x) - f(base))
    assert attr.sum() == pytest.approx(gap, rel=0.3)
    assert delta[0] == pytest.approx(attr.sum() - gap, rel=1e-3, abs=1e-5)


def test_occlusion_matches_a_brute_force_reference():
    # a score with a known structure: the mean of the top-left quadrant of channel 0
    def f(x):
        return x[:, 0, :8, :8].mean(dim=(1, 2))

    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    base = torch.zeros_like(x)
    attr = explain.occlusion(f, x, base, window=4, stride=4)  # non-overlapping windows
    brute = np.zeros((16, 16))
    for i in range(0, 16, 4):
        for j in range(0, 16, 4):
            occluded = x.clone()
            occluded[:, :, i : i + 4, j : j + 4] = 0
            drop = float(f(x) - f(occluded))
            brute[i : i + 4, j : j + 4] = drop * 3  # the window spans 3 channels; we sum them
    np.testing.assert_allclose(attr[0], brute, rtol=1e-5, atol=1e-6)


def test_nearest_normal_and_share_inside():
    normals = torch.stack([torch.full((3, 4, 4), v) for v in (0.0, 0.5, 1.0)])
    x = torch.stack([torch.full((3, 4, 4), 0.6), torch.full((3, 4, 4), 0.1)])
    out = explain.nearest_normal(x, normals)
    assert torch.equal(out[0], normals[1]) and torch.equal(out[1], normals[0])
    values = np.array([[1.0, -5.0], [3.0, 0.0]])
    mask = np.array([[1, 1], [0, 0]])
    assert explain.share_inside(values, mask) == pytest.approx(1.0 / 4.0)  # negatives do not count
    assert np.isnan(explain.share_inside(-np.ones((2, 2)), mask))
