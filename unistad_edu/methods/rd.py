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
      * the official training script flattens each level and takes one cosine per image [recalled]; we use
        the paper's per-position cosine, the same quantity as the anomaly map;
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
    loss = sum_l mean_{b,h,w} (1 - cos_c(t_l, s_l));   maps {level: (B, 1, h_l, w_l)} = 1 - cos_c(t_l, s_l)

The student consumes only teacher features, never the image: ``needs_images = False`` (the engine trains it
from the feature cache). SNL (``snl.py``) is this model plus extra distillation terms and a CRAM block.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..scoring import ScoringConfig
from .base import Batch, Method, MethodConfig


@dataclass
class RDConfig(MethodConfig):
    """Reverse distillation. Defaults = the ``cpu`` preset: Lite0 teacher (strides 4/8/16 -> 24/40/112
    channels), 256 px, a small bottleneck (one OCE block, embedding 2 x 112 = 224 channels at 8 x 8) and a
    decoder with one block per level (0.51 M trainable parameters); Adam lr 0.005, betas (0.5, 0.999) as
    RD4AD; 30 epochs, batch 16. Measured here (2-core machine under load ~2, features cached, bf16, one
    thread): a training step of 16 images takes ~0.17 s, so an epoch over the ~670 real unified training
    images is ~7 s and the preset trains in about 4 minutes. A wider student (2 blocks per stage, 2 OCE
    blocks, block_width 1.0) cost ~0.45 s per step. With ReLU outputs (``linear_outputs=False``) the loss
    fell markedly slower on the Lite0 teacher (2.14 vs 1.47 after 6 steps on random images)."""

    embed_channels: int | None = None  # OCE output D; None = 2 * C_L (RD4AD: 2048 for WideResNet-50)
    oce_blocks: int = 1  # residual blocks in the one-class embedding (RD4AD: 3)
    decoder_blocks: tuple | int = 1  # blocks per decoder stage, in teacher-level order (fine -> coarse)
    block_width: float = 0.5  # inner width of a residual block = block_width * its output channels
    linear_outputs: bool = True  # no ReLU on the decoder's per-level outputs (see the paper card)
    init_seed: int = 0  # the bottleneck's and decoder's initial weights, reproducible
    # optimisation (the engine reads these)
    epochs: int = 30
    batch_size: int = 16
    optimizer: str = "adam"
    lr: float = 0.005
    betas: tuple = (0.5, 0.999)
    weight_decay: float = 0.0
    scoring: ScoringConfig = field(default_factory=lambda: ScoringConfig(fuse="sum", blur_sigma=4.0,
                                                                         image_score="max"))


# ---- distances shared by RD and SNL ------------------------------------------------------------------
def cosine_distance(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """``1 - cos(a, b)`` along ``dim`` (kept as size 1), written as ``0.5 * ||a/|a| - b/|b| ||^2`` so that two
    all-zero vectors are at distance 0 (and a zero vs a non-zero vector at 0.5) instead of 1. float32."""
    a = F.normalize(a.float(), dim=dim)
    b = F.normalize(b.float(), dim=dim)
    return 0.5 * (a - b).pow(2).sum(dim=dim, keepdim=True)


def position_cosine_distance(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) x 2 -> (B, 1, h, w): the cosine distance of the channel vectors at every position."""
    return cosine_distance(t, s, dim=1)


# ---- building blocks -----------------------------------------------------------------------------------
def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    """Residual bottleneck block that keeps (``same``), halves (``down``: stride-2 3x3) or doubles (``up``: 2x2
    transposed conv, as RD4AD's decoder) the grid: 1x1 -> 3x3 / 2x2T -> 1x1, BN after each, ReLU.
    ``relu_out=False`` leaves the sum linear (a decoder stage's last block with ``linear_outputs``)."""

    def __init__(self, cin: int, cout: int, width: int, mode: str = "same", relu_out: bool = True):
        super().__init__()
        if mode not in ("same", "down", "up"):
            raise ValueError(f"mode must be same | down | up, not {mode!r}")
        if mode == "up":
            mid = nn.ConvTranspose2d(width, width, 2, stride=2, bias=False)
            short = nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False)
        else:
            stride = 2 if mode == "down" else 1
            mid = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
            short = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            mid, nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if short is None else nn.Sequential(short, nn.BatchNorm2d(cout))
        self.relu_out = relu_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x) + self.shortcut(x)
        return F.relu(y) if self.relu_out else y


def _width(cout: int, ratio: float) -> int:
    return max(1, int(round(cout * ratio)))


class MultiScaleFusion(nn.Module):
    """MFF: bring every teacher level to the coarsest level's grid with stride-2 3x3 convs (BN, ReLU), each
    doubling the channels, the last one landing on C_L; concatenate -> (B, L * C_L, h_L, w_L)."""

    def __init__(self, channels: list[int], strides: list[int]):
        super().__init__()
        c_top, s_top = channels[-1], strides[-1]
        self.branches = nn.ModuleList()
        for c, s in zip(channels, strides):
            steps = math.log2(s_top / s)
            if steps != int(steps):
                raise ValueError(f"teacher strides {strides}: each must be the coarsest one over a power of 2")
            layers, cin = [], c
            for k in range(int(steps)):
                cout = c_top if k == int(steps) - 1 else min(2 * cin, c_top)
                layers.append(conv_bn_relu(cin, cout, stride=2))
                cin = cout
            self.branches.append(nn.Sequential(*layers))  # empty for the coarsest level: identity
        self.out_channels = c_top * len(channels)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        grid = feats[-1].shape[-2:]
        outs = []
        for branch, f in zip(self.branches, feats):
            y = branch(f)  # (B, C_L, ~h_L, ~w_L)
            if y.shape[-2:] != grid:  # odd grids: ceil-division sizes can differ by one
                y = F.interpolate(y, size=grid, mode="bilinear", align_corners=False)
            outs.append(y)
        return torch.cat(outs, dim=1)  # (B, L * C_L, h_L, w_L)


class Bottleneck(nn.Module):
    """OCBE = MFF + OCE: teacher levels -> one-class embedding (B, D, h_L / 2, w_L / 2)."""

    def __init__(self, channels: list[int], strides: list[int], embed: int, blocks: int, width: float):
        super().__init__()
        self.mff = MultiScaleFusion(channels, strides)
        cin = self.mff.out_channels
        oce = [ResBlock(cin, embed, _width(embed, width), mode="down")]
        oce += [ResBlock(embed, embed, _width(embed, width)) for _ in range(blocks - 1)]
        self.oce = nn.Sequential(*oce)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.oce(self.mff(feats))  # (B, D, h_L/2, w_L/2)


class Decoder(nn.Module):
    """The student: one stage per teacher level, coarse to fine; a stage doubles the grid (transposed conv)
    and outputs that level's channels. ``forward(z, sizes)`` returns the levels fine -> coarse, like the
    teacher, each resized to the teacher's grid in ``sizes`` if the doubling missed it by a cell."""

    def __init__(self, embed: int, channels: list[int], blocks: list[int], width: float, linear_outputs: bool):
        super().__init__()
        stages, cin = [], embed
        for c, n in zip(reversed(channels), reversed(blocks)):  # coarse -> fine
            n = max(1, int(n))
            layers = [ResBlock(cin, c, _width(c, width), mode="up", relu_out=not (linear_outputs and n == 1))]
            layers += [ResBlock(c, c, _width(c, width), relu_out=not (linear_outputs and i == n - 2))
                       for i in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            cin = c
        self.stages = nn.ModuleList(stages)

    def forward(self, z: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        outs = []
        x = z  # (B, D, h_L/2, w_L/2)
        for stage, size in zip(self.stages, reversed(sizes)):
            x = stage(x)  # (B, C_l, 2 h, 2 w)
            if tuple(x.shape[-2:]) != tuple(size):
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            outs.append(x)
        return outs[::-1]  # fine -> coarse, as the teacher's levels


# ---- the method ----------------------------------------------------------------------------------------
class RD(Method):
    name = "rd"
    Config = RDConfig
    needs_images = False  # loss() reads teacher features only: trains from the cache without images
    presets = {
        "cpu": {},
        # RD4AD: WideResNet-50 layers 1-3 (256/512/1024 ch, strides 4/8/16), OCE 3 blocks -> 2048 ch at 8 x 8,
        # decoder [3, 4, 6] blocks coarse -> fine [recalled], Adam 0.005 (0.5, 0.999), batch 16, 200 epochs
        "paper": dict(teacher="wide_resnet50_2", teacher_layers=None, image_size=256, embed_channels=2048,
                      oce_blocks=3, decoder_blocks=(6, 4, 3), block_width=0.5, linear_outputs=False,
                      optimizer="adam", lr=0.005, betas=(0.5, 0.999), weight_decay=0.0, epochs=200,
                      batch_size=16, schedule="constant"),
    }

    def __init__(self, teacher, cfg: RDConfig):
        super().__init__(teacher, cfg)
        info = teacher.feature_info
        self.channels = [lv.channels for lv in info]  # e.g. [24, 40, 112] (Lite0), [256, 512, 1024] (WRN-50)
        strides = [lv.stride for lv in info]
        self.embed_channels = cfg.embed_channels or 2 * self.channels[-1]
        blocks = cfg.decoder_blocks
        blocks = [blocks] * len(info) if isinstance(blocks, int) else list(blocks)
        if len(blocks) != len(info):
            raise ValueError(f"decoder_blocks has {len(blocks)} entries for {len(info)} teacher levels")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            self.bottleneck = Bottleneck(self.channels, strides, self.embed_channels, cfg.oce_blocks,
                                         cfg.block_width)
            self.decoder = Decoder(self.embed_channels, self.channels, blocks, cfg.block_width,
                                   cfg.linear_outputs)

    # ---- pieces (SNL overrides ``embed`` and extends ``terms_from``) ----------------------------------
    def teacher_levels(self, batch: Batch) -> list[torch.Tensor]:
        feats = self.teacher_features(batch)
        return [feats[name].float() for name in self.teacher.layer_names]  # fine -> coarse, (B, C_l, h_l, w_l)

    def embed(self, t: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """Teacher levels -> the embedding the decoder starts from (B, D, h_L/2, w_L/2), and a dict of
        extras for the loss (empty here; SNL's CRAM adds its compactness and assignment)."""
        return self.bottleneck(t), {}

    def forward(self, batch: Batch) -> dict:
        """``teacher`` and ``student`` level lists (fine -> coarse, float32), the ``embedding`` and the
        extras of :meth:`embed`."""
        t = self.teacher_levels(batch)
        z, extras = self.embed(t)  # (B, D, h_L/2, w_L/2)
        s = self.decoder(z, [tuple(f.shape[-2:]) for f in t])  # each (B, C_l, h_l, w_l)
        return {"teacher": t, "student": [x.float() for x in s], "embedding": z, **extras}

    def terms_from(self, out: dict) -> dict[str, torch.Tensor]:
        """The named, weighted loss terms of a :meth:`forward` output (lessons apply SNL's to RD's outputs)."""
        d = sum(position_cosine_distance(t, s).mean() for t, s in zip(out["teacher"], out["student"]))
        return {"position_cosine": d}

    # ---- the contract ----------------------------------------------------------------------------------
    def loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.terms_from(self.forward(batch))

    def anomaly_maps(self, batch: Batch) -> dict[str, torch.Tensor]:
        out = self.forward(batch)
        return {name: position_cosine_distance(t, s)  # (B, 1, h_l, w_l)
                for name, t, s in zip(self.teacher.layer_names, out["teacher"], out["student"])}
