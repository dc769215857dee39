"""The demo's logic without a browser: safe upload decoding, default run, model card, CLI defaults, and a small
load test of the running app over loopback with gradio_client (none of the requests may fail)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unistad_edu import resolve
from unistad_edu.demo import logic, serving

from .conftest import DEMO_SPEC as TINY_SPEC

REPO = Path(__file__).resolve().parents[1]


# ---- safe decoding ----------------------------------------------------------------------------------------
def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height but which holds (almost) no pixel data: a bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )
    return path


def _refused(path, **kw) -> str:
    with pytest.raises(logic.UploadError) as info:
        logic.decode_upload(path, **kw)
    return str(info.value)


def test_empty_file_is_refused(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    msg = _refused(p)
    assert "empty.png" in msg and "0-byte" in msg


def test_text_renamed_png_is_refused(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("these are my notes, not a picture\n" * 5)
    msg = _refused(p, name="notes.png")
    assert "notes.png" in msg and "text file" in msg and "PNG" in msg
    assert str(tmp_path) not in msg  # the server's temp path is not shown to the user


def test_binary_junk_is_refused(tmp_path):
    p = tmp_path / "junk.jpg"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    assert "not an image" in _refused(p)


def test_truncated_png_is_refused(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        good
    )
    data = good.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    msg = _refused(cut)
    assert "cut.png" in msg and "truncated" in msg


def test_huge_dimensions_hit_the_pixel_cap_before_decoding(tmp_path):
    p = _png_header_only(tmp_path / "huge.png", 9000, 6000)  # 54 MP > the 40 MP default cap
    msg = _refused(p)
    assert "pixel cap" in msg and "9000 x 6000" in msg
    small = tmp_path / "small.png"
    Image.new("RGB", (300, 200)).save(small)
    assert "pixel cap" in _refused(small, max_pixels=50_000)  # the cap is configurable


def test_decompression_bomb_is_refused(tmp_path):
    p = _png_header_only(
        tmp_path / "bomb.png", 40000, 40000
    )  # 1600 MP: Pillow's own bomb guard fires
    msg = _refused(p)
    assert "bomb" in msg or "pixel cap" in msg


def test_unsupported_format_is_refused(tmp_path):
    p = tmp_path / "pic.ppm"
    Image.new("RGB", (16, 16)).save(p)
    assert "PPM" in _refused(p)


@pytest.mark.parametrize("kind", ["rgb", "rgba", "gray", "gray16", "palette", "la", "rgb_jpeg"])
def test_image_modes_decode_to_rgb_uint8(tmp_path, kind):
    rng = np.random.default_rng(1)
    p = tmp_path / f"{kind}.png"
    if kind == "rgb":
        img = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    elif kind == "rgba":
        arr = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
        arr[..., 3] = 255
        img = Image.fromarray(arr, mode="RGBA")
    elif kind == "gray":
        img = Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8))
    elif kind == "gray16":
        arr = np.zeros((20, 30), np.uint16)
        arr[:, :10], arr[:, 10:20], arr[:, 20:] = 0, 32896, 65535
        img = Image.fromarray(arr)
    elif kind == "palette":
        img = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).convert("P")
    elif kind == "la":
        img = Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8)).convert("LA")
    else:
        p = tmp_path / "photo.jpg"
        img = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    img.save(p)
    d = logic.decode_upload(p)
    assert d.array.shape == (20, 30, 3) and d.array.dtype == np.uint8
    if kind == "gray16":
        assert Image.open(p).mode.startswith("I")
        assert "16-bit" in d.note
        np.testing.assert_array_equal(
            d.array[0, [0, 15, 25], 0], [0, 128, 255]
        )  # rescaled, not clipped
    if kind == "rgba":
        assert "alpha" in d.note
        np.testing.assert_array_equal(
            d.array, np.asarray(img)[..., :3]
        )  # opaque alpha: pixels unchanged
    if kind == "gray":
        assert np.all(d.array[..., 0] == d.array[..., 2])


# ---- CLI defaults ---------------------------------------------------------------------------------------
def test_demo_binds_loopback_by_default():
    from unistad_edu.__main__ import build_parser

    args = build_parser().parse_args(["demo"])
    assert args.host == "127.0.0.1" == logic.DEFAULT_HOST and args.port == 7860 and args.run is None
    assert args.concurrency >= 1 and args.max_upload_mb > 0
    assert logic.is_loopback(args.host) and not logic.is_loopback("0.0.0.0")
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_app_script", REPO / "demo" / "app.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # demo/app.py is importable and exposes build_app / main
    assert callable(mod.build_app) and callable(mod.main)


def test_demo_cli_refuses_a_wrong_run_folder(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "unistad_edu", "demo", "--run", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_default_run_dir_honours_unistad_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("UNISTAD_CACHE", str(tmp_path))
    assert resolve.default_run_dir() == tmp_path / "demo_run"


# ---- model card, examples, default run ------------------------------------------------------------------
def test_model_card_lists_what_a_user_needs():
    cfg = {
        "method": "uniad",
        "teacher": {
            "name": "tf_efficientnet_lite0",
            "layers": ["blocks.1", "blocks.2"],
            "weights_source": "package",
        },
        "train_categories": ["bolt", "weave"],
        "train_images": 40,
        "data_root": "/data/x",
        "image_size": 128,
        "threshold": 0.25,
        "threshold_rule": "quantile 0.99 of image scores of 4 held-out normal train images",
        "validation": {
            "per_class": {
                "bolt": {"n": 2, "mean": 0.2, "max": 0.24},
                "weave": {"n": 2, "mean": 0.05, "max": 0.06},
            }
        },
    }
    metrics = {
        "setting": "unified",
        "categories": {
            "bolt": {"I-AUROC": 0.9, "P-AUROC": 0.95},
            "weave": {"I-AUROC": 0.8, "P-AUROC": 0.85},
        },
        "mean": {"I-AUROC": 0.85, "P-AUROC": 0.9},
    }
    card = logic.model_card(cfg, metrics)
    for text in (
        "UNIAD",
        "tf_efficientnet_lite0",
        "bolt, weave",
        "128 x 128",
        "0.25",
        "quantile 0.99",
        "| bolt | 90.0 | 95.0 |",
        "| **mean** | 85.0 | 90.0 |",
    ):
        assert text in card, text
    assert "eval --run" in logic.model_card(
        cfg, None
    )  # says how to get metrics when there are none


def test_verdict_and_slider():
    assert logic.verdict(0.3, 0.2) == "ANOMALOUS" and logic.verdict(0.1, 0.2) == "normal"
    assert logic.verdict(0.1, None) == "no threshold"
    top, step, value = logic.slider_range(
        {"threshold": 0.2, "validation": {"per_class": {"a": {"max": 0.3}}}}
    )
    assert value == 0.2 and top >= 0.9 and 0 < step < top


@pytest.fixture(scope="module")
def tiny_data(demo_data) -> Path:
    return demo_data


@pytest.fixture(scope="module")
def tiny_run(demo_run) -> Path:
    return demo_run


def test_default_run_is_trained_once_then_reused(tiny_run, tiny_data):
    for name in ("model.safetensors", "config.json", "metrics.json", resolve.DEFAULT_MARKER):
        assert (tiny_run / name).is_file(), name
    assert not list(
        tiny_run.parent.glob(".demo_run.build-*")
    )  # moved into place, nothing left behind
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["threshold"] is not None and Path(cfg["data_root"]) == tiny_data.resolve()
    said = []
    again = resolve.ensure_default_run(
        tiny_run, spec=TINY_SPEC, data_root=tiny_data, log=said.append
    )
    assert again == tiny_run and "using" in said[0]


def test_examples_hold_normal_and_defective_images(tiny_run):
    cfg = json.loads((tiny_run / "config.json").read_text())
    ex = logic.example_images(cfg)
    assert {e.category for e in ex} == {"weave", "bolt"}
    assert any(e.defect == "good" for e in ex) and any(e.defect != "good" for e in ex)
    assert all(e.path.is_file() for e in ex)
    assert logic.example_images({**cfg, "data_root": "/does/not/exist"}) == []


def test_app_builds_with_queue_and_upload_limit(tiny_run):
    import gradio as gr

    from unistad_edu.demo.page import build_app

    demo = build_app(tiny_run, concurrency=3, max_upload_mb=5)
    assert isinstance(demo, gr.Blocks)
    assert demo._queue.default_concurrency_limit == 3
    assert demo.unistad_launch["max_file_size"] == 5 * 1024 * 1024


def test_app_over_loopback_scores_refuses_and_keeps_serving(tiny_run, tiny_data, tmp_path):
    """gradio_client against the running app: good image, bad upload (clear message), good image again."""
    from gradio_client import Client, handle_file

    from unistad_edu.demo.page import build_app, launch

    demo = build_app(tiny_run)
    port = logic.free_port()
    launch(demo, "127.0.0.1", port, block=False, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        defect = sorted((tiny_data / "bolt" / "test").glob("[!g]*/*.png"))[0]
        status, table, heat, levels, record = client.predict(
            [handle_file(str(defect))], 0.1, "fixed", api_name="/predict"
        )
        assert (
            "anomaly score" in status
            and defect.name in table
            and len(heat) == 2
            and len(levels) >= 1
        )
        from unistad_edu import load_checkpoint, predict

        direct = predict(load_checkpoint(tiny_run), [str(defect)])[0]["score"]
        (res,) = record["results"]
        assert res["name"] == defect.name and record["threshold"] == 0.1 and record["errors"] == []
        assert res["score"] == pytest.approx(direct, rel=1e-5) and res["anomalous"] == (
            direct > 0.1
        )
        # the slider at its start: each image judged at its routed category's threshold, as predict does
        model = load_checkpoint(tiny_run)
        *_, record = client.predict(
            [handle_file(str(defect))], model.threshold, "fixed", api_name="/predict"
        )
        (res,) = record["results"]
        want = predict(model, [str(defect)])[0]
        assert res["category"] == want["category"] == "bolt"
        assert (
            res["threshold"] == pytest.approx(want["threshold"])
            and res["anomalous"] == want["anomalous"]
        )
        bad = tmp_path / "notes.png"
        bad.write_text("not an image\n")
        status, table, heat, _, record = client.predict(
            [handle_file(str(bad))], 0.1, "fixed", api_name="/predict"
        )
        assert (
            "refused" in status and "notes.png" in status and "text file" in status and heat == []
        )
        assert record["results"] == [] and "notes.png" in record["errors"][0]
        status, *_ = client.predict(
            [handle_file(str(defect)), handle_file(str(bad))], 0.1, "fixed", api_name="/predict"
        )
        assert (
            "anomaly score" in status and "refused" in status
        )  # one bad file does not spoil the batch
    finally:
        demo.close()


@pytest.mark.slow  # over 30 s on a 2-core CPU
def test_small_load_test_has_no_failures(tiny_run):
    """bench_demo as deployed: the app in a child process (python -m unistad_edu demo --run RUN), 10 requests
    from 4 client threads over loopback; none may fail."""
    import torch

    torch.set_num_threads(1)
    res = serving.bench_demo(tiny_run, n_requests=10, concurrency=4, warmup=1, log=lambda m: None)
    assert "child process" in res["app"]
    assert res["demo"]["failed"] == 0 and res["demo"]["ok"] == 10, res["demo"]["errors"]
    assert res["bare_predict_sequential"]["ok"] == 10
    assert res["demo"]["p95_ms"] >= res["demo"]["p50_ms"] > 0


def test_stopping_the_demo_deletes_the_uploads(tiny_run, tiny_data, tmp_path, monkeypatch):
    """SIGTERM stops the server cleanly, and a clean stop deletes the files it kept (uploads, rendered images)."""
    from gradio_client import Client, handle_file

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "server_files"))
    upload = tmp_path / "my_private_photo.png"
    shutil.copy(sorted((tiny_data / "bolt" / "test").glob("[!g]*/*.png"))[0], upload)
    with serving.serve_in_subprocess(tiny_run, log=lambda m: None) as url:
        client = Client(
            url, verbose=False, analytics_enabled=False, download_files=str(tmp_path / "client")
        )
        *_, record = client.predict([handle_file(str(upload))], 0.1, "fixed", api_name="/predict")
        assert record["results"][0]["name"] == upload.name
        kept = [p.name for p in (tmp_path / "server_files").rglob("*") if p.is_file()]
        assert upload.name in kept  # while serving, the upload is in the server's cache
    left = [p.name for p in (tmp_path / "server_files").rglob("*") if p.is_file()]
    assert upload.name not in left, left


def test_delete_cache_setting():
    assert logic.delete_cache_setting(0) is None and logic.delete_cache_setting(-1) is None
    assert logic.delete_cache_setting(60) == (1800, 3600)
    assert logic.delete_cache_setting(0.01) == (1, 1)
