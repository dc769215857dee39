"""Run folders stay consistent: a run folder holds one model and only what was derived from it.

* A new training into a folder that already holds a run is refused, unless ``overwrite`` -- which first
  deletes everything of the old run: its model, state, log, config, and what was derived from it (metrics,
  predictions, per-class sub-runs). Files the package did not write are left alone.
* Own what you delete: before a run folder is overwritten or resumed, every file in it that bears
  a name the package writes must carry the package's marker (:func:`foreign`: ``config.json``'s ``format``,
  the safetensors metadata, the log's epoch lines, ``metrics.json``'s table, heatmap names in
  ``predictions/``); another tool's ``config.json`` or a user's file in ``predictions/`` refuses the
  training, naming them. A folder that is an export, a synthetic or validation set or a download is never
  trained into (:mod:`unistad_edu.ownership`).
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

from . import ownership
from .checkpoint import CONFIG_FILE, FORMAT_VERSION, MODEL_FILE, STATE_FILE, format_version
from .layout import LOG_FILE, METRICS_FILE, PREDICTIONS_DIR, SETTING_FILE

RUN_FILES = (MODEL_FILE, CONFIG_FILE, STATE_FILE, LOG_FILE, SETTING_FILE)
DERIVED_FILES = (METRICS_FILE,)
DERIVED_FOLDERS = (PREDICTIONS_DIR,)
#: the saved settings --resume compares: (key in config.json, what to call it)
COMPARED = (
    ("method", "method"),
    ("teacher_name", "teacher"),
    ("image_size", "image size"),
    ("train_root", "training data folder"),
    ("train_categories", "categories"),
    ("precision_name", "precision"),
)


class RunFolderError(ValueError):
    """A run folder cannot be used as asked; ``str(err)`` says why and what to do instead."""


def identity(model, train_data, precision="auto") -> dict:
    """The settings a training is made of, compared on resume with :func:`saved_identity` of the folder.
    ``precision``: as asked; ``auto`` is not compared (a resumed run keeps the precision it was trained with)."""
    now = {
        "method": model.name,
        "teacher_name": model.teacher.describe().get("name"),
        "image_size": int(model.cfg.image_size),
        "train_root": str(Path(train_data.root).resolve())
        if getattr(train_data, "root", None)
        else None,
        "train_categories": list(getattr(train_data, "categories", []) or []),
    }
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
    """True if ``run`` is a folder holding any of the files a training writes (whoever wrote them)."""
    run = Path(run)
    return run.is_dir() and any((run / f).exists() for f in RUN_FILES)


def _log_row(line: str) -> bool:
    try:
        row = json.loads(line)
    except ValueError:
        return False
    return isinstance(row, dict) and "epoch" in row


def _log_is_ours(path: Path) -> bool:
    """Every line of ``train_log.jsonl`` is a JSON object with an ``epoch`` (what the engine appends); the last
    may be torn by a kill mid-append if a whole line comes before it."""
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError):
        return False
    whole = lines[:-1] if len(lines) > 1 and not _log_row(lines[-1]) else lines
    return all(_log_row(ln) for ln in whole)


def _state_is_ours(path: Path) -> bool:
    """``train_state.safetensors`` carries the engine's resume info (a JSON object with the epoch)."""
    info = (ownership.safetensors_metadata(path) or {}).get("info")
    try:
        info = json.loads(info) if isinstance(info, str) else None
    except ValueError:
        return False
    return isinstance(info, dict) and "epoch" in info


def _file_problems(run: Path, cfg_ours: bool) -> list[str]:
    """The run files of ``run`` that are not the package's (see :func:`foreign`)."""
    checks = {
        CONFIG_FILE: (
            lambda p: ownership.is_run_config(ownership.read_json(p)),
            f'not a unistad-edu run config: no "format": "{ownership.RUN_FORMAT} vN"',
        ),
        SETTING_FILE: (
            lambda p: ownership.is_per_class_setting(ownership.read_json(p)),
            'not a unistad-edu per-class setting: no "setting": "per-class" with method and categories',
        ),
        MODEL_FILE: (
            lambda p: cfg_ours or "save_id" in (ownership.safetensors_metadata(p) or {}),
            "weights without a unistad-edu config.json or save_id",
        ),
        STATE_FILE: (_state_is_ours, "no unistad-edu resume info in its metadata"),
        LOG_FILE: (
            _log_is_ours,
            "not a unistad-edu training log (one JSON object with an epoch per line)",
        ),
        METRICS_FILE: (
            lambda p: ownership.is_metrics(ownership.read_json(p)),
            "not a unistad-edu metrics table (setting, categories, mean)",
        ),
    }
    out = []
    for name, (ours, why) in checks.items():
        path = run / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            out.append(f"{name} (not a plain file)")
        elif path.is_file() and not ours(path):
            out.append(f"{name} ({why})")
    return out


def _predictions_problems(run: Path) -> list[str]:
    """``predictions/`` must hold only heatmaps as ``predict`` names them (``[NNN_]<image>_heatmap.png``)."""
    folder = run / PREDICTIONS_DIR
    if folder.is_symlink():
        return ["predictions (a symbolic link)"]
    if not folder.is_dir():
        return []
    other = ownership.foreign_entries(
        folder,
        lambda rel, is_dir: (
            not is_dir
            and "/" not in rel
            and rel.endswith("_heatmap.png")
            and not (folder / rel).is_symlink()
        ),
    )
    return (
        [f"predictions/ (holds {ownership.listing(other)}, which predict did not write)"]
        if other
        else []
    )


def foreign(run: Path) -> list[str]:
    """What in ``run`` bears a name a training or ``eval``/``predict`` writes -- and that ``--overwrite`` or
    ``--resume`` would delete -- but was not written by unistad-edu, each with why ('config.json (not a
    unistad-edu run config ...)'); per-class sub-runs are checked too. ``[]``: everything is the package's."""
    run = Path(run)
    cfg_ours = ownership.is_run_config(ownership.read_json(run / CONFIG_FILE))
    out = _file_problems(run, cfg_ours) + _predictions_problems(run)
    if (run / SETTING_FILE).is_file():
        for sub in sorted(
            p for p in run.iterdir() if p.is_dir() and not p.is_symlink() and holds_run(p)
        ):
            out += [f"{sub.name}/{item}" for item in foreign(sub)]
    return out


def check_destination(run: Path) -> None:
    """Refuse to train into ``run`` when it is a folder of another kind (export, data set, download) or
    holds run files the package did not write (:func:`foreign`); nothing is deleted then."""
    run = Path(run)
    other = ownership.kind(run)
    if other not in (None, "run", "per-class run"):
        raise RunFolderError(
            f"--out {run} is {ownership.describe(run)}, not a run folder: training there would "
            f"mix a run into it (and --overwrite would delete its files): choose another --out"
        )
    bad = foreign(run) if run.is_dir() else []
    if bad:
        raise RunFolderError(
            f"--out {run} holds files unistad-edu did not write: {'; '.join(bad)}. A training "
            f"replaces (--overwrite) or continues (--resume) only a run this package wrote: move "
            f"those files away, or choose another --out"
        )


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
    evaluated = ", evaluated" if (run / METRICS_FILE).is_file() else ""
    return (
        f"a {state} {cfg.get('method', '?')} run ({cfg.get('epochs_done', '?')} epochs{evaluated})"
    )


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
    if (
        run / SETTING_FILE
    ).is_file():  # per-class: the sub-runs are part of it (their own files only)
        for sub in sorted(
            p for p in run.iterdir() if p.is_dir() and not p.is_symlink() and holds_run(p)
        ):
            clear_run(sub)
            try:
                sub.rmdir()  # empty unless it holds files of the user's, which stay
            except OSError:
                pass
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


def prepare(
    run,
    now: dict | None,
    resume: bool = False,
    overwrite: bool = False,
    per_class: bool = False,
    say=print,
) -> None:
    """Make ``run`` ready for a training with settings ``now`` (see :func:`identity`; ``per_class``: ``run`` is
    the outer folder of a per-class training, whose sub-runs :func:`engine.fit` checks one by one), or raise
    :class:`RunFolderError`. Call it while holding the folder's writer lock. A folder of another kind, or run
    files the package did not write, are refused whatever the flags (:func:`check_destination`)."""
    run = Path(run)
    if resume and overwrite:
        raise RunFolderError(
            "--resume and --overwrite contradict each other: --resume continues the run in the "
            "folder, --overwrite deletes it and trains anew; choose one"
        )
    check_destination(run)
    if not holds_run(run):
        return
    cfg = _saved_config(run)
    if resume:
        here = (run / SETTING_FILE).is_file()
        if here != per_class:
            raise RunFolderError(
                f"--resume refused: {run} holds {_describe(run, cfg)}, not a "
                f"{'per-class' if per_class else 'unified'} run: resume it with --setting "
                f"{'per-class' if here else 'unified'}, or train anew with --overwrite"
            )
        version = format_version(cfg) if cfg else FORMAT_VERSION
        if not per_class and version != FORMAT_VERSION:
            raise RunFolderError(
                f"--resume refused: {run} was saved in checkpoint format v{version} (this version "
                f"writes v{FORMAT_VERSION}): train anew with --overwrite or into another --out"
            )
        diff = differences(cfg or {}, now or {})
        if diff:
            raise RunFolderError(
                f"--resume refused: {run} was trained with other settings ({'; '.join(diff)}). "
                f"Resume with the saved settings, or train anew with --overwrite or into "
                f"another --out"
            )
        if not per_class and not (cfg or {}).get("complete"):
            gone = clear_derived(run)
            if gone:
                say(
                    f"resuming {run}: deleted {', '.join(gone)} (they describe the weights before this session)"
                )
        return
    if not overwrite:
        raise RunFolderError(
            f"{run} already holds {_describe(run, cfg)}: pass --resume to continue it, "
            f"--overwrite to replace it (deletes its model, metrics and predictions), or choose "
            f"another --out"
        )
    gone = clear_run(run)
    say(f"--overwrite: deleted the old run in {run} ({', '.join(gone)})")


class StaleMetrics(ValueError):
    """A ``metrics.json`` that describes another save of the run than the one in its folder."""


def read_setting(run) -> dict:
    """A per-class run's ``setting.json``, checked: an object with the method (a text), the categories (a
    non-empty list of names) and the data folder (a text); refused (:class:`RunFolderError`) naming the field."""
    path = Path(run) / SETTING_FILE
    try:
        setting = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunFolderError(
            f"{path} cannot be read as JSON ({err}): it was altered; train the per-class run "
            f"again (--overwrite)"
        ) from err
    if not isinstance(setting, dict):
        raise RunFolderError(
            f"{path} holds a JSON {type(setting).__name__}, not the per-class run's settings: "
            f"it was altered; train the per-class run again (--overwrite)"
        )
    cats = setting.get("categories")
    for key, ok, want in (
        ("method", isinstance(setting.get("method"), str), "a method name"),
        (
            "categories",
            isinstance(cats, list) and cats and all(isinstance(c, str) for c in cats),
            "a non-empty list of category names",
        ),
        ("data_root", isinstance(setting.get("data_root"), str), "the data folder (a text)"),
    ):
        if not ok:
            raise RunFolderError(
                f"{path}: {key} is {setting.get(key)!r}, expected {want}: it was altered; train "
                f"the per-class run again (--overwrite)"
            )
    return setting


def save_ids(run) -> str | dict | None:
    """Which save of the model a run folder holds: its ``config.json``'s ``save_id`` (tied to the weights file),
    or for a per-class run ``{category: save_id}``; None for a run written before saves had ids."""
    run = Path(run)
    setting = run / SETTING_FILE
    if setting.is_file():
        return {
            c: (_saved_config(run / c) or {}).get("save_id")
            for c in read_setting(run)["categories"]
        }
    return (_saved_config(run) or {}).get("save_id")


def check_metrics_save(table: dict, run, source=METRICS_FILE) -> None:
    """Refuse (:class:`StaleMetrics`) a metrics table whose recorded ``save_id`` is not the save ``run`` holds
    now (the run was retrained or replaced after it was evaluated). A table without one (written before
    metrics recorded it) is taken as it is."""
    recorded = table.get("save_id")
    if recorded is None:
        return
    now = save_ids(run)
    if recorded != now:
        raise StaleMetrics(
            f"{source} describes another save of the run in {run} (save_id {recorded!r}; the "
            f"folder now holds {now!r}): the run was retrained or replaced after it was "
            f"evaluated; run `python -m unistad_edu eval --run {run}` again"
        )
