"""Plotly figures for the lessons: per-class bars, score histograms, image and matrix grids, loss curves, teacher
feature maps and 2-D embeddings, ROC/PRO curves. Plotly is imported inside each function."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from .render import as_uint8, colorize, mask_overlay, overlay


# ---- training -------------------------------------------------------------------------------------------
def loss_curve(history: Sequence[dict], key: str = "loss", title: str | None = None):
    """Line plot of ``key`` per epoch from a ``FitResult.history`` (list of {"epoch", "loss", ...})."""
    import plotly.graph_objects as go

    epochs = [h["epoch"] for h in history]
    fig = go.Figure(
        go.Scatter(x=epochs, y=[h[key] for h in history], mode="lines+markers", name=key)
    )
    fig.update_layout(
        title=title or f"training {key}",
        xaxis_title="epoch",
        yaxis_title=key,
        xaxis=dict(tickmode="linear", dtick=max(1, len(epochs) // 10)),
        height=350,
    )
    return fig


def loss_curves(
    histories: dict[str, Sequence[dict]],
    key: str = "loss",
    title: str | None = None,
    log_y: bool = False,
):
    """One line per run: ``key`` per epoch from several ``FitResult.history`` lists, e.g. the variants of an
    ablation ({"all on": h1, "all off": h2}), on one set of axes."""
    import plotly.graph_objects as go

    fig = go.Figure()
    longest = 1
    for name, history in histories.items():
        epochs = [h["epoch"] for h in history]
        longest = max(longest, len(epochs))
        fig.add_trace(
            go.Scatter(
                x=epochs,
                y=[h[key] for h in history],
                mode="lines+markers",
                name=name,
                marker_size=4,
            )
        )
    fig.update_layout(
        title=title or f"training {key}",
        xaxis_title="epoch",
        yaxis_title=key,
        height=380,
        xaxis=dict(tickmode="linear", dtick=max(1, longest // 10)),
        yaxis_type="log" if log_y else "linear",
    )
    return fig


# ---- teacher features ----------------------------------------------------------------------------------
def feature_map_grid(
    image: np.ndarray, features: dict, n_channels: int = 3, title: str | None = None
):
    """What the teacher returns for one image, level by level.

    ``image``: (S, S, 3) uint8; ``features``: {level name: (C, h, w) or (1, C, h, w)} (a teacher's output).
    One row per level: the image resampled to that level's h x w grid (what one feature position "is"), the
    L2 norm of the feature vector at each position, and the ``n_channels`` channels with the largest spatial
    variance. Each panel has its own colour scale (blue low, red high)."""
    import plotly.graph_objects as go

    levels = list(features)
    cols = 2 + n_channels
    titles = []
    panels = []
    for name in levels:
        f = np.asarray(
            features[name].detach().float().cpu()
            if hasattr(features[name], "detach")
            else features[name],
            dtype=np.float32,
        )
        if f.ndim == 4:
            f = f[0]
        c, h, w = f.shape
        grid = np.asarray(
            Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((w, h), Image.BOX)
        )
        norm = np.sqrt((f**2).sum(axis=0))
        var = f.reshape(c, -1).var(axis=1)
        top = np.argsort(-var)[:n_channels]
        panels.append([grid, colorize(norm)] + [colorize(f[k]) for k in top])
        titles += [f"{name}: image at {h}x{w}", f"{name}: |feature| ({c} ch)"] + [
            f"channel {k}" for k in top
        ]
    fig = _panel_grid(len(levels), cols, titles, (0.01, 0.07))
    for r, row in enumerate(panels):
        for c, z in enumerate(row):
            fig.add_trace(go.Image(z=z), row=r + 1, col=c + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=10)
    fig.update_layout(
        height=200 * len(levels) + 80, title=title, margin=dict(l=10, r=10, t=70, b=10)
    )
    return fig


def embed_2d(
    features, method: str = "pca", fit_on=None, standardize: bool = True, seed: int = 0
) -> np.ndarray:
    """(N, D) features -> (N, 2) coordinates.

    ``method``: ``"pca"`` (linear; fitted on the rows selected by ``fit_on``, a boolean mask or index array,
    default all, then applied to every row) or ``"tsne"`` (non-linear; always fitted on all rows).
    ``standardize`` z-scores every dimension first (with the statistics of the ``fit_on`` rows), so that
    dimensions with large activations do not dominate."""
    x = np.asarray(
        features.detach().cpu() if hasattr(features, "detach") else features, dtype=np.float64
    )
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
        return TSNE(
            n_components=2, perplexity=perplexity, init="pca", random_state=seed
        ).fit_transform(x)
    raise ValueError(f"method must be 'pca' or 'tsne', not {method!r}")


def embedding_scatter(
    features,
    categories: Sequence[str],
    groups: Sequence[str] | None = None,
    method: str = "pca",
    fit_on=None,
    hover: Sequence[str] | None = None,
    title: str | None = None,
    standardize: bool = True,
    seed: int = 0,
):
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
    fig = px.scatter(
        data,
        x="dim 1",
        y="dim 2",
        color="category",
        symbol="group" if groups is not None else None,
        hover_name="image" if hover is not None else None,
        opacity=0.75,
        title=title or f"{method.upper()} of the features",
        labels={"dim 1": f"{axis}1", "dim 2": f"{axis}2"},
    )
    fig.update_traces(marker_size=8)
    fig.update_layout(height=500, legend_title_text="")
    return fig


# ---- plotly figures -----------------------------------------------------------------------------------
def bar_per_class(tables: dict[str, dict], metric: str = "I-AUROC", title: str | None = None):
    """Grouped bars: one group per category, one bar per table (e.g. {"per-class": t1, "unified": t2})."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for label, table in tables.items():
        cats = list(table["categories"])
        fig.add_bar(
            name=label,
            x=cats + ["mean"],
            y=[table["categories"][c][metric] for c in cats] + [table["mean"][metric]],
        )
    fig.update_layout(
        barmode="group", title=title or metric, yaxis_title=metric, yaxis_range=[0, 1.02]
    )
    return fig


def score_histogram(
    scores: np.ndarray,
    labels: np.ndarray,
    categories: Sequence[str] | None = None,
    threshold: float | None = None,
    title: str = "image scores",
):
    """Overlaid histograms of normal vs anomalous image scores (optionally faceted by category)."""
    import plotly.express as px

    data = {
        "score": np.asarray(scores),
        "label": np.where(np.asarray(labels) == 1, "defect", "normal"),
    }
    if categories is not None:
        data["category"] = np.asarray(categories)
    fig = px.histogram(
        data,
        x="score",
        color="label",
        barmode="overlay",
        nbins=40,
        opacity=0.6,
        facet_col="category" if categories is not None else None,
        facet_col_wrap=3,
        title=title,
    )
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash", annotation_text="threshold")
    return fig


def scores_by_category(
    runs: dict[str, dict],
    thresholds: dict | None = None,
    log_y: bool = False,
    title: str | None = None,
):
    """Image scores per category, normal vs defect side by side, one panel per run.

    ``runs``: {name: outputs}, where ``outputs`` has ``"scores"``, ``"labels"`` (0 normal / 1 defect) and
    ``"categories"`` -- what ``evaluate(..., return_outputs=True)`` returns -- e.g. {"per-class": a, "unified": b}.
    ``thresholds[name]`` (optional): a float, drawn as one dashed line across the panel (one threshold for every
    category), or {category: float}, drawn as a short dashed line over each category. Every panel has its own
    y axis: the scores of different models are not on a common scale. Every image is a point over its box."""
    from plotly.subplots import make_subplots

    names = list(runs)
    thresholds = thresholds or {}
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.08)
    for col, name in enumerate(names, start=1):
        order = _add_score_boxes(fig, name, runs[name], col)
        fig.update_xaxes(categoryorder="array", categoryarray=order, row=1, col=col)
        _add_threshold_lines(fig, thresholds.get(name), order, col)
    fig.update_yaxes(type="log" if log_y else "linear")
    fig.update_yaxes(title_text="image score", row=1, col=1)
    fig.update_layout(
        boxmode="group", height=450, title=title or "image scores per category (dashed: threshold)"
    )
    return fig


def _add_score_boxes(fig, name: str, out: dict, col: int) -> list[str]:
    """Draw run ``name``'s image scores per category, normal and defect boxes with every point, in
    panel ``col`` (the legend from the first panel); the categories in their drawn order."""
    import plotly.graph_objects as go

    colours = {"normal": "#2e86c1", "defect": "#c0392b"}
    points = dict(boxpoints="all", jitter=0.5, pointpos=0, marker_size=4, line_width=1)
    scores = np.asarray(out["scores"], dtype=float)
    labels = np.asarray(out["labels"])
    cats = np.asarray(out["categories"], dtype=str)
    if not len(scores) == len(labels) == len(cats):
        raise ValueError(f"run {name!r}: scores, labels and categories differ in length")
    order = list(dict.fromkeys(sorted(cats)))
    for value, label in ((0, "normal"), (1, "defect")):
        sel = labels == value
        fig.add_trace(
            go.Box(
                x=cats[sel],
                y=scores[sel],
                name=label,
                legendgroup=label,
                showlegend=col == 1,
                marker_color=colours[label],
                **points,  # every image a point over its box
            ),
            row=1,
            col=col,
        )
    return order


def _add_threshold_lines(fig, thr, order: Sequence[str], col: int) -> None:
    """Draw a run's threshold in panel ``col`` as dashed lines: one across the panel for a float, a
    short one over each category of ``order`` for {category: float}; nothing for None."""
    line = dict(dash="dash", color="black", width=2)
    if isinstance(thr, dict):
        for i, cat in enumerate(order):
            if thr.get(cat) is not None:
                fig.add_shape(
                    type="line",
                    x0=i - 0.45,
                    x1=i + 0.45,
                    y0=thr[cat],
                    y1=thr[cat],
                    line=line,
                    row=1,
                    col=col,
                )
    elif thr is not None:
        fig.add_hline(y=float(thr), line=line, row=1, col=col)


def _panel_grid(rows: int, cols: int, titles, spacing: tuple[float, float]):
    """A plotly figure of rows x cols panels titled by ``titles``; ``spacing``: (across, down)."""
    from plotly.subplots import make_subplots

    return make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=list(titles) if titles else None,
        horizontal_spacing=spacing[0],
        vertical_spacing=spacing[1],
    )


def image_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    cols: int = 4,
    maps: Sequence[np.ndarray] | None = None,
    vmax: float | None = None,
    title: str | None = None,
):
    """A plotly grid of images (or of heatmap overlays when ``maps`` is given)."""
    import plotly.graph_objects as go

    n = len(images)
    rows = (n + cols - 1) // cols
    fig = _panel_grid(rows, cols, titles, (0.01, 0.06))
    for i, img in enumerate(images):
        shown = overlay(img, maps[i], vmin=0, vmax=vmax) if maps is not None else img
        fig.add_trace(go.Image(z=shown), row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=220 * rows + 60, title=title, margin=dict(l=10, r=10, t=60, b=10))
    return fig


def matrix_grid(
    matrices: Sequence,
    titles: Sequence[str] | None = None,
    cols: int = 3,
    zrange=None,
    colorscale="Viridis",
    title: str | None = None,
    axis_titles: tuple[str, str] | None = None,
    panel_height: int = 300,
):
    """A plotly grid of matrices as heatmaps (e.g. affinity matrices: teacher | student | difference).

    ``matrices``: 2-D arrays or tensors (row 0 at the top). ``zrange``: None (every panel its own range),
    one ``(lo, hi)`` for all panels, or a list with one ``(lo, hi)`` or None per panel; ``colorscale``: one
    plotly colour scale for all, or a list per panel. Panels with the same range and colour scale share one
    colour axis, so equal colours mean equal values across them; each colour axis gets one colour bar, to the
    right of the last panel that uses it. ``axis_titles``: (x title, y title) on every panel."""
    mats, ranges, scales = _matrix_panels(matrices, titles, zrange, colorscale)
    n = len(mats)
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    fig = _panel_grid(rows, cols, titles, (0.09, 0.12 if rows > 1 else 0.0))
    last_use = _add_matrix_heatmaps(fig, mats, ranges, scales, cols)
    fig.update_yaxes(autorange="reversed")  # row 0 on top, as a matrix is written
    if axis_titles:
        fig.update_xaxes(title_text=axis_titles[0], title_font_size=10)
        fig.update_yaxes(title_text=axis_titles[1], title_font_size=10)
    _place_colorbars(fig, last_use)
    fig.update_annotations(font_size=11)
    fig.update_layout(
        height=panel_height * rows + 80, title=title, margin=dict(l=10, r=40, t=70, b=10)
    )
    return fig


def _matrix_panels(matrices, titles, zrange, colorscale) -> tuple[list, list, list]:
    """(float32 matrices, z range per panel, colour scale per panel), checked against each other."""
    mats = [
        np.asarray(m.detach().float().cpu() if hasattr(m, "detach") else m, dtype=np.float32)
        for m in matrices
    ]
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
    return mats, ranges, scales


def _add_matrix_heatmaps(fig, mats, ranges, scales, cols: int) -> dict:
    """Draw each matrix as a heatmap on a colour axis shared by the panels of its range and colour
    scale; {colour axis name: index of the last panel that uses it}."""
    import plotly.graph_objects as go

    axes: dict = {}  # (range, scale) or panel index -> coloraxis name, in order of first use
    last_use: dict = {}
    for i, (m, rng, scale) in enumerate(zip(mats, ranges, scales)):
        key = (tuple(rng), str(scale)) if rng is not None else ("own", i)
        if key not in axes:
            axes[key] = f"coloraxis{len(axes) + 1 if axes else ''}"
            lo, hi = (
                (float(rng[0]), float(rng[1]))
                if rng is not None
                else (float(m.min()), float(m.max()))
            )
            fig.update_layout(
                {axes[key]: dict(colorscale=scale, cmin=lo, cmax=hi if hi > lo else lo + 1e-12)}
            )
        last_use[axes[key]] = i
        fig.add_trace(
            go.Heatmap(
                z=m,
                coloraxis=axes[key],
                hovertemplate="row %{y}, col %{x}: %{z:.4g}<extra></extra>",
            ),
            row=i // cols + 1,
            col=i % cols + 1,
        )
    return last_use


def _place_colorbars(fig, last_use: dict) -> None:
    """Put each colour axis's bar right of the panel that uses it last, as tall as that panel."""
    for name, i in last_use.items():
        suffix = "" if i == 0 else str(i + 1)
        xdom, ydom = fig.layout[f"xaxis{suffix}"].domain, fig.layout[f"yaxis{suffix}"].domain
        fig.layout[name].colorbar = dict(
            x=xdom[1] + 0.005,
            y=(ydom[0] + ydom[1]) / 2,
            len=ydom[1] - ydom[0],
            thickness=10,
            xanchor="left",
            tickfont_size=9,
        )


# ---- curves and thresholds ------------------------------------------------------------------------------
def _thin_curve(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points of a curve, evenly spaced along its length (vertical and horizontal runs
    alike), always keeping the first and the last point: enough to draw it, far fewer than a pixel ROC has."""
    if len(x) <= max_points:
        return x, y
    span_x = float(x.max() - x.min()) or 1.0
    span_y = float(y.max() - y.min()) or 1.0
    length = np.r_[0.0, np.cumsum(np.hypot(np.diff(x) / span_x, np.diff(y) / span_y))]
    keep = np.unique(
        np.r_[0, np.searchsorted(length, np.linspace(0, length[-1], max_points)), len(x) - 1]
    )
    keep = keep[keep < len(x)]
    return x[keep], y[keep]


def rate_curves(
    curves: dict,
    x_title: str = "false positive rate",
    y_title: str = "true positive rate",
    x_max: float | None = None,
    mark_x: float | None = None,
    diagonal: bool = True,
    title: str | None = None,
    max_points: int = 1500,
):
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
        fig.add_trace(
            go.Scatter(
                x=[0, top],
                y=[0, top],
                mode="lines",
                name="chance (y = x)",
                line=dict(dash="dot", color="grey", width=1),
            )
        )
    if mark_x is not None:
        fig.add_vline(x=float(mark_x), line=dict(dash="dash", color="black", width=1))
    fig.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title=y_title,
        height=420,
        xaxis_range=[0, top],
        yaxis_range=[0, 1.02],
    )
    return fig


# ---- defects and maps, in units of each model's threshold --------------------------------------------------
def pick_defects(
    outputs: dict, per_category: int = 2, categories: Sequence[str] | None = None
) -> list[int]:
    """Indices of ``per_category`` defective test images of every category, evenly spread over each category's
    defects. ``outputs``: what ``evaluate(..., return_outputs=True)`` returns (its ``categories`` and ``labels``)."""
    cats, labels = np.asarray(outputs["categories"]), np.asarray(outputs["labels"])
    picked = []
    for c in categories if categories is not None else list(dict.fromkeys(cats.tolist())):
        ids = np.flatnonzero((cats == c) & (labels == 1))
        if len(ids):
            picked += ids[
                np.linspace(0, len(ids) - 1, min(per_category, len(ids))).astype(int)
            ].tolist()
    return picked


def threshold_unit_grid(
    dataset,
    show: Sequence[int],
    models: dict[str, tuple[dict, object]],
    title: str,
    outline=(40, 220, 40),
):
    """Row 1: the test images ``show`` of ``dataset`` with their defect outlined; then one row per model
    ``{label: (outputs, threshold)}`` -- its anomaly map divided by its threshold (a number, or one per test
    image), on one colour scale 0 .. 2 (yellow-green = at the threshold), titled with the image score in units
    of the threshold. ``outputs``: ``evaluate(..., return_outputs=True)``'s, in the dataset's order."""
    masks = next(
        out["masks"] for out, _ in models.values() if "masks" in out
    )  # (N, H, W), the same test set

    def tile(i, relative_map=None):
        img = as_uint8(dataset[i]["image"])
        shown = img if relative_map is None else overlay(img, relative_map, vmin=0, vmax=2)
        return mask_overlay(shown, masks[i], color=outline, alpha=0.0)

    images = [tile(i) for i in show]
    titles = [f"{dataset.records[i].category}: {dataset.records[i].defect}" for i in show]
    for label, (out, threshold) in models.items():
        thr = np.broadcast_to(np.asarray(threshold, dtype=float), (len(out["scores"]),))
        images += [tile(i, out["maps"][i] / thr[i]) for i in show]
        titles += [f"{label}: {out['scores'][i] / thr[i]:.2f} x thr" for i in show]
    return image_grid(images, titles, cols=len(show), title=title)


def spread_curves(
    curves: dict,
    x_title: str,
    y_title: str,
    title: str | None = None,
    y_range: tuple[float, float] | None = None,
):
    """Lines with error bars: ``curves`` = {name: {x: (mean, std)}} (e.g. an AUROC per number of categories,
    mean and std over seeds; std 0 draws no bar). ``y_range``: the axis range (default: from the data); a range
    that does not start at 0 is said in the axis title by the caller."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, points in curves.items():
        xs = sorted(points)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=[points[k][0] for k in xs],
                mode="lines+markers",
                name=str(name),
                error_y=dict(type="data", array=[points[k][1] for k in xs], visible=True),
            )
        )
    fig.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title=y_title,
        height=400,
        legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
    )  # above the plot, off the lines
    fig.update_xaxes(tickmode="array", tickvals=sorted({k for p in curves.values() for k in p}))
    if y_range is not None:
        fig.update_yaxes(range=list(y_range))
    return fig
