"""RD++'s additions to reverse distillation: a projection before the bottleneck, taught to erase noise patches.

Paper card
    Title: Revisiting Reverse Distillation for Anomaly Detection. Tien, Nguyen, Tran, Huy, Duong, Nguyen,
    Truong. Venue: CVPR 2023. Official code: github.com/tientrandinh/Revisiting-Reverse-Distillation.
    What it fixes: RD's bottleneck reads the teacher's features of the image as they are, so an anomaly the
    teacher sees can travel through the one-class embedding and be rebuilt by the decoder -- then it scores
    low. RD++ puts a trainable **projection** per teacher level between the teacher and the bottleneck and
    trains it on normal images with a **noise patch** pasted in: the projection of the noised image must match
    the projection of the clean one, so what the bottleneck gets is the normal image's features with the patch
    removed. In the unified benchmark of ``../shared/methods.md`` sec. 9 this took RD from 93.6 to 97.9
    I-AUROC on MVTec AD (their GPU runs, not ours).
    Follows: the official training code, since the paper's text was not read here (our reading of
    ``utils/utils_train.py``, ``main.py`` and ``dataset/dataset.py``): the projection layer (four 3 x 3
    convolutions C -> C/2 -> C/4 -> C/2 -> C, each followed by InstanceNorm and LeakyReLU); the decoder rebuilds
    the *unprojected* teacher levels from the bottleneck of the projected ones; the extra loss
    ``0.2 * (SSOT + 0.01 * reconstruct + 0.1 * contrast) / 1.11`` where ``reconstruct`` = mean per-position
    ``1 - cos`` between the projections of the noised and of the clean image and ``contrast`` = ``1 - cos``
    between the flattened teacher features of the noised image and the flattened projection of the clean one
    (the code's ``CosineEmbeddingLoss`` with target 1; its margin only acts on target -1); the noise: one
    rectangle per image, sides 10 to S/8 - 1 px, plus 0.2 x smooth noise, on the image in [0, 1].
    Ours:
      * the optimal-transport term (SSOT) is left out, its weight kept in the 1.11: the official code measures
        a debiased Sinkhorn divergence between the batch's softmaxed projections and *the same batch shuffled*,
        as two clouds of B points. Two clouds of the same points are the same measure, whose debiased
        divergence to itself is 0 for any features -- the term and its gradient vanish (the idea the paper
        names, compactness between normal samples, is not what that code computes);
      * value noise (octaves of bilinearly upsampled uniform noise, persistence 0.6, six octaves) instead of
        3D simplex noise; same amplitude, same rectangles;
      * one optimiser and learning rate for every trainable part (the official code: Adam 0.001 for the
        projection, 0.005 for the decoder, gradients accumulated over two batches).

Cost: the clean image's teacher features come from the feature cache; the noised one's need one more teacher
forward per training step (inference is unchanged but for the projection).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import cosine_distance, global_cosine_distance

WEIGHT = 0.2  # the official weight_proj
RECONSTRUCT, CONTRAST, NORM = (
    0.01,
    0.1,
    1.11,
)  # the official weights and normalisation (SSOT's 1 in the 1.11)
AMPLITUDE, OCTAVES, PERSISTENCE = 0.2, 6, 0.6  # the official noise's


class ProjectionLayer(nn.Module):
    """One level's projection: (B, C, h, w) -> (B, C, h, w) through C/2, C/4, C/2 channels, 3 x 3 convs, each
    followed by InstanceNorm and LeakyReLU (the official ``ProjLayer``)."""

    def __init__(self, channels: int):
        super().__init__()
        widths = [
            channels,
            max(1, channels // 2),
            max(1, channels // 4),
            max(1, channels // 2),
            channels,
        ]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(a, b, 3, padding=1), nn.InstanceNorm2d(b), nn.LeakyReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Projection(nn.Module):
    """A :class:`ProjectionLayer` per teacher level (fine -> coarse), initialised from ``seed`` whatever the
    global RNG holds."""

    def __init__(self, channels: list[int], seed: int):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.levels = nn.ModuleList(ProjectionLayer(c) for c in channels)

    def forward(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        return [p(x) for p, x in zip(self.levels, levels)]


def patch_size_range(size: int) -> tuple[int, int]:
    """(smallest, largest) side of a noise rectangle on a ``size`` px image: 10 .. size/8 - 1 px (the official
    range at 256 px: 10 .. 31), shrunk for small images so that it is never empty."""
    hi = max(1, size // 8 - 1)
    return min(10, hi), hi


def value_noise(shape: tuple[int, int, int], generator=None) -> torch.Tensor:
    """(C, h, w) smooth noise in [-1, 1]: octaves k = 0..5 of uniform noise on a (2^k + 1)-point grid, upsampled
    bilinearly, weighted 0.6^k and normalised by the weights' sum."""
    c, h, w = shape
    total = torch.zeros(c, h, w)
    for k in range(OCTAVES):
        n = 2**k + 1
        grid = torch.rand(1, c, n, n, generator=generator) * 2 - 1
        total += (
            PERSISTENCE**k
            * F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=True)[0]
        )
    return total / sum(PERSISTENCE**k for k in range(OCTAVES))


def noise_patches(images: torch.Tensor, generator=None) -> torch.Tensor:
    """(B, 3, S, S) images in [0, 1] -> a copy with one rectangle per image (sides from
    :func:`patch_size_range`, anywhere inside the image) plus ``0.2 *`` :func:`value_noise`; the rest untouched."""
    b, c, s, _ = images.shape
    lo, hi = patch_size_range(s)
    out = images.clone()
    for i in range(b):
        h, w = (int(v) for v in torch.randint(lo, hi + 1, (2,), generator=generator))
        y = int(torch.randint(0, s - h + 1, (1,), generator=generator))
        x = int(torch.randint(0, s - w + 1, (1,), generator=generator))
        noise = AMPLITUDE * value_noise((c, h, w), generator).to(images)
        out[i, :, y : y + h, x : x + w] += noise
    return out


def losses(
    noised_teacher: list[torch.Tensor],
    projected_noised: list[torch.Tensor],
    projected_clean: list[torch.Tensor],
    weight: float = WEIGHT,
) -> dict[str, torch.Tensor]:
    """RD++'s extra terms over the levels (each (B, C_l, h_l, w_l)), weighted as the official loss:
    ``rdpp_reconstruct`` = the per-position cosine distance of the noised image's projection to the clean
    image's, ``rdpp_contrast`` = the cosine distance of the noised image's flattened teacher level to the clean
    image's flattened projection."""
    reconstruct = sum(
        cosine_distance(a, b, dim=1).mean() for a, b in zip(projected_noised, projected_clean)
    )
    contrast = sum(
        global_cosine_distance(t, p).mean() for t, p in zip(noised_teacher, projected_clean)
    )
    return {
        "rdpp_reconstruct": weight * RECONSTRUCT / NORM * reconstruct,
        "rdpp_contrast": weight * CONTRAST / NORM * contrast,
    }


def terms(method, batch, out: dict) -> dict[str, torch.Tensor]:
    """RD++'s terms for a reverse student (``RD`` or ``SNL`` with ``rdpp`` on) whose :meth:`forward` gave ``out``
    (with ``projected``, the clean image's projection): the batch's images are noised, the frozen teacher reads
    them (one more forward) and the projection maps them. Outside training the noise is drawn from a fixed
    seed, so an evaluated loss is repeatable."""
    generator = None if method.training else torch.Generator().manual_seed(0)
    with torch.no_grad():
        feats = method.teacher(noise_patches(batch.image, generator))
    noised = [feats[name].float() for name in method.teacher.layer_names]
    return losses(noised, method.projection(noised), out["projected"], method.cfg.rdpp_weight)
