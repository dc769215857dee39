"""The leaderboard: every method, unified, on the same data -- accuracy next to what it costs.

``collect`` gathers, for trained run folders (one per method), the per-category metrics of ``eval`` (its
JSON; evaluated here when missing), the training wall time and peak RSS recorded in the checkpoint, the
stored state (``model.safetensors``: student weights, or a memory bank's patches) and the inference speed
through the one scoring path, timed in the same process against a teacher-only forward on the same images
(a ratio, because this machine is shared and noisy). ``python -m unistad_edu bench leaderboard`` writes it
as JSON (``docs/results/leaderboard.json``); lesson 12 and ``python -m unistad_edu figures`` read that file
instead of retraining every method.

Several runs under one label (``--entry UniSTAD RUN_seed0 --entry UniSTAD RUN_seed1 ...``) are the seeds of one
method: :func:`aggregate` turns them into one row -- every metric the mean over the seeds, its sample standard
deviation under ``std``, the runs under ``seeds`` -- and the speed is timed once per label (the seeds are the same
network).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .files import read_json_object
from .layout import CONFIG_FILE, METRICS_FILE, MODEL_FILE
from .report import HEADLINE as COLUMNS  # the headline metrics: one list for every table


def parse_entry(items: Sequence[str]) -> dict:
    """``[LABEL, RUN]`` or ``[LABEL, RUN, METRICS_JSON]`` (from ``--entry``)."""
    if len(items) not in (2, 3):
        raise ValueError(f"--entry takes LABEL RUN [METRICS_JSON], not {list(items)}")
    run = Path(items[1])
    if not (run / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"--entry {items[0]}: {run} is not a run folder (no config.json)")
    metrics = Path(items[2]) if len(items) == 3 else run / METRICS_FILE
    return {"label": items[0], "run": run, "metrics": metrics}


def collect(
    entries: Sequence[dict],
    data=None,
    n_images: int = 32,
    batch_size: int = 8,
    repeats: int = 3,
    progress: bool = True,
    precision="auto",
) -> dict:
    """Measure every entry (see the module docstring). ``n_images``: test images timed (evenly over the
    categories); the same images for every method."""
    from .checkpoint import load_checkpoint, read_config

    rows, models = [], {}
    for e in entries:
        model = load_checkpoint(e["run"]).eval()
        model.set_teacher_precision(precision)
        rows.append(_row(e, model, data, progress))
        models.setdefault(e["label"], model)  # seeds of one method: the same network, timed once
    root = Path(data or read_config(entries[0]["run"]).get("data_root"))
    speeds, n = _inference_speeds(models, root, n_images, batch_size, repeats)
    for row in rows:
        row["infer_img_s"] = speeds[row["label"]]
        row["infer_ms_per_img"] = 1000.0 / speeds[row["label"]]
        row["infer_vs_teacher_only"] = speeds[row["label"]] / speeds["teacher_only"]
    return {
        "rows": aggregate(rows),
        "teacher_only_img_s": speeds["teacher_only"],
        "timed_images": n,
        "timing_batch_size": batch_size,
        "data": str(root),
    }


def _row(entry: dict, model, data, progress: bool) -> dict:
    """One entry's row: its metrics (evaluated first, as ``eval --run`` does, when it has none), training time,
    memory and stored state."""
    from .inference import evaluate
    from .metrics import load_metrics, save_metrics
    from .resolve import test_set
    from .runs import check_metrics_save

    run_config = model.run_config
    if not entry["metrics"].is_file():
        test = test_set(run_config, model.cfg.image_size, data=data)
        save_metrics(evaluate(model, test, progress=progress), entry["metrics"])
    metrics = load_metrics(entry["metrics"])
    check_metrics_save(metrics, entry["run"], entry["metrics"])
    return {
        "label": entry["label"],
        "method": run_config["method"],
        "run": str(entry["run"]),
        "preset": run_config.get("preset"),
        "image_size": run_config["image_size"],
        "epochs": run_config.get("epochs_done"),
        "train_images": run_config.get("train_images"),
        "train_s": run_config.get("train_seconds"),
        "peak_rss_mb": run_config.get("peak_rss_mb"),
        "state_mib": (entry["run"] / MODEL_FILE).stat().st_size / 2**20,
        "mean": metrics["mean"],
        "categories": metrics["categories"],
        "false_alarm_rate": (metrics.get("false_alarms") or {}).get("all"),
        "false_alarms_by_category": _rates_by_category(metrics.get("false_alarms")),
        "false_alarm_target": run_config.get("false_alarm_target"),
    }


def _rates_by_category(far: dict | None) -> dict:
    """{category: share of its normal test images flagged} from ``metrics.json``'s ``false_alarms``."""
    return {c: v.get("rate") for c, v in ((far or {}).get("categories") or {}).items()}


def _inference_speeds(models: dict, root: Path, n_images: int, batch_size: int, repeats: int):
    """({label: images/s, "teacher_only": images/s}, images timed): the same test images for every model,
    interleaved, with a teacher-only forward as the baseline of this run."""
    import torch

    from .data import MVTecDataset, discover_categories
    from .inference import score_dataset
    from .teacher import load_teacher
    from .timing import interleaved

    sizes = {m.cfg.image_size for m in models.values()}
    per_cat = max(1, n_images // len(discover_categories(root)))
    timed = {s: MVTecDataset(root, "test", image_size=s).evenly(per_cat) for s in sizes}
    for ds in timed.values():
        [ds[i] for i in range(len(ds))]  # decode once: every loop reads the images from memory
    ref = timed[max(sizes)]
    teacher = load_teacher()
    ref_batches = [
        torch.stack([ref[j]["image"] for j in range(i, min(i + batch_size, len(ref)))])
        for i in range(0, len(ref), batch_size)
    ]

    def teacher_only():
        with torch.no_grad():
            for b in ref_batches:
                teacher(b)

    fns = {"teacher_only": teacher_only}
    for label, model in models.items():
        ds = timed[model.cfg.image_size]
        fns[label] = lambda m=model, d=ds: score_dataset(
            m, d, cache=None, batch_size=batch_size, keep_maps=False
        )
    return interleaved(fns, len(ref), repeats), len(ref)


def _mean_std(values) -> tuple[float | None, float | None]:
    from .report import mean_std

    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and np.isnan(x))]
    return mean_std(v) if v else (None, None)


def over_seeds(tables: Sequence[dict]) -> dict:
    """Metric tables of one setting, one per seed (each ``{"mean": {metric: v}, "categories": {cat: {metric:
    v}}}``) -> ``{"mean", "categories"}`` of their means and ``std`` = {"mean": {metric: std}, "categories": {cat:
    {metric: std}}}, the sample standard deviations (missing or NaN values left out)."""
    cols = sorted({c for t in tables for c in t["mean"]})
    cats = sorted({c for t in tables for c in t["categories"]})
    mean, std = {}, {"mean": {}, "categories": {c: {} for c in cats}}
    for col in cols:
        mean[col], std["mean"][col] = _mean_std(t["mean"].get(col) for t in tables)
    categories = {c: {} for c in cats}
    for c in cats:
        for col in sorted({k for t in tables for k in t["categories"].get(c, {})}):
            categories[c][col], std["categories"][c][col] = _mean_std(
                t["categories"].get(c, {}).get(col) for t in tables
            )
    return {"mean": mean, "categories": categories, "std": std}


def aggregate(rows: Sequence[dict]) -> list[dict]:
    """Rows that share a label (one per seed) -> one row each, in first-seen order: ``mean`` and ``categories``
    hold the mean over the seeds of every metric, ``std`` = {"mean": {metric: std}, "categories": {cat: {metric:
    std}}} their sample standard deviations (:func:`over_seeds`), ``seeds`` the runs; train time, stored state
    and false-alarm rates (over all images and per category) are means, peak RSS the largest. A label with one run keeps its numbers, with ``seeds`` =
    [its run] and no ``std``."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["label"], []).append(r)
    out = []
    for label, group in groups.items():
        first = group[0]
        if len(group) == 1:
            out.append({**first, "seeds": [first["run"]]})
            continue
        table = over_seeds(group)
        rss = [g.get("peak_rss_mb") for g in group if g.get("peak_rss_mb") is not None]
        out.append(
            {
                **first,
                **table,
                "seeds": [g["run"] for g in group],
                "per_seed": {col: [g["mean"].get(col) for g in group] for col in table["mean"]},
                "train_s": _mean_std(g.get("train_s") for g in group)[0],
                "peak_rss_mb": max(rss) if rss else None,
                "state_mib": _mean_std(g["state_mib"] for g in group)[0],
                "false_alarm_rate": _mean_std(g.get("false_alarm_rate") for g in group)[0],
                "false_alarms_by_category": {
                    c: _mean_std((g.get("false_alarms_by_category") or {}).get(c) for g in group)[0]
                    for c in sorted(
                        {c for g in group for c in g.get("false_alarms_by_category") or {}}
                    )
                },
            }
        )
    return out


def paired(result: dict, against: str, column: str = "I-AUROC") -> list[tuple[str, object]]:
    """Every other method's paired comparison with the row labelled ``against`` over seeds, on the mean
    ``column`` (:func:`uncertainty.paired_seeds`, method minus ``against``): the seeds are paired in the order
    their ``--entry`` options were given (give them in seed order). Rows with another number of seeds, or one
    seed, are left out."""
    from .uncertainty import paired_seeds

    rows = {r["label"]: r for r in result["rows"]}
    if against not in rows or column not in (rows[against].get("per_seed") or {}):
        return []
    base = rows[against]["per_seed"][column]
    out = []
    for label, r in rows.items():
        mine = (r.get("per_seed") or {}).get(column)
        if label == against or mine is None or len(mine) != len(base) or len(base) < 2:
            continue
        if any(v is None for v in mine + base):
            continue
        out.append((label, paired_seeds([100 * v for v in mine], [100 * v for v in base])))
    return out


def load(path) -> dict:
    """A leaderboard JSON written by ``bench leaderboard``, with a clear error if it is something else."""
    path = Path(path)
    fix = "give a file written by `python -m unistad_edu bench leaderboard --json`"
    result = read_json_object(path, "a leaderboard file", fix)
    rows = result.get("rows")
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and "mean" in r and "categories" in r for r in rows
    ):
        raise ValueError(
            f"{path} is not a leaderboard file (written by `python -m unistad_edu bench leaderboard`)"
        )
    return result


def load_reference(path) -> dict:
    """An outside reference row (``docs/results/reference_*.json``: ``label``, ``source``, ``categories`` =
    {category: {metric: value in [0, 1]}}), its ``mean`` computed here over its categories. It has no run, no
    cost and no seeds: figures someone measured elsewhere, shown above the table for comparison."""
    path = Path(path)
    ref = read_json_object(
        path, "a reference file", "see docs/results/reference_*.json for the layout"
    )
    cats = ref.get("categories")
    if (
        not isinstance(cats, dict)
        or not cats
        or "label" not in ref
        or not all(
            isinstance(m, dict) and all(isinstance(v, (int, float)) for v in m.values())
            for m in cats.values()
        )
    ):
        raise ValueError(
            f"{path} is not a reference file (needs 'label' and 'categories': {{category: "
            f"{{metric: value}}}})"
        )
    cols = sorted({c for m in cats.values() for c in m})
    mean = {c: float(np.mean([m[c] for m in cats.values() if c in m])) for c in cols}
    return {**ref, "mean": mean}


def table(result: dict, columns: Sequence[str] = COLUMNS) -> list[dict]:
    """One row per method, best mean I-AUROC first: metrics x100 and the costs; outside references
    (``result["references"]``) first, with their metrics only."""
    refs = [
        {
            "method": ref["label"],
            **{
                c: round(100 * ref["mean"][c], 1) for c in columns if ref["mean"].get(c) is not None
            },
        }
        for ref in result.get("references", [])
    ]
    rows = []
    several = any(len(r.get("seeds") or []) > 1 for r in result["rows"])
    for r in sorted(result["rows"], key=lambda r: -r["mean"]["I-AUROC"]):
        row = {"method": r["label"]}
        if several:  # seeds: the count, and each metric's std beside it
            row["seeds"] = len(r.get("seeds") or [r["run"]])
        for c in columns:
            if r["mean"].get(c) is None:
                continue
            row[c] = round(100 * r["mean"][c], 1)
            if several:
                sd = (r.get("std") or {}).get("mean", {}).get(c)
                row[f"{c} ±"] = None if sd is None else round(100 * sd, 1)
        far = r.get("false_alarm_rate")
        rss = r.get("peak_rss_mb")
        row.update(
            {
                "train s": r.get("train_s"),
                "peak RSS MiB": None if rss is None else round(rss),
                "state MiB": round(r["state_mib"], 2),
                "false alarms %": None if far is None else round(100 * far, 1),
                "worst product FA %": _worst(r.get("false_alarms_by_category")),
                "ms/img": round(r["infer_ms_per_img"], 1),
                "speed vs teacher": round(r["infer_vs_teacher_only"], 2),
            }
        )
        rows.append(row)
    return refs + rows


def _worst(by_category: dict | None) -> float | None:
    """The highest per-category false-alarm rate x100 (NaN and missing left out); None when there is none."""
    v = [x for x in (by_category or {}).values() if x is not None and not np.isnan(x)]
    return round(100 * max(v), 1) if v else None


def false_alarm_table(result: dict) -> list[dict]:
    """One row per method (the table's order): the share of each category's normal test images flagged at the
    run's threshold, x100 (mean over seeds). One threshold for all products hides where its alarms fall."""
    cats = sorted({c for r in result["rows"] for c in r.get("false_alarms_by_category") or {}})
    out = []
    for r in sorted(result["rows"], key=lambda r: -r["mean"]["I-AUROC"]):
        by = r.get("false_alarms_by_category") or {}
        out.append(
            {
                "method": r["label"],
                **{c: None if by.get(c) is None else round(100 * by[c], 1) for c in cats},
            }
        )
    return out


def per_category(result: dict, column: str = "I-AUROC") -> tuple[list[str], dict[str, list[float]]]:
    """(categories, {method label: [value x100 per category]}) for a grouped bar plot."""
    cats = sorted({c for r in result["rows"] for c in r["categories"]})
    return cats, {
        r["label"]: [100 * r["categories"].get(c, {}).get(column, np.nan) for c in cats]
        for r in result["rows"]
    }


def markdown(result: dict, command: str = "") -> str:
    from .report import markdown_table

    head = [
        f"- timed: {result['timed_images']} test images, batches of {result['timing_batch_size']}, "
        f"teacher-only forward {result['teacher_only_img_s']:.1f} img/s in the same run; data {result['data']}"
    ]
    if command:
        head.append(f"- command: `{command}`")
    fmt = {
        "train s": "{:.0f}",
        "peak RSS MiB": "{:.0f}",
        "state MiB": "{:.2f}",
        "ms/img": "{:.1f}",
        "speed vs teacher": "{:.2f}x",
    }
    rows = [
        {k: (fmt.get(k, "{:.1f}").format(v) if isinstance(v, float) else v) for k, v in r.items()}
        for r in table(result)
    ]
    for ref in result.get("references", []):
        head.append(f"- reference row *{ref['label']}*: {ref.get('source', 'outside figures')}")
    methods = rows[len(result.get("references", [])) :]  # the columns in the methods' order
    columns = list(dict.fromkeys(k for r in methods or rows for k in r))
    text = "\n".join(head) + "\n\n" + markdown_table(rows, columns) + "\n"
    if fa := [r for r in false_alarm_table(result) if len(r) > 1]:
        text += (
            "\nFalse alarms per product (% of its normal test images flagged at the run's threshold, mean over "
            "seeds):\n\n" + markdown_table(fa, list(fa[0]), digits=1) + "\n"
        )
    best = max(result["rows"], key=lambda r: r["mean"]["I-AUROC"])["label"]
    if pairs := paired(result, best):
        text += (
            f"\nEach method against the best, *{best}*, paired by seed (mean I-AUROC x100, method minus "
            f"{best}; 95 % t interval of the mean difference; paired t-test and exact sign-flip p-values -- "
            f"with three seeds the sign-flip p cannot go below 0.25):\n\n"
            + "\n".join(
                f"- {label}: {c.mean:+.1f} [{c.low:+.1f}, {c.high:+.1f}], p = {c.p_t:.3f} (t), "
                f"{c.p_sign_flip:.2f} (sign flip)"
                for label, c in pairs
            )
            + "\n"
        )
    return text


def find_results(name: str = "leaderboard.json") -> Path | None:
    """``docs/results/<name>`` of this checkout, looked for from the working directory upwards (a lesson runs
    in ``notebooks/``); None when there is none (e.g. an installed package without the repository)."""
    here = Path.cwd().resolve()
    for parent in [here, *here.parents]:
        cand = parent / "docs" / "results" / name
        if cand.is_file():
            return cand
    return None
