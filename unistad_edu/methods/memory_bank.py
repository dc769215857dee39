"""Memory bank -- a nearest-neighbour reference method (PatchCore-style), not a teacher-student.

Paper card
    Title: Towards Total Recall in Industrial Anomaly Detection. Roth, Pemula, Zepeda, Schölkopf, Brox,
    Gehler. Venue: CVPR 2022. arXiv: 2106.08265.
    What it fixes: nothing in the teacher-student family -- it is the reference point the leaderboard needs.
    It asks how far one gets with **no training at all**: keep the frozen teacher's locally aggregated patch
    features of every normal training image in a memory bank, and call a test patch anomalous by its
    distance to the nearest normal patch. A **greedy coreset** keeps a small subset of the bank that still
    covers all of it, so the bank and the search stay affordable.
    Follows: Sec. 3.1 (locally aware patch features: mid-level levels, 3 x 3 neighbourhood aggregation,
    coarser level resized to the finer grid), Sec. 3.2 / Alg. 1 (k-center greedy coreset, distances computed
    after a random linear projection), Sec. 3.3 (patch score = distance to the nearest bank entry; map
    upsampled and Gaussian-smoothed with sigma = 4).
    Simplified / our choices: the neighbourhood aggregation is a 3 x 3 average pool of each level with the
    cells outside the grid counted as zeros (``border="zeros"``, what the paper code's zero-padded unfold and
    anomalib do) instead of the paper code's adaptive pooling of the flattened neighbourhood. (Earlier versions
    averaged the border cells over the 4-6 cells inside the grid, ``border="valid"``: noisier border
    patches, poorly covered by the coreset -- on commutator 98 % of normal test images had their highest patch
    on the outer ring; checkpoints made then still load with ``valid``);
    the optional channel reduction (``embed_dim``, the ``paper`` preset's 1024) is one adaptive average pool over
    the concatenated channels; the projection is a dense Gaussian matrix; the coreset starts from a seeded
    random patch; the image score is the **max of the smoothed, upsampled map** through the shared scoring
    path -- PatchCore's re-weighting of the maximum by the density of its nearest neighbour's neighbourhood
    (Eq. 7) is **left out**.

How it fits the one engine: the method has no trainable parameters and sets ``trains_by_gradient = False``.
``engine.fit`` then skips the optimiser and the epochs and calls :meth:`MemoryBank.build` once with every
training batch (teacher features from the in-memory store when cached: ``needs_images = False``), then
calibrates the threshold as for every method. The bank is a buffer, so ``state_for_checkpoint`` saves it in
``model.safetensors``; its length depends on the data, and :meth:`load_from_checkpoint` resizes the buffer to
the stored shape first.

Data flow (``cpu`` preset: Lite0 strides 8 / 16, 40 + 112 channels, 256 px)::

    teacher levels (B, 40, 32, 32), (B, 112, 16, 16)
      --3x3 average pool, each level--> same shapes
      --bilinear to the finest grid, concat channels--> (B, 152, 32, 32)    [paper: WRN-50 512+1024 -> 1024]
    build:  all training patches (N*32*32, 152) --k-center greedy coreset--> bank (M, 152), M = ratio * N*1024
    test:   patches (B*32*32, 152) --chunked torch.cdist to bank, min--> map {"nn": (B, 1, 32, 32)}
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..layers import exporting
from ..scoring import ScoringConfig
from .base import Batch, Method, MethodConfig, paper_recipe


@dataclass
class MemoryBankConfig(MethodConfig):
    """Memory bank. Defaults = the ``cpu`` preset: Lite0 strides 8 and 16 (``teacher_layers=(2, 3)``), 256 px,
    a coreset of 1 % of the training patches, searched after a projection to 64 dimensions.

    Why 1 % and 64 and not more, on CPU (measured here, one thread, 600k random 152-d patches -- the size of the
    unified real training set at 256 px): one greedy step costs ~12 ms projected to 64 dimensions and ~50 ms
    unprojected or at 128, and the coreset needs ratio x 600k steps, so 1 % builds in ~1.5 min and 10 % in
    ~20 min; a test image against a 10 % bank costs ~0.5 s of distances alone against ~30 ms for 1 %.

    ``epochs`` and the optimiser fields are unused: the bank is built in one pass over the training images.
    ``projection_dim=None`` gives the exact greedy coreset (distances in all D dimensions)."""

    choices: ClassVar[dict[str, tuple]] = {
        "image_score_rule": ("map", "reweighted"),
        "border": ("zeros", "valid"),
    }

    teacher_layers: tuple | None = (
        2,
        3,
    )  # Lite0 / WideResNet-50: the stride-8 and stride-16 levels
    epochs: int = 1
    batch_size: int = 16
    strides: tuple = (
        8,
        16,
    )  # which teacher levels make a patch feature (mid-level, as in the paper)
    neighbourhood: int = 3  # local aggregation window (p in the paper)
    border: str = "zeros"  # cells outside the grid: "zeros" (PatchCore / anomalib) | "valid" (averaged over the inside)
    embed_dim: int | None = (
        None  # reduce the concatenated channels to this many (adaptive average pool)
    )
    coreset_ratio: float = 0.01  # fraction of training patches kept; 1.0 keeps all of them
    projection_dim: int | None = 64  # random projection for the coreset's distances; None = none
    coreset_seed: int = 0  # projection matrix and first centre
    chunk_elements: int = (
        2**22
    )  # largest distance block (queries x bank rows) computed at once (16 MiB)
    # image score: "map" = the shared scoring path's (max of the blurred map); "reweighted" = PatchCore's Eq. 7,
    # the largest patch distance s* times 1 - softmax of the distances from that patch to its nearest bank
    # patch m* and m*'s reweight_neighbours - 1 nearest bank neighbours (a patch in a sparse region counts more)
    image_score_rule: str = "map"
    reweight_neighbours: int = 9  # b of Eq. 7 (anomalib: 9), m* included

    def __post_init__(self):
        super().__post_init__()
        if self.reweight_neighbours < 1:
            raise ValueError(f"reweight_neighbours must be >= 1, got {self.reweight_neighbours}")

    scoring: ScoringConfig = field(
        default_factory=lambda: ScoringConfig(fuse="mean", blur_sigma=4.0, image_score="max")
    )


def greedy_coreset(
    x: torch.Tensor, n: int, projection_dim: int | None = None, seed: int = 0
) -> torch.Tensor:
    """Indices (n,) of a k-center greedy coreset of ``x`` (N, D) (PatchCore Alg. 1).

    Start from one seeded random point; then repeatedly add the point **farthest from everything selected so
    far** (the largest distance to its nearest selected point). Each step costs one matrix-vector product over
    all N points, since only the distances to the newest centre are new. With ``projection_dim`` < D the
    distances are measured after a random Gaussian projection (Johnson-Lindenstrauss: they are kept up to a
    small factor), which makes every step cheaper. ``n >= N`` returns every index."""
    N, D = x.shape
    if n >= N:
        return torch.arange(N)
    g = torch.Generator().manual_seed(seed)
    z = x.float()
    if projection_dim and projection_dim < D:
        proj = torch.randn(D, projection_dim, generator=g) / math.sqrt(projection_dim)  # (D, d)
        z = z @ proj.to(z.device)  # (N, d)
    # on CPU numpy's BLAS over the points as columns runs each step faster (docs/benchmarks.md)
    if z.device.type == "cpu":
        return torch.from_numpy(_greedy_loop_numpy(z.t().contiguous().numpy(), n, g))
    return _greedy_loop_torch(z, n, g)


def _greedy_loop_torch(z: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """:func:`greedy_coreset`'s loop over the points as rows of ``z`` (N, d), on any device."""
    N = z.shape[0]
    sq = z.pow(2).sum(dim=1)  # (N,) squared norms: |a - b|^2 = |a|^2 - 2 a.b + |b|^2
    min_d = torch.full((N,), float("inf"), device=z.device)  # to the nearest centre
    chosen = torch.empty(n, dtype=torch.long)
    idx = int(torch.randint(N, (1,), generator=g))
    for i in range(n):
        chosen[i] = idx
        d = sq - 2 * torch.mv(z, z[idx]) + sq[idx]  # (N,) squared distances to the new centre
        torch.minimum(min_d, d, out=min_d)
        min_d[idx] = -float("inf")  # never picked again (rounding could leave it at ~1e-6)
        idx = int(min_d.argmax())
    return chosen


def _greedy_loop_numpy(zt: np.ndarray, n: int, g: torch.Generator) -> np.ndarray:
    """:func:`greedy_coreset`'s loop over the points as columns of ``zt`` (d, N), in numpy (CPU)."""
    N = zt.shape[1]
    sq = np.einsum("dn,dn->n", zt, zt)  # (N,) squared norms
    min_d = np.full(N, np.inf, dtype=zt.dtype)
    d = np.empty(N, dtype=zt.dtype)
    chosen = np.empty(n, dtype=np.int64)
    idx = int(torch.randint(N, (1,), generator=g))
    for i in range(n):
        chosen[i] = idx
        # a copy: numpy's product with a strided column is far slower
        centre = np.ascontiguousarray(zt[:, idx])
        np.matmul(centre, zt, out=d)  # (N,) dot products with the new centre
        d *= -2
        d += sq
        d += sq[idx]  # squared distances to the new centre
        np.minimum(min_d, d, out=min_d)
        min_d[idx] = -np.inf
        idx = int(min_d.argmax())
    return chosen


def nearest(
    queries: torch.Tensor, bank: torch.Tensor, chunk_elements: int = 2**22
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance (Q,) from each query (Q, D) to its nearest bank row (M, D), and that row's index (Q,),
    in blocks of at most ``chunk_elements`` distances, so memory stays bounded whatever the bank's size."""
    Q, M = queries.shape[0], bank.shape[0]
    if (
        exporting()
    ):  # a graph (``export``): no loop over the queries, whose number grows with the batch
        return _nearest_graph(queries, bank)
    rows = max(1, min(M, chunk_elements))  # bank rows per block
    cols = max(1, chunk_elements // rows)  # queries per block
    out = torch.empty(Q, device=queries.device)
    where = torch.empty(Q, dtype=torch.long, device=queries.device)
    for i in range(0, Q, cols):
        q = queries[i : i + cols]
        best = torch.full((q.shape[0],), float("inf"), device=queries.device)
        arg = torch.zeros(q.shape[0], dtype=torch.long, device=queries.device)
        for j in range(0, M, rows):
            d, k = torch.cdist(q, bank[j : j + rows]).min(dim=1)  # (q, rows) -> (q,), (q,)
            better = d < best
            best = torch.where(better, d, best)
            arg = torch.where(better, k + j, arg)
        out[i : i + cols], where[i : i + cols] = best, arg
    return out, where


def _nearest_graph(
    queries: torch.Tensor, bank: torch.Tensor, rows: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`nearest` as a graph of fixed shape in the bank: every query at once against blocks of ``rows`` bank
    rows (the bank's size is fixed at export, the batch is not), so memory is Q x rows distances per block."""
    best = arg = None
    for j in range(0, bank.shape[0], rows):
        d, k = torch.cdist(queries, bank[j : j + rows]).min(dim=1)  # (Q, rows) -> (Q,), (Q,)
        if best is None:
            best, arg = d, k
        else:
            better = d < best
            best, arg = torch.where(better, d, best), torch.where(better, k + j, arg)
    return best, arg


def nearest_distance(
    queries: torch.Tensor, bank: torch.Tensor, chunk_elements: int = 2**22
) -> torch.Tensor:
    """Distance (Q,) from each query to its nearest bank row (:func:`nearest` without the index)."""
    return nearest(queries, bank, chunk_elements)[0]


def reweighted_score(
    patches: torch.Tensor, dist: torch.Tensor, where: torch.Tensor, bank: torch.Tensor, b: int
) -> torch.Tensor:
    """PatchCore's image score (Eq. 7) per image. ``patches`` (B, N, D), their nearest-bank distances ``dist``
    (B, N) and bank indices ``where`` (B, N). With m_test the patch of largest distance s*, m* its nearest bank
    patch and N_b(m*) the ``b`` bank patches nearest to m* (m* first):
    ``s = (1 - exp|m_test - m*| / sum_{m in N_b(m*)} exp|m_test - m|) * s*`` -> (B,)."""
    B = patches.shape[0]
    rows = torch.arange(B, device=patches.device)
    j = dist.argmax(dim=1)  # (B,) the most anomalous patch of each image
    s_star = dist[rows, j]  # (B,)
    m_test = patches[rows, j]  # (B, D)
    m_star = bank[where[rows, j]]  # (B, D)
    b = min(b, bank.shape[0])
    support = (
        torch.cdist(m_star, bank).topk(b, dim=1, largest=False).indices
    )  # (B, b), m* itself first
    d = torch.cdist(m_test[:, None], bank[support]).squeeze(
        1
    )  # (B, b): |m_test - m| over N_b(m*), m* first
    return (1 - torch.softmax(d, dim=1)[:, 0]) * s_star  # (B,)


class MemoryBank(Method):
    name = "memory_bank"
    Config = MemoryBankConfig
    needs_images = (
        False  # build() reads only teacher features: the engine keeps no images in memory
    )
    trains_by_gradient = False  # the engine calls build() once instead of an optimiser loop
    growing_state = (
        "bank",
    )  # (M, D): M depends on the training data; loading checks dtype and D only
    presets = {
        "cpu": {},
        "paper": paper_recipe("memory_bank"),  # PatchCore's setting
    }

    def __init__(self, teacher, cfg: MemoryBankConfig):
        super().__init__(teacher, cfg)
        by_stride = {lv.stride: lv for lv in teacher.feature_info}
        missing = [s for s in cfg.strides if s not in by_stride]
        if missing:
            raise ValueError(
                f"memory_bank wants teacher levels of strides {tuple(cfg.strides)}; the teacher has "
                f"{sorted(by_stride)}"
            )
        self.levels = [
            by_stride[s].name for s in sorted(cfg.strides)
        ]  # finest first: its grid is the map's
        channels = sum(by_stride[s].channels for s in cfg.strides)
        self.dim = min(cfg.embed_dim, channels) if cfg.embed_dim else channels
        self.register_buffer("bank", torch.zeros(0, self.dim))  # (M, D); filled by build()

    # ---- features --------------------------------------------------------------------------------------
    def embed(self, batch: Batch) -> torch.Tensor:
        """Locally aware patch features (B, D, h, w) on the finest chosen level's grid."""
        feats = self.teacher_features(batch)
        k = self.cfg.neighbourhood
        with torch.autocast(
            batch_device(feats).type, enabled=False
        ):  # full precision: distances decide
            out = []
            for name in self.levels:
                f = feats[name].float()  # (B, C_l, h_l, w_l)
                f = F.avg_pool2d(
                    f,
                    k,
                    stride=1,
                    padding=k // 2,  # zeros: border cells count as 0
                    count_include_pad=self.cfg.border == "zeros",
                )
                if out and f.shape[-2:] != out[0].shape[-2:]:
                    f = F.interpolate(
                        f, size=out[0].shape[-2:], mode="bilinear", align_corners=False
                    )
                out.append(f)
            emb = torch.cat(out, dim=1)  # (B, sum C_l, h, w)
            if (
                emb.shape[1] != self.dim
            ):  # PatchCore's channel reduction: average neighbouring channels
                B, C, h, w = emb.shape
                emb = F.adaptive_avg_pool1d(emb.permute(0, 2, 3, 1).reshape(-1, 1, C), self.dim)
                emb = emb.reshape(B, h, w, self.dim).permute(0, 3, 1, 2)
        return emb

    @staticmethod
    def _patches(emb: torch.Tensor) -> torch.Tensor:
        return emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])  # (B*h*w, D)

    @torch.no_grad()
    def patch_features(self, batch: Batch) -> torch.Tensor:
        """The patch features the bank is built from and queried with: (B * h * w, D), image by image,
        row-major within an image (lessons label them by category)."""
        return self._patches(self.embed(batch))

    # ---- building the bank -----------------------------------------------------------------------------
    @torch.no_grad()
    def build(self, batches) -> dict:
        """All training patches -> greedy coreset -> ``self.bank``. Returns numbers for the training log."""
        patches = [self._patches(self.embed(b)) for b in batches]
        if not patches:
            raise ValueError("memory_bank: no training images to build the bank from")
        x = torch.cat(patches)  # (N, D)
        del patches
        n = max(1, math.ceil(self.cfg.coreset_ratio * x.shape[0]))
        with torch.autocast(x.device.type, enabled=False):
            idx = greedy_coreset(x, n, self.cfg.projection_dim, self.cfg.coreset_seed)
        self.bank = x[idx.to(x.device)].contiguous()
        return {
            "patches": int(x.shape[0]),
            "bank_size": int(n),
            "bank_mib": round(self.bank_mib(), 3),
        }

    def bank_mib(self) -> float:
        return self.bank.numel() * self.bank.element_size() / 2**20

    def load_from_checkpoint(self, state: dict[str, torch.Tensor]) -> None:
        """The bank's length depends on the training data: take the stored shape before loading."""
        if "bank" in state:
            self.bank = torch.empty(
                state["bank"].shape, dtype=self.bank.dtype, device=self.bank.device
            )
        super().load_from_checkpoint(state)

    # ---- the contract ----------------------------------------------------------------------------------
    def loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Nothing is learned by gradient (the engine calls :meth:`build` instead); a constant zero keeps the
        contract for code that asks every method for a loss."""
        return {
            "none": torch.zeros(
                (), device=batch.image.device if batch.image is not None else self.bank.device
            )
        }

    def _search(self, batch: Batch):
        """Patches (B, h*w, D), their nearest-bank distances and indices (B, h*w) and the grid (h, w)."""
        emb = self.embed(batch)  # (B, D, h, w)
        B, D, h, w = emb.shape
        patches = self._patches(emb)  # (B*h*w, D)
        if self.bank.shape[0] == 0:
            warnings.warn(
                "memory_bank: the bank is empty (build it with engine.fit first); returning zero maps",
                RuntimeWarning,
                stacklevel=3,
            )
            zeros = patches.new_zeros(B, h * w)
            return patches.view(B, h * w, D), zeros, zeros.long(), (h, w)
        with torch.autocast(emb.device.type, enabled=False):
            d, k = nearest(patches, self.bank.float(), self.cfg.chunk_elements)  # (B*h*w,) each
        return patches.view(B, h * w, D), d.view(B, h * w), k.view(B, h * w), (h, w)

    def anomaly_maps(self, batch: Batch) -> dict[str, torch.Tensor]:
        _, d, _, (h, w) = self._search(batch)
        return {"nn": d.view(-1, 1, h, w)}  # (B, 1, h, w)

    def score_inputs(self, batch: Batch):
        """The map and, with ``image_score_rule="reweighted"``, PatchCore's Eq. 7 image score as the image term."""
        patches, d, k, (h, w) = self._search(batch)
        maps = {"nn": d.view(-1, 1, h, w)}
        if self.cfg.image_score_rule != "reweighted" or self.bank.shape[0] == 0:
            return maps, {}
        with torch.autocast(d.device.type, enabled=False):
            s = reweighted_score(
                patches.float(), d, k, self.bank.float(), self.cfg.reweight_neighbours
            )
        return maps, {"reweighted": s}

    def combine_rule(self) -> str:
        return "terms"  # only asked when there is a term: the reweighted score alone is the image score


def batch_device(feats: dict[str, torch.Tensor]) -> torch.device:
    return next(iter(feats.values())).device
