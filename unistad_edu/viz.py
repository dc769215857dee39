"""Figures: heatmap overlays (PIL, for files and the demo) and plotly figures and ipywidgets explorers (for the
lessons). Plotly and ipywidgets are imported inside the functions that need them, so the CLI stays light."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


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
