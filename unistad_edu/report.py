"""Tables for people: one list of headline metrics, and the Markdown the CLI, ``bench``, the leaderboard,
``figures`` and the lessons print.

* :data:`HEADLINE` -- the metrics every summary shows, in this order (``metrics.py`` computes them all).
* :func:`format_table` -- a metrics table (``inference.evaluate``'s) as Markdown, one row per category, x100.
* :func:`markdown_table` -- any list of row dicts as Markdown.
* :func:`format_false_alarms` -- the false-alarm rates at the calibrated threshold, in one line.
* :func:`format_verdicts` -- the pooled I-AUROC and the verdicts per category, as ``eval`` prints them.
* :func:`format_by_defect` -- the I-AUROC per category against its structural and its logical defects.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

#: the headline metrics, in the order every table shows them
HEADLINE = ("I-AUROC", "P-AUROC", "AUPRO", "mAD")


def _num(v) -> float:
    return math.nan if v is None else float(v)


def _cell(v) -> str:
    """A metric in [0, 1] as x100 with one decimal; undefined (None / NaN) as ``n/a``."""
    v = _num(v)
    return "n/a" if math.isnan(v) else f"{100.0 * v:.1f}"


def format_table(table: Mapping, columns: Sequence[str] = HEADLINE) -> str:
    """A Markdown table: one row per category and a final **mean** row, values x 100 with one decimal,
    undefined values as ``n/a``."""
    lines = ["| category | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for cat, row in table["categories"].items():
        lines.append(f"| {cat} | " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    lines.append("| **mean** | " + " | ".join(_cell(table["mean"].get(c)) for c in columns) + " |")
    return "\n".join(lines)


def format_intervals(table: Mapping) -> str:
    """One line: each category's I-AUROC with its bootstrap interval (``table["intervals"]``), or ``""``."""
    iv = table.get("intervals") or {}
    cells = [
        f"{cat} {_cell(table['categories'][cat].get('I-AUROC'))} [{100 * lo:.1f}, {100 * hi:.1f}]"
        for cat, v in iv.items()
        if isinstance(v, dict) and cat in table.get("categories", {})
        for lo, hi in [v["I-AUROC"]]
    ]
    if not cells:
        return ""
    return (
        f"I-AUROC with {100 * iv.get('level', 0.95):.0f} % bootstrap intervals (the test images resampled; "
        f"how much the figure would move with other images of the same kind): " + ", ".join(cells)
    )


def markdown_table(
    rows: Sequence[dict], columns: Sequence[str] | None = None, digits: int = 3
) -> str:
    """A Markdown table from a list of dicts (one per row); floats rounded to ``digits``. Show it in a notebook
    with ``IPython.display.Markdown``."""
    rows = list(rows)
    columns = (
        list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    )

    def cell(v) -> str:
        if isinstance(v, (float, np.floating)):
            return "n/a" if np.isnan(v) else f"{float(v):.{digits}f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def format_false_alarms(far: Mapping) -> str:
    """One line: the share of normal test images flagged at the threshold, over all and per category."""

    def pct(v) -> str:
        return "n/a" if v is None or math.isnan(_num(v)) else f"{100.0 * _num(v):.1f} %"

    per = ", ".join(f"{c} {pct(v['rate'])}" for c, v in far["categories"].items())
    n = sum(v["normal"] for v in far["categories"].values())
    at = (
        "each category's own threshold"
        if far.get("threshold") is None
        else f"the calibrated threshold {far['threshold']:.4g}"
    )
    return f"false alarms at {at}: {pct(far['all'])} of {n} normal test images ({per})"


def format_verdicts(table: Mapping) -> list[str]:
    """What ``eval`` prints under the metrics table: the pooled I-AUROC, and the verdicts at the run's
    calibration (per category: false alarms with their 95 % interval and floor, recall, F1; routing accuracy),
    then at one global threshold for comparison."""

    def pct(v) -> str:
        return "n/a" if v is None or math.isnan(_num(v)) else f"{100.0 * _num(v):.1f} %"

    lines = []
    pooled = table.get("pooled")
    if pooled:
        lines.append(
            f"pooled I-AUROC over all {pooled['images']} test images mixed: {pct(pooled['I-AUROC'])} "
            f"(per-category mean: {pct(table.get('mean', {}).get('I-AUROC'))})"
        )
    for key in ("false_alarms", "false_alarms_global"):
        far = table.get(key)
        if not far:
            continue
        routed = far.get("kind") not in (None, "global")
        head = (
            f"verdicts at each routed category's threshold ({far['kind']}, {far.get('tail')} tail)"
            if routed
            else f"verdicts at one threshold for all ({far['threshold']:.4g})"
            if far.get("threshold") is not None
            else "verdicts at each category's own threshold"
        )
        ci = far.get("ci95")
        lines.append(
            f"{head}: false alarms {pct(far['all'])}"
            + (f" [{pct(ci[0])}, {pct(ci[1])}]" if ci else "")
            + (f", mean F1 {pct(far.get('mean_f1'))}" if "mean_f1" in far else "")
            + (
                f", routing accuracy {pct(far['routing_accuracy'])}"
                if far.get("routing_accuracy") is not None
                else ""
            )
        )
        for cat, v in far["categories"].items():
            ci = v.get("ci95")
            lines.append(
                f"  {cat}: false alarms {v['alarms']}/{v['normal']} = {pct(v['rate'])}"
                + (f" [{pct(ci[0])}, {pct(ci[1])}]" if ci else "")
                + (
                    f" (floor {pct(v['floor'])} from {v['calibration_n']} held-out)"
                    if "floor" in v
                    else ""
                )
                + (f", recall {pct(v['recall'])}, F1 {pct(v['f1'])}" if "recall" in v else "")
            )
    return lines


def format_by_defect(table: Mapping) -> str:
    """A Markdown table of ``evaluate``'s ``by_defect``: per category the I-AUROC (x100) against its structural
    defects, its logical ones (a part missing or added; ``n/a`` where it has none) and each defect kind."""
    by = table.get("by_defect") or {}
    if not by:
        return ""
    lines = ["| category | structural | logical | by kind |", "|---|---:|---:|---|"]
    for cat, row in by.items():
        kinds = ", ".join(f"{k} {_cell(v)}" for k, v in row["kinds"].items())
        lines.append(
            f"| {cat} | {_cell(row.get('structural'))} | {_cell(row.get('logical'))} | {kinds} |"
        )
    return "\n".join(lines)


FAR_FACTOR = 10.0  # "unlike anything trained on": this many normal spreads above every category's highest normal


def unlike_training(score: float, validation: dict, factor: float = FAR_FACTOR) -> str | None:
    """A notice when ``score`` lies far outside the normal score range of **every** training category, else None.

    ``validation``: config.json's per-category statistics of held-out normal scores (``calibrate_threshold``).
    Far means: for every category c, ``score > max_c + factor * (max_c - mean_c)`` -- the category's highest
    normal score plus ``factor`` times how far its highest lies above its mean. A defect on a trained product
    usually scores within a few such spreads; a photo of something else (a cat, a screen, a blank page) lands
    far beyond every category, which "ANOMALOUS" alone would not tell."""
    per = (validation or {}).get("per_class") or {}
    if not per or not math.isfinite(score):
        return None
    margins = []
    for stats in per.values():
        top, mean = float(stats["max"]), float(stats["mean"])
        spread = max(top - mean, 1e-12)
        margins.append((score - top) / spread)
    if min(margins) <= factor:
        return None
    return (
        f"unlike anything this model was trained on: the score lies {min(margins):.0f} normal spreads above "
        f"the highest normal score of every training category ({len(per)}); is this one of the trained products?"
    )


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1) of repeated measurements, e.g. one per seed; the std of a
    single measurement is 0 (there is no spread to report, and the tables say "1 seed")."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_std needs at least one value")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def trend(x: Sequence[float], y: Sequence[float]) -> float:
    """The least-squares slope of y against x (change of y per unit of x), e.g. of an AUROC against the number
    of categories trained together: negative = it falls as categories are added."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size != y.size or x.size < 2 or np.ptp(x) == 0:
        raise ValueError("trend needs at least two points at two different x")
    dx = x - x.mean()
    return float((dx * (y - y.mean())).sum() / (dx * dx).sum())
