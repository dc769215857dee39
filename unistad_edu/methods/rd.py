"""RD -- reverse distillation: a decoder student rebuilds the teacher's pyramid from a one-class embedding.

Paper card
    Title: Anomaly Detection via Reverse Distillation from One-Class Embedding. Deng & Li.
    Venue: CVPR 2022. arXiv: 2201.10703. Official code: github.com/hq-deng/RD4AD.
    What it fixes: in forward distillation (STPM) the student sees the same image as the teacher and,
    having a similar architecture, it often imitates the teacher on anomalies too. Reverse distillation
    makes the student's task *different* from the teacher's: the student is a **decoder** that starts from
    a low-resolution, high-level embedding and has to rebuild the teacher's multi-scale features. A
    trainable **bottleneck** (OCBE) squeezes the teacher's pyramid into that embedding: a multi-scale
    feature fusion (MFF) of the teacher levels, then a one-class embedding block (OCE) that keeps what the
    decoder needs for normal images and drops the rest, so anomalous details do not reach the decoder.
    Follows: Sec. 3 (Eq. 1-3: per-position ``1 - cos`` along channels, summed over levels; the map is the
    sum of the upsampled per-level maps, Gaussian sigma = 4; image score = max) and the RD4AD recipe that
    methods.md sec. 7 records [recalled]: WideResNet-50 teacher layers 1-3 at 256 px, Adam lr 0.005,
    betas (0.5, 0.999), batch 16, 200 epochs -- the ``paper`` preset.
    Simplified / our choices:
      * one generic builder instead of ResNet-specific code: the channels and strides come from the
        teacher's ``feature_info``. MFF branch l uses ``log2(s_L / s_l)`` stride-2 3x3 convs (each doubling
        the channels, the last one landing on C_L) -- for WideResNet-50 this is exactly RD4AD's
        256->512->1024 and 512->1024 branches and the 3 x 1024 = 3072-channel concatenation;
      * our own residual block (1x1 -> 3x3 or 2x2 transposed conv -> 1x1, BatchNorm, ReLU), width
        ``block_width * C_out`` (0.5 = the wide-ResNet bottleneck width); OCE = ``oce_blocks`` of them, the
        first one stride 2; each decoder stage = one up-sampling block + ``decoder_blocks[l] - 1`` more;
      * ``linear_outputs=True`` drops the final ReLU of each decoder stage, so the student can match
        teachers whose features are signed (an EfficientNet block ends in a linear projection); RD4AD's
        decoder ends in a ReLU, which fits post-ReLU ResNet features -- the ``paper`` preset sets False;
      * the loss is a switch (``rd_loss``): the paper's Eq. 2 takes the cosine per position and averages it
        (``position``, the same quantity as the anomaly map); the official training script's
        ``loss_fucntion`` flattens each level of an image into one vector and takes one cosine per image
        (``flattened``, the ``paper`` preset's). The flattened loss weighs a position by its feature norm
        and lets a few badly rebuilt positions cost little against a well-rebuilt image;
      * a decoder output whose grid differs from the teacher's (odd grids, e.g. 13 x 13) is resized
        bilinearly to the teacher's grid; the 1 - cos is written as ``0.5 * ||t/|t| - s/|s| ||^2`` (equal to
        1 - cos for non-zero vectors, and 0 for two all-zero vectors instead of 1).

Data flow (shapes for the ``cpu`` preset: Lite0 levels 24/40/112 channels at strides 4/8/16, 256 px)::

    teacher {(B, 24, 64, 64), (B, 40, 32, 32), (B, 112, 16, 16)}          (frozen; from the feature cache)
      -> MFF: (B, 24, 64, 64) -conv s2-> (B, 48, 32, 32) -conv s2-> (B, 112, 16, 16)
              (B, 40, 32, 32) -conv s2-> (B, 112, 16, 16);  (B, 112, 16, 16) as is
              concat                                                   -> (B, 336, 16, 16)
      -> OCE: residual block, stride 2 (+ more blocks)                 -> embedding (B, 224, 8, 8)
      -> decoder: up-block -> (B, 112, 16, 16) -> up-block -> (B, 40, 32, 32) -> up-block -> (B, 24, 64, 64)
    loss = sum_l mean_{b,h,w} (1 - cos_c(t_l, s_l))   (position; flattened: sum_l mean_b (1 - cos(vec t_l, vec s_l)))
    maps {level: (B, 1, h_l, w_l)} = 1 - cos_c(t_l, s_l)

The student consumes only teacher features, never the image: ``needs_images = False`` (the engine trains it
from the feature cache). SNL (``snl.py``) is this student plus extra distillation terms and a CRAM block (the network is
``layers.reverse_student``, shared).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layers import (
    cosine_distance,
    global_cosine_distance,
    noisy_input,
    reverse_student,
    scale_easy_gradients,
)
from . import rd_plus, recontrast
from .base import Batch, Method, ReverseDistillationConfig, paper_recipe
from .recontrast import LR_SCALE as RECONTRAST_LR_SCALE


@dataclass
class RDConfig(ReverseDistillationConfig):
    """Reverse distillation. Defaults = the ``cpu`` preset: the student network and optimisation of
    :class:`~unistad_edu.methods.base.ReverseDistillationConfig` (shared with SNL): Lite0 teacher (strides
    4/8/16 -> 24/40/112 channels), 256 px, one OCE block (embedding 2 x 112 = 224 channels at 8 x 8), one
    decoder block per level (0.51 M trainable parameters); Adam lr 0.005, betas (0.5, 0.999) as RD4AD; 30
    epochs, batch 16. Measured here (2-core machine under load ~2, features cached, bf16, one thread): a
    training step of 16 images takes ~0.17 s, so an epoch over the ~670 real unified training images is
    ~7 s and the preset trains in about 4 minutes. A wider student (2 blocks per stage, 2 OCE blocks,
    block_width 1.0) cost ~0.45 s per step. With ReLU outputs (``linear_outputs=False``) the loss fell
    markedly slower on the Lite0 teacher (2.14 vs 1.47 after 6 steps on random images).

    Chosen on the validation set (``data validation``; figures in ``docs/benchmarks.md``): the official
    flattened cosine over the paper's per-position Eq. 2, and of the unified-reconstruction switches the loose
    loss (the gradient of each level's best-rebuilt 90 % of positions scaled by 0.1) against none; the noisy
    bottleneck was compared too and left off; then, over that, RD++'s projection (``rdpp``, taken) and
    ReContrast's trainable encoder (``recontrast``, left off); then, over that, the noise as UniAD's feature
    jitter on the bottleneck's input (``bottleneck_jitter``: alpha 20, UniAD's, and alpha 5 compared; alpha 5
    taken -- alpha is relative to the channels, the noise's norm about alpha / sqrt(C) of a feature's, and
    RD's finest level has 24). RD++ costs one more teacher forward per training step (the noised images)."""

    rd_loss: str = "flattened"
    hm_quantile: float = 0.9
    rdpp: bool = True
    # the noise: UniAD's feature jitter on the bottleneck's input, alpha 5 (chosen on validation)
    bottleneck_jitter: float = 5.0
    # ReContrast's encoder (methods/recontrast.py): a trainable copy of the teacher beside the frozen one,
    # cross-supervised, at recontrast_lr_scale x the learning rate (the official 1e-5 / 2e-3); off here
    recontrast: bool = False
    recontrast_lr_scale: float = RECONTRAST_LR_SCALE

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.recontrast_lr_scale <= 1:
            raise ValueError(
                f"recontrast_lr_scale must be in (0, 1], got {self.recontrast_lr_scale}"
            )
        if self.recontrast and self.rdpp:
            raise ValueError(
                "rdpp and recontrast cannot both be on: RD++'s projection reads one pyramid "
                "(RD's cpu preset has rdpp on: add --set rdpp=false)"
            )


def noisy_levels(
    levels: list[torch.Tensor], p: float, training: bool, jitter: float = 0.0
) -> list[torch.Tensor]:
    """The teacher levels as the student's bottleneck reads them: while training, with UniAD's feature jitter
    of scale ``jitter`` (``layers.add_jitter``, per position over the channels) and then dropout ``p`` -- a
    noisy bottleneck, so copying them is never exact; unchanged otherwise (and in eval mode). The loss's
    targets stay the clean levels."""
    return [noisy_input(x, p, jitter, dim=1) for x in levels] if training else levels


def add_projection(method, cfg) -> None:
    """RD++'s projection (``rd_plus.Projection``) on a reverse student when ``cfg.rdpp``, else ``None``; with it
    the loss reads the images too (the noised copy goes through the teacher), so the engine keeps them."""
    channels = [lv.channels for lv in method.teacher.feature_info]
    method.projection = rd_plus.Projection(channels, cfg.init_seed + 2) if cfg.rdpp else None
    method.needs_images = bool(cfg.rdpp)


def bottleneck_input(method, levels: list[torch.Tensor]) -> list[torch.Tensor]:
    """What the bottleneck reads: the teacher's levels, or their RD++ projection when it is on."""
    return levels if method.projection is None else method.projection(levels)


def position_cosine_distance(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) x 2 -> (B, 1, h, w): the cosine distance of the channel vectors at every position."""
    return cosine_distance(t, s, dim=1)


def distillation_loss(
    teacher: list[torch.Tensor],
    student: list[torch.Tensor],
    rule: str = "position",
    hm_quantile: float = 0.0,
    hm_factor: float = 0.1,
) -> torch.Tensor:
    """RD's loss summed over levels (each (B, C_l, h_l, w_l)): ``position`` = mean over images and positions
    of the per-position cosine distance (Eq. 2); ``flattened`` = mean over images of the cosine distance of
    the whole level flattened to one vector (the official training code). ``hm_quantile`` > 0: hard-point
    mining -- the gradient of each level's positions below that quantile of their distance is scaled by
    ``hm_factor`` (``layers.scale_easy_gradients``; the value of the loss is unchanged)."""
    if hm_quantile > 0:
        student = [
            scale_easy_gradients(s, position_cosine_distance(t, s)[:, 0], hm_quantile, hm_factor)
            for t, s in zip(teacher, student)
        ]
    if rule == "flattened":
        return sum(global_cosine_distance(t, s).mean() for t, s in zip(teacher, student))
    return sum(position_cosine_distance(t, s).mean() for t, s in zip(teacher, student))


# ---- the method ----------------------------------------------------------------------------------------
class RD(Method):
    name = "rd"
    Config = RDConfig
    needs_images = False  # loss() reads teacher features only: trains from the cache without images
    presets = {"cpu": {}, "paper": paper_recipe("rd")}  # RD4AD's

    def __init__(self, teacher, cfg: RDConfig):
        super().__init__(teacher, cfg)
        self.channels = [lv.channels for lv in teacher.feature_info]  # e.g. [24, 40, 112] (Lite0)
        # OCBE bottleneck and decoder student, sized from feature_info, from cfg.init_seed (layers.py)
        self.bottleneck, self.decoder, self.embed_channels = reverse_student(
            teacher.feature_info, cfg
        )
        add_projection(self, cfg)
        self.encoder = recontrast.trainable_copy(teacher) if cfg.recontrast else None
        if cfg.recontrast:
            self.needs_images = True  # the trainable encoder reads the image

    def train(self, mode: bool = True):
        super().train(mode)
        if self.encoder is not None:
            self.encoder.eval()  # ReContrast's encoder keeps its pretrained BatchNorm statistics
        return self

    def param_groups(self) -> list[dict]:
        """With ReContrast's encoder: its parameters at ``recontrast_lr_scale`` x the learning rate."""
        if self.encoder is None:
            return super().param_groups()
        mine = {id(p) for p in self.encoder.parameters()}
        rest = [p for p in self.trainable_parameters() if id(p) not in mine]
        return [
            {"params": rest, "lr_scale": 1.0},
            {"params": list(self.encoder.parameters()), "lr_scale": self.cfg.recontrast_lr_scale},
        ]

    def map_names(self) -> list[str]:
        """One name per map: the teacher's levels, then (ReContrast) the trainable encoder's."""
        names = list(self.teacher.layer_names)
        return names + [f"encoder.{n}" for n in names] if self.encoder is not None else names

    # ---- pieces -----------------------------------------------------------------------------------------
    def teacher_levels(self, batch: Batch) -> list[torch.Tensor]:
        """The teacher's levels in float32, fine -> coarse, each (B, C_l, h_l, w_l)."""
        feats = self.teacher_features(batch)
        return [feats[name].float() for name in self.teacher.layer_names]

    def forward(self, batch: Batch) -> dict:
        """``teacher`` and ``student`` level lists (fine -> coarse, float32) and the ``embedding`` (and with
        RD++ on, ``projected``: the levels the bottleneck read). With ReContrast's encoder the lists hold the
        2 L cross pairs (``recontrast.cross_pairs``): frozen levels vs what the decoder made of the trainable
        encoder's, then the trainable (detached) vs what it made of the frozen teacher's."""
        t = self.teacher_levels(batch)
        p = bottleneck_input(self, t)
        e = recontrast.encoder_levels(self, batch.image) if self.encoder is not None else []
        if e:  # ReContrast: the trainable copy's levels, then the frozen ones, one batch of 2B
            p = [torch.cat([a, b]) for a, b in zip(e, p)]
        z = self.bottleneck(
            noisy_levels(p, self.cfg.bottleneck_dropout, self.training, self.cfg.bottleneck_jitter)
        )  # (B, D, h_L/2, w_L/2)
        # each (B, C_l, h_l, w_l)
        s = [x.float() for x in self.decoder(z, [tuple(f.shape[-2:]) for f in t])]
        if e:  # the cross pairs: 2 L levels
            t, s = recontrast.cross_pairs(t, e, s)
        out = {"teacher": t, "student": s, "embedding": z}
        return {**out, "projected": p} if self.projection is not None else out

    def terms_from(self, out: dict) -> dict[str, torch.Tensor]:
        """The named, weighted loss terms of a :meth:`forward` output (lessons apply SNL's to RD's outputs)."""
        return {
            "position_cosine"
            if self.cfg.rd_loss == "position"
            else "flattened_cosine": distillation_loss(
                out["teacher"],
                out["student"],
                self.cfg.rd_loss,
                self.cfg.hm_quantile,
                self.cfg.hm_factor,
            )
        }

    # ---- the contract ----------------------------------------------------------------------------------
    def loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        out = self.forward(batch)
        extra = rd_plus.terms(self, batch, out) if self.projection is not None else {}
        return {**self.terms_from(out), **extra}

    def anomaly_maps(self, batch: Batch) -> dict[str, torch.Tensor]:
        out = self.forward(batch)
        return {
            name: position_cosine_distance(t, s)  # (B, 1, h_l, w_l)
            for name, t, s in zip(self.map_names(), out["teacher"], out["student"])
        }
