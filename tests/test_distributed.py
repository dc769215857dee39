"""Data-parallel training under torchrun: 2 CPU processes (gloo) train like 1 process with the same global batch.

This file is also the torchrun worker: ``python -m torch.distributed.run ... tests/test_distributed.py train ...``
runs the real CLI (``unistad_edu.__main__.main``) after wrapping the checkpoint writers so that every file
write prints ``WRITE rank=R name``; the test checks that only rank 0 ever writes. Both sides train in float32
(``precision="fp32"``; the worker sets it for the CLI) so that the comparison is not drowned in bf16 rounding.

UniAD with ``jitter=false`` is used because nothing in it depends on how the global batch is split: no
BatchNorm (LayerNorm is per token) and no random draws, so 2 processes x batch 4 must give the loss curve of
1 process x batch 8 up to float rounding. A method with BatchNorm (STPM's student) normalises over each
process's local batch instead, as plain DDP does without SyncBatchNorm, so its curve differs more
(docs/reliability.md gives the numbers, also for the default bf16 autocast).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":
    import functools

    from unistad_edu import checkpoint, engine

    engine.TrainConfig = functools.partial(
        engine.TrainConfig, precision="fp32"
    )  # what the CLI builds: float32

    def _recording(write, path_arg: int):
        def wrapped(*args, **kwargs):
            print(f"WRITE rank={os.environ.get('RANK')} {Path(args[path_arg]).name}", flush=True)
            return write(*args, **kwargs)

        return wrapped

    checkpoint.atomic_save_tensors = _recording(
        checkpoint.atomic_save_tensors, 1
    )  # (tensors, path, metadata)
    checkpoint.atomic_write_text = engine.atomic_write_text = _recording(
        checkpoint.atomic_write_text, 0
    )  # (path, text)
    print(f"worker rank={os.environ.get('RANK')} of {os.environ.get('WORLD_SIZE')}", flush=True)
    from unistad_edu.__main__ import main

    sys.exit(main(sys.argv[1:]))

import pytest  # noqa: E402
import torch  # noqa: E402

from unistad_edu.checkpoint import load_checkpoint  # noqa: E402
from unistad_edu.data import MVTecDataset  # noqa: E402
from unistad_edu.engine import TrainConfig, fit  # noqa: E402
from unistad_edu.methods import build_model, make_config  # noqa: E402

SIZE, EPOCHS = 64, 3
RTOL = 1e-4  # per-epoch loss, DDP vs one process (float32); measured about 1e-6
WORKER = Path(__file__).resolve()


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


def torchrun(nproc: int, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        str(WORKER),
        *map(str, args),
    ]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def uniad(teacher, batch_size: int = 8):
    return build_model(
        "uniad",
        teacher,
        cfg=make_config(
            "uniad",
            "cpu",
            epochs=EPOCHS,
            batch_size=batch_size,
            image_size=SIZE,
            jitter=False,
            hm_quantile=0.0,  # the loose loss's quantile is taken over each rank's own half batch
        ),
    )


def single_process(data: Path, teacher, batch_size: int):
    model = uniad(teacher, batch_size)
    res = fit(
        model,
        MVTecDataset(data, "train", image_size=SIZE),
        TrainConfig(seed=0, progress=False, precision="fp32"),
    )
    return model, res


@pytest.mark.slow  # over 30 s on a 2-core CPU
def test_two_processes_train_like_one_with_the_same_global_batch(data, lite0_teacher, tmp_path):
    run = tmp_path / "ddp"
    train = (
        "train",
        "--method",
        "uniad",
        "--set",
        "jitter=false",
        "--set",
        "hm_quantile=0",
        "--data",
        data,
        "--image-size",
        SIZE,
        "--epochs",
        EPOCHS,
        "--batch-size",
        4,
        "--out",
        run,
        "--no-progress",
        "--precision",
        "fp32",
    )  # fp32 as the single-process run (auto could pick bf16 here)
    # 2 ranks x batch 4; stopped by the time budget after epoch 1 (rank 0 decides for both), then resumed
    first = torchrun(2, *train, "--max-minutes", 1e-6)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "stopping after epoch 1" in first.stdout
    second = torchrun(2, *train, "--resume")
    assert second.returncode == 0, second.stdout + second.stderr
    out = first.stdout + second.stdout
    assert out.count("worker rank=0 of 2") == 2 and out.count("worker rank=1 of 2") == 2

    # only rank 0 wrote, printed and logged; the run folder is what a single process leaves
    writes = [line for line in out.splitlines() if line.startswith("WRITE")]
    assert writes and all(w.startswith("WRITE rank=0 ") for w in writes), writes
    names = [
        w.split()[-1] for w in writes
    ]  # each epoch; each run's final checkpoint; the log rewrite on resume
    assert (
        names.count("model.safetensors") == EPOCHS + 2 and names.count("config.json") == EPOCHS + 2
    )
    assert names.count("train_state.safetensors") == EPOCHS and names.count("train_log.jsonl") == 1
    assert sorted(p.name for p in run.iterdir()) == [
        "config.json",
        "model.safetensors",
        "train_log.jsonl",
        "train_state.safetensors",
    ]
    for e in range(1, EPOCHS + 1):
        assert out.count(f"epoch {e}/{EPOCHS}  loss") == 1
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in log] == list(range(1, EPOCHS + 1))

    # the same loss curve and weights as one process with batch 8 = 2 x 4
    model, single = single_process(data, lite0_teacher, batch_size=8)
    ddp_loss, one_loss = [x["loss"] for x in log], [h["loss"] for h in single.history]
    rel = [abs(a - b) / abs(b) for a, b in zip(ddp_loss, one_loss)]
    print(f"\nDDP 2x4 {ddp_loss}\none 1x8 {one_loss}\nrelative difference {rel}")
    assert max(rel) < RTOL, (ddp_loss, one_loss)
    loaded = load_checkpoint(run, teacher=lite0_teacher)
    assert loaded.run_config["complete"] and loaded.run_config["epochs_done"] == EPOCHS

    # weights: the DDP-vs-one-process difference, relative to how far training moved them (Adam turns rounding
    # differences of near-zero gradients into steps of about lr, so an element-wise bound would be loose)
    def flat(m):
        return torch.cat(
            [
                v.float().flatten()
                for v in m.state_for_checkpoint().values()
                if v.is_floating_point()
            ]
        )

    w_ddp, w_one, w_init = flat(loaded), flat(model), flat(uniad(lite0_teacher))
    moved = ((w_ddp - w_one).norm() / (w_one - w_init).norm()).item()
    print(f"|w_ddp - w_one| / |w_one - w_init| = {moved:.2e}")
    assert moved < 0.02  # measured about 2e-3
    assert loaded.threshold == pytest.approx(single.threshold, rel=1e-2)

    # the tolerance means something: one process with batch 4 (twice the steps) is far outside it
    _, small = single_process(data, lite0_teacher, batch_size=4)
    assert (
        max(abs(a - b) / abs(b) for a, b in zip([h["loss"] for h in small.history], one_loss))
        > 10 * RTOL
    )
