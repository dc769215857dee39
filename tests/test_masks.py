"""Masks are binarised at half of their range, so lossy-compression noise is not defect; a lossy mask is said
once per process."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
from PIL import Image, features

from unistad_edu import data as data_mod
from unistad_edu.data import MVTecDataset, load_mask

from .conftest import make_category


@pytest.fixture()
def fresh_warning(monkeypatch):
    """Forget that the lossy-mask warning was given (it is said once per process)."""
    monkeypatch.setattr(data_mod, "_LOSSY_MASK_WARNED", False)


def _lossy_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "lossy format" in str(w.message)]


def _at(mask: np.ndarray, pixels) -> list[int]:
    return [int(mask[r, c]) for r, c in pixels]


PIXELS = [(1, 1), (2, 5), (4, 2), (6, 6), (7, 3)]


def test_8bit_mask_binarised_at_128(tmp_path):
    arr = np.zeros((8, 8), np.uint8)
    for (r, c), v in zip(PIXELS, [0, 1, 127, 128, 255]):
        arr[r, c] = v
    p = tmp_path / "m.png"
    Image.fromarray(arr).save(p)
    m = load_mask(p)
    assert m.dtype == np.uint8 and m.shape == (8, 8)
    assert _at(m, PIXELS) == [0, 0, 0, 1, 1] and m.sum() == 2


@pytest.mark.parametrize("mode, suffix", [("I;16", ".png"), ("I", ".tif")])
def test_16bit_mask_binarised_at_half_of_65535(tmp_path, mode, suffix):
    arr = np.zeros((8, 8), np.uint16)
    pixels = PIXELS[1:]
    for (r, c), v in zip(pixels, [0, 30000, 40000, 65535]):
        arr[r, c] = v
    img = Image.fromarray(arr) if mode == "I;16" else Image.fromarray(arr.astype(np.int32))
    assert img.mode == mode
    p = tmp_path / f"m{suffix}"
    img.save(p)
    assert Image.open(p).mode in ("I;16", "I")  # how PIL reads it back
    m = load_mask(p)
    assert _at(m, pixels) == [0, 0, 1, 1] and m.sum() == 2


def test_mode_1_as_is(tmp_path):
    arr = np.zeros((8, 8), bool)
    arr[2:4, 3:6] = True
    p = tmp_path / "m.png"
    Image.fromarray(arr).convert("1").save(p)
    assert Image.open(p).mode == "1"
    np.testing.assert_array_equal(load_mask(p), arr.astype(np.uint8))


def _square_jpeg(path, quality=75):
    """A white 16 x 20 square on black, off the 8 x 8 JPEG grid, saved as JPEG. Returns (path, true area)."""
    arr = np.zeros((64, 64), np.uint8)
    arr[19:35, 21:41] = 255
    Image.fromarray(arr).save(path, format="JPEG", quality=quality)
    return path, 16 * 20


def test_jpeg_mask_noise_is_not_defect_and_is_said_once(tmp_path, fresh_warning):
    p, area = _square_jpeg(tmp_path / "a_mask.jpg")
    q = tmp_path / "b_mask.jpg"
    shutil.copyfile(p, q)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        m = load_mask(p)
        load_mask(q)
        load_mask(p)
    said = _lossy_warnings(record)
    assert len(said) == 1 and str(p) in said[0] and "half the range" in said[0]
    assert abs(int(m.sum()) - area) <= 0.05 * area
    above_zero = int(
        (np.asarray(Image.open(p)) > 0).sum()
    )  # what the old `> 0` rule counted as defect
    assert above_zero > 1.3 * area
    small = load_mask(p, 32)  # binarised, then nearest-neighbour: still {0, 1}
    assert set(np.unique(small).tolist()) == {0, 1}


def test_jpeg_mask_in_a_dataset(tmp_path, fresh_warning):
    cat = make_category(tmp_path, "widget", size=(64, 64))
    for i in range(2):  # JPEG bytes under the masks' PNG names: PIL's format "JPEG" is what counts
        _square_jpeg(cat / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        test = MVTecDataset(tmp_path, "test", image_size=64)
        masks = [test[i]["mask"] for i in range(len(test)) if test[i]["label"] == 1]
    assert len(masks) == 2 and len(_lossy_warnings(record)) == 1
    assert all(abs(float(mk.sum()) - 16 * 20) <= 0.05 * 16 * 20 for mk in masks)


@pytest.mark.skipif(not features.check("webp"), reason="Pillow without WebP")
@pytest.mark.parametrize("lossless", [False, True])
def test_webp_mask_warns_only_when_lossy(tmp_path, fresh_warning, lossless):
    arr = np.zeros((64, 64), np.uint8)
    arr[19:35, 21:41] = 255
    p = tmp_path / "m.webp"
    Image.fromarray(arr).convert("RGB").save(p, lossless=lossless, quality=75)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        m = load_mask(p)
    assert len(_lossy_warnings(record)) == (0 if lossless else 1)
    assert abs(int(m.sum()) - 16 * 20) <= 0.05 * 16 * 20


def test_png_mask_does_not_warn(tmp_path, fresh_warning):
    p = tmp_path / "m.png"
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(p)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert load_mask(p).sum() == 64
    assert not _lossy_warnings(record)


@pytest.mark.parametrize("kind", ["png8", "png16", "jpeg", "mode1"])
def test_all_zero_mask_stays_empty(tmp_path, kind, fresh_warning):
    zeros = np.zeros((16, 16), np.uint8)
    p = tmp_path / ("m.jpg" if kind == "jpeg" else "m.png")
    img = {
        "png8": Image.fromarray(zeros),
        "png16": Image.fromarray(zeros.astype(np.uint16)),
        "jpeg": Image.fromarray(zeros),
        "mode1": Image.fromarray(zeros).convert("1"),
    }[kind]
    img.save(p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = load_mask(p)
    assert m.shape == (16, 16) and m.sum() == 0


def test_label_map_with_values_0_and_1(tmp_path):
    # a lossless mask holding only 0 and 1 is a label map: 1 is defect (half of *its* range), not "dark"
    arr = np.zeros((8, 8), np.uint8)
    arr[2:5, 2:6] = 1
    p = tmp_path / "labels.png"
    Image.fromarray(arr).save(p)
    np.testing.assert_array_equal(load_mask(p), arr)


@pytest.mark.parametrize("colour", [(255, 0, 0), (0, 0, 255), (255, 255, 255)])
def test_colour_mask_uses_its_brightest_channel(tmp_path, colour):
    arr = np.zeros((8, 8, 3), np.uint8)
    arr[1:3, 1:4] = colour
    arr[5, 5] = (60, 60, 60)  # faint grey: not defect
    p = tmp_path / "c.png"
    Image.fromarray(arr).save(p)
    m = load_mask(p)
    assert m.sum() == 6 and m[1:3, 1:4].all() and m[5, 5] == 0
