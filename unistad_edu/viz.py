"""Figures: heatmap overlays (PIL, for files and the demo) and plotly figures and ipywidgets explorers (for the
lessons). Plotly and ipywidgets are imported inside the functions that need them, so the CLI stays light."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .files import atomic_write
from .report import HEADLINE

# a perceptually ordered blue -> green -> yellow -> red ramp (anchor colours; linear in between)
_RAMP = np.array([[48, 18, 59], [70, 107, 227], [41, 187, 236], [58, 242, 148], [164, 252, 60],
                  [239, 205, 58], [251, 128, 34], [214, 52, 6], [122, 4, 3]], dtype=np.float32)


def colorize(values: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """(H, W) floats -> (H, W, 3) uint8 colours, scaled to [vmin, vmax] (default: the map's own range)."""
    v = np.asarray(values, dtype=np.float32)
    lo = float(np.min(v)) if vmin is None else vmin
    hi = float(np.max(v)) if vmax is None else vmax
    t = np.clip((v - lo) / (hi - lo if hi > lo else 1.0), 0, 1) * (len(_RAMP) - 1)
    i = np.minimum(t.astype(int), len(_RAMP) - 2)
    frac = (t - i)[..., None]
    return (_RAMP[i] * (1 - frac) + _RAMP[i + 1] * frac).astype(np.uint8)


def overlay(image: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.5, vmin=None, vmax=None) -> np.ndarray:
    """Blend a heatmap over an (H, W, 3) uint8 image; the map is resized to the image if needed."""
    heat = colorize(anomaly_map, vmin, vmax)
    if heat.shape[:2] != image.shape[:2]:
        heat = np.asarray(Image.fromarray(heat).resize(image.shape[1::-1], Image.BILINEAR))
    return (image.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).astype(np.uint8)


def save_overlay(image: np.ndarray, anomaly_map: np.ndarray, path, title: str | None = None, vmin=None,
                 vmax=None) -> Path:
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
    ramp = colorize(np.linspace(0.0, 1.0, max(int(height), 2), dtype=np.float32)[:, None], 0.0, 1.0)[::-1]
    return np.ascontiguousarray(np.repeat(ramp, max(int(width), 1), axis=1))


def prediction_figure(image: np.ndarray, anomaly_map: np.ndarray, score: float, threshold: float | None, *,
                      verdict: str | None = None, scale: str = "fixed", title: str | None = None,
                      return_layout: bool = False):
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
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = as_uint8(img)[..., :3]
    amap = np.asarray(anomaly_map.detach().float().cpu() if hasattr(anomaly_map, "detach") else anomaly_map,
                      dtype=np.float32)
    while amap.ndim > 2 and amap.shape[0] == 1:
        amap = amap[0]
    if amap.ndim != 2:
        raise ValueError(f"anomaly_map must be 2-D (H, W), got shape {amap.shape}")
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
        verdict = "no threshold" if thr is None else ("ANOMALOUS" if float(score) > thr else "normal")
    head = f"score {float(score):.4g}   " + (f"threshold {thr:.4g}   " if thr is not None else "")
    if thr is None and verdict != "no threshold":
        head += "no threshold   "

    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_w(t: str) -> int:
        return int(math.ceil(probe.textlength(t, font=font))) if t else 0

    asc = font.getbbox("Ag")
    line_h = max(int(asc[3]) + 3, 12)
    h, w = img.shape[:2]
    bar_h = max(h, 4 * line_h)
    n_lines = 2 if title else 1
    cap_h = _MARGIN + n_lines * line_h
    row_y = cap_h + _GAP
    img_x = _MARGIN
    over_x = img_x + w + _GAP
    bar_x = over_x + w + _GAP
    lab_x = bar_x + _BAR_W + 1 + _TICK + 3
    lab_w = max(text_w(t) for _, t in ticks)
    cap_w = max(text_w(head) + text_w(verdict), text_w(title or ""))
    width = max(lab_x + lab_w + _MARGIN, _MARGIN + cap_w + _MARGIN)
    height = row_y + max(h, bar_h) + _MARGIN

    canvas = Image.new("RGB", (width, height), "white")
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
        ly = min(max(y - line_h // 2, row_y), row_y + bar_h - line_h)  # centred on the tick, kept by the bar
        draw.text((lab_x, ly), label, fill="black", font=font)
    arr = np.asarray(canvas).copy()
    if not return_layout:
        return arr
    layout = {"image": (img_x, row_y, img_x + w, row_y + h), "overlay": (over_x, row_y, over_x + w, row_y + h),
              "colorbar": (bar_x, row_y, bar_x + _BAR_W, row_y + bar_h),
              "labels": (lab_x, row_y, lab_x + lab_w, row_y + bar_h),
              "caption": (_MARGIN, ty, _MARGIN + text_w(head) + text_w(verdict), ty + line_h),
              "verdict": (vx, ty, vx + text_w(verdict), ty + line_h),
              "scale": used, "vmin": lo, "vmax": hi, "verdict_text": verdict}
    return arr, layout


def save_prediction(image: np.ndarray, anomaly_map: np.ndarray, path, score: float, threshold: float | None, *,
                    verdict: str | None = None, scale: str = "fixed", title: str | None = None) -> Path:
    """Write the prediction picture (:func:`prediction_figure`: image | overlay at a fixed 0 -> threshold colour
    scale by default | colour bar, with a caption of score, threshold and coloured verdict) as a PNG at
    ``path``, atomically (temp file in the same folder, then ``os.replace``). Returns the path."""
    arr = prediction_figure(image, anomaly_map, score, threshold, verdict=verdict, scale=scale, title=title)
    return _save_png_atomic(Image.fromarray(arr), path)


# ---- plotly figures -----------------------------------------------------------------------------------
def bar_per_class(tables: dict[str, dict], metric: str = "I-AUROC", title: str | None = None):
    """Grouped bars: one group per category, one bar per table (e.g. {"per-class": t1, "unified": t2})."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for label, table in tables.items():
        cats = list(table["categories"])
        fig.add_bar(name=label, x=cats + ["mean"],
                    y=[table["categories"][c][metric] for c in cats] + [table["mean"][metric]])
    fig.update_layout(barmode="group", title=title or metric, yaxis_title=metric, yaxis_range=[0, 1.02])
    return fig


def score_histogram(scores: np.ndarray, labels: np.ndarray, categories: Sequence[str] | None = None,
                    threshold: float | None = None, title: str = "image scores"):
    """Overlaid histograms of normal vs anomalous image scores (optionally faceted by category)."""
    import plotly.express as px

    data = {"score": np.asarray(scores), "label": np.where(np.asarray(labels) == 1, "defect", "normal")}
    if categories is not None:
        data["category"] = np.asarray(categories)
    fig = px.histogram(data, x="score", color="label", barmode="overlay", nbins=40, opacity=0.6,
                       facet_col="category" if categories is not None else None, facet_col_wrap=3, title=title)
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash", annotation_text="threshold")
    return fig


def scores_by_category(runs: dict[str, dict], thresholds: dict | None = None, log_y: bool = False,
                       title: str | None = None):
    """Image scores per category, normal vs defect side by side, one panel per run.

    ``runs``: {name: outputs}, where ``outputs`` has ``"scores"``, ``"labels"`` (0 normal / 1 defect) and
    ``"categories"`` -- what ``evaluate(..., return_outputs=True)`` returns -- e.g. {"per-class": a, "unified": b}.
    ``thresholds[name]`` (optional): a float, drawn as one dashed line across the panel (one threshold for every
    category), or {category: float}, drawn as a short dashed line over each category. Every panel has its own
    y axis: the scores of different models are not on a common scale. Every image is a point over its box."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(runs)
    thresholds = thresholds or {}
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.08)
    colours = {"normal": "#2e86c1", "defect": "#c0392b"}
    for col, name in enumerate(names, start=1):
        out = runs[name]
        scores = np.asarray(out["scores"], dtype=float)
        labels = np.asarray(out["labels"])
        cats = np.asarray(out["categories"], dtype=str)
        if not len(scores) == len(labels) == len(cats):
            raise ValueError(f"run {name!r}: scores, labels and categories differ in length")
        order = list(dict.fromkeys(sorted(cats)))
        for value, label in ((0, "normal"), (1, "defect")):
            sel = labels == value
            fig.add_trace(go.Box(x=cats[sel], y=scores[sel], name=label, legendgroup=label, showlegend=col == 1,
                                 marker_color=colours[label], boxpoints="all", jitter=0.5, pointpos=0,
                                 marker_size=4, line_width=1), row=1, col=col)
        fig.update_xaxes(categoryorder="array", categoryarray=order, row=1, col=col)
        thr = thresholds.get(name)
        if isinstance(thr, dict):
            for i, cat in enumerate(order):
                if thr.get(cat) is not None:
                    fig.add_shape(type="line", x0=i - 0.45, x1=i + 0.45, y0=thr[cat], y1=thr[cat],
                                  line=dict(dash="dash", color="black", width=2), row=1, col=col)
        elif thr is not None:
            fig.add_hline(y=float(thr), line=dict(dash="dash", color="black", width=2), row=1, col=col)
    fig.update_yaxes(type="log" if log_y else "linear")
    fig.update_yaxes(title_text="image score", row=1, col=1)
    fig.update_layout(boxmode="group", height=450, title=title or "image scores per category (dashed: threshold)")
    return fig


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, cols: int = 4,
               maps: Sequence[np.ndarray] | None = None, vmax: float | None = None, title: str | None = None):
    """A plotly grid of images (or of heatmap overlays when ``maps`` is given)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n = len(images)
    rows = (n + cols - 1) // cols
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(titles) if titles else None,
                        horizontal_spacing=0.01, vertical_spacing=0.06)
    for i, img in enumerate(images):
        shown = overlay(img, maps[i], vmin=0, vmax=vmax) if maps is not None else img
        fig.add_trace(go.Image(z=shown), row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=220 * rows + 60, title=title, margin=dict(l=10, r=10, t=60, b=10))
    return fig


def matrix_grid(matrices: Sequence, titles: Sequence[str] | None = None, cols: int = 3, zrange=None,
                colorscale="Viridis", title: str | None = None, axis_titles: tuple[str, str] | None = None,
                panel_height: int = 300):
    """A plotly grid of matrices as heatmaps (e.g. affinity matrices: teacher | student | difference).

    ``matrices``: 2-D arrays or tensors (row 0 at the top). ``zrange``: None (every panel its own range),
    one ``(lo, hi)`` for all panels, or a list with one ``(lo, hi)`` or None per panel; ``colorscale``: one
    plotly colour scale for all, or a list per panel. Panels with the same range and colour scale share one
    colour axis, so equal colours mean equal values across them; each colour axis gets one colour bar, to the
    right of the last panel that uses it. ``axis_titles``: (x title, y title) on every panel."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    mats = [np.asarray(m.detach().float().cpu() if hasattr(m, "detach") else m, dtype=np.float32) for m in matrices]
    n = len(mats)
    if n == 0:
        raise ValueError("matrix_grid needs at least one matrix")
    if any(m.ndim != 2 for m in mats):
        raise ValueError(f"every matrix must be 2-D, got shapes {[m.shape for m in mats]}")
    if titles is not None and len(titles) != n:
        raise ValueError(f"{len(titles)} titles for {n} matrices")
    ranges = list(zrange) if isinstance(zrange, list) else [zrange] * n
    scales = list(colorscale) if isinstance(colorscale, list) else [colorscale] * n
    if len(ranges) != n or len(scales) != n:
        raise ValueError(f"zrange and colorscale lists must have one entry per matrix ({n})")
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(titles) if titles else None,
                        horizontal_spacing=0.09, vertical_spacing=0.12 if rows > 1 else 0.0)
    axes: dict = {}  # (range, scale) or panel index -> coloraxis name, in order of first use
    last_use: dict = {}
    for i, (m, rng, scale) in enumerate(zip(mats, ranges, scales)):
        key = (tuple(rng), str(scale)) if rng is not None else ("own", i)
        if key not in axes:
            axes[key] = f"coloraxis{len(axes) + 1 if axes else ''}"
            lo, hi = (float(rng[0]), float(rng[1])) if rng is not None else (float(m.min()), float(m.max()))
            fig.update_layout({axes[key]: dict(colorscale=scale, cmin=lo, cmax=hi if hi > lo else lo + 1e-12)})
        last_use[axes[key]] = i
        fig.add_trace(go.Heatmap(z=m, coloraxis=axes[key], hovertemplate="row %{y}, col %{x}: %{z:.4g}<extra></extra>"),
                      row=i // cols + 1, col=i % cols + 1)
    fig.update_yaxes(autorange="reversed")  # row 0 on top, as a matrix is written
    if axis_titles:
        fig.update_xaxes(title_text=axis_titles[0], title_font_size=10)
        fig.update_yaxes(title_text=axis_titles[1], title_font_size=10)
    for name, i in last_use.items():  # the colour bar sits right of the panel that uses the axis last
        suffix = "" if i == 0 else str(i + 1)
        xdom, ydom = fig.layout[f"xaxis{suffix}"].domain, fig.layout[f"yaxis{suffix}"].domain
        fig.layout[name].colorbar = dict(x=xdom[1] + 0.005, y=(ydom[0] + ydom[1]) / 2, len=ydom[1] - ydom[0],
                                         thickness=10, xanchor="left", tickfont_size=9)
    fig.update_annotations(font_size=11)
    fig.update_layout(height=panel_height * rows + 80, title=title, margin=dict(l=10, r=40, t=70, b=10))
    return fig


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
        m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(shape[::-1], Image.NEAREST)) > 0
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
                shrunk &= p[1 + dy: 1 + dy + m.shape[0], 1 + dx: 1 + dx + m.shape[1]]
        inner = shrunk
    return m & ~inner


def mask_overlay(image: np.ndarray, mask: np.ndarray, color=(255, 40, 40), alpha: float = 0.4,
                 outline: bool = True, width: int = 1) -> np.ndarray:
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


# ---- tables ---------------------------------------------------------------------------------------------
# ---- training -------------------------------------------------------------------------------------------
def loss_curve(history: Sequence[dict], key: str = "loss", title: str | None = None):
    """Line plot of ``key`` per epoch from a ``FitResult.history`` (list of {"epoch", "loss", ...})."""
    import plotly.graph_objects as go

    epochs = [h["epoch"] for h in history]
    fig = go.Figure(go.Scatter(x=epochs, y=[h[key] for h in history], mode="lines+markers", name=key))
    fig.update_layout(title=title or f"training {key}", xaxis_title="epoch", yaxis_title=key,
                      xaxis=dict(tickmode="linear", dtick=max(1, len(epochs) // 10)), height=350)
    return fig


def loss_curves(histories: dict[str, Sequence[dict]], key: str = "loss", title: str | None = None,
                log_y: bool = False):
    """One line per run: ``key`` per epoch from several ``FitResult.history`` lists, e.g. the variants of an
    ablation ({"all on": h1, "all off": h2}), on one set of axes."""
    import plotly.graph_objects as go

    fig = go.Figure()
    longest = 1
    for name, history in histories.items():
        epochs = [h["epoch"] for h in history]
        longest = max(longest, len(epochs))
        fig.add_trace(go.Scatter(x=epochs, y=[h[key] for h in history], mode="lines+markers", name=name,
                                 marker_size=4))
    fig.update_layout(title=title or f"training {key}", xaxis_title="epoch", yaxis_title=key, height=380,
                      xaxis=dict(tickmode="linear", dtick=max(1, longest // 10)),
                      yaxis_type="log" if log_y else "linear")
    return fig


# ---- teacher features ----------------------------------------------------------------------------------
def feature_map_grid(image: np.ndarray, features: dict, n_channels: int = 3, title: str | None = None):
    """What the teacher returns for one image, level by level.

    ``image``: (S, S, 3) uint8; ``features``: {level name: (C, h, w) or (1, C, h, w)} (a teacher's output).
    One row per level: the image resampled to that level's h x w grid (what one feature position "is"), the
    L2 norm of the feature vector at each position, and the ``n_channels`` channels with the largest spatial
    variance. Each panel has its own colour scale (blue low, red high)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    levels = list(features)
    cols = 2 + n_channels
    titles = []
    panels = []
    for name in levels:
        f = np.asarray(features[name].detach().float().cpu() if hasattr(features[name], "detach") else features[name],
                       dtype=np.float32)
        if f.ndim == 4:
            f = f[0]
        c, h, w = f.shape
        grid = np.asarray(Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((w, h), Image.BOX))
        norm = np.sqrt((f ** 2).sum(axis=0))
        var = f.reshape(c, -1).var(axis=1)
        top = np.argsort(-var)[:n_channels]
        panels.append([grid, colorize(norm)] + [colorize(f[k]) for k in top])
        titles += [f"{name}: image at {h}x{w}", f"{name}: |feature| ({c} ch)"] + [f"channel {k}" for k in top]
    fig = make_subplots(rows=len(levels), cols=cols, subplot_titles=titles, horizontal_spacing=0.01,
                        vertical_spacing=0.07)
    for r, row in enumerate(panels):
        for c, z in enumerate(row):
            fig.add_trace(go.Image(z=z), row=r + 1, col=c + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=10)
    fig.update_layout(height=200 * len(levels) + 80, title=title, margin=dict(l=10, r=10, t=70, b=10))
    return fig


def embed_2d(features, method: str = "pca", fit_on=None, standardize: bool = True, seed: int = 0) -> np.ndarray:
    """(N, D) features -> (N, 2) coordinates.

    ``method``: ``"pca"`` (linear; fitted on the rows selected by ``fit_on``, a boolean mask or index array,
    default all, then applied to every row) or ``"tsne"`` (non-linear; always fitted on all rows).
    ``standardize`` z-scores every dimension first (with the statistics of the ``fit_on`` rows), so that
    dimensions with large activations do not dominate."""
    x = np.asarray(features.detach().cpu() if hasattr(features, "detach") else features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {x.shape}")
    ref = x if fit_on is None else x[np.asarray(fit_on)]
    if standardize:
        mu, sd = ref.mean(axis=0), ref.std(axis=0)
        sd[sd == 0] = 1.0
        x, ref = (x - mu) / sd, (ref - mu) / sd
    if method == "pca":
        from sklearn.decomposition import PCA
        return PCA(n_components=2, random_state=seed).fit(ref).transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE
        perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    raise ValueError(f"method must be 'pca' or 'tsne', not {method!r}")


def embedding_scatter(features, categories: Sequence[str], groups: Sequence[str] | None = None,
                      method: str = "pca", fit_on=None, hover: Sequence[str] | None = None,
                      title: str | None = None, standardize: bool = True, seed: int = 0):
    """2-D map of (N, D) features (e.g. globally pooled teacher features): one point per image, coloured by
    ``categories``, marker symbol by ``groups`` (e.g. "train normal" / "test defect"). See :func:`embed_2d` for
    ``method``, ``fit_on`` and ``standardize``; ``hover`` adds a label per point (e.g. the file name)."""
    import plotly.express as px

    xy = embed_2d(features, method=method, fit_on=fit_on, standardize=standardize, seed=seed)
    data = {"dim 1": xy[:, 0], "dim 2": xy[:, 1], "category": np.asarray(categories, dtype=str)}
    if groups is not None:
        data["group"] = np.asarray(groups, dtype=str)
    if hover is not None:
        data["image"] = np.asarray(hover, dtype=str)
    axis = "PC" if method == "pca" else "t-SNE "
    fig = px.scatter(data, x="dim 1", y="dim 2", color="category", symbol="group" if groups is not None else None,
                     hover_name="image" if hover is not None else None, opacity=0.75,
                     title=title or f"{method.upper()} of the features",
                     labels={"dim 1": f"{axis}1", "dim 2": f"{axis}2"})
    fig.update_traces(marker_size=8)
    fig.update_layout(height=500, legend_title_text="")
    return fig


# ---- explorer -------------------------------------------------------------------------------------------
def _png(arr: np.ndarray) -> bytes:
    import io
    buf = io.BytesIO()
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def browse_indices(categories, labels, per_category: int | None = None, order: Sequence[str] | None = None) -> list[int]:
    """Which test images an explorer shows: per category (in ``order``, default sorted), its defective images,
    then its normal ones, at most ``per_category // 2`` of each (first ones in dataset order; ``None``: all)."""
    cats, labs = np.asarray(categories), np.asarray(labels)
    out: list[int] = []
    for c in (order if order is not None else sorted(set(cats.tolist()))):
        for label in (1, 0):
            ids = np.flatnonzero((cats == c) & (labs == label)).tolist()
            out += ids[:per_category // 2] if per_category else ids
    return out


def image_browser(images: Sequence[np.ndarray], maps: Sequence[np.ndarray] | None = None,
                  masks: Sequence[np.ndarray] | None = None, scores: Sequence[float] | None = None,
                  labels: Sequence[int] | None = None, titles: Sequence[str] | None = None,
                  categories: Sequence[str] | None = None, threshold: float | None = None,
                  vmax: float | None = None, display_size: int = 256):
    """An ipywidgets explorer over a set of images. Returns an ``ipywidgets.VBox``; display it as a cell's
    last expression.

    ``images``: (H, W, 3) uint8 each. Optional per image: ``masks`` (ground truth, drawn as a green outline),
    ``maps`` (anomaly maps, shown as a heatmap on one shared scale ``[0, vmax]``, default the largest map
    value), ``scores`` and ``labels`` (0 normal / 1 defect), ``titles``, ``categories`` (adds a category
    filter). With ``maps``, a threshold slider (start: ``threshold``, else the 99th percentile of all map
    values) marks the pixels above it in red, and, with ``scores``, gives the image verdict
    ``score > threshold``; for methods whose image score is the map's maximum (STPM) the two agree: an image is
    flagged exactly when some pixel is red.

    The controls are attributes of the returned box: ``.index`` (slider), ``.threshold`` (slider or None),
    ``.category`` (dropdown or None), ``.panels`` (the image widgets), ``.info`` (HTML) and ``.selection``
    (indices the index slider walks through)."""
    import ipywidgets as W

    n = len(images)
    if n == 0:
        raise ValueError("image_browser needs at least one image")
    for name, seq in (("maps", maps), ("masks", masks), ("scores", scores), ("labels", labels), ("titles", titles),
                      ("categories", categories)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} images")
    if maps is not None:
        maps = [np.asarray(m, dtype=np.float32) for m in maps]
        top = float(max(m.max() for m in maps))
        vmax = float(vmax) if vmax is not None else top
        lo = float(min(m.min() for m in maps))
        start = float(threshold) if threshold is not None else float(np.quantile(np.concatenate(
            [m.ravel()[:: max(1, m.size // 4096)] for m in maps]), 0.99))
        hi = max(top, start) * 1.05
        thr = W.FloatSlider(value=start, min=min(lo, start), max=hi if hi > lo else lo + 1.0,
                            step=(hi - lo) / 500 if hi > lo else 0.01, description="threshold",
                            readout_format=".4g", continuous_update=False, layout=W.Layout(width="480px"))
    else:
        thr = None
    cat_dd = None
    if categories is not None:
        cat_dd = W.Dropdown(options=["all"] + sorted(set(map(str, categories))), value="all", description="category")
    idx = W.IntSlider(value=0, min=0, max=n - 1, description="image", continuous_update=False,
                      layout=W.Layout(width="480px"))
    n_panels = 1 + (maps is not None) + (maps is not None)
    panels = [W.Image(format="png", width=display_size, height=display_size) for _ in range(n_panels)]
    captions = ["image" + (" + defect mask (green)" if masks is not None else "")]
    if maps is not None:
        captions += ["anomaly map", "pixels above threshold (red)" + (" vs mask" if masks is not None else "")]
    info = W.HTML()
    state = {"selection": list(range(n))}

    def render(*_):
        sel = state["selection"]
        if not sel:
            info.value = "<b>no image in this category</b>"
            return
        i = sel[min(idx.value, len(sel) - 1)]
        img = np.asarray(images[i], dtype=np.uint8)
        mask = masks[i] if masks is not None else None
        green = (40, 220, 40)
        shown = mask_overlay(img, mask, color=green, alpha=0.0, width=2) if mask is not None else img
        panels[0].value = _png(shown)
        parts = [f"<b>{titles[i] if titles is not None else f'image {i}'}</b> ({idx.value + 1} of {len(sel)})"]
        if labels is not None:
            parts.append("label: <b>" + ("defect" if int(labels[i]) == 1 else "normal") + "</b>")
        if maps is not None:
            heat = overlay(img, maps[i], alpha=0.55, vmin=0.0, vmax=vmax)
            above = _fit_mask(maps[i] > thr.value, img.shape[:2])
            pred = mask_overlay(img, above, color=(255, 40, 40), alpha=0.5, outline=False)
            if mask is not None:
                heat = mask_overlay(heat, mask, color=green, alpha=0.0)
                pred = mask_overlay(pred, mask, color=green, alpha=0.0, width=2)
            panels[1].value, panels[2].value = _png(heat), _png(pred)
            parts.append(f"pixels above threshold: {above.mean():.2%}")
        if scores is not None:
            s = float(scores[i])
            parts.append(f"score: {s:.4g}")
            if thr is not None:
                verdict = "ANOMALOUS" if s > thr.value else "normal"
                colour = "#c0392b" if s > thr.value else "#1e8449"
                parts.append(f"verdict at threshold {thr.value:.4g}: <b style='color:{colour}'>{verdict}</b>")
        info.value = " &nbsp;|&nbsp; ".join(parts)

    def on_category(change):
        c = change["new"]
        state["selection"] = [i for i in range(n) if c == "all" or str(categories[i]) == c]
        box.selection = state["selection"]
        idx.max = max(0, len(state["selection"]) - 1)
        idx.value = 0
        render()

    idx.observe(render, "value")
    if thr is not None:
        thr.observe(render, "value")
    if cat_dd is not None:
        cat_dd.observe(on_category, "value")
    controls = [w for w in (cat_dd, idx, thr) if w is not None]
    row = W.HBox([W.VBox([W.HTML(f"<small>{cap}</small>"), p]) for cap, p in zip(captions, panels)])
    box = W.VBox([*controls, info, row])
    box.index, box.threshold, box.category, box.panels, box.info = idx, thr, cat_dd, panels, info
    box.selection = state["selection"]
    box.render = render
    render()
    return box


def run_switcher(maps: dict[str, Sequence[np.ndarray]], scores: dict[str, Sequence[float]] | None = None,
                 link: Sequence[str] = ("category", "index", "threshold"), description: str = "run",
                 buttons: bool = True, **common):
    """One :func:`image_browser` per run over the same images, and a switch between the runs that keeps the
    image in view -- e.g. the variants of an ablation, or per-class vs unified.

    ``maps[name]`` (and ``scores[name]``, optional) are that run's anomaly maps (and image scores), one per
    image; ``common`` holds what every browser shares (``images``, ``masks``, ``labels``, ``titles``,
    ``categories``, ``threshold``, ``vmax``, ...). The controls named in ``link`` (``"category"``, ``"index"``,
    ``"threshold"``) are tied across the browsers; tie the threshold only when the runs' maps are on a common
    scale (e.g. every map divided by its own model's threshold). ``buttons``: toggle buttons, else a dropdown.

    Returns an ``ipywidgets.VBox`` with ``.selector`` (the switch), ``.browsers`` ({name: browser}) and
    ``.current`` (the browser in view)."""
    import ipywidgets as W

    names = list(maps)
    if not names:
        raise ValueError("run_switcher needs at least one run")
    scores = scores or {}
    unknown = set(scores) - set(names)
    if unknown:
        raise ValueError(f"scores for runs without maps: {sorted(unknown)}")
    bad = [c for c in link if c not in ("category", "index", "threshold")]
    if bad:
        raise ValueError(f"cannot link {bad}: category | index | threshold")
    browsers = {name: image_browser(maps=maps[name], scores=scores.get(name), **common) for name in names}
    first = browsers[names[0]]
    if "threshold" in link and first.threshold is not None:  # one slider range for all, so a linked value fits
        sliders = [b.threshold for b in browsers.values()]
        lo, hi = min(s.min for s in sliders), max(s.max for s in sliders)
        for s in sliders:
            s.max, s.min, s.step = hi, lo, (hi - lo) / 500
    for control in link:
        if getattr(first, control) is None:
            continue
        for other in names[1:]:
            W.link((getattr(first, control), "value"), (getattr(browsers[other], control), "value"))
    make = W.ToggleButtons if buttons else W.Dropdown
    selector = make(options=names, value=names[0], description=description)
    box = W.VBox([selector, first])

    def switch(change):
        box.current = browsers[change["new"]]
        box.children = (selector, box.current)

    selector.observe(switch, "value")
    box.selector, box.browsers, box.current = selector, browsers, first
    return box


# ---- curves and thresholds ------------------------------------------------------------------------------
def _thin_curve(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points of a curve, evenly spaced along its length (vertical and horizontal runs
    alike), always keeping the first and the last point: enough to draw it, far fewer than a pixel ROC has."""
    if len(x) <= max_points:
        return x, y
    span_x = float(x.max() - x.min()) or 1.0
    span_y = float(y.max() - y.min()) or 1.0
    length = np.r_[0.0, np.cumsum(np.hypot(np.diff(x) / span_x, np.diff(y) / span_y))]
    keep = np.unique(np.r_[0, np.searchsorted(length, np.linspace(0, length[-1], max_points)), len(x) - 1])
    keep = keep[keep < len(x)]
    return x[keep], y[keep]


def rate_curves(curves: dict, x_title: str = "false positive rate", y_title: str = "true positive rate",
                x_max: float | None = None, mark_x: float | None = None, diagonal: bool = True,
                title: str | None = None, max_points: int = 1500):
    """Several monotone rate curves on one set of axes -- ROC curves (FPR, TPR) or PRO curves (FPR, PRO, from
    :func:`unistad_edu.metrics.pro_curve`) -- one line per entry of ``curves`` ({name: (x, y)}).

    Pixel curves have up to millions of points; each is thinned to ``max_points`` evenly spaced along its
    length (the shape is kept; the metrics are always computed from the full curve). ``x_max``: show
    ``[0, x_max]`` only (e.g. 0.3, where AUPRO stops integrating); ``mark_x``: a dashed vertical line there;
    ``diagonal``: the chance line y = x."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, (x, y) in curves.items():
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if x.shape != y.shape:
            raise ValueError(f"curve {name!r}: x has {x.size} points, y has {y.size}")
        ok = ~(np.isnan(x) | np.isnan(y))
        x, y = _thin_curve(x[ok], y[ok], max_points)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=str(name)))
    top = 1.0 if x_max is None else float(x_max)
    if diagonal:
        fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="chance (y = x)",
                                 line=dict(dash="dot", color="grey", width=1)))
    if mark_x is not None:
        fig.add_vline(x=float(mark_x), line=dict(dash="dash", color="black", width=1))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=420,
                      xaxis_range=[0, top], yaxis_range=[0, 1.02])
    return fig


def threshold_rows(scores, labels, categories, threshold: float) -> list[dict]:
    """What one image threshold does, per category and over all images: the verdict is ``score > threshold``.

    One dict per category (sorted) and a last ``"all"`` row, with ``defects`` / ``normals`` (counts),
    ``recall`` (share of defective images flagged), ``false alarms`` (share of normal images flagged),
    ``precision`` (share of flagged images that are defective; NaN when nothing is flagged) and ``F1``."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1) == 1
    c = np.asarray(categories, dtype=str).reshape(-1)
    if not len(s) == len(y) == len(c):
        raise ValueError(f"scores ({len(s)}), labels ({len(y)}) and categories ({len(c)}) differ in length")
    flagged = s > float(threshold)
    rows = []
    for name in sorted(set(c)) + ["all"]:
        sel = np.ones_like(y) if name == "all" else c == name
        pos, neg = int((y & sel).sum()), int((~y & sel).sum())
        tp, fp = int((flagged & y & sel).sum()), int((flagged & ~y & sel).sum())
        nan = float("nan")
        rows.append({"category": name, "defects": pos, "normals": neg,
                     "recall": tp / pos if pos else nan, "false alarms": fp / neg if neg else nan,
                     "precision": tp / (tp + fp) if tp + fp else nan,
                     "F1": 2 * tp / (tp + fp + pos) if pos else nan})
    return rows


def threshold_explorer(scores, labels, categories, threshold: float | None = None,
                       marks: dict[str, float] | None = None, digits: int = 2):
    """An ipywidgets explorer of one image threshold over many categories: a slider over the score range and a
    table (:func:`threshold_rows`: recall, false-alarm rate, precision, F1 per category and overall) that
    updates as the slider moves. ``threshold``: the start value (default: the median score); ``marks``:
    named thresholds ({"calibrated": t1, "F1-max (all)": t2}) offered as buttons that move the slider there.

    Returns an ``ipywidgets.VBox`` with ``.threshold`` (the slider), ``.table`` (HTML) and ``.rows()`` (the
    rows now shown)."""
    import ipywidgets as W

    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size == 0:
        raise ValueError("threshold_explorer needs at least one score")
    lo, hi = float(s.min()), float(s.max())
    marks = {k: float(v) for k, v in (marks or {}).items()}
    lo, hi = min([lo, *marks.values()]), max([hi, *marks.values()])
    pad = (hi - lo) * 0.02 or 1.0
    lo, hi = lo - pad, hi + pad
    start = float(threshold) if threshold is not None else float(np.median(s))
    slider = W.FloatSlider(value=min(max(start, lo), hi), min=lo, max=hi, step=(hi - lo) / 1000,
                           description="threshold", readout_format=".4g", continuous_update=False,
                           layout=W.Layout(width="560px"))
    table = W.HTML()
    columns = ["category", "defects", "recall", "normals", "false alarms", "precision", "F1"]

    def rows():
        return threshold_rows(s, labels, categories, slider.value)

    def render(*_):
        head = "".join(f"<th style='padding:2px 8px'>{c}</th>" for c in columns)
        body = []
        for r in rows():
            cells = []
            for c in columns:
                v = r[c]
                text = ("n/a" if np.isnan(v) else f"{v:.{digits}f}") if isinstance(v, float) else str(v)
                cells.append(f"<td style='padding:2px 8px;text-align:right'>{text}</td>")
            style = " style='font-weight:bold;border-top:1px solid #888'" if r["category"] == "all" else ""
            body.append(f"<tr{style}>{''.join(cells)}</tr>")
        table.value = (f"<small>verdict: score &gt; {slider.value:.4g}</small>"
                       f"<table><tr>{head}</tr>{''.join(body)}</table>")

    slider.observe(render, "value")
    buttons = []
    for name, value in marks.items():
        b = W.Button(description=f"{name}: {value:.4g}", layout=W.Layout(width="auto"))
        b.on_click(lambda _b, v=value: setattr(slider, "value", min(max(v, slider.min), slider.max)))
        buttons.append(b)
    render()
    box = W.VBox([slider, W.HBox(buttons), table] if buttons else [slider, table])
    box.threshold, box.table, box.rows, box.buttons = slider, table, rows, buttons
    return box


def results_rows(tables: dict[str, dict], metric: str = "I-AUROC", sort_by: str = "mean") -> list[dict]:
    """One row per method (``tables``: {label: metrics table with "categories" and "mean"}), one column per
    category plus the mean, values x100, sorted by ``sort_by`` (a category or "mean"), best first; a category
    a method was not evaluated on is NaN and sorts last."""
    cats = sorted({c for t in tables.values() for c in t["categories"]})
    if sort_by not in cats + ["mean"]:
        raise ValueError(f"sort_by must be 'mean' or one of {cats}, not {sort_by!r}")
    rows = []
    for label, t in tables.items():
        row = {"method": label}
        for c in cats:
            v = t["categories"].get(c, {}).get(metric)
            row[c] = float("nan") if v is None else 100 * float(v)
        v = t["mean"].get(metric)
        row["mean"] = float("nan") if v is None else 100 * float(v)
        rows.append(row)
    return sorted(rows, key=lambda r: (np.isnan(r[sort_by]), -np.nan_to_num(r[sort_by], nan=0.0)))


def results_explorer(tables: dict[str, dict], metrics: Sequence[str] = HEADLINE,
                     digits: int = 1):
    """An ipywidgets per-category results table: pick the metric and the column to rank by; the best value of
    each column is bold. Returns an ``ipywidgets.VBox`` with ``.metric``, ``.sort_by`` (dropdowns), ``.table``
    (HTML) and ``.rows()`` (the rows now shown)."""
    import ipywidgets as W

    cats = sorted({c for t in tables.values() for c in t["categories"]})
    metric = W.Dropdown(options=list(metrics), value=metrics[0], description="metric")
    sort_by = W.Dropdown(options=["mean"] + cats, value="mean", description="rank by")
    table = W.HTML()

    def rows():
        return results_rows(tables, metric.value, sort_by.value)

    def render(*_):
        shown = rows()
        columns = ["method"] + cats + ["mean"]
        best = {c: np.nanmax([r[c] for r in shown]) if any(not np.isnan(r[c]) for r in shown) else np.nan
                for c in columns[1:]}
        head = "".join(f"<th style='padding:2px 8px'>{c}</th>" for c in columns)
        body = []
        for r in shown:
            cells = [f"<td style='padding:2px 8px'>{r['method']}</td>"]
            for c in columns[1:]:
                v = r[c]
                text = "n/a" if np.isnan(v) else f"{v:.{digits}f}"
                bold = "font-weight:bold;" if not np.isnan(v) and v == best[c] else ""
                cells.append(f"<td style='padding:2px 8px;text-align:right;{bold}'>{text}</td>")
            body.append(f"<tr>{''.join(cells)}</tr>")
        table.value = (f"<small>{metric.value} x100, ranked by {sort_by.value}</small>"
                       f"<table><tr>{head}</tr>{''.join(body)}</table>")

    metric.observe(render, "value")
    sort_by.observe(render, "value")
    render()
    box = W.VBox([W.HBox([metric, sort_by]), table])
    box.metric, box.sort_by, box.table, box.rows = metric, sort_by, table, rows
    return box
