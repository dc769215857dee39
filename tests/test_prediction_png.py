"""viz.save_prediction / prediction_figure: the predict PNG (image | overlay at a fixed 0 -> threshold scale |
colour bar, caption with score, threshold and coloured verdict). Colours are checked against ``colorize`` and a
hand-computed blend, not against the function's own output (fast, no model)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from unistad_edu import viz

ALPHA = 0.5  # the overlay's heatmap opacity (as the demo's render_overlay)
THR = 0.3


def _top() -> np.ndarray:
    """colorize's colour at the top of the scale (value 1.0), as int."""
    return viz.colorize(np.array([[1.0]], np.float32), 0.0, 1.0)[0, 0].astype(int)


def _crop(arr, box):
    x0, y0, x1, y1 = box
    return arr[y0:y1, x0:x1]


def _gray(size=64, value=128):
    return np.full((size, size, 3), value, np.uint8)


def _unblend(over: np.ndarray, image: np.ndarray) -> np.ndarray:
    """The heatmap colours under a 50 % overlay on a known image (to within 2 levels of rounding)."""
    return (over.astype(float) - image.astype(float) * (1 - ALPHA)) / ALPHA


def _near_hot(heat: np.ndarray, tol=40.0) -> np.ndarray:
    """(H, W) bool: heat colours within ``tol`` of colorize's hot end (values 0.8 .. 1.0)."""
    hot = viz.colorize(np.linspace(0.8, 1.0, 50, dtype=np.float32)[:, None], 0.0, 1.0)[:, 0].astype(
        float
    )
    d = np.linalg.norm(heat[:, :, None, :] - hot[None, None], axis=-1)
    return d.min(axis=-1) < tol


def _red(px):
    return (px[..., 0] > 150) & (px[..., 1] < 90) & (px[..., 2] < 90)


def _green(px):
    return (px[..., 1] > 100) & (px[..., 0] < 90) & (px[..., 2] < 90)


def test_layout_boxes_hold_the_image_and_overlay():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    amap = rng.random((40, 56)).astype(np.float32) * THR
    arr, lay = viz.prediction_figure(img, amap, 0.1, THR, return_layout=True)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    assert (_crop(arr, lay["image"]) == img).all()  # the boxes say where things really are
    assert _crop(arr, lay["overlay"]).shape == img.shape
    ox0, _, ox1, _ = lay["overlay"]
    assert (
        lay["image"][2] <= ox0 and ox1 <= lay["colorbar"][0]
    )  # image | overlay | colour bar, left to right
    assert lay["caption"][3] <= lay["image"][1]  # the caption line above the row
    assert lay["scale"] == "fixed" and (lay["vmin"], lay["vmax"]) == (0.0, THR)


def test_fixed_scale_keeps_a_low_map_cold_but_image_scale_paints_it_hot():
    img = _gray()
    amap = np.random.default_rng(1).random((64, 64)).astype(np.float32) * (
        THR / 3
    )  # all <= threshold / 3
    fixed, lf = viz.prediction_figure(img, amap, 0.05, THR, return_layout=True)
    heat = _unblend(_crop(fixed, lf["overlay"]), img)
    assert not _near_hot(heat).any()
    stretched, ls = viz.prediction_figure(img, amap, 0.05, THR, scale="image", return_layout=True)
    heat = _unblend(_crop(stretched, ls["overlay"]), img)
    assert _near_hot(heat).sum() >= 10  # per-image stretch: the map's own maximum is painted red
    assert ls["scale"] == "image" and ls["vmax"] == pytest.approx(float(amap.max()))


def test_values_at_or_above_the_threshold_saturate_at_the_top_colour():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    amap = rng.random((48, 48)).astype(np.float32) * THR * 0.5
    amap[5:15, 5:15] = THR  # exactly the threshold
    amap[20:30, 20:40] = 7 * THR  # far above it
    arr, lay = viz.prediction_figure(img, amap, 2.1, THR, return_layout=True)
    over = _crop(arr, lay["overlay"]).astype(int)
    expected = np.floor(img.astype(float) * (1 - ALPHA) + _top() * ALPHA).astype(
        int
    )  # blend by hand
    hot = amap >= THR
    assert (over[hot] == expected[hot]).all()
    assert (
        not (over[~hot] == expected[~hot]).all(axis=-1).any()
    )  # below the threshold: never the top colour


def test_colour_bar_runs_through_the_colormap_from_0_to_1():
    img = _gray(64)
    arr, lay = viz.prediction_figure(
        img, np.zeros((64, 64), np.float32), 0.0, THR, return_layout=True
    )
    x0, y0, x1, y1 = lay["colorbar"]
    assert x1 - x0 >= 8 and y1 - y0 >= 64
    column = arr[y0:y1, (x0 + x1) // 2].astype(int)[::-1]  # bottom -> top
    want = viz.colorize(np.linspace(0.0, 1.0, len(column), dtype=np.float32)[:, None], 0.0, 1.0)[
        :, 0
    ].astype(int)
    assert np.abs(column - want).max() <= 1
    assert (column[0] == want[0]).all() and (column[-1] == _top()).all()
    # every row of the bar is one colour, and the bar is not the overlay's region
    strip = arr[y0:y1, x0:x1].astype(int)
    assert (strip == strip[:, :1]).all()
    # tick labels: dark text pixels beside the bar, near its top, middle and bottom
    lx0, ly0, lx1, ly1 = lay["labels"]
    dark = arr[ly0:ly1, lx0:lx1].max(axis=-1) < 100
    rows = np.nonzero(dark.any(axis=1))[0]
    n = ly1 - ly0
    assert (
        rows.min() < n * 0.25
        and rows.max() > n * 0.75
        and ((rows > n * 0.35) & (rows < n * 0.65)).any()
    )


@pytest.mark.parametrize("scale", ["fixed", "image"])
def test_verdict_is_red_for_anomalous_and_green_for_normal(scale):
    img, amap = _gray(48), np.random.default_rng(3).random((48, 48)).astype(np.float32) * THR
    bad, lb = viz.prediction_figure(img, amap, 0.9, THR, scale=scale, return_layout=True)
    good, lg = viz.prediction_figure(img, amap, 0.1, THR, scale=scale, return_layout=True)
    assert lb["verdict_text"] == "ANOMALOUS" and lg["verdict_text"] == "normal"  # score > threshold
    vb, vg = _crop(bad, lb["verdict"]), _crop(good, lg["verdict"])
    assert _red(vb).sum() >= 5 and not _green(vb).any()
    assert _green(vg).sum() >= 5 and not _red(vg).any()
    # the rest of the caption band (score, threshold) is not coloured
    band = bad[: lb["image"][1]].copy()
    x0, y0, x1, y1 = lb["verdict"]
    band[y0:y1, x0:x1] = 255
    assert not _red(band).any() and not _green(band).any()
    forced, lf = viz.prediction_figure(img, amap, 0.1, THR, verdict="ANOMALOUS", return_layout=True)
    assert _red(_crop(forced, lf["verdict"])).sum() >= 5


@pytest.mark.parametrize("threshold", [None, float("nan"), float("inf"), 0.0, -1.0])
def test_without_a_threshold_the_scale_falls_back_to_the_image(threshold):
    img = _gray(32)
    amap = np.zeros((32, 32), np.float32)
    amap[8:16, 8:16] = 0.01  # tiny values: only a per-image stretch paints them top colour
    arr, lay = viz.prediction_figure(img, amap, 0.01, threshold, return_layout=True)
    assert lay["scale"] == "image" and lay["verdict_text"] == "no threshold"
    over = _crop(arr, lay["overlay"]).astype(int)
    expected = (128 * (1 - ALPHA) + _top() * ALPHA).astype(int)
    assert (over[8:16, 8:16] == expected).all()
    v = _crop(arr, lay["verdict"])
    assert not _red(v).any() and not _green(v).any() and (v.max(axis=-1) < 200).any()  # grey text


def test_save_prediction_writes_a_readable_png_atomically(tmp_path):
    img = np.random.default_rng(4).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    amap = (
        np.random.default_rng(5).random((16, 20)).astype(np.float32)
    )  # coarser than the image: resized
    out = tmp_path / "preds" / "000_x_heatmap.png"
    got = viz.save_prediction(img, amap, out, 0.7, THR, title="widget/000.png")
    assert got == out and out.is_file()
    with Image.open(out) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        w, h = im.size
        pixels = np.asarray(im)
    assert (
        w >= 2 * 80 + 14 and h >= 64 + 2 * 10
    )  # image, overlay, bar side by side; title + caption above
    ref, lay = viz.prediction_figure(
        img, amap, 0.7, THR, title="widget/000.png", return_layout=True
    )
    assert pixels.shape == ref.shape and (pixels == ref).all()
    assert (_crop(pixels, lay["image"]) == img).all()
    assert sorted(os.listdir(out.parent)) == [out.name]  # no temp file left
    viz.save_prediction(img, amap, out, 0.1, THR)  # overwriting works too
    assert sorted(os.listdir(out.parent)) == [out.name]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    img, amap = _gray(16), np.zeros((16, 16), np.float32)
    out = viz.save_prediction(img, amap, tmp_path / "p.png", 0.0, THR)
    before = out.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    from unistad_edu import files

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(OSError):
        viz.save_prediction(img, amap + 1, out, 1.0, THR)
    assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["p.png"]


def test_save_overlay_still_works(tmp_path):
    img = _gray(24)
    out = viz.save_overlay(
        img, np.random.default_rng(6).random((24, 24)), tmp_path / "o.png", title="score 1"
    )
    with Image.open(out) as im:
        assert im.size == (48, 24 + 18)
        assert (np.asarray(im)[18:, :24] == img).all()
    assert os.listdir(tmp_path) == ["o.png"]


def test_bad_scale_and_map_shape_are_refused():
    with pytest.raises(ValueError, match="scale"):
        viz.prediction_figure(_gray(8), np.zeros((8, 8)), 0.0, THR, scale="log")
    with pytest.raises(ValueError, match="2-D"):
        viz.prediction_figure(_gray(8), np.zeros((2, 8, 8)), 0.0, THR)
