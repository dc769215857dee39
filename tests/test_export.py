"""Export (``python -m unistad_edu export``): every registered method becomes one ONNX graph (and OpenVINO IR)
from the image to the anomaly map and the image score, and the served export gives the PyTorch model's answers.

The reference is the run itself, scored by ``inference.predict`` in fp32 on the test images (at batch sizes the
export never saw); the tolerance is :data:`unistad_edu.export.PARITY_TOLERANCE` of the threshold, for every map
pixel and score, and every verdict identical. ``predict`` and the demo serve an export in a child process in
which ``import torch`` fails, so nothing in the serving path can lean on PyTorch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unistad_edu import __version__
from unistad_edu.checkpoint import load_checkpoint
from unistad_edu.data import MVTecDataset
from unistad_edu.engine import TrainConfig, fit
from unistad_edu.errors import CheckpointError
from unistad_edu.export import PARITY_TOLERANCE, export_run
from unistad_edu.export_runtime import CARD_FILE, EXPORT_FORMAT_VERSION, ExportedModel, read_card
from unistad_edu.inference import predict
from unistad_edu.methods import METHODS, build_model

from .test_contract import SMALL  # smaller networks than the cpu presets

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.slow,
]  # one torch thread; most tests export

SIZE = 64
NAMES = sorted(METHODS)
REPO = Path(__file__).resolve().parents[1]
QUIET = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from unistad_edu.synthetic import make_synthetic

    return make_synthetic(
        tmp_path_factory.mktemp("syn") / "tiny",
        size=SIZE,
        n_train=8,
        n_test_good=2,
        n_test_defect=2,
        categories=("weave", "bolt"),
    )


@pytest.fixture(scope="module")
def test_paths(data) -> list[str]:
    return [
        str(p) for p in sorted(data.glob("*/test/*/*.png"))
    ]  # good and defective, two categories


@pytest.fixture(scope="module")
def trained(data, lite0_teacher, tmp_path_factory):
    """name -> a run folder trained for one epoch (each method once per module)."""
    runs = {}

    def get(name: str) -> Path:
        if name not in runs:
            before = lite0_teacher.precision
            lite0_teacher.precision = "fp32"
            try:
                model = build_model(
                    name, lite0_teacher, image_size=SIZE, **{"batch_size": 4, **SMALL.get(name, {})}
                )
                out = tmp_path_factory.mktemp(f"run_{name}")
                fit(
                    model,
                    MVTecDataset(data, "train", image_size=SIZE),
                    TrainConfig(epochs=1, progress=False, precision="fp32"),
                    out=out,
                )
            finally:
                lite0_teacher.precision = before
            runs[name] = out
        return runs[name]

    return get


@pytest.fixture(scope="module")
def stpm_export(trained, tmp_path_factory):
    """(run, export folder, what the command printed): the STPM run exported once by the CLI, shared by the
    tests below that only read an export (an export traces the model and checks it in two runtimes)."""
    import contextlib
    import io

    from unistad_edu.__main__ import main

    run, out, said = trained("stpm"), tmp_path_factory.mktemp("stpm_export") / "exp", io.StringIO()
    with contextlib.redirect_stdout(said):
        assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(out)]) == 0
    return run, out, said.getvalue()


def _reference(run: Path, paths, lite0_teacher) -> list[dict]:
    before = lite0_teacher.precision
    try:
        return predict(
            load_checkpoint(run, teacher=lite0_teacher), paths, batch_size=8, precision="fp32"
        )
    finally:
        lite0_teacher.precision = before  # the session's teacher as the other modules expect it


def _assert_parity(ref: list[dict], got: list[dict], threshold: float):
    assert len(ref) == len(got)
    d_map = max(float(np.abs(r["anomaly_map"] - g["anomaly_map"]).max()) for r, g in zip(ref, got))
    d_score = max(abs(r["score"] - g["score"]) for r, g in zip(ref, got))
    assert max(d_map, d_score) <= PARITY_TOLERANCE * threshold, (
        d_map,
        d_score,
        threshold,
        [round(r["score"], 4) for r in ref],
        [round(g["score"], 4) for g in got],
    )
    assert [r["anomalous"] for r in ref] == [g["anomalous"] for g in got]
    # routing travels with the export: the same category and its threshold for every image
    assert [r["category"] for r in ref] == [g["category"] for g in got]
    assert [r["threshold"] for r in ref] == pytest.approx([g["threshold"] for g in got])
    assert all(r["category"] is not None for r in ref)
    for r, g in zip(ref, got):
        np.testing.assert_array_equal(
            r["image"], g["image"]
        )  # the same decoded, resized picture went in


@pytest.mark.parametrize("name", NAMES)
def test_every_method_exports_to_onnx_and_both_runtimes_reproduce_it(
    name, trained, stpm_export, test_paths, lite0_teacher, tmp_path
):
    run = trained(name)
    cfg = json.loads((run / "config.json").read_text())
    if name == "stpm":  # the module's shared export of this run, by the CLI
        out = stpm_export[1]
    else:
        out = export_run(run, "onnx", out=tmp_path / "exp", **QUIET)
    card = json.loads((out / CARD_FILE).read_text())
    assert card["method"] == name and card["image_size"] == SIZE and card["precision"] == "fp32"
    assert card["threshold"] == cfg["threshold"] and card["save_id"] == cfg["save_id"]
    assert card["teacher"] == cfg["teacher"] and card["package_version"] == __version__
    assert card["threshold_rule"] == cfg.get("threshold_rule")
    assert card["calibration"] == cfg["calibration"] and "embedding" in card["outputs"]
    assert card["exporter"].endswith(
        "(dynamo=False)"
    )  # the fast TorchScript exporter for every method
    assert all(p["routes_differ"] == 0 for p in card["parity"].values())
    assert card["export_format_version"] == EXPORT_FORMAT_VERSION and set(card["files"]) == {
        "model.onnx"
    }
    assert set(card["parity"]) == {
        "onnxruntime",
        "openvino",
    }  # export_run's own check, both runtimes
    assert not list(out.parent.glob(f".{out.name}.build-*"))  # written beside, renamed into place
    ref = _reference(run, test_paths, lite0_teacher)
    thr = cfg["threshold"]
    for backend in ("onnxruntime", "openvino"):  # OpenVINO reads the ONNX file too
        served = ExportedModel(out, backend=backend, threads=1)
        _assert_parity(
            ref, served.predict(test_paths, batch_size=3), thr
        )  # batches of 3 (and a rest): dynamic
        one = served.predict(test_paths[:1], batch_size=1)[0]
        assert abs(one["score"] - ref[0]["score"]) <= PARITY_TOLERANCE * thr


@pytest.mark.parametrize("name", ["memory_bank", "stpm"])
def test_openvino_format_export(name, trained, test_paths, lite0_teacher, tmp_path):
    run = trained(name)
    out = export_run(run, "openvino", out=tmp_path / "ov", **QUIET)
    card = read_card(out)
    assert card["format"] == "openvino" and set(card["files"]) == {"model.xml", "model.bin"}
    served = ExportedModel(out, threads=1)
    assert served.backend.startswith("OpenVINO")
    _assert_parity(
        _reference(run, test_paths, lite0_teacher), served.predict(test_paths), card["threshold"]
    )
    with pytest.raises(CheckpointError, match="OpenVINO model"):
        ExportedModel(out, backend="onnxruntime")


def test_the_dynamo_exporter_takes_over_where_torchscript_fails(
    trained, test_paths, lite0_teacher, tmp_path, monkeypatch
):
    import unistad_edu.export as export

    def fails(*args):
        raise RuntimeError("no TorchScript exporter in this PyTorch")

    monkeypatch.setattr(export, "_torchscript_to_onnx", fails)
    run = trained("memory_bank")  # the quickest graph to trace with dynamo
    with pytest.raises(RuntimeError, match="no TorchScript"):  # asked for by name: no fallback
        export_run(run, "onnx", out=tmp_path / "ts", exporter="torchscript", **QUIET)
    assert not (tmp_path / "ts").exists()
    out = export_run(run, "onnx", out=tmp_path / "auto", **QUIET)
    card = read_card(out)
    assert card["exporter"].endswith("(dynamo=True)")
    served = ExportedModel(out, backend="onnxruntime", threads=1)
    _assert_parity(
        _reference(run, test_paths, lite0_teacher), served.predict(test_paths), card["threshold"]
    )
    with pytest.raises(ValueError, match="exporter must be one of"):
        export_run(run, "onnx", out=tmp_path / "x", exporter="jit", **QUIET)


def test_export_refuses_to_overwrite_and_replaces_with_overwrite(stpm_export, tmp_path):
    run, shared, _ = stpm_export
    out = tmp_path / "e"
    shutil.copytree(shared, out)  # an export folder of this run, as export_run wrote it
    (out / "mine.txt").write_text("a file of the user's")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_run(run, "onnx", out=out, **QUIET)
    assert (out / "mine.txt").is_file()  # refused: nothing touched
    with pytest.raises(
        CheckpointError, match="also holds mine.txt"
    ):  # --overwrite deletes only an export's files
        export_run(run, "onnx", out=out, overwrite=True, **QUIET)
    assert (out / "mine.txt").is_file()
    (out / "mine.txt").unlink()
    old_folder = out.stat().st_ino
    export_run(run, "onnx", out=out, overwrite=True, **QUIET)
    assert (
        read_card(out)["format"] == "onnx" and out.stat().st_ino != old_folder
    )  # replaced as a whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]  # no temporary or old folder left


# ---- serving without torch ----------------------------------------------------------------------------------
def _no_torch_env(tmp_path: Path) -> dict:
    """An environment in which ``import torch`` fails (a sitecustomize that blocks it)."""
    block = tmp_path / "no_torch"
    block.mkdir(exist_ok=True)
    (block / "sitecustomize.py").write_text(
        "import sys\nsys.modules['torch'] = None  # import torch fails\n"
    )
    path = os.pathsep.join([str(block), str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def test_the_blocker_blocks_torch(tmp_path):
    res = subprocess.run(
        [sys.executable, "-c", "import torch"],
        env=_no_torch_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert res.returncode != 0 and "torch" in res.stderr


def _records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_predict_serves_an_export_without_torch_with_the_runs_verdicts(
    stpm_export, test_paths, tmp_path, capsys
):
    from unistad_edu.__main__ import main

    run, out, _ = stpm_export
    assert (
        main(
            [
                "predict",
                "--run",
                str(run),
                *test_paths,
                "--precision",
                "fp32",
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 0
    )
    source = _records(capsys.readouterr().out)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "unistad_edu",
            "predict",
            "--run",
            str(out),
            *test_paths,
            "--out",
            str(tmp_path / "b"),
        ],
        env=_no_torch_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "served by onnxruntime" in res.stderr
    served = _records(res.stdout)
    assert [r["verdict"] for r in served] == [r["verdict"] for r in source]
    assert [r["category"] for r in served] == [r["category"] for r in source]
    thr = source[0]["threshold"]
    assert served[0]["threshold"] == thr
    assert (
        max(abs(a["score"] - b["score"]) for a, b in zip(served, source)) <= PARITY_TOLERANCE * thr
    )
    assert all(Path(r["heatmap"]).is_file() for r in served)


def test_demo_serves_an_export_without_torch(stpm_export, test_paths, lite0_teacher, tmp_path):
    import urllib.request

    from gradio_client import Client, handle_file

    from unistad_edu.demo import serving

    run, out, _ = stpm_export
    uploads = []  # unique file names (000.png repeats across categories and defect folders)
    for i, p in enumerate(test_paths[:8]):
        uploads.append(tmp_path / f"{i:02d}_{Path(p).parent.name}.png")
        shutil.copyfile(p, uploads[-1])
    uploads = [str(u) for u in uploads]
    ref = _reference(run, uploads, lite0_teacher)
    thr = read_card(out)["threshold"]
    with serving.serve_in_subprocess(out, log=lambda m: None, env=_no_torch_env(tmp_path)) as url:
        with urllib.request.urlopen(url + "config", timeout=10) as r:
            page = r.read().decode()
        assert "Served by:** onnxruntime" in page
        client = Client(url, verbose=False)
        *_, record = client.predict(
            [handle_file(p) for p in uploads], thr, "fixed", api_name="/predict"
        )
    got = record["results"]  # in upload order
    assert [g["name"] for g in got] == [Path(p).name for p in uploads]
    for g, r in zip(got, ref):
        assert (
            abs(g["score"] - r["score"]) <= PARITY_TOLERANCE * thr
            and g["anomalous"] == r["anomalous"]
        )


# ---- clear errors ------------------------------------------------------------------------------------------
def test_an_export_from_a_newer_version_or_with_a_missing_file_is_refused(
    stpm_export, tmp_path, test_paths
):
    from unistad_edu.__main__ import main

    _, out, _ = stpm_export
    card = json.loads((out / CARD_FILE).read_text())

    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "model.onnx").write_bytes((out / "model.onnx").read_bytes())
    (newer / CARD_FILE).write_text(
        json.dumps(
            {**card, "export_format_version": EXPORT_FORMAT_VERSION + 1, "package_version": "9.0.0"}
        )
    )
    with pytest.raises(CheckpointError, match=r"newer|9\.0\.0.*upgrade"):
        ExportedModel(newer)

    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="missing model.onnx"):
        ExportedModel(missing)
    assert main(["predict", "--run", str(missing), test_paths[0]]) == 2

    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / CARD_FILE).write_text(json.dumps(card))
    (changed / "model.onnx").write_bytes((out / "model.onnx").read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="SHA-256"):
        ExportedModel(changed)


def test_export_cli(stpm_export, tmp_path, capsys):
    from unistad_edu.__main__ import main

    run, out, said = stpm_export  # written by `export --run RUN --format onnx --out OUT`
    assert "parity" in said and read_card(out)["format"] == "onnx"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["export", "--run", str(run), "--out", str(out)]) == 2  # exists, no --overwrite
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # refused: nothing touched
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", "--run", str(tmp_path / "nope")]) == 2


def test_bench_export_measures_parity_and_speed_of_every_backend(
    trained, data, test_paths, tmp_path
):
    from unistad_edu.__main__ import main

    run = trained("stpm")
    md = tmp_path / "bench.md"
    assert (
        main(
            [
                "bench",
                "export",
                "--entry",
                "stpm",
                str(run),
                "--data",
                str(data),
                "--n-images",
                "4",
                "--repeats",
                "1",
                "--precision",
                "fp32",
                "--json",
                str(tmp_path / "b.json"),
                "--markdown",
                str(md),
                "--out-dir",
                str(tmp_path / "exports"),
            ]
        )
        == 0
    )
    (row,) = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert row["test_images"] == len(test_paths) and set(row["batch1_ms_per_image"]) == {
        "pytorch_fp32",
        "onnxruntime",
        "openvino",
    }
    for backend in ("onnxruntime", "openvino"):
        p = row["parity"][backend]
        assert (
            p["within_tolerance"]
            and p["verdicts_differ"] == 0
            and set(p["categories"]) == {"weave", "bolt"}
        )
    text = md.read_text()
    assert "### bench export" in text and f"| stpm | stpm | {len(test_paths)} |" in text


@pytest.mark.parametrize("n_in,n_out", [(64, 16), (16, 8), (37, 11), (8, 16), (64, 224), (16, 16)])
def test_antialias_weights_are_torchs_antialiased_bilinear_resize(n_in, n_out):
    """The exported form of an antialiased resize (two matrix products) against F.interpolate itself."""
    import torch
    import torch.nn.functional as F

    from unistad_edu.layers import antialias_weights

    x = torch.rand(2, 3, n_in, n_in, generator=torch.Generator().manual_seed(0))
    want = F.interpolate(
        x, size=(n_out, n_out), mode="bilinear", antialias=True, align_corners=False
    )
    w = antialias_weights(n_in, n_out)  # (n_out, n_in)
    assert w.shape == (n_out, n_in)
    torch.testing.assert_close(w @ x @ w.t(), want, atol=1e-5, rtol=1e-5)


def test_tracing_sees_in_place_activations_out_of_place_and_they_are_restored(
    lite0_teacher, monkeypatch, tmp_path
):
    """The exporter traces with every ``inplace=True`` module switched off (the same graph, decomposed faster)
    and the model gets its flags back afterwards, also when tracing fails."""
    import unistad_edu.export as E

    model = build_model("stpm", lite0_teacher, image_size=SIZE).eval()
    flagged = [m for m in model.modules() if getattr(m, "inplace", None) is True]
    assert flagged  # timm's BN + activation modules run in place
    seen = []

    def fake_trace(graph, size, path, opset, exporter):
        seen.append([m.inplace for m in flagged])
        raise RuntimeError("stop before the slow part")

    monkeypatch.setattr(E, "_trace_to_onnx", fake_trace)
    with pytest.raises(RuntimeError, match="stop before"):
        E._export_onnx(model, SIZE, tmp_path / "m.onnx", 18)
    assert seen == [[False] * len(flagged)]
    assert all(m.inplace is True for m in flagged)
