"""The shared scoring path against independent references (numpy / scipy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from unistad_edu.scoring import ScoringConfig, gaussian_blur, noisy_or, score


def _maps(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.rand(2, 1, 8, 8, generator=g), "b": torch.rand(2, 1, 4, 4, generator=g)}


@pytest.mark.parametrize("fuse", ["product", "sum", "mean"])
def test_fuse_modes(fuse):
    maps = _maps()
    out = score(maps, 32, ScoringConfig(fuse=fuse, blur_sigma=0))
    up = [
        F.interpolate(m, size=(32, 32), mode="bilinear", align_corners=False).numpy()
        for m in maps.values()
    ]
    ref = {"product": up[0] * up[1], "sum": up[0] + up[1], "mean": (up[0] + up[1]) / 2}[fuse]
    np.testing.assert_allclose(out.anomaly_map.numpy(), ref, rtol=1e-6)
    assert out.anomaly_map.shape == (2, 1, 32, 32) and out.pred_score.shape == (2,)
    np.testing.assert_allclose(out.pred_score.numpy(), ref.reshape(2, -1).max(1), rtol=1e-6)


def test_gaussian_blur_matches_scipy():
    x = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(x)[None, None], 4.0)[0, 0].numpy()
    ref = ndimage.gaussian_filter(x, sigma=4.0, mode="mirror", truncate=4.0)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_image_score_rules():
    m = np.random.default_rng(1).random((3, 1, 20, 20)).astype(np.float32)
    t = {"x": torch.from_numpy(m)}
    s_max = score(
        t, 20, ScoringConfig(fuse="sum", blur_sigma=0, image_score="max")
    ).pred_score.numpy()
    np.testing.assert_allclose(s_max, m.reshape(3, -1).max(1))
    s_top = score(
        t, 20, ScoringConfig(fuse="sum", blur_sigma=0, image_score="topk_mean", topk=0.01)
    ).pred_score
    ref_top = np.sort(m.reshape(3, -1), axis=1)[:, -4:].mean(1)  # 1 % of 400 pixels
    np.testing.assert_allclose(s_top.numpy(), ref_top, rtol=1e-6)
    s_pool = score(
        t, 20, ScoringConfig(fuse="sum", blur_sigma=0, image_score="avgpool_max", pool_size=5)
    ).pred_score
    windows = np.lib.stride_tricks.sliding_window_view(m[:, 0], (5, 5), axis=(1, 2)).mean(
        axis=(-1, -2)
    )
    np.testing.assert_allclose(s_pool.numpy(), windows.reshape(3, -1).max(1), rtol=1e-5)


def test_scores_are_raw_and_full_precision_under_autocast():
    maps = {"a": torch.rand(4, 1, 16, 16) * 1e4}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = score(maps, 64, ScoringConfig())
    assert out.anomaly_map.dtype == torch.float32
    assert out.pred_score.max() > 1  # not squashed into [0, 1]
    assert len(torch.unique(out.anomaly_map)) > 1000  # no bf16 quantisation ties


def test_bad_config_values():
    with pytest.raises(ValueError, match="fuse must be"):
        ScoringConfig(fuse="max")
    with pytest.raises(ValueError, match="image_score must be"):
        ScoringConfig(image_score="median")


def test_noisy_or():
    p = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(noisy_or(p, torch.zeros(3)), p)
    assert torch.allclose(noisy_or(torch.tensor([0.5]), torch.tensor([0.5])), torch.tensor([0.75]))


@pytest.mark.parametrize("shape", [(3, 40), (256, 256), (9, 300)])
def test_gaussian_blur_matches_scipy_on_small_and_large_maps(shape):
    """Short axes crop the kernel (reflect padding cannot reach further): scipy with the same cropped,
    renormalised kernel along that axis is the reference."""
    x = np.random.default_rng(1).random(shape).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(x)[None, None], 4.0)[0, 0].numpy()
    ref = x
    for axis, n in enumerate(shape):
        r = min(16, n - 1)
        t = np.arange(-r, r + 1)
        k = np.exp(-0.5 * (t / 4.0) ** 2)
        ref = ndimage.correlate1d(ref, k / k.sum(), axis=axis, mode="mirror")
    np.testing.assert_allclose(ours, ref, atol=1e-5)
