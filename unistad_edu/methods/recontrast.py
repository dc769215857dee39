"""ReContrast's encoder for reverse distillation: a slowly trained copy of the teacher beside the frozen one.

Paper card
    Title: ReContrast: Domain-Specific Anomaly Detection via Contrastive Reconstruction. Guo et al.
    Venue: NeurIPS 2023. Official code: github.com/guojiajeremy/ReContrast.
    What it fixes: a frozen ImageNet encoder describes industrial images in ImageNet's terms, and RD's decoder
    can only learn to rebuild those. ReContrast lets a **copy of the encoder** adapt to the target domain at a
    very small learning rate, while a **frozen copy** keeps it from drifting into a trivial solution: the
    bottleneck and decoder rebuild *both* encoders' features, each from the *other* one's (cross
    supervision): what the decoder makes from the trainable encoder's features must match the frozen
    encoder's, and what it makes from the frozen encoder's must match the trainable one's. In the unified
    benchmark of ``../shared/methods.md`` sec. 9 this took RD4AD from 94.6 to 98.3 I-AUROC on MVTec AD (their
    GPU runs, not ours).
    Follows: the official code (our reading of ``models/recontrast.py`` and ``recontrast_mvtec_multiclass.py``,
    the paper's text not read here): both encoders' levels go through the bottleneck as one batch; the loss is
    half the flattened cosine (with hard-point mining) of frozen vs decoded-from-trainable plus half of
    trainable vs decoded-from-frozen, the targets detached; the trainable encoder's BatchNorm stays in eval mode
    (the multi-class script's ``encoder_bn_train=False``); its learning rate is 1e-5 against the decoder's
    2e-3, a ratio of 0.005 (``recontrast_lr_scale``); the anomaly map sums the 1 - cos maps of all the pairs.
    Ours: the package's hard-point mining (Dinomaly's quantile rule, ``hm_quantile``) instead of ReContrast's
    mean + alpha * std rule with its alpha schedule; the method's own optimiser and schedule (the official:
    AdamW, 5000 iterations, a step at 80 %); only RD has the switch -- SNL's structural terms compare levels of
    one pyramid with each other and are not defined across two.

Cost: the trainable encoder runs forward and backward on every training image (no feature cache for it), and
at inference it runs beside the teacher: roughly the price of a second teacher.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

LR_SCALE = 1e-5 / 2e-3  # the official encoder / decoder learning rates


def trainable_copy(teacher) -> nn.Module:
    """The teacher's truncated network (its ``Pyramid``: image normalised -> levels), copied with its pretrained
    weights and made trainable; the teacher itself is untouched."""
    encoder = copy.deepcopy(teacher.pyramid)
    encoder.requires_grad_(True)
    return encoder.eval()


def encoder_levels(method, image: torch.Tensor) -> list[torch.Tensor]:
    """The trainable encoder's levels (fine -> coarse, float32) for images in [0, 1]."""
    feats = method.encoder(method.teacher.normalize(image))
    return [feats[name].float() for name in method.teacher.layer_names]


def cross_pairs(
    frozen: list[torch.Tensor], trained: list[torch.Tensor], decoded: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(targets, predictions) of the cross supervision: ``decoded`` holds, per level, the decoder's output for
    the batch ``[trained; frozen]`` (2B images); its first half must match the frozen levels, its second half
    the trained levels (detached: the targets never move towards the prediction)."""
    first = [d[: d.shape[0] // 2] for d in decoded]
    second = [d[d.shape[0] // 2 :] for d in decoded]
    return frozen + [t.detach() for t in trained], first + second
