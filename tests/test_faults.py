"""Fault injection: a real training process is killed with SIGKILL at chosen and at random points, then resumed.

This file is also the worker. ``python tests/test_faults.py train ...`` runs the real CLI
(``unistad_edu.__main__.main``) after installing the one fault hook named by ``$UNISTAD_FAULT``; the hook prints
``FAULT-POINT`` and sleeps, so the test's ``kill -9`` lands exactly in that window:

=====================  =====================================================================================
``step:N``             inside the N-th training step of this process (mid-epoch)
``tmp-torn:FILE``      a checkpoint file's temporary copy is half written (``FILE``: model.safetensors, ...)
``tmp-whole:FILE``     its temporary copy is complete, but not yet renamed into place
``pair``               model.safetensors is renamed into place, config.json not yet written
``calibrate``          after the last epoch, during the held-out threshold calibration
``cache:N``            the N-th feature-cache entry is written to its temporary file, not yet renamed
=====================  =====================================================================================

After every kill the run folder must hold only complete states: ``load_checkpoint`` either returns the very
weights an uninterrupted run had at the epoch the checkpoint names, or raises ``CheckpointError``;
``train_state.safetensors`` always loads and names its epoch. ``--resume`` then finishes with the same weights
as the uninterrupted run. docs/reliability.md tabulates the outcomes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

SIZE, EPOCHS, BATCH = 64, 8, 8  # 32 training images -> 4 steps per epoch
WORKER = Path(__file__).resolve()


# ---- the worker: the real CLI with one fault hook ----------------------------------------------------------
def _stop_here(what: str) -> None:
    print(f"FAULT-POINT {what}", flush=True)
    time.sleep(120)  # the test kills us here
    raise SystemExit("fault point not killed")


def _install_fault(spec: str) -> None:
    from unistad_edu import cache, checkpoint, engine
    from unistad_edu.methods.stpm import STPM

    kind, _, arg = spec.partition(":")
    if kind == "step":
        loss, count = STPM.loss, [0]

        def counting_loss(self, batch):
            count[0] += 1
            if count[0] == int(arg):
                _stop_here(f"step {arg}")
            return loss(self, batch)

        STPM.loss = counting_loss
    elif kind in ("tmp-torn", "tmp-whole"):
        save_file = checkpoint.save_file

        def slow_save(tensors, filename, metadata=None):
            save_file(tensors, filename, metadata=metadata)
            if Path(filename).name.startswith(f".{arg}."):  # the temporary name of FILE
                if kind == "tmp-torn":
                    with open(filename, "r+b") as f:
                        f.truncate(os.path.getsize(filename) // 2)
                _stop_here(f"{kind} {Path(filename).name}")

        checkpoint.save_file = slow_save
    elif kind == "pair":
        write_text = checkpoint.atomic_write_text

        def slow_config(path, text):
            if Path(path).name == checkpoint.CONFIG_FILE:
                _stop_here("between model.safetensors and config.json")
            write_text(path, text)

        checkpoint.atomic_write_text = slow_config
    elif kind == "calibrate":
        engine.calibrate = lambda *a, **k: _stop_here("calibration")
    elif kind == "cache":
        save_file, count = cache.save_file, [0]

        def slow_entry(tensors, filename, metadata=None):
            save_file(tensors, filename, metadata=metadata)
            count[0] += 1
            if count[0] == int(arg):
                _stop_here(f"cache entry {arg} written to {Path(filename).name}, not renamed")

        cache.save_file = slow_entry
    elif kind:
        raise ValueError(f"unknown fault {spec!r}")


if __name__ == "__main__":
    _install_fault(os.environ.get("UNISTAD_FAULT", ""))
    from unistad_edu.__main__ import main

    sys.exit(main(sys.argv[1:]))


# ---- the tests -------------------------------------------------------------------------------------------
from safetensors.torch import load_file as safetensors_load  # noqa: E402

from unistad_edu.checkpoint import CheckpointError, load_checkpoint, load_train_state  # noqa: E402
from unistad_edu.data import MVTecDataset  # noqa: E402
from unistad_edu.methods import build_model, make_config  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from unistad_edu.synthetic import make_synthetic

    return make_synthetic(
        tmp_path_factory.mktemp("syn") / "tiny",
        size=SIZE,
        n_train=10,
        n_test_good=1,
        n_test_defect=1,
    )


def _cli_args(data: Path, run: Path, resume: bool, *extra) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--image-size",
        str(SIZE),
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        str(BATCH),
        "--out",
        str(run),
        "--no-progress",
        "--precision",
        "fp32",
        "--threads",
        "1",
        *(["--resume"] if resume else []),
        *extra,
    ]  # bit-exact comparisons: one fixed precision and thread


def _env(fault: str = "") -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "UNISTAD_FAULT": fault, "PYTHONUNBUFFERED": "1"}


def run_and_kill(
    args: list[str], fault: str = "", kill_after: float | None = None, timeout: float = 90
) -> dict:
    """Start the worker; SIGKILL it at its FAULT-POINT (or ``kill_after`` s after its first epoch line).
    Returns {"killed": bool, "point": str, "returncode": int, "out": str}."""
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(fault),
    )
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    out, point = [], ""
    try:
        for line in proc.stdout:
            out.append(line)
            if line.startswith("FAULT-POINT"):
                point = line.split(" ", 1)[1].strip()
                break
            if kill_after is not None and line.startswith("epoch "):
                time.sleep(kill_after)
                point = f"{kill_after:.2f} s after '{line.strip()}'"
                break
        killed = proc.poll() is None
        if killed:
            os.kill(proc.pid, signal.SIGKILL)
        out.append(proc.stdout.read())
        proc.wait()
    finally:
        watchdog.cancel()
    return {"killed": killed, "point": point, "returncode": proc.returncode, "out": "".join(out)}


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(data, lite0_teacher, tmp_path_factory, one_thread):
    """The uninterrupted run, in this process, as the CLI configures it: weights after every epoch."""
    from unistad_edu import engine
    from unistad_edu.engine import TrainConfig, fit

    states = {}
    save = engine.save_checkpoint

    def recording_save(run, model, extra=None):
        states["final" if extra.get("threshold") is not None else extra["epochs_done"]] = {
            k: v.clone() for k, v in model.state_for_checkpoint().items()
        }
        return save(run, model, extra)

    engine.save_checkpoint = recording_save
    try:
        model = build_model(
            "stpm",
            lite0_teacher,
            cfg=make_config("stpm", "cpu", epochs=EPOCHS, batch_size=BATCH, image_size=SIZE),
        )
        res = fit(
            model,
            MVTecDataset(data, "train", image_size=SIZE),
            TrainConfig(seed=0, progress=False, precision="fp32"),
            out=tmp_path_factory.mktemp("ref"),
        )
    finally:
        engine.save_checkpoint = save
    states["threshold"] = res.threshold
    return states


def check_run_folder(run: Path, reference: dict, teacher) -> str:
    """What a reader finds after a kill. Fails on any torn or mixed state; returns a one-line outcome."""
    from unistad_edu.engine import make_optimizer

    outcome = []
    if (
        run / "train_state.safetensors"
    ).is_file():  # the resume state: always complete, always some epoch's
        model = build_model("stpm", teacher, cfg=make_config("stpm", "cpu", image_size=SIZE))
        info = load_train_state(run, model, make_optimizer(model))
        assert _state_equal(model.state_for_checkpoint(), reference[info["epoch"]]), info["epoch"]
        outcome.append(f"train_state = epoch {info['epoch']}")
    try:
        model = load_checkpoint(run, teacher=teacher)
    except CheckpointError as err:
        outcome.append(
            f"load_checkpoint raises CheckpointError: {str(err).replace(str(run), 'RUN')}"
        )
    else:
        cfg = model.run_config
        key = "final" if cfg["complete"] else cfg["epochs_done"]
        assert _state_equal(model.state_for_checkpoint(), reference[key]), (
            f"model.safetensors is not the weights of epoch {key} that config.json names"
        )
        outcome.append(
            f"checkpoint = epoch {cfg['epochs_done']}" + (" (complete)" if cfg["complete"] else "")
        )
    for tmp in sorted(
        run.glob(".*.tmp")
    ):  # an unfinished write: never loaded (only the real names are read)
        try:
            safetensors_load(str(tmp))
            state = "complete"
        except Exception:
            state = "torn"
        outcome.append(f"{state} temp file {tmp.name.rsplit('.', 2)[0]}.<pid>.tmp ignored")
    return "; ".join(outcome)


@pytest.mark.slow  # over 30 s on a 2-core CPU
def test_kill_anywhere_then_resume_finishes_exactly(data, reference, lite0_teacher, tmp_path):
    """A chain of SIGKILLs into one run, each resumed by the next process; the last one finishes."""
    run, rng = tmp_path / "run", random.Random(1)
    chain = [  # (what is hit, fault hook or None, seconds after the first epoch line for a timed kill, expected)
        (
            "mid-epoch (a random step of epoch 2)",
            f"step:{rng.randint(5, 8)}",
            None,
            ["train_state = epoch 1", "checkpoint = epoch 1"],
        ),
        (
            "torn temp file of model.safetensors (end of epoch 2)",
            "tmp-torn:model.safetensors",
            None,
            ["train_state = epoch 2", "checkpoint = epoch 1", "torn temp file .model.safetensors"],
        ),
        (
            "complete temp of train_state, before its rename (end of epoch 3)",
            "tmp-whole:train_state.safetensors",
            None,
            [
                "train_state = epoch 2",
                "checkpoint = epoch 1",
                "complete temp file .train_state.safetensors",
            ],
        ),
        (
            "between the model.safetensors and config.json renames (end of epoch 3)",
            "pair",
            None,
            ["train_state = epoch 3", "CheckpointError", "different saves"],
        ),
        ("random time", None, round(rng.uniform(0.0, 1.2), 2), []),
        (
            "during the held-out threshold calibration",
            "calibrate",
            None,
            [f"train_state = epoch {EPOCHS}", f"checkpoint = epoch {EPOCHS}"],
        ),
    ]
    table = []
    for i, (what, fault, after, expected) in enumerate(chain):
        r = run_and_kill(_cli_args(data, run, resume=i > 0), fault=fault or "", kill_after=after)
        assert r["killed"] or r["returncode"] == 0, r["out"]
        assert "Traceback" not in r["out"], r["out"]
        try:
            found = check_run_folder(run, reference, lite0_teacher)
        except AssertionError as err:
            raise AssertionError(
                f"after a kill at '{what}' ({r['point']}): {str(err).splitlines()[0]}"
            ) from None
        assert all(e in found for e in expected), (what, found, expected)
        table.append((what, r["point"] if r["killed"] else "finished before the kill", found))
    r = subprocess.run(
        [sys.executable, str(WORKER), *_cli_args(data, run, resume=True)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    final = load_checkpoint(run, teacher=lite0_teacher)
    assert final.run_config["complete"] and final.run_config["epochs_done"] == EPOCHS
    assert _state_equal(final.state_for_checkpoint(), reference["final"])  # as if never interrupted
    assert final.threshold == pytest.approx(reference["threshold"], rel=1e-6)
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in log] == list(range(1, EPOCHS + 1))
    table.append(("resume after all kills", "-", check_run_folder(run, reference, lite0_teacher)))
    assert not list(run.glob(".*.tmp"))  # the resumed run removed what the killed writes left
    print("\n" + "\n".join(" | ".join(row) for row in table))


def test_kill_during_feature_caching_leaves_only_complete_entries(
    data, lite0_teacher, tmp_path, one_thread
):
    """SIGKILL while the disk feature cache is being filled: a fresh cache over the same folder serves only
    whole entries, equal to recomputed ones, and fills in the rest."""
    from unistad_edu.cache import FeatureCache
    from unistad_edu.engine import held_out

    root, n_done = tmp_path / "cache", 9
    r = run_and_kill(
        _cli_args(data, tmp_path / "run", False, "--cache-dir", str(root)), fault=f"cache:{n_done}"
    )
    assert r["killed"] and "cache entry" in r["point"], r["out"]
    temps = list(root.glob("*/.*.tmp"))
    assert (
        len(temps) == 1
    )  # the entry being written when the process died, never renamed into place

    train, _ = held_out(MVTecDataset(data, "train", image_size=SIZE))  # what fit caches
    lite0_teacher.precision = (
        "fp32"  # what the killed child ran with (--precision fp32 --threads 1)
    )
    fresh = FeatureCache(lite0_teacher, SIZE, root=root)
    assert len(fresh) == n_done - 1  # complete entries only; the temp file is not one
    expected = FeatureCache(lite0_teacher, SIZE).stack(
        train, progress=False
    )  # recomputed in memory
    served = 0
    for i, rec in enumerate(train.records):
        entry = fresh._read(fresh.key(rec.path))
        if entry is not None:
            served += 1
            for name, t in entry.items():
                assert torch.equal(t, expected[name][i]), (rec.path, name)  # bit for bit
    assert served == n_done - 1
    stacked = fresh.stack(train, progress=False)  # fills the missing entries
    for name in expected:
        assert torch.equal(stacked[name], expected[name]), name
    assert len(fresh) == len(train)
