"""Own what you delete: every folder the package writes carries a marker of what wrote it, and
``--overwrite`` / ``--force`` replace a folder only when its marker says it is what is about to be written.

A marker is a field only the package's own writer puts there, not just a file name (another tool may well
write a ``config.json``):

* **run folder** -- ``config.json`` whose ``"format"`` starts ``"unistad-edu checkpoint v"`` (every version
  writes it; :mod:`unistad_edu.checkpoint` reads only its own format);
  the outer folder of a per-class run -- ``setting.json`` with ``"setting": "per-class"``, a method and its
  categories;
* **export folder** -- ``export.json`` with an integer ``export_format_version`` and a ``files`` table;
* **synthetic set** -- ``SYNTHETIC.json`` with ``"format": "unistad_edu.synthetic (MVTec AD layout)"``;
* **validation set** -- ``VALIDATION.json`` with a ``spec`` (its version and defect kinds) and ``counts``;
* **downloaded category** -- its name under ``categories`` in ``DOWNLOADS.json`` of the folder above it.

:func:`kind` says which of these a path is, :func:`describe` names it for the messages that refuse. Each
writer checks its own destination: :func:`unistad_edu.runs.prepare`, :func:`unistad_edu.export.export_run`,
:func:`unistad_edu.synthetic.make_synthetic`, :func:`unistad_edu.validation.make_validation` and the
downloads (:func:`unistad_edu.download.download_mvtec`, ``download_visa``). Nothing here imports torch.
"""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path

from .files import BadJSONFile, read_json_object
from .layout import CONFIG_FILE, SETTING_FILE

RUN_FORMAT = "unistad-edu checkpoint"  # config.json's "format" starts with it ("... v2")
SYNTHETIC_FORMAT = "unistad_edu.synthetic (MVTec AD layout)"
#: kind -> (marker file, what to call it)
KINDS = {
    "run": (CONFIG_FILE, "a unistad-edu run folder"),
    "per-class run": (SETTING_FILE, "a unistad-edu per-class run folder"),
    "export": ("export.json", "a unistad-edu export folder"),
    "synthetic": ("SYNTHETIC.json", "a unistad-edu synthetic data set"),
    "validation": ("VALIDATION.json", "a unistad-edu validation set"),
    "download": ("DOWNLOADS.json", "a unistad-edu download folder"),
}
SHOWN = 5  # names listed in a message before "... (N in all)"


def read_json(path) -> dict | None:
    """The JSON object in ``path``, or None (missing, unreadable, not JSON, not an object)."""
    try:
        return read_json_object(path, "a JSON object", "")
    except BadJSONFile:
        return None


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_run_config(cfg) -> bool:
    """``config.json`` as :func:`unistad_edu.checkpoint.save_checkpoint` writes it (its ``format`` and method)."""
    return (
        isinstance(cfg, dict)
        and isinstance(cfg.get("format"), str)
        and cfg["format"].startswith(RUN_FORMAT)
        and isinstance(cfg.get("method"), str)
    )


def is_per_class_setting(setting) -> bool:
    """``setting.json`` as ``train --setting per-class`` writes it."""
    return (
        isinstance(setting, dict)
        and setting.get("setting") == "per-class"
        and isinstance(setting.get("method"), str)
        and isinstance(setting.get("categories"), list)
    )


def is_export_card(card) -> bool:
    """``export.json`` as :func:`unistad_edu.export.export_run` writes it (whether it is *valid* is
    :func:`unistad_edu.cards.check_export_card`'s question)."""
    return (
        isinstance(card, dict)
        and _is_int(card.get("export_format_version"))
        and isinstance(card.get("files"), dict)
    )


def is_synthetic_manifest(man) -> bool:
    """``SYNTHETIC.json`` as :func:`unistad_edu.synthetic.make_synthetic` writes it."""
    return (
        isinstance(man, dict)
        and man.get("format") == SYNTHETIC_FORMAT
        and isinstance(man.get("config"), dict)
    )


def is_validation_manifest(man) -> bool:
    """``VALIDATION.json`` as :func:`unistad_edu.validation.make_validation` writes it."""
    spec = man.get("spec") if isinstance(man, dict) else None
    return (
        isinstance(spec, dict)
        and _is_int(spec.get("version"))
        and isinstance(spec.get("kinds"), list)
        and isinstance(man.get("counts"), dict)
    )


def is_metrics(table) -> bool:
    """``metrics.json`` as ``eval`` writes it (:func:`unistad_edu.metrics.metrics_table`)."""
    return (
        isinstance(table, dict)
        and isinstance(table.get("setting"), str)
        and isinstance(table.get("categories"), dict)
        and isinstance(table.get("mean"), dict)
    )


_CHECKS = {
    "run": is_run_config,
    "per-class run": is_per_class_setting,
    "export": is_export_card,
    "synthetic": is_synthetic_manifest,
    "validation": is_validation_manifest,
    "download": lambda d: isinstance(d, dict),
}


def kind(path) -> str | None:
    """Which of :data:`KINDS` the folder ``path`` is by its marker (None: none of them, or not a folder)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return None
    for name, (marker, _) in KINDS.items():
        if (path / marker).is_file() and _CHECKS[name](read_json(path / marker)):
            return name
    return None


def listing(names) -> str:
    """'a, b, c' -- at most :data:`SHOWN` names, then '... (N in all)'."""
    names = sorted(names)
    more = f", ... ({len(names)} in all)" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def describe(path) -> str:
    """What ``path`` is, for a message: 'a unistad-edu export folder (export.json)', 'a file', 'a symbolic link
    (to …)', 'an empty folder', 'a folder unistad-edu did not write (a.png, b.png)', 'nothing'."""
    path = Path(path)
    if path.is_symlink():
        return f"a symbolic link (to {os.readlink(path)})"
    if not path.exists():
        return "nothing"
    if not path.is_dir():
        return "a file"
    found = kind(path)
    if found is not None:
        marker, what = KINDS[found]
        return f"{what} ({marker})"
    names = [p.name for p in path.iterdir()]
    return f"a folder unistad-edu did not write ({listing(names)})" if names else "an empty folder"


def safetensors_metadata(path) -> dict | None:
    """The ``__metadata__`` of a safetensors file, read from its JSON header alone (no torch), or None."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= 100_000_000:
                return None
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else None


def foreign_entries(folder, allowed) -> list[str]:
    """The entries of ``folder`` (walked down, links not followed) that ``allowed(relative posix path, is_dir)``
    does not accept: what a replacement of the whole folder would delete although the package did not write it."""
    folder, out = Path(folder), []
    for root, dirs, names in os.walk(folder, followlinks=False):
        rel_root = Path(root).relative_to(folder)
        for name in dirs + names:
            rel = (rel_root / name).as_posix()
            is_dir = name in dirs and not (Path(root) / name).is_symlink()
            if not allowed(rel, is_dir):
                out.append(rel + ("/" if is_dir else ""))
        dirs[:] = [
            d for d in dirs if allowed((rel_root / d).as_posix(), True)
        ]  # no need to list inside those
    return out
