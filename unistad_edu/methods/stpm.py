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

from ..layers import pyramid_maps
from ..scoring import ScoringConfig
from ..teacher import Pyramid
from .base import Batch, Method, MethodConfig, paper_recipe


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
    scoring: ScoringConfig = field(
        default_factory=lambda: ScoringConfig(fuse="product", blur_sigma=4.0, image_score="max")
    )


class STPM(Method):
    name = "stpm"
    Config = STPMConfig
    presets = {
        "cpu": {},
        "paper": paper_recipe("stpm"),
    }

    def __init__(self, teacher, cfg: STPMConfig):
        super().__init__(teacher, cfg)
        self.student = Pyramid.random_like(teacher, seed=cfg.student_seed)

    def level_maps(self, batch: Batch) -> dict[str, torch.Tensor]:
        """{level: (B, 1, h, w)}: 0.5 ||t/|t| - s/|s| ||^2 at every position (``layers.pyramid_maps``)."""
        t = self.teacher_features(batch)
        s = self.student(self.teacher.normalize(batch.image))  # conv layout follows the weights
        return pyramid_maps(t, s, self.teacher.layer_names)

    def loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One term per level: Eq. 1, 0.5 / (h w) * sum over positions and channels, mean over the batch --
        the mean of the level's map."""
        return {name: m.mean() for name, m in self.level_maps(batch).items()}

    def anomaly_maps(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.level_maps(batch)
