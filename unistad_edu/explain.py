"""Attributions of the image score (captum): which pixels made this image anomalous?

The image score is a function of the pixels: frozen teacher and method -> per-level maps -> the shared scoring
path (fuse, upsample, blur, max). Two parts of the package deliberately cut the gradient for speed --
``Method.score`` runs under ``torch.no_grad()``, and ``Method.teacher_features`` runs the teacher under
``no_grad`` (the teacher is frozen, so training never needs its graph). :func:`score_function` rebuilds the same
score *with* gradients: it runs the teacher itself, in float32, hands the features in through
``Batch.features`` and calls ``anomaly_maps`` and ``scoring.score`` directly. That is the function captum's
Integrated Gradients and Occlusion explain (lesson 10 shows why each step is needed).

    f = score_function(model)                        # (B, 3, S, S) in [0, 1] -> (B,) differentiable
    ref = nearest_normal(x, normal_images)           # a baseline the model finds normal
    ig, delta = integrated_gradients(f, x, ref)      # (B, S, S) per pixel, completeness gap
    occ = occlusion(f, x, ref, window=16)            # (B, S, S) per pixel
    share_inside(ig[0], mask)                        # fraction of the positive attribution on the defect
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch

from .methods.base import Batch, Method


@contextlib.contextmanager
def _float32_teacher(teacher):
    """Run the teacher in float32 (no bf16 autocast) for exact gradients; restore its precision afterwards."""
    old = getattr(teacher, "precision", None)
    if old is not None:
        teacher.precision = "fp32"
    try:
        yield
    finally:
        if old is not None:
            teacher.precision = old


def score_function(model: Method) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(x) -> (B,)`` image scores of ``model`` for pixels ``x`` (B, 3, S, S) in [0, 1], differentiable with
    respect to ``x`` through teacher and method (same value as ``model.score``, up to bf16 rounding where the teacher runs in bf16).
    Put the model in eval mode first."""

    def f(x: torch.Tensor) -> torch.Tensor:
        with _float32_teacher(model.teacher):
            feats = model.teacher(x)  # with gradients to x
        maps, terms = model.score_inputs(
            Batch(image=x, features=feats)
        )  # {name: (B, 1, h, w)}, {name: (B,)}
        return model.score_from(maps, terms, x.shape[-2:]).pred_score  # (B,)

    return f


def nearest_normal(x: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """For each image of ``x`` (B, 3, S, S), the image of ``normals`` (N, 3, S, S) closest in pixel space: a
    baseline that the model scores as normal and that differs from ``x`` mostly where ``x`` is unusual."""
    d = torch.cdist(x.flatten(1).float(), normals.flatten(1).float())  # (B, N)
    return normals[d.argmin(dim=1)]  # (B, 3, S, S)


def integrated_gradients(
    f, x: torch.Tensor, baseline: torch.Tensor, n_steps: int = 64, internal_batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """captum's Integrated Gradients of ``f`` from ``baseline`` to ``x``, summed over colour channels.
    Returns (B, S, S) attributions and the (B,) completeness gap ``sum(attr) - (f(x) - f(baseline))``."""
    from captum.attr import IntegratedGradients

    attr, delta = IntegratedGradients(f).attribute(
        x,
        baselines=baseline,
        n_steps=n_steps,
        internal_batch_size=internal_batch_size,
        return_convergence_delta=True,
    )  # (B, 3, S, S), (B,)
    return attr.sum(1).detach().cpu().numpy(), delta.detach().cpu().numpy()


def occlusion(
    f,
    x: torch.Tensor,
    baseline: torch.Tensor,
    window: int = 16,
    stride: int | None = None,
    per_eval: int = 16,
) -> np.ndarray:
    """captum's Occlusion: paste ``window`` x ``window`` patches of ``baseline`` into ``x`` (every ``stride``
    pixels, default half a window) and record how much the score drops; per pixel, the mean drop over the
    patches covering it, summed over colour channels. Returns (B, S, S)."""
    from captum.attr import Occlusion

    stride = stride or max(1, window // 2)
    attr = Occlusion(f).attribute(
        x,
        sliding_window_shapes=(3, window, window),
        strides=(3, stride, stride),
        baselines=baseline,
        perturbations_per_eval=per_eval,
    )  # (B, 3, S, S)
    return attr.sum(1).detach().cpu().numpy()


def share_inside(values: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the positive part of ``values`` (H, W) that lies inside ``mask`` (H, W, nonzero = defect);
    NaN when nothing is positive. Compare it with the mask's area share: a random spread gives a ratio of 1."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0, None)
    total = v.sum()
    return float(v[np.asarray(mask) > 0].sum() / total) if total > 0 else float("nan")
