"""Shared fixtures: the real datasets beside the repo (skipped when absent) and small image folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _share_the_cores() -> None:
    """Under pytest-xdist (``-n N``) each worker -- and every notebook kernel or child process it starts, which
    inherit ``OMP_NUM_THREADS`` -- gets its share of the cores: N processes each using every core wait on
    each other at every op. A user's ``OMP_NUM_THREADS`` is kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        share = max(1, len(os.sched_getaffinity(0)) // workers)
        os.environ["OMP_NUM_THREADS"] = str(share)
        import torch

        torch.set_num_threads(share)


_share_the_cores()


def pytest_collection_modifyitems(items):
    """Every lesson (an nbmake item) trains models: it is ``slow``, as are the tests marked so by hand;
    ``pytest -m "not slow"`` runs the rest in a few minutes."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)


SHARED_DATA = Path(os.environ.get("UNISTAD_SHARED_DATA", REPO.parent / "shared" / "datasets"))

needs_real_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"real datasets not found at {SHARED_DATA} (../shared/datasets)",
)


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def lite0_teacher():
    from unistad_edu import load_teacher

    return load_teacher()


def write_image(path: Path, size=(32, 32), value=None, mode="RGB", seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "RGB":
        arr = (
            rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            if value is None
            else np.full((h, w, 3), value, np.uint8)
        )
    else:
        arr = (
            rng.integers(0, 256, (h, w), dtype=np.uint8)
            if value is None
            else np.full((h, w), value, np.uint8)
        )
    Image.fromarray(arr, mode=mode if mode != "RGB" else None).save(path)
    return path


def make_category(
    root: Path, name: str = "widget", n_train=3, n_good=2, n_defect=2, size=(32, 32)
) -> Path:
    """A tiny, valid MVTec-layout category."""
    cat = root / name
    for i in range(n_train):
        write_image(cat / "train" / "good" / f"{i:03d}.png", size, seed=i)
    for i in range(n_good):
        write_image(cat / "test" / "good" / f"{i:03d}.png", size, seed=100 + i)
    for i in range(n_defect):
        write_image(cat / "test" / "scratch" / f"{i:03d}.png", size, seed=200 + i)
        mask = np.zeros(size[::-1], np.uint8)
        mask[4:10, 4:12] = 255
        (cat / "ground_truth" / "scratch").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(cat / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
    return cat


def tiny_synthetic(
    tmp_path_factory,
    size: int,
    n_train: int = 10,
    n_test_good: int = 2,
    n_test_defect: int = 1,
    categories=("weave", "bolt"),
) -> Path:
    """A small synthetic multi-class set in a fresh temporary folder (``categories=None``: all of them)."""
    from unistad_edu.synthetic import make_synthetic

    extra = {} if categories is None else {"categories": tuple(categories)}
    return make_synthetic(
        tmp_path_factory.mktemp("syn") / "tiny",
        size=size,
        n_train=n_train,
        n_test_good=n_test_good,
        n_test_defect=n_test_defect,
        **extra,
    )


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of many tiny ops: on a busy 2-core machine two OpenMP threads wait on each
    other at every op (measured 10x slower); the previous count is restored for the modules after it."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


DEMO_SIZE = 64
DEMO_SPEC = {"method": "stpm", "image_size": DEMO_SIZE, "epochs": 1, "max_minutes": 5.0, "seed": 0}


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """The demo tests' data: a tiny synthetic set of two categories at 64 px."""
    return tiny_synthetic(tmp_path_factory, DEMO_SIZE)


@pytest.fixture(scope="session")
def demo_run(demo_data, tmp_path_factory) -> Path:
    """The demo's default-run machinery with a tiny spec (trains, evaluates, moves into place), once per session."""
    import torch

    from unistad_edu import resolve

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tmp_path_factory.mktemp("cache") / "demo_run"
        return resolve.ensure_default_run(
            run, spec=DEMO_SPEC, data_root=demo_data, progress=False, log=lambda m: None
        )
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The synthetic set, every category, 64 px, 10 training and 3 + 1 test images each (tests that read it only)."""
    return tiny_synthetic(tmp_path_factory, 64, n_test_good=3, categories=None)


@pytest.fixture(scope="session")
def train_set(tiny_data):
    from unistad_edu.data import MVTecDataset

    return MVTecDataset(tiny_data, "train", image_size=64)


def train_args(data, out, size, *extra) -> list[str]:
    """The CLI's `train` arguments of a one-epoch STPM run on ``data`` into ``out`` (fp32, one thread)."""
    head = "train --method stpm --epochs 1 --no-progress --precision fp32 --threads 1".split()
    return [*head, "--data", str(data), "--image-size", str(size), "--out", str(out), *extra]
