"""Dataset downloads, entirely offline: a local HTTP server on 127.0.0.1 (with Range support, a mode that
drops the connection mid-file and a mode that ignores Range) serves small archives the tests build."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import re
import runpy
import socket
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unistad_edu import download as dl
from unistad_edu.data import MVTecDataset

REPO = Path(__file__).resolve().parents[1]
QUIET = dl.Transfer(progress=False, retries=0)  # no progress bars, no automatic resume


# --------------------------------------------------------------------------------------------------------
# a local server
# --------------------------------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        srv = self.server
        rng = self.headers.get("Range")
        entry = {"path": self.path, "range": rng, "status": None, "sent": 0}
        srv.log.append(entry)
        body = srv.files.get(self.path)
        if body is None:
            entry["status"] = 404
            self.send_error(404, "Not Found")
            return
        start = 0
        if rng and not srv.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(body):
                entry["status"] = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            entry["status"] = 206
        else:
            self.send_response(200)
            entry["status"] = 200
        payload = body[start:]
        self.send_header("Content-Type", srv.content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        drop = srv.drop_after.pop(
            self.path, None
        )  # one-shot: announce everything, send `drop` bytes, hang up
        sent = payload if drop is None else payload[:drop]
        self.wfile.write(sent)
        self.wfile.flush()
        entry["sent"] = len(sent)
        if drop is not None:
            self.close_connection = True


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for k in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files, srv.log, srv.drop_after = {}, [], {}
    srv.ignore_range, srv.content_type = False, "application/octet-stream"
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def serve(srv, path: str, body: bytes) -> tuple[str, str]:
    """Publish ``body`` at ``path``; returns (url, sha256)."""
    srv.files[path] = body
    return srv.base + path, hashlib.sha256(body).hexdigest()


# --------------------------------------------------------------------------------------------------------
# small archives
# --------------------------------------------------------------------------------------------------------
def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _jpg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(
        buf, "JPEG"
    )
    return buf.getvalue()


def _noise(seed: int, size: int = 32) -> bytes:
    return _png(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def make_tar(
    files: dict[str, bytes], mode: str = "w:xz", extra: list[tarfile.TarInfo] = ()
) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return buf.getvalue()


def mvtec_category(name: str = "bottle", seed: int = 0) -> bytes:
    """A category archive shaped like MVTec's: ``<name>/train|test|ground_truth`` and a top-level licence."""
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:20] = 255
    return make_tar(
        {
            "license.txt": b"CC BY-NC-SA 4.0",
            f"{name}/train/good/000.png": _noise(seed + 1),
            f"{name}/train/good/001.png": _noise(seed + 2),
            f"{name}/test/good/000.png": _noise(seed + 3),
            f"{name}/test/broken_large/000.png": _noise(seed + 4),
            f"{name}/ground_truth/broken_large/000_mask.png": _png(mask),
        }
    )


def leftovers(out: Path) -> list[str]:
    """Temporary things a run may leave in ``out`` (there should be none)."""
    if not out.exists():
        return []
    return sorted(p.name for p in out.iterdir() if p.name.startswith((".staging", ".DOWNLOADS")))


# --------------------------------------------------------------------------------------------------------
# the normal path
# --------------------------------------------------------------------------------------------------------
def test_mvtec_category_downloads_verifies_and_installs(server, tmp_path):
    url, sha = serve(server, "/bottle.tar.xz", mvtec_category())
    out = tmp_path / "mvtec"
    folders = dl.download_mvtec(out, ["bottle"], url=url, sha256=sha, transfer=QUIET)
    assert folders == [out / "bottle"]
    ds = MVTecDataset(out, "test", image_size=32)
    assert ds.counts() == {"bottle": {"good": 1, "broken_large": 1}}
    defect = next(i for i, r in enumerate(ds.records) if r.label == 1)
    assert ds[defect]["mask"].sum() == 8 * 12
    assert len(MVTecDataset(out, "train", image_size=32)) == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "DOWNLOADS.json",
        "bottle",
    ]  # archive, staging: gone
    man = json.loads((out / "DOWNLOADS.json").read_text())
    assert man["archives"]["bottle.tar.xz"]["sha256"] == sha
    assert man["categories"]["bottle"]["dataset"] == "MVTec AD"
    # a second run has nothing to do and makes no request
    n = len(server.log)
    dl.download_mvtec(out, ["bottle"], url=url, sha256=sha, transfer=dl.Transfer(progress=False))
    assert len(server.log) == n


def test_checksum_recorded_on_first_download_then_enforced(server, tmp_path, capsys):
    url, sha = serve(server, "/cable.tar.xz", mvtec_category("cable"))
    out = tmp_path / "mvtec"
    dl.download_mvtec(out, ["cable"], url=url, transfer=QUIET)  # no checksum known
    assert "recorded" in capsys.readouterr().out
    assert dl.read_manifest(out)["archives"]["cable.tar.xz"]["sha256"] == sha
    server.files["/cable.tar.xz"] = mvtec_category(
        "cable", seed=9
    )  # the file behind the link changes
    with pytest.raises(dl.DownloadError, match="checksum mismatch"):
        dl.download_mvtec(out, ["cable"], url=url, force=True, transfer=QUIET)
    assert (
        out / "cable" / "train" / "good" / "000.png"
    ).is_file()  # the old, complete copy is untouched
    assert leftovers(out) == [] and not any((out / ".downloads").glob("*"))


# --------------------------------------------------------------------------------------------------------
# interrupted downloads
# --------------------------------------------------------------------------------------------------------
def test_interrupted_download_resumes_with_range(server, tmp_path):
    body = mvtec_category()
    url, sha = serve(server, "/bottle.tar.xz", body)
    cut = len(body) // 3
    server.drop_after["/bottle.tar.xz"] = cut
    out = tmp_path / "mvtec"
    with pytest.raises(dl.DownloadError, match="run the same command again to resume"):
        dl.download_mvtec(out, ["bottle"], url=url, sha256=sha, transfer=QUIET)
    part = out / ".downloads" / "bottle.tar.xz.part"
    assert part.stat().st_size == cut
    assert not (out / "bottle").exists() and leftovers(out) == []

    dl.download_mvtec(out, ["bottle"], url=url, sha256=sha, transfer=QUIET)
    first, second = server.log
    assert first["range"] is None and first["sent"] == cut
    assert second["range"] == f"bytes={cut}-" and second["status"] == 206
    assert second["sent"] == len(body) - cut  # only the missing bytes travelled again
    assert (out / "bottle" / "test" / "broken_large" / "000.png").is_file()
    assert not (out / ".downloads").exists()


def test_interruption_is_retried_automatically(server, tmp_path):
    body = b"x" * 5000
    url, sha = serve(server, "/f.bin", body)
    server.drop_after["/f.bin"] = 1234
    dest = tmp_path / "f.bin"
    one_quick_retry = dl.Transfer(progress=False, retries=1, retry_wait=0)
    assert dl.download_file(url, dest, sha, transfer=one_quick_retry) == sha
    assert [e["range"] for e in server.log] == [None, "bytes=1234-"]
    assert dest.read_bytes() == body


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    body = bytes(range(256)) * 40
    url, sha = serve(server, "/f.bin", body)
    server.drop_after["/f.bin"] = 3000
    dest = tmp_path / "f.bin"
    with pytest.raises(dl.DownloadError, match="interrupted"):
        dl.download_file(url, dest, sha, transfer=QUIET)
    server.ignore_range = True
    dl.download_file(url, dest, sha, transfer=QUIET)
    assert server.log[1]["range"] == "bytes=3000-" and server.log[1]["status"] == 200
    assert dest.read_bytes() == body and not dest.with_name("f.bin.part").exists()


def test_complete_part_file_is_not_downloaded_again(server, tmp_path):
    body = b"y" * 2048
    url, sha = serve(server, "/f.bin", body)
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(
        body
    )  # e.g. killed between the last byte and the rename
    dl.download_file(url, dest, sha, transfer=QUIET)
    assert server.log == [{"path": "/f.bin", "range": "bytes=2048-", "status": 416, "sent": 0}]
    assert dest.read_bytes() == body


# --------------------------------------------------------------------------------------------------------
# bad archives and bad links: clear errors, nothing half-done
# --------------------------------------------------------------------------------------------------------
def test_wrong_checksum_is_rejected_and_nothing_is_left(server, tmp_path):
    url, sha = serve(server, "/bottle.tar.xz", mvtec_category())
    out = tmp_path / "mvtec"
    with pytest.raises(dl.DownloadError, match="checksum mismatch") as err:
        dl.download_mvtec(out, ["bottle"], url=url, sha256="0" * 64, transfer=QUIET)
    assert sha in str(err.value) and "deleted" in str(err.value)
    assert (
        not out.exists()
    )  # no category, no .part, no staging, and the folder this run made is gone


def test_corrupt_archive_is_rejected_and_nothing_is_left(server, tmp_path):
    body = mvtec_category()
    url, _ = serve(
        server, "/bottle.tar.xz", body[: len(body) // 2]
    )  # truncated, no checksum to catch it
    out = tmp_path / "mvtec"
    with pytest.raises(dl.DownloadError, match="not a valid .*tar archive.*deleted"):
        dl.download_mvtec(out, ["bottle"], url=url, transfer=QUIET)
    assert not out.exists()


def test_web_page_instead_of_archive(server, tmp_path):
    url, _ = serve(server, "/bottle.tar.xz", b"<!DOCTYPE html><html>please log in</html>")
    server.content_type = "text/html; charset=utf-8"
    with pytest.raises(dl.DownloadError, match="web page instead of the archive.*--url"):
        dl.download_mvtec(tmp_path / "m", ["bottle"], url=url, transfer=QUIET)
    assert not (tmp_path / "m").exists()


def test_http_404_message(server, tmp_path):
    with pytest.raises(dl.DownloadError) as err:
        dl.download_mvtec(
            tmp_path / "m",
            ["bottle"],
            url=server.base + "/gone.tar.xz",
            transfer=dl.Transfer(progress=False),
        )
    msg = str(err.value)
    assert "HTTP 404" in msg and "--url" in msg and "mvtec.com" in msg
    assert not (tmp_path / "m").exists()


def test_connection_refused_message(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(dl.DownloadError, match="connection refused by 127.0.0.1") as err:
        dl.download_file(f"http://127.0.0.1:{port}/x.tar", tmp_path / "x.tar", transfer=QUIET)
    assert "offline" in str(err.value)


def test_full_disk_is_refused_early_with_the_space_needed(server, tmp_path, monkeypatch):
    body = mvtec_category()
    url, sha = serve(server, "/bottle.tar.xz", body)
    monkeypatch.setattr(dl, "_free_bytes", lambda folder: 100)
    with pytest.raises(
        dl.DownloadError, match=r"not enough disk space .* needs about \d+\.\d KB"
    ) as err:
        dl.download_mvtec(tmp_path / "m", ["bottle"], url=url, sha256=sha, transfer=QUIET)
    assert "only 100 bytes is free" in str(err.value)
    assert not (tmp_path / "m").exists()


def test_disk_full_while_unpacking_keeps_the_archive(server, tmp_path, monkeypatch):
    url, sha = serve(server, "/bottle.tar.xz", mvtec_category())
    out = tmp_path / "m"

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dl, "_copy_stream", full)
    with pytest.raises(dl.DiskFullError, match="disk is full .* unpacking .* needs at least"):
        dl.download_mvtec(out, ["bottle"], url=url, sha256=sha, transfer=QUIET)
    assert not (out / "bottle").exists() and leftovers(out) == []
    assert (
        out / ".downloads" / "bottle.tar.xz"
    ).is_file()  # verified archive kept for the next run
    monkeypatch.undo()
    dl.download_mvtec(out, ["bottle"], url=url, sha256=sha, transfer=QUIET)
    assert len(server.log) == 1 and (out / "bottle" / "train" / "good").is_dir()


# --------------------------------------------------------------------------------------------------------
# path traversal
# --------------------------------------------------------------------------------------------------------
def test_path_traversal_member_is_rejected_in_a_download(server, tmp_path):
    evil = make_tar({"bottle/train/good/000.png": _noise(1), "../evil.txt": b"pwned"})
    url, sha = serve(server, "/bottle.tar.xz", evil)
    out = tmp_path / "data" / "mvtec"
    with pytest.raises(dl.UnsafeArchiveError, match=r"'\.\./evil\.txt'.*path traversal"):
        dl.download_mvtec(out, ["bottle"], url=url, sha256=sha, transfer=QUIET)
    assert not list(tmp_path.rglob("evil.txt")) and not out.exists()


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    "files, extra, match",
    [
        ({"/tmp/abs_evil.txt": b"x"}, [], "absolute path"),
        ({"a/../../evil.txt": b"x"}, [], r"\.\."),
        ({}, [_link("cat/link", "../../outside")], "outside the target folder"),
        ({}, [_link("cat/link", "/etc")], "absolute path"),
        (
            {},
            [_link("s", "."), _link("t", "s/..")],
            "resolving outside",
        ),  # only the real path shows it
        ({}, [_link("cat/hard", "../../etc/passwd", tarfile.LNKTYPE)], "outside the target folder"),
        ({}, [_link("cat/dev", "", tarfile.CHRTYPE)], "device or FIFO"),
    ],
)
def test_unsafe_members_are_refused(tmp_path, files, extra, match):
    archive = tmp_path / "evil.tar"
    archive.write_bytes(make_tar({"cat/ok.txt": b"ok", **files}, mode="w", extra=extra))
    dest = tmp_path / "box" / "dest"
    with pytest.raises(dl.UnsafeArchiveError, match=match):
        dl.safe_extract(archive, dest, progress=False)
    outside = [p for p in tmp_path.rglob("*") if p != archive and dest not in (p, *p.parents)]
    assert outside == [tmp_path / "box"]


def test_links_inside_are_kept_and_never_written_through(tmp_path):
    archive = tmp_path / "ok.tar"
    archive.write_bytes(
        make_tar(
            {"cat/a.txt": b"A", "cat/sub/b.txt": b"B"},
            mode="w",
            extra=[_link("cat/ln", "a.txt"), _link("cat/hard", "cat/a.txt", tarfile.LNKTYPE)],
        )
    )
    dest = tmp_path / "dest"
    dl.safe_extract(archive, dest, progress=False)
    assert (dest / "cat" / "ln").read_bytes() == b"A" and (
        dest / "cat" / "hard"
    ).read_bytes() == b"A"


@pytest.mark.parametrize(
    "link, target",
    [
        (
            "mvtec/bottle/train/good/002.png",
            "../../../../x.png",
        ),  # inside the staging area, above OUT once moved
        ("mvtec/bottle/train/good/002.png", "../../../../../x.png"),
        ("mvtec/bottle/evil", "../.."),  # a folder link, above OUT once moved
        (
            "mvtec/bottle/test/good/001.png",
            "../../../license.txt",
        ),  # the archive's licence, outside the category
    ],
)
def test_a_link_that_would_leave_out_once_moved_is_refused(server, tmp_path, link, target):
    base = {f"mvtec/{k}": v for k, v in dl_tar_files().items()}
    body = make_tar(
        {**base, "mvtec/license.txt": b"L", "mvtec/x.png": _noise(9)},
        mode="w",
        extra=[_link(link, target)],
    )
    url, sha = serve(server, "/full.tar", body)
    out = tmp_path / "data" / "mvtec"
    with pytest.raises(
        dl.UnsafeArchiveError, match="outside"
    ):  # at unpacking, or before installing
        dl.download_mvtec(out, ["bottle"], url=url, sha256=sha, transfer=QUIET)
    assert not (out / "bottle").exists() and not leftovers(out)


def test_links_inside_the_category_are_installed(server, tmp_path):
    base = {f"mvtec/{k}": v for k, v in dl_tar_files().items()}
    body = make_tar(
        base,
        mode="w",
        extra=[
            _link("mvtec/bottle/train/good/002.png", "000.png"),
            _link("mvtec/bottle/train/extra", "good"),
        ],
    )
    url, sha = serve(server, "/full.tar", body)
    out = tmp_path / "mvtec"
    dl.download_mvtec(out, ["bottle"], url=url, sha256=sha, transfer=QUIET)
    assert (out / "bottle/train/good/002.png").read_bytes() == (
        out / "bottle/train/good/000.png"
    ).read_bytes()
    assert dl.links_leaving(out / "bottle") == []


def dl_tar_files() -> dict[str, bytes]:
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:20] = 255
    return {
        "bottle/train/good/000.png": _noise(1),
        "bottle/train/good/001.png": _noise(2),
        "bottle/test/good/000.png": _noise(3),
        "bottle/test/broken_large/000.png": _noise(4),
        "bottle/ground_truth/broken_large/000_mask.png": _png(mask),
    }


# --------------------------------------------------------------------------------------------------------
# VisA: split csv -> MVTec layout
# --------------------------------------------------------------------------------------------------------
def visa_tar(with_split: bool = True) -> tuple[bytes, bytes]:
    """A tiny VisA-shaped tar (two categories) and its 1cls split csv."""
    files, rows = {}, ["object,split,label,image,mask"]
    for k, cat in enumerate(("candle", "pcb1")):
        for i, split in enumerate(("train", "train", "test")):
            img = f"{cat}/Data/Images/Normal/{i:04d}.JPG"
            files[img] = _jpg(10 * k + i)
            rows.append(f"{cat},{split},normal,{img},")
        img, msk = f"{cat}/Data/Images/Anomaly/000.JPG", f"{cat}/Data/Masks/Anomaly/000.png"
        mask = np.zeros((24, 32), np.uint8)
        mask[4:10, 5:15] = 3  # VisA masks hold defect ids, not 255
        files[img], files[msk] = _jpg(10 * k + 9), _png(mask)
        rows.append(f"{cat},test,anomaly,{img},{msk}")
        files[f"{cat}/image_anno.csv"] = b"image,label,mask\n"
    split = ("\n".join(rows) + "\n").encode()
    if with_split:
        files["split_csv/1cls.csv"] = split
    return make_tar(files, mode="w"), split


def test_visa_is_converted_to_mvtec_layout(server, tmp_path):
    body, _ = visa_tar()
    url, sha = serve(server, "/VisA_20220922.tar", body)
    out = tmp_path / "visa"
    dl.download_visa(out, ["candle", "pcb1"], url=url, sha256=sha, transfer=QUIET)
    for cat in ("candle", "pcb1"):
        c = out / cat
        assert sorted(p.name for p in (c / "train" / "good").iterdir()) == ["0000.JPG", "0001.JPG"]
        assert [p.name for p in (c / "test" / "good").iterdir()] == ["0002.JPG"]
        assert [p.name for p in (c / "test" / "bad").iterdir()] == ["000.JPG"]
        mask = np.asarray(Image.open(c / "ground_truth" / "bad" / "000_mask.png"))
        assert set(np.unique(mask)) == {0, 255} and (mask == 255).sum() == 6 * 10
    test = MVTecDataset(out, "test", image_size=32)
    assert test.counts() == {"candle": {"good": 1, "bad": 1}, "pcb1": {"good": 1, "bad": 1}}
    assert sorted(p.name for p in out.iterdir()) == ["DOWNLOADS.json", "candle", "pcb1"]


def test_visa_split_fetched_separately_when_the_tar_lacks_it(server, tmp_path):
    body, split = visa_tar(with_split=False)
    url, sha = serve(server, "/VisA.tar", body)
    split_url, _ = serve(server, "/1cls.csv", split)
    out = tmp_path / "visa"
    dl.download_visa(out, ["pcb1"], url=url, sha256=sha, split_csv=split_url, transfer=QUIET)
    assert sorted(p.name for p in out.iterdir()) == ["DOWNLOADS.json", "pcb1"]
    assert len(MVTecDataset(out, "train", image_size=32)) == 2


def test_unknown_category_lists_the_valid_ones(tmp_path):
    with pytest.raises(dl.DownloadError, match="unknown VisA categories.*candle"):
        dl.download_visa(tmp_path / "v", ["bottle"])


# --------------------------------------------------------------------------------------------------------
# command line and scripts: messages, not tracebacks
# --------------------------------------------------------------------------------------------------------
def test_cli_data_mvtec_and_its_errors(server, tmp_path, capsys):
    from unistad_edu.__main__ import main

    url, sha = serve(server, "/bottle.tar.xz", mvtec_category())
    out = tmp_path / "mvtec"
    args = [
        "data",
        "mvtec",
        "--out",
        str(out),
        "--categories",
        "bottle",
        "--url",
        url,
        "--no-progress",
        "--retries",
        "0",
    ]
    assert main(args + ["--sha256", "f" * 64]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checksum mismatch") and "Traceback" not in err
    assert main(args + ["--sha256", sha]) == 0
    assert "1 categories ready" in capsys.readouterr().out
    assert (
        main(["data", "mvtec", "--out", str(out), "--categories", "bottle,cable", "--url", url])
        == 2
    )
    assert "one archive" in capsys.readouterr().err


def test_scripts_wrap_the_package(server, tmp_path, monkeypatch, capsys):
    body, _ = visa_tar()
    url, sha = serve(server, "/VisA.tar", body)
    out = tmp_path / "visa"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "download_visa.py",
            "--out",
            str(out),
            "--categories",
            "candle",
            "--url",
            url,
            "--sha256",
            sha,
            "--no-progress",
        ],
    )
    with pytest.raises(SystemExit) as ok:
        runpy.run_path(str(REPO / "data_scripts" / "download_visa.py"), run_name="__main__")
    assert (
        ok.value.code == 0 and (out / "candle" / "ground_truth" / "bad" / "000_mask.png").is_file()
    )
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "download_mvtec.py",
            "--out",
            str(tmp_path / "m"),
            "--categories",
            "grid",
            "--url",
            server.base + "/nope.tar.xz",
            "--no-progress",
        ],
    )
    with pytest.raises(SystemExit) as bad:
        runpy.run_path(str(REPO / "data_scripts" / "download_mvtec.py"), run_name="__main__")
    assert bad.value.code == 2 and "HTTP 404" in capsys.readouterr().err
