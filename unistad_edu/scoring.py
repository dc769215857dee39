"""Scoring: the one path from a method's per-level maps to a pixel map and an image score.

Every method returns ``anomaly_maps(batch) -> {name: (B, 1, h, w)}`` at its own resolutions. This module
turns them into an :class:`AnomalyOutput` the same way for all methods; what differs between papers is a
parameter of :class:`ScoringConfig`, never a copy of this code:

1. **upsample** every map bilinearly to the image size (B, 1, H, W);
2. **fuse** the levels: ``product`` (STPM), ``sum`` (RD4AD), or ``mean``;
3. optionally **smooth** with a Gaussian (sigma = 4 px is the MVTec custom);
4. **image score** from the map: ``max``, ``avgpool_max`` (UniAD: max of a k x k average pool), or
   ``topk_mean`` (Dinomaly: mean of the top fraction of pixels);
5. optionally **combine** that map score with per-image scores that come from no map at all
   (``image_terms``, e.g. the dual-student model's semantic distance between class tokens), by a rule
   (``combine``): ``map`` (ignore the terms -- the default, and the only rule when there are none),
   ``terms``, ``sum`` or ``noisy_or``. Before ``sum`` and ``noisy_or`` each score is standardised,
   ``z = (s - mean) / std``, with statistics of *normal* images the method supplies (``calibration``);
   ``noisy_or`` reads each z as a probability ``p = sigmoid(z)`` and returns the Noisy-OR
   ``P = 1 - prod(1 - p)``. See :func:`combine_scores`.

Scores are left raw -- no sigmoid, no clamping -- because rank metrics need them untouched. Even the
Noisy-OR's image score is ``-log(1 - P)``, a strictly increasing function of P that does not saturate:
P itself rounds to exactly 1.0 in float32 once it is within 6e-8 of 1, and ties would corrupt AUROC.
P is returned alongside, as ``AnomalyOutput.probability``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

FUSE = ("product", "sum", "mean")
IMAGE_SCORES = ("max", "avgpool_max", "topk_mean")
COMBINE = ("map", "terms", "sum", "noisy_or")
MAP_SCORE = "map"  # the name of the map-based image score among the combined scores


@dataclass
class ScoringConfig:
    fuse: str = "product"  # how per-level maps combine: product | sum | mean
    blur_sigma: float = 4.0  # Gaussian smoothing of the fused map in pixels; 0 = off
    image_score: str = "max"  # max | avgpool_max | topk_mean
    pool_size: int = 16  # window of avgpool_max
    topk: float = 0.01  # fraction of pixels averaged by topk_mean

    def __post_init__(self):
        if self.fuse not in FUSE:
            raise ValueError(f"fuse must be one of {FUSE}, not {self.fuse!r}")
        if self.image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score must be one of {IMAGE_SCORES}, not {self.image_score!r}")
        if (
            not isinstance(self.blur_sigma, (int, float))
            or not math.isfinite(self.blur_sigma)
            or self.blur_sigma < 0
        ):
            raise ValueError(
                f"blur_sigma must be a finite number >= 0 (0 = no blur), got {self.blur_sigma!r}"
            )
        if (
            isinstance(self.pool_size, bool)
            or not isinstance(self.pool_size, int)
            or self.pool_size < 1
        ):
            raise ValueError(f"pool_size must be a whole number >= 1, got {self.pool_size!r}")
        if not isinstance(self.topk, (int, float)) or not 0 < self.topk <= 1:
            raise ValueError(
                f"topk must be the fraction of pixels averaged, in (0, 1], got {self.topk!r}"
            )


@dataclass
class AnomalyOutput:
    anomaly_map: torch.Tensor  # (B, 1, H, W)
    pred_score: torch.Tensor  # (B,)
    level_maps: dict[str, torch.Tensor] = field(
        default_factory=dict
    )  # each (B, 1, H, W), before fusion
    # with image_terms: every raw per-image score that was combined, {"map": (B,), term: (B,), ...}
    image_scores: dict[str, torch.Tensor] = field(default_factory=dict)
    probability: torch.Tensor | None = None  # (B,) the Noisy-OR P(anomaly) when combine="noisy_or"


def gaussian_kernel1d(sigma: float, device=None) -> torch.Tensor:
    radius = max(1, int(math.ceil(4 * sigma)))  # truncate at 4 sigma, as scipy does
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur_matrix(n: int, sigma: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """(n, n) matrix M with ``M @ v`` = v blurred by the 1-D Gaussian, reflect padding folded in (scipy's
    ``mirror``: index -1 reads 1, index n reads n - 2). Kernel radius 4 sigma, cropped to n - 1 on short axes
    (and renormalised), because reflection cannot reach further."""
    k = gaussian_kernel1d(sigma)
    r = k.numel() // 2
    if r > n - 1:  # tiny maps: crop the kernel to what reflect padding allows
        k = k[r - (n - 1) : r + n]
        k, r = k / k.sum(), n - 1
    idx = (
        torch.arange(n)[:, None] + torch.arange(-r, r + 1)[None]
    )  # (n, 2r+1) source index of each tap
    idx = idx.abs()  # reflect at the start
    idx = torch.where(idx > n - 1, 2 * (n - 1) - idx, idx)  # reflect at the end
    m = torch.zeros(n, n).scatter_add_(1, idx, k.expand(n, -1).contiguous())  # (n, n)
    return m.to(device=device, dtype=dtype)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) with reflect padding, as two dense matrix products
    ``M_h @ x @ M_w^T``. Mathematically the same as two 1-D convolutions, but one-channel convolutions are
    slow on CPU (measured 125 ms forward for 8 maps of 256 x 256 under load vs 14 ms for the products)."""
    if sigma <= 0:
        return x
    H, W = x.shape[-2:]
    m_h = blur_matrix(H, sigma, x.device, x.dtype)  # (H, H)
    m_w = m_h if W == H else blur_matrix(W, sigma, x.device, x.dtype)  # (W, W)
    return m_h @ x @ m_w.T  # (B, 1, H, W)


def image_score(anomaly_map: torch.Tensor, cfg: ScoringConfig) -> torch.Tensor:
    """(B, 1, H, W) -> (B,)"""
    flat = anomaly_map.flatten(1)  # (B, H*W)
    if cfg.image_score == "max":
        return flat.max(dim=1).values
    if cfg.image_score == "avgpool_max":
        k = min(cfg.pool_size, *anomaly_map.shape[-2:])
        return F.avg_pool2d(anomaly_map, k, stride=1).flatten(1).max(dim=1).values
    n = max(1, round(int(flat.shape[1]) * cfg.topk))  # int(): a fixed map size, also when traced
    return flat.topk(n, dim=1).values.mean(dim=1)


def score(
    maps: dict[str, torch.Tensor],
    image_size,
    cfg: ScoringConfig | None = None,
    image_terms: dict[str, torch.Tensor] | None = None,
    combine: str = "map",
    calibration: dict[str, tuple] | None = None,
) -> AnomalyOutput:
    """Per-level maps {name: (B, 1, h, w)} -> AnomalyOutput with map (B, 1, H, W) and score (B,).

    ``image_terms`` {name: (B,)}: per-image scores that come from no map, combined with the map's image score
    (named ``"map"``) by ``combine`` (see :func:`combine_scores`); ``calibration`` {name: (mean, std)} of
    normal images standardises each score first. Without terms and with ``combine="map"`` nothing changes.
    """
    cfg = cfg or ScoringConfig()
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    device_type = next(iter(maps.values())).device.type
    with torch.autocast(
        device_type, enabled=False
    ):  # full precision: bf16 maps would create rank ties
        out = _score_fp32(maps, size, cfg)
        if image_terms is None and combine == "map":
            return out
        scores = {
            MAP_SCORE: out.pred_score,
            **{k: v.float() for k, v in (image_terms or {}).items()},
        }
        out.pred_score, out.probability = combine_scores(scores, combine, calibration)
        out.image_scores = scores
        return out


def standardize(
    scores: dict[str, torch.Tensor], calibration: dict[str, tuple] | None
) -> dict[str, torch.Tensor]:
    """z = (s - mean) / std per named score, with (mean, std) of normal images; a score without calibration
    stays raw (mean 0, std 1)."""
    calibration = calibration or {}
    out = {}
    for name, s in scores.items():
        mean, std = calibration.get(name, (0.0, 1.0))
        out[name] = (s - torch.as_tensor(mean, dtype=s.dtype, device=s.device)) / torch.as_tensor(
            std, dtype=s.dtype, device=s.device
        )
    return out


def combine_scores(
    scores: dict[str, torch.Tensor], rule: str = "map", calibration: dict[str, tuple] | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Named per-image scores {name: (B,)} (``"map"`` = the map-based one) -> (image score (B,), P or None).

    ``map``: the raw map score.  ``terms``: the sum of the standardised other scores.  ``sum``: the sum of
    all standardised scores.  ``noisy_or``: p_k = sigmoid(z_k), P = 1 - prod_k (1 - p_k); the image score is
    ``-log(1 - P) = sum_k softplus(z_k)`` (same order as P, no saturation) and P is returned too.
    """
    if rule not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE}, not {rule!r}")
    if rule == "map":
        return scores[MAP_SCORE], None
    z = standardize(scores, calibration)
    if rule == "terms":
        terms = [v for k, v in z.items() if k != MAP_SCORE]
        if not terms:
            raise ValueError("combine='terms' needs at least one image term besides the map score")
        return torch.stack(terms).sum(dim=0), None
    if rule == "sum":
        return torch.stack(list(z.values())).sum(dim=0), None
    surprise = noisy_or_nll(*z.values())  # -log(1 - P)
    return surprise, -torch.expm1(-surprise)  # P = 1 - exp(-surprise)


def _score_fp32(maps: dict[str, torch.Tensor], size: tuple, cfg: ScoringConfig) -> AnomalyOutput:
    up = {
        k: F.interpolate(m.float(), size=size, mode="bilinear", align_corners=False)
        for k, m in maps.items()
    }
    stack = torch.stack(list(up.values()))  # (L, B, 1, H, W)
    if cfg.fuse == "product":
        fused = stack.prod(dim=0)
    elif cfg.fuse == "sum":
        fused = stack.sum(dim=0)
    else:
        fused = stack.mean(dim=0)
    fused = gaussian_blur(fused, cfg.blur_sigma)
    return AnomalyOutput(anomaly_map=fused, pred_score=image_score(fused, cfg), level_maps=up)


def noisy_or(*probabilities: torch.Tensor) -> torch.Tensor:
    """P(anomaly) = 1 - prod_i (1 - p_i): anomalous if any independent detector fires."""
    out = torch.ones_like(probabilities[0])
    for p in probabilities:
        out = out * (1 - p)
    return 1 - out


def noisy_or_nll(*logits: torch.Tensor) -> torch.Tensor:
    """``-log(1 - P)`` for the Noisy-OR of p_i = sigmoid(z_i), given the logits z_i.

    Since 1 - sigmoid(z) = sigmoid(-z), ``-log(1 - P) = -sum_i log sigmoid(-z_i) = sum_i softplus(z_i)``:
    exact and stable for any z. It is the negative log-likelihood of "normal" under the Noisy-OR (a training
    objective on normal images) and a non-saturating image score with the same order as P.
    """
    out = F.softplus(logits[0])
    for z in logits[1:]:
        out = out + F.softplus(z)  # broadcasts like noisy_or
    return out
