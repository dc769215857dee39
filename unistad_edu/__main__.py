"""unistad-edu's command line: ``python -m unistad_edu COMMAND`` (or the ``unistad-edu`` console script).

Commands: data (make the synthetic set, download MVTec AD / VisA), train, eval, predict, export (ONNX /
OpenVINO), bench (speed and accuracy benchmarks), figures (the README figures), demo (the Gradio app),
book (the executed lessons as a static HTML site).
``COMMAND --help`` shows each command's options with their defaults. Documents: README.md, docs/benchmarks.md, docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .layout import METRICS_FILE, PREDICTIONS_DIR, SETTING_FILE
from .options import (
    finite_float,
    nonnegative_int,
    picked,
    positive_float,
    positive_int,
    thread_count,
)
from .options import image_size as image_size_type
from .protocols import ACCURACY_PROTOCOLS


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Help that shows every option's default (unless it is None or already named) and keeps line breaks."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """A parser whose help, and its subcommands', is formatted by :class:`_Help`."""

    def __init__(self, *args, formatter_class=_Help, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _compute_options(p: argparse.ArgumentParser) -> None:
    """``--threads`` and ``--precision``: on every subcommand that computes."""
    p.add_argument(
        "--threads",
        type=thread_count,
        default=None,
        help="torch threads (default: the cores this process may use); give each of two jobs side by "
        "side its share, e.g. --threads 1 on a 2-core machine",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="auto: bf16 only on a CPU with native bf16 where a one-time micro-benchmark of the teacher "
        "shows it faster (cached per machine), else fp32; CUDA: fp16 autocast",
    )


def _seed_option(q: argparse.ArgumentParser, help_text: str | None = None) -> None:
    """``--seed``: a whole number >= 0, default 0."""
    q.add_argument("--seed", type=nonnegative_int, default=0, help=help_text)


def _set_option(q: argparse.ArgumentParser, help_text: str) -> None:
    """``--set FIELD=VALUE``, repeatable: config changes, gathered in ``args.overrides``."""
    q.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help=help_text,
    )


def _entry_option(q: argparse.ArgumentParser, metavar: str, help_text: str) -> None:
    """``--entry``: a trained run, repeated per method (``bench leaderboard``, ``bench export``)."""
    q.add_argument(
        "--entry", action="append", nargs="+", default=[], metavar=metavar, help=help_text
    )


def _n_images_option(q: argparse.ArgumentParser, shown_default: int) -> None:
    """``--n-images``: test images a speed benchmark times (None: the benchmark's own number)."""
    q.add_argument(
        "--n-images",
        type=positive_int,
        default=None,
        help=f"test images timed (default {shown_default})",
    )


def _method_listing() -> str:
    try:
        from .methods import METHODS
    except ImportError:  # no PyTorch (serving an export): nothing to train with
        return "(PyTorch is not installed: install unistad-edu with it to train)"
    return "; ".join(
        f"{name} (presets: {', '.join(sorted(cls.presets))})"
        for name, cls in sorted(METHODS.items())
    )


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="python -m unistad_edu", description=__doc__)
    p.add_argument("--version", action="version", version=f"unistad-edu {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_data_parser, _train_parser, _eval_parser, _predict_parser):
        add(sub)
    bench = _bench_parser(sub)
    _export_parser(sub)
    _bench_export_parser(bench)
    _bench_curve_parser(bench)
    from .figures import add_arguments as add_figure_arguments

    add_figure_arguments(
        sub.add_parser(
            "figures",
            help="render the README figures (interference, heatmap grid, "
            "leaderboard) into docs/ from benchmark results",
        )
    )

    from .demo.logic import add_demo_arguments

    dm = sub.add_parser(
        "demo",
        help="Gradio demo over a run (default: a small model trained once on the synthetic "
        "set); binds 127.0.0.1",
    )
    add_demo_arguments(dm)
    _compute_options(dm)
    _book_parser(sub)
    return p


def _book_parser(sub) -> None:
    """``book``: the executed lessons (saved by the pytest/nbmake run) rendered to a static HTML site."""
    bk = sub.add_parser("book", help="render the executed lessons to a static HTML site (offline)")
    bk.add_argument(
        "--executed",
        type=Path,
        default=None,
        help="executed lessons (default: where the test run saves them, $UNISTAD_EXECUTED_DIR or "
        "the repo's build/executed)",
    )
    bk.add_argument("--out", type=Path, default=Path("build/book"), help="the book's folder")
    bk.add_argument("--lessons", type=Path, default=None, help="lessons (default: the repo's)")


def _data_parser(sub) -> None:
    """``data``: the synthetic set, a validation set, MVTec AD and VisA downloads."""
    d = sub.add_parser("data", help="make or fetch datasets")
    dsub = d.add_subparsers(dest="dataset", required=True)
    syn = dsub.add_parser(
        "synthetic", help="write the offline synthetic multi-class set (MVTec layout)"
    )
    syn.add_argument("--out", required=True)
    _seed_option(syn)
    syn.add_argument(
        "--size",
        type=image_size_type,
        default=None,
        help="image side in pixels (default: the set's)",
    )
    syn.add_argument(
        "--n-train", type=positive_int, default=None, help="normal training images per category"
    )
    syn.add_argument(
        "--n-test-good", type=positive_int, default=None, help="normal test images per category"
    )
    syn.add_argument(
        "--n-test-defect",
        type=positive_int,
        default=None,
        help="defective test images per category and defect kind",
    )
    syn.add_argument(
        "--categories", nargs="+", default=None, help="which products (default: all of them)"
    )
    syn.add_argument("--force", action="store_true", help="regenerate an existing folder")
    syn.add_argument(
        "--baseline",
        action="store_true",
        help="also print each category's I-AUROC of a trivial baseline (distance to the mean image)",
    )
    val = dsub.add_parser(
        "validation",
        help="a validation set from training images only: held-out normals and the same images "
        "with synthetic defects (exact masks), to choose presets without the test set",
    )
    val.add_argument(
        "--data", required=True, help="an MVTec-layout folder (only its train/good images are read)"
    )
    val.add_argument("--out", required=True)
    val.add_argument("--size", type=image_size_type, default=256, help="image side in pixels")
    _seed_option(val, "the held-out split and the defects")
    val.add_argument(
        "--force", action="store_true", help="replace an existing folder made another way"
    )
    from .download import add_arguments as add_download_arguments

    add_download_arguments(
        dsub.add_parser("mvtec", help="download MVTec AD (checksums, resume, atomic install)"),
        "mvtec",
    )
    add_download_arguments(
        dsub.add_parser(
            "visa", help="download VisA and convert it to MVTec layout", formatter_class=_Help
        ),
        "visa",
    )


def _train_parser(sub) -> None:
    """``train``: one model for every category (or one per category)."""
    t = sub.add_parser(
        "train",
        help="train a method (unified: one model for all categories)",
        description="Train one model on the normal images of every category (or one per category).\n\n"
        "methods: " + _method_listing(),
        epilog="example:\n  python -m unistad_edu train --method stpm --data ../shared/datasets --out runs/stpm\n"
        "  python -m unistad_edu eval --run runs/stpm",
    )
    t.add_argument("--method", default="stpm", help="which method (listed above)")
    t.add_argument(
        "--data",
        default=None,
        help="folder with categories at any depth (default: the synthetic set)",
    )
    t.add_argument(
        "--categories", type=_csv, default=None, help="comma-separated subset (default: all)"
    )
    t.add_argument("--setting", choices=["unified", "per-class"], default="unified")
    t.add_argument("--preset", default="cpu", help="the method's preset (listed above)")
    t.add_argument("--epochs", type=positive_int, default=None, help="default: the preset's")
    t.add_argument("--batch-size", type=positive_int, default=None, help="default: the preset's")
    t.add_argument("--lr", type=positive_float, default=None, help="default: the preset's")
    t.add_argument("--image-size", type=image_size_type, default=None, help="default: the preset's")
    t.add_argument(
        "--max-minutes",
        type=positive_float,
        default=None,
        help="time budget per run (per category in per-class): the run stops after the epoch in "
        "which the budget runs out",
    )
    t.add_argument(
        "--min-steps",
        type=positive_int,
        default=None,
        help="train each model at least this many optimiser steps (adds epochs on small categories)",
    )
    t.add_argument("--teacher", default=None, help="timm backbone name (default: the preset's)")
    _set_option(t, "any field of the method's config, e.g. --set jitter=false --set hidden_dim=256")
    t.add_argument(
        "--teacher-weights", default="auto", help="'auto', a local weights file, or 'none' (random)"
    )
    _seed_option(
        t,
        "seeds the data order, the held-out split and the model's own randomness (initial weights, "
        "coreset)",
    )
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    t.add_argument("--cache-dir", default=None, help="disk feature cache (default: in memory)")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --out (refused if its "
        "saved method, teacher, image size, data or precision differ)",
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run --out holds (its model, metrics and "
        "predictions are deleted first); without it a folder holding a run is refused",
    )
    t.add_argument("--no-progress", action="store_true")
    t.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="after calibrating the threshold on the held-out normal images, rebuild from all training "
        "images (default: only for a memory bank calibrated with --calibration global: per-category "
        "thresholds must come from the bank that is served; never for gradient training)",
    )
    t.add_argument(
        "--calibration",
        choices=["auto", "per-category", "clusters", "global"],
        default="auto",
        help="verdicts: route each image by its teacher embedding to its category (per-category; for "
        "one folder of mixed products: clusters) and use that category's threshold; global = one "
        "threshold for all; auto = per-category for several category folders, else clusters",
    )
    t.add_argument(
        "--tail",
        choices=["lognormal", "normal", "empirical", "gpd", "shared"],
        default="lognormal",
        help="the model of each category's held-out normal scores its threshold comes from",
    )
    t.add_argument("--out", required=True, help="run folder")
    _compute_options(t)


def _eval_parser(sub) -> None:
    """``eval``: per-category metrics of a trained run."""
    e = sub.add_parser("eval", help="per-category metrics of a trained run")
    e.add_argument("--run", required=True)
    e.add_argument("--data", default=None, help="default: the data the run was trained on")
    e.add_argument(
        "--json", default=None, help="where to write metrics.json (default: RUN/metrics.json)"
    )
    _set_option(e, "test-time config change, e.g. --set refine=false or --set combine=sum")
    e.add_argument(
        "--image-only",
        action="store_true",
        help="image-level metrics only: for a test set whose defect images have no pixel masks",
    )
    e.add_argument("--no-progress", action="store_true")
    _compute_options(e)


def _predict_parser(sub) -> None:
    """``predict``: scores, verdicts and heatmap PNGs for images."""
    from .export_runtime import BACKENDS

    pr = sub.add_parser(
        "predict",
        help="score images: score, verdict and heatmap PNGs",
        epilog="example:\n  python -m unistad_edu predict --run runs/quickstart a.png b.png\n"
        "  python -m unistad_edu predict --run runs/quickstart/export-onnx a.png",
    )
    pr.add_argument(
        "--run", required=True, help="a run folder, or an export folder (served without PyTorch)"
    )
    pr.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="for an export folder: its runtime (auto: onnxruntime for ONNX, OpenVINO for OpenVINO IR)",
    )
    pr.add_argument("images", nargs="+")
    pr.add_argument(
        "--out", default=None, help="folder for heatmap PNGs (default: RUN/predictions)"
    )
    pr.add_argument(
        "--threshold", type=finite_float, default=None, help="override the calibrated threshold"
    )
    pr.add_argument(
        "--scale",
        choices=["fixed", "image"],
        default="fixed",
        help="heatmap colours: fixed = 0 to the threshold (as the demo); image = each map's own range",
    )
    _compute_options(pr)


def _bench_parser(sub):
    """``bench``: one subcommand per benchmark; returns the function that adds one (``bench export`` is added after the ``export`` command, whose help it follows)."""
    b = sub.add_parser(
        "bench",
        help="speed and accuracy benchmarks (ratios against a baseline measured in the same run)",
    )
    bsub = b.add_subparsers(dest="what", required=True, metavar="BENCH")

    def bench_parser(name, help_text, image_size=True, speed=True):
        q = bsub.add_parser(name, help=help_text, description=help_text)
        q.add_argument("--json", default=None, help="also write the result as JSON here")
        q.add_argument(
            "--markdown",
            default=None,
            help="append a section to this Markdown file (docs/benchmarks.md)",
        )
        if image_size:
            q.add_argument("--image-size", type=image_size_type, default=256)
        if speed:
            q.add_argument("--batch-size", type=positive_int, default=16)
            q.add_argument(
                "--repeats",
                type=positive_int,
                default=3,
                help="interleaved timing rounds (median reported)",
            )
        _compute_options(q)
        return q

    bench_parser(
        "teacher", "teacher images/s, fp32 vs channels_last + bf16; feature-cache hits vs a forward"
    )
    bp = bench_parser(
        "precision",
        "fp32 vs bf16 on this CPU: teacher forward and one training step per method "
        "family, and what --precision auto decides",
    )
    bp.set_defaults(batch_size=8)
    bp.add_argument(
        "--methods",
        type=_csv,
        default=None,
        help="comma-separated (default: stpm,rd,uniad,dual_student)",
    )
    bp.add_argument(
        "--data",
        default=None,
        help="also train a small STPM run here and compare fp32 with bf16 scores",
    )
    bt = bench_parser(
        "train",
        "engine training images/s vs a bare loop (or cached features vs teacher every step)",
    )
    bt.add_argument("--method", default="stpm")
    bt.add_argument("--data", default=None)
    bt.add_argument(
        "--compare",
        choices=["bare", "cache"],
        default="bare",
        help="engine vs a bare loop, or cached features vs the teacher on every step",
    )
    bi = bench_parser(
        "infer", "engine scoring images/s vs a teacher-only forward and a bare model loop"
    )
    bi.add_argument("--method", default="stpm")
    bi.add_argument("--data", default=None)
    _n_images_option(bi, 64)
    ba = bench_parser(
        "accuracy",
        "train unified and per-class, evaluate both: cross-class interference",
        image_size=False,
        speed=False,
    )
    ba.add_argument("--method", default="stpm")
    ba.add_argument("--data", default=None)
    ba.add_argument(
        "--epochs", type=positive_int, default=None, help="epochs per run (default: the preset's)"
    )
    ba.add_argument("--preset", default="cpu", help="method preset")
    ba.add_argument("--out-dir", default="runs/bench_accuracy", help="where the runs go")
    ba.add_argument(
        "--protocol",
        choices=list(ACCURACY_PROTOCOLS),
        default="equal-steps-per-category",
        help="; ".join(f"{k}: {v}" for k, v in ACCURACY_PROTOCOLS.items()),
    )
    ba.add_argument(
        "--seeds",
        type=nonnegative_int,
        nargs="+",
        default=[0],
        help="train every setting once per seed; the tables then hold the mean and std over the seeds",
    )
    ba.add_argument(
        "--reuse", action="store_true", help="reuse runs that already have metrics.json"
    )
    bl = bench_parser(
        "leaderboard",
        "every method's accuracy, train time, stored state and inference speed",
        image_size=False,
    )
    bl.set_defaults(batch_size=8)
    _entry_option(
        bl,
        "LABEL RUN [METRICS_JSON]",
        "a trained run (repeat per method); its eval JSON, else RUN/metrics.json (evaluated when "
        "missing)",
    )
    bl.add_argument("--data", default=None)
    _n_images_option(bl, 32)
    bl.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="JSON",
        help="an outside reference row shown above the table (metrics only), e.g. "
        "docs/results/reference_anomalib27_patchcore.json",
    )

    bc = bench_parser(
        "calibration",
        "which tail model sets each category's threshold: leave-one-out on runs' "
        "held-out normal scores, and on known score shapes",
        image_size=False,
        speed=False,
    )
    bc.add_argument("--run", action="append", required=True, help="a trained run (repeat)")
    bc.add_argument("--quantile", type=float, default=0.99)
    bc.add_argument(
        "--trials", type=positive_int, default=1000, help="simulated calibration sets per cell"
    )
    bc.add_argument(
        "--test",
        action="store_true",
        help="then score each run's test set once and judge it by every rule (to report, not to choose)",
    )
    bc.add_argument(
        "--data", default=None, help="the test data (default: the data each run was trained on)"
    )
    return bench_parser


def _bench_curve_parser(bench_parser) -> None:
    """``bench curve``: one category's AUROC against the number of categories trained with it."""
    q = bench_parser(
        "curve",
        "the interference curve: a probe category's test AUROC as more categories are trained "
        "with it, the same optimiser steps per category, over seeds (lesson 13)",
        speed=False,
    )
    q.add_argument("--data", default=None, help="categories in MVTec layout (default: found)")
    q.add_argument("--probe", default=None, help="the category tested (default: the first)")
    q.add_argument(
        "--methods",
        type=_csv,
        default=["stpm", "unistad", "memory_bank"],
        help="comma-separated methods, each at its --preset (default: stpm,unistad,memory_bank)",
    )
    q.add_argument("--preset", default="cpu", help="method preset")
    q.add_argument("--ks", type=positive_int, nargs="+", default=[1, 2, 3, 5, 7, 9])
    q.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1, 2])
    q.add_argument("--n-train", type=positive_int, default=None, help="per category (default: all)")
    q.add_argument("--batch-size", type=positive_int, default=16)
    q.add_argument("--steps-per-category", type=positive_int, default=300)
    q.add_argument(
        "--work",
        default=None,
        help="folder for the synthetic categories (default: a temporary one)",
    )


def _export_parser(sub) -> None:
    """``export``: ONNX / OpenVINO, parity-checked against the PyTorch model."""
    from .export_runtime import EXPORTERS

    ex = sub.add_parser(
        "export",
        help="export a run to ONNX or OpenVINO (one graph: image -> map and score), "
        "parity-checked against the PyTorch model",
        epilog="example:\n  python -m unistad_edu export --run runs/quickstart --format onnx\n"
        "  python -m unistad_edu predict --run runs/quickstart/export-onnx a.png",
    )
    ex.add_argument("--run", required=True, help="a trained run folder")
    ex.add_argument(
        "--format",
        dest="fmt",
        choices=["onnx", "openvino"],
        default="onnx",
        help="onnx: one .onnx file (served by onnxruntime or OpenVINO); openvino: OpenVINO IR "
        "(model.xml + model.bin)",
    )
    ex.add_argument("--out", default=None, help="export folder (default: RUN/export-FORMAT)")
    ex.add_argument("--opset", type=positive_int, default=18, help="ONNX opset")
    ex.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default="auto",
        help="PyTorch's ONNX exporter: auto = TorchScript (fast), dynamo where it fails",
    )
    ex.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    ex.add_argument("--threads", type=thread_count, default=None, help="torch threads")


def _bench_export_parser(bench_parser) -> None:
    """``bench export``: parity and speed of the exported graphs."""
    bx = bench_parser(
        "export",
        "export runs to ONNX; parity on real test images and batch-1 / batch-8 speed of "
        "PyTorch eager, onnxruntime and OpenVINO",
        image_size=False,
    )
    bx.set_defaults(batch_size=8)
    _entry_option(bx, "LABEL RUN", "a trained run (repeat per method)")
    bx.add_argument("--data", default=None, help="default: each run's own data folder")
    _n_images_option(bx, 16)
    bx.add_argument(
        "--out-dir", default=None, help="where the exports go (default: a temporary folder)"
    )


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
    if args.dataset == "validation":
        from .validation import make_validation

        out = make_validation(args.data, args.out, size=args.size, seed=args.seed, force=args.force)
        counts = json.loads((out / "VALIDATION.json").read_text())["counts"]
        print(
            f"validation set ready at {out}: "
            + ", ".join(
                f"{c} {v['train']} train / {v['held_out']} held out" for c, v in counts.items()
            )
            + f"\nnext: python -m unistad_edu train --data {out} ... && python -m unistad_edu eval --run RUN"
        )
        return 0
    from .synthetic import CATEGORIES, make_synthetic, trivial_baseline

    unknown = sorted(set(args.categories or ()) - set(CATEGORIES))
    if unknown:
        raise ValueError(
            f"--categories: unknown synthetic products {unknown}; choose from {', '.join(CATEGORIES)}"
        )
    fields = ("size", "n_train", "n_test_good", "n_test_defect")
    overrides = {k: getattr(args, k) for k in fields if getattr(args, k) is not None}
    if args.categories:
        overrides["categories"] = tuple(args.categories)
    out = make_synthetic(Path(args.out), seed=args.seed, force=args.force, **overrides)
    print(f"synthetic set ready at {out}")
    if args.baseline:
        aurocs = trivial_baseline(out)
        for cat, auroc in aurocs.items():
            print(f"{cat:10s} {auroc:.3f}  (I-AUROC, trivial baseline)")
        print(f"{'mean':10s} {sum(aurocs.values()) / len(aurocs):.3f}")
    return 0


def cmd_train(args) -> int:
    from .data import MVTecDataset
    from .teacher import load_teacher

    mcfg = _checked_method_config(args)
    root = _data_root(args.data)
    train = MVTecDataset(root, "train", categories=args.categories, image_size=mcfg.image_size)
    teacher = load_teacher(
        mcfg.teacher, weights=_teacher_weights(args.teacher_weights), layers=mcfg.teacher_layers
    )
    tcfg = _train_config(args)
    out = Path(args.out)
    extra = {"data_root": str(root.resolve()), "preset": args.preset}
    say = _rank0_say()
    say(
        f"training {args.method} ({args.preset} preset, {args.setting}) on {len(train)} normal "
        f"images of {len(train.categories)} categories: {', '.join(train.categories)}",
        flush=True,
    )
    _fit_setting(args, mcfg, teacher, train, tcfg, out, extra, say)
    say(f"next: python -m unistad_edu eval --run {out}", flush=True)
    return 0


def _train_overrides(args) -> dict:
    """The method settings ``train`` asks for: --seed, the named options, then --set (it wins)."""
    from .methods import seed_overrides

    overrides = {
        k: v
        for k, v in (
            ("epochs", args.epochs),
            ("batch_size", args.batch_size),
            ("lr", args.lr),
            ("image_size", args.image_size),
            ("teacher", args.teacher),
        )
        if v is not None
    }
    # --seed seeds the model too (its initial weights / coreset), unless --set names a seed field itself
    return {
        **seed_overrides(args.method, args.seed),
        **overrides,
        **_parse_overrides(args.overrides),
    }


def _checked_method_config(args):
    """The method's config for ``train``: method, settings and device checked before data work."""
    from .methods import make_config, method_class
    from .options import check_device, check_overrides

    overrides = _train_overrides(args)
    # unknown method: refused here, before data work
    check_overrides(method_class(args.method).Config, overrides)
    # unknown preset / field: refused before data work
    mcfg = make_config(args.method, args.preset, **overrides)
    check_device(args.device)
    return mcfg


def _train_config(args):
    """The engine's :class:`~unistad_edu.engine.TrainConfig` from ``train``'s options."""
    from .engine import TrainConfig

    return TrainConfig(
        max_minutes=args.max_minutes,
        min_steps=args.min_steps,
        seed=args.seed,
        device=args.device,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
        precision=args.precision,
        refit=args.refit,
        calibration=args.calibration,
        tail=args.tail,
    )


def _rank0_say():
    """``print`` on rank 0 (under torchrun only rank 0 talks), a silent function elsewhere."""
    return print if int(os.environ.get("RANK", "0")) == 0 else (lambda *a, **k: None)


def _fit_setting(args, mcfg, teacher, train, tcfg, out: Path, extra: dict, say) -> None:
    """Train one unified model, or one model per category, into ``out`` as ``--setting`` says."""
    from .engine import fit, fit_per_class, result_line
    from .methods import build_model

    def build():
        return build_model(args.method, teacher, cfg=mcfg)

    if args.setting == "unified":
        res = fit(
            build(),
            train,
            tcfg,
            out=out,
            resume=args.resume,
            overwrite=args.overwrite,
            extra_config={**extra, "setting": "unified"},
        )
        say(result_line(res, out), flush=True)
    else:  # one model per category, each with --min-steps / the preset's epochs (no equal-steps rule here)
        fit_per_class(
            build,
            train,
            tcfg,
            equal_steps=False,
            out=out,
            resume=args.resume,
            overwrite=args.overwrite,
            extra_config=extra,
            log=lambda line: say(line, flush=True),
        )


def cmd_eval(args) -> int:
    import contextlib

    from . import files, runs
    from .metrics import save_metrics
    from .report import format_table

    run = Path(args.run)
    out = Path(args.json) if args.json else run / METRICS_FILE
    if out.is_dir() and not out.is_symlink():  # --json onto a folder: the usual file name inside it
        out = out / METRICS_FILE
    files.check_replaceable(out)
    inside = run.is_dir() and run.resolve() in out.resolve().parents
    # writing into the run folder: its one-writer lock, so no training replaces the model meanwhile
    with files.folder_lock(run, "run folder") if inside else contextlib.nullcontext():
        before = runs.save_ids(run)
        table = _evaluate_run(args, run)
        if runs.save_ids(run) != before:
            raise runs.StaleMetrics(
                f"the run in {run} was replaced while it was evaluated: nothing written; run "
                f"eval again"
            )
        table["save_id"] = before  # which save these metrics describe (readers compare it)
        save_metrics(table, out)
    if args.overrides:
        print(
            f"note: --set {' '.join(args.overrides)} changes the scores, and the run's threshold was calibrated "
            f"without it: no false-alarm rate is reported",
            file=sys.stderr,
        )
    print(format_table(table))
    _print_eval_details(table, out)
    return 0


def _evaluate_run(args, run: Path) -> dict:
    """The metrics table of the run folder ``run`` (unified, or per-class sub-run by sub-run) on its test set."""
    if (run / SETTING_FILE).is_file():  # per-class: each sub-run on its own category
        return _evaluate_per_class(args, run)
    return _evaluate_unified(args, run)


def _evaluate_per_class(args, run: Path) -> dict:
    """The metrics table of a per-class run folder: each sub-run on its own category's test set."""
    from .checkpoint import load_checkpoint
    from .data import MVTecDataset
    from .inference import evaluate
    from .metrics import metrics_table
    from .runs import read_setting

    setting = read_setting(run)
    root = Path(args.data or setting["data_root"])
    per_cat, alarms = {}, {}
    intervals = {"level": 0.95, "resamples": 2000}
    for cat in setting["categories"]:
        model = load_checkpoint(run / cat, overrides=_parse_overrides(args.overrides))
        test = MVTecDataset(
            root,
            "test",
            categories=[cat],
            image_size=model.cfg.image_size,
            check_masks=not args.image_only,
        )
        one = evaluate(
            model,
            test,
            progress=not args.no_progress,
            precision=args.precision,
            pixel=not args.image_only,
        )
        per_cat[cat] = one["categories"][cat]
        intervals.update({k: v for k, v in one.get("intervals", {}).items() if k == cat})
        if "false_alarms" in one:  # each category at its own model's threshold
            alarms[cat] = one["false_alarms"]["categories"][cat]
    table = metrics_table(per_cat, setting="per-class", method=setting["method"])
    table["intervals"] = intervals
    if alarms:
        from .metrics import combine_false_alarms

        table["false_alarms"] = combine_false_alarms(alarms)
    return table


def _evaluate_unified(args, run: Path) -> dict:
    """The metrics table of a run folder holding one model, on the test set of the categories it was
    trained on."""
    from .checkpoint import load_checkpoint, read_config
    from .inference import evaluate
    from .resolve import test_set

    cfg = read_config(run)
    model = load_checkpoint(run, overrides=_parse_overrides(args.overrides))
    test = test_set(
        cfg,
        model.cfg.image_size,
        data=args.data or (None if cfg.get("data_root") else _data_root(None)),
        check_masks=not args.image_only,
    )
    return evaluate(
        model,
        test,
        progress=not args.no_progress,
        setting=cfg.get("setting", "unified"),
        precision=args.precision,
        pixel=not args.image_only,
    )


def _print_eval_details(table: dict, out: Path) -> None:
    from .report import format_by_defect, format_intervals, format_verdicts

    if line := format_intervals(table):
        print(line)
    for line in format_verdicts(table):
        print(line)
    if "noisy_or" in table:
        nor = table["noisy_or"]
        print(
            f"Noisy-OR branches, median probability on the {nor['normal_images']} normal test images: "
            + ", ".join(f"{k} {v:.3f}" for k, v in nor["median_p_normal"].items() if v is not None)
            + " (an OR of detectors: each near 0 on normal images); on the defective ones: "
            + ", ".join(f"{k} {v:.3f}" for k, v in nor["median_p_defect"].items() if v is not None)
        )
    if any(
        "logical" in row or len(row["kinds"]) > 1 for row in table.get("by_defect", {}).values()
    ):
        print(
            "I-AUROC by defect kind (logical: a part missing or added, which local methods are not expected "
            "to catch):"
        )
        print(format_by_defect(table))
    print(f"metrics written to {out}")


def cmd_predict(args) -> int:
    import contextlib

    from . import files
    from .export_runtime import is_export

    run, out = Path(args.run), Path(args.out) if args.out else Path(args.run) / PREDICTIONS_DIR
    inside = (
        run.is_dir()
        and not is_export(run)
        and (out.resolve() == run.resolve() or run.resolve() in out.resolve().parents)
    )
    # writing into the run folder: its one-writer lock, so no training replaces the model meanwhile
    with files.folder_lock(run, "run folder") if inside else contextlib.nullcontext():
        return _predict(args, out)


def _predict(args, out: Path) -> int:
    from .export_runtime import ExportedModel, is_export
    from .report import unlike_training
    from .viz import save_prediction

    if is_export(args.run):  # onnxruntime / OpenVINO: no PyTorch in the loop
        model = ExportedModel(args.run, backend=args.backend, threads=args.threads)
        results = model.predict(args.images, threshold=args.threshold)
        print(f"served by {model.backend}", file=sys.stderr)
    else:
        from .checkpoint import load_checkpoint
        from .inference import predict

        model = load_checkpoint(args.run)
        results = predict(model, args.images, threshold=args.threshold, precision=args.precision)
    if os.path.lexists(out) and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file: choose a folder for the heatmaps")
    out.mkdir(parents=True, exist_ok=True)
    validation = model.run_config.get("validation") or {}
    for i, (path, r) in enumerate(zip(args.images, results)):
        png = out / f"{i:03d}_{Path(path).stem}_heatmap.png"
        verdict = (
            "no threshold"
            if r["anomalous"] is None
            else ("ANOMALOUS" if r["anomalous"] else "normal")
        )
        # routed runs say it from the embedding; a run with one global threshold from the score alone
        far = (
            r.get("notice")
            if r.get("category") is not None
            else unlike_training(r["score"], validation)
        )
        save_prediction(
            r["image"],
            r["anomaly_map"],
            png,
            r["score"],
            r["threshold"],
            verdict=verdict,
            scale=args.scale,
            title=Path(path).name + (" - unlike anything this model was trained on" if far else ""),
        )
        record = {
            "image": str(path),
            "category": r.get("category"),
            "score": r["score"],
            "z": r.get("z"),
            "threshold": r["threshold"],
            "verdict": verdict,
            "heatmap": str(png),
        }
        if far:
            record["notice"] = far
        print(json.dumps(record))
    return 0


def cmd_export(args) -> int:
    from .export import export_run

    export_run(args.run, args.fmt, **picked(args, "out", "opset", "exporter", "overwrite"))
    return 0


def cmd_bench(args) -> int:
    from . import bench

    return bench.main(args)


def cmd_demo(args) -> int:
    from .demo.serving import run

    return run(args)


def cmd_figures(args) -> int:
    from .figures import main

    return main(args)


def cmd_book(args) -> int:
    from .book import LESSONS, build_book, executed_dir

    index = build_book(args.executed or executed_dir(), args.out, args.lessons or LESSONS)
    n = len(list(index.parent.glob("[0-9][0-9]_*.html")))
    print(f"{index} ({n} lesson{'s' * (n != 1)})")
    return 0


def main(argv=None) -> int:
    from .data import DataError  # these three import no torch: serving an export runs without it
    from .errors import CheckpointError, TeacherWeightsError
    from .files import FolderBusy

    args = build_parser().parse_args(argv)
    if not _threads_first(args):
        return 2
    handlers = {
        "data": cmd_data,
        "train": cmd_train,
        "eval": cmd_eval,
        "predict": cmd_predict,
        "export": cmd_export,
        "bench": cmd_bench,
        "demo": cmd_demo,
        "figures": cmd_figures,
        "book": cmd_book,
    }
    try:
        return handlers[args.command](args)
    except (
        DataError,
        CheckpointError,
        TeacherWeightsError,
        FileExistsError,
        FloatingPointError,
        ValueError,
        FolderBusy,
    ) as err:
        print(f"error: {err}", file=sys.stderr)  # expected: bad data, checkpoint, option value, ...
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(
            "error: out of memory: try a smaller --batch-size or --image-size, or fewer images",
            file=sys.stderr,
        )
        return 3
    except OSError as err:  # full disk, read-only folder, a file where a folder should be, ...
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(f"error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except Exception as err:  # unexpected: a short message here, the traceback in a log file
        log = _crash_log(err)
        print(
            f"error: unexpected {type(err).__name__}: {err}"
            + (f" (details in {log})" if log else ""),
            file=sys.stderr,
        )
        return 1


def _threads_first(args) -> bool:
    """Apply ``--threads`` first (inter-op threads are only settable early); False if refused."""
    from .export_runtime import is_export  # imports no torch

    serving_export = (
        args.command in ("predict", "demo") and args.run is not None and is_export(args.run)
    )
    if not hasattr(args, "threads") or serving_export:
        return True
    from .precision import configure_threads

    try:
        configure_threads(args.threads)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return False
    return True


def _crash_log(err: BaseException) -> Path | None:
    """Write the traceback of an unexpected error to ``$UNISTAD_CACHE/logs/`` and return the file."""
    import time
    import traceback

    from .files import cache_root

    root = cache_root() / "logs"
    try:
        root.mkdir(parents=True, exist_ok=True)
        path = root / f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text(
            f"python -m unistad_edu {' '.join(sys.argv[1:])}\n\n"
            + "".join(traceback.format_exception(err))
        )
        return path
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
