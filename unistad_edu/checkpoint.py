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
"""
from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "train_state.safetensors"


class CheckpointError(ValueError):
    """A run folder or checkpoint cannot be used; the message says what does not match."""


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


def _check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path} holds NaN/inf in {bad[:3]}: training diverged; lower the learning rate "
                              f"and retrain")


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
    atomic_write_text(run / CONFIG_FILE, json.dumps(_jsonable(cfg), indent=2))
    return run


def read_config(run_dir) -> dict:
    run = Path(run_dir)
    if not run.is_dir():
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
    for key in ("method", "method_config", "teacher", "image_size"):
        if key not in cfg:
            raise CheckpointError(f"{path} lacks {key!r}: not a unistad-edu checkpoint config")
    return cfg


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
    if method is not None and cfg["method"] != method:
        raise CheckpointError(f"{run} holds a {cfg['method']!r} model, not {method!r}")
    try:
        method_class(cfg["method"])
    except ValueError as err:
        raise CheckpointError(f"{run}: {err}") from err
    try:
        mcfg = make_config(cfg["method"], preset="cpu", **{**cfg["method_config"], **(overrides or {})})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{run}: cannot apply {overrides}: {err}") from err
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
    try:
        model.load_from_checkpoint(tensors)
    except (ValueError, RuntimeError) as err:
        raise CheckpointError(f"{run / MODEL_FILE} does not fit a {cfg['method']!r} model with this config: {err}") from err
    model.run_config = cfg
    model.threshold = cfg.get("threshold")
    return model.eval()


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
    atomic_save_tensors(tensors, Path(run_dir) / STATE_FILE, metadata={"info": json.dumps(_jsonable(info))})


def load_train_state(run_dir, model, optimizer) -> dict:
    """Restore what :func:`save_train_state` wrote; returns its info dict (with ``epoch``)."""
    from safetensors import safe_open

    path = Path(run_dir) / STATE_FILE
    tensors = read_tensors(path)
    with safe_open(str(path), framework="pt") as f:
        info = json.loads(f.metadata()["info"])
    model.load_from_checkpoint({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    return info


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return x
