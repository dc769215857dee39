"""Untrained, category-agnostic refinement of an anomaly map along the teacher's feature affinities.

Paper card
    Source: UniSTAD (Liu & Sun, IEEE TCSVT 35(4):3196-3208, 2025, doi 10.1109/TCSVT.2024.3507097). The
    abstract names "an untrained, category-agnostic localisation refinement module" applied at inference;
    only the paper's abstract could be read here and no code was found, so **everything below is our reading**:
    a few steps of a random walk on a k-nearest-neighbour graph of the image's own teacher tokens.
    What it fixes: an anomaly map from feature distances is noisy -- an isolated token can score high
    although its feature looks like many normal tokens of the same image (a student's slip, not a defect).
    Untrained: no parameters, nothing learnt, so nothing to fit per category and nothing to overfit.
    Category-agnostic: it reads only the image's own features, never a class label or a class statistic.

The random walk (per image, tokens i = 1..L of an h x w grid, teacher features f_i)::

    a_i      = concat over levels of f_i^l / ||f_i^l||, then / ||.||   (every level counts equally)
    sim_ij   = a_i . a_j                                                (cosine, self = 1)
    N(i)     = the knn tokens most similar to i (i itself included: sim_ii = 1 is the largest),
               optionally only among tokens within ``radius`` rows/columns of i
    P_ij     = softmax_{j in N(i)}(sim_ij / temperature), 0 outside N(i)     (rows sum to 1)
    m^(0)    = the anomaly map, m^(t+1) = alpha * P m^(t) + (1 - alpha) * m^(0),  t < steps

Why it keeps real defects and drops lone spikes: token i's new value is an average of the values of the
tokens whose features are most like its own, weighted by how alike. A spike on a normal-looking token is
averaged with its many near-duplicates elsewhere in the image (low values) and fades; a defect's tokens have
features unlike the normal ones, so their nearest neighbours are each other (or only themselves), and their
values -- high together -- stay. The k-NN cut matters: with all L tokens as neighbours, the many somewhat
similar normal tokens would together outweigh a small defect's few similar ones; the low temperature makes
"how alike" sharp (cosine 0.9 vs 1.0 is a factor e^1 at temperature 0.1).

Scale of the temperature: on normal images of the five real categories the Lite0 tokens (16 x 16 at 256 px)
have a median cosine of 0.91 to their nearest other token and 0.82 to their 8th, so at temperature 0.1 a
normal token keeps roughly 35 % of its own value per step and gives the rest to its look-alikes, while a
token whose nearest others are at cosine 0.6 keeps ~90 %; at 0.05 a normal token keeps ~75 %. Other
teachers (a ViT) have another spread and may want another temperature.

What it did here (be honest with students): on the synthetic set (4 categories, 256 px, UniSTAD cpu preset
trained 15 epochs, 32 defective test images, one seed) **no setting improved the pixel metrics** over no
refinement (P-AUROC 0.930, AUPRO 0.808); strong settings (3 steps, temperature 0.1, alpha 1) raised
I-AUROC a little (0.632 -> 0.663) but lowered P-AUROC to 0.892 -- the shared scoring's Gaussian blur
already removes lone spikes, and a defect's value leaks to look-alike tokens elsewhere. A spatial radius
(``radius``: a feature-guided local filter) made it harmless but not better. The defaults are therefore the
mildest setting tried (1 step, knn 8, temperature 0.05, alpha 0.5: I/P-AUROC 0.643 / 0.927, AUPRO 0.805);
the real benchmark decides, and the paper's own module may well differ from this reading.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def token_descriptors(
    features: torch.Tensor, level_channels: Sequence[int] | None = None
) -> torch.Tensor:
    """(B, C, h, w) teacher features -> (B, L, C) unit-length token descriptors, L = h w (row-major).
    With ``level_channels`` (e.g. [24, 40, 112]) each level's slice is normalised first, so a level with
    large activations does not decide the affinity alone."""
    x = features.float().flatten(2).transpose(1, 2)  # (B, L, C)
    if level_channels:
        x = torch.cat(
            [F.normalize(part, dim=-1) for part in x.split(list(level_channels), dim=-1)], dim=-1
        )
    return F.normalize(x, dim=-1)  # (B, L, C)


def affinity(
    features: torch.Tensor,
    knn: int = 8,
    temperature: float = 0.05,
    level_channels: Sequence[int] | None = None,
    radius: int = 0,
) -> torch.Tensor:
    """Row-stochastic random-walk matrix (B, L, L) over the tokens of each image (module docstring).
    ``knn <= 0`` or ``knn >= L``: every token is a neighbour. ``radius > 0``: only tokens at most ``radius``
    rows and columns away are candidates (a feature-guided local filter); 0: the whole image."""
    h, w = features.shape[-2:]
    a = token_descriptors(features, level_channels)  # (B, L, C)
    sim = a @ a.transpose(1, 2)  # (B, L, L) cosine similarity
    if radius > 0:
        rows = torch.arange(h, device=sim.device).repeat_interleave(w)  # (L,) row of each token
        cols = torch.arange(w, device=sim.device).repeat(h)  # (L,) column of each token
        far = ((rows[:, None] - rows[None, :]).abs() > radius) | (
            (cols[:, None] - cols[None, :]).abs() > radius
        )
        sim = sim.masked_fill(
            far, -2.0
        )  # below any cosine: never among the k nearest, weight 0 below
    logits = sim / temperature  # (B, L, L)
    if radius > 0:
        logits = logits.masked_fill(far, float("-inf"))
    L = sim.shape[-1]
    if 0 < knn < L:
        kth = sim.topk(knn, dim=-1).values[
            ..., -1:
        ]  # (B, L, 1): the k-th largest similarity of each row
        logits = logits.masked_fill(
            sim < kth, float("-inf")
        )  # keep the k nearest (ties may keep a few more)
    return logits.softmax(dim=-1)  # (B, L, L), rows sum to 1


def propagate(
    score_map: torch.Tensor, transition: torch.Tensor, steps: int = 1, alpha: float = 0.5
) -> torch.Tensor:
    """m <- alpha * P m + (1 - alpha) * m0, ``steps`` times. score_map (B, 1, h, w), transition (B, L, L)."""
    B, _, h, w = score_map.shape
    m0 = score_map.float().reshape(B, h * w, 1)  # (B, L, 1)
    m = m0
    for _ in range(steps):
        m = alpha * (transition @ m) + (1 - alpha) * m0  # (B, L, 1)
    return m.reshape(B, 1, h, w)  # (B, 1, h, w)


class AffinityRefiner(nn.Module):
    """Parameter-free map refinement: ``refiner(maps, features) -> maps`` of the same shapes.

    Args:
        steps: random-walk steps (0 = identity).
        knn: neighbours per token in feature space, the token itself included (<= 0: all tokens).
        temperature: softmax temperature on the cosine similarities.
        alpha: 1 = pure propagation; < 1 restarts from the original map each step (keeps 1 - alpha of it).
        level_channels: channels of each level inside ``features`` (each level normalised on its own).
        radius: > 0 restricts the neighbours to tokens at most this many rows/columns away; 0 = whole image.
    """

    def __init__(
        self,
        steps: int = 1,
        knn: int = 8,
        temperature: float = 0.05,
        alpha: float = 0.5,
        level_channels: Sequence[int] | None = None,
        radius: int = 0,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"refine temperature must be > 0, got {temperature}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"refine alpha must be in [0, 1], got {alpha}")
        self.steps, self.knn, self.temperature, self.alpha = (
            int(steps),
            int(knn),
            float(temperature),
            float(alpha),
        )
        self.level_channels = list(level_channels) if level_channels else None
        self.radius = int(radius)

    def transition(self, features: torch.Tensor) -> torch.Tensor:
        return affinity(
            features, self.knn, self.temperature, self.level_channels, self.radius
        )  # (B, L, L)

    def forward(self, maps, features: torch.Tensor):
        """maps: one (B, 1, h, w) tensor or a dict of them; features (B, C, h, w) on the same grid.
        Differentiable w.r.t. both (attributions can pass through), though it has nothing to train."""
        with torch.autocast(
            features.device.type, enabled=False
        ):  # fp32: bf16 would tie nearby values
            P = self.transition(features)
            if isinstance(maps, dict):
                return {k: propagate(m, P, self.steps, self.alpha) for k, m in maps.items()}
            return propagate(maps, P, self.steps, self.alpha)

    def extra_repr(self) -> str:
        return (
            f"steps={self.steps}, knn={self.knn}, temperature={self.temperature}, alpha={self.alpha}, "
            f"radius={self.radius}"
        )
