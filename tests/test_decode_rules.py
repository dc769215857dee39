"""What a file holds decides how it is read: formats from one allow-list (by content, not name), 16-bit files
scaled by the real range of their values, masks binarised by one documented rule that refuses ambiguity."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from unistad_edu import data as data_mod
from unistad_edu.data import (
    DataError,
    ImageRejected,
    MVTecDataset,
    decode_image,
    load_image,
    load_mask,
    model_inputs,
)

from .conftest import make_category

EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
    b"newpath 0 0 moveto 16 0 lineto 16 16 lineto closepath fill\nshowpage\n%%EOF\n"
)


def _write_foreign(path, kind: str) -> None:
    """Write a file of format ``kind`` (not in the allow-list) under ``path``, whatever its suffix says."""
    if kind == "EPS":
        path.write_bytes(EPS)
        return
    img = Image.fromarray(np.full((16, 16, 3), 90, np.uint8))
    img.save(path, format=kind)


@pytest.fixture()
def no_ghostscript(monkeypatch):
    """Fail the test if Pillow ever hands a file to Ghostscript."""

    def refuse(*a, **k):
        raise AssertionError("Ghostscript was called")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", refuse)


@pytest.mark.parametrize("kind", ["EPS", "PPM", "TGA", "PCX", "ICO", "SGI"])
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_format_outside_the_allow_list_is_refused_whatever_its_name(
    tmp_path, kind, suffix, no_ghostscript
):
    p = tmp_path / f"photo{suffix}"
    _write_foreign(p, kind)
    assert Image.open(p).format == kind  # Pillow would read it by its content
    for decode in (
        lambda: load_image(p),
        lambda: model_inputs([p], 32),
        lambda: decode_image(p, size=32),
    ):
        with pytest.raises(ImageRejected) as err:
            decode()
        assert err.value.reason == "format" and kind in str(err.value) and str(p) in str(err.value)


@pytest.mark.parametrize("kind", ["EPS", "PPM"])
def test_a_foreign_format_in_a_dataset_or_as_a_mask_is_refused(tmp_path, kind, no_ghostscript):
    cat = make_category(tmp_path, "widget", size=(32, 32))
    train = sorted((cat / "train" / "good").iterdir())[0]
    _write_foreign(train, kind)
    with pytest.raises(ImageRejected, match=kind):
        ds = MVTecDataset(tmp_path, "train", image_size=32)
        [ds[i] for i in range(len(ds))]
    mask = sorted((cat / "ground_truth").rglob("*.png"))[0]
    _write_foreign(mask, kind)
    with pytest.raises(ImageRejected, match=kind):
        load_mask(mask)


def test_allowed_content_under_another_name_still_decodes(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    p = tmp_path / "really_a_png.jpg"
    Image.fromarray(arr).save(p, format="PNG")
    np.testing.assert_array_equal(load_image(p), arr)  # lossless PNG content: the exact pixels


@pytest.fixture()
def fresh_depth_warning(monkeypatch):
    monkeypatch.setattr(data_mod, "_BIT_DEPTH_WARNED", False)


@pytest.mark.parametrize("bits", [8, 10, 12, 14])
def test_16bit_file_of_fewer_bits_is_scaled_by_its_real_range(tmp_path, bits, fresh_depth_warning):
    top = 2**bits - 1
    g = np.linspace(0, top, 64 * 40).round().astype(np.uint16).reshape(40, 64)
    p = tmp_path / "cam.png"
    Image.fromarray(g).save(p)
    assert Image.open(p).mode.startswith("I")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = load_image(p)
        load_image(p)
    want = np.clip(g / top * 255.0 + 0.5, 0, 255).astype(np.uint8)  # hand formula, not the code's
    np.testing.assert_array_equal(out[..., 0], want)
    assert out.max() == 255 and len(np.unique(out)) > 200  # not 16 grey levels near black
    said = [str(w.message) for w in record if "16 bits per pixel" in str(w.message)]
    assert len(said) == 1 and f"{bits}-bit" in said[0]


def test_full_range_16bit_file_is_divided_by_65535_without_a_word(tmp_path, fresh_depth_warning):
    g = np.linspace(0, 65535, 40 * 30).round().astype(np.uint16).reshape(30, 40)
    p = tmp_path / "full.png"
    Image.fromarray(g).save(p)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = load_image(p)
    np.testing.assert_array_equal(
        out[..., 1], np.clip(g / 65535 * 255 + 0.5, 0, 255).astype(np.uint8)
    )
    assert not [w for w in record if "16 bits per pixel" in str(w.message)]


# ---- masks ----------------------------------------------------------------------------------------------
def _save(arr, path, mode=None):
    Image.fromarray(arr, mode).save(path) if mode and mode != "I;16" else Image.fromarray(arr).save(
        path
    )
    return path


def _region():
    want = np.zeros((16, 16), np.uint8)
    want[3:8, 4:11] = 1
    return want


@pytest.mark.parametrize("ids", [(2,), (1, 2), (3,), (1, 2, 5), (31,)])
def test_label_map_class_ids_are_defect(tmp_path, ids):
    want = np.zeros((16, 16), np.uint8)
    arr = np.zeros((16, 16), np.uint8)
    for i, cls in enumerate(ids):
        arr[2 + 4 * i : 5 + 4 * i, 3:9] = cls
        want[2 + 4 * i : 5 + 4 * i, 3:9] = 1
    np.testing.assert_array_equal(load_mask(_save(arr, tmp_path / "m.png")), want)


@pytest.mark.parametrize("value, bits", [(255, 8), (1023, 10), (4095, 12), (65535, 16), (2, 16)])
def test_16bit_mask_by_the_real_range_of_its_values(tmp_path, value, bits):
    want = _region()
    arr = want.astype(np.uint16) * value
    arr[12, 12] = (
        value // 4
    )  # a faint value: under half of the real range, not defect (label maps aside)
    if value == 2:
        want = want.copy()
        want[12, 12] = 0  # 2 // 4 == 0
    p = _save(arr, tmp_path / "m16.png", "I;16")
    np.testing.assert_array_equal(load_mask(p), want)


@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0), (120, 30, 200)])
def test_defect_drawn_only_in_alpha_is_read_from_alpha(tmp_path, colour):
    want = _region()
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = want * 255
    np.testing.assert_array_equal(load_mask(_save(rgba, tmp_path / "a.png", "RGBA")), want)
    la = np.stack([np.full((16, 16), colour[0], np.uint8), want * 255], axis=2)
    np.testing.assert_array_equal(load_mask(_save(la, tmp_path / "la.png", "LA")), want)


def test_alpha_agreeing_with_the_colour_is_fine_and_opaque_alpha_is_ignored(tmp_path):
    want = _region()
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = (want * 255)[..., None]
    rgba[..., 3] = want * 255
    np.testing.assert_array_equal(load_mask(_save(rgba, tmp_path / "agree.png", "RGBA")), want)
    rgba[..., 3] = 255
    np.testing.assert_array_equal(load_mask(_save(rgba, tmp_path / "opaque.png", "RGBA")), want)


@pytest.mark.parametrize("shift", [(0, 3), (5, 0), (8, 8)])
def test_alpha_disagreeing_with_the_colour_is_refused(tmp_path, shift):
    want = _region()
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = (want * 255)[..., None]
    rgba[..., 3] = np.roll(want, shift, axis=(0, 1)) * 255
    with pytest.raises(DataError, match="alpha"):
        load_mask(_save(rgba, tmp_path / "m.png", "RGBA"))


@pytest.mark.parametrize(
    "colours",
    [
        [(255, 0, 0), (0, 255, 0)],
        [(255, 255, 255), (0, 0, 255)],
        [(255, 0, 0), (255, 255, 0), (0, 0, 255)],
    ],
)
def test_a_mask_in_several_colours_is_refused(tmp_path, colours):
    arr = np.zeros((16, 16, 3), np.uint8)
    for i, c in enumerate(colours):
        arr[1 + 4 * i : 4 + 4 * i, 2:8] = c
    with pytest.raises(DataError, match="different colours"):
        load_mask(_save(arr, tmp_path / "m.png"))


def test_palette_mask_with_one_defect_colour(tmp_path):
    want = _region()
    img = Image.fromarray(want, "L").convert("P")
    img.putpalette([0, 0, 0, 200, 40, 40] + [0] * (256 * 3 - 6))  # index 1 = dark red
    img.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(load_mask(tmp_path / "p.png"), want)


def test_a_refused_mask_in_a_dataset_names_the_file(tmp_path):
    cat = make_category(tmp_path, "widget", size=(16, 16))
    mask = sorted((cat / "ground_truth").rglob("*.png"))[0]
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = np.roll(_region(), 4) * 255
    rgba[0, 0, :3] = 0  # the colour varies too, and disagrees with the alpha
    _save(rgba, mask, "RGBA")
    ds = MVTecDataset(tmp_path, "test", image_size=16)
    with pytest.raises(DataError, match=mask.name):
        [ds[i] for i in range(len(ds))]
