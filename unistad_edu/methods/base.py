"""The method contract every paper implementation keeps.

A method is an ``nn.Module`` that owns the frozen teacher and its trainable parts, with

* ``loss(batch) -> scalar Tensor`` for training on normal images, and
* ``anomaly_maps(batch) -> {name: (B, 1, h, w)}`` at test time, turned into a pixel map and an image score by
  the one shared :func:`unistad_edu.scoring.score` with the method's :class:`ScoringConfig`.

A :class:`Batch` holds only the images and, when the feature cache is on, the teacher's features. It has no
category field: a unified model cannot read which product it is looking at, by construction.

Each method has its own config dataclass (a subclass of :class:`MethodConfig`) and two presets: ``cpu`` (what
trains well in minutes on a 2-core laptop, with the Lite0 teacher) and ``paper`` (the paper's recipe).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn

from ..scoring import AnomalyOutput, ScoringConfig, score


@dataclass
class Batch:
    """What a method sees: images (B, 3, S, S) in [0, 1] and optionally cached teacher features."""

    image: torch.Tensor
    features: dict[str, torch.Tensor] | None = None


@dataclass
class MethodConfig:
    """Fields every method has; a method's own config adds its knobs."""

    teacher: str = "tf_efficientnet_lite0"
    teacher_layers: tuple | None = None  # None: the teacher's default levels (strides 4, 8, 16)
    image_size: int = 256
    epochs: int = 20
    batch_size: int = 16
    optimizer: str = "adam"  # sgd | adam | adamw
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    betas: tuple = (0.9, 0.999)  # adam/adamw
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | step | cosine
    step_epochs: int = 0  # step: multiply lr by gamma every step_epochs (0 = never)
    gamma: float = 0.1
    grad_clip: float | None = None
    scoring: ScoringConfig = field(default_factory=ScoringConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MethodConfig":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; known: {sorted(known)}")
        if isinstance(d.get("scoring"), dict):
            d["scoring"] = ScoringConfig(**d["scoring"])
        for k in ("betas", "teacher_layers"):
            if isinstance(d.get(k), list):
                d[k] = tuple(d[k])
        return cls(**d)


@dataclass
class TransformerTrainingConfig(MethodConfig):
    """The optimisation defaults the transformer methods (UniAD, UniSTAD, dual students) share: AdamW with weight
    decay, a cosine schedule, gradient clipping at 1, batches of 8, and a seed for the initial weights."""

    init_seed: int = 0  # the modules' initial weights, reproducible
    epochs: int = 20
    batch_size: int = 8
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    grad_clip: float | None = 1.0


class Method(nn.Module):
    """Base class: subclasses set ``name``, ``Config``, ``presets`` and implement ``loss``/``anomaly_maps``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = MethodConfig
    presets: ClassVar[dict[str, dict]] = {"cpu": {}, "paper": {}}
    # False: loss() reads only batch.features, never batch.image -- the engine then trains from cached
    # features without keeping images (batch.image is None during training)
    needs_images: ClassVar[bool] = True
    # False: nothing is learned by gradient (e.g. a nearest-neighbour memory bank). engine.fit then makes no
    # optimiser and runs no epochs; it calls build() once with every training batch, then calibrates as usual
    trains_by_gradient: ClassVar[bool] = True
    # names in state_for_checkpoint() whose first dimension is set by the data (loading checks only the rest)
    growing_state: ClassVar[tuple[str, ...]] = ()

    def __init__(self, teacher, cfg: MethodConfig):
        super().__init__()
        self.teacher = teacher
        self.cfg = cfg

    # ---- helpers every method uses ---------------------------------------------------------------------
    def teacher_features(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Cached features when the engine supplied them, else one frozen teacher forward."""
        if batch.features is not None:
            return batch.features
        with torch.no_grad():
            return self.teacher(batch.image)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("teacher.") and p.requires_grad]

    def state_for_checkpoint(self) -> dict[str, torch.Tensor]:
        """Everything but the frozen teacher (the checkpoint records its name and weights hash instead)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_from_checkpoint(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not fit method {self.name!r}: missing {missing[:5]}, "
                             f"unexpected {list(unexpected)[:5]}")

    # ---- the contract -----------------------------------------------------------------------------------
    def loss(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def anomaly_maps(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def build(self, batches) -> dict | None:
        """Only for ``trains_by_gradient = False``: called by the engine once, in eval mode and without
        gradients, with an iterable of :class:`Batch` over **all** training images (one pass, the order of
        epoch 0). The method fits its state from them (e.g. fills a memory bank); it may return numbers for
        the training log. Gradient-trained methods never get this call."""
        raise NotImplementedError(f"{type(self).__name__} trains by gradient; build() is for methods that do not")

    def calibrate(self, batches) -> None:
        """Called by the engine once after training, in eval mode and without gradients, with the held-out
        **normal** images (an iterable of :class:`Batch`) -- the same images the threshold comes from.
        A method that standardises its scores by normal statistics sets them here; the default does nothing."""

    @torch.no_grad()
    def score(self, batch: Batch) -> AnomalyOutput:
        """anomaly_maps -> the shared scoring path, at the input image size."""
        return score(self.anomaly_maps(batch), batch.image.shape[-2:], self.cfg.scoring)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.train(False)  # the teacher stays in eval mode, whatever the method does
        return self
