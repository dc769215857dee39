"""Checkpoints: ``model.safetensors`` + ``config.json`` in a run folder. Never pickle.

``config.json`` records what is needed to rebuild the model and to refuse a wrong one: method name and
config, teacher name / layers / weights hash, image size, normalisation, the calibrated threshold, the
package version and per-class validation statistics. Loading checks each and says exactly what does not
match. Every file is written to a temporary name and renamed into place, so a crash leaves either the old
complete file or the new complete one, never a torn file that gets loaded. The two files of a checkpoint are
renamed one after the other, so both carry the same random ``save_id`` (config.json and the safetensors
metadata): a process killed between the two renames leaves new weights beside the old config, and loading
refuses that pair instead of serving weights with another epoch's config and threshold.

Resume state (model + optimiser tensors, epoch, config) lives in one file, ``train_state.safetensors``, so
it is always self-consistent.

Nothing loads silently wrong: every stored tensor must have the dtype and shape of the freshly built model's
own tensor of that name (a method lists in ``growing_state`` the tensors whose first dimension is set by the
data, e.g. the memory bank's ``bank``: for those only the dtype, the number of dimensions and the trailing
dimensions are compared), and every number of config.json that loading uses (threshold, per-class validation
statistics, image size, epochs done, tensor count) must be a finite number of the right kind. No NaN/inf is
ever written into JSON: :func:`json_safe` replaces a non-finite float by ``null`` plus a sibling flag
(``"threshold": null, "threshold_nonfinite": "nan"``), and the writer uses ``allow_nan=False``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import files
from .cards import ALTERED, check_config_values  # torch-free: the export card's check uses them too
from .cards import is_int as _is_int
from .errors import CheckpointError  # noqa: F401  (defined torch-free; raised here)
from .files import dumps_json, json_safe  # noqa: F401  (the checkpoint's JSON writer; tests import it here)
from .layout import CONFIG_FILE, MODEL_FILE, STATE_FILE  # noqa: F401  (re-exported: engine, runs, tests)
from .ownership import RUN_FORMAT

#: config.json's ``"format"``: this version writes and reads v2 only (v2: every method-config field saved, tensors
#: under today's names); a run of another format is refused with what to do (:func:`check_format`)
FORMAT_VERSION = 2


def atomic_write_text(path: Path, text: str) -> None:
    files.atomic_write_text(path, text)


def atomic_save_tensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
):
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    files.atomic_write(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        pickles = sorted(
            q.name
            for q in path.parent.glob("*")
            if q.suffix in (".pt", ".pth", ".ckpt", ".pkl", ".bin")
        )
        if pickles:
            raise CheckpointError(
                f"{path} does not exist; {path.parent} holds {pickles}, which are pickle files and "
                f"are never loaded (they can run code): retrain with unistad-edu, which writes "
                f"safetensors + JSON"
            )
        raise CheckpointError(
            f"{path} does not exist: the run's weights are missing (an interrupted copy?); "
            f"retrain or --resume the run"
        )
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: only .safetensors checkpoints are loaded (no pickle)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path} is corrupt or truncated ({err}); retrain, or resume from an earlier copy"
        ) from err


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors holding a NaN or an infinity."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def _check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    bad = non_finite(tensors)
    if bad:
        raise CheckpointError(
            f"{path} holds NaN/inf in {bad[:3]}: training diverged; lower the learning rate "
            f"and retrain"
        )


def _describe(t: torch.Tensor, growing: bool = False) -> str:
    shape = ("N",) + tuple(t.shape[1:]) if growing else tuple(t.shape)
    return f"{t.dtype} {shape}".replace("'", "")


def check_tensors_fit(found: dict[str, torch.Tensor], model, path: Path, context: str = "") -> None:
    """Refuse a stored tensor whose dtype or shape differs from ``model``'s own tensor of that name
    (``model.state_for_checkpoint()`` of the freshly built model). Tensors named in the method's
    ``growing_state`` may differ in their first dimension only (its size comes from the data). Missing and
    unexpected names are left to ``load_from_checkpoint``, which lists them."""
    own = model.state_for_checkpoint()
    growing = set(getattr(model, "growing_state", ()) or ())
    for name, t in found.items():
        want = own.get(name)
        if want is None:
            continue
        grows = name in growing
        if grows:
            fits = (
                t.ndim == want.ndim and t.ndim >= 1 and tuple(t.shape[1:]) == tuple(want.shape[1:])
            )
        else:
            fits = tuple(t.shape) == tuple(want.shape)
        if t.dtype != want.dtype or not fits:
            raise CheckpointError(
                f"{path}: tensor {name!r} is {_describe(t)} but a {model.name!r} model with this "
                f"config holds {_describe(want, grows)}{context}: {ALTERED}; "
                f"retrain, or load it with the version/config that wrote it"
            )


# ---- model checkpoint -----------------------------------------------------------------------------------
def save_checkpoint(run_dir, model, extra: dict | None = None) -> Path:
    """Write model.safetensors then config.json (the config names the weights it belongs with)."""
    from . import __version__

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    tensors = model.state_for_checkpoint()
    save_id = uuid.uuid4().hex  # ties this config.json to this model.safetensors
    atomic_save_tensors(tensors, run / MODEL_FILE, metadata={"save_id": save_id})
    run_config = {
        "format": f"{RUN_FORMAT} v{FORMAT_VERSION}",
        "package_version": __version__,
        "method": model.name,
        "method_config": model.cfg.to_dict(),
        "teacher": model.teacher.describe(),
        "image_size": model.cfg.image_size,
        "normalization": model.teacher.normalization,
        "n_tensors": len(tensors),
        **(extra or {}),
        "save_id": save_id,
    }
    atomic_write_text(run / CONFIG_FILE, dumps_json(run_config, indent=2))
    return run


def read_config(run_dir) -> dict:
    run = Path(run_dir)
    if not run.is_dir():
        if os.path.lexists(run):
            raise CheckpointError(
                f"{run} is {'a broken symbolic link' if not run.exists() else 'a file'}, not a "
                f"run folder: give the folder `train --out` wrote"
            )
        raise CheckpointError(
            f"run folder {run} does not exist: train first (python -m unistad_edu train --out {run})"
        )
    path = run / CONFIG_FILE
    if not path.is_file():
        if any(p.is_dir() and (p / CONFIG_FILE).is_file() for p in run.iterdir()):
            raise CheckpointError(
                f"{run} is a per-class run (one sub-run per category): load a sub-run, "
                f"e.g. {next(p for p in run.iterdir() if (p / CONFIG_FILE).is_file())}"
            )
        raise CheckpointError(
            f"{run} has no {CONFIG_FILE}: not a finished run folder (train, or --resume it)"
        )
    try:
        run_config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(run_config, dict):
        raise CheckpointError(
            f"{path} holds a JSON {type(run_config).__name__}, not an object: not a unistad-edu "
            f"checkpoint config"
        )
    for key in ("method", "method_config", "teacher", "image_size"):
        if key not in run_config:
            raise CheckpointError(f"{path} lacks {key!r}: not a unistad-edu checkpoint config")
    check_config_kinds(run_config, path)
    check_format(run_config, path)
    return run_config


def format_version(run_config: dict) -> int | None:
    """The checkpoint format a config.json says it has (``"unistad-edu checkpoint v2"`` -> 2), None if none."""
    fmt = run_config.get("format")
    if not isinstance(fmt, str) or not fmt.startswith(RUN_FORMAT + " v"):
        return None
    tail = fmt[len(RUN_FORMAT) + 2 :]
    return int(tail) if tail.isdigit() else None


def check_format(run_config: dict, path) -> None:
    """Refuse (:class:`CheckpointError`) a run saved in another checkpoint format, saying what to do."""
    version = format_version(run_config)
    if version == FORMAT_VERSION:
        return
    if version is None:
        raise CheckpointError(
            f'{path} has no checkpoint format ("format": "{RUN_FORMAT} v{FORMAT_VERSION}"; '
            f"found {run_config.get('format')!r}): {ALTERED}"
        )
    retrain = f"python -m unistad_edu train --method {run_config.get('method')} --out <folder>"
    if version < FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was saved by an older unistad-edu (checkpoint format v{version}); this "
            f"version reads v{FORMAT_VERSION} only: retrain it ({retrain}), or load it with "
            f"the unistad-edu {run_config.get('package_version', '')} that wrote it"
        )
    raise CheckpointError(
        f"{path} was saved by a newer unistad-edu (checkpoint format v{version}, package "
        f"{run_config.get('package_version')}); this version reads v{FORMAT_VERSION}: upgrade unistad-edu"
    )


#: the texts and lists of config.json that commands read before the model is built, with what each must be
_CONFIG_KINDS = {
    "method": (str,),
    "teacher": (dict,),
    "method_config": (dict,),
    "data_root": (str, type(None)),
    "train_root": (str, type(None)),
    "setting": (str, type(None)),
    "preset": (str, type(None)),
    "save_id": (str, type(None)),
    "train_categories": (list, type(None)),
}


def check_config_kinds(run_config: dict, path) -> None:
    """Refuse (:class:`CheckpointError`) a config.json whose fields that commands read first are of the wrong
    kind (a number for the data folder, a text for the categories, ...), naming the field."""
    for key, kinds in _CONFIG_KINDS.items():
        if key in run_config and not isinstance(run_config[key], kinds):
            want = " or ".join(
                "null"
                if k is type(None)
                else {"str": "a text", "dict": "an object", "list": "a list"}[k.__name__]
                for k in kinds
            )
            raise CheckpointError(
                f"{path}: {key} is {run_config[key]!r}, expected {want}: {ALTERED}"
            )
    cats = run_config.get("train_categories")
    if cats is not None and not all(isinstance(c, str) for c in cats):
        raise CheckpointError(
            f"{path}: train_categories holds {cats!r}, expected category names: {ALTERED}"
        )


def load_checkpoint(
    run_dir,
    teacher=None,
    method: str | None = None,
    teacher_weights="auto",
    overrides: dict | None = None,
):
    """Rebuild a trained model from a run folder. Checks the method, the teacher (name, layers and weights
    hash), the tensors (complete, finite) and says exactly what does not match.
    ``overrides``: method-config fields to change at load time -- test-time switches such as UniSTAD's
    ``refine`` or the dual student's ``combine``; a field that changes the weights' shapes is refused.
    Returns the model in eval mode; its ``run_config`` attribute holds config.json."""
    from .calibration import Calibration
    from .methods import build_model

    run = Path(run_dir)
    run_config = read_config(run)
    check_config_values(run_config, run / CONFIG_FILE)
    if method is not None and run_config["method"] != method:
        raise CheckpointError(f"{run} holds a {run_config['method']!r} model, not {method!r}")
    method_cfg = _saved_method_config(run, run_config, overrides)
    teacher = _matching_teacher(run, run_config["teacher"], teacher, teacher_weights)
    tensors = _saved_tensors(run, run_config)
    model = build_model(run_config["method"], teacher, cfg=method_cfg)
    check_tensors_fit(
        tensors, model, run / MODEL_FILE, f" (load-time overrides {overrides})" if overrides else ""
    )
    try:
        model.load_from_checkpoint(tensors)
    except (ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{run / MODEL_FILE} does not fit a {run_config['method']!r} model with this config: {err}"
        ) from err
    model.run_config = run_config
    # the threshold was calibrated for the saved settings: a load-time override changes the scores, so there is none
    model.threshold = None if overrides else run_config.get("threshold")
    model.verdict_calibration = (
        None
        if overrides
        else Calibration.from_json(
            run_config.get("calibration"), model.threshold, _quantile(run_config)
        )
    )
    return model.eval()


def _saved_method_config(run: Path, run_config: dict, overrides: dict | None):
    """The method config saved in config.json (all fields, valid), ``overrides`` applied."""
    from .methods import make_config, method_class

    try:
        config_class = method_class(run_config["method"]).Config
    except ValueError as err:
        raise CheckpointError(f"{run}: {err}") from err
    from .methods.base import ADDED_FIELDS

    names = {f.name for f in dataclasses.fields(config_class)}
    # a field added since the run was saved gets its value of "before it"; a saved value always wins
    added = {k: v for k, v in ADDED_FIELDS.items() if k in names}
    saved = {**added, **run_config["method_config"]}
    missing = sorted(n for n in names if n not in saved)
    if missing:  # every other field is saved: none is filled in with today's default
        raise CheckpointError(f"{run / CONFIG_FILE}: method_config lacks {missing}: {ALTERED}")
    try:
        # the saved config alone: its own errors named so
        make_config(run_config["method"], preset="cpu", **saved)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{run / CONFIG_FILE}: method_config: {err}: {ALTERED}") from err
    try:
        return make_config(run_config["method"], preset="cpu", **{**saved, **(overrides or {})})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{run}: cannot apply --set {overrides}: {err}") from err


def _matching_teacher(run: Path, want: dict, teacher, teacher_weights):
    """``teacher`` (None: the saved one, loaded); refused unless its name, layers and weights
    match ``want``."""
    from .teacher import load_teacher

    if teacher is None:
        teacher = load_teacher(want["name"], weights=teacher_weights, layers=want.get("layers"))
    have = teacher.describe()
    for key, label in (
        ("name", "teacher"),
        ("layers", "teacher layers"),
        ("weights_hash", "teacher weights"),
    ):
        if have.get(key) != want.get(key):
            raise CheckpointError(
                f"{run} was trained with {label} {want.get(key)!r} but the given teacher has "
                f"{have.get(key)!r}: use the same teacher (weights source: {want.get('weights_source')})"
            )
    return teacher


def _saved_tensors(run: Path, run_config: dict) -> dict[str, torch.Tensor]:
    """The run's model tensors; refused unless complete, finite and saved with config.json."""
    tensors = read_tensors(run / MODEL_FILE)
    if "n_tensors" in run_config and len(tensors) != run_config["n_tensors"]:
        raise CheckpointError(
            f"{run / MODEL_FILE} has {len(tensors)} tensors, config.json expects "
            f"{run_config['n_tensors']}: the files are from different runs"
        )
    _check_finite(tensors, run / MODEL_FILE)
    if (
        "save_id" in run_config
        and _metadata(run / MODEL_FILE).get("save_id") != run_config["save_id"]
    ):
        raise CheckpointError(
            f"{run / MODEL_FILE} and {CONFIG_FILE} come from different saves (the run was killed "
            f"while writing its checkpoint?): --resume the run to rewrite both, or retrain"
        )
    return tensors


def _quantile(run_config: dict) -> float:
    """The quantile a run's threshold was calibrated at (1 - its false-alarm target; 0.99 if not recorded)."""
    target = run_config.get("false_alarm_target")
    return 1.0 - float(target) if isinstance(target, (int, float)) and 0 < target < 1 else 0.99


# ---- resume state --------------------------------------------------------------------------------------
def save_train_state(run_dir, model, optimizer, epoch: int, meta: dict) -> None:
    """Model + optimiser tensors and the epoch count, in one atomically written file."""
    tensors = {f"model.{k}": v for k, v in model.state_for_checkpoint().items()}
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for name, value in st.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"optim.{idx}.{name}"] = t
    info = {"epoch": epoch, "param_groups": opt["param_groups"], **meta}
    atomic_save_tensors(tensors, Path(run_dir) / STATE_FILE, metadata={"info": dumps_json(info)})


def load_train_state(run_dir, model, optimizer) -> dict:
    """Restore what :func:`save_train_state` wrote; returns its info dict (with ``epoch``)."""
    from safetensors import safe_open

    path = Path(run_dir) / STATE_FILE
    tensors = read_tensors(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    try:
        info = json.loads(meta["info"])
    except (KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{path} has no readable resume info ({err!r}): {ALTERED}; retrain"
        ) from err
    epoch = info.get("epoch") if isinstance(info, dict) else None
    if not _is_int(epoch) or epoch < 0 or not isinstance(info.get("param_groups"), list):
        raise CheckpointError(
            f"{path}: resume info epoch {epoch!r} is not a non-negative integer (or its "
            f"param_groups are missing): {ALTERED}; retrain"
        )
    own = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    check_tensors_fit(own, model, path)
    try:
        model.load_from_checkpoint(own)
    except (ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} does not fit this {model.name!r} model: {err}") from err
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    return info
