"""STPM -- Student-Teacher Feature Pyramid Matching.

Paper card
    Title: Student-Teacher Feature Pyramid Matching for Anomaly Detection. Wang, Han, Ding, Huang.
    Venue: BMVC 2021. arXiv: 2103.04257.
    What it fixes: a single-level student-teacher misses defects of other sizes; matching a whole pyramid of
    levels catches small and large defects with one student.
    Follows: Sec. 3 (Eq. 1 loss, Eq. 2-3 anomaly map); the anomalib ``Stfpm`` implementation for details.
    Simplified / our choices: the loss is averaged over the batch (anomalib sums it, which ties the learning
    rate to the batch size); the teacher is any timm backbone (Lite0 by default, ResNet-18 in the paper
    preset); the map is smoothed with a Gaussian (sigma = 4) by default, a scoring parameter.

The student has the teacher's architecture and starts from random weights. Both pyramids are L2-normalised
along channels; a position's anomaly at level l is ``0.5 * ||t_l - s_l||^2``; the levels are multiplied.
Trained on normal images of *every* category at once, one student must imitate the teacher on all of them:
this is the baseline that shows cross-class interference (lesson 03).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..scoring import ScoringConfig
from ..teacher import Pyramid
from .base import Batch, Method, MethodConfig


@dataclass
class STPMConfig(MethodConfig):
    """STPM. Defaults = the ``cpu`` preset: Lite0 teacher (strides 4/8/16), 256 px, Adam 1e-3, 10 epochs.

    Measured here (2 cores, bf16 autocast + channels_last): one epoch over the 672 unified training images
    of the five real categories takes about 35 s, so the preset trains in about 6 minutes; the loss is
    still falling slowly after 8 epochs (2.06 -> 0.66), which is where the unified model already reached a
    mean I-AUROC of 0.90 on those categories. See docs/benchmarks.md for the full tables."""

    epochs: int = 10
    batch_size: int = 16
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-5
    student_seed: int = 0
    scoring: ScoringConfig = field(default_factory=lambda: ScoringConfig(fuse="product", blur_sigma=4.0,
                                                                         image_score="max"))


class STPM(Method):
    name = "stpm"
    Config = STPMConfig
    presets = {
        "cpu": {},
        "paper": dict(teacher="resnet18", image_size=256, optimizer="sgd", lr=0.4, momentum=0.9,
                      weight_decay=1e-4, epochs=100, batch_size=32),
    }

    def __init__(self, teacher, cfg: STPMConfig):
        super().__init__(teacher, cfg)
        self.student = Pyramid.random_like(teacher, seed=cfg.student_seed)

    def _pairs(self, batch: Batch):
        t = self.teacher_features(batch)
        x = self.teacher.normalize(batch.image)  # (B, 3, S, S); conv layout follows the weights (channels_last or not)
        s = self.student(x)
        for name in self.teacher.layer_names:
            # (B, C, h, w) each, unit length along channels
            yield name, F.normalize(t[name].float(), dim=1), F.normalize(s[name].float(), dim=1)

    def loss(self, batch: Batch) -> torch.Tensor:
        total = 0.0
        for _, t, s in self._pairs(batch):
            h, w = t.shape[-2:]
            # Eq. 1: 0.5 / (h w) * sum over positions and channels, then mean over the batch
            total = total + 0.5 * (t - s).pow(2).sum(dim=(1, 2, 3)).mean() / (h * w)
        return total

    def anomaly_maps(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {name: 0.5 * (t - s).pow(2).sum(dim=1, keepdim=True) for name, t, s in self._pairs(batch)}
