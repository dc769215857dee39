"""Blocks that two or more methods share: attention masks, position embedding, attention and transformer
layers, cosine distances, teacher levels -> one token grid, and weight init. Method files import these (and
``methods/base``, ``scoring``, ``teacher``), never each other.

Mask convention used everywhere in this package: a **boolean (HW, HW) tensor where True means "hidden"** --
row ``i`` says which tokens query ``i`` may *not* look at. This is ``nn.MultiheadAttention``'s convention;
``F.scaled_dot_product_attention`` wants the opposite (True = may attend), so pass it ``~mask``;
:func:`additive_mask` turns a boolean mask into the ``0 / -inf`` float mask of UniAD's official code.

Tokens are numbered row-major: token ``i`` sits at row ``i // w``, column ``i % w`` of an ``h x w`` grid.

* :func:`neighbor_mask` -- UniAD's neighbour-masked attention (NMA): hide the ``k x k`` window around each
  token, the token itself included, so a query must rebuild its feature from *other* places.
* :func:`local_mask` -- the inverse, for a "local" student (UniSTAD): a query may look **only** at its
  ``k x k`` window, the token itself excluded.
* :func:`clip_neighbor_size` -- shrink a window that would hide a whole small grid.
* :class:`PositionEmbedding2D` -- DETR / UniAD's learned position embedding: a row and a column table,
  concatenated.
* :class:`Attention`, :class:`FeedForward`, :class:`TransformerLayer` -- multi-head attention (bool mask,
  True = hidden), the two-layer MLP, and one transformer layer with its switches (post-norm as DETR / UniAD's
  encoder, pre-norm as ViT; self-attention or cross-attention to a fixed context; ReLU or GELU).
* :func:`cosine_distance`, :func:`level_cosine_distance` -- ``1 - cos`` that is 0 for two zero vectors; per
  level of concatenated channels, averaged.
* :func:`levels_to_grid`, :func:`to_tokens`, :func:`to_grid` -- teacher levels resized onto one grid;
  (B, C, h, w) <-> (B, L, C) row-major tokens.
* :func:`xavier_init_` -- Xavier-uniform weights and zero biases on every linear layer of a module (frozen
  sub-modules skipped).
* :func:`norm_jitter_sigma`, :func:`add_jitter` -- UniAD's feature jitter: Gaussian noise of standard deviation
  ``alpha * ||f||_2 / C`` per feature vector, each image hit with a probability.
* :func:`noisy_input` -- the teacher features as a reconstruction student reads them while training: that
  jitter, then dropout (the ``*_jitter`` and ``*_dropout`` switches of every reconstruction student).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def _pair(k) -> tuple[int, int]:
    if isinstance(k, int):
        return k, k
    kh, kw = k
    return int(kh), int(kw)


def _window(h: int, w: int, k, device=None) -> torch.Tensor:
    """(HW, HW) bool, True where token j lies in the k x k window centred on token i (clipped at borders).

    The window of token (r, c) spans rows r - kh//2 .. r + kh//2 and columns c - kw//2 .. c + kw//2, as in
    UniAD's ``generate_mask`` (so an even k = 8 spans 9 rows, like the official code).
    """
    kh, kw = _pair(k)
    rows = torch.arange(h, device=device).repeat_interleave(w)  # (HW,) row of each token
    cols = torch.arange(w, device=device).repeat(h)  # (HW,) column of each token
    near_r = (rows[:, None] - rows[None, :]).abs() <= kh // 2  # (HW, HW)
    near_c = (cols[:, None] - cols[None, :]).abs() <= kw // 2  # (HW, HW)
    return near_r & near_c


def neighbor_mask(h: int, w: int, k, device=None) -> torch.Tensor:
    """UniAD's neighbour mask: (HW, HW) bool, True (hidden) where j is in the k x k window around i.

    The diagonal is always hidden (a token is in its own window); near the borders the window is clipped,
    so a corner token of a 14 x 14 grid with k = 7 hides only a 4 x 4 block and still sees 180 tokens.
    ``k = 0`` hides nothing; pass ``k = 1`` to hide only the token itself.
    """
    kh, kw = _pair(k)
    if kh <= 0 or kw <= 0:
        return torch.zeros(h * w, h * w, dtype=torch.bool, device=device)
    return _window(h, w, (kh, kw), device)


def local_mask(h: int, w: int, k, device=None) -> torch.Tensor:
    """Inverse of :func:`neighbor_mask` for local attention: (HW, HW) bool, True (hidden) everywhere
    **except** the k x k window around i, and the token i itself hidden too (no identity shortcut)."""
    eye = torch.eye(h * w, dtype=torch.bool, device=device)
    return ~_window(h, w, k, device) | eye


def additive_mask(mask: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Bool mask (True = hidden) -> float mask with -inf where hidden and 0 elsewhere (official UniAD form)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))


def clip_neighbor_size(h: int, w: int, k) -> tuple[int, int]:
    """Shrink a k x k window so that no token of an h x w grid has everything hidden.

    A token is fully hidden only when its window covers every row *and* every column. A window spans
    ``2 * (k // 2) + 1`` cells along a side, so keeping that below the side length is enough. A side of
    length 1 keeps ``k = 1`` there; a 1 x 1 grid cannot be masked at all (the caller should switch the mask
    off). Examples: 7 on a 14 x 14 or 16 x 16 grid stays 7; 7 on a 4 x 4 grid (64 px, stride 16) becomes 3.
    """
    out = []
    for n, kk in zip((h, w), _pair(k)):
        half = min(kk // 2, max(0, (n - 2) // 2))  # 2 * half + 1 < n whenever n >= 2
        out.append(kk if half == kk // 2 else 2 * half + 1)
    return out[0], out[1]


class PositionEmbedding2D(nn.Module):
    """Learned 2-D position embedding (DETR's ``PositionEmbeddingLearned``, used by UniAD).

    A column table (w, dim/2) and a row table (h, dim/2); token (r, c) gets ``[col[c], row[r]]``.
    ``forward()`` returns (HW, dim), row-major, to be added to queries and keys (never to values).
    """

    def __init__(self, h: int, w: int, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(
                f"position embedding dim must be even (half rows, half columns), got {dim}"
            )
        self.h, self.w = h, w
        self.row_embed = nn.Embedding(h, dim // 2)
        self.col_embed = nn.Embedding(w, dim // 2)
        nn.init.uniform_(self.row_embed.weight)  # DETR's init
        nn.init.uniform_(self.col_embed.weight)

    def forward(self) -> torch.Tensor:
        col = self.col_embed.weight  # (w, D/2)
        row = self.row_embed.weight  # (h, D/2)
        pos = torch.cat(
            [
                col[None, :, :].expand(self.h, -1, -1),  # (h, w, D/2): column of each cell
                row[:, None, :].expand(-1, self.w, -1),
            ],  # (h, w, D/2): row of each cell
            dim=-1,
        )  # (h, w, D)
        return pos.flatten(0, 1)  # (HW, D)


# ---- attention and transformer layers ------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head attention, batch first. ``mask`` is (Lq, Lk) bool with True = hidden (this module's rule)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden_dim {dim} must be divisible by num_heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.q_proj, self.k_proj, self.v_proj = (
            nn.Linear(dim, dim),
            nn.Linear(dim, dim),
            nn.Linear(dim, dim),
        )
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, q, k, v, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, Lq, D = q.shape
        Lk, H = k.shape[1], self.heads
        q = self.q_proj(q).view(B, Lq, H, D // H).transpose(1, 2)  # (B, H, Lq, D/H)
        k = self.k_proj(k).view(B, Lk, H, D // H).transpose(1, 2)  # (B, H, Lk, D/H)
        v = self.v_proj(v).view(B, Lk, H, D // H).transpose(1, 2)  # (B, H, Lk, D/H)
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            # written out: under CPU bf16 autocast (the engine's default there) this measured ~2x faster than
            # SDPA's CPU flash kernel at 256 tokens (fwd + bwd 34 vs 63 ms); both give the same attention
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D // H))  # (B, H, Lq, Lk)
            if mask is not None:
                att = att.masked_fill(mask, float("-inf"))  # hidden keys get zero weight
            att = F.dropout(att.softmax(dim=-1), self.dropout, self.training)  # (B, H, Lq, Lk)
            y = att @ v  # (B, H, Lq, D/H)
        else:
            allowed = None if mask is None else ~mask  # SDPA's bool mask means "may attend"
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
            )  # (B, H, Lq, D/H)
        y = y.transpose(1, 2).reshape(B, Lq, D)  # (B, Lq, D)
        return self.out_proj(y)


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


class FeedForward(nn.Sequential):
    """Linear -> activation -> dropout -> Linear (parameter names 0 and 3)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, activation: str = "relu"):
        super().__init__(
            nn.Linear(dim, hidden),
            ACTIVATIONS[activation](),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
        )


class TransformerLayer(nn.Module):
    """One attention + feed-forward layer; positions are added to queries and keys, never to values.

    * ``norm="post"`` (DETR / UniAD's encoder): ``x = norm1(x + attn(x + pos, kv + pos, kv))``, then
      ``norm2(x + ffn(x))``.
    * ``norm="pre"`` (ViT): ``x = x + attn(norm1(x) + pos, kv + pos, kv)``, then ``x + ffn(norm2(x))``.

    ``forward(x, context=None, pos=None, mask=None)``: without ``context`` it is self-attention (keys and
    values are ``x``, normalised first in pre-norm); with one, the queries ``x`` read the fixed ``context``
    (B, Lk, D) and never each other. ``mask`` (Lq, Lk) bool, True = hidden.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        ffn: int,
        dropout: float = 0.0,
        norm: str = "post",
        activation: str = "relu",
    ):
        super().__init__()
        if norm not in ("post", "pre"):
            raise ValueError(f"norm must be 'post' or 'pre', got {norm!r}")
        self.pre_norm = norm == "pre"
        self.attn = Attention(dim, heads, dropout)
        self.ffn = FeedForward(dim, ffn, dropout, activation)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(
        self, x, context=None, pos=None, mask=None
    ):  # x (B, L, D), context (B, Lk, D), pos (L, D)
        pos = 0 if pos is None else pos
        if self.pre_norm:
            q = self.norm1(x)  # (B, L, D)
            kv = q if context is None else context
            x = x + self.drop1(self.attn(q + pos, kv + pos, kv, mask))  # (B, L, D)
            return x + self.drop2(self.ffn(self.norm2(x)))
        kv = x if context is None else context
        x = self.norm1(x + self.drop1(self.attn(x + pos, kv + pos, kv, mask)))  # (B, L, D)
        return self.norm2(x + self.drop2(self.ffn(x)))


def xavier_init_(module: nn.Module, skip: Sequence[nn.Module] = ()) -> None:
    """Xavier-uniform weights, zero biases on every ``nn.Linear`` inside ``module`` (UniAD's initializer),
    except inside the modules of ``skip`` (a method passes its frozen teacher: a ViT teacher is full of
    ``nn.Linear`` layers whose pretrained weights must stay)."""
    frozen = {id(m) for s in skip for m in s.modules()}
    for m in module.modules():
        if isinstance(m, nn.Linear) and id(m) not in frozen:
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


# ---- distances ---------------------------------------------------------------------------------------------
def cosine_distance(
    a: torch.Tensor, b: torch.Tensor, dim: int, keepdim: bool = True
) -> torch.Tensor:
    """``1 - cos(a, b)`` along ``dim``, written as ``0.5 * ||a/|a| - b/|b| ||^2`` so that two all-zero vectors
    are at distance 0 (and a zero vs a non-zero vector at 0.5) instead of 1. float32."""
    a = F.normalize(a.float(), dim=dim)
    b = F.normalize(b.float(), dim=dim)
    return 0.5 * (a - b).pow(2).sum(dim=dim, keepdim=keepdim)


def global_cosine_distance(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """1 - cos(vec t, vec s) per image, each (B, ...) flattened to one vector: (B,). RD4AD's official training
    loss per level and Dinomaly's "loose" loss."""
    return cosine_distance(t.flatten(1), s.flatten(1), dim=1, keepdim=False)


def level_cosine_distance(
    a: torch.Tensor, b: torch.Tensor, channels: Sequence[int]
) -> torch.Tensor:
    """Mean over levels of 1 - cos(a_l, b_l) at each token. a, b: (B, L, C) with the levels' channels
    concatenated in ``channels`` order -> (B, L)."""
    parts = [
        cosine_distance(x, y, dim=-1, keepdim=False)  # (B, L) per level
        for x, y in zip(a.split(list(channels), dim=-1), b.split(list(channels), dim=-1))
    ]
    return torch.stack(parts).mean(dim=0)  # (B, L)


def scale_easy_gradients(
    s: torch.Tensor, point_distance: torch.Tensor, quantile: float, factor: float
) -> torch.Tensor:
    """Hard-point mining: identity forward; backward multiplies the gradient of the points whose distance is
    below the ``quantile`` of all points of the batch by ``factor``. s (B, C, h, w), point_distance (B, h, w)."""
    if not s.requires_grad or factor == 1.0 or quantile <= 0:
        return s
    d = point_distance.detach().float()
    thresh = torch.quantile(d.flatten(), quantile)  # a scalar
    scale = torch.where(d < thresh, factor, 1.0).to(s.dtype)[:, None]  # (B, 1, h, w)
    s = s.view_as(
        s
    )  # an alias: the hook then scales only the gradient that flows through this use of s
    s.register_hook(lambda grad: grad * scale)
    return s


# ---- resizing that exports -----------------------------------------------------------------------------------
def exporting() -> bool:
    """True while torch traces a model into a graph (``torch.onnx.export``, either exporter, or ``torch.export``)."""
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


def antialias_weights(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float32: the weights of ``F.interpolate(mode="bilinear", antialias=True,
    align_corners=False)`` along one axis -- PyTorch's (and PIL's) rule: output cell i is centred at
    scale (i + 1/2), scale = n_in / n_out; a triangle filter stretched by the scale when shrinking (support
    scale, weights 1 - |d| / scale) or of support 1 when enlarging; the taps inside the input, renormalised to
    sum 1. Computed in Python, so it is a constant of any traced graph."""
    scale = n_in / n_out
    support = scale if scale >= 1.0 else 1.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    rows = []
    for i in range(n_out):  # plain Python numbers: nothing here is traced
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        row = [0.0] * n_in
        for j in range(lo, hi):
            row[j] = max(0.0, 1.0 - abs((j - center + 0.5) * inv))
        total = sum(row)
        rows.append([v / total for v in row] if total > 0 else row)
    return torch.tensor(rows, dtype=torch.float32)  # (n_out, n_in)


def resize_bilinear(
    x: torch.Tensor, size: tuple[int, int], align_corners: bool = False, antialias: bool = False
) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", ...)`` for (B, C, h, w). While a graph is being exported, an
    antialiased resize becomes two matrix products with :func:`antialias_weights` (the same numbers): ONNX's
    ``Resize(antialias=1)`` is computed differently by OpenVINO (measured: max |Δ| 0.22 against PyTorch on a
    16 -> 8 resize, onnxruntime 1e-7), the products agree in every runtime."""
    if antialias and not align_corners and exporting():
        # int(): the TorchScript tracer hands out sizes as tensors, which would trace every weight's arithmetic
        wh = antialias_weights(int(x.shape[-2]), int(size[0])).to(x.device)  # (h', h)
        ww = antialias_weights(int(x.shape[-1]), int(size[1])).to(x.device)  # (w', w)
        return torch.matmul(torch.matmul(wh, x.float()), ww.t()).to(x.dtype)  # (B, C, h', w')
    return F.interpolate(
        x, size=tuple(size), mode="bilinear", align_corners=align_corners, antialias=antialias
    )


# ---- teacher levels -> one token grid ---------------------------------------------------------------------
def levels_to_grid(
    features: dict[str, torch.Tensor],
    names: Sequence[str],
    grid: tuple[int, int],
    antialias: bool = True,
    align_corners: bool = False,
) -> list[torch.Tensor]:
    """Each named level bilinearly resized to ``grid`` (float32), in ``names`` order: [(B, C_l, h, w)].

    ``antialias=True`` (default): a level that shrinks is low-pass filtered first (a stride-4 level becomes a
    triangle-weighted average of the fine cells around each coarse cell), not sampled at every fourth cell. ``antialias=False,
    align_corners=True`` is UniAD's official neck (``UpsamplingBilinear2d``); a level already on the grid is
    returned as it is either way."""
    out = []
    for name in names:
        f = features[name].float()  # (B, C_l, h_l, w_l)
        if tuple(f.shape[-2:]) != tuple(grid):
            f = resize_bilinear(f, tuple(grid), align_corners=align_corners, antialias=antialias)
        out.append(f)  # (B, C_l, h, w)
    return out


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, L, C), L = h w, row-major."""
    return x.flatten(2).transpose(1, 2)


def to_grid(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, L, C) row-major tokens -> (B, C, h, w)."""
    B, L, C = tokens.shape
    return tokens.transpose(1, 2).reshape(B, C, h, w)


def norm_jitter_sigma(x: torch.Tensor, alpha: float, dim: int) -> torch.Tensor:
    """UniAD's jitter scale: ``alpha * ||f||_2 / C`` for every feature vector ``f`` along ``dim`` (C channels),
    keeping that dim (size 1) so it broadcasts against ``x``. With it the noise's norm is about
    ``alpha / sqrt(C)`` times the feature's."""
    return alpha * x.norm(dim=dim, keepdim=True) / x.shape[dim]


def add_jitter(x: torch.Tensor, sigma: torch.Tensor, prob: float = 1.0) -> torch.Tensor:
    """Feature jitter: ``x + N(0, 1) * sigma``, each sample (dim 0) hit with probability ``prob``; ``sigma``
    broadcasts against ``x``. Gradients reach ``x`` unchanged (the noise is added, not learned)."""
    B = x.shape[0]
    hit = (torch.rand(B, *([1] * (x.dim() - 1)), device=x.device) < prob).to(x.dtype)
    # a contiguous draw: randn_like would copy the strides of a transposed tokens view, and filling a
    # strided tensor takes torch's slow scalar path (measured 6x slower, a third of a small model's step)
    noise = torch.randn(x.shape, device=x.device, dtype=x.dtype)
    return x + noise * sigma * hit


def noisy_input(x: torch.Tensor, dropout: float, jitter: float, dim: int) -> torch.Tensor:
    """Teacher features as a reconstruction student reads them while training (call it in training only; the
    loss's targets stay the clean ``x``): UniAD's feature jitter of alpha ``jitter`` per feature vector along
    ``dim``, then dropout ``dropout``; each off at 0."""
    if jitter > 0:
        x = add_jitter(x, norm_jitter_sigma(x, jitter, dim))
    return F.dropout(x, dropout, training=True) if dropout > 0 else x


# ---- feature pyramid matching (STPM and its enhanced version) -----------------------------------------------
def pyramid_maps(
    teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor], names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """STPM's per-level map: ``0.5 * || t/|t| - s/|s| ||^2`` over channels at every position (float32):
    {name: (B, C, h, w)} x 2 -> {name: (B, 1, h, w)}. Its mean over (B, h, w) is STPM's Eq. 1 loss of the level."""
    out = {}
    for name in names:
        t = F.normalize(teacher[name].float(), dim=1)  # (B, C, h, w), unit length along channels
        s = F.normalize(student[name].float(), dim=1)  # (B, C, h, w)
        out[name] = 0.5 * (t - s).pow(2).sum(dim=1, keepdim=True)  # (B, 1, h, w)
    return out


# ---- the reverse-distillation student (RD and SNL) ---------------------------------------------------
def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


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
            short = (
                None
                if (cin == cout and stride == 1)
                else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
            )
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            mid,
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = (
            nn.Identity() if short is None else nn.Sequential(short, nn.BatchNorm2d(cout))
        )
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
                raise ValueError(
                    f"teacher strides {strides}: each must be the coarsest one over a power of 2"
                )
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

    def __init__(
        self, channels: list[int], strides: list[int], embed: int, blocks: int, width: float
    ):
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

    def __init__(
        self, embed: int, channels: list[int], blocks: list[int], width: float, linear_outputs: bool
    ):
        super().__init__()
        stages, cin = [], embed
        for c, n in zip(reversed(channels), reversed(blocks)):  # coarse -> fine
            n = max(1, int(n))
            layers = [
                ResBlock(
                    cin, c, _width(c, width), mode="up", relu_out=not (linear_outputs and n == 1)
                )
            ]
            layers += [
                ResBlock(c, c, _width(c, width), relu_out=not (linear_outputs and i == n - 2))
                for i in range(n - 1)
            ]
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


def reverse_student(levels, cfg) -> tuple[nn.Module, nn.Module, int]:
    """RD's trainable network for a teacher's levels (``feature_info``) and a config with RD's network fields
    (``methods.base.ReverseDistillationConfig``): ``(bottleneck, decoder, embed_channels)``, initialised
    from ``cfg.init_seed`` whatever the global RNG holds."""
    channels = [lv.channels for lv in levels]
    strides = [lv.stride for lv in levels]
    embed = cfg.embed_channels or 2 * channels[-1]
    blocks = cfg.decoder_blocks
    blocks = [blocks] * len(channels) if isinstance(blocks, int) else list(blocks)
    if len(blocks) != len(channels):
        raise ValueError(
            f"decoder_blocks has {len(blocks)} entries for {len(channels)} teacher levels"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        bottleneck = Bottleneck(channels, strides, embed, cfg.oce_blocks, cfg.block_width)
        decoder = Decoder(embed, channels, blocks, cfg.block_width, cfg.linear_outputs)
    return bottleneck, decoder, embed
