"""Nothing loads silently wrong: checkpoint tensors are checked by dtype and shape against the method's own
state, config.json's numbers must be finite and of the right kind, and no NaN/inf is ever written into JSON."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from unistad_edu.checkpoint import (
    CheckpointError,
    json_safe,
    load_checkpoint,
    load_train_state,
    save_checkpoint,
)
from unistad_edu.data import MVTecDataset
from unistad_edu.engine import TrainConfig, fit, make_optimizer
from unistad_edu.inference import score_dataset
from unistad_edu.methods import build_model

from .conftest import tiny_synthetic

SIZE = 64
ALTERED = "the file was altered or comes from another version/configuration"
TRAIN = dict(progress=False, holdout_fraction=0.3, precision="fp32")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_synthetic(tmp_path_factory, SIZE, n_train=6, n_test_good=1, n_test_defect=1)


@pytest.fixture(scope="module")
def stpm_run(data, lite0_teacher, one_thread, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("stpm") / "run"
    model = build_model("stpm", lite0_teacher, image_size=SIZE, epochs=1, batch_size=4)
    fit(model, MVTecDataset(data, "train", image_size=SIZE), TrainConfig(**TRAIN), out=run)
    return run


@pytest.fixture(scope="module")
def bank_run(data, lite0_teacher, one_thread, tmp_path_factory):
    run = tmp_path_factory.mktemp("bank") / "run"
    model = build_model("memory_bank", lite0_teacher, image_size=SIZE, batch_size=4)
    fit(model, MVTecDataset(data, "train", image_size=SIZE), TrainConfig(**TRAIN), out=run)
    return run, model


def _copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(run, out)
    return out


def _rewrite_tensors(path: Path, change) -> None:
    """Change the tensors of a safetensors file in place, keeping its metadata (``save_id``, resume info)."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata=metadata)


def _float_tensor(tensors: dict[str, torch.Tensor], prefix: str = "") -> str:
    return next(
        k
        for k, v in sorted(tensors.items())
        if k.startswith(prefix) and v.is_floating_point() and v.ndim >= 2 and v.numel() > 1
    )


def _edit_config(run: Path, change) -> None:
    cfg = json.loads((run / "config.json").read_text())
    change(cfg)
    (run / "config.json").write_text(json.dumps(cfg, allow_nan=True))


# ---- (a) tensors: dtype and shape -------------------------------------------------------------------------
def test_float_tensor_cast_to_int_is_refused(stpm_run, lite0_teacher, tmp_path):
    run = _copy(stpm_run, tmp_path)
    name = _float_tensor(load_file(str(run / "model.safetensors")))

    def cast(t):
        t[name] = t[name].round().to(torch.int32)

    _rewrite_tensors(run / "model.safetensors", cast)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(run, teacher=lite0_teacher)
    msg = str(err.value)
    assert (
        repr(name) in msg and "torch.int32" in msg and "torch.float32" in msg and ALTERED in msg
    ), msg


def test_integer_buffer_of_another_dtype_is_refused(stpm_run, lite0_teacher, tmp_path):
    run = _copy(stpm_run, tmp_path)
    tensors = load_file(str(run / "model.safetensors"))
    ints = [k for k, v in tensors.items() if not v.is_floating_point()]
    if not ints:
        pytest.skip("this method stores no integer buffer")
    name = sorted(ints)[0]
    want = tensors[name].dtype

    def cast(t):
        t[name] = t[name].to(torch.int32 if want != torch.int32 else torch.int64)

    _rewrite_tensors(run / "model.safetensors", cast)
    with pytest.raises(
        CheckpointError, match=re.escape(repr(name)) + f".*{re.escape(str(want))}.*{ALTERED}"
    ):
        load_checkpoint(run, teacher=lite0_teacher)


def test_reshaped_tensor_is_refused(stpm_run, lite0_teacher, tmp_path):
    run = _copy(stpm_run, tmp_path)
    tensors = load_file(str(run / "model.safetensors"))
    name = _float_tensor(tensors)
    shape = tuple(tensors[name].shape)
    new = (
        (shape[1], shape[0], *shape[2:])
        if shape[0] != shape[1]
        else (shape[0] * shape[1], *shape[2:])
    )

    def reshape(t):
        t[name] = t[name].reshape(new).contiguous()

    _rewrite_tensors(run / "model.safetensors", reshape)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(run, teacher=lite0_teacher)
    msg = str(err.value)
    assert repr(name) in msg and str(new) in msg and str(shape) in msg and ALTERED in msg, msg


def test_resume_state_with_a_cast_model_tensor_is_refused(stpm_run, lite0_teacher, tmp_path):
    run = _copy(stpm_run, tmp_path)
    path = run / "train_state.safetensors"
    name = _float_tensor(load_file(str(path)), prefix="model.")

    def cast(t):
        t[name] = t[name].round().to(torch.int32)

    model = build_model("stpm", lite0_teacher, image_size=SIZE, epochs=1, batch_size=4)
    assert (
        load_train_state(run, model, make_optimizer(model))["epoch"] == 1
    )  # the real state resumes
    _rewrite_tensors(path, cast)
    model = build_model("stpm", lite0_teacher, image_size=SIZE, epochs=1, batch_size=4)
    with pytest.raises(
        CheckpointError, match=re.escape(repr(name[len("model.") :])) + ".*torch.int32.*" + ALTERED
    ):
        load_train_state(run, model, make_optimizer(model))


# ---- (b) the memory bank's grown state ----------------------------------------------------------------------
def test_memory_bank_keeps_its_grown_bank_and_refuses_an_altered_one(
    bank_run, data, lite0_teacher, tmp_path
):
    run, model = bank_run
    assert model.bank.shape[0] > 0
    loaded = load_checkpoint(run, teacher=lite0_teacher)
    assert torch.equal(loaded.bank, model.bank)
    test = MVTecDataset(data, "test", image_size=SIZE)
    a = score_dataset(model.eval(), test, keep_maps=False)["scores"]
    b = score_dataset(loaded, test, keep_maps=False)["scores"]
    np.testing.assert_allclose(a, b, rtol=1e-5)

    half = _copy(run, tmp_path / "half")
    _rewrite_tensors(half / "model.safetensors", lambda t: t.update(bank=t["bank"].half()))
    with pytest.raises(
        CheckpointError, match=r"'bank' is torch\.float16.*torch\.float32 \(N, \d+\).*" + ALTERED
    ):
        load_checkpoint(half, teacher=lite0_teacher)

    narrow = _copy(
        run, tmp_path / "narrow"
    )  # another embedding width: the non-growing dimension differs
    _rewrite_tensors(
        narrow / "model.safetensors", lambda t: t.update(bank=t["bank"][:, :-1].contiguous())
    )
    with pytest.raises(
        CheckpointError, match=r"'bank' is torch\.float32 \(\d+, \d+\).*\(N, \d+\).*" + ALTERED
    ):
        load_checkpoint(narrow, teacher=lite0_teacher)


# ---- (c) config.json numbers ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), float("-inf"), "abc", True, [0.5]],
    ids=["nan", "inf", "-inf", "string", "bool", "list"],
)
def test_bad_threshold_is_refused(stpm_run, lite0_teacher, tmp_path, value):
    run = _copy(stpm_run, tmp_path)
    _edit_config(run, lambda cfg: cfg.update(threshold=value))
    with pytest.raises(CheckpointError, match=r"threshold is .*expected a finite number"):
        load_checkpoint(run, teacher=lite0_teacher)


def test_null_threshold_means_none_but_a_nonfinite_one_is_refused(
    stpm_run, lite0_teacher, tmp_path
):
    run = _copy(stpm_run, tmp_path)
    _edit_config(run, lambda cfg: cfg.update(threshold=None))
    assert load_checkpoint(run, teacher=lite0_teacher).threshold is None
    _edit_config(
        run, lambda cfg: cfg.update(threshold_nonfinite="nan")
    )  # what json_safe writes for a NaN
    with pytest.raises(CheckpointError, match="threshold was nan when the run was saved"):
        load_checkpoint(run, teacher=lite0_teacher)


# ---- (d) the checkpoint format: this version's only, no migration ----------------------------------------------
def test_a_run_is_saved_as_format_v2_with_every_config_field(stpm_run):
    from dataclasses import fields

    from unistad_edu.methods import method_class

    cfg = json.loads((stpm_run / "config.json").read_text())
    assert cfg["format"] == "unistad-edu checkpoint v2"
    assert {f.name for f in fields(method_class("stpm").Config)} == set(cfg["method_config"])


@pytest.mark.parametrize(
    "fmt,words",
    [
        (
            "unistad-edu checkpoint v1",
            r"older unistad-edu \(checkpoint format v1\).*retrain it \(python -m unistad_edu "
            r"train --method stpm",
        ),
        (
            "unistad-edu checkpoint v3",
            r"newer unistad-edu \(checkpoint format v3.*upgrade unistad-edu",
        ),
        ("unistad-edu checkpoint", r"has no checkpoint format"),
        (None, r"has no checkpoint format"),
    ],
)
def test_a_run_of_another_format_is_refused_saying_what_to_do(
    stpm_run, lite0_teacher, tmp_path, fmt, words
):
    run = _copy(stpm_run, tmp_path)
    _edit_config(run, lambda cfg: cfg.update(format=fmt) if fmt else cfg.pop("format"))
    with pytest.raises(CheckpointError, match=words):
        load_checkpoint(run, teacher=lite0_teacher)


def test_a_missing_config_field_is_not_filled_with_a_default(stpm_run, lite0_teacher, tmp_path):
    """Every field is saved; one missing is refused by name (an older run used to get today's default)."""
    run = _copy(stpm_run, tmp_path)
    _edit_config(run, lambda cfg: cfg["method_config"].pop("sampling"))
    with pytest.raises(CheckpointError, match=r"method_config lacks \['sampling'\]: " + ALTERED):
        load_checkpoint(run, teacher=lite0_teacher)


def test_a_field_added_since_loads_with_its_off_value_not_todays_default(lite0_teacher, tmp_path):
    """A run saved before RD's feature jitter existed (its config lacks ``bottleneck_jitter``) did not jitter:
    it loads with 0, not with the cpu preset's 5; the run's other fields stay as saved."""
    from unistad_edu.checkpoint import save_checkpoint

    model = build_model("rd", lite0_teacher, image_size=SIZE, epochs=1, rdpp=False)
    assert model.cfg.bottleneck_jitter == 5.0  # today's default
    run = tmp_path / "rd"
    save_checkpoint(run, model)
    _edit_config(run, lambda cfg: cfg["method_config"].pop("bottleneck_jitter"))
    loaded = load_checkpoint(run, teacher=lite0_teacher)
    assert (
        loaded.cfg.bottleneck_jitter == 0.0 and loaded.cfg.rdpp is False and loaded.cfg.epochs == 1
    )


def test_resuming_a_run_of_an_older_format_is_refused(stpm_run, data, lite0_teacher, tmp_path):
    from unistad_edu.runs import RunFolderError

    run = _copy(stpm_run, tmp_path)
    _edit_config(run, lambda cfg: cfg.update(format="unistad-edu checkpoint v1", complete=False))
    model = build_model("stpm", lite0_teacher, image_size=SIZE, epochs=2, batch_size=4)
    with pytest.raises(RunFolderError, match=r"saved in checkpoint format v1.*--overwrite"):
        fit(
            model,
            MVTecDataset(data, "train", image_size=SIZE),
            TrainConfig(**TRAIN),
            out=run,
            resume=True,
        )


def test_the_old_sampling_name_is_refused_in_a_new_config():
    from unistad_edu.methods import make_config

    with pytest.raises(ValueError, match="balanced-labels"):
        make_config("stpm", sampling="balanced")


@pytest.mark.parametrize(
    "stat,value", [("max", float("nan")), ("mean", float("inf")), ("std", "x"), ("n", None)]
)
def test_bad_per_class_statistics_are_refused(stpm_run, lite0_teacher, tmp_path, stat, value):
    run = _copy(stpm_run, tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    cat = sorted(cfg["validation"]["per_class"])[0]
    _edit_config(run, lambda c: c["validation"]["per_class"][cat].update({stat: value}))
    with pytest.raises(CheckpointError, match=re.escape(f"validation.per_class.{cat}.{stat} is")):
        load_checkpoint(run, teacher=lite0_teacher)


@pytest.mark.parametrize(
    "field,value",
    [
        ("image_size", 0),
        ("image_size", "big"),
        ("image_size", 5000),
        ("image_size", 64.5),
        ("image_size", -64),
        ("epochs_done", "1"),
        ("epochs_done", 1.5),
        ("n_tensors", "3"),
    ],
)
def test_absurd_sizes_and_counts_are_refused(stpm_run, lite0_teacher, tmp_path, field, value):
    run = _copy(stpm_run, tmp_path)
    _edit_config(run, lambda cfg: cfg.update({field: value}))
    with pytest.raises(
        CheckpointError, match=rf"config\.json: {field} is {re.escape(repr(value))}, expected"
    ):
        load_checkpoint(run, teacher=lite0_teacher)


def test_image_size_must_agree_with_the_method_config(stpm_run, lite0_teacher, tmp_path):
    run = _copy(stpm_run, tmp_path)
    _edit_config(run, lambda cfg: cfg["method_config"].update(image_size=0))
    with pytest.raises(CheckpointError, match=r"method_config\.image_size is 0"):
        load_checkpoint(run, teacher=lite0_teacher)
    _edit_config(run, lambda cfg: cfg["method_config"].update(image_size=128))
    with pytest.raises(
        CheckpointError, match=r"image_size 64 differs from method_config\.image_size 128"
    ):
        load_checkpoint(run, teacher=lite0_teacher)


# ---- (d) no NaN in JSON ---------------------------------------------------------------------------------------
def test_json_safe_replaces_nonfinite_floats_by_null_and_a_flag():
    obj = {
        "threshold": float("nan"),
        "ok": 1.5,
        "n": np.int64(3),
        "flag": np.bool_(True),
        "validation": {
            "per_class": {
                "a": {"max": float("inf"), "mean": np.float32(0.25), "std": float("-inf")}
            }
        },
        "curve": [1.0, float("nan"), 2.0],
        "t": torch.tensor([0.5, float("inf")]),
        7: "key",
    }
    safe = json_safe(obj)
    assert safe["threshold"] is None and safe["threshold_nonfinite"] == "nan"
    assert (
        safe["ok"] == 1.5 and safe["n"] == 3 and safe["flag"] is True and "ok_nonfinite" not in safe
    )
    a = safe["validation"]["per_class"]["a"]
    assert a == {
        "max": None,
        "max_nonfinite": "inf",
        "mean": 0.25,
        "std": None,
        "std_nonfinite": "-inf",
    }
    assert safe["curve"] == [1.0, None, 2.0] and safe["curve_nonfinite"] == [None, "nan", None]
    assert safe["t"] == [0.5, None] and safe["t_nonfinite"] == [None, "inf"]
    assert safe["7"] == "key"
    text = json.dumps(safe, allow_nan=False)
    assert "NaN" not in text and "Infinity" not in text
    assert json_safe(safe) == safe  # already safe: unchanged
    with pytest.raises(ValueError):  # what the writer would have refused without json_safe
        json.dumps(obj, allow_nan=False, default=str)


def test_save_checkpoint_never_writes_nan(stpm_run, lite0_teacher, tmp_path):
    model = load_checkpoint(stpm_run, teacher=lite0_teacher)
    model.threshold = float("nan")
    out = tmp_path / "nan_run"
    save_checkpoint(
        out,
        model,
        {
            "threshold": model.threshold,
            "epochs_done": 1,
            "validation": {"per_class": {"a": {"n": 2, "mean": float("nan"), "max": 1.0}}},
        },
    )
    text = (out / "config.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    cfg = json.loads(text)
    assert cfg["threshold"] is None and cfg["threshold_nonfinite"] == "nan"
    assert cfg["validation"]["per_class"]["a"]["mean_nonfinite"] == "nan"
    with pytest.raises(
        CheckpointError, match="threshold was nan"
    ):  # and loading says so, never "no threshold"
        load_checkpoint(out, teacher=lite0_teacher)
