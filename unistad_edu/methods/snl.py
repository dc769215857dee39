"""SNL -- structural teacher-student normality learning, on the reverse-distillation student.

Paper card
    Title: Structural Teacher-Student Normality Learning for Multi-Class Anomaly Detection and
    Localization. Hanqiu Deng, Xingyu Li.
    Venue: CVPR 2024. arXiv: 2402.17091. No public code (methods.md: the authors' GitHub has RD4AD, not SNL).
    What it fixes: **cross-class interference**. A teacher-student model trained on many classes at once
    becomes over-tolerant -- its student learns so broad a "normal" that it imitates the teacher on
    anomalies too. SNL constrains the student's normality *structurally*: not only must each feature
    vector match, the student must also reproduce how features relate to each other (across channels,
    across positions, across levels), and its representation is squeezed into a compact space around
    learned normal centres.
    Follows -- the full paper is on arXiv but could not be retrieved here and no code exists, so this is what
    the **abstract** states:
      1. spatial-channel distillation: the teacher-student distance is measured along the channel
         dimension (per position) *and* along the spatial dimension (per channel);
      2. intra- and inter-affinity distillation: the student matches the teacher's affinity structure;
      3. a central residual aggregation module (CRAM) that encapsulates the student's normal
         representation space;
      SNL is applied on existing teacher-student baselines; methods.md records that it was evaluated on
      forward (STPM-like) and reverse (RD4AD-like) ones [summary]. We build it on our RD (``rd.py``).
    Our reading (every formula below is ours, not the paper's; each term is a switch with its weight, so
    the ablation table measures what it buys). Per level l, t = teacher, s = student, (B, C, h, w):
      * **base** (RD's own loss, always on, ``rd_loss`` as in RD): ``mean_{b,i} (1 - cos_c(t_i, s_i))`` over
        positions i, or the flattened per-image cosine of the ``paper`` preset.
      * **spatial-channel** (``spatial_channel``): adds ``mean_{b,c} (1 - cos_pos(t_c, s_c))``, the cosine
        distance of each channel's map flattened over the h*w positions.
      * **intra-affinity** (``intra_affinity``): the position-position cosine affinity within a level,
        ``A = t^T t`` of the channel-normalised features (N x N, N = h*w), matched by mean squared error
        over the off-diagonal pairs: ``mean_{b, i != j} (A_T[i,j] - A_S[i,j])^2``. Memory: N^2 per image is
        4096^2 at stride 4 / 256 px, so when N > ``affinity_positions`` (default 256) a random subset of
        that many positions is drawn at every call (the same subset for teacher, student and every image
        of the batch; without replacement, from the global RNG the engine seeds per epoch). Averaged over
        draws this is the full-grid loss: the mean over sampled off-diagonal pairs is unbiased for the
        mean over all off-diagonal pairs.
      * **inter-affinity** (``inter_affinity``): across levels, which have different channel counts, so
        we compare *channels* through shared *positions*: for adjacent levels (l, l+1) the finer one is
        average-pooled to the coarser grid (the common grid), every channel map is L2-normalised over the
        positions, and the cross-level channel affinity ``G = f_l f_{l+1}^T`` (C_l x C_{l+1}: how much
        channel c of level l and channel d of level l+1 fire at the same places) is matched by mean
        squared error. (Affinity "across samples of a batch" is the other plausible reading; we chose
        levels because the student's multi-scale structure is what a decoder gets wrong.)
      * **CRAM** (``cram``): NetVLAD-style, between the bottleneck and the decoder. The embedding's
        vectors x_i (channel-normalised) are soft-assigned to K learned centres c_k (normalised),
        ``a_ik = softmax_k(alpha * x_i . c_k)``; the residuals to the centres are aggregated per centre over
        the image as NetVLAD does, ``V_k = sum_i a_ik (x_i - c_k) / sum_i a_ik``; and every position is
        rebuilt from its centres plus a share ``beta`` (``cram_residual``, 0.5) of the image's aggregated
        residuals, ``z_i = sum_k a_ik (c_k + beta V_k)`` (+ ``cram_skip * x_i``). So the decoder sees a point
        between the K normal centres (beta = 0: soft vector quantisation) and the image's own cluster means
        (beta = 1) -- the "compact normal representation space". A vector off the centres is not passed on:
        its code is its centres' plus residuals averaged over the whole image, which one anomalous patch
        hardly moves; the centres themselves stay in the code with weight 1 - beta. (Our first version had
        beta = 1, where ``c_k + V_k`` is the image's soft cluster mean and the centres cancelled out of the
        code; runs saved then load with ``cram_residual=1``.) The CRAM loss (``cram_weight``) is the
        soft k-means compactness ``mean_i sum_k a_ik (1 - cos(x_i, c_k))``, pulling the embedding to its
        centres (scale-free, so it cannot be minimised by shrinking the features).
      * the anomaly map is RD's (per-level 1 - cos, summed, Gaussian sigma = 4, max) [inference]; the
        ``paper`` preset is RD4AD's recipe (WideResNet-50, 256 px, Adam 0.005, 200 epochs) with 64 centres
        and 1024 sampled positions -- our guesses, the paper's settings are not public [inference].
    With every switch off SNL *is* RD (same parameters from the same seed, same loss; a test checks it).
    Do not quote the paper's numbers (+3.9 % detection on MVTec over the best distillation method, per
    the abstract) as this implementation's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import cosine_distance, reverse_student
from .base import Batch, Method, ReverseDistillationConfig, paper_recipe
from .rd import RD, add_projection, bottleneck_input, distillation_loss, noisy_levels


@dataclass
class SNLConfig(ReverseDistillationConfig):
    """SNL = RD's student + four switches. Defaults = the ``cpu`` preset: RD's cpu student (Lite0, 256 px,
    the network and optimisation of ``ReverseDistillationConfig``) with all
    four terms on, weight 1 each except CRAM's compactness (0.1), 16 centres. Measured here (batch 16,
    256 px, bf16, one thread): ~0.28 s per training step against RD's ~0.17 s.

    Chosen on the validation set (``docs/benchmarks.md``): the per-position loss against the flattened one,
    no loose loss, no RD++ projection and no feature jitter on the bottleneck's input (alpha 20 and 5 compared)
    -- where RD's ``cpu`` preset takes the flattened loss, the loose loss, RD++'s projection and the jitter."""

    spatial_channel: bool = True
    spatial_channel_weight: float = 1.0
    intra_affinity: bool = True
    intra_affinity_weight: float = 1.0
    affinity_positions: int = 256  # positions sampled per level when a grid has more (N x N memory)
    inter_affinity: bool = True
    inter_affinity_weight: float = 1.0
    cram: bool = True
    cram_weight: float = (
        0.1  # weight of the compactness loss (the module itself is switched by ``cram``)
    )
    cram_centres: int = 16  # K
    cram_alpha: float = (
        10.0  # sharpness of the soft assignment (NetVLAD's alpha), on cosines in [-1, 1]
    )
    cram_residual: float = (
        0.5  # beta: z_i = sum_k a_ik (c_k + beta V_k); 0 = centres only, 1 = cluster means
    )
    cram_skip: float = (
        0.0  # z = CRAM(x) + cram_skip * x_normalised; 0 = the decoder sees only the CRAM code
    )

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.cram_residual <= 1.0:
            raise ValueError(
                f"cram_residual must be in [0, 1] (0: centres only, 1: cluster means), "
                f"got {self.cram_residual}"
            )


# ---- the structural losses, each usable on its own -------------------------------------------------------
def channel_cosine_distance(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Spatial half of spatial-channel distillation: (B, C, h, w) x 2 -> (B, C), the cosine distance of each
    channel's map taken as a vector over the h*w positions."""
    return cosine_distance(t.flatten(2), s.flatten(2), dim=2).squeeze(2)  # (B, C, hw) -> (B, C)


def sample_positions(n: int, k: int, device=None) -> torch.Tensor | None:
    """Indices of ``k`` of ``n`` positions drawn without replacement, or None (= all) if n <= k."""
    if k <= 0 or n <= k:
        return None
    return torch.randperm(n, device=device)[:k]


def position_affinity(f: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, h, w) -> (B, N, N): cosine similarity between the channel vectors of every pair of positions
    (of the positions ``idx`` if given)."""
    x = F.normalize(f.float().flatten(2), dim=1)  # (B, C, N), unit length along channels
    if idx is not None:
        x = x[:, :, idx]  # (B, C, k)
    return x.transpose(1, 2) @ x  # (B, N, N)


def intra_affinity_loss(t: torch.Tensor, s: torch.Tensor, max_positions: int = 256) -> torch.Tensor:
    """mean over images and off-diagonal position pairs of (A_T - A_S)^2, within one level."""
    idx = sample_positions(t.shape[-2] * t.shape[-1], max_positions, t.device)
    a_t, a_s = position_affinity(t, idx), position_affinity(s, idx)  # (B, N, N) each
    n = a_t.shape[-1]
    if n < 2:
        return a_t.new_zeros(())
    off = ~torch.eye(
        n, dtype=torch.bool, device=a_t.device
    )  # (N, N): the diagonal is 1 - 1 = 0 anyway
    return (a_t - a_s).pow(2)[:, off].mean()


def cross_level_affinity(fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """(B, C_a, h_a, w_a), (B, C_b, h_b, w_b) -> (B, C_a, C_b): on the coarser grid (the finer level
    average-pooled to it), the cosine similarity of every channel map of one level with every channel map
    of the other, each map a vector over the common positions."""
    fine = F.adaptive_avg_pool2d(fine.float(), coarse.shape[-2:])  # (B, C_a, h_b, w_b)
    a = F.normalize(fine.flatten(2), dim=2)  # (B, C_a, N), unit length over positions
    b = F.normalize(coarse.float().flatten(2), dim=2)  # (B, C_b, N)
    return a @ b.transpose(1, 2)  # (B, C_a, C_b)


def inter_affinity_loss(t: list[torch.Tensor], s: list[torch.Tensor]) -> torch.Tensor:
    """Sum over adjacent level pairs of mean (G_T - G_S)^2 (levels fine -> coarse)."""
    total = t[0].new_zeros(())
    for k in range(len(t) - 1):
        g_t = cross_level_affinity(t[k], t[k + 1])  # (B, C_k, C_{k+1})
        g_s = cross_level_affinity(s[k], s[k + 1])
        total = total + (g_t - g_s).pow(2).mean()
    return total


class CRAM(nn.Module):
    """Central residual aggregation (our NetVLAD-style reading, see the paper card).

    ``forward(x)`` with x (B, D, h, w) returns ``z`` (B, D, h, w), the rebuilt embedding the decoder starts
    from, ``z_i = sum_k a_ik (c_k + residual * V_k)``; ``compactness`` (scalar), the soft k-means loss
    ``mean_i sum_k a_ik (1 - cos(x_i, c_k))``; and the soft assignment (B, K, h, w), for lessons and plots."""

    def __init__(
        self, dim: int, centres: int, alpha: float = 10.0, skip: float = 0.0, residual: float = 0.5
    ):
        super().__init__()
        self.centres = nn.Parameter(torch.randn(centres, dim))  # (K, D), normalised in forward
        self.alpha, self.skip, self.residual = alpha, skip, residual

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, D, h, w = x.shape
        xn = F.normalize(x.float().flatten(2), dim=1)  # (B, D, N), unit length along channels
        c = F.normalize(self.centres.float(), dim=1)  # (K, D)
        cos = torch.einsum("kd,bdn->bkn", c, xn)  # (B, K, N): cos(x_i, c_k)
        a = (self.alpha * cos).softmax(dim=1)  # (B, K, N): soft assignment of each position
        mass = a.sum(dim=2, keepdim=True)  # (B, K, 1)
        # V_k = sum_i a_ik (x_i - c_k) / sum_i a_ik = (sum_i a_ik x_i) / mass_k - c_k
        v = torch.einsum("bkn,bdn->bkd", a, xn) / mass.clamp_min(1e-6) - c  # (B, K, D)
        z = torch.einsum(
            "bkn,bkd->bdn", a, c.unsqueeze(0) + self.residual * v
        )  # sum_k a_ik (c_k + beta V_k)
        if self.skip:
            z = z + self.skip * xn
        compact = (a * (1 - cos)).sum(dim=1).mean()  # mean_{b,i} sum_k a_ik (1 - cos(x_i, c_k))
        return (
            z.view(B, D, h, w),
            compact,
            a.view(B, -1, h, w),
        )  # (B, D, N) -> (B, D, h, w); (B, K, h, w)


# ---- the method ----------------------------------------------------------------------------------------
class SNL(Method):
    name = "snl"
    Config = SNLConfig
    needs_images = False  # like RD: the loss reads teacher features only
    presets = {
        "cpu": {},
        "paper": paper_recipe("snl"),  # RD4AD's recipe: SNL's own is not public
    }

    def __init__(self, teacher, cfg: SNLConfig):
        super().__init__(teacher, cfg)
        self.channels = [lv.channels for lv in teacher.feature_info]
        # RD's bottleneck and decoder (layers.reverse_student), from cfg.init_seed exactly as in RD
        self.bottleneck, self.decoder, self.embed_channels = reverse_student(
            teacher.feature_info, cfg
        )
        add_projection(self, cfg)  # RD++'s, when cfg.rdpp (after RD's modules, from its own seed)
        self.cram = None
        if cfg.cram:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(
                    cfg.init_seed + 1
                )  # after RD's modules: RD's weights do not depend on cram
                self.cram = CRAM(
                    self.embed_channels,
                    cfg.cram_centres,
                    cfg.cram_alpha,
                    cfg.cram_skip,
                    cfg.cram_residual,
                )

    # ---- pieces -----------------------------------------------------------------------------------------
    teacher_levels = RD.teacher_levels  # the same float32 levels, fine -> coarse

    def forward(self, batch: Batch) -> dict:
        """As RD's forward (``teacher``, ``student``, ``embedding``), with CRAM between the bottleneck and the
        decoder when it is on (adding ``cram_compactness`` and ``cram_assignment``), and RD++'s projection before
        the bottleneck when ``rdpp`` is on (adding ``projected``)."""
        t = self.teacher_levels(batch)
        p = bottleneck_input(self, t)
        z = self.bottleneck(
            noisy_levels(p, self.cfg.bottleneck_dropout, self.training, self.cfg.bottleneck_jitter)
        )  # (B, D, h_L/2, w_L/2)
        extras = {} if self.projection is None else {"projected": p}
        if self.cram is not None:
            z, compact, assign = self.cram(z)  # (B, D, h_L/2, w_L/2), scalar, (B, K, h_L/2, w_L/2)
            extras.update(cram_compactness=compact, cram_assignment=assign)
        s = self.decoder(z, [tuple(f.shape[-2:]) for f in t])  # each (B, C_l, h_l, w_l)
        return {"teacher": t, "student": [x.float() for x in s], "embedding": z, **extras}

    def terms_from(self, out: dict) -> dict[str, torch.Tensor]:
        """The named, weighted loss terms of a forward output -- RD's, SNL's or any with ``teacher`` and
        ``student`` level lists (lesson 05 applies them to a trained RD's outputs)."""
        cfg = self.cfg
        t, s = out["teacher"], out["student"]
        base = "position_cosine" if cfg.rd_loss == "position" else "flattened_cosine"
        terms = {
            base: distillation_loss(t, s, cfg.rd_loss, cfg.hm_quantile, cfg.hm_factor)
        }  # RD's, always on
        if cfg.spatial_channel:
            terms["channel_cosine"] = cfg.spatial_channel_weight * sum(
                channel_cosine_distance(a, b).mean() for a, b in zip(t, s)
            )
        if cfg.intra_affinity:
            terms["intra_affinity"] = cfg.intra_affinity_weight * sum(
                intra_affinity_loss(a, b, cfg.affinity_positions) for a, b in zip(t, s)
            )
        if cfg.inter_affinity and len(t) > 1:
            terms["inter_affinity"] = cfg.inter_affinity_weight * inter_affinity_loss(t, s)
        if "cram_compactness" in out:
            terms["cram"] = cfg.cram_weight * out["cram_compactness"]
        return terms

    def loss_breakdown(self, batch: Batch) -> dict[str, float]:
        """Each term's value for one batch (lessons plot these)."""
        with torch.no_grad():
            return {k: float(v) for k, v in self.loss_terms(batch).items()}

    # ---- the contract ----------------------------------------------------------------------------------
    loss_terms = RD.loss_terms  # SNL's terms_from, plus RD++'s terms when rdpp is on

    def anomaly_maps(self, batch: Batch) -> dict[str, torch.Tensor]:
        """RD's map: per level the cosine distance at every position, (B, 1, h_l, w_l)."""
        out = self.forward(batch)
        return {
            name: cosine_distance(t, s, dim=1)
            for name, t, s in zip(self.teacher.layer_names, out["teacher"], out["student"])
        }
