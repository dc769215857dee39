"""Checked option types for the command line: each refuses a bad value where it is parsed, naming the rule.

argparse adds the option's name to the message (``argument --epochs: must be a whole number >= 1, not '0'``),
so a user sees which option was wrong and why, and nothing starts with a value that cannot work: no untrained
model saved as complete after ``--epochs 0``, no "no limit" from ``--max-minutes nan``, no verdict from a NaN
threshold, no port outside 1-65535.
"""

from __future__ import annotations

import argparse
import math

MIN_IMAGE_SIZE = 32  # the deepest default teacher level has stride 16: a 2 x 2 grid at least
MAX_IMAGE_SIZE = 4096


def _int(text: str, low: int, high: int | None, rule: str) -> int:
    try:
        value = int(text, 10)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {rule}, not {text!r}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be {rule}, not {text!r}")
    return value


def _float(text: str, positive: bool, rule: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {rule}, not {text!r}") from None
    if not math.isfinite(value) or (value <= 0 if positive else value < 0):
        raise argparse.ArgumentTypeError(f"must be {rule}, not {text!r}")
    return value


def positive_int(text: str) -> int:
    return _int(text, 1, None, "a whole number >= 1")


def nonnegative_int(text: str) -> int:
    return _int(text, 0, None, "a whole number >= 0")


THREADS_PER_CORE = (
    4  # more threads than this per core only spin: --threads 999 once drove the load to 55
)


def thread_count(text: str) -> int:
    """``--threads``: 1 to ``THREADS_PER_CORE`` x the cores this machine has."""
    import os

    cores = os.cpu_count() or 1
    return _int(
        text,
        1,
        THREADS_PER_CORE * cores,
        f"a whole number from 1 to {THREADS_PER_CORE * cores} ({THREADS_PER_CORE} per core; this machine "
        f"has {cores})",
    )


def image_size(text: str) -> int:
    return _int(
        text,
        MIN_IMAGE_SIZE,
        MAX_IMAGE_SIZE,
        f"a whole number of pixels from {MIN_IMAGE_SIZE} (the teacher's coarsest grid needs it) to "
        f"{MAX_IMAGE_SIZE}",
    )


def port(text: str) -> int:
    return _int(text, 1, 65535, "a port number from 1 to 65535")


def positive_float(text: str) -> float:
    return _float(text, True, "a finite number > 0")


def nonnegative_float(text: str) -> float:
    return _float(text, False, "a finite number >= 0")


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
    return value


def check_device(device: str):
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` that exists here, else ValueError naming what there is."""
    import torch

    if device == "auto":
        return device
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(
                f"--device {device}: no CUDA GPU is available here; use --device cpu (or auto)"
            )
        if dev.index is not None and dev.index >= n:
            raise ValueError(
                f"--device {device}: this machine has {n} CUDA GPU(s), cuda:0 to cuda:{n - 1}"
            )
    elif dev.type != "cpu":
        raise ValueError(f"--device {device}: only auto, cpu, cuda and cuda:N are supported")
    return device


def check_overrides(config_cls, overrides: dict) -> None:
    """``--set FIELD=VALUE`` values must have the type of the config field's default (an int is fine where a
    float is expected; a field whose default is None takes anything); ValueError naming the field otherwise."""
    import dataclasses

    defaults = config_cls()
    types = {f.name: str(f.type) for f in dataclasses.fields(config_cls)}
    for key, value in overrides.items():
        if key not in types:
            continue  # make_config names unknown fields with the list of known ones
        default = getattr(defaults, key)
        if default is None or (
            value is None and "None" in types[key]
        ):  # e.g. projection_dim=null: "none"
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            )
        elif isinstance(default, str):
            ok = isinstance(value, str)
        elif isinstance(default, (tuple, list)):
            ok = isinstance(value, (tuple, list))
        else:
            ok = True  # nested configs (scoring) are checked by their own dataclass
        if not ok:
            raise ValueError(
                f"--set {key}={value!r}: {key} takes a {type(default).__name__} "
                f"(its default is {default!r})"
            )
        if key in ("epochs", "batch_size") and value < 1:
            raise ValueError(f"--set {key}={value!r}: must be >= 1")
        if key == "image_size" and not MIN_IMAGE_SIZE <= value <= MAX_IMAGE_SIZE:
            raise ValueError(
                f"--set image_size={value!r}: must be from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}"
            )
        if key == "lr" and value <= 0:
            raise ValueError(f"--set lr={value!r}: must be > 0")


def picked(args: argparse.Namespace, *names: str) -> dict:
    """The parsed options ``names`` as keyword arguments: ``{name: args.name}`` (absent ones left out)."""
    return {name: getattr(args, name) for name in names if hasattr(args, name)}
