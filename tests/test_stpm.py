"""STPM against an independent writing of the paper: Eq. 1 (loss) and Eq. 2-3 (maps, product over levels),
computed here with numpy loops over positions, from the teacher's and the student's raw features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unistad_edu.methods import build_model
from unistad_edu.methods.base import Batch

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for this module


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _features(model, x):
    """Raw teacher and student pyramids as float64 numpy: {level: (B, C, h, w)} each."""
    with torch.no_grad():
        t = model.teacher(x)
        s = model.student(model.teacher.normalize(x))
    return (
        {k: t[k].double().numpy() for k in model.teacher.layer_names},
        {k: s[k].double().numpy() for k in model.teacher.layer_names},
    )


@pytest.fixture(scope="module")
def stpm(lite0_teacher):
    before = lite0_teacher.precision
    lite0_teacher.precision = (
        "fp32"  # exact comparisons; the session teacher is restored afterwards
    )
    yield build_model("stpm", lite0_teacher, image_size=64).eval()
    lite0_teacher.precision = before


def test_student_is_a_random_copy_of_the_teacher_architecture(stpm, lite0_teacher):
    t_names = [n for n, _ in lite0_teacher.pyramid.model.named_parameters()]
    s_names = [n for n, _ in stpm.student.model.named_parameters()]
    assert t_names == s_names  # same layers, truncated at the same stage
    t0 = dict(lite0_teacher.pyramid.model.named_parameters())["conv_stem.weight"]
    s0 = dict(stpm.student.model.named_parameters())["conv_stem.weight"]
    assert t0.shape == s0.shape and not torch.allclose(t0, s0)  # but not the teacher's weights
    assert {id(p) for p in stpm.trainable_parameters()} == {
        id(p) for p in stpm.student.parameters()
    }


def test_loss_is_eq1_written_out(stpm):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    t, s = _features(stpm, x)
    expect = 0.0
    for name in t:  # Eq. 1: l(I) = 1 / (2 w h) sum_{i,j} || F_t(I)_ij / |.| - F_s(I)_ij / |.| ||^2, mean over images
        B, C, h, w = t[name].shape
        per_image = []
        for b in range(B):
            total = sum(
                np.sum((_unit(t[name][b, :, i, j]) - _unit(s[name][b, :, i, j])) ** 2)
                for i in range(h)
                for j in range(w)
            )
            per_image.append(total / (2 * w * h))
        expect += np.mean(per_image)
    got = stpm.loss(Batch(image=x)).item()
    assert got == pytest.approx(expect, rel=1e-5)


def test_maps_and_image_score_are_eq2_and_the_product_over_levels(stpm):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    t, s = _features(stpm, x)
    with torch.no_grad():
        maps = stpm.anomaly_maps(Batch(image=x))
    for name in t:  # Eq. 2: the per-position distance, before upsampling
        _, C, h, w = t[name].shape
        expect = np.array(
            [
                [
                    0.5 * np.sum((_unit(t[name][0, :, i, j]) - _unit(s[name][0, :, i, j])) ** 2)
                    for j in range(w)
                ]
                for i in range(h)
            ]
        )
        np.testing.assert_allclose(maps[name][0, 0].double().numpy(), expect, rtol=1e-5, atol=1e-8)
    # Eq. 3: the levels upsampled to the image size and multiplied; the image score is the map's maximum
    # (after the package's sigma-4 Gaussian, so compare it with blur off)
    import dataclasses

    import torch.nn.functional as F

    cfg = dataclasses.replace(stpm.cfg.scoring, blur_sigma=0.0)
    stpm.cfg = dataclasses.replace(stpm.cfg, scoring=cfg)
    out = stpm.score(Batch(image=x))
    up = [
        F.interpolate(
            torch.from_numpy(np.asarray(maps[n].double())),
            size=(64, 64),
            mode="bilinear",
            align_corners=False,
        )
        for n in t
    ]
    product = up[0] * up[1] * up[2]
    np.testing.assert_allclose(
        out.anomaly_map.double().numpy(), product.numpy(), rtol=1e-4, atol=1e-9
    )
    assert out.pred_score.item() == pytest.approx(float(product.max()), rel=1e-4)
