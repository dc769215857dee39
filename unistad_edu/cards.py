"""The JSON cards the package reads -- a run's ``config.json`` and an export's ``export.json`` -- checked field by
field before anything in them is used. Torch-free: serving an export imports it without PyTorch.

* :func:`check_config_values` -- the numbers of ``config.json`` that loading and scoring use.
* :func:`check_export_card` -- every field of ``export.json``: its known fields only, their types, a finite
  threshold (or ``null``), an image size, a SHA-256 digest for every file it names, file names that stay in
  the export folder (a plain name, no ``..``, no absolute path, no symbolic link leading out), the model file
  among the digested files, and the embedded ``run_config`` checked as a ``config.json``.

Each refusal is a :class:`~unistad_edu.errors.CheckpointError` naming the file and the field.
"""

from __future__ import annotations

import math
import numbers
import re
from pathlib import Path, PurePosixPath

from .errors import CheckpointError

ALTERED = "the file was altered or comes from another version/configuration"
#: every field an export card has ever held (export formats 1 and 2)
EXPORT_FIELDS = frozenset(
    {
        "export_format_version",
        "package_version",
        "format",
        "model_file",
        "files",
        "inputs",
        "outputs",
        "method",
        "teacher",
        "image_size",
        "normalization",
        "threshold",
        "threshold_rule",
        "calibration",
        "precision",
        "opset",
        "exporter",
        "source_run",
        "save_id",
        "run_config",
        "parity",
        "export_seconds",
    }
)
EXPORT_REQUIRED = ("export_format_version", "format", "files", "model_file", "image_size", "method")
SHA256 = re.compile(r"[0-9a-f]{64}")


def is_number(x) -> bool:
    """A real number that is not a bool (JSON ``true`` is not 1.0 here)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def is_int(x) -> bool:
    """An integer that is not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_config_values(cfg: dict, path: Path) -> None:
    """Refuse a config.json whose numbers that loading and scoring use are not finite numbers of the right
    kind: ``threshold`` (a finite number, or ``null`` = no threshold), ``validation.per_class`` statistics,
    ``image_size`` (an integer in 1..4096, also in ``method_config``), ``epochs_done`` and ``n_tensors``
    (non-negative integers)."""

    def refuse(field: str, value, want: str):
        raise CheckpointError(f"{path}: {field} is {value!r}, expected {want}: {ALTERED}")

    th = cfg.get("threshold")
    if th is None:
        if cfg.get("threshold_nonfinite") is not None:
            raise CheckpointError(
                f"{path}: threshold was {cfg['threshold_nonfinite']} when the run was saved (the "
                f"held-out scores were not finite): retrain; the model has no usable threshold"
            )
    elif not is_number(th) or not math.isfinite(th):
        refuse("threshold", th, "a finite number (or null for no threshold)")
    validation = cfg.get("validation")
    if validation is not None:
        if not isinstance(validation, dict):
            refuse("validation", validation, "an object")
        per = validation.get("per_class")
        if per is not None:
            if not isinstance(per, dict):
                refuse("validation.per_class", per, "an object of per-category statistics")
            for cat, stats in per.items():
                if not isinstance(stats, dict):
                    refuse(f"validation.per_class.{cat}", stats, "an object of statistics")
                for key, value in stats.items():
                    if not is_number(value) or not math.isfinite(value):
                        refuse(f"validation.per_class.{cat}.{key}", value, "a finite number")
    if cfg.get("calibration") is not None:
        from .calibration import check_calibration

        try:
            check_calibration(cfg["calibration"])
        except ValueError as err:
            raise CheckpointError(f"{path}: {err}: {ALTERED}") from err
    sizes = [("image_size", cfg.get("image_size"))]
    mc = cfg.get("method_config")
    if not isinstance(mc, dict):
        refuse("method_config", mc, "an object")
    if "image_size" in mc:
        sizes.append(("method_config.image_size", mc["image_size"]))
    for field, size in sizes:
        if not is_int(size) or not 1 <= size <= 4096:
            refuse(field, size, "an integer image side in pixels, 1..4096")
    if len(sizes) == 2 and sizes[0][1] != sizes[1][1]:
        raise CheckpointError(
            f"{path}: image_size {sizes[0][1]} differs from method_config.image_size "
            f"{sizes[1][1]}: {ALTERED}"
        )
    for field in ("epochs_done", "n_tensors"):
        if field in cfg and (not is_int(cfg[field]) or cfg[field] < 0):
            refuse(field, cfg[field], "a non-negative integer")


# ---- export.json ---------------------------------------------------------------------------------------------
class _Refuse:
    """Raises the card's :class:`CheckpointError` for one field: '<card>: <field> is <value>, expected ...'."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, field: str, value, want: str, fix: str = "export the run again"):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise CheckpointError(f"{self.path}: {field} is {shown}, expected {want}: {ALTERED}; {fix}")


def _check_fields(card: dict, refuse: _Refuse) -> None:
    """Known fields only, the required ones present."""
    unknown = sorted(set(card) - EXPORT_FIELDS)
    if unknown:
        refuse(
            f"field {unknown[0]!r}",
            card[unknown[0]],
            f"only the fields an export writes ({', '.join(sorted(EXPORT_FIELDS))})",
        )
    for key in EXPORT_REQUIRED:
        if key not in card:
            raise CheckpointError(
                f"{refuse.path} lacks {key!r}: the card is damaged; export the run again"
            )


def _check_scalars(card: dict, formats, refuse: _Refuse) -> None:
    """Format, method, image size, threshold and the fields that are text or objects."""
    if card["format"] not in formats:
        refuse("format", card["format"], f"one of {', '.join(formats)}")
    if not isinstance(card["method"], str) or not card["method"]:
        refuse("method", card["method"], "a method name")
    if not is_int(card["image_size"]) or not 1 <= card["image_size"] <= 4096:
        refuse("image_size", card["image_size"], "an integer image side in pixels, 1..4096")
    th = card.get("threshold")
    if th is not None and (not is_number(th) or not math.isfinite(th)):
        refuse("threshold", th, "a finite number (or null for no threshold)")
    if "opset" in card and not is_int(card["opset"]):
        refuse("opset", card["opset"], "an integer")
    for key in (
        "package_version",
        "threshold_rule",
        "precision",
        "exporter",
        "source_run",
        "save_id",
    ):
        if card.get(key) is not None and not isinstance(card[key], str):
            refuse(key, card[key], "text (or null)")
    for key in ("teacher", "normalization", "inputs", "parity", "run_config"):
        if card.get(key) is not None and not isinstance(card[key], dict):
            refuse(key, card[key], "an object (or null)")
    if card.get("export_seconds") is not None and (
        not is_number(card["export_seconds"]) or not math.isfinite(card["export_seconds"])
    ):
        refuse("export_seconds", card["export_seconds"], "a finite number")


def _check_outputs(card: dict, names, refuse: _Refuse) -> None:
    """``outputs``: an object naming the graph's outputs, the first two always (format 1 has only those)."""
    outputs = card.get("outputs")
    if outputs is None:
        return
    if (
        not isinstance(outputs, dict)
        or not set(outputs) <= set(names)
        or not set(names[:2]) <= set(outputs)
    ):
        refuse(
            "outputs",
            outputs,
            f"an object naming {', '.join(names[:2])} (and {', '.join(names[2:])})",
        )


def check_file_name(folder: Path, name, field: str, refuse: _Refuse) -> Path:
    """``folder / name`` for a plain file name that stays in ``folder``: no absolute path, no ``..`` or
    sub-folder, no symbolic link whose target lies outside ``folder``."""
    want = "a plain file name inside the export folder"
    if not isinstance(name, str) or not name or "\x00" in name:
        refuse(field, name, want)
    pure = PurePosixPath(name)
    if pure.is_absolute() or name in (".", "..") or pure.name != name or "\\" in name:
        refuse(field, name, want + " (no absolute path, no '..', no sub-folder)")
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):
        refuse(
            field, name, want + f" (it is a symbolic link to {path.resolve()}, outside the folder)"
        )
    return path


def _check_files(card: dict, folder: Path, refuse: _Refuse) -> None:
    """Every file named: a plain name inside the folder and a SHA-256 digest (64 hex digits); the model file,
    and OpenVINO's weights beside it, among them."""
    files = card["files"]
    if not isinstance(files, dict) or not files:
        refuse("files", files, "an object of file name -> SHA-256")
    for name, digest in files.items():
        check_file_name(folder, name, f"files[{name!r}]", refuse)
        if not isinstance(digest, str) or not SHA256.fullmatch(digest):
            refuse(
                f"the SHA-256 of {name}", digest, "64 lowercase hex digits (every file is checked)"
            )
    model = card["model_file"]
    check_file_name(folder, model, "model_file", refuse)
    if model not in files:
        refuse("model_file", model, f"one of the files with a digest ({', '.join(files)})")
    if card["format"] == "openvino":
        weights = str(PurePosixPath(model).with_suffix(".bin"))
        if weights not in files:
            refuse(
                "files",
                sorted(files),
                f"{weights} (the OpenVINO weights read beside {model}) among them",
            )


def check_export_card(card, folder: Path, formats, output_names) -> None:
    """Refuse (:class:`CheckpointError`, naming the field) an ``export.json`` that an export of this package
    could not have written; see the module docstring. Digests are compared by the reader
    (:func:`unistad_edu.export_runtime.read_card`)."""
    path = Path(folder) / "export.json"
    refuse = _Refuse(path)
    if not isinstance(card, dict):
        raise CheckpointError(
            f"{path} is not a JSON object: not a unistad-edu export card; export the run again"
        )
    _check_fields(card, refuse)
    _check_scalars(card, formats, refuse)
    _check_outputs(card, output_names, refuse)
    _check_files(card, Path(folder), refuse)
    if card.get("calibration") is not None:
        from .calibration import check_calibration

        try:
            check_calibration(card["calibration"])
        except ValueError as err:
            raise CheckpointError(f"{path}: {err}: {ALTERED}; export the run again") from err
    if card.get("run_config") is not None:
        check_config_values(card["run_config"], f"{path} (run_config)")
