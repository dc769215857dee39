"""Run folders stay consistent (issue 18): no training over another run without --overwrite (which deletes what
was derived from the old model), --resume refuses other settings, one writer per folder, temporary files of
killed writes are cleaned up on the next run, ``eval --json`` onto a folder, a full disk is a message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unistad_edu import __main__ as cli
from unistad_edu import files, runs

from .conftest import tiny_synthetic, train_args

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_synthetic(tmp_path_factory, 32, n_train=6, n_test_good=1, n_test_defect=1)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNISTAD_CACHE", str(tmp_path / "cache"))


def _train(data, out, *extra) -> tuple[int, str, str]:
    argv = train_args(data, out, 32, *extra)
    return cli.main(argv)


def test_training_over_an_evaluated_run_is_refused_and_overwrite_clears_its_metrics(
    data, tmp_path, capsys
):
    run = tmp_path / "run"
    assert _train(data, run) == 0
    assert cli.main(["eval", "--run", str(run), "--no-progress", "--precision", "fp32"]) == 0
    (run / "predictions").mkdir()
    (run / "predictions" / "000_x_heatmap.png").write_bytes(b"old")
    (run / "notes.txt").write_text("mine")  # not the package's: never deleted
    old_id = json.loads((run / "config.json").read_text())["save_id"]
    capsys.readouterr()

    assert _train(data, run, "--set", "lr=0.01") == 2
    err = capsys.readouterr().err
    assert "already holds a complete stpm run (1 epochs, evaluated)" in err and "--overwrite" in err
    assert json.loads((run / "config.json").read_text())["save_id"] == old_id  # untouched

    assert _train(data, run, "--overwrite") == 0
    out = capsys.readouterr().out
    assert "--overwrite: deleted the old run" in out and "metrics.json" in out
    assert (
        not (run / "metrics.json").exists() and not (run / "predictions").exists()
    )  # another model's numbers
    assert (run / "notes.txt").read_text() == "mine"
    assert json.loads((run / "config.json").read_text())["save_id"] != old_id
    assert sorted(p.name for p in run.iterdir()) == [
        "config.json",
        "model.safetensors",
        "notes.txt",
        "train_log.jsonl",
        "train_state.safetensors",
    ]  # no .lock left


@pytest.mark.parametrize(
    "change, words",
    [
        (["--image-size", "48"], "image size: saved 32, now 48"),
        (["--categories", "weave"], "categories: saved ['bolt', 'weave'], now ['weave']"),
        (["--method", "rd"], "method: saved 'stpm', now 'rd'"),
        (["--precision", "bf16"], "precision: saved 'fp32', now 'bf16'"),
    ],
    ids=["image-size", "categories", "method", "precision"],
)
def test_resume_with_other_settings_is_refused_naming_them(data, tmp_path, capsys, change, words):
    run = tmp_path / "run"
    assert _train(data, run, "--max-minutes", "0.0001") == 0  # stops after epoch 1 of 1: complete
    capsys.readouterr()
    assert _train(data, run, "--resume", *change) == 2
    err = capsys.readouterr().err
    assert "--resume refused" in err and words in err, err


def test_resume_with_another_data_root_is_refused(data, tmp_path, capsys):
    import shutil

    run, other = tmp_path / "run", tmp_path / "copy"
    shutil.copytree(data, other)
    assert _train(data, run) == 0
    capsys.readouterr()
    assert _train(other, run, "--resume") == 2
    err = capsys.readouterr().err
    assert "training data folder: saved" in err and str(other) in err


def test_resume_and_overwrite_together_are_refused(data, tmp_path, capsys):
    assert _train(data, tmp_path / "run", "--resume", "--overwrite") == 2
    assert "contradict" in capsys.readouterr().err


def test_a_second_writer_is_refused_naming_the_first(data, tmp_path, capsys):
    """Another process holds the run folder (as a training does): a second training is refused at once with
    that process's pid, and nothing it would have written appears."""
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from unistad_edu.files import folder_lock\n"
                f"with folder_lock({str(run)!r}, 'run folder'):\n"
                "    print('held', flush=True); time.sleep(60)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _train(data, run) == 2
        err = capsys.readouterr().err
        assert "is being written by another process" in err and f"process {holder.pid} " in err
        assert not (run / "model.safetensors").exists()
    finally:
        holder.kill()
        holder.wait()
    assert _train(data, run) == 0  # a killed holder leaves no lock behind (the kernel releases it)


def test_temp_files_of_killed_writes_are_removed_on_the_next_run(data, tmp_path):
    """A dead writer's temp file (in the run folder and in the feature cache) goes; a live writer's stays."""
    run, cache = tmp_path / "run", tmp_path / "fcache"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead_pid = 2**22 + 12345  # above pid_max's default range: no such process
        run.mkdir()
        (cache / "ab").mkdir(parents=True)
        dead_run = run / f".model.safetensors.{dead_pid}.0123abcd.tmp"
        dead_cache = cache / "ab" / f".x.safetensors.{dead_pid}.0123abcd.tmp"
        live_cache = cache / "ab" / f".y.safetensors.{live.pid}.0123abcd.tmp"
        old = cache / f".z.safetensors.{live.pid}.deadbeef.tmp"
        for p in (dead_run, dead_cache, live_cache, old):
            p.write_bytes(b"partial")
        day_ago = time.time() - files.STALE_AFTER_S - 60
        os.utime(old, (day_ago, day_ago))
        assert _train(data, run, "--cache-dir", str(cache)) == 0
        assert not dead_run.exists() and not dead_cache.exists() and not old.exists()
        assert live_cache.exists()
    finally:
        live.kill()
        live.wait()


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "f.json"
    target.write_text("old")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        files.atomic_write(target, fail)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_eval_json_onto_a_folder_writes_metrics_json_inside(data, tmp_path, capsys):
    run, where = tmp_path / "run", tmp_path / "results"
    where.mkdir()
    assert _train(data, run) == 0
    assert cli.main(["eval", "--run", str(run), "--json", str(where), "--no-progress"]) == 0
    assert json.loads((where / "metrics.json").read_text())["categories"]


def test_out_that_is_a_file_is_refused(data, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert _train(data, f) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_out_under_a_read_only_folder_is_a_message(data, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert _train(data, ro / "run") == 2
        err = capsys.readouterr().err
        assert "Permission denied" in err and "Traceback" not in err
    finally:
        ro.chmod(0o700)


def test_per_class_training_over_a_unified_run_needs_overwrite(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(data, run) == 0
    capsys.readouterr()
    assert _train(data, run, "--setting", "per-class") == 2
    assert "already holds a complete stpm run" in capsys.readouterr().err
    assert _train(data, run, "--setting", "per-class", "--overwrite") == 0
    assert (run / "setting.json").is_file() and not (run / "model.safetensors").exists()
    assert (run / "bolt" / "model.safetensors").is_file() and (
        run / "weave" / "model.safetensors"
    ).is_file()
    capsys.readouterr()
    assert _train(data, run) == 2  # unified over the per-class run
    assert "already holds a per-class run" in capsys.readouterr().err
    assert (
        _train(data, run, "--setting", "per-class", "--resume") == 0
    )  # each sub-run already complete


def test_prepare_differences_skip_what_an_old_run_does_not_record():
    saved = {"method": "stpm", "image_size": 64}  # an old config without teacher/data/precision
    assert runs.differences(saved, {"method": "stpm", "image_size": 64, "train_root": "/x"}) == []
    assert runs.differences(saved, {"method": "stpm", "image_size": 32}) == [
        "image size: saved 64, now 32"
    ]


def test_out_under_a_file_is_a_message(data, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert _train(data, f / "run") == 2
    err = capsys.readouterr().err
    assert "Not a directory" in err and "Traceback" not in err


def test_a_full_disk_is_a_message_and_leaves_no_temp_file(data, tmp_path, capsys, monkeypatch):
    from unistad_edu import checkpoint

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device", filename)

    monkeypatch.setattr(checkpoint, "save_file", full)
    run = tmp_path / "run"
    assert _train(data, run) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    assert not list(run.glob(".*.tmp"))
