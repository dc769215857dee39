"""The verdict table of docs/benchmarks.md ("Calibration"): runs' metrics.json files, grouped by a label, as
Markdown -- per label the pooled and worst-category false alarms, mean F1, the largest recall drop against one
global threshold, routing accuracy, the pooled and per-category-mean I-AUROC; one row per calibration.

    python scripts/calibration_table.py "bank, 5 categories" runs/b0/metrics.json runs/b1/metrics.json -- \
        "UniSTAD, 5 categories" runs/u0/metrics.json ...
"""

from __future__ import annotations

import json
import sys

from unistad_edu.report import mean_std


def figures(far: dict, glob: dict | None) -> dict:
    cats = far["categories"]
    worst = max(cats, key=lambda c: cats[c]["rate"])
    out = {
        "pooled FA": far["all"],
        "worst FA": cats[worst]["rate"],
        "worst": worst,
        "mean F1": far["mean_f1"],
        "routing": far.get("routing_accuracy"),
    }
    if glob is not None:
        drops = {c: glob["categories"][c]["recall"] - cats[c]["recall"] for c in cats}
        out["largest recall drop"] = max(drops.values())
        out["drop in"] = max(drops, key=drops.get)
    return out


def pct(values) -> str:
    m, s = mean_std([100 * v for v in values])
    return f"{m:.1f}" + (f" ± {s:.1f}" if len(values) > 1 else "")


def rows(label: str, paths: list[str]) -> list[str]:
    tables = [json.load(open(p)) for p in paths]
    per = [figures(t["false_alarms"], t.get("false_alarms_global")) for t in tables]
    glob = [figures(t["false_alarms_global"], None) for t in tables]
    auroc = pct([t["mean"]["I-AUROC"] for t in tables])
    pooled = pct([t["pooled"]["I-AUROC"] for t in tables])
    worst_names = lambda fs: ", ".join(sorted({f["worst"] for f in fs}))  # noqa: E731
    out = [
        f"| {label} | {len(tables)} | one global threshold | {pct([f['pooled FA'] for f in glob])} | "
        f"{pct([f['worst FA'] for f in glob])} ({worst_names(glob)}) | {pct([f['mean F1'] for f in glob])} | "
        f" | | {pooled} | {auroc} |",
        f"| {label} | {len(tables)} | routed, per category | {pct([f['pooled FA'] for f in per])} | "
        f"{pct([f['worst FA'] for f in per])} ({worst_names(per)}) | {pct([f['mean F1'] for f in per])} | "
        f"{pct([f['largest recall drop'] for f in per])} "
        f"({', '.join(sorted({f['drop in'] for f in per}))}) | {pct([f['routing'] for f in per])} | | |",
    ]
    return out


def main(argv: list[str]) -> None:
    print(
        "| runs | seeds | calibration | pooled false alarms % | worst category's false alarms % | mean F1 % | "
        "largest recall drop vs global, points | routing accuracy % | pooled I-AUROC | mean I-AUROC |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    groups, cur = [], []
    for a in argv + ["--"]:
        if a == "--":
            if cur:
                groups.append(cur)
            cur = []
        else:
            cur.append(a)
    for g in groups:
        for line in rows(g[0], g[1:]):
            print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
