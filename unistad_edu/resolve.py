"""Which run, which test set, which metrics -- the one place the CLI, ``figures``, the leaderboard and the demo ask.

* :func:`resolve_run`: ``--run`` if given (checked to be a run folder), else the demo's default model, trained
  once by :func:`ensure_default_run` (a memory bank on the synthetic set, kept in ``$UNISTAD_CACHE/demo_run``).
* :func:`test_set`: the test images a run is evaluated on (the categories it was trained on).
* :func:`load_run_metrics`: the run's ``metrics.json``, or None.

(Run-folder consistency -- refusing to mix runs, resume checks -- is :mod:`unistad_edu.runs`, below the engine.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from .layout import CONFIG_FILE, METRICS_FILE, MODEL_FILE, STATE_FILE

#: the default model the demo trains when no --run is given: the README's main job (a memory bank at 256 px
#: with a 5 % coreset, chosen on a second synthetic set drawn with another seed -- docs/benchmarks.md, "The
#: first verdicts"). ``set``: method settings (``train --set``).
DEFAULT_RUN_SPEC = {
    "method": "memory_bank",
    "image_size": 256,
    "set": {"coreset_ratio": 0.05},
    "epochs": 1,
    "max_minutes": 8.0,
    "seed": 0,
}
DEFAULT_MARKER = "DEMO_DEFAULT.json"


def default_run_dir() -> Path:
    from .files import cache_root

    return cache_root() / "demo_run"


def _is_usable_run(run: Path, spec: dict | None = None) -> bool:
    try:
        cfg = json.loads((run / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    if (
        not (run / MODEL_FILE).is_file()
        or cfg.get("threshold") is None
        or not cfg.get("epochs_done")
    ):
        return False
    if spec is not None:
        try:
            marker = json.loads((run / DEFAULT_MARKER).read_text())
        except (OSError, ValueError):
            return False
        return marker.get("spec") == spec
    return True


def check_default_replaceable(run: Path) -> None:
    """Refuse (:class:`~unistad_edu.runs.RunFolderError`) to replace the default model's folder ``run`` unless
    it is absent, empty, or an earlier default model the demo wrote (its marker, a run's files, its derived
    files and nothing else, none of them another tool's)."""
    from . import ownership, runs

    if not (run.exists() or run.is_symlink()):
        return
    own = {*runs.RUN_FILES, *runs.DERIVED_FILES, *runs.DERIVED_FOLDERS, DEFAULT_MARKER}
    if run.is_dir() and not run.is_symlink() and not any(run.iterdir()):
        return
    others = (
        sorted(p.name for p in run.iterdir() if p.name not in own)
        if run.is_dir() and not run.is_symlink()
        else []
    )
    ours = (
        run.is_dir()
        and not run.is_symlink()
        and (run / DEFAULT_MARKER).is_file()
        and not others
        and not runs.foreign(run)
    )
    if not ours:
        raise runs.RunFolderError(
            f"the demo's default model folder {run} is {ownership.describe(run)}, not a default "
            f"model the demo wrote"
            + (f" (it holds {', '.join(others[:5])})" if others else "")
            + ": it is never replaced; move it away, set UNISTAD_CACHE elsewhere, or pass "
            "--run RUN"
        )


def ensure_default_run(
    run_dir=None,
    spec: dict | None = None,
    data_root=None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> Path:
    """The demo's default model: reuse ``run_dir`` (default :func:`default_run_dir`) if it holds a finished run
    of ``spec`` (default :data:`DEFAULT_RUN_SPEC`), else train it on the synthetic set (``data_root``: another
    MVTec-layout folder instead), evaluate it (``metrics.json``) and move it into place atomically."""
    from .data import default_data_root
    from .files import install_folder, staging_folder

    spec = dict(spec or DEFAULT_RUN_SPEC)
    run = Path(run_dir) if run_dir is not None else default_run_dir()
    if _is_usable_run(run, spec):
        log(f"using the demo's default model in {run} (delete that folder to retrain it)")
        return run
    # before training: a folder the demo did not write is never replaced
    check_default_replaceable(run)
    root = Path(data_root) if data_root is not None else default_data_root()
    settings = "".join(f", {k}={v}" for k, v in spec.get("set", {}).items())
    log(
        f"no --run given and no default model yet: training a small {spec['method']} model "
        f"({spec['image_size']} px{settings}, {spec['epochs']} epoch(s), at most {spec['max_minutes']:g} min) on "
        f"{'the synthetic multi-class set' if data_root is None else root} at {root}.\n"
        f"This happens once; the model is kept in {run} and reused. Pass --run RUN to use your own run."
    )
    with staging_folder(run) as tmp:
        _make_default_run(tmp, spec, root, log, progress)

        def replace(old: Path) -> bool:
            """An older/incomplete default run is replaced (checked again: it may have changed while the model
            trained); one that another process finished meanwhile is kept."""
            if _is_usable_run(old, spec):
                return False
            check_default_replaceable(old)
            return True

        install_folder(tmp, run, replace)
    log(f"default model ready in {run}")
    return run


def _make_default_run(
    tmp: Path, spec: dict, root: Path, log: Callable[[str], None], progress: bool
) -> None:
    """Train, evaluate and mark the default model of ``spec`` in the staging folder ``tmp``."""
    from .data import MVTecDataset
    from .engine import TrainConfig, fit
    from .inference import evaluate
    from .methods import build_model
    from .metrics import save_metrics
    from .teacher import load_teacher

    train = MVTecDataset(root, "train", image_size=spec["image_size"])
    model = build_model(
        spec["method"], load_teacher(), image_size=spec["image_size"], **spec.get("set", {})
    )
    res = fit(
        model,
        train,
        TrainConfig(
            epochs=spec["epochs"],
            max_minutes=spec["max_minutes"],
            seed=spec["seed"],
            progress=progress,
        ),
        out=tmp,
        extra_config={
            "data_root": str(root.resolve()),
            "preset": "cpu",
            "setting": "unified",
            "trained_by": "python -m unistad_edu demo (default model)",
        },
    )
    threshold = "none" if res.threshold is None else f"{res.threshold:.4g}"
    log(
        f"trained {res.epochs_done} epochs in {res.seconds:.0f} s (threshold {threshold}); "
        f"evaluating on the test images for the model card ..."
    )
    test = MVTecDataset(root, "test", image_size=spec["image_size"])
    save_metrics(evaluate(model, test, progress=progress), tmp / METRICS_FILE)
    (tmp / DEFAULT_MARKER).write_text(
        json.dumps({"spec": spec, "data_root": str(root.resolve())}, indent=2)
    )
    (tmp / STATE_FILE).unlink(missing_ok=True)  # resume state is not needed by the demo


def resolve_run(run=None, log: Callable[[str], None] = print) -> Path:
    """``--run`` if given (checked to be a run folder or an export folder), else the default model (trained on
    first use)."""
    from .export_runtime import is_export, read_card

    if run is None:
        return ensure_default_run(log=log)
    run = Path(run)
    if is_export(run):  # an export folder: its card checked (version, files), no PyTorch needed
        read_card(run)
        return run
    from .checkpoint import read_config

    read_config(run)  # raises CheckpointError with a clear message for a wrong folder
    return run


def load_run_metrics(run_dir) -> dict | None:
    from .metrics import load_metrics

    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    from .runs import check_metrics_save

    try:
        table = load_metrics(path)
        check_metrics_save(table, run_dir)  # metrics of an earlier save describe another model
    except (OSError, ValueError):
        return None
    return table


def test_set(cfg: dict, image_size: int, data=None, check_masks: bool = True):
    """The test images a run is evaluated on: the categories it was trained on (those present) under ``data``
    (default: the folder it was trained from), at ``image_size``. ``cfg``: the run's config.json."""
    from .data import MVTecDataset, default_data_root, discover_categories

    root = Path(data or cfg.get("data_root") or default_data_root())
    available = discover_categories(root)
    cats = [c for c in (cfg.get("train_categories") or []) if c in available] or None
    return MVTecDataset(
        root, "test", categories=cats, image_size=image_size, check_masks=check_masks
    )
