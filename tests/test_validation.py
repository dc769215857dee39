"""The validation set: built from training images only, the engine's held-out rule, defects with exact masks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from unistad_edu.data import MVTecDataset, holdout_split, load_image, load_mask
from unistad_edu.validation import KINDS, cut_paste, draw_defect, make_validation


def _photo(seed=0, size=64):
    """A smooth random colour field with some structure (not a flat image)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(6 * x + c) * np.cos(4 * y - c) for c in (0.0, 1.0, 2.0)], axis=2)
    return np.clip((base * 0.4 + 0.5) * 255 + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(
        np.uint8
    )


def test_cut_paste_moves_a_rectangle_of_the_same_image():
    """Brute force: the changed region's bounding box, in the output, equals a same-sized region of the input
    somewhere else -- the pasted patch comes from the image itself."""
    img = _photo(1).astype(np.float32) / 255
    for seed in range(5):
        out = cut_paste(np.random.default_rng(seed), img)
        changed = np.any(out != img, axis=2)
        ys, xs = np.nonzero(changed)
        if not ys.size:
            continue
        # the whole pasted rectangle: the largest box around the changes that still matches a source region
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        patch = out[y0:y1, x0:x1]
        h, w = patch.shape[:2]
        found = [
            (a, b)
            for a in range(img.shape[0] - h + 1)
            for b in range(img.shape[1] - w + 1)
            if (a, b) != (y0, x0) and np.array_equal(img[a : a + h, b : b + w], patch)
        ]
        assert found, f"seed {seed}: the pasted region is not a copy of another part of the image"
        assert 0.005 <= changed.mean() <= 0.07


@pytest.mark.parametrize("kind", KINDS)
def test_each_defect_changes_only_its_masked_pixels(kind):
    image = _photo(2)
    bad, mask = draw_defect(kind, np.random.default_rng(3), image)
    assert bad.dtype == np.uint8 and bad.shape == image.shape and mask.shape == image.shape[:2]
    assert mask.any() and mask.mean() < 0.1, f"{kind}: {mask.mean():.3f} of the image"
    np.testing.assert_array_equal(bad[~mask], image[~mask])  # untouched outside the mask
    assert np.all(np.any(bad[mask] != image[mask], axis=1))  # every masked pixel really changed


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown defect kind"):
        draw_defect("crack", np.random.default_rng(0), _photo())


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """30 training images per category, and no test folder at all: the validation set must not need one."""
    from tests.conftest import tiny_synthetic

    root = tiny_synthetic(tmp_path_factory, 64, n_train=30, n_test_good=1, n_test_defect=1)
    for test in root.rglob("test"):
        shutil.rmtree(test)
    for gt in root.rglob("ground_truth"):
        shutil.rmtree(gt)
    return root


def test_validation_set_layout_and_split(source, tmp_path):
    out = make_validation(source, tmp_path / "val", size=64, seed=0)
    train = MVTecDataset(source, "train", image_size=64)
    _, held = holdout_split(train, 0.1, seed=0, min_tail=10)  # the engine's rule: 10 of 30
    test = MVTecDataset(out, "test", image_size=64)
    for cat in train.categories:
        names = sorted(r.path.name for r in held.records if r.category == cat)
        assert len(names) == 10
        good = sorted(r.path.name for r in test.records if r.category == cat and r.defect == "good")
        assert good == sorted(n.rsplit(".", 1)[0] + ".png" for n in names)
        for kind in KINDS:
            rows = [r for r in test.records if r.category == cat and r.defect == kind]
            assert len(rows) == 10 and all(
                r.mask_path is not None and load_mask(r.mask_path, 64).any() for r in rows
            )
        kept = {
            r.path.name
            for r in MVTecDataset(out, "train", image_size=64).records
            if r.category == cat
        }
        assert len(kept) == 20 and not kept & set(good)  # held-out images never trained on
    # the defective image is its held-out normal image plus the defect: equal outside the mask
    r = next(r for r in test.records if r.defect == "scratch")
    normal = load_image(out / r.category / "test" / "good" / r.path.name)
    bad, mask = load_image(r.path), load_mask(r.mask_path) > 0
    np.testing.assert_array_equal(bad[~mask], normal[~mask])
    made = json.loads((out / "VALIDATION.json").read_text())
    assert made["counts"][train.categories[0]] == {"train": 20, "held_out": 10}


def test_reused_when_made_the_same_way_refused_otherwise(source, tmp_path):
    out = make_validation(source, tmp_path / "val", size=64, seed=0)
    stamp = (out / "VALIDATION.json").stat().st_mtime_ns
    assert make_validation(source, out, size=64, seed=0) == out
    assert (out / "VALIDATION.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="--force"):
        make_validation(source, out, size=64, seed=1)
    make_validation(source, out, size=64, seed=1, force=True)
    assert json.loads((out / "VALIDATION.json").read_text())["spec"]["seed"] == 1


def test_cli_builds_it(source, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "unistad_edu",
            "data",
            "validation",
            "--data",
            str(source),
            "--out",
            str(tmp_path / "v"),
            "--size",
            "64",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "validation set ready" in done.stdout and "10 held out" in done.stdout
