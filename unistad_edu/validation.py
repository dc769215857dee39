"""A validation set built from training images only: choose on validation, report on test.

A preset, a score rule or a switch must be chosen without looking at the test set. This module builds, from a
data root's ``train/good`` folders alone, a second data root in MVTec AD layout that can be trained on and
evaluated like any other::

    OUT/<category>/train/good/...            the training images that remain
    OUT/<category>/test/good/...             held-out normal training images
    OUT/<category>/test/<kind>/...           the same held-out images, each with one synthetic defect
    OUT/<category>/ground_truth/<kind>/...   its exact mask (the pixels that changed)
    OUT/VALIDATION.json                      what was made, from which data, written last

Held out per category: the engine's own rule (:func:`data.holdout_split`: 10 %, at least 10 where a category
has 30 images, never more than a third). Defect kinds (:data:`KINDS`), each drawn on one held-out image:

* ``cutpaste`` -- a rectangle of the **same** image pasted elsewhere in it (CutPaste's idea, Li et al., CVPR
  2021): the local texture is normal, its place is not;
* ``blob`` -- a dark, irregular hole-like blob;
* ``scratch`` -- a thin curved line, lighter or darker than the surface;
* ``stain`` -- a soft blob of shifted colour through which the surface stays visible.

The last three are the synthetic set's own structural defects (:mod:`unistad_edu.synthetic`), drawn here on
real photographs over the whole image. Images are stored at ``size`` x ``size`` (the size models train at), so
the masks are exact at that size. Real defects differ from these; the set is for *comparing* choices, not for
claiming a detection rate.

``python -m unistad_edu data validation --data ROOT --out OUT`` builds it; then ``train --data OUT`` and
``eval --run RUN`` on it, for every choice compared.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from . import ownership
from .data import MVTecDataset, holdout_split, load_image
from .files import atomic_write_text

MANIFEST = "VALIDATION.json"
KINDS = ("cutpaste", "blob", "scratch", "stain")
VERSION = 1


def cut_paste(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """``img`` (S, S, 3) float in [0, 1] with a rectangle of itself (2-6 % of the area, aspect 1:3 to 3:1)
    copied to another place of the same image, at least half its size away."""
    S = img.shape[0]
    area = rng.uniform(0.02, 0.06) * S * S
    aspect = math.exp(rng.uniform(math.log(1 / 3), math.log(3)))
    h = int(np.clip(round(math.sqrt(area / aspect)), 2, S // 2))
    w = int(np.clip(round(math.sqrt(area * aspect)), 2, S // 2))
    y0, x0 = int(rng.integers(0, S - h + 1)), int(rng.integers(0, S - w + 1))
    for _ in range(100):  # a destination that does not overlap the source much
        y1, x1 = int(rng.integers(0, S - h + 1)), int(rng.integers(0, S - w + 1))
        if abs(y1 - y0) >= h / 2 or abs(x1 - x0) >= w / 2:
            break
    out = img.copy()
    out[y1 : y1 + h, x1 : x1 + w] = img[y0 : y0 + h, x0 : x0 + w]
    return out


def draw_defect(
    kind: str, rng: np.random.Generator, image: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic defect of ``kind`` on ``image`` (S, S, 3) uint8. Returns ``(defective uint8, mask bool)``;
    the mask is exactly the pixels whose 8-bit value changed (empty if the draw changed nothing)."""
    from .synthetic import draw_structural

    if kind not in KINDS:
        raise ValueError(f"unknown defect kind {kind!r}; choose from {KINDS}")
    img = image.astype(np.float32) / 255.0
    if kind == "cutpaste":
        out = cut_paste(rng, img)
    else:
        out = draw_structural(
            "hole" if kind == "blob" else kind, rng, img
        )  # anywhere in a photograph
    out8 = np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
    return out8, np.any(out8 != image, axis=2)


def _save_png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")


#: what each split of a category holds: its sub-folders, and the suffix of the files in them
_LAYOUT = {
    "train": (("good",), ".png"),
    "test": (("good", *KINDS), ".png"),
    "ground_truth": (KINDS, "_mask.png"),
}


def _in_category(rel: str, is_dir: bool) -> bool:
    """True for a path inside a category that :func:`make_validation` writes (``train/good/x.png``,
    ``test/<good|kind>/x.png``, ``ground_truth/<kind>/x_mask.png`` and those folders)."""
    parts = rel.split("/")
    if parts[0] not in _LAYOUT:
        return False
    subs, suffix = _LAYOUT[parts[0]]
    if len(parts) == 1 or (len(parts) == 2 and parts[1] in subs):
        return is_dir
    return len(parts) == 3 and parts[1] in subs and not is_dir and parts[2].endswith(suffix)


def _written(rel: str, is_dir: bool, categories) -> bool:
    """True for a path (relative to the set) that :func:`make_validation` writes for ``categories`` (names may
    hold '/' when two categories share a folder name): the manifest, the category folders and what is in them."""
    if rel == MANIFEST:
        return not is_dir
    for cat in categories:
        if rel == cat or cat.startswith(rel + "/"):
            return is_dir  # the category's folder, or a folder above it
        if rel.startswith(cat + "/"):
            return _in_category(rel[len(cat) + 1 :], is_dir)
    return False


def check_replaceable(out: Path) -> None:
    """Refuse (``FileExistsError``) to delete ``out`` for ``--force`` unless it is a validation set this package
    built: a folder (not a link) with its ``VALIDATION.json`` marker, holding only what :func:`make_validation`
    writes for the categories that manifest counts."""
    out = Path(out)
    fix = "move it away or choose another --out; --force replaces only a validation set"
    man = ownership.read_json(out / MANIFEST) if out.is_dir() and not out.is_symlink() else None
    if not ownership.is_validation_manifest(man):
        raise FileExistsError(
            f"--force refused: {out} is {ownership.describe(out)}, not a validation set (no "
            f"{MANIFEST} written by this package): {fix}"
        )
    cats = [str(c) for c in man["counts"]]
    other = ownership.foreign_entries(out, lambda rel, is_dir: _written(rel, is_dir, cats))
    if other:
        raise FileExistsError(
            f"--force refused: the validation set {out} also holds {ownership.listing(other)}, "
            f"which this package did not write; replacing it would delete them: {fix}"
        )


def make_validation(
    data_root,
    out,
    size: int = 256,
    seed: int = 0,
    kinds=KINDS,
    fraction: float = 0.1,
    min_tail: int = 10,
    categories=None,
    force: bool = False,
) -> Path:
    """Build the validation set of ``data_root`` (any MVTec-layout folder; only ``train/good`` is read) into
    ``out`` (see the module docstring). Reuses ``out`` when its manifest says it was made the same way; refuses
    another existing folder unless ``force``. Returns ``out``."""
    out = Path(out)
    kinds = tuple(kinds)
    train = MVTecDataset(data_root, "train", categories=categories, image_size=size)
    spec = {
        "version": VERSION,
        "data_root": str(Path(data_root).resolve()),
        "size": int(size),
        "seed": int(seed),
        "kinds": list(kinds),
        "fraction": fraction,
        "min_tail": int(min_tail),
        "categories": train.categories,
    }
    if _made_as(out, spec):
        return out
    _clear_for_rebuild(out, force)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    keep, held = holdout_split(train, fraction, seed=seed, min_tail=min_tail)
    for r in keep.records:
        _save_png(
            load_image(r.path, size), tmp / r.category / "train" / "good" / f"{r.path.stem}.png"
        )
    _write_held_out(tmp, held.records, size, seed, kinds)
    counts = {
        cat: {
            "train": sum(r.category == cat for r in keep.records),
            "held_out": sum(r.category == cat for r in held.records),
        }
        for cat in train.categories
    }
    atomic_write_text(tmp / MANIFEST, json.dumps({"spec": spec, "counts": counts}, indent=2) + "\n")
    if out.exists():
        out.rmdir()  # empty (checked above)
    os.replace(tmp, out)
    return out


def _made_as(out: Path, spec: dict) -> bool:
    """True if ``out`` holds a validation set whose manifest records the same ``spec``."""
    manifest = out / MANIFEST
    if not manifest.is_file():
        return False
    try:
        made = json.loads(manifest.read_text())
    except ValueError:
        made = None
    return bool(made and made.get("spec") == spec)


def _clear_for_rebuild(out: Path, force: bool) -> None:
    """Remove a file, link or non-empty folder at ``out``: only with ``force``, only if ours."""
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        if not force:
            raise FileExistsError(
                f"{out} exists and is not this validation set: pass force=True (--force) to "
                f"replace it, or choose another --out"
            )
        check_replaceable(out)
        shutil.rmtree(out)


def _write_held_out(tmp: Path, records, size: int, seed: int, kinds: tuple) -> None:
    """Write the held-out images to ``test/good``, and each with every defect kind and its mask."""
    rng = np.random.default_rng(seed)
    for r in records:
        image = load_image(r.path, size)
        name = f"{r.path.stem}.png"
        _save_png(image, tmp / r.category / "test" / "good" / name)
        for kind in kinds:
            bad, mask = _draw_visible_defect(kind, rng, image)
            _save_png(bad, tmp / r.category / "test" / kind / name)
            _save_png(
                mask.astype(np.uint8) * 255,
                tmp / r.category / "ground_truth" / kind / f"{r.path.stem}_mask.png",
            )


def _draw_visible_defect(
    kind: str, rng: np.random.Generator, image: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`draw_defect`, drawn again (10 tries) while it changes no pixel (a blob on black)."""
    for _ in range(10):
        bad, mask = draw_defect(kind, rng, image)
        if mask.any():
            break
    return bad, mask
