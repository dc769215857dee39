"""Rendering with numpy and PIL (no plotly, no widgets): the colour ramp, heatmap overlays, mask outlines and
the prediction picture the CLI and the demo write (image | overlay at a fixed scale | colour bar, verdict)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..files import atomic_write

# a perceptually ordered blue -> green -> yellow -> red ramp (anchor colours; linear in between)
_RAMP = np.array(
    [
        [48, 18, 59],
        [70, 107, 227],
        [41, 187, 236],
        [58, 242, 148],
        [164, 252, 60],
        [239, 205, 58],
        [251, 128, 34],
        [214, 52, 6],
        [122, 4, 3],
    ],
    dtype=np.float32,
)


def colorize(
    values: np.ndarray, vmin: float | None = None, vmax: float | None = None
) -> np.ndarray:
    """(H, W) floats -> (H, W, 3) uint8 colours, scaled to [vmin, vmax] (default: the map's own range)."""
    v = np.asarray(values, dtype=np.float32)
    lo = float(np.min(v)) if vmin is None else vmin
    hi = float(np.max(v)) if vmax is None else vmax
    t = np.clip((v - lo) / (hi - lo if hi > lo else 1.0), 0, 1) * (len(_RAMP) - 1)
    i = np.minimum(t.astype(int), len(_RAMP) - 2)
    frac = (t - i)[..., None]
    return (_RAMP[i] * (1 - frac) + _RAMP[i + 1] * frac).astype(np.uint8)


def overlay(
    image: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.5, vmin=None, vmax=None
) -> np.ndarray:
    """Blend a heatmap over an (H, W, 3) uint8 image; the map is resized to the image if needed."""
    heat = colorize(anomaly_map, vmin, vmax)
    if heat.shape[:2] != image.shape[:2]:
        heat = np.asarray(Image.fromarray(heat).resize(image.shape[1::-1], Image.BILINEAR))
    return (image.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).astype(
        np.uint8
    )


def save_overlay(
    image: np.ndarray, anomaly_map: np.ndarray, path, title: str | None = None, vmin=None, vmax=None
) -> Path:
    """Image | heatmap overlay side by side, with an optional caption, as a PNG."""
    over = overlay(image, anomaly_map, vmin=vmin, vmax=vmax)
    h, w = image.shape[:2]
    pad = 18 if title else 0
    canvas = Image.new("RGB", (2 * w, h + pad), "white")
    canvas.paste(Image.fromarray(image), (0, pad))
    canvas.paste(Image.fromarray(over), (w, pad))
    if title:
        ImageDraw.Draw(canvas).text((4, 3), title, fill="black")
    return _save_png_atomic(canvas, path)


def _save_png_atomic(canvas: Image.Image, path) -> Path:
    """Write ``canvas`` as a PNG at ``path`` atomically: a temp file in the same folder, then ``os.replace``, so a
    reader never sees a half-written picture (the temp file is removed if writing fails). The folder is created."""
    return atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))


# ---- prediction picture: image | overlay at a fixed scale | colour bar, with score, threshold and verdict -------
PREDICTION_ALPHA = 0.5  # heatmap opacity in the overlay (as the demo's render_overlay)
_VERDICT_COLOURS = {"ANOMALOUS": (200, 0, 0), "normal": (0, 140, 0)}
_NEUTRAL = (90, 90, 90)
_MARGIN, _GAP, _BAR_W, _TICK = 6, 6, 14, 4


def _valid_threshold(threshold) -> float | None:
    """``threshold`` as a float if it can set a colour scale (finite and > 0), else None."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        return None
    return t if math.isfinite(t) and t > 0 else None


def _verdict_colour(verdict: str) -> tuple[int, int, int]:
    v = verdict.strip().lower()
    if v.startswith("anomal"):
        return _VERDICT_COLOURS["ANOMALOUS"]
    if v == "normal":
        return _VERDICT_COLOURS["normal"]
    return _NEUTRAL


def _fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.3g}"


def colorbar(height: int, width: int = _BAR_W) -> np.ndarray:
    """A vertical (height, width, 3) uint8 colour bar of :func:`colorize`'s ramp: value 1 at the top row, value 0
    at the bottom row (the same colours the overlay uses, before blending)."""
    ramp = colorize(
        np.linspace(0.0, 1.0, max(int(height), 2), dtype=np.float32)[:, None], 0.0, 1.0
    )[::-1]
    return np.ascontiguousarray(np.repeat(ramp, max(int(width), 1), axis=1))


def prediction_figure(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    score: float,
    threshold: float | None,
    *,
    verdict: str | None = None,
    scale: str = "fixed",
    title: str | None = None,
    return_layout: bool = False,
):
    """The prediction picture as an (H, W, 3) uint8 array (what :func:`save_prediction` writes).

    Layout, top to bottom: an optional ``title`` line (black), a caption line ``score S   threshold T   VERDICT``
    (the verdict red for ANOMALOUS, green for normal, grey otherwise), then one row: the image | the heatmap
    overlay (``PREDICTION_ALPHA`` = 0.5 blend, the map resized to the image) | a vertical colour bar
    (14 px wide, as tall as the image but at least four text lines, ~60 px; value 0 at the bottom, the top colour at the top)
    with tick marks and labels at 0, threshold/2 and threshold (the top label reads "<T> threshold").
    6 px margins and gaps, white background; the canvas is widened if the caption is longer than the row.

    ``scale="fixed"`` (default): colours from 0 to the threshold, so a value >= threshold is the top colour
    and a normal image stays cold. ``scale="image"``: the map's own min -> max (today's stretch); the bar is then
    labelled with the map's min and max. Without a usable threshold (None, non-finite or <= 0) the scale falls
    back to ``"image"`` and the caption says "no threshold". ``verdict``: default ANOMALOUS if
    score > threshold, else normal ("no threshold" without one).

    ``return_layout=True`` returns ``(array, layout)``, ``layout`` mapping "image", "overlay", "colorbar",
    "labels", "caption" and "verdict" to pixel boxes ``(x0, y0, x1, y1)`` (x1, y1 exclusive), plus "scale"
    (the scale used), "vmin"/"vmax" (the values at the bar's bottom and top) and "verdict_text"."""
    if scale not in ("fixed", "image"):
        raise ValueError(f"scale must be 'fixed' or 'image', not {scale!r}")
    img, amap = _rgb_and_map(image, anomaly_map)
    thr = _valid_threshold(threshold)
    used = scale if thr is not None else "image"
    if used == "fixed":
        lo, hi = 0.0, thr
        over = overlay(img, amap, alpha=PREDICTION_ALPHA, vmin=0.0, vmax=thr)
        ticks = [(0.0, _fmt(0.0)), (0.5, _fmt(thr / 2)), (1.0, f"{_fmt(thr)} threshold")]
    else:
        lo, hi = float(np.min(amap)), float(np.max(amap))
        over = overlay(img, amap, alpha=PREDICTION_ALPHA)
        ticks = [(0.0, f"{_fmt(lo)} min"), (0.5, _fmt((lo + hi) / 2)), (1.0, f"{_fmt(hi)} max")]
    if verdict is None:
        verdict = (
            "no threshold" if thr is None else ("ANOMALOUS" if float(score) > thr else "normal")
        )
    head = f"score {float(score):.4g}   " + (f"threshold {thr:.4g}   " if thr is not None else "")
    if thr is None and verdict != "no threshold":
        head += "no threshold   "
    arr, layout = _draw_prediction(img, over, ticks, head, verdict, title)
    if not return_layout:
        return arr
    return arr, {**layout, "scale": used, "vmin": lo, "vmax": hi, "verdict_text": verdict}


def _rgb_and_map(image, anomaly_map) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image and (h, w) float32 map from what callers pass (grey images, tensors, (1, h, w))."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = as_uint8(img)[..., :3]
    amap = np.asarray(
        anomaly_map.detach().float().cpu() if hasattr(anomaly_map, "detach") else anomaly_map,
        dtype=np.float32,
    )
    while amap.ndim > 2 and amap.shape[0] == 1:
        amap = amap[0]
    if amap.ndim != 2:
        raise ValueError(f"anomaly_map must be 2-D (H, W), got shape {amap.shape}")
    return img, amap


def _draw_prediction(
    img: np.ndarray, over: np.ndarray, ticks, head: str, verdict: str, title: str | None
):
    """The canvas of :func:`prediction_figure` and its boxes: title, caption + coloured verdict, then
    image | overlay | colour bar with its tick labels."""
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_w(t: str) -> int:
        return int(math.ceil(probe.textlength(t, font=font))) if t else 0

    line_h = max(int(font.getbbox("Ag")[3]) + 3, 12)
    h, w = img.shape[:2]
    bar_h = max(h, 4 * line_h)
    row_y = _MARGIN + (2 if title else 1) * line_h + _GAP
    img_x = _MARGIN
    over_x = img_x + w + _GAP
    bar_x = over_x + w + _GAP
    lab_x = bar_x + _BAR_W + 1 + _TICK + 3
    lab_w = max(text_w(t) for _, t in ticks)
    cap_w = max(text_w(head) + text_w(verdict), text_w(title or ""))
    width = max(lab_x + lab_w + _MARGIN, _MARGIN + cap_w + _MARGIN)
    canvas = Image.new("RGB", (width, row_y + max(h, bar_h) + _MARGIN), "white")
    canvas.paste(Image.fromarray(img), (img_x, row_y))
    canvas.paste(Image.fromarray(over), (over_x, row_y))
    canvas.paste(Image.fromarray(colorbar(bar_h, _BAR_W)), (bar_x, row_y))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([bar_x - 1, row_y - 1, bar_x + _BAR_W, row_y + bar_h], outline=_NEUTRAL)
    ty = _MARGIN
    if title:
        draw.text((_MARGIN, ty), title, fill="black", font=font)
        ty += line_h
    draw.text((_MARGIN, ty), head, fill="black", font=font)
    vx = _MARGIN + text_w(head)
    draw.text((vx, ty), verdict, fill=_verdict_colour(verdict), font=font)
    for v, label in ticks:
        y = row_y + int(round((1.0 - v) * (bar_h - 1)))
        draw.line([bar_x + _BAR_W + 1, y, bar_x + _BAR_W + _TICK, y], fill="black")
        ly = min(
            max(y - line_h // 2, row_y), row_y + bar_h - line_h
        )  # centred on the tick, kept by the bar
        draw.text((lab_x, ly), label, fill="black", font=font)
    layout = {
        "image": (img_x, row_y, img_x + w, row_y + h),
        "overlay": (over_x, row_y, over_x + w, row_y + h),
        "colorbar": (bar_x, row_y, bar_x + _BAR_W, row_y + bar_h),
        "labels": (lab_x, row_y, lab_x + lab_w, row_y + bar_h),
        "caption": (_MARGIN, ty, _MARGIN + text_w(head) + text_w(verdict), ty + line_h),
        "verdict": (vx, ty, vx + text_w(verdict), ty + line_h),
    }
    return np.asarray(canvas).copy(), layout


def heatmap_with_colorbar(
    image: np.ndarray, anomaly_map: np.ndarray, threshold: float | None, scale: str = "fixed"
) -> np.ndarray:
    """The heatmap overlay with its colour bar and tick labels beside it (uint8), the middle and right panels of
    :func:`prediction_figure` (same scale rules: ``fixed`` = 0 to the threshold, ``image`` = the map's range)."""
    arr, lay = prediction_figure(
        image, anomaly_map, 0.0, threshold, scale=scale, return_layout=True
    )
    x0, y0 = lay["overlay"][0], lay["overlay"][1]
    x1 = min(arr.shape[1], lay["labels"][2] + _MARGIN)
    y1 = max(lay["overlay"][3], lay["colorbar"][3] + 1)
    return np.ascontiguousarray(arr[y0:y1, x0:x1])


#: the predicted region's outline: cyan, distinct from every colour of the heatmap ramp and from most products
OUTLINE_COLOUR = (0, 255, 255)


def predicted_region(
    anomaly_map: np.ndarray, threshold: float | None, shape: tuple[int, int]
) -> np.ndarray | None:
    """(H, W) bool at ``shape``: where the anomaly map (bilinearly resized if needed) is above the threshold --
    the predicted defect mask. None without a usable threshold."""
    thr = _valid_threshold(threshold)
    if thr is None:
        return None
    amap = np.asarray(anomaly_map, dtype=np.float32)
    while amap.ndim > 2 and amap.shape[0] == 1:
        amap = amap[0]
    if amap.shape != tuple(shape):
        amap = np.asarray(
            Image.fromarray(amap, mode="F").resize(tuple(shape)[::-1], Image.BILINEAR)
        )
    return amap > thr


def outline_region(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    threshold: float | None,
    color=OUTLINE_COLOUR,
    width: int = 2,
) -> np.ndarray:
    """The image with the predicted region (:func:`predicted_region`) drawn as an outline, ``width`` px; the image
    unchanged (a copy) if nothing is above the threshold or there is no threshold."""
    img = as_uint8(np.asarray(image))[..., :3]
    region = predicted_region(anomaly_map, threshold, img.shape[:2])
    if region is None or not region.any():
        return img.copy()
    return mask_overlay(img, region, color=color, alpha=0.0, outline=True, width=width)


def save_prediction(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    path,
    score: float,
    threshold: float | None,
    *,
    verdict: str | None = None,
    scale: str = "fixed",
    title: str | None = None,
) -> Path:
    """Write the prediction picture (:func:`prediction_figure`: image | overlay at a fixed 0 -> threshold colour
    scale by default | colour bar, with a caption of score, threshold and coloured verdict) as a PNG at
    ``path``, atomically (temp file in the same folder, then ``os.replace``). Returns the path."""
    arr = prediction_figure(
        image, anomaly_map, score, threshold, verdict=verdict, scale=scale, title=title
    )
    return _save_png_atomic(Image.fromarray(arr), path)


# ---- images -------------------------------------------------------------------------------------------
def as_uint8(image) -> np.ndarray:
    """A dataset image -- (3, H, W) float tensor or array in [0, 1] -- as an (H, W, 3) uint8 array for display
    (an (H, W, 3) uint8 array is returned unchanged)."""
    x = image.detach().float().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if x.dtype == np.uint8 and x.ndim == 3 and x.shape[-1] == 3:
        return x
    if x.ndim == 3 and x.shape[0] in (1, 3):
        x = np.moveaxis(x, 0, -1)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


# ---- masks ----------------------------------------------------------------------------------------------
def _fit_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A mask as (H, W) bool at ``shape`` (nearest-neighbour resize if needed; ``(1, H, W)`` is accepted)."""
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[0] if m.shape[0] == 1 else m[..., 0]
    m = m > 0
    if m.shape != tuple(shape):
        m = (
            np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(shape[::-1], Image.NEAREST))
            > 0
        )
    return m


def mask_boundary(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """(H, W) bool: the pixels of ``mask`` that touch a non-mask pixel (8-neighbourhood), ``width`` pixels thick."""
    m = np.asarray(mask) > 0
    inner = m.copy()
    for _ in range(max(1, int(width))):
        p = np.pad(inner, 1, mode="edge")
        shrunk = np.ones_like(inner)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                shrunk &= p[1 + dy : 1 + dy + m.shape[0], 1 + dx : 1 + dx + m.shape[1]]
        inner = shrunk
    return m & ~inner


def mask_overlay(
    image: np.ndarray,
    mask: np.ndarray,
    color=(255, 40, 40),
    alpha: float = 0.4,
    outline: bool = True,
    width: int = 1,
) -> np.ndarray:
    """Show a defect mask on an (H, W, 3) uint8 image: mask pixels tinted with ``color`` (``alpha`` = 0 gives an
    outline only) and, with ``outline``, the mask's border drawn solid. The mask ((H, W) or (1, H, W), any
    resolution, binarised with ``> 0``) is resized to the image with nearest-neighbour. Returns a new array."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    out = img[..., :3].astype(np.float32).copy()
    m = _fit_mask(mask, out.shape[:2])
    col = np.asarray(color, dtype=np.float32)
    out[m] = out[m] * (1 - alpha) + col * alpha
    if outline:
        out[mask_boundary(m, width)] = col
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
