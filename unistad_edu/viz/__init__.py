"""Figures, split by what they need: :mod:`.render` (numpy + PIL: overlays, masks, the prediction picture the
CLI and the demo write), :mod:`.plots` (plotly figures for the lessons) and :mod:`.widgets` (ipywidgets
explorers). Everything is importable from ``unistad_edu.viz`` as before; plotly and ipywidgets are imported
inside the functions that need them, so the CLI stays light."""
from __future__ import annotations

from .plots import (  # noqa: F401
    bar_per_class,
    embed_2d,
    embedding_scatter,
    feature_map_grid,
    image_grid,
    loss_curve,
    loss_curves,
    matrix_grid,
    pick_defects,
    rate_curves,
    score_histogram,
    scores_by_category,
    spread_curves,
    threshold_unit_grid,
)
from .render import (  # noqa: F401
    OUTLINE_COLOUR,
    PREDICTION_ALPHA,
    as_uint8,
    colorbar,
    colorize,
    heatmap_with_colorbar,
    mask_boundary,
    mask_overlay,
    outline_region,
    overlay,
    predicted_region,
    prediction_figure,
    save_overlay,
    save_prediction,
)
from .widgets import (  # noqa: F401
    browse_indices,
    image_browser,
    results_explorer,
    results_rows,
    run_switcher,
    threshold_explorer,
    threshold_rows,
)

__all__ = [
    "pick_defects", "threshold_unit_grid",
    "OUTLINE_COLOUR", "PREDICTION_ALPHA", "as_uint8", "colorbar", "colorize", "heatmap_with_colorbar",
    "mask_boundary", "mask_overlay", "outline_region", "overlay", "predicted_region",
    "prediction_figure", "save_overlay", "save_prediction", "bar_per_class", "embed_2d", "embedding_scatter",
    "feature_map_grid", "image_grid", "loss_curve", "loss_curves", "matrix_grid", "rate_curves",
    "score_histogram", "scores_by_category", "spread_curves", "browse_indices", "image_browser", "results_explorer",
    "results_rows", "run_switcher", "threshold_explorer", "threshold_rows"
]
