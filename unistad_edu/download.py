"""Download MVTec AD and VisA for users who are online, verified, resumable and atomic, in MVTec layout.

Nothing here runs on import and nothing in the package needs it: training works offline on the synthetic set
or on any MVTec-layout folder. This module only *fetches* the two public benchmarks::

    python -m unistad_edu data mvtec --out data/mvtec [--categories bottle,cable]
    python -m unistad_edu data visa  --out data/visa  [--categories candle,pcb1]

Design, one step per function:

1. **Where from** -- :data:`MVTEC_FULL`, :data:`MVTEC_CATEGORIES` and :data:`VISA` are the one table of
   archive links. MVTec moves its links from time to time (the current ones are on
   https://www.mvtec.com/company/research/datasets/mvtec-ad); ``--url`` replaces a stale one and ``--sha256``
   gives its checksum. Checksums are only those published/recorded for the exact archive (the full MVTec
   AD archive and the VisA tar); none is made up. An archive with no known checksum is checked against the
   one recorded in ``OUT/DOWNLOADS.json`` by an earlier download of the same link, if any; otherwise its
   SHA-256 is recorded there on first success ("trust on first use") and the message says so.
2. **Fetch** (:func:`download_file`) -- ``urllib.request`` only. Bytes go to ``OUT/.downloads/NAME.part``;
   a later run (or an automatic retry) continues it with ``Range: bytes=N-``. A server answering ``206``
   appends; one that ignores the range (``200``) restarts from zero; ``416`` means the part is already
   whole. A connection that ends early is an interruption, never a finished file. Free space is checked
   before (download + unpacking) and a full disk mid-write says how much is needed.
3. **Verify** -- SHA-256 of the finished file; on mismatch the file is deleted and the error says what to do.
4. **Unpack** (:func:`safe_extract`) -- member by member into a staging folder ``OUT/.staging-PID``,
   refusing absolute paths, ``..``, links that lead outside, devices and FIFOs (path traversal), and never
   writing through a link.
5. **Convert** -- MVTec AD already has the layout. VisA (:func:`convert_visa`) follows its official
   ``split_csv/1cls.csv``: ``train/good``, ``test/good``, ``test/bad`` and ``ground_truth/bad/<stem>_mask.png``
   with masks binarised (VisA stores class ids, not 0/255).
6. **Install** -- each category folder appears with one ``os.replace`` from the staging folder (same file
   system), so ``OUT/<category>`` is either complete or absent; ``OUT/DOWNLOADS.json`` (written atomically)
   records link, checksum and licence. On any error the staging folder is removed; only a resumable
   ``.part`` is kept, and ``OUT`` itself is removed again if this run created it and it is empty.

Categories already present in ``OUT`` are skipped (``--force`` replaces them -- only folders a download
installed, i.e. recorded in ``OUT/DOWNLOADS.json``; a user's folder or a file of that name is refused, never
deleted), so re-running a finished command does nothing. Errors are :class:`DownloadError` (a
:class:`~unistad_edu.data.DataError`), whose message names the problem and the fix; the CLI prints it without a
traceback.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import errno
import http.client
import json
import lzma
import os
import posixpath
import re
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from . import ownership
from .data import DataError
from .files import BadJSONFile, install_folder, pid_alive, read_json_object
from .files import sha256_file as _sha256

CHUNK = 1 << 20  # bytes per read/write
MANIFEST_NAME = "DOWNLOADS.json"
DOWNLOADS_DIR = ".downloads"
STAGING_PREFIX = ".staging-"
USER_AGENT = "unistad-edu dataset downloader (python urllib)"


class DownloadError(DataError):
    """A download, check or unpacking step failed; the message says what happened and what to do."""


class UnsafeArchiveError(DownloadError):
    """An archive member would be written outside the target folder (path traversal) or is not a plain file."""


class DiskFullError(DownloadError):
    """The disk filled up; what was downloaded so far is kept."""


class _Interrupted(Exception):
    """The connection ended before the whole file arrived (the ``.part`` file is kept for resuming)."""


# --------------------------------------------------------------------------------------------------------
# the table of archives
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Archive:
    """One downloadable archive: where it is, what it must hash to (if known) and who publishes it."""

    name: str  # file name under OUT/.downloads
    url: str
    sha256: (
        str | None
    )  # published / independently recorded SHA-256, or None (recorded on first download)
    size: int | None  # bytes, when known (space checks before the server answers)
    page: str  # where a person finds the current link and the licence
    license: str
    checksum_source: str = "published"


MVTEC_PAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
MVTEC_LICENSE = "CC BY-NC-SA 4.0 (non-commercial use only), MVTec Software GmbH"
_MYDRIVE = "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"

#: The whole MVTec AD archive (15 categories, ~5.3 GB): the link and SHA-256 used by anomalib and others.
MVTEC_FULL = Archive(
    "mvtec_anomaly_detection.tar.xz",
    "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f283/download/420938113-1629960298/"
    "mvtec_anomaly_detection.tar.xz",
    "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
    5_264_982_680,
    MVTEC_PAGE,
    MVTEC_LICENSE,
)

_MVTEC_CATEGORY_IDS = {  # the per-category links MVTec published (2021); no checksums were published for them
    "bottle": "420937370-1629951468",
    "cable": "420937413-1629951498",
    "capsule": "420937454-1629951595",
    "carpet": "420937484-1629951672",
    "grid": "420937487-1629951814",
    "hazelnut": "420937545-1629951845",
    "leather": "420937607-1629951964",
    "metal_nut": "420937637-1629952063",
    "screw": "420938130-1629953152",
    "tile": "420938133-1629953189",
    "toothbrush": "420938134-1629953256",
    "transistor": "420938166-1629953277",
    "wood": "420938383-1629953354",
    "zipper": "420938385-1629953449",
}
#: One archive per MVTec AD category (smaller downloads; checksum recorded on first download).
MVTEC_CATEGORIES: dict[str, Archive] = {
    c: Archive(f"{c}.tar.xz", f"{_MYDRIVE}{i}/{c}.tar.xz", None, None, MVTEC_PAGE, MVTEC_LICENSE)
    for c, i in _MVTEC_CATEGORY_IDS.items()
}
MVTEC_CATEGORIES["pill"] = Archive(  # published under another share
    "pill.tar.xz",
    "https://www.mydrive.ch/shares/43421/11a215a5749fcfb75e331ddd5f8e43ee/download/"
    "420938129-1629953099/pill.tar.xz",
    None,
    None,
    MVTEC_PAGE,
    MVTEC_LICENSE,
)
MVTEC_CATEGORIES = dict(sorted(MVTEC_CATEGORIES.items()))

VISA_PAGE = "https://github.com/amazon-science/spot-diff"
VISA_LICENSE = "CC BY 4.0, Amazon"
#: The single VisA tar on Amazon's public S3 bucket (1.9 GB) and its SHA-256.
VISA = Archive(
    "VisA_20220922.tar",
    "https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
    "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
    1_929_840_640,
    VISA_PAGE,
    VISA_LICENSE,
)
#: The official one-class split, used only if the tar does not contain ``split_csv/1cls.csv``.
VISA_SPLIT_URL = (
    "https://raw.githubusercontent.com/amazon-science/spot-diff/"
    "2a692ab575001cbde74d402d897a7286086c6199/split_csv/1cls.csv"
)
VISA_CATEGORIES = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)
VISA_DEFECT = (
    "bad"  # VisA's 1cls split has one anomaly label; the spot-diff conversion names it "bad"
)


# --------------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------------
def _say(msg: str) -> None:
    print(msg, flush=True)


def human(n: float | None) -> str:
    """Bytes for people: 1536 -> '1.5 KB', None -> 'an unknown amount'."""
    if n is None:
        return "an unknown amount"
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def _bar(total=None, initial=0, desc="", unit="B", enabled=True):
    from tqdm.auto import tqdm

    scale = unit == "B"
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        unit_scale=scale,
        unit_divisor=1024 if scale else 1000,
        disable=not enabled,
        leave=False,
    )


def sha256_file(path, progress: bool = False) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    path = Path(path)
    with _bar(path.stat().st_size, desc=f"verifying {path.name}", enabled=progress) as bar:
        return _sha256(path, on_block=bar.update)


def _check_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise DownloadError(f"--sha256 {value!r} is not a SHA-256 checksum (64 hexadecimal digits)")
    return value


def _free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def _ensure_space(folder: Path, need: int | None, what: str) -> None:
    """Refuse early when ``folder``'s disk has less than ``need`` bytes free."""
    if not need:
        return
    free = _free_bytes(folder)
    if free < need:
        raise DownloadError(
            f"not enough disk space in {folder}: {what} needs about {human(need)}, but only "
            f"{human(free)} is free. Free {human(need - free)} or choose another --out."
        )


def _disk_full(
    folder: Path, need: int | None, what: str, err: OSError, at_least: bool = False
) -> DiskFullError:
    amount = (
        "more"
        if need is None
        else f"at least {human(need)}"
        if at_least
        else f"about {human(need)}"
    )
    return DiskFullError(
        f"the disk is full ({err.strerror}) while {what} in {folder}: this step needs {amount} "
        f"of free space, {human(_free_bytes(folder))} is free now. Free some space or choose "
        f"another --out, then run the same command again (finished downloads are kept)."
    )


# --------------------------------------------------------------------------------------------------------
# fetching: resume, verify, clear errors
# --------------------------------------------------------------------------------------------------------
def _http_error(url: str, err: urllib.error.HTTPError, page: str | None) -> DownloadError:
    where = (
        f" open {page}, copy the current link and pass it with --url (and --sha256 if one is given)."
        if page
        else " check the link."
    )
    if err.code in (404, 410):
        return DownloadError(
            f"HTTP {err.code} {err.reason}: {url} does not exist (any more). Dataset hosts move "
            f"their download links from time to time:{where}"
        )
    if err.code in (401, 403):
        return DownloadError(
            f"HTTP {err.code} {err.reason}: access to {url} was refused; the link may have "
            f"expired or need the licence accepted on the dataset's page:{where}"
        )
    if err.code >= 500:
        return DownloadError(
            f"HTTP {err.code} {err.reason} from the server of {url}: a problem on their side; "
            f"try again later (the partial download, if any, is kept and will be resumed)."
        )
    return DownloadError(f"HTTP {err.code} {err.reason} for {url}:{where}")


def _network_error(url: str, err: BaseException) -> DownloadError:
    reason = getattr(err, "reason", err)
    host = urllib.request.urlparse(url).netloc
    offline = (
        "If this machine is offline, copy the dataset from one that is online, or train on the "
        "synthetic set: python -m unistad_edu data synthetic --out DIR"
    )
    if isinstance(reason, ConnectionRefusedError):
        what = (
            f"connection refused by {host}: nothing accepts connections there (wrong host or port, or a "
            f"firewall/proxy in the way)."
        )
    elif isinstance(reason, socket.gaierror):
        what = (
            f"cannot resolve the host name {host!r}: no network connection, or DNS does not work "
            f"(behind a proxy? set HTTPS_PROXY)."
        )
    elif isinstance(reason, (TimeoutError, socket.timeout)):
        what = f"{host} did not answer in time (slow or no network); run the command again."
    else:
        what = f"cannot reach {host}: {reason}."
    return DownloadError(f"{what} {offline}")


def _content_range(headers) -> tuple[int | None, int | None]:
    """'bytes 100-199/1000' -> (100, 1000); 'bytes */1000' -> (None, 1000)."""
    m = re.match(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", headers.get("Content-Range", "") or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _open(url: str, start: int, timeout: float, page: str | None):
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:
            return err  # the caller decides: the part may already be whole
        raise _http_error(url, err, page) from None
    except urllib.error.URLError as err:
        raise _network_error(url, err) from None
    except (OSError, http.client.HTTPException) as err:
        raise _network_error(url, err) from None


@dataclass(frozen=True)
class Transfer:
    """How the bytes are fetched: progress bars, retries after an interrupted connection (``Range`` resume,
    ``retry_wait`` s apart), seconds without data before giving up."""

    progress: bool = True
    retries: int = 3
    timeout: float = 60.0
    retry_wait: float = 5.0


@dataclass(frozen=True)
class _FetchOptions:
    """How each request of one download behaves (passed unchanged to every retry and restart)."""

    timeout: float
    progress: bool
    page: str | None  # the dataset's page, named in error messages
    expect_size: int | None  # used for the free-space check when the server does not say
    unpack_factor: float


def _refuse_web_page(resp, url: str, page: str | None) -> None:
    """Raise :class:`DownloadError` when the server sent an HTML page instead of the file."""
    if "text/html" in (resp.headers.get("Content-Type") or "").lower():
        raise DownloadError(
            f"{url} returned a web page instead of the archive: the link has probably expired "
            f"or needs a licence click-through. Open {page or 'the dataset page'}, copy the "
            f"current direct link and pass it with --url."
        )


def _write_plan(resp, url: str, part: Path, have: int) -> tuple[str, int, int | None] | None:
    """How to write ``resp`` into ``part``: (file mode, bytes kept, total size if the server says).

    None when a ``206`` answer starts elsewhere than at the end of ``part`` (start over cleanly).
    """
    if have and resp.status == 206:
        start, total = _content_range(resp.headers)
        if start != have:  # the server sent some other range: restart cleanly
            return None
        return "ab", have, total
    # 200: the whole file (fresh start, or a server that ignores Range)
    if have:
        _say(f"the server of {url} does not resume downloads: starting {part.name} again from zero")
    length = resp.headers.get("Content-Length")
    return "wb", 0, int(length) if length and length.isdigit() else None


def _fetch_once(url: str, part: Path, opts: _FetchOptions) -> None:
    """One request: continue ``part`` (or start it) until the server's file is complete.

    Raises :class:`_Interrupted` when the connection ends early (``part`` then holds what arrived).
    """
    have = part.stat().st_size if part.exists() else 0
    resp = _open(url, have, opts.timeout, opts.page)
    if isinstance(resp, urllib.error.HTTPError):  # 416 Range Not Satisfiable
        _, total = _content_range(resp.headers)
        resp.close()
        if total is not None and total == have:
            return  # the part file is already complete
        part.unlink()  # larger than the file, or unknown: start over
        return _fetch_once(url, part, opts)
    with resp:
        _refuse_web_page(resp, url, opts.page)
        plan = _write_plan(resp, url, part, have)
        if plan is None:  # a 206 for some other range: start over cleanly
            part.unlink()
            return _fetch_once(url, part, opts)
        mode, have, total = plan
        total = total if total is not None else opts.expect_size
        if total is not None:
            _ensure_space(
                part.parent,
                int((total - have) + total * opts.unpack_factor),
                f"downloading the rest of {part.name} ({human(total - have)}) and unpacking it",
            )
        _stream(resp, part, mode, have, total, opts.progress)


def _stream(resp, part: Path, mode: str, have: int, total: int | None, progress: bool) -> None:
    need = total - have if total is not None else None
    with (
        open(part, mode) as f,
        _bar(total, have, desc=part.name.removesuffix(".part"), enabled=progress) as bar,
    ):
        while True:
            try:
                chunk = resp.read(CHUNK)
            except (OSError, http.client.HTTPException) as err:
                raise _Interrupted(f"{type(err).__name__}: {err}") from None
            if not chunk:
                break
            try:
                f.write(chunk)
            except OSError as err:
                if err.errno == errno.ENOSPC:
                    raise _disk_full(part.parent, need, "downloading", err) from None
                raise
            have += len(chunk)
            bar.update(len(chunk))
    if total is not None and have < total:
        raise _Interrupted(f"the connection closed after {human(have)} of {human(total)}")


def _reusable_download(dest: Path, sha256: str | None, progress: bool) -> str | None:
    """The SHA-256 of an earlier download ``dest`` fit for reuse; a mismatching one is deleted."""
    if not dest.is_file():
        return None
    digest = sha256_file(dest, progress)
    if sha256 is None or digest == sha256:
        _say(f"using {dest} (already downloaded)")
        return digest
    _say(f"{dest} does not match the expected checksum: downloading it again")
    dest.unlink()
    return None


def _fetch_with_retries(
    url: str, part: Path, opts: _FetchOptions, retries: int, retry_wait: float
) -> None:
    """Fetch ``part`` whole, resuming it up to ``retries`` times after an interrupted connection."""
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, opts)
            return
        except DiskFullError:
            raise
        except DownloadError as err:  # a refused connection, an HTTP error...: say what is kept
            if part.is_file() and part.stat().st_size:
                raise type(err)(
                    f"{err} ({human(part.stat().st_size)} downloaded so far are kept in {part}; "
                    f"the same command resumes from there.)"
                ) from None
            raise
        except _Interrupted as err:
            have = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                raise DownloadError(
                    f"the download of {url} was interrupted ({err}). {human(have)} are kept in "
                    f"{part}: run the same command again to resume from there."
                ) from None
            _say(
                f"download interrupted ({err}); resuming in {retry_wait:g} s "
                f"(attempt {attempt + 2} of {retries + 1})"
            )
            time.sleep(retry_wait)


def _checksum_mismatch(
    dest: Path, url: str, sha256: str, digest: str, page: str | None
) -> DownloadError:
    """The error for a finished download whose SHA-256 is not the expected one."""
    return DownloadError(
        f"checksum mismatch for {dest.name} from {url}: expected SHA-256 {sha256}, got {digest}. "
        f"The file is corrupt or is not the expected archive (a changed link, or a "
        f"proxy/captive-portal page); it was deleted. Run the command again to download it afresh; "
        f"if the publisher really changed the archive, check the new checksum on "
        f"{page or 'their page'} and pass it with --sha256."
    )


def download_file(
    url: str,
    dest,
    sha256: str | None = None,
    *,
    transfer: Transfer = Transfer(),
    page: str | None = None,
    expect_size: int | None = None,
    unpack_factor: float = 0.0,
) -> str:
    """Download ``url`` to ``dest``, resuming ``dest.part``, and return the file's SHA-256.

    * ``dest`` already there: verified and reused (deleted and fetched again if it does not match).
    * ``transfer`` sets progress bars, timeout and retries: an interrupted connection is retried
      ``transfer.retries`` times with ``Range`` (waiting ``transfer.retry_wait`` s); after that a
      :class:`DownloadError` says to run the command again, which resumes from ``dest.part``.
    * With ``sha256``, a mismatch deletes the file and raises :class:`DownloadError`.
    * ``unpack_factor`` x the size is added to the free-space check (room to unpack afterwards).
    """
    dest = Path(dest)
    sha256 = _check_sha256(sha256)
    digest = _reusable_download(dest, sha256, transfer.progress)
    if digest is not None:
        return digest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    opts = _FetchOptions(transfer.timeout, transfer.progress, page, expect_size, unpack_factor)
    _fetch_with_retries(url, part, opts, max(0, int(transfer.retries)), transfer.retry_wait)
    digest = sha256_file(part, transfer.progress)
    if sha256 is not None and digest != sha256:
        part.unlink()
        raise _checksum_mismatch(dest, url, sha256, digest, page)
    os.replace(part, dest)
    return digest


# --------------------------------------------------------------------------------------------------------
# safe unpacking
# --------------------------------------------------------------------------------------------------------
_CORRUPT = (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error)


def _member_path(name: str) -> PurePosixPath | None:
    """The member's relative path, or :class:`UnsafeArchiveError` if it is absolute or climbs with ``..``."""
    if "\x00" in name:
        raise UnsafeArchiveError(
            f"archive member {name!r} has a NUL byte in its name: refusing to unpack"
        )
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise UnsafeArchiveError(
            f"archive member {name!r} has an absolute path (path traversal): refusing to "
            f"unpack this archive; it is corrupt or malicious"
        )
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(
            f"archive member {name!r} climbs out with '..' (path traversal): refusing to "
            f"unpack this archive; it is corrupt or malicious"
        )
    return PurePosixPath(*parts) if parts else None


def _inside(root: str, path) -> bool:
    real = os.path.realpath(path)
    return real == root or real.startswith(root + os.sep)


def _make_parents(dest: Path, root: str, rel: PurePosixPath) -> Path:
    """Create ``rel``'s parent folders under ``dest``, checking every existing step stays inside ``root``."""
    cur = dest
    for part in rel.parts[:-1]:
        cur = cur / part
        if os.path.lexists(cur):
            if not _inside(root, cur):
                raise UnsafeArchiveError(
                    f"archive member {rel} would be written through a link leading outside "
                    f"the target folder: refusing to unpack"
                )
            if not cur.is_dir():
                raise DownloadError(
                    f"archive member {rel} needs {cur.relative_to(dest)} to be a folder, but the "
                    f"archive made it a file: the archive is corrupt"
                )
        else:
            cur.mkdir()
    target = cur / rel.parts[-1]
    if os.path.lexists(target) and (target.is_symlink() or not target.is_dir()):
        target.unlink()  # never write through an existing link; later members replace earlier ones
    return target


def _link_target(member: tarfile.TarInfo, rel: PurePosixPath) -> PurePosixPath:
    link = member.linkname.replace("\\", "/")
    if link.startswith("/") or re.match(r"^[A-Za-z]:", link):
        raise UnsafeArchiveError(
            f"archive member {rel} links to the absolute path {member.linkname!r}: refusing "
            f"to unpack (path traversal)"
        )
    base = str(rel.parent) if member.issym() else ""
    joined = posixpath.normpath(posixpath.join(base, link))
    if joined == ".." or joined.startswith("../"):
        raise UnsafeArchiveError(
            f"archive member {rel} links to {member.linkname!r}, outside the target folder: "
            f"refusing to unpack (path traversal)"
        )
    return PurePosixPath(joined)


def _copy_stream(src, dst) -> int:
    n = 0
    for block in iter(lambda: src.read(CHUNK), b""):
        dst.write(block)
        n += len(block)
    return n


def _extract_member(
    tar: tarfile.TarFile, m: tarfile.TarInfo, rel: PurePosixPath, dest: Path, root: str
) -> int:
    if m.isdir():
        target = _make_parents(dest, root, rel)
        if not target.is_dir():
            target.mkdir()
        return 0
    if not (m.isfile() or m.issym() or m.islnk()):
        raise UnsafeArchiveError(
            f"archive member {rel} is a device or FIFO, not a file: refusing to unpack"
        )
    link = _link_target(m, rel) if (m.issym() or m.islnk()) else None
    target = _make_parents(dest, root, rel)
    if m.issym():
        if not _inside(root, target.parent / m.linkname):
            raise UnsafeArchiveError(
                f"archive member {rel} is a link resolving outside the target folder "
                f"({m.linkname!r}): refusing to unpack (path traversal)"
            )
        os.symlink(m.linkname, target)
        return 0
    if m.islnk():  # hard link to an earlier member: a copy of it
        source = dest.joinpath(*link.parts)
        if not source.is_file() or not _inside(root, source):
            raise DownloadError(
                f"archive member {rel} is a hard link to {m.linkname!r}, which is not an earlier "
                f"file of the archive: the archive is corrupt"
            )
        shutil.copyfile(source, target)
        return source.stat().st_size
    src = tar.extractfile(m)
    with src, open(target, "wb") as f:
        return _copy_stream(src, f)


def safe_extract(
    archive, dest, *, wanted: Callable[[PurePosixPath], bool] | None = None, progress: bool = True
) -> int:
    """Unpack the tar ``archive`` (plain, .gz, .bz2, .xz) into ``dest`` and return the bytes written.

    Every member is checked (even those ``wanted`` skips): absolute paths, ``..``, links leading outside
    ``dest``, devices and FIFOs raise :class:`UnsafeArchiveError`; nothing is ever written through a link.
    A corrupt archive raises :class:`DownloadError`. The caller removes ``dest`` on error.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(dest)
    written = 0
    try:
        with (
            tarfile.open(archive, "r:*") as tar,
            _bar(None, desc=f"unpacking {archive.name}", unit=" files", enabled=progress) as bar,
        ):
            for m in tar:
                rel = _member_path(m.name)
                if m.issym() or m.islnk():
                    _link_target(m, rel or PurePosixPath("."))
                if rel is None or (wanted is not None and not wanted(rel)):
                    continue
                written += _extract_member(tar, m, rel, dest, root)
                bar.update(1)
    except _CORRUPT as err:
        raise _corrupt_archive(archive, err) from None
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise _disk_full(
                dest, archive.stat().st_size, "unpacking", err, at_least=True
            ) from None
        raise DownloadError(f"cannot unpack {archive.name} into {dest}: {err}") from None
    return written


def _corrupt_archive(archive: Path, err: BaseException) -> DownloadError:
    with open(archive, "rb") as f:
        head = f.read(512).lstrip().lower()
    hint = (
        (
            " It is a web page, not an archive: the link has probably expired; get the current one from the "
            "dataset's page and pass it with --url."
        )
        if head.startswith((b"<!doctype html", b"<html"))
        else ""
    )
    return DownloadError(
        f"{archive.name} is not a valid (or is a truncated) tar archive: {err}.{hint}"
    )


# --------------------------------------------------------------------------------------------------------
# the output folder: staging, atomic install, manifest
# --------------------------------------------------------------------------------------------------------
class _Workspace:
    """``OUT/.downloads`` (kept for resuming) and ``OUT/.staging-PID`` (always removed); on error, ``OUT``
    is removed again if this run created it and nothing else is in it."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.created = not self.out.exists()
        self.downloads = self.out / DOWNLOADS_DIR
        self.stage = self.out / f"{STAGING_PREFIX}{os.getpid()}"

    def __enter__(self) -> "_Workspace":
        if self.out.exists() and not self.out.is_dir():
            raise DownloadError(
                f"--out {self.out} is a file; give a folder (it will hold one folder per category)"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        for old in self.out.glob(f"{STAGING_PREFIX}*"):  # left by a killed run
            pid = old.name[len(STAGING_PREFIX) :]
            if not (pid.isdigit() and pid_alive(int(pid))) or old == self.stage:
                shutil.rmtree(old, ignore_errors=True)
        self.stage.mkdir()
        self.downloads.mkdir(exist_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)
        for folder in (self.downloads, self.out):
            if folder == self.out and not self.created:
                break
            try:
                folder.rmdir()  # only if empty
            except OSError:
                break


def read_manifest(out) -> dict:
    """``OUT/DOWNLOADS.json`` as a dict (empty if absent)."""
    path = Path(out) / MANIFEST_NAME
    if not path.is_file():
        return {"archives": {}, "categories": {}}
    try:
        data = read_json_object(
            path, "the record of downloads", "delete it (it only records what was downloaded)"
        )
    except BadJSONFile as err:
        raise DownloadError(str(err)) from None
    for key in ("archives", "categories"):
        if not isinstance(data.setdefault(key, {}), dict):
            raise DownloadError(
                f"{path}: {key} is {data[key]!r}, expected an object: delete the file (it only "
                f"records what was downloaded)"
            )
    return data


def _write_manifest(out: Path, data: dict) -> None:
    tmp = out / f".{MANIFEST_NAME}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / MANIFEST_NAME)


def check_replaceable(out: Path, name: str) -> None:
    """Refuse (:class:`DownloadError`) to replace ``OUT/name`` for ``--force`` unless a download installed it: a
    folder (not a file or link) whose category ``OUT/DOWNLOADS.json`` records."""
    dst = Path(out) / name
    fix = "move it away, or choose another --out; --force replaces only a category a download installed"
    if dst.is_symlink() or not dst.is_dir():
        raise DownloadError(
            f"--force refused: {dst} is {ownership.describe(dst)}, not a downloaded category "
            f"folder: {fix}"
        )
    record = read_manifest(out)["categories"].get(name)
    if record is None:
        raise DownloadError(
            f"--force refused: {dst} was not installed by a download ({name!r} is not recorded in "
            f"{Path(out) / MANIFEST_NAME}; it is {ownership.describe(dst)}), and --force never "
            f"deletes other data: {fix}"
        )
    listed = record.get("files") if isinstance(record, dict) else None
    if isinstance(
        listed, list
    ):  # recorded since downloads list their files: nothing else may be there
        extra = sorted(set(installed_files(dst)) - set(listed))
        if extra:
            raise DownloadError(
                f"--force refused: {dst} also holds {len(extra)} file(s) no download installed "
                f"({', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}), and --force never "
                f"deletes other data: {fix}"
            )


def links_leaving(folder: Path) -> list[str]:
    """The symbolic links under ``folder`` whose target is absolute or leads outside ``folder`` -- judged from
    ``folder`` itself, not from where it lies now, so a link that stays inside the staging area but would point
    above ``OUT`` once the category is moved into place is found. Returned as ``'rel -> target'``."""
    bad = []
    for here, dirs, files in os.walk(folder):
        for entry in dirs + files:
            p = Path(here) / entry
            if not p.is_symlink():
                continue
            rel = p.relative_to(folder)
            target = os.readlink(p)
            joined = posixpath.normpath(
                posixpath.join(rel.parent.as_posix(), target.replace("\\", "/"))
            )
            if os.path.isabs(target) or joined == ".." or joined.startswith("../"):
                bad.append(f"{rel.as_posix()} -> {target}")
    return bad


def _install(stage_dir: Path, out: Path, name: str) -> Path:
    """Move a finished category folder into ``OUT`` with one rename (replacing an old one under --force); its
    links are checked against the folder itself before, and resolved against ``OUT`` after the move."""
    dst = out / name
    if leaving := links_leaving(stage_dir):
        raise UnsafeArchiveError(
            f"category {name}: {len(leaving)} link(s) would lead outside {dst} once installed "
            f"({', '.join(leaving[:3])}): refusing to install it (path traversal)"
        )
    # an old category is replaced (--force) only once the new one is complete, checked again: it may have changed
    # while the archive came
    install_folder(stage_dir, dst, replace=lambda old: check_replaceable(out, name) is None)
    root = os.path.realpath(dst)
    for here, dirs, files in os.walk(
        dst
    ):  # resolved where they now are: none may leave the category
        for entry in dirs + files:
            p = Path(here) / entry
            if p.is_symlink() and not _inside(root, p):
                shutil.rmtree(dst, ignore_errors=True)
                raise UnsafeArchiveError(
                    f"category {name}: the link {p.relative_to(dst)} resolves outside {dst} "
                    f"after installing: removed it again (path traversal)"
                )
    return dst


def _categories(requested: Sequence[str] | None, known: Iterable[str], dataset: str) -> list[str]:
    known = list(known)
    if not requested:
        return known
    bad = [c for c in requested if c not in known]
    if bad:
        raise DownloadError(f"unknown {dataset} categories {bad}; choose from: {', '.join(known)}")
    return list(dict.fromkeys(requested))


def _pending(out: Path, cats: list[str], force: bool) -> list[str]:
    """The categories to fetch: those not in ``out`` yet, and with ``force`` the downloaded ones too (a folder
    of that name that no download installed is refused before anything is fetched)."""
    todo = [c for c in cats if force or not (out / c).exists()]
    for c in todo:
        if (out / c).exists() or (out / c).is_symlink():
            check_replaceable(out, c)
    for c in cats:
        if c not in todo:
            _say(f"{out / c} is already there: skipped (--force downloads it again)")
    return todo


def _fetch_archive(
    ws: _Workspace,
    archive: Archive,
    manifest: dict,
    transfer: Transfer,
    unpack_factor: float,
) -> tuple[Path, str, str]:
    """Download (or reuse) one archive into ``OUT/.downloads``; returns (path, sha256, checksum source)."""
    recorded = manifest["archives"].get(archive.name, {})
    expected, source = archive.sha256, archive.checksum_source
    if expected is None and recorded.get("url") == archive.url and recorded.get("sha256"):
        expected, source = recorded["sha256"], f"recorded in {MANIFEST_NAME} by the first download"
    _say(
        f"downloading {archive.name} ({human(archive.size) if archive.size else 'size not known yet'}) "
        f"from {archive.url}"
    )
    path = ws.downloads / archive.name
    digest = download_file(
        archive.url,
        path,
        expected,
        transfer=transfer,
        page=archive.page,
        expect_size=archive.size,
        unpack_factor=unpack_factor,
    )
    if expected is None:
        source = "none known: recorded on this first download"
        _say(
            f"note: no published checksum for {archive.name}; its SHA-256 {digest} is recorded in "
            f"{ws.out / MANIFEST_NAME} and later downloads of the same link are checked against it"
        )
    return path, digest, source


def _unpack(ws: _Workspace, path: Path, wanted, progress: bool) -> Path:
    """Unpack an archive into the staging folder; a corrupt archive is deleted so the next run re-fetches it."""
    where = ws.stage / f"unpacked-{path.name}"
    _ensure_space(ws.out, path.stat().st_size, f"unpacking {path.name}")
    try:
        safe_extract(path, where, wanted=wanted, progress=progress)
    except DiskFullError:
        raise  # the archive is fine: keep it for the next run
    except DownloadError as err:
        path.unlink(missing_ok=True)
        raise type(err)(f"{err} The archive was deleted; nothing was installed.") from None
    return where


def _record(
    ws: _Workspace,
    manifest: dict,
    archive: Archive,
    digest: str,
    source: str,
    path: Path,
    cats: list[str],
    dataset: str,
) -> None:
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    manifest["archives"][archive.name] = {
        "url": archive.url,
        "sha256": digest,
        "checksum": source,
        "bytes": path.stat().st_size,
        "downloaded": now,
    }
    for c in cats:
        manifest["categories"][c] = {
            "dataset": dataset,
            "archive": archive.name,
            "license": archive.license,
            "source": archive.page,
            "installed": now,
            "files": installed_files(ws.out / c),
        }
    _write_manifest(ws.out, manifest)


def installed_files(folder: Path) -> list[str]:
    """Every file and link under ``folder``, relative, sorted: what ``--force`` may later delete there."""
    folder = Path(folder)
    out = []
    for here, dirs, files in os.walk(folder):
        rel = Path(here).relative_to(folder)
        out += [(rel / f).as_posix() for f in files]
        out += [(rel / d).as_posix() for d in dirs if (Path(here) / d).is_symlink()]
    return sorted(out)


def _find_category(root: Path, name: str) -> Path:
    """The folder ``name`` holding ``train/good`` at depth 1 or 2 of an unpacked archive."""
    for cand in [root / name, *sorted(root.glob(f"*/{name}"))]:
        if (cand / "train" / "good").is_dir():
            return cand
    raise DownloadError(
        f"the archive has no {name}/train/good folder: it is not an MVTec AD archive of "
        f"{name!r} (a wrong --url?)"
    )


def _top_level_in(names: set[str]) -> Callable[[PurePosixPath], bool]:
    """Keep members whose first (or, under one wrapping folder, second) path component is in ``names``."""
    return lambda rel: rel.parts[0] in names or (len(rel.parts) > 2 and rel.parts[1] in names)


def _with_override(archive: Archive, url: str | None, sha256: str | None) -> Archive:
    """The archive with a user's --url (its checksum then unknown unless --sha256) and/or --sha256."""
    sha256 = _check_sha256(sha256)
    given = "given with --sha256"
    if url and url != archive.url:
        name = posixpath.basename(urllib.request.urlparse(url).path)
        name = (
            name
            if re.fullmatch(r"[\w.-]+\.(tar|tar\.xz|txz|tar\.gz|tgz|tar\.bz2)", name)
            else archive.name
        )
        return replace(archive, name=name, url=url, sha256=sha256, size=None, checksum_source=given)
    return replace(archive, sha256=sha256, checksum_source=given) if sha256 else archive


# --------------------------------------------------------------------------------------------------------
# MVTec AD
# --------------------------------------------------------------------------------------------------------
def download_mvtec(
    out,
    categories: Sequence[str] | None = None,
    *,
    full_archive: bool = False,
    url: str | None = None,
    sha256: str | None = None,
    force: bool = False,
    keep_archive: bool = False,
    transfer: Transfer = Transfer(),
) -> list[Path]:
    """Download MVTec AD into ``out/<category>`` (MVTec layout) and return the category folders.

    With ``categories``, each comes from its own (smaller) archive; ``full_archive=True`` fetches the one
    verified 5.3 GB archive instead and unpacks only those. With no ``categories``, the full archive gives
    all 15. ``url``/``sha256`` replace the link/checksum of the one archive fetched (the full archive, or a
    single category's). ``transfer`` sets progress bars, retries and timeout (see :class:`Transfer`).
    """
    out = Path(out)
    cats = _categories(categories, MVTEC_CATEGORIES, "MVTec AD")
    todo = _pending(out, cats, force)
    if not todo:
        return [out / c for c in cats]
    use_full = full_archive or not categories
    jobs = [(MVTEC_FULL, todo)] if use_full else [(MVTEC_CATEGORIES[c], [c]) for c in todo]
    if (url or sha256) and not use_full and len(cats) > 1:
        raise DownloadError(
            "--url/--sha256 replace the link of one archive: use them with --full-archive, with "
            "no --categories, or with a single category"
        )
    jobs = [(_with_override(a, url, sha256), names) for a, names in jobs]
    with _Workspace(out) as ws:
        manifest = read_manifest(out)
        for archive, names in jobs:
            path, digest, source = _fetch_archive(ws, archive, manifest, transfer, 1.0)
            wanted = _top_level_in(set(names)) if use_full else None
            unpacked = _unpack(ws, path, wanted, transfer.progress)
            found = {c: _find_category(unpacked, c) for c in names}
            for c, folder in found.items():
                _install(folder, out, c)
                _say(f"installed {out / c}")
            _record(ws, manifest, archive, digest, source, path, names, "MVTec AD")
            if not keep_archive:
                path.unlink()
            shutil.rmtree(unpacked, ignore_errors=True)
    _say(f"MVTec AD is licensed {MVTEC_LICENSE}; see {MVTEC_PAGE}")
    return [out / c for c in cats]


# --------------------------------------------------------------------------------------------------------
# VisA
# --------------------------------------------------------------------------------------------------------
def _safe_join(base: Path, rel: str, what: str) -> Path:
    """``base / rel`` for a path read from the split file, refusing absolute paths and ``..``."""
    try:
        path = _member_path(rel.strip()) if rel.strip() else None
    except UnsafeArchiveError:
        raise UnsafeArchiveError(
            f"the VisA split file lists the {what} path {rel!r}, which leaves the dataset "
            f"folder: refusing to use it"
        ) from None
    if path is None:
        raise DownloadError(f"the VisA split file lists an empty {what} path")
    return base.joinpath(*path.parts)


def _binary_mask(src: Path, dst: Path) -> None:
    """Any mask (VisA stores defect ids 0..k) -> 8-bit 0/255 PNG."""
    try:
        with Image.open(src) as img:
            if img.mode in ("RGB", "RGBA", "LA"):
                arr = np.asarray(img.convert("RGB")).max(axis=2)
            else:  # L, P (palette indices), 1, I, I;16
                arr = np.asarray(img)
    except OSError as err:
        raise DownloadError(
            f"VisA mask {src} is unreadable ({err}): the archive is corrupt"
        ) from None
    Image.fromarray(((arr > 0) * 255).astype(np.uint8)).save(dst)


def read_visa_split(csv_path) -> list[dict]:
    """Rows of VisA's ``1cls.csv``: ``object, split (train|test), label (normal|anomaly), image, mask``."""
    csv_path = Path(csv_path)
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    need = {"object", "split", "label", "image", "mask"}
    if not rows or not need <= set(rows[0]):
        raise DownloadError(
            f"{csv_path} is not VisA's split file: it needs the columns {sorted(need)}"
        )
    for i, r in enumerate(rows, start=2):
        if r["split"] not in ("train", "test") or r["label"] not in ("normal", "anomaly"):
            raise DownloadError(
                f"{csv_path} line {i}: split {r['split']!r} / label {r['label']!r} is not "
                f"train|test / normal|anomaly"
            )
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", r["object"]) or r["object"] in (".", ".."):
            raise DownloadError(f"{csv_path} line {i}: {r['object']!r} is not a category name")
    return rows


def convert_visa(
    raw_root, split_csv, out, categories: Sequence[str] | None = None, progress: bool = True
) -> list[str]:
    """Turn an unpacked VisA tree into MVTec layout under ``out`` (files are moved, masks binarised).

    Train rows -> ``<cat>/train/good``; test normal -> ``<cat>/test/good``; test anomaly ->
    ``<cat>/test/bad`` and ``<cat>/ground_truth/bad/<stem>_mask.png`` (0/255). Returns the categories made.
    """
    raw_root, out = Path(raw_root), Path(out)
    rows = read_visa_split(split_csv)
    if categories:
        rows = [r for r in rows if r["object"] in set(categories)]
    with _bar(len(rows), desc="converting VisA", unit=" images", enabled=progress) as bar:
        for r in rows:
            _convert_row(raw_root, out, r)
            bar.update(1)
    made = sorted({r["object"] for r in rows})
    for c in made:
        if not (out / c / "train" / "good").is_dir():
            raise DownloadError(f"VisA category {c!r} has no training images in the split file")
    missing = sorted(set(categories or []) - set(made))
    if missing:
        raise DownloadError(f"the VisA split file lists no images of {missing}")
    return made


def _convert_row(raw_root: Path, out: Path, r: dict) -> None:
    src = _safe_join(raw_root, r["image"], "image")
    if not src.is_file():
        raise DownloadError(
            f"the VisA split file lists {r['image']}, which is not in the archive: the archive "
            f"is incomplete or corrupt"
        )
    cat = out / r["object"]
    kind = "good" if r["label"] == "normal" else VISA_DEFECT
    dst = cat / r["split"] / kind / src.name
    if dst.exists():
        raise DownloadError(
            f"two VisA images map to {dst.relative_to(out)}: the split file has duplicates"
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    if kind != "good":
        mask = _safe_join(raw_root, r["mask"], "mask")
        if not mask.is_file():
            raise DownloadError(
                f"the anomalous VisA image {r['image']} has no mask ({r['mask'] or 'none listed'})"
            )
        gt = cat / "ground_truth" / kind
        gt.mkdir(parents=True, exist_ok=True)
        _binary_mask(mask, gt / f"{src.stem}_mask.png")
    os.replace(src, dst)


def _visa_split(ws: _Workspace, unpacked: Path, split_csv, transfer: Transfer) -> tuple[Path, Path]:
    """(split csv, the folder its image paths are relative to)."""
    if split_csv is None:
        found = sorted(unpacked.glob("split_csv/1cls.csv")) + sorted(
            unpacked.glob("*/split_csv/1cls.csv")
        )
        if found:
            return found[0], found[0].parent.parent
        split_csv = VISA_SPLIT_URL
        _say(f"the archive has no split_csv/1cls.csv: fetching the official split from {split_csv}")
    if re.match(r"^https?://", str(split_csv)):
        path = (
            ws.stage / "visa_1cls.csv"
        )  # small: fetched afresh each time, removed with the staging folder
        download_file(str(split_csv), path, transfer=transfer, page=VISA_PAGE)
        split_csv = path
    split_csv = Path(split_csv)
    if not split_csv.is_file():
        raise DownloadError(f"VisA split file {split_csv} does not exist")
    tops = {r["image"].strip().split("/")[0] for r in read_visa_split(split_csv)}
    base = next(
        (d for d in [unpacked, *sorted(unpacked.iterdir())] if any((d / t).is_dir() for t in tops)),
        unpacked,
    )
    return split_csv, base


def download_visa(
    out,
    categories: Sequence[str] | None = None,
    *,
    url: str | None = None,
    sha256: str | None = None,
    split_csv=None,
    force: bool = False,
    keep_archive: bool = False,
    transfer: Transfer = Transfer(),
) -> list[Path]:
    """Download VisA (one 1.9 GB tar), convert it to MVTec layout in ``out/<category>``, return the folders.

    ``split_csv`` (a file or URL) replaces the ``split_csv/1cls.csv`` shipped inside the tar. ``transfer``
    sets progress bars, retries and timeout (see :class:`Transfer`).
    """
    out = Path(out)
    cats = _categories(categories, VISA_CATEGORIES, "VisA")
    todo = _pending(out, cats, force)
    if not todo:
        return [out / c for c in cats]
    archive = _with_override(VISA, url, sha256)
    with _Workspace(out) as ws:
        manifest = read_manifest(out)
        path, digest, source = _fetch_archive(ws, archive, manifest, transfer, 1.0)
        unpacked = _unpack(ws, path, _top_level_in(set(todo) | {"split_csv"}), transfer.progress)
        csv_path, base = _visa_split(ws, unpacked, split_csv, transfer)
        converted = ws.stage / "mvtec_layout"
        try:
            convert_visa(base, csv_path, converted, todo, transfer.progress)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise _disk_full(ws.out, None, "converting VisA", err) from None
            raise
        for c in todo:
            _install(converted / c, out, c)
            _say(f"installed {out / c}")
        _record(ws, manifest, archive, digest, source, path, todo, "VisA")
        if not keep_archive:
            path.unlink()
    _say(f"VisA is licensed {VISA_LICENSE}; see {VISA_PAGE}")
    return [out / c for c in cats]


# --------------------------------------------------------------------------------------------------------
# command line (shared by ``python -m unistad_edu data mvtec|visa`` and data_scripts/download_*.py)
# --------------------------------------------------------------------------------------------------------
def _csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_arguments(p: argparse.ArgumentParser, dataset: str) -> argparse.ArgumentParser:
    """The options of ``data mvtec`` / ``data visa``."""
    known = MVTEC_CATEGORIES if dataset == "mvtec" else VISA_CATEGORIES
    p.add_argument(
        "--out", required=True, help="folder that receives one folder per category (MVTec layout)"
    )
    p.add_argument(
        "--categories",
        type=_csv_list,
        default=None,
        help=f"comma-separated subset (default: all): {','.join(known)}",
    )
    if dataset == "mvtec":
        p.add_argument(
            "--full-archive",
            action="store_true",
            help="fetch the one verified 5.3 GB archive even for a few --categories",
        )
    else:
        p.add_argument(
            "--split-csv", default=None, help="file or URL replacing the tar's split_csv/1cls.csv"
        )
    p.add_argument(
        "--url", default=None, help="replace the archive link (when the publisher moved it)"
    )
    p.add_argument("--sha256", default=None, help="expected SHA-256 of the archive at --url")
    p.add_argument(
        "--keep-archive", action="store_true", help="keep the archive in OUT/.downloads afterwards"
    )
    p.add_argument(
        "--force", action="store_true", help="download and replace categories already in --out"
    )
    from .options import nonnegative_int, positive_float

    p.add_argument(
        "--retries",
        type=nonnegative_int,
        default=3,
        help="automatic resumes after a dropped connection",
    )
    p.add_argument(
        "--timeout", type=positive_float, default=60.0, help="seconds without data before giving up"
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args: argparse.Namespace, dataset: str) -> int:
    """Run a parsed ``data mvtec|visa`` command; errors propagate as :class:`DownloadError`."""
    from .options import picked

    common = picked(args, "url", "sha256", "force", "keep_archive")  # option = parameter
    common["transfer"] = Transfer(
        progress=not args.no_progress, retries=args.retries, timeout=args.timeout
    )
    try:
        if dataset == "mvtec":
            folders = download_mvtec(
                args.out, args.categories, full_archive=args.full_archive, **common
            )
        else:
            folders = download_visa(args.out, args.categories, split_csv=args.split_csv, **common)
    except OSError as err:  # e.g. no permission to create --out
        raise DownloadError(f"{err.strerror or err}: {err.filename or args.out}") from None
    except KeyboardInterrupt:
        raise DownloadError(
            "interrupted: nothing half-done was installed; a partial download is kept in "
            f"{Path(args.out) / DOWNLOADS_DIR} and the same command resumes it"
        ) from None
    print(f"{len(folders)} categories ready in {args.out}: {', '.join(f.name for f in folders)}")
    print(f"next: python -m unistad_edu train --data {args.out} --out runs/{dataset}")
    return 0


def script_main(dataset: str, argv=None) -> int:
    """Entry point of ``data_scripts/download_{mvtec,visa}.py``: messages, not tracebacks; exit code 2 on error."""
    import sys

    name = {"mvtec": "MVTec AD", "visa": "VisA"}[dataset]
    p = add_arguments(
        argparse.ArgumentParser(
            description=f"Download {name} into MVTec layout (checksums, resume, "
            f"atomic install). Same as: python -m unistad_edu data "
            f"{dataset} ..."
        ),
        dataset,
    )
    args = p.parse_args(argv)
    try:
        return run(args, dataset)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
