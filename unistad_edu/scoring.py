"""Scoring: the one path from a method's per-level maps to a pixel map and an image score.

Every method returns ``anomaly_maps(batch) -> {name: (B, 1, h, w)}`` at its own resolutions. This module
turns them into an :class:`AnomalyOutput` the same way for all methods; what differs between papers is a
parameter of :class:`ScoringConfig`, never a copy of this code:

1. **upsample** every map bilinearly to the image size (B, 1, H, W);
2. **fuse** the levels: ``product`` (STPM), ``sum`` (RD4AD), or ``mean``;
3. optionally **smooth** with a Gaussian (sigma = 4 px is the MVTec custom);
4. **image score** from the map: ``max``, ``avgpool_max`` (UniAD: max of a k x k average pool), or
   ``topk_mean`` (Dinomaly: mean of the top fraction of pixels).

Scores are left raw -- no sigmoid, no clamping -- because rank metrics need them untouched.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

FUSE = ("product", "sum", "mean")
IMAGE_SCORES = ("max", "avgpool_max", "topk_mean")


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


@dataclass
class AnomalyOutput:
    anomaly_map: torch.Tensor  # (B, 1, H, W)
    pred_score: torch.Tensor  # (B,)
    level_maps: dict[str, torch.Tensor] = field(default_factory=dict)  # each (B, 1, H, W), before fusion


def gaussian_kernel1d(sigma: float, device=None) -> torch.Tensor:
    radius = max(1, int(math.ceil(4 * sigma)))  # truncate at 4 sigma, as scipy does
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) with reflect padding."""
    if sigma <= 0:
        return x
    k = gaussian_kernel1d(sigma, x.device).to(x.dtype)
    r = k.numel() // 2
    r_h, r_w = min(r, x.shape[-2] - 1), min(r, x.shape[-1] - 1)  # reflect needs pad < size
    if r_h < r or r_w < r:  # tiny maps: crop the kernel to what reflect padding allows
        k_h, k_w = k[r - r_h: r + r_h + 1], k[r - r_w: r + r_w + 1]
        k_h, k_w = k_h / k_h.sum(), k_w / k_w.sum()
    else:
        k_h = k_w = k
    x = F.pad(x, (r_w, r_w, 0, 0), mode="reflect")
    x = F.conv2d(x, k_w.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, r_h, r_h), mode="reflect")
    return F.conv2d(x, k_h.view(1, 1, -1, 1))


def image_score(anomaly_map: torch.Tensor, cfg: ScoringConfig) -> torch.Tensor:
    """(B, 1, H, W) -> (B,)"""
    flat = anomaly_map.flatten(1)  # (B, H*W)
    if cfg.image_score == "max":
        return flat.max(dim=1).values
    if cfg.image_score == "avgpool_max":
        k = min(cfg.pool_size, *anomaly_map.shape[-2:])
        return F.avg_pool2d(anomaly_map, k, stride=1).flatten(1).max(dim=1).values
    n = max(1, int(round(flat.shape[1] * cfg.topk)))
    return flat.topk(n, dim=1).values.mean(dim=1)


def score(maps: dict[str, torch.Tensor], image_size, cfg: ScoringConfig | None = None) -> AnomalyOutput:
    """Per-level maps {name: (B, 1, h, w)} -> AnomalyOutput with map (B, 1, H, W) and score (B,)."""
    cfg = cfg or ScoringConfig()
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    device_type = next(iter(maps.values())).device.type
    with torch.autocast(device_type, enabled=False):  # full precision: bf16 maps would create rank ties
        return _score_fp32(maps, size, cfg)


def _score_fp32(maps: dict[str, torch.Tensor], size: tuple, cfg: ScoringConfig) -> AnomalyOutput:
    up = {k: F.interpolate(m.float(), size=size, mode="bilinear", align_corners=False) for k, m in maps.items()}
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
