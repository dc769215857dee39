"""Writing files so that nothing is lost or half-read: the package's one home for atomic writes, the clean-up
of temporary files a killed process left behind, and the one-writer lock of a folder.

* :func:`atomic_write` -- every file the package writes (checkpoints, configs, metrics, cache entries,
  figures, the precision cache) is written to a temporary name in the same folder, flushed, then moved into
  place with ``os.replace``: a reader sees the old file or the whole new one, never a part.
* Temporary names are ``.<name>.<pid>.<random>.tmp``; :func:`remove_stale_temp_files` deletes those whose
  writing process is gone (or that are a day old), so an interrupted run leaves nothing behind for long, and
  a file another live process is still writing is never touched.
* :func:`folder_lock` -- one writer per folder (``fcntl.flock`` on ``.lock``; released by the kernel when
  the process ends, so a killed run never leaves a stale lock). A second writer gets :class:`FolderBusy`
  naming the process that holds it.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import numbers
import os
import re
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, Mapping

_TMP = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")
STALE_AFTER_S = 24 * 3600  # a temp file this old is stale whatever its pid says (pids are reused)
LOCK_NAME = ".lock"


def cache_root() -> Path:
    """The package's cache folder: ``$UNISTAD_CACHE``, else ``~/.cache/unistad_edu``."""
    return Path(
        os.environ.get("UNISTAD_CACHE") or Path.home() / ".cache" / "unistad_edu"
    ).expanduser()


def temp_path(path: Path) -> Path:
    """The temporary name a write of ``path`` uses (same folder, so ``os.replace`` is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write(path, write: Callable[[Path], None], fsync: bool = True) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file beside it, which then replaces
    ``path`` in one step. The temporary file is removed if ``write`` fails. The folder is created.

    Only a regular file (or nothing) is replaced: a symbolic link there (``--json /dev/stdout``, a link into
    another folder) or a device, pipe or folder is refused (:class:`NotAFileError`) before anything is written,
    so neither the link nor what it points to is touched."""
    path = Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class BadJSONFile(ValueError):
    """A JSON file the package reads is unreadable or not the object it should be; the message names it."""


def read_json_object(path, what: str, fix: str) -> dict:
    """The JSON object in ``path`` (``what`` it should be, e.g. "a leaderboard file"), or :class:`BadJSONFile`
    naming the file, what is wrong and ``fix`` (what to do)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadJSONFile(f"{path} cannot be read as {what} ({err}): {fix}") from err
    if not isinstance(data, dict):
        raise BadJSONFile(
            f"{path} holds a JSON {type(data).__name__}, not {what} (a JSON object): {fix}"
        )
    return data


class NotAFileError(ValueError):
    """A path to be written holds a symbolic link, a device, a pipe or a folder; the message names it."""


def check_replaceable(path) -> None:
    """Refuse (:class:`NotAFileError`) writing over ``path`` unless it is a regular file or absent."""
    path = Path(path)
    if path.is_symlink():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise NotAFileError(
            f"{path} is a symbolic link (to {target}): nothing is written through a link; name "
            f"the file itself, or remove the link"
        )
    if path.exists() and not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a device, pipe or socket)"
        raise NotAFileError(f"{path} is {kind}: name a file to write")


def atomic_write_text(path, text: str, fsync: bool = True) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), fsync=fsync)


def pid_alive(pid: int) -> bool:
    """True if a process with this pid runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: exists, owned by someone else; anything else: assume it runs
        return True
    return True


def sha256_file(path, on_block: Callable[[int], object] | None = None) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MiB blocks; ``on_block(n)`` after each (a progress bar)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            if on_block is not None:
                on_block(len(block))
    return h.hexdigest()


def remove_stale_temp_files(folder, recursive: bool = False) -> int:
    """Delete temporary files (``.<name>.<pid>.<random>.tmp``) in ``folder`` whose writer is no longer
    running or that are older than a day; returns how many were removed. Others' live writes are kept."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed, now = 0, time.time()
    for p in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        m = _TMP.match(p.name)
        if not m:
            continue
        try:
            old = now - p.stat().st_mtime > STALE_AFTER_S
        except OSError:
            continue
        if old or not pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                p.unlink()
                removed += 1
    return removed


class FolderBusy(RuntimeError):
    """Another process holds the folder's writer lock; ``str(err)`` names it."""


@contextlib.contextmanager
def folder_lock(folder, what: str = "folder") -> Iterator[Path]:
    """Hold ``folder``'s one-writer lock while the block runs (the folder is created). Raises
    :class:`FolderBusy` at once if another process holds it, naming that process (pid, host, command, since).
    The lock file ``.lock`` is removed when the block ends, so a finished folder holds only its own files."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            who = (
                f"process {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"
                f" ({holder.get('command', '?')})"
            )
            raise FolderBusy(
                f"{what} {folder} is being written by another {who}: wait for it to finish, stop "
                f"it, or choose another folder"
            ) from None
        try:  # the holder before us may have removed the file between our open and our lock: then again
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:300],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield folder
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still holding it: a waiting process then finds no file, or a new one
        os.close(
            fd
        )  # releases the lock (when the process is killed the kernel closes it; the file stays, unlocked)


# ---- folders built whole ---------------------------------------------------------------------------------------
_BUILD = re.compile(r"^\..+\.build-(\d+)-[0-9a-f]{8}$")


@contextlib.contextmanager
def staging_folder(dest) -> Iterator[Path]:
    """An empty folder beside ``dest`` to build it in (``.<name>.build-<pid>-<random>``), deleted when the
    block ends unless :func:`install_folder` moved it into place. Staging folders left by processes that no
    longer run are deleted first."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{glob.escape(dest.name)}.build-*"):
        m = _BUILD.match(stale.name)
        if m and not pid_alive(int(m.group(1))):
            shutil.rmtree(stale, ignore_errors=True)
    stage = dest.parent / f".{dest.name}.build-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # nothing left once installed


def install_folder(stage, dest, replace: Callable[[Path], bool] | None = None) -> bool:
    """Move the finished folder ``stage`` to ``dest`` in one rename; returns whether it was installed. When
    ``dest`` exists (or appears meanwhile: another process built it), ``replace(dest)`` decides -- True: the old
    folder is renamed aside, the new one moved in, then the old one deleted, so a reader sees the old folder or
    the new one, never a mix; False: the existing ``dest`` is kept; it may raise to refuse. ``replace`` None
    keeps an existing ``dest``."""
    stage, dest = Path(stage), Path(dest)
    for _ in range(
        2
    ):  # a second try only if another process put its folder in place after the check
        if dest.exists() or dest.is_symlink():
            if replace is None or not replace(dest):
                return False
            old = dest.parent / f".{dest.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(dest, old)
            os.replace(stage, dest)
            old.unlink() if old.is_symlink() else shutil.rmtree(old, ignore_errors=True)
            return True
        try:
            os.replace(stage, dest)
            return True
        except OSError:
            if not dest.exists():
                raise
    return False


# ---- JSON without NaN ----------------------------------------------------------------------------------------
def json_safe(obj, flags: bool = True):
    """``obj`` made JSON-safe without NaN/inf: dict keys become strings, tensors and arrays lists, numpy
    scalars Python numbers, and a non-finite float becomes ``None``. With ``flags`` a sibling entry in its dict
    says what it was: ``{"threshold": nan}`` -> ``{"threshold": None, "threshold_nonfinite": "nan"}``
    (``"inf"`` / ``"-inf"``); a list holding non-finite floats gets a parallel flag list (``None`` where the
    value was finite). The result always passes ``json.dumps(..., allow_nan=False)`` (if its leaves are JSON
    types)."""
    return _safe(obj, flags)[0]


def dumps_json(obj, flags: bool = True, **kwargs) -> str:
    """``json.dumps`` of :func:`json_safe` (obj) with ``allow_nan=False``: never writes NaN/Infinity."""
    return json.dumps(json_safe(obj, flags), allow_nan=False, **kwargs)


def _nonfinite_name(x: float) -> str:
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _safe(x, flags: bool):
    """(safe value, flag or None) -- the flag says which non-finite value(s) the safe value replaced."""
    if isinstance(x, Mapping):
        out = {}
        for k, v in x.items():
            value, flag = _safe(v, flags)
            out[str(k)] = value
            if flag is not None and flags:
                out[f"{k}_nonfinite"] = flag
        return out, None
    if not isinstance(x, (str, bytes, numbers.Number, list, tuple)) and hasattr(x, "tolist"):
        x = x.tolist()  # a torch tensor or numpy array (a numpy scalar becomes a Python number)
    if isinstance(x, (list, tuple)):
        pairs = [_safe(v, flags) for v in x]
        marks = [m for _, m in pairs]
        return [v for v, _ in pairs], (marks if any(m is not None for m in marks) else None)
    if isinstance(x, bool) or type(x).__name__ == "bool_":
        return bool(x), None
    if isinstance(x, numbers.Integral):
        return int(x), None
    if isinstance(x, numbers.Real):
        x = float(x)
        return (x, None) if math.isfinite(x) else (None, _nonfinite_name(x))
    return x, None
