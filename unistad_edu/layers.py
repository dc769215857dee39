"""Blocks that two or more methods share: neighbourhood attention masks and a learned 2-D position embedding.

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
"""
from __future__ import annotations

import torch
import torch.nn as nn


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
            raise ValueError(f"position embedding dim must be even (half rows, half columns), got {dim}")
        self.h, self.w = h, w
        self.row_embed = nn.Embedding(h, dim // 2)
        self.col_embed = nn.Embedding(w, dim // 2)
        nn.init.uniform_(self.row_embed.weight)  # DETR's init
        nn.init.uniform_(self.col_embed.weight)

    def forward(self) -> torch.Tensor:
        col = self.col_embed.weight  # (w, D/2)
        row = self.row_embed.weight  # (h, D/2)
        pos = torch.cat([col[None, :, :].expand(self.h, -1, -1),  # (h, w, D/2): column of each cell
                         row[:, None, :].expand(-1, self.w, -1)],  # (h, w, D/2): row of each cell
                        dim=-1)  # (h, w, D)
        return pos.flatten(0, 1)  # (HW, D)
