"""Command line: ``python -m unistad_edu {data,train,eval,predict,bench,demo}`` (see DESIGN.md's CLI contract)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m unistad_edu", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", help="make or fetch datasets")
    dsub = d.add_subparsers(dest="dataset", required=True)
    syn = dsub.add_parser("synthetic", help="write the offline synthetic multi-class set (MVTec layout)")
    syn.add_argument("--out", required=True)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--size", type=int, default=None, help="image side in pixels")
    syn.add_argument("--n-train", type=int, default=None)
    syn.add_argument("--force", action="store_true", help="regenerate an existing folder")
    from .download import add_arguments as add_download_arguments
    add_download_arguments(dsub.add_parser("mvtec", help="download MVTec AD (checksums, resume, atomic install)"),
                           "mvtec")
    add_download_arguments(dsub.add_parser("visa", help="download VisA and convert it to MVTec layout"), "visa")

    t = sub.add_parser("train", help="train a method (unified: one model for all categories)")
    t.add_argument("--method", default="stpm")
    t.add_argument("--data", default=None, help="folder with categories at any depth (default: synthetic set)")
    t.add_argument("--categories", type=_csv, default=None, help="comma-separated subset")
    t.add_argument("--setting", choices=["unified", "per-class"], default="unified")
    t.add_argument("--preset", default="cpu")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--image-size", type=int, default=None)
    t.add_argument("--max-minutes", type=float, default=None, help="time budget per run (per category in per-class)")
    t.add_argument("--min-steps", type=int, default=None,
                   help="train each model at least this many optimiser steps (adds epochs on small categories)")
    t.add_argument("--teacher", default=None, help="timm backbone name (default: the preset's)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="any field of the method's config, e.g. --set jitter=false --set hidden_dim=256")
    t.add_argument("--teacher-weights", default="auto", help="'auto', a local weights file, or 'none' (random)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--cache-dir", default=None, help="disk feature cache (default: in memory)")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--out", required=True, help="run folder")

    e = sub.add_parser("eval", help="per-category metrics of a trained run")
    e.add_argument("--run", required=True)
    e.add_argument("--data", default=None, help="default: the data the run was trained on")
    e.add_argument("--json", default=None, help="where to write metrics.json (default: RUN/metrics.json)")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="test-time config change, e.g. --set refine=false or --set combine=sum")
    e.add_argument("--no-progress", action="store_true")

    pr = sub.add_parser("predict", help="score images: score, verdict and heatmap overlay PNGs")
    pr.add_argument("--run", required=True)
    pr.add_argument("images", nargs="+")
    pr.add_argument("--out", default=None, help="folder for heatmap overlays (default: RUN/predictions)")
    pr.add_argument("--threshold", type=float, default=None, help="override the calibrated threshold")

    b = sub.add_parser("bench", help="speed benchmarks (ratios against a baseline measured in the same run)")
    b.add_argument("what", choices=["teacher", "train", "infer", "accuracy", "leaderboard"])
    b.add_argument("--method", default="stpm")
    b.add_argument("--json", default=None)
    b.add_argument("--data", default=None)
    b.add_argument("--image-size", type=int, default=256)
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--compare", choices=["bare", "cache"], default="bare",
                   help="train: engine vs a bare loop, or cached features vs the teacher on every step")
    b.add_argument("--epochs", type=int, default=None, help="accuracy: epochs per run (default: the preset's)")
    b.add_argument("--preset", default="cpu", help="accuracy: method preset")
    b.add_argument("--out-dir", default="runs/bench_accuracy", help="accuracy: where the runs go")
    b.add_argument("--protocol", choices=["equal-steps", "equal-epochs"], default="equal-steps",
                   help="accuracy: per-class models get as many optimiser steps as the unified one, or as many epochs")
    b.add_argument("--reuse", action="store_true", help="accuracy: reuse runs that already have metrics.json")
    b.add_argument("--markdown", default=None, help="append a section to this Markdown file (docs/benchmarks.md)")
    b.add_argument("--entry", action="append", nargs="+", default=[], metavar="LABEL RUN [METRICS_JSON]",
                   help="leaderboard: a trained run (repeat per method); its eval JSON, else RUN/metrics.json "
                        "(evaluated when missing)")
    b.add_argument("--n-images", type=int, default=None, help="infer/leaderboard: test images timed")

    from .figures import add_arguments as add_figure_arguments
    add_figure_arguments(sub.add_parser("figures", help="render the README figures (interference, heatmap grid, "
                                                        "leaderboard) into docs/ from benchmark results"))

    from .demo_support import add_demo_arguments
    add_demo_arguments(sub.add_parser("demo", help="Gradio demo over a run (default: a small model trained once "
                                                   "on the synthetic set); binds 127.0.0.1"))
    return p


def _parse_overrides(items: list[str]) -> dict:
    """["jitter=false", "hidden_dim=256"] -> {"jitter": False, "hidden_dim": 256} (JSON values, else strings)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set takes FIELD=VALUE, not {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _teacher_weights(value: str):
    return None if value.lower() == "none" else value


def _data_root(arg) -> Path:
    from .data import default_data_root
    if arg:
        return Path(arg)
    root = default_data_root()
    print(f"no --data given: using the synthetic multi-class set at {root}", flush=True)
    return root


def cmd_data(args) -> int:
    if args.dataset in ("mvtec", "visa"):
        from .download import run
        return run(args, args.dataset)
    from .synthetic import make_synthetic
    overrides = {k: v for k, v in (("size", args.size), ("n_train", args.n_train)) if v is not None}
    out = make_synthetic(Path(args.out), seed=args.seed, force=args.force, **overrides)
    print(f"synthetic set ready at {out}")
    return 0


def cmd_train(args) -> int:
    from .data import MVTecDataset
    from .engine import TrainConfig, fit
    from .methods import build_model, make_config
    from .teacher import load_teacher

    root = _data_root(args.data)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr),
                                   ("image_size", args.image_size), ("teacher", args.teacher)) if v is not None}
    overrides.update(_parse_overrides(args.overrides))
    mcfg = make_config(args.method, args.preset, **overrides)
    train = MVTecDataset(root, "train", categories=args.categories, image_size=mcfg.image_size)
    teacher = load_teacher(mcfg.teacher, weights=_teacher_weights(args.teacher_weights), layers=mcfg.teacher_layers)
    tcfg = TrainConfig(max_minutes=args.max_minutes, min_steps=args.min_steps, seed=args.seed, device=args.device, cache_dir=args.cache_dir,
                       progress=not args.no_progress)
    out = Path(args.out)
    extra = {"data_root": str(root.resolve()), "preset": args.preset}
    say = print if int(os.environ.get("RANK", "0")) == 0 else (lambda *a, **k: None)  # torchrun: rank 0 talks
    say(f"training {args.method} ({args.preset} preset, {args.setting}) on {len(train)} normal images of "
          f"{len(train.categories)} categories: {', '.join(train.categories)}", flush=True)
    if args.setting == "unified":
        jobs = [(out, train)]
    else:
        jobs = [(out / cat, ds) for cat, ds in train.by_category().items()]
        out.mkdir(parents=True, exist_ok=True)
        (out / "setting.json").write_text(json.dumps({"setting": "per-class", "method": args.method,
                                                       "categories": train.categories, **extra}, indent=2))
    for run, ds in jobs:
        if len(jobs) > 1:
            say(f"--- {run.name}: {len(ds)} images", flush=True)
        model = build_model(args.method, teacher, cfg=mcfg)
        res = fit(model, ds, tcfg, out=run, resume=args.resume,
                  extra_config={**extra, "setting": args.setting})
        if res.already_complete:
            say(f"{run} is already complete ({res.epochs_done} epochs): nothing to do", flush=True)
        else:
            state = "stopped early (budget)" if res.stopped_early else "done"
            say(f"{state}: {res.epochs_done} epochs in {res.seconds:.0f} s, threshold {res.threshold}; "
                  f"checkpoint in {run}", flush=True)
    say(f"next: python -m unistad_edu eval --run {out}", flush=True)
    return 0


def cmd_eval(args) -> int:
    from .checkpoint import read_config
    from .data import MVTecDataset
    from .engine import evaluate
    from .metrics import format_table, metrics_table, save_metrics
    from .checkpoint import load_checkpoint

    run = Path(args.run)
    setting_file = run / "setting.json"
    if setting_file.is_file():  # per-class: each sub-run on its own category
        setting = json.loads(setting_file.read_text())
        root = Path(args.data or setting["data_root"])
        per_cat, method = {}, setting["method"]
        for cat in setting["categories"]:
            model = load_checkpoint(run / cat, overrides=_parse_overrides(args.overrides))
            test = MVTecDataset(root, "test", categories=[cat], image_size=model.cfg.image_size)
            per_cat[cat] = evaluate(model, test, progress=not args.no_progress)["categories"][cat]
        table = metrics_table(per_cat, setting="per-class", method=method)
    else:
        cfg = read_config(run)
        model = load_checkpoint(run, overrides=_parse_overrides(args.overrides))
        root = Path(args.data or cfg.get("data_root") or _data_root(None))
        cats = cfg.get("train_categories")
        from .data import discover_categories
        available = discover_categories(root)
        cats = [c for c in cats if c in available] if cats else None
        test = MVTecDataset(root, "test", categories=cats or None, image_size=model.cfg.image_size)
        table = evaluate(model, test, progress=not args.no_progress, setting=cfg.get("setting", "unified"))
    out = Path(args.json) if args.json else run / "metrics.json"
    save_metrics(table, out)
    print(format_table(table))
    print(f"metrics written to {out}")
    return 0


def cmd_predict(args) -> int:
    from .checkpoint import load_checkpoint
    from .engine import predict
    from .viz import save_overlay

    model = load_checkpoint(args.run)
    out = Path(args.out) if args.out else Path(args.run) / "predictions"
    out.mkdir(parents=True, exist_ok=True)
    results = predict(model, args.images, threshold=args.threshold)
    thr = args.threshold if args.threshold is not None else getattr(model, "threshold", None)
    for i, (path, r) in enumerate(zip(args.images, results)):
        png = out / f"{i:03d}_{Path(path).stem}_heatmap.png"
        save_overlay(r["image"], r["anomaly_map"], png, title=f"score {r['score']:.4g}")
        verdict = "no threshold" if r["anomalous"] is None else ("ANOMALOUS" if r["anomalous"] else "normal")
        print(json.dumps({"image": str(path), "score": r["score"], "threshold": thr, "verdict": verdict,
                          "heatmap": str(png)}))
    return 0


def cmd_bench(args) -> int:
    from . import bench
    return bench.main(args)


def cmd_demo(args) -> int:
    from .demo_app import run
    return run(args)


def cmd_figures(args) -> int:
    from .figures import main
    return main(args)


def main(argv=None) -> int:
    from .checkpoint import CheckpointError
    from .data import DataError
    from .teacher import TeacherWeightsError

    args = build_parser().parse_args(argv)
    handlers = {"data": cmd_data, "train": cmd_train, "eval": cmd_eval, "predict": cmd_predict, "bench": cmd_bench,
                "demo": cmd_demo, "figures": cmd_figures}
    try:
        return handlers[args.command](args)
    except (DataError, CheckpointError, TeacherWeightsError, FileExistsError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # bad option values (unknown method, preset, ...)
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
