"""Feature cache: the frozen teacher runs once per image, not once per epoch.

Methods that only compare against (or reconstruct) teacher features never need the teacher again once those
features are stored -- that is what makes CPU training practical (UniAD trains only its transformer).

An entry is keyed by everything that changes the features: teacher name, weights hash, layers, image
size, normalisation, and the image file's absolute path, size and modification time. Touch or replace a file
and its key changes, so a stale entry is never served. Images are cached **un-augmented**; a method that
augments must run the teacher itself.

Entries live in memory (``root=None``) or on disk as one safetensors file per image
(``root/ab/abcdef....safetensors``), optionally fp16, written to a temporary file and renamed into place
so a killed process never leaves a half-written entry that could be read.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class FeatureCache:
    """Teacher features per image file.

    Args:
        teacher: a :class:`~unistad_edu.teacher.Teacher`.
        image_size: the square input size the features were computed at.
        root: folder for a disk cache; ``None`` keeps entries in memory.
        fp16: store in float16 (half the memory/disk; features come back as float32).
    """

    def __init__(self, teacher, image_size: int, root=None, fp16: bool = False):
        self.teacher = teacher
        self.image_size = int(image_size)
        self.root = Path(root) if root is not None else None
        self.dtype = torch.float16 if fp16 else torch.float32
        self._memory: dict[str, dict[str, torch.Tensor]] = {}
        self.hits = 0
        self.misses = 0
        self.names = list(getattr(teacher, "output_names", teacher.layer_names))  # what forward() returns
        ident = {"teacher": teacher.backbone_name, "weights": teacher.weights_hash, "outputs": self.names,
                 "size": self.image_size, "norm": teacher.normalization, "dtype": str(self.dtype)}
        self._prefix = json.dumps(ident, sort_keys=True)
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)

    # ---- keys -------------------------------------------------------------------------------------------
    def key(self, path) -> str:
        p = Path(path).resolve()
        st = p.stat()
        raw = f"{self._prefix}|{p}|{st.st_size}|{st.st_mtime_ns}"
        return hashlib.sha256(raw.encode()).hexdigest()

    def _file(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.safetensors"

    # ---- storage ----------------------------------------------------------------------------------------
    def _read(self, key: str) -> dict[str, torch.Tensor] | None:
        if self.root is None:
            return self._memory.get(key)
        f = self._file(key)
        if not f.is_file():
            return None
        try:
            entry = load_file(str(f))
        except (SafetensorError, OSError, ValueError):
            f.unlink(missing_ok=True)  # unreadable entry: drop it and recompute
            return None
        if set(entry) != set(self.names):
            f.unlink(missing_ok=True)
            return None
        return entry

    def _has(self, key: str) -> bool:
        return key in self._memory if self.root is None else self._file(key).is_file()

    def _write(self, key: str, entry: dict[str, torch.Tensor]) -> None:
        entry = {k: v.to(self.dtype).contiguous() for k, v in entry.items()}
        if self.root is None:
            self._memory[key] = entry
            return
        f = self._file(key)
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f".{f.name}.{os.getpid()}.tmp")
        save_file(entry, str(tmp))
        os.replace(tmp, f)  # atomic: readers see the old state or the whole new file

    def __len__(self) -> int:
        if self.root is None:
            return len(self._memory)
        return sum(1 for _ in self.root.glob("*/*.safetensors"))

    # ---- the one call methods use ----------------------------------------------------------------------
    @torch.no_grad()
    def features(self, images: torch.Tensor, paths: Sequence[str]) -> dict[str, torch.Tensor]:
        """Teacher features for a batch of un-augmented ``images`` (B, 3, S, S) read from ``paths``.
        Cached entries are served; missing ones are computed in one teacher call and stored."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(f"cache built for {self.image_size}px images, got {tuple(images.shape[-2:])}")
        keys = [self.key(p) for p in paths]
        entries = [self._read(k) for k in keys]
        missing = [i for i, e in enumerate(entries) if e is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = self.teacher(images[missing])
            for j, i in enumerate(missing):
                entry = {name: f[j] for name, f in fresh.items()}
                self._write(keys[i], entry)
                entries[i] = {k: v.to(self.dtype) for k, v in entry.items()}  # serve what a later hit will serve
        device = images.device
        # stack per level: (B, C_l, h_l, w_l), float32
        return {name: torch.stack([e[name] for e in entries]).to(device=device, dtype=torch.float32)
                for name in self.names}

    def stack(self, dataset, batch_size: int = 32, progress: bool = True) -> dict[str, torch.Tensor]:
        """All entries of ``dataset`` stacked per output, in dataset order: {name: (N, ...)} in the cache's
        dtype. Missing entries are computed first. A memory cache then serves its entries as views into the
        stacked tensors, so the features are held once, not twice."""
        self.warm(dataset, batch_size=batch_size, progress=progress)
        keys = [self.key(r.path) for r in dataset.records]
        entries = [self._read(k) for k in keys]
        for i in [i for i, e in enumerate(entries) if e is None]:  # an entry dropped since warm(): recompute it
            sample = dataset[i]
            self.features(sample["image"][None], [sample["path"]])
            entries[i] = self._read(keys[i])
        stacked = {name: torch.stack([e[name] for e in entries]) for name in self.names}
        if self.root is None:
            for i, k in enumerate(keys):
                self._memory[k] = {name: stacked[name][i] for name in self.names}
        return stacked

    def warm(self, dataset, batch_size: int = 32, progress: bool = True) -> None:
        """Compute every missing entry of ``dataset`` once (with a progress bar)."""
        from tqdm.auto import tqdm

        from .data import collate

        todo = [i for i, r in enumerate(dataset.records) if not self._has(self.key(r.path))]
        if not todo:
            return
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, todo), batch_size=batch_size,
                                             shuffle=False, collate_fn=collate)
        for batch in tqdm(loader, desc="caching teacher features", disable=not progress, leave=False):
            self.features(batch["image"], batch["path"])
