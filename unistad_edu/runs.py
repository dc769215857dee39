"""Run folders stay consistent (issue 18): a run folder holds one model and only what was derived from it.

* A new training into a folder that already holds a run is refused, unless ``overwrite`` -- which first
  deletes everything of the old run: its model, state, log, config, and what was derived from it (metrics,
  predictions, per-class sub-runs). Files the package did not write are left alone.
* ``resume`` compares the saved settings with the new ones (method, teacher, image size, training data
  folder and categories, precision) and refuses a mismatch, naming each difference; a resumed run that will
  train further drops its old metrics and predictions (they describe weights that are about to change).
* One writer per run folder: :func:`~unistad_edu.files.folder_lock` (see :func:`engine.fit`).
* Which run, which test set, which metrics: :mod:`unistad_edu.resolve` (above the engine; this module is below it).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .checkpoint import CONFIG_FILE, MODEL_FILE, STATE_FILE

LOG_FILE = "train_log.jsonl"
SETTING_FILE = "setting.json"  # a per-class run: one sub-run per category folder
RUN_FILES = (MODEL_FILE, CONFIG_FILE, STATE_FILE, LOG_FILE, SETTING_FILE)
DERIVED_FILES = ("metrics.json",)
DERIVED_FOLDERS = ("predictions",)
#: the saved settings --resume compares: (key in config.json, what to call it)
COMPARED = (("method", "method"), ("teacher_name", "teacher"), ("image_size", "image size"),
            ("train_root", "training data folder"), ("train_categories", "categories"),
            ("precision_name", "precision"))


class RunFolderError(ValueError):
    """A run folder cannot be used as asked; ``str(err)`` says why and what to do instead."""


def identity(model, train_data, precision="auto") -> dict:
    """The settings a training is made of, compared on resume with :func:`saved_identity` of the folder.
    ``precision``: as asked; ``auto`` is not compared (a resumed run keeps the precision it was trained with)."""
    now = {"method": model.name, "teacher_name": model.teacher.describe().get("name"),
           "image_size": int(model.cfg.image_size),
           "train_root": str(Path(train_data.root).resolve()) if getattr(train_data, "root", None) else None,
           "train_categories": list(getattr(train_data, "categories", []) or [])}
    name = getattr(precision, "name", precision)
    if name not in (None, "auto"):
        now["precision_name"] = str(name)
    return {k: v for k, v in now.items() if v is not None}


def saved_identity(cfg: dict) -> dict:
    """The same settings as :func:`identity`, read from a run's config.json (what it does not record is left out)."""
    out = {}
    for key in ("method", "image_size", "train_categories"):
        if key in cfg:
            out[key] = cfg[key]
    if isinstance(cfg.get("teacher"), dict) and "name" in cfg["teacher"]:
        out["teacher_name"] = cfg["teacher"]["name"]
    root = cfg.get("train_root") or cfg.get("data_root")
    if root:
        out["train_root"] = str(Path(root).resolve())
    if isinstance(cfg.get("precision"), dict) and "name" in cfg["precision"]:
        out["precision_name"] = cfg["precision"]["name"]
    return out


def holds_run(run: Path) -> bool:
    run = Path(run)
    return run.is_dir() and any((run / f).exists() for f in RUN_FILES)


def _saved_config(run: Path) -> dict | None:
    try:
        cfg = json.loads((run / CONFIG_FILE).read_text())
        return cfg if isinstance(cfg, dict) else None
    except (OSError, ValueError):
        return None


def _describe(run: Path, cfg: dict | None) -> str:
    if (run / SETTING_FILE).is_file():
        return "a per-class run"
    if not cfg:
        return "an interrupted run"
    state = "complete" if cfg.get("complete") else "interrupted"
    evaluated = ", evaluated" if (run / "metrics.json").is_file() else ""
    return f"a {state} {cfg.get('method', '?')} run ({cfg.get('epochs_done', '?')} epochs{evaluated})"


def differences(saved_cfg: dict, now: dict) -> list[str]:
    """'image size: saved 128, now 256' for each compared setting that differs (settings the saved config
    does not record, e.g. of a run made by an older version, cannot be compared and are skipped)."""
    saved, out = saved_identity(saved_cfg), []
    for key, what in COMPARED:
        if key in saved and key in now and saved[key] != now[key]:
            out.append(f"{what}: saved {saved[key]!r}, now {now[key]!r}")
    return out


def clear_run(run: Path) -> list[str]:
    """Delete the run in ``run`` and everything derived from it; returns what was deleted (names)."""
    run, gone = Path(run), []
    if (run / SETTING_FILE).is_file():  # per-class: the sub-runs are part of it
        for sub in sorted(p for p in run.iterdir() if p.is_dir() and holds_run(p)):
            shutil.rmtree(sub)
            gone.append(sub.name + "/")
    for name in RUN_FILES:
        if (run / name).is_file():
            (run / name).unlink()
            gone.append(name)
    return gone + clear_derived(run)


def clear_derived(run: Path) -> list[str]:
    """Delete what was computed from the run's current weights (metrics, predictions), not the run itself."""
    run, gone = Path(run), []
    for name in DERIVED_FILES:
        if (run / name).is_file():
            (run / name).unlink()
            gone.append(name)
    for name in DERIVED_FOLDERS:
        if (run / name).is_dir():
            shutil.rmtree(run / name)
            gone.append(name + "/")
    return gone


def prepare(run, now: dict | None, resume: bool = False, overwrite: bool = False, per_class: bool = False,
            say=print) -> None:
    """Make ``run`` ready for a training with settings ``now`` (see :func:`identity`; ``per_class``: ``run`` is
    the outer folder of a per-class training, whose sub-runs :func:`engine.fit` checks one by one), or raise
    :class:`RunFolderError`. Call it while holding the folder's writer lock."""
    run = Path(run)
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other: --resume continues the run in the "
                             "folder, --overwrite deletes it and trains anew; choose one")
    if not holds_run(run):
        return
    cfg = _saved_config(run)
    if resume:
        here = (run / SETTING_FILE).is_file()
        if here != per_class:
            raise RunFolderError(f"--resume refused: {run} holds {_describe(run, cfg)}, not a "
                                 f"{'per-class' if per_class else 'unified'} run: resume it with --setting "
                                 f"{'per-class' if here else 'unified'}, or train anew with --overwrite")
        diff = differences(cfg or {}, now or {})
        if diff:
            raise RunFolderError(f"--resume refused: {run} was trained with other settings ({'; '.join(diff)}). "
                                 f"Resume with the saved settings, or train anew with --overwrite or into "
                                 f"another --out")
        if not per_class and not (cfg or {}).get("complete"):
            gone = clear_derived(run)
            if gone:
                say(f"resuming {run}: deleted {', '.join(gone)} (they describe the weights before this session)")
        return
    if not overwrite:
        raise RunFolderError(f"{run} already holds {_describe(run, cfg)}: pass --resume to continue it, "
                             f"--overwrite to replace it (deletes its model, metrics and predictions), or choose "
                             f"another --out")
    gone = clear_run(run)
    say(f"--overwrite: deleted the old run in {run} ({', '.join(gone)})")
