"""Feature cache: the frozen teacher runs once per image, not once per epoch.

Methods that only compare against (or reconstruct) teacher features never need the teacher again once those
features are stored -- that is what makes CPU training practical (UniAD trains only its transformer).

An entry is keyed by everything that changes the features: teacher name, weights hash, outputs, image size,
normalisation, the storage dtype, the teacher's **resolved precision** on the device the features are computed
on (bf16 features differ from fp32 ones), and a **hash of the image file's bytes** (BLAKE2b). A different
image always gets a different key, even with the old one's size and modification time (as ``cp -p``,
``rsync -a`` or re-extracting an archive leave it); touching a file without changing its bytes keeps its
entry. The same bytes under two paths share one entry. Images are cached **un-augmented**; a method that
augments must run the teacher itself.

Hashing reads every file once per process: the digest is remembered per (path, file system, inode, size, mtime,
ctime) -- ``cp -p`` keeps the mtime but not the ctime, which only the kernel sets -- and is not remembered for
a file changed within the last :data:`RACY_NS` (a second change in the same timestamp tick would look
unchanged; git calls this the "racy" case).

Every entry read from memory or disk is checked before it is served: exactly the teacher's output names, each
of the shape the teacher gives one image (``(C, ceil(S / stride), ceil(S / stride))`` per level from
``feature_info``, ``(C,)`` for ``"cls"``; checked against a real teacher output) and of the cache's dtype. A
bad entry is dropped (its file deleted) and recomputed, never served.

Entries live in memory (``root=None``) or on disk as one safetensors file per image
(``root/ab/abcdef....safetensors``), optionally fp16, written to a temporary file and renamed into place
so a killed process never leaves a half-written entry that could be read. A disk entry carries what made it
(teacher, weights, precision, the image's content hash: the text its key is the SHA-256 of) and a keyed
BLAKE2b signature of that text and its tensors, made with a secret only this user can read
(:func:`cache_secret`). An entry planted in a shared cache, copied under another image's key or written by
an older version has no valid signature: it is not served, but recomputed, and said once per cache.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .files import atomic_write, remove_stale_temp_files

RACY_NS = 100_000_000  # a file changed less than 0.1 s ago is re-hashed on every lookup (timestamp granularity)
COARSE_RACY_NS = (
    2_000_000_000  # ... 2 s on a file system with whole-second timestamps (FAT, ext3, some NFS)
)
_CHUNK = 1 << 20


def content_hash(path) -> str:
    """BLAKE2b-256 of the bytes of the file at ``path`` (hex)."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


ENTRY_FORMAT = "unistad-edu features v2"  # v1 entries (no signature) are recomputed once


def cache_secret() -> bytes:
    """This user's 32-byte key for signing cache entries: ``$UNISTAD_CACHE_SECRET`` (a file), else
    ``~/.config/unistad_edu/cache-secret``, created once with permissions 0600 -- outside the cache folder, so a
    cache shared with others does not share its key. If it cannot be written, a key for this process only."""
    global _SECRET
    if _SECRET is not None:
        return _SECRET
    path = Path(
        os.environ.get("UNISTAD_CACHE_SECRET")
        or Path.home() / ".config" / "unistad_edu" / "cache-secret"
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(32))
        secret = path.read_bytes()
        if len(secret) != 32:
            raise OSError(f"{path} does not hold 32 bytes")
    except OSError:
        secret = os.urandom(32)  # entries written by this process only are trusted
    _SECRET = secret
    return secret


_SECRET: bytes | None = None


def entry_signature(made_from: str, entry: dict[str, torch.Tensor]) -> str:
    """The keyed BLAKE2b-256 of an entry: what made it, and every tensor's name, dtype, shape and bytes."""
    h = hashlib.blake2b(key=cache_secret(), digest_size=32)
    h.update(made_from.encode())
    for name in sorted(entry):
        t = entry[name].contiguous()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()


def _signature(st: os.stat_result) -> tuple[int, ...]:
    """What changes whenever a file's bytes may have: ctime cannot be set from user space (``cp -p``,
    ``rsync -a``, ``tar`` restore the mtime but the kernel sets the ctime), a replaced file has a new inode."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _racy(st: os.stat_result) -> bool:
    """Changed so recently that another change within the same timestamp tick would leave the same stat."""
    window = COARSE_RACY_NS if st.st_ctime_ns % 1_000_000_000 == 0 else RACY_NS
    return time.time_ns() - st.st_ctime_ns < window


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
        self._digests: dict[
            str, tuple[tuple[int, ...], str]
        ] = {}  # resolved path -> (stat signature, hash)
        self.hits = 0
        self.misses = 0
        self.rejected = (
            0  # entries found but not served (unreadable, unsigned, wrong names, shapes or dtype)
        )
        self.unsigned = (
            0  # of those: entries without a valid signature (not written by this user's cache)
        )
        self.names = list(
            getattr(teacher, "output_names", teacher.layer_names)
        )  # what forward() returns
        ident = {
            "teacher": teacher.backbone_name,
            "weights": teacher.weights_hash,
            "outputs": self.names,
            "size": self.image_size,
            "norm": teacher.normalization,
            "dtype": str(self.dtype),
            "content": "blake2b-256",
        }
        self._prefix = json.dumps(ident, sort_keys=True)
        self._shapes = (
            self._shapes_from_feature_info()
        )  # {name: per-image shape}, None if not derivable
        self._shapes_seen = False  # True once confirmed by (or taken from) a real teacher output
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files(
                self.root, recursive=True
            )  # entries a killed process never finished

    # ---- keys -------------------------------------------------------------------------------------------
    def digest(self, path) -> str:
        """The content hash of the file at ``path``; re-read only when its stat signature changed (or the file
        changed too recently for the signature to be trusted)."""
        p = Path(path).resolve()
        st = p.stat()
        sig = _signature(st)
        known = self._digests.get(str(p))
        if known is not None and known[0] == sig:
            return known[1]
        value = content_hash(p)
        after = p.stat()
        if _signature(after) == sig and not _racy(
            after
        ):  # unchanged while read, and not in the racy window
            self._digests[str(p)] = (sig, value)
        else:
            self._digests.pop(str(p), None)
        return value

    def precision_name(self, device=None) -> str:
        """The teacher's resolved precision on ``device`` (default CPU) at this cache's image size."""
        resolve = getattr(self.teacher, "precision_for", None)
        if (
            resolve is None
        ):  # a teacher-like object without precision handling runs in its own dtype
            return str(getattr(self.teacher, "precision", "fp32"))
        return resolve(
            torch.device("cpu") if device is None else torch.device(device), self.image_size
        ).name

    def made_from(self, path, device=None) -> str:
        """What an entry of the image file ``path`` is made from on ``device`` (default CPU): the teacher's
        identity, its resolved precision and the file's content hash, as one text."""
        return f"{self._prefix}|{self.precision_name(device)}|{self.digest(path)}"

    def key(self, path, device=None) -> str:
        """The entry key of the image file ``path`` for features computed on ``device``: SHA-256 of
        :meth:`made_from`."""
        return hashlib.sha256(self.made_from(path, device).encode()).hexdigest()

    def _file(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.safetensors"

    # ---- what an entry must look like -------------------------------------------------------------------
    def _shapes_from_feature_info(self) -> dict[str, tuple[int, ...]] | None:
        levels = getattr(self.teacher, "feature_info", None)
        if levels is None:
            return None
        s = self.image_size
        shapes = {
            lv.name: (int(lv.channels), math.ceil(s / lv.stride), math.ceil(s / lv.stride))
            for lv in levels
        }
        if "cls" in self.names and levels:
            shapes["cls"] = (int(getattr(self.teacher, "embedding_dim", levels[-1].channels)),)
        return (
            {name: shapes[name] for name in self.names} if set(self.names) <= set(shapes) else None
        )

    def _learn_shapes(self, fresh: dict[str, torch.Tensor]) -> None:
        """Take the per-image shapes from a real teacher output (batched ``fresh``); the teacher is the
        authority where ``feature_info`` arithmetic and the backbone disagree."""
        self._shapes = {name: tuple(fresh[name].shape[1:]) for name in self.names}
        self._shapes_seen = True

    @torch.no_grad()
    def _check_shapes_with_teacher(self) -> None:
        """Run the teacher once on a blank image to confirm the expected shapes (only when an entry disagrees
        with them before any features were computed in this process)."""
        try:
            device = next(self.teacher.buffers()).device
        except (AttributeError, StopIteration):
            device = torch.device("cpu")
        self._learn_shapes(
            self.teacher(torch.zeros(1, 3, self.image_size, self.image_size, device=device))
        )

    CHUNK = 8  # the teacher always sees batches of this size (see _teacher_in_chunks)

    def _teacher_in_chunks(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The teacher's features of ``images`` (B, 3, S, S), computed in batches of exactly :attr:`CHUNK`
        images (the last one padded with copies of its final image). Convolution kernels pick their algorithm
        by batch size, so the same image could otherwise get features that differ in the last bits depending
        on how many images it was cached with -- and an in-memory store, a streamed epoch and a resumed run
        would then not train identically. With a fixed batch shape an image's features do not depend on its
        neighbours."""
        n = images.shape[0]
        parts: dict[str, list[torch.Tensor]] = {}
        for i in range(0, n, self.CHUNK):
            chunk = images[i : i + self.CHUNK]
            k = chunk.shape[0]
            if (
                k < self.CHUNK
            ):  # (CHUNK, 3, S, S): pad with the last image, drop its copies afterwards
                chunk = torch.cat([chunk, chunk[-1:].expand(self.CHUNK - k, *chunk.shape[1:])])
            for name, f in self.teacher(chunk).items():
                parts.setdefault(name, []).append(f[:k])
        return {name: torch.cat(fs) for name, fs in parts.items()}

    def _problem(self, entry: dict) -> str | None:
        """Why ``entry`` must not be served, or None."""
        if set(entry) != set(self.names):
            return f"outputs {sorted(entry)} instead of {sorted(self.names)}"
        for name in self.names:
            t = entry[name]
            if not isinstance(t, torch.Tensor):
                return f"{name} is not a tensor"
            if t.dtype != self.dtype:
                return f"{name} is {t.dtype}, not {self.dtype}"
            if self._shapes is not None and tuple(t.shape) != self._shapes[name]:
                return f"{name} has shape {tuple(t.shape)}, not {self._shapes[name]}"
        return None

    def valid(self, entry: dict) -> bool:
        """True if ``entry`` has exactly the expected outputs, shapes and dtype."""
        if self._shapes is None and not self._shapes_seen:
            self._check_shapes_with_teacher()
        if self._problem(entry) is None:
            return True
        if (
            not self._shapes_seen
        ):  # maybe feature_info arithmetic is off for this backbone: ask the teacher
            self._check_shapes_with_teacher()
            return self._problem(entry) is None
        return False

    # ---- storage ----------------------------------------------------------------------------------------
    def _read(self, key: str) -> dict[str, torch.Tensor] | None:
        """The entry under ``key`` if present and valid; a bad one is dropped (file deleted) and None returned."""
        if self.root is None:
            entry = self._memory.get(key)
            if entry is None:
                return None
            if not self.valid(entry):
                self.rejected += 1
                self._memory.pop(key, None)
                return None
            return entry
        f = self._file(key)
        if not f.is_file():
            return None
        try:
            with safe_open(str(f), framework="pt") as st:
                meta = st.metadata() or {}
                entry = {name: st.get_tensor(name) for name in st.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError):
            meta, entry = {}, None  # unreadable entry: drop it and recompute
        if entry is not None and not self._signed(key, meta, entry):
            self.unsigned += 1
            if self.unsigned == 1:
                warnings.warn(
                    f"feature cache {self.root}: an entry this user's cache did not write (no valid "
                    f"signature: planted, copied under another image's key, or from an older "
                    f"version) was not used, its features recomputed; the count is in "
                    f"`FeatureCache.unsigned`. (Said once per cache.)",
                    stacklevel=3,
                )
            entry = None
        if entry is None or not self.valid(entry):
            self.rejected += 1
            f.unlink(missing_ok=True)
            return None
        return entry

    @staticmethod
    def _signed(key: str, meta: dict, entry: dict[str, torch.Tensor]) -> bool:
        """True if ``meta`` says what made the entry, that text hashes to ``key``, and the signature matches."""
        made_from, sig = meta.get("made_from", ""), meta.get("signature", "")
        if (
            meta.get("format") != ENTRY_FORMAT
            or hashlib.sha256(made_from.encode()).hexdigest() != key
        ):
            return False
        return hmac.compare_digest(sig, entry_signature(made_from, entry))

    def _has(self, key: str) -> bool:
        return key in self._memory if self.root is None else self._file(key).is_file()

    def _write(self, key: str, entry: dict[str, torch.Tensor], made_from: str = "") -> None:
        entry = {k: v.to(self.dtype).contiguous() for k, v in entry.items()}
        if self.root is None:
            self._memory[key] = entry
            return
        meta = {
            "format": ENTRY_FORMAT,
            "made_from": made_from,
            "signature": entry_signature(made_from, entry),
        }
        # atomic: readers see the old state or the whole new file (no fsync: an entry can be recomputed)
        atomic_write(
            self._file(key), lambda tmp: save_file(entry, str(tmp), metadata=meta), fsync=False
        )

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
            raise ValueError(
                f"cache built for {self.image_size}px images, got {tuple(images.shape[-2:])}"
            )
        device = images.device
        made = [self.made_from(p, device) for p in paths]
        keys = [hashlib.sha256(m.encode()).hexdigest() for m in made]
        entries = [self._read(k) for k in keys]
        missing = [i for i, e in enumerate(entries) if e is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = self._teacher_in_chunks(images[missing])
            if set(fresh) != set(self.names):
                raise RuntimeError(
                    f"the teacher returned {sorted(fresh)}, the cache expects {sorted(self.names)}"
                )
            self._learn_shapes(
                fresh
            )  # what the teacher really returns is what later reads are checked against
            for j, i in enumerate(missing):
                entry = {name: f[j] for name, f in fresh.items()}
                self._write(keys[i], entry, made[i])
                entries[i] = {
                    k: v.to(self.dtype) for k, v in entry.items()
                }  # serve what a later hit will serve
        # stack per level: (B, C_l, h_l, w_l), float32
        return {
            name: torch.stack([e[name] for e in entries]).to(device=device, dtype=torch.float32)
            for name in self.names
        }

    def stack(
        self, dataset, batch_size: int = 32, progress: bool = True
    ) -> dict[str, torch.Tensor]:
        """All entries of ``dataset`` stacked per output, in dataset order: {name: (N, ...)} in the cache's
        dtype. Missing entries are computed first. A memory cache then serves its entries as views into the
        stacked tensors, so the features are held once, not twice."""
        self.warm(dataset, batch_size=batch_size, progress=progress)
        keys = [self.key(r.path) for r in dataset.records]
        entries = [self._read(k) for k in keys]
        for i in [
            i for i, e in enumerate(entries) if e is None
        ]:  # an entry dropped since warm(): recompute it
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
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, todo),
            batch_size=batch_size,
            shuffle=False,
            collate_fn=collate,
        )
        for batch in tqdm(
            loader, desc="caching teacher features", disable=not progress, leave=False
        ):
            self.features(batch["image"], batch["path"])
