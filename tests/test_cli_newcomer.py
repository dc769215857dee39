"""The first ten minutes of a new user: version, console script, help texts, early refusals, the predict
picture at a fixed scale, the out-of-range notice."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unistad_edu import __main__ as cli
from unistad_edu import __version__

from .conftest import REPO, tiny_synthetic


def _help(*argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args([*argv, "--help"])
    assert exit_.value.code == 0
    return ""


def _help_text(capsys, *argv) -> str:
    _help(*argv)
    return capsys.readouterr().out


def test_version_and_console_script():
    r = subprocess.run(
        [sys.executable, "-m", "unistad_edu", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and r.stdout.strip() == f"unistad-edu {__version__}"
    script = shutil.which("unistad-edu", path=str(Path(sys.executable).parent))
    assert script, "the documented unistad-edu console script is not installed beside this python"
    r = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and __version__ in r.stdout


def test_top_level_help_lists_every_subcommand_and_only_existing_documents(capsys):
    text = _help_text(capsys)
    for command in ("data", "train", "eval", "predict", "bench", "figures", "demo"):
        assert re.search(rf"^\s+{command}\s", text, re.M), command
    docs = set(re.findall(r"[\w/.-]+\.md", text))
    assert docs, "the help names the documents to read"
    for doc in docs:
        assert (REPO / doc).is_file(), f"help names {doc}, which is not in the repository"


def test_train_help_lists_methods_presets_defaults_and_an_example(capsys):
    from unistad_edu.methods import METHODS

    text = _help_text(capsys, "train")
    for name, cls in METHODS.items():
        assert name in text
        for preset in cls.presets:
            assert preset in text
    assert "(default: stpm)" in text and "(default: auto)" in text  # defaults shown
    assert "example:" in text and "python -m unistad_edu train --method" in text


def test_each_bench_subcommand_has_its_own_options(capsys):
    prec = _help_text(capsys, "bench", "precision")
    acc = _help_text(capsys, "bench", "accuracy")
    assert "--methods" in prec and "--protocol" not in prec
    assert "--protocol" in acc and "--image-size" not in acc and "--methods" not in acc
    top = _help_text(capsys, "bench")
    for what in ("teacher", "precision", "train", "infer", "accuracy", "leaderboard"):
        assert what in top


@pytest.mark.parametrize(
    "flag, value, word",
    [("--method", "stmp", "unknown method 'stmp'"), ("--preset", "gpu", "unknown preset 'gpu'")],
)
def test_unknown_method_or_preset_is_refused_before_any_data_work(
    flag, value, word, tmp_path, monkeypatch, capsys
):
    import unistad_edu.data as data
    import unistad_edu.teacher as teacher

    def boom(*a, **k):
        raise AssertionError("data or teacher work started before the method was checked")

    monkeypatch.setattr(data, "discover_categories", boom)
    monkeypatch.setattr(data, "default_data_root", boom)
    monkeypatch.setattr(teacher, "load_teacher", boom)
    monkeypatch.setenv("UNISTAD_CACHE", str(tmp_path / "cache"))
    code = cli.main(["train", flag, value, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and word in err and "available" in err
    assert not (tmp_path / "cache" / "synthetic").exists() and not (tmp_path / "run").exists()


def test_time_left_covers_the_whole_run():
    from unistad_edu.engine import run_time_left

    recs = [{"seconds": 10.0}, {"seconds": 14.0}]
    assert run_time_left(recs, 3, None, 24.0) == "about 36 s left in the run (3 epochs to go)"
    assert run_time_left(recs, 30, None, 24.0) == "about 6.0 min left in the run (30 epochs to go)"
    assert "(time budget)" in run_time_left(recs, 30, 60.0, 24.0)  # a budget ends the run sooner
    assert run_time_left(recs, 0, None, 24.0).startswith("last epoch")


def test_unlike_training_against_hand_made_statistics():
    from unistad_edu.report import unlike_training

    stats = {
        "per_class": {
            "a": {"n": 5, "mean": 1.0, "std": 0.1, "max": 1.2},
            "b": {"n": 5, "mean": 3.0, "std": 0.5, "max": 4.0},
        }
    }
    # a: spread 0.2, b: spread 1.0 -> far needs > 1.2 + 10*0.2 = 3.2 and > 4.0 + 10*1.0 = 14.0
    assert unlike_training(13.9, stats) is None  # within b's range
    note = unlike_training(14.5, stats)
    assert note and note.startswith("unlike anything this model was trained on")
    assert unlike_training(float("nan"), stats) is None and unlike_training(99.0, {}) is None


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    data = tiny_synthetic(tmp_path_factory, 64, n_train=8)
    run = tmp_path_factory.mktemp("run") / "r"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "unistad_edu",
            "train",
            "--data",
            str(data),
            "--image-size",
            "64",
            "--epochs",
            "1",
            "--out",
            str(run),
            "--no-progress",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    return data, run


def _predict(run, images, out, *extra):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "unistad_edu",
            "predict",
            "--run",
            str(run),
            *map(str, images),
            "--out",
            str(out),
            "--threads",
            "1",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return [json.loads(line) for line in r.stdout.strip().splitlines()]


@pytest.mark.slow  # over 30 s on a 2-core CPU
def test_predict_png_uses_the_fixed_scale_with_colour_bar_and_verdict(tiny_run, tmp_path):
    from unistad_edu.viz import colorize, prediction_figure

    data, run = tiny_run
    image = sorted(data.glob("*/test/good/*.png"))[0]
    cfg = json.loads((run / "config.json").read_text())
    # a threshold far above the score: on the fixed scale the picture must stay cold (nothing near red)
    (rec,) = _predict(run, [image], tmp_path / "p", "--threshold", "1e6")
    assert rec["verdict"] == "normal" and rec["threshold"] == 1e6 and cfg["threshold"] != 1e6
    png = np.asarray(Image.open(rec["heatmap"]).convert("RGB"))
    img = np.zeros((64, 64, 3), np.uint8)
    _, layout = prediction_figure(
        img,
        np.zeros((64, 64), np.float32),
        rec["score"],
        1e6,
        verdict="normal",
        title=image.name,
        return_layout=True,
    )
    x0, y0, x1, y1 = layout["overlay"]
    over = png[y0:y1, x0:x1].astype(int)
    hot = colorize(np.array([[0.0, 1.0]]))[0, 1].astype(int)  # the top of the colour scale
    base = np.asarray(Image.open(image).convert("RGB").resize((64, 64))).astype(int)
    # every overlay pixel is 0.5 image + 0.5 colour; the colour must be the cold end, never the hot one
    colour = 2 * over - base
    cold = colorize(np.array([[0.0, 1.0]]))[0, 0].astype(int)  # the bottom of the colour scale
    assert np.abs(colour - hot).sum(axis=-1).min() > 100  # nowhere near red
    assert np.abs(colour - cold).sum(axis=-1).max() < 20  # everything at the cold end
    bx0, by0, bx1, by1 = layout["colorbar"]
    assert png[by0 + 1 : by1 - 1, bx0 + 1 : bx1 - 1].std() > 10  # the colour bar is drawn
    cx0, cy0, cx1, cy1 = layout["verdict"]
    cap = png[cy0:cy1, cx0:cx1].astype(int)
    assert ((cap[..., 1] > 100) & (cap[..., 0] < 80)).any()  # "normal" written in green
    # the same image per-image stretched (--scale image) does show hot pixels
    (rec2,) = _predict(run, [image], tmp_path / "q", "--threshold", "1e6", "--scale", "image")
    png2 = np.asarray(Image.open(rec2["heatmap"]).convert("RGB"))
    colour2 = 2 * png2[y0:y1, x0:x1].astype(int) - base
    assert np.abs(colour2 - hot).sum(axis=-1).min() < 40


@pytest.mark.slow  # over 30 s on a 2-core CPU
def test_predict_and_demo_record_say_when_an_image_is_unlike_the_training_data(tiny_run, tmp_path):
    data, run = tiny_run
    image = sorted(data.glob("*/test/good/*.png"))[0]
    (plain,) = _predict(run, [image], tmp_path / "a")
    assert (
        "notice" not in plain and plain["category"] == image.parts[-4]
    )  # a trained product, routed to it
    # a flat grey frame: its teacher embedding is far from every training category
    from PIL import Image

    grey = tmp_path / "grey.png"
    Image.new("RGB", (64, 64), (128, 128, 128)).save(grey)
    (odd,) = _predict(run, [grey], tmp_path / "g")
    assert odd["notice"].startswith("unlike anything this model was trained on")
    # a run with one global threshold (saved before routing) says it from the score: every category's normal
    # range shrunk far below this image's score
    far = tmp_path / "far"
    shutil.copytree(run, far)
    cfg = json.loads((far / "config.json").read_text())
    del cfg["calibration"]
    for stats in cfg["validation"]["per_class"].values():
        stats.update(mean=plain["score"] / 100, max=plain["score"] / 50)
    (far / "config.json").write_text(json.dumps(cfg))
    (rec,) = _predict(far, [image], tmp_path / "b")
    assert (
        rec["notice"].startswith("unlike anything this model was trained on")
        and rec["category"] is None
    )
    from unistad_edu.demo.logic import result_record

    out = result_record([{"name": "x.png", "score": 1.0, "notice": rec["notice"]}], [], 0.5)
    assert out["results"][0]["notice"] == rec["notice"]
