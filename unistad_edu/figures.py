"""``python -m unistad_edu figures``: the README's figures, rendered from results into ``docs/``.

Three static PNGs (matplotlib, no browser needed), each from a file a benchmark wrote or a trained run:

* ``interference.png`` -- per-category I-AUROC and P-AUROC of the same STPM trained per-class and unified, from
  a ``bench accuracy --json`` file (the protocol, equal steps or equal epochs, is in the title);
* ``heatmaps.png`` -- defective test images of every category with the model's anomaly map, the ground-truth
  outline, score and verdict, from a run folder (default: the demo's small synthetic model, trained once);
* ``leaderboard.png`` -- every method unified on the same data: per-category I-AUROC, and mean I-AUROC
  against inference time and stored state, from a ``bench leaderboard --json`` file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

RESULTS = Path("docs") / "results"


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> Path:
    """Write atomically (a temporary file in the same folder, then rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    tmp.replace(out)
    _plt().close(fig)
    return out


def interference_figure(acc_json, out) -> Path:
    """Grouped bars: per-class vs unified, per category, for I-AUROC and P-AUROC (x100)."""
    import json

    plt = _plt()
    result = json.loads(Path(acc_json).read_text())
    st = result.get("settings", {})
    if not {"unified", "per-class"} <= set(st):
        raise ValueError(
            f"{acc_json}: needs a bench accuracy result with both settings (unified and per-class)"
        )
    cats = sorted(st["unified"]["metrics"]["categories"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    x = np.arange(len(cats) + 1)
    seeds = max(len(st[s].get("seeds") or [0]) for s in ("unified", "per-class"))
    for ax, col in zip(axes, ("I-AUROC", "P-AUROC")):
        for k, (setting, colour) in enumerate((("per-class", "#4C78A8"), ("unified", "#F58518"))):
            m = st[setting]["metrics"]
            vals = [100 * (m["categories"][c].get(col) or np.nan) for c in cats] + [
                100 * (m["mean"].get(col) or np.nan)
            ]
            err = _spread(m, cats, col)  # over seeds, when the result has several
            ax.bar(
                x + (k - 0.5) * 0.38,
                vals,
                0.38,
                label=setting,
                color=colour,
                yerr=err,
                capsize=3 if err is not None else 0,
            )
        ax.set_xticks(x, cats + ["mean"], rotation=25, ha="right")
        ax.set_title(col)
        ax.set_ylim(0, 105)  # from 0: bar lengths are comparable
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("x100 (axis from 0)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="upper right", ncol=2, frameon=False, bbox_to_anchor=(0.99, 1.0)
    )
    fig.suptitle(
        f"{result.get('method', 'stpm').upper()}: one model per category vs one for all\n"
        f"({result.get('protocol', '?')} protocol; "
        f"{'mean ± std of %d seeds' % seeds if seeds > 1 else 'one seed: no error bars'})",
        x=0.02,
        ha="left",
    )
    fig.tight_layout(
        rect=(0, 0, 1, 0.91)
    )  # room for the two-line title and the legend above the axes, off the bars
    return _save(fig, out)


def _spread(metrics: dict, cats, col: str, scale: float = 100.0):
    """Per-category then mean standard deviations (x scale) of ``col`` if the result holds them
    (``metrics["std"]``: {"categories": {cat: {col: std}}, "mean": {col: std}}), else None."""
    std = metrics.get("std")
    if not std:
        return None
    return [scale * ((std.get("categories", {}).get(c) or {}).get(col) or 0.0) for c in cats] + [
        scale * ((std.get("mean") or {}).get(col) or 0.0)
    ]


def heatmap_grid_figure(run, out, per_category: int = 2, data=None) -> Path:
    """Defective test images of every category the run was trained on, with the anomaly map over them."""
    plt = _plt()
    from .checkpoint import load_checkpoint, read_config
    from .data import load_mask
    from .inference import predict
    from .resolve import test_set
    from .viz import mask_boundary, overlay

    cfg = read_config(run)
    model = load_checkpoint(run).eval()
    test = test_set(cfg, model.cfg.image_size, data=data)
    root, cats = test.root, test.categories
    picks = []
    for cat in cats:
        ids = [i for i, r in enumerate(test.records) if r.category == cat and r.label == 1]
        picks += [
            test.records[ids[j]]
            for j in np.linspace(0, len(ids) - 1, min(per_category, len(ids))).astype(int)
        ]
    if not picks:
        raise ValueError(f"no defective test images under {root} for {cats}")
    preds = predict(model, [r.path for r in picks])
    hi = float(
        np.quantile(np.stack([p["anomaly_map"] for p in preds]), 0.999)
    )  # one colour scale for all
    lo = float(np.min([p["anomaly_map"].min() for p in preds]))
    cols = min(len(picks), 2 * per_category if len(picks) > 2 * per_category else len(picks))
    cols = max(cols, 1)
    rows = int(np.ceil(len(picks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    size = model.cfg.image_size
    for ax, rec, p in zip(axes.ravel(), picks, preds):
        shown = overlay(p["image"], p["anomaly_map"], alpha=0.5, vmin=lo, vmax=hi)
        if rec.mask_path is not None:
            edge = mask_boundary(load_mask(rec.mask_path, size) > 0, width=1)
            shown[edge] = (255, 255, 255)
        ax.imshow(shown)
        verdict = "" if p["anomalous"] is None else (" DEFECT" if p["anomalous"] else " ok")
        ax.set_title(f"{rec.category}/{rec.defect}\nscore {p['score']:.3g}{verdict}", fontsize=8)
    fig.suptitle(
        f"{cfg['method']} ({cfg.get('setting', 'unified')}): anomaly map over defective test images; "
        f"white = ground-truth outline",
        fontsize=10,
    )
    return _save(fig, out)


def leaderboard_figure(lb_json, out) -> Path:
    """Left: per-category I-AUROC of every method; right: mean I-AUROC vs ms/img (marker area ~ stored state)."""
    plt = _plt()
    from .leaderboard import load, per_category

    result = load(lb_json)
    cats, values = per_category(result, "I-AUROC")
    rows = {r["label"]: r for r in result["rows"]}
    seeds_note = _seeds_note(result["rows"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.6, 1]})
    _category_bars(ax, cats, values, rows, seeds_note)
    _accuracy_vs_cost(ax2, result)
    fig.tight_layout()
    return _save(fig, out)


def _seeds_note(rows: list[dict]) -> str:
    """The bar panel's title note: over how many seeds the error bars are, or that there is none."""
    counts = sorted({len(r.get("seeds") or [0]) for r in rows})
    seeds = counts[-1]
    # methods measured with unequal seeds say so
    span = f"{seeds}" if len(counts) == 1 else f"{counts[0]}-{seeds}"
    return (
        f" (mean ± std of {span} seeds; one seed: no bar)"
        if seeds > 1
        else " (one seed: no error bars)"
    )


def _category_bars(ax, cats, values: dict, rows: dict, seeds_note: str) -> None:
    """Grouped bars of every method's I-AUROC per category (x100), error bars over seeds if any."""
    width = 0.8 / max(1, len(values))
    x = np.arange(len(cats))
    for k, (label, vals) in enumerate(values.items()):
        err = _spread(rows[label], cats, "I-AUROC")
        ax.bar(
            x + (k - (len(values) - 1) / 2) * width,
            vals,
            width,
            label=label,
            yerr=None if err is None else err[:-1],
            capsize=2 if err is not None else 0,
        )
    ax.set_xticks(x, cats, rotation=20, ha="right")
    ax.set_ylim(0, 105)  # from 0: bar lengths are comparable
    ax.set_ylabel("I-AUROC x100 (axis from 0)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(
        fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False
    )  # below: off the bars
    ax.set_title("per category, one unified model each" + seeds_note, fontsize=10)


def _accuracy_vs_cost(ax, result: dict) -> None:
    """Mean I-AUROC (x100) of every method against its inference ms/img, marker area ~ stored state;
    outside references as horizontal lines."""
    lo = min(100 * r["mean"]["I-AUROC"] for r in result["rows"])
    for r in result["rows"]:
        y = 100 * r["mean"]["I-AUROC"]
        err = _spread(r, [], "I-AUROC")
        ax.errorbar(
            r["infer_ms_per_img"],
            y,
            yerr=None if err is None else [err[-1]],
            fmt="none",
            ecolor="grey",
            capsize=3,
        )
        ax.scatter(r["infer_ms_per_img"], y, s=30 + 40 * r["state_mib"], alpha=0.6)
        ax.annotate(
            f"{r['label']} ({r['state_mib']:.1f} MiB)",
            (r["infer_ms_per_img"], y),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    lo = min([lo, *_reference_lines(ax, result.get("references", []))])
    ax.set_xlabel(
        f"inference ms/img (CPU, same run; teacher alone {1000 / result['teacher_only_img_s']:.1f})"
    )
    ax.set_ylabel(f"mean I-AUROC x100 (axis starts near {lo:.0f}, not 0)")
    ax.grid(alpha=0.3)
    ax.set_title("accuracy vs cost (marker area ~ stored state)")


def _reference_lines(ax, references: list[dict]) -> list[float]:
    """Outside figures as labelled horizontal lines (no cost of ours to place them at); their ys."""
    ys = []
    for ref in references:
        y = 100 * ref["mean"]["I-AUROC"]
        ax.axhline(y, ls="--", color="black", lw=0.8)
        ax.annotate(
            f"{ref['label']}: {y:.1f}",
            (0.01, y),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            xytext=(0, 3),
            textcoords="offset points",
        )
        ys.append(y)
    return ys


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--out", default="docs", help="folder for the PNGs (default: docs)")
    p.add_argument(
        "--interference",
        default=str(RESULTS / "interference_stpm.json"),
        help="bench accuracy JSON (per-class and unified)",
    )
    p.add_argument(
        "--leaderboard", default=str(RESULTS / "leaderboard.json"), help="bench leaderboard JSON"
    )
    p.add_argument(
        "--run",
        default=None,
        help="run folder for the heatmap grid (default: the demo's small model)",
    )
    p.add_argument(
        "--data", default=None, help="test data for the heatmap grid (default: the run's data_root)"
    )
    p.add_argument(
        "--only", nargs="+", choices=["interference", "heatmaps", "leaderboard"], default=None
    )
    return p


def main(args) -> int:
    from .resolve import resolve_run

    out = Path(args.out)
    jobs = {
        "interference": (
            lambda: interference_figure(args.interference, out / "interference.png"),
            args.interference,
            "python -m unistad_edu bench accuracy --method stpm --json " + args.interference,
        ),
        "leaderboard": (
            lambda: leaderboard_figure(args.leaderboard, out / "leaderboard.png"),
            args.leaderboard,
            "python -m unistad_edu bench leaderboard --entry LABEL RUN ... --json "
            + args.leaderboard,
        ),
        "heatmaps": (
            lambda: heatmap_grid_figure(
                resolve_run(args.run), out / "heatmaps.png", data=args.data
            ),
            None,
            "",
        ),
    }
    failed = []
    for name in args.only or list(jobs):
        render, needs, how = jobs[name]
        if needs is not None and not Path(needs).is_file():
            print(f"error: {name}: {needs} not found -- write it with `{how}`", file=sys.stderr)
            failed.append(name)
            continue
        print(f"{name}: wrote {render()}")
    return 1 if failed else 0
