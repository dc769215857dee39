"""ipywidgets explorers for the lessons: an image browser, a run switcher, a threshold explorer and a results
explorer. ipywidgets is imported inside each function."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from ..report import HEADLINE
from .render import _fit_mask, mask_overlay, overlay


# ---- explorer -------------------------------------------------------------------------------------------
def _png(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def browse_indices(
    categories, labels, per_category: int | None = None, order: Sequence[str] | None = None
) -> list[int]:
    """Which test images an explorer shows: per category (in ``order``, default sorted), its defective images,
    then its normal ones, at most ``per_category // 2`` of each (first ones in dataset order; ``None``: all)."""
    cats, labs = np.asarray(categories), np.asarray(labels)
    out: list[int] = []
    for c in order if order is not None else sorted(set(cats.tolist())):
        for label in (1, 0):
            ids = np.flatnonzero((cats == c) & (labs == label)).tolist()
            out += ids[: per_category // 2] if per_category else ids
    return out


# image_browser's optional per-image arguments, in its order
_PER_IMAGE = ("maps", "masks", "scores", "labels", "titles", "categories")


def _check_lengths(images, *per_image) -> int:
    """The number of images; every given per-image sequence (in :data:`_PER_IMAGE` order) must have
    that many entries."""
    n = len(images)
    if n == 0:
        raise ValueError("image_browser needs at least one image")
    for name, seq in zip(_PER_IMAGE, per_image, strict=True):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} images")
    return n


def _threshold_slider(maps: Sequence[np.ndarray], threshold: float | None):
    """The browser's threshold slider over the values of ``maps``; it starts at ``threshold``, else at the
    99th percentile of (a sample of) all map values."""
    import ipywidgets as W

    top, lo = float(max(m.max() for m in maps)), float(min(m.min() for m in maps))
    start = (
        float(threshold)
        if threshold is not None
        else float(
            np.quantile(np.concatenate([m.ravel()[:: max(1, m.size // 4096)] for m in maps]), 0.99)
        )
    )
    hi = max(top, start) * 1.05
    return W.FloatSlider(
        value=start,
        min=min(lo, start),
        max=hi if hi > lo else lo + 1.0,
        step=(hi - lo) / 500 if hi > lo else 0.01,
        description="threshold",
        readout_format=".4g",
        continuous_update=False,
        layout=W.Layout(width="480px"),
    )


def _browse_one(i: int, images, maps, masks, scores, labels, thr: float | None, vmax: float | None):
    """(PNG bytes of the browser's panels, HTML facts) for image ``i``: the image with its mask outline, the
    heatmap and the pixels above ``thr``; its label, the share of pixels above, its score and verdict."""
    green = (40, 220, 40)
    img = np.asarray(images[i], dtype=np.uint8)
    mask = masks[i] if masks is not None else None
    pngs = [
        _png(mask_overlay(img, mask, color=green, alpha=0.0, width=2) if mask is not None else img)
    ]
    parts = []
    if labels is not None:
        parts.append("label: <b>" + ("defect" if int(labels[i]) == 1 else "normal") + "</b>")
    if maps is not None:
        heat = overlay(img, maps[i], alpha=0.55, vmin=0.0, vmax=vmax)
        above = _fit_mask(maps[i] > thr, img.shape[:2])
        pred = mask_overlay(img, above, color=(255, 40, 40), alpha=0.5, outline=False)
        if mask is not None:
            heat = mask_overlay(heat, mask, color=green, alpha=0.0)
            pred = mask_overlay(pred, mask, color=green, alpha=0.0, width=2)
        pngs += [_png(heat), _png(pred)]
        parts.append(f"pixels above threshold: {above.mean():.2%}")
    if scores is not None:
        s = float(scores[i])
        parts.append(f"score: {s:.4g}")
        if thr is not None:
            verdict, colour = ("ANOMALOUS", "#c0392b") if s > thr else ("normal", "#1e8449")
            parts.append(f"verdict at threshold {thr:.4g}: <b style='color:{colour}'>{verdict}</b>")
    return pngs, parts


def image_browser(
    images: Sequence[np.ndarray],
    maps: Sequence[np.ndarray] | None = None,
    masks: Sequence[np.ndarray] | None = None,
    scores: Sequence[float] | None = None,
    labels: Sequence[int] | None = None,
    titles: Sequence[str] | None = None,
    categories: Sequence[str] | None = None,
    threshold: float | None = None,
    vmax: float | None = None,
    display_size: int = 256,
):
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

    n = _check_lengths(images, maps, masks, scores, labels, titles, categories)
    thr = None
    if maps is not None:
        maps = [np.asarray(m, dtype=np.float32) for m in maps]
        vmax = float(vmax) if vmax is not None else float(max(m.max() for m in maps))
        thr = _threshold_slider(maps, threshold)
    cat_dd = _category_filter(categories)
    idx = W.IntSlider(
        value=0,
        min=0,
        max=n - 1,
        description="image",
        continuous_update=False,
        layout=W.Layout(width="480px"),
    )
    captions = _panel_captions(maps is not None, masks is not None)
    panels = [W.Image(format="png", width=display_size, height=display_size) for _ in captions]
    info = W.HTML()
    view = _BrowserView(
        images, maps, masks, scores, labels, titles, categories, vmax, idx, thr, info, panels
    )
    box = _browser_box(view, cat_dd, captions)
    view.render()
    return box


def _category_filter(categories: Sequence[str] | None):
    """The browser's category dropdown ("all" and each category), or None without ``categories``."""
    import ipywidgets as W

    if categories is None:
        return None
    return W.Dropdown(
        options=["all"] + sorted(set(map(str, categories))), value="all", description="category"
    )


def _panel_captions(with_maps: bool, with_masks: bool) -> list[str]:
    """The browser's panel captions: the image, then, with maps, the heatmap and the red pixels."""
    captions = ["image" + (" + defect mask (green)" if with_masks else "")]
    if with_maps:
        captions += [
            "anomaly map",
            "pixels above threshold (red)" + (" vs mask" if with_masks else ""),
        ]
    return captions


def _browser_box(view: "_BrowserView", cat_dd, captions: Sequence[str]):
    """The browser's box: its controls wired to ``view``, the facts and the captioned panels, with
    the controls as attributes (see :func:`image_browser`)."""
    import ipywidgets as W

    idx, thr, info, panels = view.idx, view.thr, view.info, view.panels
    for widget, handler in ((idx, view.render), (thr, view.render), (cat_dd, view.on_category)):
        if widget is not None:
            widget.observe(handler, "value")
    controls = [w for w in (cat_dd, idx, thr) if w is not None]
    row = W.HBox([W.VBox([W.HTML(f"<small>{cap}</small>"), p]) for cap, p in zip(captions, panels)])
    box = view.box = W.VBox([*controls, info, row])
    box.index, box.threshold, box.category, box.panels, box.info = idx, thr, cat_dd, panels, info
    box.selection = view.selection
    box.render = view.render
    return box


class _BrowserView:
    """What :func:`image_browser` shows for its sliders and category filter: the selection the index slider
    walks through, and the panels and facts of the image it points at."""

    def __init__(
        self, images, maps, masks, scores, labels, titles, categories, vmax, idx, thr, info, panels
    ):
        self.images, self.maps, self.masks, self.scores, self.labels = (
            images,
            maps,
            masks,
            scores,
            labels,
        )
        self.titles, self.categories, self.vmax = titles, categories, vmax
        self.idx, self.thr, self.info, self.panels = idx, thr, info, panels
        self.selection = list(range(len(images)))
        self.box = None

    def render(self, *_):
        sel = self.selection
        if not sel:
            self.info.value = "<b>no image in this category</b>"
            return
        i = sel[min(self.idx.value, len(sel) - 1)]
        thr = None if self.thr is None else self.thr.value
        pngs, parts = _browse_one(
            i, self.images, self.maps, self.masks, self.scores, self.labels, thr, self.vmax
        )
        for panel, png in zip(self.panels, pngs):
            panel.value = png
        title = self.titles[i] if self.titles is not None else f"image {i}"
        self.info.value = " &nbsp;|&nbsp; ".join(
            [f"<b>{title}</b> ({self.idx.value + 1} of {len(sel)})", *parts]
        )

    def on_category(self, change):
        c = change["new"]
        self.selection = [
            i for i in range(len(self.images)) if c == "all" or str(self.categories[i]) == c
        ]
        if self.box is not None:
            self.box.selection = self.selection
        self.idx.max = max(0, len(self.selection) - 1)
        self.idx.value = 0
        self.render()


def run_switcher(
    maps: dict[str, Sequence[np.ndarray]],
    scores: dict[str, Sequence[float]] | None = None,
    link: Sequence[str] = ("category", "index", "threshold"),
    description: str = "run",
    buttons: bool = True,
    **common,
):
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
    browsers = {
        name: image_browser(maps=maps[name], scores=scores.get(name), **common) for name in names
    }
    first = browsers[names[0]]
    if (
        "threshold" in link and first.threshold is not None
    ):  # one slider range for all, so a linked value fits
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


def threshold_rows(scores, labels, categories, threshold: float) -> list[dict]:
    """What one image threshold does, per category and over all images: the verdict is ``score > threshold``.

    One dict per category (sorted) and a last ``"all"`` row, with ``defects`` / ``normals`` (counts),
    ``recall`` (share of defective images flagged), ``false alarms`` (share of normal images flagged),
    ``precision`` (share of flagged images that are defective; NaN when nothing is flagged) and ``F1``."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1) == 1
    c = np.asarray(categories, dtype=str).reshape(-1)
    if not len(s) == len(y) == len(c):
        raise ValueError(
            f"scores ({len(s)}), labels ({len(y)}) and categories ({len(c)}) differ in length"
        )
    flagged = s > float(threshold)
    rows = []
    for name in sorted(set(c)) + ["all"]:
        sel = np.ones_like(y) if name == "all" else c == name
        pos, neg = int((y & sel).sum()), int((~y & sel).sum())
        tp, fp = int((flagged & y & sel).sum()), int((flagged & ~y & sel).sum())
        nan = float("nan")
        rows.append(
            {
                "category": name,
                "defects": pos,
                "normals": neg,
                "recall": tp / pos if pos else nan,
                "false alarms": fp / neg if neg else nan,
                "precision": tp / (tp + fp) if tp + fp else nan,
                "F1": 2 * tp / (tp + fp + pos) if pos else nan,
            }
        )
    return rows


def threshold_explorer(
    scores,
    labels,
    categories,
    threshold: float | None = None,
    marks: dict[str, float] | None = None,
    digits: int = 2,
):
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
    marks = {k: float(v) for k, v in (marks or {}).items()}
    lo, hi = _explorer_range(s, marks)
    start = float(threshold) if threshold is not None else float(np.median(s))
    slider = W.FloatSlider(
        value=min(max(start, lo), hi),
        min=lo,
        max=hi,
        step=(hi - lo) / 1000,
        description="threshold",
        readout_format=".4g",
        continuous_update=False,
        layout=W.Layout(width="560px"),
    )
    table = W.HTML()

    def rows():
        return threshold_rows(s, labels, categories, slider.value)

    def render(*_):
        table.value = _threshold_table_html(rows(), slider.value, digits)

    slider.observe(render, "value")
    buttons = _mark_buttons(marks, slider)
    render()
    box = W.VBox([slider, W.HBox(buttons), table] if buttons else [slider, table])
    box.threshold, box.table, box.rows, box.buttons = slider, table, rows, buttons
    return box


def _explorer_range(s: np.ndarray, marks: dict[str, float]) -> tuple[float, float]:
    """The threshold slider's (min, max): the scores and the marks, with 2% room on each side."""
    lo, hi = float(s.min()), float(s.max())
    lo, hi = min([lo, *marks.values()]), max([hi, *marks.values()])
    pad = (hi - lo) * 0.02 or 1.0
    return lo - pad, hi + pad


def _threshold_table_html(rows: list[dict], threshold: float, digits: int) -> str:
    """The explorer's HTML table of :func:`threshold_rows` at ``threshold``; "all" row in bold."""
    columns = ["category", "defects", "recall", "normals", "false alarms", "precision", "F1"]
    head = "".join(f"<th style='padding:2px 8px'>{c}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            v = r[c]
            text = ("n/a" if np.isnan(v) else f"{v:.{digits}f}") if isinstance(v, float) else str(v)
            cells.append(f"<td style='padding:2px 8px;text-align:right'>{text}</td>")
        style = (
            " style='font-weight:bold;border-top:1px solid #888'" if r["category"] == "all" else ""
        )
        body.append(f"<tr{style}>{''.join(cells)}</tr>")
    return (
        f"<small>verdict: score &gt; {threshold:.4g}</small>"
        f"<table><tr>{head}</tr>{''.join(body)}</table>"
    )


def _mark_buttons(marks: dict[str, float], slider) -> list:
    """One button per named threshold in ``marks``, moving ``slider`` there (within its range)."""
    import ipywidgets as W

    buttons = []
    for name, value in marks.items():
        b = W.Button(description=f"{name}: {value:.4g}", layout=W.Layout(width="auto"))
        b.on_click(
            lambda _b, v=value: setattr(slider, "value", min(max(v, slider.min), slider.max))
        )
        buttons.append(b)
    return buttons


def results_rows(
    tables: dict[str, dict], metric: str = "I-AUROC", sort_by: str = "mean"
) -> list[dict]:
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


def results_explorer(tables: dict[str, dict], metrics: Sequence[str] = HEADLINE, digits: int = 1):
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
        best = {
            c: np.nanmax([r[c] for r in shown])
            if any(not np.isnan(r[c]) for r in shown)
            else np.nan
            for c in columns[1:]
        }
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
        table.value = (
            f"<small>{metric.value} x100, ranked by {sort_by.value}</small>"
            f"<table><tr>{head}</tr>{''.join(body)}</table>"
        )

    metric.observe(render, "value")
    sort_by.observe(render, "value")
    render()
    box = W.VBox([W.HBox([metric, sort_by]), table])
    box.metric, box.sort_by, box.table, box.rows = metric, sort_by, table, rows
    return box
