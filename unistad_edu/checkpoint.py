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

import json
import os
import math
import numbers
import uuid
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import files
from .cards import ALTERED, check_config_values  # torch-free: the export card's check uses them too
from .cards import is_int as _is_int
from .errors import CheckpointError  # noqa: F401  (defined torch-free; raised here)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "train_state.safetensors"


def atomic_write_text(path: Path, text: str) -> None:
    files.atomic_write_text(path, text)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None):
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    files.atomic_write(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        pickles = sorted(q.name for q in path.parent.glob("*") if q.suffix in (".pt", ".pth", ".ckpt", ".pkl", ".bin"))
        if pickles:
            raise CheckpointError(f"{path} does not exist; {path.parent} holds {pickles}, which are pickle files and "
                                  f"are never loaded (they can run code): retrain with unistad-edu, which writes "
                                  f"safetensors + JSON")
        raise CheckpointError(f"{path} does not exist: the run's weights are missing (an interrupted copy?); "
                              f"retrain or --resume the run")
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: only .safetensors checkpoints are loaded (no pickle)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is corrupt or truncated ({err}); retrain, or resume from an earlier copy") from err


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
        raise CheckpointError(f"{path} holds NaN/inf in {bad[:3]}: training diverged; lower the learning rate "
                              f"and retrain")




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
            fits = t.ndim == want.ndim and t.ndim >= 1 and tuple(t.shape[1:]) == tuple(want.shape[1:])
        else:
            fits = tuple(t.shape) == tuple(want.shape)
        if t.dtype != want.dtype or not fits:
            raise CheckpointError(f"{path}: tensor {name!r} is {_describe(t)} but a {model.name!r} model with this "
                                  f"config holds {_describe(want, grows)}{context}: {ALTERED}; "
                                  f"retrain, or load it with the version/config that wrote it")


# ---- model checkpoint -----------------------------------------------------------------------------------
def save_checkpoint(run_dir, model, extra: dict | None = None) -> Path:
    """Write model.safetensors then config.json (the config names the weights it belongs with)."""
    from . import __version__

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    tensors = model.state_for_checkpoint()
    save_id = uuid.uuid4().hex  # ties this config.json to this model.safetensors
    atomic_save_tensors(tensors, run / MODEL_FILE, metadata={"save_id": save_id})
    cfg = {
        "format": "unistad-edu checkpoint v1",
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
    atomic_write_text(run / CONFIG_FILE, dumps_json(cfg, indent=2))
    return run


def read_config(run_dir) -> dict:
    run = Path(run_dir)
    if not run.is_dir():
        if os.path.lexists(run):
            raise CheckpointError(f"{run} is {'a broken symbolic link' if not run.exists() else 'a file'}, not a "
                                  f"run folder: give the folder `train --out` wrote")
        raise CheckpointError(f"run folder {run} does not exist: train first (python -m unistad_edu train --out {run})")
    path = run / CONFIG_FILE
    if not path.is_file():
        if any(p.is_dir() and (p / CONFIG_FILE).is_file() for p in run.iterdir()):
            raise CheckpointError(f"{run} is a per-class run (one sub-run per category): load a sub-run, "
                                  f"e.g. {next(p for p in run.iterdir() if (p / CONFIG_FILE).is_file())}")
        raise CheckpointError(f"{run} has no {CONFIG_FILE}: not a finished run folder (train, or --resume it)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} holds a JSON {type(cfg).__name__}, not an object: not a unistad-edu "
                              f"checkpoint config")
    for key in ("method", "method_config", "teacher", "image_size"):
        if key not in cfg:
            raise CheckpointError(f"{path} lacks {key!r}: not a unistad-edu checkpoint config")
    check_config_kinds(cfg, path)
    return cfg


#: the texts and lists of config.json that commands read before the model is built, with what each must be
_CONFIG_KINDS = {"method": (str,), "teacher": (dict,), "method_config": (dict,), "data_root": (str, type(None)),
                 "train_root": (str, type(None)), "setting": (str, type(None)), "preset": (str, type(None)),
                 "save_id": (str, type(None)), "train_categories": (list, type(None))}


def check_config_kinds(cfg: dict, path) -> None:
    """Refuse (:class:`CheckpointError`) a config.json whose fields that commands read first are of the wrong
    kind (a number for the data folder, a text for the categories, ...), naming the field."""
    for key, kinds in _CONFIG_KINDS.items():
        if key in cfg and not isinstance(cfg[key], kinds):
            want = " or ".join("null" if k is type(None) else {"str": "a text", "dict": "an object",
                                                               "list": "a list"}[k.__name__] for k in kinds)
            raise CheckpointError(f"{path}: {key} is {cfg[key]!r}, expected {want}: {ALTERED}")
    cats = cfg.get("train_categories")
    if cats is not None and not all(isinstance(c, str) for c in cats):
        raise CheckpointError(f"{path}: train_categories holds {cats!r}, expected category names: {ALTERED}")


def load_checkpoint(run_dir, teacher=None, method: str | None = None, teacher_weights="auto",
                    overrides: dict | None = None):
    """Rebuild a trained model from a run folder. Checks the method, the teacher (name, layers and weights
    hash), the tensors (complete, finite) and says exactly what does not match.
    ``overrides``: method-config fields to change at load time -- test-time switches such as UniSTAD's
    ``refine`` or the dual student's ``combine``; a field that changes the weights' shapes is refused.
    Returns the model in eval mode; its ``run_config`` attribute holds config.json."""
    from .methods import build_model, make_config, method_class
    from .teacher import load_teacher

    run = Path(run_dir)
    cfg = read_config(run)
    check_config_values(cfg, run / CONFIG_FILE)
    if method is not None and cfg["method"] != method:
        raise CheckpointError(f"{run} holds a {cfg['method']!r} model, not {method!r}")
    try:
        method_class(cfg["method"])
    except ValueError as err:
        raise CheckpointError(f"{run}: {err}") from err
    try:
        config_class = method_class(cfg["method"]).Config
        legacy = config_class.missing_in_old_checkpoints
        saved = {**{k: v for k, v in legacy.items() if k not in cfg["method_config"]}, **cfg["method_config"]}
        saved = {k: config_class.renamed_values.get(k, {}).get(v, v) if isinstance(v, str) else v
                 for k, v in saved.items()}
        make_config(cfg["method"], preset="cpu", **saved)  # the saved config alone: its own errors named so
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{run / CONFIG_FILE}: method_config: {err}: {ALTERED}") from err
    try:
        mcfg = make_config(cfg["method"], preset="cpu", **{**saved, **(overrides or {})})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{run}: cannot apply --set {overrides}: {err}") from err
    want = cfg["teacher"]
    if teacher is None:
        teacher = load_teacher(want["name"], weights=teacher_weights, layers=want.get("layers"))
    have = teacher.describe()
    for key, label in (("name", "teacher"), ("layers", "teacher layers"), ("weights_hash", "teacher weights")):
        if have.get(key) != want.get(key):
            raise CheckpointError(f"{run} was trained with {label} {want.get(key)!r} but the given teacher has "
                                  f"{have.get(key)!r}: use the same teacher (weights source: {want.get('weights_source')})")
    tensors = read_tensors(run / MODEL_FILE)
    if "n_tensors" in cfg and len(tensors) != cfg["n_tensors"]:
        raise CheckpointError(f"{run / MODEL_FILE} has {len(tensors)} tensors, config.json expects "
                              f"{cfg['n_tensors']}: the files are from different runs")
    _check_finite(tensors, run / MODEL_FILE)
    if "save_id" in cfg and _metadata(run / MODEL_FILE).get("save_id") != cfg["save_id"]:
        raise CheckpointError(f"{run / MODEL_FILE} and {CONFIG_FILE} come from different saves (the run was killed "
                              f"while writing its checkpoint?): --resume the run to rewrite both, or retrain")
    model = build_model(cfg["method"], teacher, cfg=mcfg)
    tensors = model.upgrade_state(tensors)
    check_tensors_fit(tensors, model, run / MODEL_FILE, f" (load-time overrides {overrides})" if overrides else "")
    try:
        model.load_from_checkpoint(tensors)
    except (ValueError, RuntimeError) as err:
        raise CheckpointError(f"{run / MODEL_FILE} does not fit a {cfg['method']!r} model with this config: {err}") from err
    model.run_config = cfg
    # the threshold was calibrated for the saved settings: a load-time override changes the scores, so there is none
    model.threshold = None if overrides else cfg.get("threshold")
    from .calibration import Calibration
    model.verdict_calibration = None if overrides else Calibration.from_json(cfg.get("calibration"), model.threshold,
                                                                     _quantile(cfg))
    return model.eval()


def _quantile(cfg: dict) -> float:
    """The quantile a run's threshold was calibrated at (1 - its false-alarm target; 0.99 if not recorded)."""
    target = cfg.get("false_alarm_target")
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
        raise CheckpointError(f"{path} has no readable resume info ({err!r}): {ALTERED}; retrain") from err
    epoch = info.get("epoch") if isinstance(info, dict) else None
    if not _is_int(epoch) or epoch < 0 or not isinstance(info.get("param_groups"), list):
        raise CheckpointError(f"{path}: resume info epoch {epoch!r} is not a non-negative integer (or its "
                              f"param_groups are missing): {ALTERED}; retrain")
    own = model.upgrade_state({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
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


def json_safe(obj):
    """``obj`` made JSON-safe without NaN/inf: dict keys become strings, tensors and arrays lists, numpy
    scalars Python numbers, and a non-finite float becomes ``None`` with a sibling flag in its dict saying what
    it was: ``{"threshold": nan}`` -> ``{"threshold": None, "threshold_nonfinite": "nan"}`` (``"inf"`` /
    ``"-inf"``). A list holding non-finite floats gets a parallel flag list (``None`` where the value was
    finite). The result always passes ``json.dumps(..., allow_nan=False)`` (if its leaves are JSON types)."""
    return _safe(obj)[0]


def _nonfinite_name(x: float) -> str:
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _safe(x):
    """(safe value, flag or None) -- the flag says which non-finite value(s) the safe value replaced."""
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            value, flag = _safe(v)
            out[str(k)] = value
            if flag is not None:
                out[f"{k}_nonfinite"] = flag
        return out, None
    if isinstance(x, (torch.Tensor, np.ndarray)):
        x = x.tolist()
    if isinstance(x, (list, tuple)):
        pairs = [_safe(v) for v in x]
        flags = [f for _, f in pairs]
        return [v for v, _ in pairs], (flags if any(f is not None for f in flags) else None)
    if isinstance(x, (bool, np.bool_)):
        return bool(x), None
    if isinstance(x, numbers.Integral):
        return int(x), None
    if isinstance(x, numbers.Real):
        x = float(x)
        return (x, None) if math.isfinite(x) else (None, _nonfinite_name(x))
    return x, None


def dumps_json(obj, **kwargs) -> str:
    """``json.dumps`` of :func:`json_safe` (obj) with ``allow_nan=False``: never writes NaN/Infinity."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)
