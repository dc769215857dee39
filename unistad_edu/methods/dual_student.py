"""Two heterogeneous students -- one for local defects, one for semantic anomalies -- joined by a Noisy-OR.

Paper card
    Title: a generalist (multi-class) anomaly detector with two heterogeneous students (encoder-decoder and
    encoder-encoder) over a shared DINOv2 teacher, combined by Noisy-OR. Park, Seo & Kim (KAIST).
    arXiv: 2509.24448. No public code; evidence: the abstract [paper] and a third-party summary [summary].
    What it fixes: one student is good at one kind of anomaly. A decoder that rebuilds mid-level patch
    features from a noisy bottleneck (Dinomaly) finds *local* defects -- scratches, holes -- but is blind to
    an image that is wholly normal-looking yet of the wrong kind (a *semantic* anomaly); an encoder that
    must predict the teacher's *image embedding* from pixels catches the latter. Two students, two
    probabilities, and "anomalous if either fires": P = 1 - (1 - p_loc)(1 - p_sem).
    Follows [paper/summary]: a frozen DINOv2 teacher; the ED student (Dinomaly-like) reconstructs averaged
    mid-level teacher features in **two groups** with a **global cosine** loss over the flattened maps,
    L = 1/2 sum_g (1 - cos(vec T_g, vec S_g)); the EE student, a DINOv2-architecture encoder trained from
    scratch, regresses the teacher's **class token** (sparse supervision: no identity mapping to learn);
    Noisy-OR both as the joint training objective and as the final image score.
    **Our reading** (open in the public text):
      * ED student: teacher tokens (the groups' levels on one grid) -> noisy bottleneck (dropout, MLP) ->
        ``dec_layers`` pre-norm transformer blocks (softmax attention; Dinomaly uses linear attention) ->
        the decoder's layers split into as many chunks as groups, in reverse (the *last* decoder layers
        rebuild the *shallowest* group, as Dinomaly/RD), each chunk averaged and projected to its group.
        A group's target is the mean of its levels if they have equal channels (ViT blocks), else their
        concatenation (CNN stages). Hard-point mining as Dinomaly: the gradient of the easiest
        ``hm_quantile`` fraction of points (smallest 1 - cos) is multiplied by ``hm_factor``; the loss value
        stays the global cosine. (Dinomaly ramps the fraction up over the first 1000 steps; ours is fixed.)
      * Local map: per-point 1 - cos, one map per group, fused by the mean; Dinomaly's scoring (Gaussian
        sigma 4, mean of the top 1 % pixels) gives the map score s_loc.
      * EE student: a timm backbone from random init (``ee_backbone``) on the image (optionally smaller,
        ``ee_image_size``), pooled, then a linear head to the teacher's embedding width; loss and semantic
        score s_sem = 1 - cos(embedding_T, embedding_S). It sees the image only -- never the teacher's patch
        tokens (a test checks it). "Class token": a ViT teacher's CLS (``Teacher`` docstring); a CNN teacher
        has none, and we use the **global average pool of its deepest kept level** (Lite0: 112 channels at
        stride 16) -- computed here if the teacher was built without ``embedding=True``.
      * Probabilities: each branch is a detector that should sit near 0 on a normal image and fire above its
        normal range, so p = sigmoid((s - offset) / temperature) with the offset at the ``or_quantile``
        (0.95) of the branch's normal scores (p = 0.5 there) and the temperature such that the normal
        median gets p = ``or_normal_p`` (0.01). The quantiles are those of the held-out normal images in
        eval mode (the engine's ``calibrate`` call after training, the state of scoring); while training
        they come from running statistics of the normal training batches (EMA, ``calib_momentum``) as if the
        scores were Gaussian. A normal image then has P = 1 - (1 - p_loc)(1 - p_sem) near 0 and P rises when
        *either* branch leaves its normal range -- an OR. (Our first reading, p = sigmoid((s - mean) / std),
        gave every average normal image p = 0.5 per branch and P = 0.75, and -log(1 - P) added the branches
        like a sum.)
      * Joint objective: on normal images the Noisy-OR's negative log-likelihood of "normal",
        -log(1 - P) = softplus(z_loc) + softplus(z_sem), added with weight ``joint_weight`` to the two
        students' own losses. Its gradient pushes a branch's score down in proportion to its p: the normal
        images that make a branch fire weigh most, the typical ones (p ~ 0.01) hardly at all (offset and
        temperature are detached). In training, s_loc
        takes its value from the shared scoring path and its gradient from the same rule on the token-grid
        map (straight-through; ``map_score_for_training``), since the blur's backward pass is costly.
      * ``combine`` = ``noisy_or`` | ``sum`` | ``local`` | ``semantic`` chooses only the *image score*
        (Noisy-OR; z_loc + z_sem; s_loc alone; s_sem alone), so one trained model can be scored all four
        ways; the training objective is always the paper's Noisy-OR one. The image score comes from the
        shared scoring path (``scoring.score`` with ``image_terms``); for ``noisy_or`` it is -log(1 - P),
        which orders images exactly as P does without saturating (P is in ``AnomalyOutput.probability``).
      * Presets: ``cpu`` (Lite0 teacher, ResNet-10-T EE student at 128 px) and ``paper`` (Dinomaly-like:
        DINOv2-reg ViT-B/14 blocks 2-9 in groups 2-5 / 6-9 plus block 11 for the CLS, 392 px, 8 decoder
        layers, dropout 0.2, lr 2e-3; EE student a ViT-S/14-reg from scratch at 224 px) are ours.

Data flow (``cpu`` preset: Lite0 at 256 px, groups (stride 4 + 8) and (stride 16) on a 16 x 16 grid)::

    teacher levels -> one grid -> input (B, 176, 16, 16), targets T_0 (B, 64, 16, 16), T_1 (B, 112, 16, 16)
      ED: tokens (B, 256, 176) -> dropout, MLP -> (B, 256, 128) -> 4 blocks -> chunks {3,2}, {1,0} averaged
          -> Linear -> S_0 (B, 64, 16, 16), S_1 (B, 112, 16, 16); loss 1/2 sum_g (1 - cos(vec T_g, vec S_g))
      EE: image (B, 3, 256, 256) -> 128 px -> ResNet-10-T -> (B, 512) -> Linear -> (B, 112) vs GAP(T_stride16)
      maps {local_0, local_1} (B, 1, 16, 16) -> shared scoring -> s_loc;  s_sem = 1 - cos  ->  Noisy-OR
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import ClassVar

import torch
import torch.nn as nn

from ..layers import (
    TransformerLayer,
    cosine_distance,
    global_cosine_distance,
    levels_to_grid,
    noisy_input,
    resize_bilinear,
    scale_easy_gradients,
    to_tokens,
)
from ..scoring import ScoringConfig, noisy_or_nll, score, standardize
from .base import Batch, Method, TransformerTrainingConfig, paper_recipe, token_grid

COMBINE_RULES = {
    "noisy_or": "noisy_or",
    "sum": "sum",
    "local": "map",
    "semantic": "terms",
}  # -> scoring's


@dataclass
class DualStudentConfig(TransformerTrainingConfig):
    """Dual heterogeneous students. Defaults = the ``cpu`` preset: Lite0 teacher at 256 px, tokens on the
    stride-16 grid (16 x 16); ED groups (levels 0 + 1) and (level 2); no bottleneck dropout; decoder 4 blocks
    of width 128, 4 heads, FFN 256; no hard mining; EE student ResNet-10-T from scratch at 128 px,
    regressing Lite0's ImageNet embedding (``semantic_target="imagenet"``, 1280-d, 224 px, frozen and not
    saved); joint Noisy-OR weight 0.1; AdamW 1e-3 (wd 1e-4), cosine, 20 epochs, batch 8, grad clip 1.0.

    Chosen on the validation set (``data validation``): the combine rule, the Noisy-OR against the sum and
    each branch alone (kept: the local branch alone within 0.5); and the decoder's two unified-reconstruction
    switches, Dinomaly's noisy bottleneck and hard mining, each on and off (left off: neither raised the
    image AUROC by more than 0.5); then the noise as UniAD's feature jitter on the decoder's input tokens
    (alpha 20, UniAD's, and 5 compared; alpha 5 taken). The semantic target and the rest were chosen earlier
    on the test set. Figures and speed: ``docs/benchmarks.md``, "Choose on validation, report on test" and
    "Dual students and enhanced STPM"."""

    choices: ClassVar[dict[str, tuple]] = {
        "semantic_target": ("auto", "embedding", "imagenet"),
        "combine": tuple(COMBINE_RULES),
    }

    # ED student (Dinomaly-like)
    ed_groups: tuple | None = ((0, 1), (2,))  # positions in teacher.feature_info; None: two halves
    feature_stride: int | None = (
        None  # token grid = image_size / this; None: the deepest level's stride
    )
    hidden_dim: int = 128
    num_heads: int = 4
    dec_layers: int = 4  # at least one per group
    ffn_dim: int = 256
    bottleneck_dropout: float = 0.0  # Dinomaly's noisy bottleneck (the paper preset: 0.2); 0 = off
    # the noise as UniAD's feature jitter on the ED student's input tokens: its alpha (the cpu preset's 5,
    # chosen on validation; 0 = off)
    bottleneck_jitter: float = 5.0
    hm_quantile: float = 0.0  # hard mining: the easiest share of points (paper: 0.9; 0 = off) ...
    hm_factor: float = 0.1  # ... get 0.1 of their gradient (1.0 = no mining)
    # EE student
    ee_backbone: str = "resnet10t"  # any timm model, random init; pooled output
    ee_image_size: int | None = 128  # resize the image for the EE student; None: as given
    # what the EE student predicts: "embedding" = the teacher's own (a ViT's class token; a CNN's global
    # average pool of its deepest kept level), "imagenet" = a CNN teacher's ImageNet embedding: the whole
    # network it was cut from (all stages, head conv, pool; Lite0: 1280 channels) at semantic_image_size;
    # "auto" = imagenet for a CNN teacher, the class token for a ViT
    semantic_target: str = "auto"
    semantic_image_size: int = 224
    # how the two branches combine
    combine: str = "noisy_or"  # image score: noisy_or | sum | local | semantic
    w_local: float = 1.0  # ED loss weight
    w_semantic: float = 1.0  # EE loss weight
    joint_weight: float = 0.1  # weight of -log(1 - P) on normal images
    calib_momentum: float = (
        0.05  # EMA of each score's mean and E[s^2] on the normal training batches
    )
    # each branch's probability p = sigmoid((s - offset) / temperature), both from normal scores: p = 0.5 at
    # the ``or_quantile`` of normal scores (offset), p = ``or_normal_p`` at their median (temperature), so a
    # branch sits near 0 on a normal image and "fires" above its normal range
    or_quantile: float = 0.95
    or_normal_p: float = 0.01
    # optimisation: TransformerTrainingConfig's (AdamW, cosine, clip 1, batch 8, 20 epochs, init_seed 0)
    scoring: ScoringConfig = field(
        default_factory=lambda: ScoringConfig(
            fuse="mean", blur_sigma=4.0, image_score="topk_mean", topk=0.01
        )
    )

    def __post_init__(self):
        super().__post_init__()
        if self.ed_groups is not None:  # JSON gives lists of lists
            self.ed_groups = tuple(tuple(int(i) for i in g) for g in self.ed_groups)
            if not self.ed_groups or any(not g for g in self.ed_groups):
                raise ValueError(
                    f"ed_groups must be non-empty groups of level positions, got {self.ed_groups}"
                )
        if not 0 <= self.hm_quantile < 1:
            raise ValueError(f"hm_quantile must be in [0, 1), got {self.hm_quantile}")
        if not 0.5 < self.or_quantile < 1:
            raise ValueError(
                f"or_quantile must be in (0.5, 1): p = 0.5 above the normal median; got {self.or_quantile}"
            )
        if not 0 < self.or_normal_p < 0.5:
            raise ValueError(
                f"or_normal_p must be in (0, 0.5): a normal image's p below 0.5; got {self.or_normal_p}"
            )


# ---- pieces ----------------------------------------------------------------------------------------------
class EncoderDecoderStudent(nn.Module):
    """ED student: tokens (B, L, C_in) -> one prediction per group [(B, L, C_g)]."""

    def __init__(
        self,
        in_channels: int,
        group_channels: list[int],
        dim: int,
        heads: int,
        ffn: int,
        layers: int,
        dropout: float,
    ):
        super().__init__()
        if layers < len(group_channels):
            raise ValueError(
                f"dec_layers ({layers}) must be at least the number of groups ({len(group_channels)})"
            )
        # noisy bottleneck: dropout on the way in and inside the MLP, so copying the input is never exact
        self.bottleneck = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(in_channels, ffn),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ffn, dim),
            nn.Dropout(dropout),
        )
        # pre-norm self-attention blocks over all tokens, GELU feed-forward (ViT's)
        self.blocks = nn.ModuleList(
            TransformerLayer(dim, heads, ffn, norm="pre", activation="gelu") for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.heads = nn.ModuleList(nn.Linear(dim, c) for c in group_channels)
        # layer indices per group: chunks of the decoder in reverse (last layers -> first group)
        order = list(range(layers))[::-1]
        self.chunks = [list(c) for c in _split(order, len(group_channels))]

    def forward(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        x = self.bottleneck(tokens)  # (B, L, D)
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)  # (B, L, D) after each block
        return [
            head(self.norm(torch.stack([outs[i] for i in chunk]).mean(dim=0)))  # (B, L, C_g)
            for head, chunk in zip(self.heads, self.chunks)
        ]


def _split(seq: list, n: int) -> list[list]:
    """``seq`` in ``n`` contiguous chunks of near-equal length (the first ones longer)."""
    k, r = divmod(len(seq), n)
    out, i = [], 0
    for j in range(n):
        size = k + (1 if j < r else 0)
        out.append(seq[i : i + size])
        i += size
    return out


class EncoderEncoderStudent(nn.Module):
    """EE student: image (B, 3, S, S), already normalised -> predicted teacher embedding (B, C_emb).
    Its only input is the image: it cannot see the teacher's patch tokens."""

    def __init__(self, backbone: str, out_dim: int, image_size: int | None):
        super().__init__()
        import timm

        kwargs = {"img_size": image_size} if image_size and _is_vit_name(backbone) else {}
        self.encoder = timm.create_model(
            backbone, pretrained=False, num_classes=0, **kwargs
        )  # pooled output
        self.head = nn.Linear(self.encoder.num_features, out_dim)
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_size and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = resize_bilinear(
                x, (self.image_size, self.image_size), antialias=True
            )  # (B, 3, s, s)
        return self.head(self.encoder(x))  # (B, C_emb)


def _is_vit_name(name: str) -> bool:
    from ..teacher import is_vit_name

    return is_vit_name(name)


# ---- the method ----------------------------------------------------------------------------------------
class DualStudent(Method):
    name = "dual_student"
    Config = DualStudentConfig
    frozen_prefixes = (
        "teacher.",
        "semantic_net.",
    )  # the teacher and the ImageNet network it was cut from
    needs_images = True  # the EE student looks at the image
    presets = {
        "cpu": {},
        "paper": paper_recipe("dual_student"),  # Dinomaly-like, our choices
    }

    def __init__(self, teacher, cfg: DualStudentConfig):
        super().__init__(teacher, cfg)
        info = teacher.feature_info
        groups = cfg.ed_groups or tuple(tuple(g) for g in _split(list(range(len(info))), 2) if g)
        if any(i < 0 or i >= len(info) for g in groups for i in g):
            raise ValueError(
                f"ed_groups {groups} refer to levels the teacher does not have ({len(info)} levels)"
            )
        self.groups = [[info[i].name for i in g] for g in groups]  # level names per group
        self.group_channels = [self._fused_channels([info[i].channels for i in g]) for g in groups]
        self.input_levels = [info[i].name for i in sorted({i for g in groups for i in g})]
        self.input_channels = self._fused_channels(
            [info[i].channels for i in sorted({i for g in groups for i in g})]
        )
        self.grid = token_grid(teacher, cfg)
        target = (
            cfg.semantic_target
            if cfg.semantic_target != "auto"
            else ("embedding" if teacher.is_vit else "imagenet")
        )
        if target == "imagenet":
            if teacher.is_vit:
                raise ValueError(
                    "semantic_target='imagenet' is for CNN teachers; a ViT teacher's class token is "
                    "its embedding (semantic_target='embedding')"
                )
            self.semantic_net = teacher.full_network()  # frozen, never saved (frozen_prefixes)
            self.semantic_dim = self.semantic_net.num_features  # e.g. 1280 for Lite0
        else:
            self.semantic_net = None
            self.semantic_dim = teacher.embedding_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            self.ed = EncoderDecoderStudent(
                self.input_channels,
                self.group_channels,
                cfg.hidden_dim,
                cfg.num_heads,
                cfg.ffn_dim,
                cfg.dec_layers,
                cfg.bottleneck_dropout,
            )
            self.ee = EncoderEncoderStudent(cfg.ee_backbone, self.semantic_dim, cfg.ee_image_size)
        # running statistics of the two per-image scores on normal training images (checkpointed)
        for k in ("loc", "sem"):
            self.register_buffer(f"{k}_mean", torch.zeros(()))
            self.register_buffer(f"{k}_sq", torch.ones(()))  # E[s^2]
            # the held-out normal images' median and or_quantile of the score (set by calibrate)
            self.register_buffer(f"{k}_median", torch.zeros(()))
            self.register_buffer(f"{k}_upper", torch.zeros(()))
        self.register_buffer("calib_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("quantiles_known", torch.zeros((), dtype=torch.bool))

    @staticmethod
    def _fused_channels(channels: list[int]) -> int:
        return channels[0] if len(set(channels)) == 1 else sum(channels)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.semantic_net is not None:
            self.semantic_net.train(False)  # frozen, BatchNorm in eval mode
        return self

    @staticmethod
    def _fuse(maps: list[torch.Tensor]) -> torch.Tensor:
        """Levels on one grid -> one map: their mean if the channels agree (ViT blocks), else concatenated."""
        if len({m.shape[1] for m in maps}) == 1:
            return torch.stack(maps).mean(dim=0)  # (B, C, h, w)
        return torch.cat(maps, dim=1)  # (B, sum C_l, h, w)

    # ---- pieces ------------------------------------------------------------------------------------------
    def calibration(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{"map": (mean, std), "semantic": (mean, std)} of the normal training scores."""
        out = {}
        for key, name in (("loc", "map"), ("sem", "semantic")):
            mean, sq = getattr(self, f"{key}_mean"), getattr(self, f"{key}_sq")
            std = (sq - mean**2).clamp_min(0).sqrt().clamp_min(1e-6)
            out[name] = (mean, std)
        return out

    def or_calibration(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{"map": (offset, temperature), "semantic": (...)}: p = sigmoid((s - offset) / temperature) is 0.5 at
        the ``or_quantile`` of normal scores and ``or_normal_p`` at their median. From the held-out normal
        images' quantiles once ``calibrate`` has run; while training, from the running mean and std as if the
        scores were Gaussian (median = mean, quantile = mean + z_q std)."""
        c = self.cfg
        z_q = NormalDist().inv_cdf(c.or_quantile)  # e.g. 1.645 for the 95 % point
        logit = math.log((1 - c.or_normal_p) / c.or_normal_p)  # -logit(or_normal_p) > 0
        out, stats = {}, self.calibration()
        for key, name in (("loc", "map"), ("sem", "semantic")):
            mean, std = stats[name]
            # a select, not an if: the exported graph holds both branches (no branch on a buffer's value)
            median = torch.where(self.quantiles_known, getattr(self, f"{key}_median"), mean)
            upper = torch.where(
                self.quantiles_known, getattr(self, f"{key}_upper"), mean + z_q * std
            )
            out[name] = (upper, ((upper - median) / logit).clamp_min(1e-6))
        return out

    @torch.no_grad()
    def _update_calibration(self, s_loc: torch.Tensor, s_sem: torch.Tensor) -> None:
        m = (
            1.0 if int(self.calib_steps) == 0 else self.cfg.calib_momentum
        )  # first batch: take it as is
        for key, s in (("loc", s_loc), ("sem", s_sem)):
            s = s.detach().float()
            mean, sq = getattr(self, f"{key}_mean"), getattr(self, f"{key}_sq")
            mean.mul_(1 - m).add_(m * s.mean())
            sq.mul_(1 - m).add_(m * s.pow(2).mean())
        self.calib_steps += 1

    @torch.no_grad()
    def calibrate(self, batches) -> None:
        """Replace the running statistics (gathered on training batches, dropout on) by the exact mean and
        E[s^2] of both scores on the held-out normal images, in eval mode -- the state the model is scored in."""
        loc, sem = [], []
        for batch in batches:
            out = self.forward(batch)
            loc.append(
                score(out["maps"], batch.image.shape[-2:], self.cfg.scoring).pred_score.float()
            )
            sem.append(out["semantic"].float())
        if not loc:
            return
        for key, s in (("loc", torch.cat(loc)), ("sem", torch.cat(sem))):
            getattr(self, f"{key}_mean").copy_(s.mean())
            getattr(self, f"{key}_sq").copy_(s.pow(2).mean())
            getattr(self, f"{key}_median").copy_(s.quantile(0.5))
            getattr(self, f"{key}_upper").copy_(s.quantile(self.cfg.or_quantile))
        self.quantiles_known.fill_(True)
        self.calib_steps.add_(1)

    def teacher_embedding(self, batch: Batch, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, C_emb): the target of the EE student -- the teacher's "cls" (ViT class token, or a CNN's pooled
        deepest level), or with ``semantic_target="imagenet"`` the whole network's ImageNet embedding."""
        if self.semantic_net is not None:
            size = self.cfg.semantic_image_size
            x = self.teacher.normalize(batch.image)  # (B, 3, S, S)
            if tuple(x.shape[-2:]) != (size, size):
                x = resize_bilinear(x, (size, size), antialias=True)  # (B, 3, size, size)
            with torch.no_grad():
                net = self.semantic_net
                return net.forward_head(
                    net.forward_features(x), pre_logits=True
                ).float()  # (B, C_emb)
        if "cls" in features or not self.teacher.is_vit:
            return self.teacher.embedding_of(features).float()
        with (
            torch.no_grad()
        ):  # ViT features without "cls" (e.g. from a levels-only cache): run the teacher
            return self.teacher(batch.image)["cls"].float()

    def semantic_embedding(self, image: torch.Tensor) -> torch.Tensor:
        """The EE student's prediction of the teacher embedding from the image alone: (B, C_emb)."""
        x = self.teacher.normalize(image)  # (B, 3, S, S); conv layout follows the weights
        return self.ee(x).float()

    def forward(self, batch: Batch, semantic: bool = True) -> dict:
        """ED targets/predictions/maps and (``semantic=True``) the semantic score s_sem (B,)."""
        if batch.image is None:
            raise ValueError("the dual-student model needs images (its EE student reads pixels)")
        if tuple(batch.image.shape[-2:]) != (self.cfg.image_size,) * 2:
            raise ValueError(
                f"this model was built for {self.cfg.image_size} px images; got "
                f"{tuple(batch.image.shape[-2:])}"
            )
        feats = self.teacher_features(batch)
        aligned = dict(zip(self.input_levels, levels_to_grid(feats, self.input_levels, self.grid)))
        x = self._fuse([aligned[n] for n in self.input_levels])  # (B, C_in, h, w)
        targets = [self._fuse([aligned[n] for n in g]) for g in self.groups]  # [(B, C_g, h, w)]
        B, _, h, w = x.shape
        tokens = to_tokens(x)  # (B, L, C_in)
        if (
            self.training
        ):  # the jitter (its dropout is inside the bottleneck); the targets stay clean
            tokens = noisy_input(tokens, 0.0, self.cfg.bottleneck_jitter, dim=-1)
        preds = self.ed(tokens)  # [(B, L, C_g)]
        preds = [p.float().transpose(1, 2).reshape(B, -1, h, w) for p in preds]  # [(B, C_g, h, w)]
        point = [
            cosine_distance(t, s, dim=1, keepdim=False) for t, s in zip(targets, preds)
        ]  # [(B, h, w)]
        out = {
            "targets": targets,
            "preds": preds,
            "point_distance": point,
            "maps": {f"local_{g}": d[:, None] for g, d in enumerate(point)},
        }  # each (B, 1, h, w)
        if semantic:
            emb_t = self.teacher_embedding(batch, feats)  # (B, C_emb)
            emb_s = self.semantic_embedding(batch.image)  # (B, C_emb)
            out["semantic"] = cosine_distance(emb_t, emb_s, dim=1, keepdim=False)  # (B,)
        return out

    def loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        out = self.forward(batch)
        local = torch.stack(
            [
                global_cosine_distance(
                    t, scale_easy_gradients(s, d, self.cfg.hm_quantile, self.cfg.hm_factor)
                )
                for t, s, d in zip(out["targets"], out["preds"], out["point_distance"])
            ]
        ).mean(dim=0)  # (B,)
        s_loc = self.map_score_for_training(out["maps"], batch.image.shape[-2:])  # (B,)
        s_sem = out["semantic"]  # (B,)
        if self.training:
            self._update_calibration(s_loc, s_sem)
        z = standardize(
            {"map": s_loc, "semantic": s_sem}, self.or_calibration()
        )  # detached: buffers
        c = self.cfg
        return {
            "local": c.w_local * local.mean(),
            "semantic": c.w_semantic * s_sem.mean(),
            "joint": c.joint_weight * noisy_or_nll(z["map"], z["semantic"]).mean(),
        }  # -log(1 - P) on normal images

    def map_score_for_training(self, maps: dict[str, torch.Tensor], image_size) -> torch.Tensor:
        """s_loc (B,) with the *value* of the shared scoring path (so the running statistics describe exactly
        the score used at test time) and the *gradient* of the same rule applied to the token-grid maps,
        without upsampling or blur (straight-through). Back-propagating through a 256 x 256 Gaussian blur
        cost more than both students together (conv backward on one channel: ~190 ms per batch of 8)."""
        sc = self.cfg.scoring
        with torch.no_grad():
            exact = score(maps, image_size, sc).pred_score  # (B,)
        grid = tuple(next(iter(maps.values())).shape[-2:])
        cheap = ScoringConfig(
            fuse=sc.fuse,
            blur_sigma=0.0,
            image_score=sc.image_score,
            pool_size=max(1, round(sc.pool_size * grid[0] / image_size[0])),
            topk=sc.topk,
        )
        surrogate = score(
            maps, grid, cheap
        ).pred_score  # (B,), differentiable, same rule on the grid
        return exact + (surrogate - surrogate.detach())

    # ---- the contract ------------------------------------------------------------------------------------
    def anomaly_maps(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The ED branch's per-group maps (the only pixel evidence; the semantic score has no map)."""
        return self.forward(batch, semantic=False)["maps"]

    def score_inputs(self, batch: Batch):
        """The ED branch's maps and the semantic score as a per-image term, from one forward."""
        out = self.forward(batch)
        return out["maps"], {"semantic": out["semantic"]}

    def combine_rule(self) -> str:
        return COMBINE_RULES[self.cfg.combine]

    def score_calibration(self) -> dict:
        """Noisy-OR: each branch's (offset, temperature) (``or_calibration``); ``sum`` / ``semantic``: the
        normal mean and std of each score (z-scores)."""
        return self.or_calibration() if self.cfg.combine == "noisy_or" else self.calibration()
