"""Benchmarks behind ``python -m unistad_edu bench``. This machine is shared and noisy, so every figure is a
ratio against a baseline measured in the same run, interleaved (A, B, A, B, ...), and the median of the
repeats is reported.

* ``teacher``: teacher images/s at 256 px, plain fp32 vs channels_last + bf16; a feature-cache hit (memory
  and disk) vs a teacher forward.
* ``precision``: the CPU's capability, fp32 vs bf16 images/s for the teacher forward and one training step of
  each method family, and what ``precision="auto"`` decides on this machine.
* ``train``: engine ``fit`` images/s vs a bare loop doing the same step, for one method.
* ``infer``: engine scoring images/s (teacher + method + shared scoring path) vs a teacher-only forward.
* ``export``: each run exported to ONNX; parity on real test images and batch-1 / batch-8 speed of PyTorch eager,
  onnxruntime and OpenVINO, side by side.
* ``accuracy``: train a method unified and per-class on the same data (each in its own process, so wall
  time and peak memory are its own), evaluate both, and report the per-category tables side by side with
  the unified-minus-per-class gap: cross-class interference, measured.
"""

from __future__ import annotations

import json
import shlex
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import torch

from .layout import CONFIG_FILE, METRICS_FILE
from .options import picked
from .protocols import ACCURACY_PROTOCOLS
from .report import HEADLINE
from .timing import interleaved


def machine() -> str:
    """One line naming the machine: CPU model, its kind (ATen capability, native bf16 or not), cores, GPU."""
    import os

    from .precision import cpu_capability, cpu_model, native_bf16

    native, _ = native_bf16()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu_model()} (capability {cpu_capability()}, {'native' if native else 'no native'} bf16), "
        f"{os.cpu_count()} cores, {gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def bench_teacher(image_size=256, batch_size=16, repeats=3) -> dict:
    from .cache import FeatureCache
    from .teacher import Teacher, lite0_package_file, load_teacher

    fast = load_teacher(precision="bf16")
    plain = Teacher(weights=lite0_package_file(), precision="fp32")
    x = torch.rand(batch_size, 3, image_size, image_size)
    with torch.no_grad():
        speeds = interleaved(
            {"fp32": lambda: plain(x), "channels_last_bf16": lambda: fast(x)}, batch_size, repeats
        )
    with tempfile.TemporaryDirectory() as tmp:
        # cache hits need real files: write the batch as PNGs
        from PIL import Image

        paths = []
        for i in range(batch_size):
            p = Path(tmp) / f"{i}.png"
            Image.fromarray((x[i].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(p)
            paths.append(str(p))
        mem = FeatureCache(fast, image_size)
        disk = FeatureCache(fast, image_size, root=Path(tmp) / "cache", fp16=True)
        mem.features(x, paths)
        disk.features(x, paths)
        with torch.no_grad():
            hits = interleaved(
                {
                    "teacher_forward": lambda: fast(x),
                    "cache_hit_memory": lambda: mem.features(x, paths),
                    "cache_hit_disk_fp16": lambda: disk.features(x, paths),
                },
                batch_size,
                repeats,
            )
    return {
        "images_per_s": {**speeds, **hits},
        "ratios": {
            "channels_last_bf16_vs_fp32": speeds["channels_last_bf16"] / speeds["fp32"],
            "cache_hit_memory_vs_forward": hits["cache_hit_memory"] / hits["teacher_forward"],
            "cache_hit_disk_vs_forward": hits["cache_hit_disk_fp16"] / hits["teacher_forward"],
        },
        "setup": {
            "image_size": image_size,
            "batch_size": batch_size,
            "repeats": repeats,
            "teacher": fast.describe(),
        },
    }


@dataclass
class Workload:
    """What bench train and bench infer time: ``method`` on ``n_images`` training images of ``data`` (the
    first data folder found when None; ``n_images`` None: the bench's own number), at ``image_size`` px in
    batches of ``batch_size``, ``repeats`` interleaved timings, at ``precision``."""

    method: str = "stpm"
    data: str | Path | None = None
    image_size: int = 256
    batch_size: int = 16
    n_images: int | None = None
    repeats: int = 3
    precision: str = "auto"

    def images(self, default_n: int):
        """(every k-th training image, up to ``n_images`` or ``default_n`` of them; the data root)."""
        from .data import MVTecDataset, find_data

        root = Path(self.data) if self.data else find_data()[0]
        ds = MVTecDataset(root, "train", image_size=self.image_size)
        n = self.n_images or default_n
        step = max(1, len(ds) // n)
        return ds.subset(list(range(0, len(ds), step))[:n]), root

    def setup(self, root, ds, prec, **extra) -> dict:
        """The ``setup`` record of a speed bench: what was timed, on what, at which precision."""
        return {
            "method": self.method,
            "data": str(root),
            "images": len(ds),
            "image_size": self.image_size,
            "batch_size": self.batch_size,
            "repeats": self.repeats,
            "precision": prec.record(),
            **extra,
        }


def _batches(ds, batch_size: int) -> list[dict]:
    """``ds`` collated into consecutive batches of ``batch_size`` (the last one may be partial)."""
    from .data import collate

    return [
        collate([ds[j] for j in range(i, min(i + batch_size, len(ds)))])
        for i in range(0, len(ds), batch_size)
    ]


def _full_batches(batches: list[dict]) -> list[dict]:
    """The batches an engine epoch trains on: the last partial one is dropped unless it is alone."""
    return batches[:-1] if len(batches) > 1 else batches


def _bare_train_loop(model, batches: list[dict], cache, opt, prec):
    """A timed step: the engine's train step over ``batches`` in a plain loop, cached features."""
    from .engine import train_step
    from .methods.base import Batch

    def bare():
        model.train()
        for b in _full_batches(batches):
            train_step(model, Batch(b["image"], cache.features(b["image"], b["path"])), opt, prec)

    return bare


def _fit_epoch(model, ds, prec, out: str, cache=None):
    """A timed step: one engine ``fit`` epoch over ``ds`` into ``out``, serving teacher features
    from ``cache`` when one is given, else running the teacher on every step."""
    from .engine import TrainConfig, fit

    no_cache = {} if cache is not None else {"cache": False}

    def run():
        fit(
            model,
            ds,
            TrainConfig(epochs=1, holdout_fraction=0.0, progress=False, precision=prec, **no_cache),
            out=out,
            cache=cache,
            overwrite=True,
        )

    return run


def _train_speeds(model, ds, cache, opt, prec, batch_size: int, repeats: int, compare: str):
    """(images/s, ratios) of the engine's ``fit`` against the bare loop, or (``compare="cache"``) of
    the engine with the feature cache against the engine running the teacher on every step."""
    batches = _batches(ds, batch_size)
    n_steps_images = sum(b["image"].shape[0] for b in _full_batches(batches))
    tmp = tempfile.mkdtemp()
    engine = _fit_epoch(model, ds, prec, tmp, cache)
    if compare == "cache":
        uncached = _fit_epoch(model, ds, prec, tmp)
        speeds = interleaved(
            {"teacher_every_step": uncached, "cached_features": engine}, n_steps_images, repeats
        )
        ratios = {
            "cached_vs_teacher_every_step": speeds["cached_features"] / speeds["teacher_every_step"]
        }
    else:
        bare = _bare_train_loop(model, batches, cache, opt, prec)
        speeds = interleaved({"bare_loop": bare, "engine_fit": engine}, n_steps_images, repeats)
        ratios = {"engine_vs_bare": speeds["engine_fit"] / speeds["bare_loop"]}
    return speeds, ratios


def bench_train(work: Workload | None = None, compare: str = "bare") -> dict:
    """Engine fit (one epoch over n_images, cache warm, checkpointing on) vs a bare loop with the same step.
    The engine pays a fixed cost per epoch (checkpoint + resume state written with fsync, data loader set-up);
    256 images per epoch keeps that share close to a real epoch (672 images on the five real categories).
    ``compare="cache"``: instead, engine fit with the feature cache vs engine fit running the teacher on
    every step (what the cache buys a method that only needs teacher features)."""
    from .cache import FeatureCache
    from .engine import make_optimizer
    from .inference import precision_of
    from .methods import build_model
    from .teacher import load_teacher

    work = work or Workload()
    teacher = load_teacher()
    ds, root = work.images(256)
    model = build_model(
        work.method, teacher, image_size=work.image_size, batch_size=work.batch_size
    )
    prec = precision_of(model, work.precision, "cpu")
    cache = FeatureCache(teacher, work.image_size)
    cache.warm(ds, progress=False)
    [ds[i] for i in range(len(ds))]  # decode once: both loops read images from memory
    opt = make_optimizer(model)
    speeds, ratios = _train_speeds(
        model, ds, cache, opt, prec, work.batch_size, work.repeats, compare
    )
    note = "engine includes per-epoch checkpoint + train_state writes and the log"
    return {
        "images_per_s": speeds,
        "ratios": ratios,
        "setup": work.setup(root, ds, prec, note=note),
    }


def _build_untimed(model, root, image_size: int, precision) -> dict:
    """A method that does not train by gradient (e.g. memory_bank), built from all training images
    of ``root`` so that what is timed has its real size: ``{"built_from": ...}``, else ``{}``."""
    if model.trains_by_gradient:
        return {}
    from .data import MVTecDataset
    from .engine import TrainConfig, fit

    res = fit(
        model,
        MVTecDataset(root, "train", image_size=image_size),
        TrainConfig(progress=False, precision=precision),
    )
    model.eval()
    return {"built_from": res.history[0]}


def _infer_loops(teacher, model, ds, prec, batch_size: int) -> dict:
    """The timed steps of bench infer: teacher-only forward, model in a bare loop, the engine."""
    from .inference import score_dataset
    from .methods.base import Batch

    batches = _batches(ds, batch_size)
    cpu = torch.device("cpu")

    def teacher_only():
        with torch.no_grad():
            for b in batches:
                teacher(b["image"])

    def method_bare():
        with torch.no_grad(), prec.autocast(cpu):
            for b in batches:
                model.score(Batch(b["image"]))

    def engine():
        score_dataset(model, ds, cache=None, batch_size=batch_size, keep_maps=True, precision=prec)

    return {"teacher_only": teacher_only, "method_bare": method_bare, "engine_predict": engine}


def bench_infer(work: Workload | None = None) -> dict:
    """Engine scoring (no cache: teacher + method + scoring path) vs teacher-only forward on the same images,
    and vs the same model called in a bare loop (``method_bare``: no data loader, no numpy conversion), which
    separates what the engine costs from what the method itself costs on top of its teacher. A method that does
    not train by gradient (``memory_bank``) is first built, untimed, from all training images of ``data``, so
    its bank has its real size (recorded under ``setup.built_from``)."""
    from .inference import precision_of
    from .methods import build_model
    from .teacher import load_teacher

    work = work or Workload()
    teacher = load_teacher()
    ds, root = work.images(64)
    [ds[i] for i in range(len(ds))]  # decode once: every loop reads images from memory
    model = build_model(work.method, teacher, image_size=work.image_size).eval()
    # an empty memory bank would time nothing: build the real one first
    built = _build_untimed(model, root, work.image_size, work.precision)
    prec = precision_of(model, work.precision, "cpu")
    loops = _infer_loops(teacher, model, ds, prec, work.batch_size)
    speeds = interleaved(loops, len(ds), work.repeats)
    return {
        "images_per_s": speeds,
        "ratios": {
            "engine_vs_teacher_only": speeds["engine_predict"] / speeds["teacher_only"],
            "method_bare_vs_teacher_only": speeds["method_bare"] / speeds["teacher_only"],
            "engine_vs_method_bare": speeds["engine_predict"] / speeds["method_bare"],
        },
        "setup": work.setup(root, ds, prec, **built),
    }


def precision_agreement(
    data=None, method="stpm", image_size=128, epochs=3, n_train=40, categories=None
) -> dict:
    """Do fp32 and bf16 give the same answers? One small run (``n_train`` images per category, ``epochs``) trained
    in fp32 scores the test images in fp32 and in bf16 (Spearman rank correlation of the image scores, max
    relative difference); a second run trained in bf16 from the same seed is compared with the first too."""
    from scipy.stats import spearmanr

    from .data import MVTecDataset, find_data
    from .engine import TrainConfig, fit
    from .inference import score_dataset
    from .methods import build_model
    from .teacher import load_teacher

    root = Path(data) if data else find_data()[0]
    train = MVTecDataset(root, "train", categories=categories, image_size=image_size).evenly(
        n_train
    )
    test = MVTecDataset(root, "test", categories=categories, image_size=image_size)
    scores = {}
    for trained in ("fp32", "bf16"):
        model = build_model(method, load_teacher(), image_size=image_size, epochs=epochs)
        fit(model, train, TrainConfig(progress=False, precision=trained))
        for scored in ("fp32", "bf16") if trained == "fp32" else ("bf16",):
            scores[f"trained_{trained}_scored_{scored}"] = score_dataset(
                model, test, precision=scored
            )["scores"]
    ref = scores["trained_fp32_scored_fp32"]
    out = {}
    for k, v in scores.items():
        if k != "trained_fp32_scored_fp32":
            out[k] = {
                "spearman_vs_fp32": float(spearmanr(ref, v).statistic),
                "max_rel_diff": float(abs(v - ref).max() / max(abs(ref).max(), 1e-12)),
            }
    return {
        "method": method,
        "data": str(root),
        "categories": train.categories,
        "image_size": image_size,
        "epochs": epochs,
        "train_images": len(train),
        "test_images": len(test),
        "agreement": out,
    }


PRECISION_FAMILIES = {
    "stpm": "feature-pyramid student (STPM)",
    "rd": "reverse-distillation decoder (RD / SNL)",
    "uniad": "transformer reconstruction (UniAD)",
    "dual_student": "two CNN students, one reading pixels (dual students)",
}


def bench_precision(
    image_size=256, batch_size=8, repeats=3, methods=tuple(PRECISION_FAMILIES), agreement_data=None
) -> dict:
    """fp32 vs bf16 on this CPU, in one run: the teacher's forward (plain fp32, fp32 channels_last, bf16
    channels_last) and one training step (forward + backward + optimiser step, teacher features given) of each
    method family, interleaved; plus the capability check and what ``precision="auto"`` decides."""
    from .engine import make_optimizer, train_step
    from .methods import build_model
    from .methods.base import Batch
    from .precision import Precision, cpu_capability, measure, native_bf16, resolve
    from .teacher import load_teacher

    native, why = native_bf16()
    teacher = load_teacher(precision="fp32")
    teacher_rates = measure(teacher, image_size, batch_size=batch_size, repeats=repeats, bf16=True)
    fp32, bf16 = Precision("fp32", False), Precision("bf16", True)
    x = torch.rand(batch_size, 3, image_size, image_size)
    steps = {}
    for method in methods:
        model = build_model(method, teacher, image_size=image_size, batch_size=batch_size)
        with torch.no_grad():
            feats = teacher(x)  # fp32 features, as the cache serves them
        batch = Batch(image=x, features=feats)
        opt = make_optimizer(model)

        def step(prec, model=model, batch=batch, opt=opt):
            def run():
                model.to(memory_format=prec.memory_format)
                model.train()
                train_step(model, batch, opt, prec)

            return run

        rates = interleaved({"fp32": step(fp32), "bf16": step(bf16)}, batch_size, repeats)
        steps[method] = {
            "family": PRECISION_FAMILIES.get(method, method),
            "images_per_s": rates,
            "bf16_vs_fp32": rates["bf16"] / rates["fp32"],
        }
    teacher.precision = "auto"
    auto = resolve("auto", "cpu", teacher, image_size, announce=False)
    best_fp32 = max(teacher_rates["fp32"], teacher_rates["fp32_channels_last"])
    return {
        "capability": cpu_capability(),
        "native_bf16": native,
        "native_reason": why,
        "teacher_images_per_s": teacher_rates,
        "train_step": steps,
        "ratios": {
            "teacher_bf16_vs_best_fp32": teacher_rates["bf16_channels_last"] / best_fp32,
            "teacher_fp32_channels_last_vs_plain": teacher_rates["fp32_channels_last"]
            / teacher_rates["fp32"],
            **{f"{m}_step_bf16_vs_fp32": v["bf16_vs_fp32"] for m, v in steps.items()},
        },
        "auto": auto.record(),
        **({"agreement": precision_agreement(agreement_data)} if agreement_data else {}),
        "setup": {"image_size": image_size, "batch_size": batch_size, "repeats": repeats},
    }


def bench_accuracy(
    method="stpm",
    data=None,
    out_dir="runs/bench_accuracy",
    epochs=None,
    preset="cpu",
    settings=("unified", "per-class"),
    extra_args=(),
    protocol: str = "equal-steps-per-category",
    seeds: Sequence[int] = (0,),
    reuse: bool = False,
) -> dict:
    """Train + eval ``method`` in each setting via the CLI, each in a fresh process, once per seed.

    ``protocol`` (:data:`ACCURACY_PROTOCOLS`): how many optimiser steps a per-class model gets against the
    unified one; the step rules need the unified run first. ``seeds``: several give each setting the mean over
    the seeds (``metrics``, with ``std`` beside it) and the runs of each seed under ``seeds``; the runs go to
    ``out_dir/<method>_<setting>_s<seed>`` (one seed 0: ``out_dir/<method>_<setting>``).
    ``reuse``: a run whose folder already holds ``metrics.json`` is not trained again."""
    from .data import find_data

    if protocol not in ACCURACY_PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(ACCURACY_PROTOCOLS)}, got {protocol!r}")
    if protocol != "equal-epochs" and "per-class" in settings and "unified" not in settings:
        raise ValueError(f"the {protocol} protocol needs the unified setting to count its steps")
    root = Path(data) if data else find_data()[0]
    settings = sorted(settings, key=lambda s: s != "unified")  # the unified run first
    seeds = list(seeds)
    runs = {s: [] for s in settings}
    for seed in seeds:
        tail = "" if seeds == [0] else f"_s{seed}"
        for setting in settings:  # the unified run of this seed comes first (sorted above)
            run = Path(out_dir) / f"{method}_{setting}{tail}"
            unified = runs["unified"][-1] if runs.get("unified") else None
            runs[setting].append(
                _accuracy_run(
                    method,
                    root,
                    setting,
                    preset,
                    run,
                    epochs,
                    extra_args,
                    seed,
                    protocol,
                    unified,
                    reuse,
                )
            )
    return {
        "method": method,
        "data": str(root),
        "preset": preset,
        "epochs": epochs,
        "protocol": protocol,
        "seeds": seeds,
        "settings": {setting: _merged(per_seed) for setting, per_seed in runs.items()},
    }


def _merged(per_seed: list[dict]) -> dict:
    """One setting's result over its seeds: the mean metrics (with ``std``), the mean training time, the
    largest peak memory, and each seed's result under ``seeds``; a single seed's result as it is."""
    from .leaderboard import over_seeds

    if len(per_seed) == 1:
        return per_seed[0]
    return {
        **per_seed[0],
        "train_wall_s": round(float(np.mean([r["train_wall_s"] for r in per_seed])), 1),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in per_seed),
        "metrics": over_seeds([r["metrics"] for r in per_seed]),
        "seeds": per_seed,
    }


def _accuracy_run(
    method, root, setting, preset, run, epochs, extra_args, seed, protocol, unified, reuse
) -> dict:
    """One run of bench accuracy: train (per ``protocol`` against the ``unified`` run's result) and eval."""
    if reuse and (run / METRICS_FILE).is_file():
        return _setting_result(run, _run_configs(run), None, "(reused run)")
    args, min_steps = (*extra_args, "--seed", str(seed)), None
    if setting == "per-class" and protocol == "equal-steps":
        min_steps = unified["optimizer_steps"]
    elif setting == "per-class" and protocol == "equal-steps-per-category":
        k = len(unified["metrics"]["categories"])
        # one epoch at least, and as many whole epochs as reach the unified run's steps / k
        epochs, min_steps = 1, -(-unified["optimizer_steps"] // k)
    cmd = _train_command(method, root, setting, preset, run, args, epochs)
    if min_steps is not None:
        cmd += ["--min-steps", str(min_steps)]
    train_s = _train_and_eval(cmd, run)
    return _setting_result(
        run, _run_configs(run), train_s, " ".join(["python -m unistad_edu", *cmd[3:]])
    )


def _train_command(method, root, setting, preset, run, extra_args, epochs) -> list[str]:
    """The ``train`` command line, in a fresh Python process, for one setting of bench accuracy."""
    import sys

    cmd = [
        sys.executable,
        "-m",
        "unistad_edu",
        "train",
        "--method",
        method,
        "--data",
        str(root),
        "--setting",
        setting,
        "--preset",
        preset,
        "--out",
        str(run),
        "--no-progress",
        *extra_args,
    ]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    return cmd


def _train_and_eval(cmd: list[str], run: Path) -> float:
    """Run the train command ``cmd``, then ``eval`` on its ``run``; the training wall time in s."""
    import subprocess
    import sys

    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    train_s = time.perf_counter() - t0
    subprocess.run(
        [sys.executable, "-m", "unistad_edu", "eval", "--run", str(run), "--no-progress"],
        check=True,
    )
    return train_s


def _run_configs(run: Path) -> list[dict]:
    """Every ``config.json`` under ``run`` (one, or one per category of a per-class run), sorted."""
    return [json.loads(p.read_text()) for p in sorted(run.rglob(CONFIG_FILE))]


def _checked_metrics(run: Path) -> dict:
    """``run``'s ``metrics.json``, refused if it describes another save of the run."""
    from .metrics import load_metrics
    from .runs import check_metrics_save

    table = load_metrics(run / METRICS_FILE)
    check_metrics_save(table, run, run / METRICS_FILE)
    return table


def _setting_result(run: Path, configs: list[dict], train_s: float | None, command: str) -> dict:
    return {
        # wall time of the train command; for a reused run, the sum of its recorded training times
        "train_wall_s": round(
            train_s if train_s is not None else sum(c.get("train_seconds", 0) for c in configs), 1
        ),
        "peak_rss_mb": max(c.get("peak_rss_mb") or 0 for c in configs),
        "metrics": _checked_metrics(run),
        "command": command,
        "optimizer_steps": sum(
            c["epochs_done"] * max(1, c["train_images"] // c["method_config"]["batch_size"])
            for c in configs
        ),
    }


def accuracy_markdown(result: dict, columns=HEADLINE) -> str:
    """Per-category tables of each setting side by side, plus unified - per-class gaps (x100)."""
    st = result["settings"]
    names = list(st)
    cats = sorted(next(iter(st.values()))["metrics"]["categories"])
    head = ["category"] + [f"{n} {c}" for n in names for c in columns]
    gap = "unified" in st and "per-class" in st
    if gap:
        head += [f"gap {c}" for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def val(setting, cat, col, table="metrics"):
        m = st[setting]["metrics"]
        m = m if table == "metrics" else m.get("std") or {"mean": {}, "categories": {}}
        row = m["mean"] if cat == "mean" else m["categories"].get(cat, {})
        v = row.get(col)
        return float("nan") if v is None else 100 * v

    # a cell: the mean, and the std over seeds beside it when there are several
    def cell(setting, cat, col):
        sd = val(setting, cat, col, "std")
        return f"{val(setting, cat, col):.1f}" + ("" if np.isnan(sd) else f" ± {sd:.1f}")

    for cat in cats + ["mean"]:
        cells = [f"**{cat}**" if cat == "mean" else cat]
        cells += [cell(n, cat, c) for n in names for c in columns]
        if gap:
            cells += [f"{val('unified', cat, c) - val('per-class', cat, c):+.1f}" for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for n in names:
        lines.append(
            f"- {n}: train wall time {st[n]['train_wall_s']:.0f} s, peak RSS {st[n]['peak_rss_mb']:.0f} MiB, "
            f"{st[n]['optimizer_steps']} optimiser steps in all; "
            f"`{st[n]['command']}`"
        )
    return "\n".join(lines) + "\n"


def bench_export(
    entries,
    data=None,
    n_images: int = 16,
    batch_size: int = 8,
    repeats: int = 3,
    precision="auto",
    threads: int | None = None,
    out_dir=None,
    log=print,
) -> dict:
    """Export each run (``entries``: ``[{"label", "run"}]``) to ONNX and compare, on the real test images of the
    categories it was trained on, the PyTorch model with the ONNX graph served by onnxruntime and by OpenVINO
    (which reads the same ONNX file; its IR, ``export --format openvino``, is converted from it).

    Parity: every test image, maps and scores, max |Δ| relative to the threshold and verdicts that differ, per
    category. Speed, interleaved on ``n_images`` of those images (evenly spread): batch-1 latency (ms/image, one
    image per call) and batch-``batch_size`` throughput (images/s) of PyTorch eager in fp32 (the exported
    precision), PyTorch eager at ``precision`` (what ``predict`` uses; only if it resolves to another precision),
    onnxruntime and OpenVINO, all at the same thread count; ratios against PyTorch fp32 and against PyTorch at
    ``precision``."""
    from .export import PARITY_TOLERANCE

    threads = threads or torch.get_num_threads()
    out_root = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="bench_export_"))
    rows = []
    for entry in entries:
        row = _export_row(
            entry, data, out_root, threads, n_images, batch_size, repeats, precision, log
        )
        rows.append(row)
        parity, ratios = row["parity"], row["ratios"]
        log(
            f"{row['label']}: parity onnxruntime {parity['onnxruntime']['max_rel']:.2g} / OpenVINO "
            f"{parity['openvino']['max_rel']:.2g} of the threshold; "
            f"batch-1 {ratios['fastest_export']} "
            f"{ratios['fastest_export_vs_pytorch_fp32_batch1']:.2f}x PyTorch fp32"
        )
    return {
        "rows": rows,
        "setup": {
            "n_images_timed": n_images,
            "batch_size": batch_size,
            "repeats": repeats,
            "threads": threads,
            "precision": precision,
            "tolerance": PARITY_TOLERANCE,
            "data": str(data) if data else "each run's own data_root",
        },
    }


def _test_arrays(model, size: int, data) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, S, S, 3) uint8, their categories (N,)): the test set of the categories ``model``
    was trained on."""
    from .data import load_image
    from .resolve import test_set

    test = test_set(model.run_config, size, data)
    arrays = np.stack([load_image(r.path, size, exif_orientation=True) for r in test.records])
    return arrays, np.array([r.category for r in test.records])


def _export_ratios(timings: dict, backends: dict, batch_size: int) -> dict:
    """Speed ratios of a bench export row: the fastest export at batch 1 against PyTorch fp32 and
    against the fastest PyTorch path; and every path at batch ``batch_size`` vs PyTorch fp32."""
    b1, bn = timings["batch1"], timings[f"batch{batch_size}"]
    fastest = max(backends, key=lambda k: b1[k])
    eager_best = max((k for k in b1 if k.startswith("pytorch")), key=lambda k: b1[k])
    return {
        "fastest_export_vs_pytorch_fp32_batch1": b1[fastest] / b1["pytorch_fp32"],
        "fastest_export_vs_fastest_pytorch_batch1": b1[fastest] / b1[eager_best],
        "fastest_export": fastest,
        "fastest_pytorch": eager_best,
        **{
            f"{k}_vs_pytorch_fp32_batch{batch_size}": v / bn["pytorch_fp32"]
            for k, v in bn.items()
            if k != "pytorch_fp32"
        },
    }


def _export_row(
    entry, data, out_root: Path, threads: int, n_images, batch_size, repeats, precision, log
) -> dict:
    """One row of bench export: ``entry``'s run exported to ONNX under ``out_root``, served by
    onnxruntime and OpenVINO; its parity on every test image, its speed on ``n_images`` of them."""
    from .checkpoint import load_checkpoint
    from .export import export_run
    from .export_runtime import ExportedModel

    label, run = entry["label"], Path(entry["run"])
    model = load_checkpoint(run)
    model.set_teacher_precision("fp32")
    size = int(model.cfg.image_size)
    thr = model.threshold
    arrays, cats = _test_arrays(model, size, data)
    t0 = time.perf_counter()
    folder = export_run(
        run, "onnx", out=out_root / label, overwrite=True, images=arrays[:8], log=log
    )
    export_s = time.perf_counter() - t0
    backends = {
        "onnxruntime": ExportedModel(folder, "onnxruntime", threads=threads),
        "openvino": ExportedModel(folder, "openvino", threads=threads),
    }
    parity = _export_parity(model, backends, arrays, cats, batch_size)
    pick = arrays[np.linspace(0, len(arrays) - 1, min(n_images, len(arrays))).astype(int)]
    timings = _export_timings(model, run, backends, pick, batch_size, repeats, precision)
    return {
        "label": label,
        "run": str(run),
        "method": model.run_config["method"],
        "image_size": size,
        "test_images": int(len(arrays)),
        "threshold": thr,
        "export_s": round(export_s, 1),
        "parity": parity,
        "batch1_ms_per_image": {k: 1000.0 / v for k, v in timings["batch1"].items()},
        f"batch{batch_size}_images_per_s": timings[f"batch{batch_size}"],
        "ratios": _export_ratios(timings, backends, batch_size),
    }


def _export_parity(
    model, backends: dict, arrays: np.ndarray, cats: np.ndarray, batch_size: int
) -> dict:
    """{backend: parity on every image, per category too} of the served exports against the PyTorch model."""
    from .export import PARITY_TOLERANCE, compare, torch_scores

    thr = model.threshold
    ref = torch_scores(model, arrays, batch_size=batch_size)
    parity = {}
    for name, served in backends.items():
        got = [
            served.score_arrays(arrays[i : i + batch_size])
            for i in range(0, len(arrays), batch_size)
        ]
        got = (np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got]))
        per_cat = {
            c: compare(
                (ref[0][cats == c], ref[1][cats == c]), (got[0][cats == c], got[1][cats == c]), thr
            )
            for c in dict.fromkeys(cats)
        }
        whole = compare(ref, got, thr)
        parity[name] = {
            **whole,
            "categories": per_cat,
            "within_tolerance": whole["max_rel"] <= PARITY_TOLERANCE,
        }
    return parity


def _export_timings(
    model, run, backends: dict, pick: np.ndarray, batch_size: int, repeats: int, precision
) -> dict:
    """{"batch1" | "batchN": {path: images/s}}: the same images through PyTorch fp32 (the exported graph's
    precision), PyTorch at ``precision`` (when it is another one) and every served export, interleaved."""
    from .checkpoint import load_checkpoint
    from .export import ScoreGraph
    from .inference import precision_of
    from .methods.base import Batch

    xs = torch.from_numpy(pick).permute(0, 3, 1, 2).float() / 255.0  # (n, 3, S, S)
    graph = ScoreGraph(model).eval()
    auto = load_checkpoint(run)
    auto.set_teacher_precision(precision)
    prec = precision_of(auto, precision, "cpu")

    def eager_fp32(b):
        def fn():
            with torch.inference_mode():
                for i in range(0, len(xs), b):
                    graph(xs[i : i + b])

        return fn

    def eager_auto(b):
        def fn():
            with torch.inference_mode(), prec.autocast(torch.device("cpu")):
                for i in range(0, len(xs), b):
                    auto.score(Batch(image=xs[i : i + b]))

        return fn

    def served(m, b):
        def fn():
            for i in range(0, len(pick), b):
                m.score_arrays(pick[i : i + b])

        return fn

    timings = {}
    for b, key in ((1, "batch1"), (batch_size, f"batch{batch_size}")):
        fns = {"pytorch_fp32": eager_fp32(b)}
        if prec.name != "fp32":
            fns[f"pytorch_{prec.name}"] = eager_auto(b)
        fns.update({name: served(m, b) for name, m in backends.items()})
        timings[key] = interleaved(fns, len(pick), repeats)  # images/s
    return timings


def export_markdown(result: dict) -> list[str]:
    st = result["setup"]
    bs = st["batch_size"]
    lines = [
        f"Parity on every test image of each run's categories (max |Δ| of map pixels and scores, as a "
        f"fraction of the run's threshold; tolerance {st['tolerance']:g}; verdicts = score > threshold):",
        "",
        "| run | method | test images | onnxruntime max rel. Δ | OpenVINO max rel. Δ | verdicts differ (ORT / OV) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        o, v = r["parity"]["onnxruntime"], r["parity"]["openvino"]
        lines.append(
            f"| {r['label']} | {r['method']} | {r['test_images']} | {o['max_rel']:.2g} | {v['max_rel']:.2g} | "
            f"{o['verdicts_differ']} / {v['verdicts_differ']} |"
        )
    keys = list(result["rows"][0]["batch1_ms_per_image"]) if result["rows"] else []
    lines += [
        "",
        f"Speed on {st['n_images_timed']} of those images, {st['threads']} threads, interleaved, median of "
        f"{st['repeats']}: batch-1 latency (ms/image) and batch-{bs} throughput (images/s):",
        "",
        "| run | "
        + " | ".join(f"{k} b1 ms" for k in keys)
        + " | "
        + " | ".join(f"{k} b{bs} img/s" for k in keys)
        + " | fastest export vs PyTorch fp32, b1 | vs fastest PyTorch, b1 |",
        "|---|" + "---:|" * (2 * len(keys) + 2),
    ]
    for r in result["rows"]:
        b1, bn, ra = r["batch1_ms_per_image"], r[f"batch{bs}_images_per_s"], r["ratios"]
        lines.append(
            f"| {r['label']} | "
            + " | ".join(f"{b1[k]:.1f}" for k in keys)
            + " | "
            + " | ".join(f"{bn[k]:.1f}" for k in keys)
            + f" | {ra['fastest_export_vs_pytorch_fp32_batch1']:.2f}x ({ra['fastest_export']}) | "
            f"{ra['fastest_export_vs_fastest_pytorch_batch1']:.2f}x ({ra['fastest_pytorch']}) |"
        )
    return lines


def bench_calibration(
    runs, quantile: float = 0.99, sizes=(10, 20), trials: int = 1000, test: bool = False, data=None
) -> dict:
    """Which tail model to fit to a category's held-out normal scores, measured without the test set: (1) on
    the runs' own held-out scores (config.json's calibration groups), leave-one-out -- the share of left-out
    normals above the threshold fitted to the rest, per tail; (2) on known score shapes (``SHAPES``) at the
    calibration sizes a category gets (``sizes``), the false-alarm rate each tail delivers. Target: 1 - quantile.
    ``test``: then, once, each run's test set judged by every tail (:func:`calibration_on_test`) -- to report,
    not to choose by."""
    from .calibration import SHAPES, TAILS, loo_groups, simulate_tail

    loo = {t: {"hits": 0, "n": 0, "per_run": {}} for t in TAILS}
    for run in runs:
        cfg = json.loads((Path(run) / CONFIG_FILE).read_text())
        groups = (cfg.get("calibration") or {}).get("groups") or {}
        if not any(g.get("scores") for g in groups.values()):
            raise ValueError(
                f"{run}: config.json keeps no held-out scores per category (trained before they "
                f"were stored): retrain it"
            )
        for t in TAILS:
            per = {
                k: list(v)
                for k, v in loo_groups(
                    {k: g.get("scores") or [] for k, g in groups.items()}, quantile, t
                ).items()
            }
            for h, n in per.values():
                loo[t]["hits"] += h
                loo[t]["n"] += n
            loo[t]["per_run"][str(run)] = per
    for t in TAILS:
        loo[t]["rate"] = loo[t]["hits"] / loo[t]["n"] if loo[t]["n"] else float("nan")
    sim = {
        t: {
            shape: {str(n): round(simulate_tail(t, shape, n, quantile, trials), 4) for n in sizes}
            for shape in SHAPES
        }
        for t in TAILS
    }
    out = {
        "quantile": quantile,
        "target": round(1 - quantile, 6),
        "runs": [str(r) for r in runs],
        "leave_one_out": loo,
        "simulated": sim,
        "trials": trials,
    }
    if test:
        out["test"] = {str(run): calibration_on_test(run, quantile, data) for run in runs}
    return out


def calibration_on_test(run, quantile: float = 0.99, data=None) -> dict:
    """The test set, scored once, judged by every tail model's thresholds (refitted from the held-out scores the
    run keeps) and by one pooled threshold: per tail, the verdict figures of ``metrics.verdict_metrics``."""
    from .calibration import MIN_TAIL, TAILS, shared_thresholds, tail_threshold
    from .checkpoint import load_checkpoint, read_config
    from .inference import score_dataset
    from .metrics import verdict_metrics
    from .resolve import test_set

    cfg = read_config(Path(run))
    model = load_checkpoint(Path(run))
    cal = model.verdict_calibration
    res = score_dataset(model, test_set(cfg, model.cfg.image_size, data=data), keep_maps=False)
    routed = [d["category"] for d in cal.decide(res["scores"], res["embeddings"])]
    n_cal = {name: g["n"] for name, g in cal.groups.items()}
    out = {
        "global": verdict_metrics(
            res["scores"], res["labels"], res["categories"], cal.global_threshold
        )
    }
    for t in TAILS:
        fitted = {
            name: g["scores"]
            for name, g in cal.groups.items()
            if len(g.get("scores") or []) >= MIN_TAIL
        }
        thr = (
            shared_thresholds(fitted, quantile)
            if t == "shared"
            else {name: tail_threshold(v, quantile, t)[0] for name, v in fitted.items()}
        )
        thr = {name: thr.get(name, cal.global_threshold) for name in cal.groups}
        out[t] = verdict_metrics(
            res["scores"],
            res["labels"],
            res["categories"],
            [thr[r] for r in routed],
            routed=routed,
            calibration_n=n_cal,
        )
    return out


def calibration_markdown(result: dict) -> list[str]:
    from .calibration import TAILS

    target = result["target"]
    lines = [
        f"Target false-alarm rate {100 * target:g} %. Leave-one-out on the runs' held-out normal scores "
        f"(each left out in turn, the threshold fitted to the rest of its category):",
        "",
        "| tail | left-out normals above their threshold | rate |",
        "|---|---|---|",
    ]
    for t in TAILS:
        v = result["leave_one_out"][t]
        lines.append(f"| {t} | {v['hits']} / {v['n']} | {100 * v['rate']:.1f} % |")
    sizes = list(next(iter(next(iter(result["simulated"].values())).values())))
    lines += [
        "",
        f"False-alarm rate each tail delivers on known score shapes ({result['trials']} calibration sets "
        f"of n scores each, checked on fresh scores):",
        "",
        "| tail | "
        + " | ".join(f"{shape}, n={n}" for shape in result["simulated"][TAILS[0]] for n in sizes)
        + " |",
        "|---|" + "---|" * (len(sizes) * len(result["simulated"][TAILS[0]])),
    ]
    for t in TAILS:
        lines.append(
            f"| {t} | "
            + " | ".join(
                f"{100 * v:.1f} %"
                for shape in result["simulated"][t].values()
                for v in shape.values()
            )
            + " |"
        )
    for run, per in (result.get("test") or {}).items():
        lines += [
            "",
            f"Test set of `{run}`, scored once, judged by each rule (false alarms among `test/good`, "
            f"pooled and in the worst category; recall; F1):",
            "",
            "| rule | pooled false alarms | worst category | mean recall | min recall | mean F1 |",
            "|---|---|---|---|---|---|",
        ]
        for rule, v in per.items():
            worst = max(v["categories"].items(), key=lambda kv: kv[1]["rate"])
            recalls = [c["recall"] for c in v["categories"].values()]
            lines.append(
                f"| {rule} | {100 * v['all']:.1f} % | {worst[0]} {100 * worst[1]['rate']:.1f} % | "
                f"{100 * np.mean(recalls):.1f} % | {100 * min(recalls):.1f} % | "
                f"{100 * v['mean_f1']:.1f} % |"
            )
    return lines


def _precision_markdown(result: dict) -> list[str]:
    """The body of a bench precision report: what ``auto`` decides, fp32 vs bf16, the agreement."""
    lines = [
        f"- native bf16: {result['native_bf16']} ({result['native_reason']})",
        f"- `precision=auto` decides: **{result['auto']['name']}**"
        f"{' + channels_last' if result['auto']['channels_last'] else ''} "
        f"({result['auto']['reason']})",
        "",
        "| measure | fp32 img/s | bf16 img/s | bf16 / fp32 |",
        "|---|---|---|---|",
    ]
    t = result["teacher_images_per_s"]
    lines.append(
        f"| teacher forward (fp32 plain / channels_last) | {t['fp32']:.1f} / "
        f"{t['fp32_channels_last']:.1f} | {t['bf16_channels_last']:.1f} | "
        f"{result['ratios']['teacher_bf16_vs_best_fp32']:.2f}x |"
    )
    for m, v in result["train_step"].items():
        r = v["images_per_s"]
        lines.append(
            f"| train step: {v['family']} | {r['fp32']:.1f} | {r['bf16']:.1f} | "
            f"{v['bf16_vs_fp32']:.2f}x |"
        )
    if "agreement" in result:
        lines += _agreement_markdown(result["agreement"])
    return lines


def _agreement_markdown(a: dict) -> list[str]:
    """The fp32 vs bf16 agreement table of a small real run (:func:`precision_agreement`)."""
    lines = [
        "",
        f"fp32 vs bf16 on a small real run ({a['method']}, {a['train_images']} training images of "
        f"{', '.join(a['categories'])}, {a['image_size']} px, {a['epochs']} epochs; "
        f"{a['test_images']} test images):",
        "",
        "| compared with trained fp32, scored fp32 | Spearman of image scores "
        "| max relative difference |",
        "|---|---|---|",
    ]
    return lines + [
        f"| {k.replace('_', ' ')} | {v['spearman_vs_fp32']:.4f} | {v['max_rel_diff']:.3f} |"
        for k, v in a["agreement"].items()
    ]


def to_markdown(what: str, result: dict, command: str) -> str:
    if what == "leaderboard":
        from .leaderboard import markdown

        return (
            f"### bench leaderboard — {result['date']}\n\n- machine: {result['machine']}\n"
            + markdown(result, command)
        )
    if what == "curve":
        from .curve import curve_markdown

        head = f"### bench curve — {result['date']}\n\n- machine: {result['machine']}\n"
        return head + f"- command: `{command}`\n" + "\n".join(curve_markdown(result)) + "\n"
    if what == "accuracy":
        return (
            f"### bench accuracy: {result['method']} — {result['date']}\n\n- machine: {result['machine']}\n"
            f"- command: `{command}`\n- data: {result['data']}\n- protocol: {result.get('protocol')}\n\n"
            + accuracy_markdown(result)
        )
    lines = [
        f"### bench {what} — {date.today().isoformat()}",
        "",
        f"- machine: {result['machine']}",
        f"- command: `{command}`",
        "",
    ]
    if what == "export":
        return "\n".join(lines + export_markdown(result)) + "\n"
    if what == "calibration":
        return "\n".join(lines + calibration_markdown(result)) + "\n"
    if what == "precision":
        return "\n".join(lines + _precision_markdown(result)) + "\n"
    lines += ["| measure | images/s |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in result["images_per_s"].items()]
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.2f}x |" for k, v in result["ratios"].items()]
    return "\n".join(lines) + "\n"


def _n_images(args) -> dict:
    """``{"n_images": ...}`` when the command line sets it, else nothing (the bench's default)."""
    return {"n_images": args.n_images} if args.n_images else {}


def _workload(args) -> Workload:
    """The :class:`Workload` of bench train or infer that the command line sets."""
    names = ("image_size", "batch_size", "n_images", "repeats", "precision")
    return Workload(args.method, args.data, **picked(args, *names))


def _curve_from_args(args) -> dict:
    """bench curve with the command line's settings; the synthetic categories in ``--work`` (kept) or
    in a temporary folder (removed)."""
    import shutil

    from .curve import CurveSetup, interference_curve
    from .data import discover_categories, find_data
    from .teacher import load_teacher

    root = Path(args.data) if args.data else find_data()[0]
    setup = CurveSetup(
        probe=args.probe or sorted(discover_categories(root))[0],
        ks=tuple(args.ks),
        seeds=tuple(args.seeds),
        methods={m: (m, {}) for m in args.methods},
        **picked(
            args, "image_size", "n_train", "batch_size", "steps_per_category", "preset", "precision"
        ),
    )
    work = Path(args.work or tempfile.mkdtemp(prefix="unistad_curve_"))
    try:
        return interference_curve(root, setup, load_teacher(), work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def _entries(args, usage: str) -> list[dict]:
    """The ``--entry LABEL RUN ...`` arguments, parsed; refused with ``usage`` if there is none."""
    from . import leaderboard

    if not args.entry:
        raise SystemExit(usage)
    return [leaderboard.parse_entry(e) for e in args.entry]


def _leaderboard_from_args(args) -> dict:
    """bench leaderboard with the command line's entries, references and settings."""
    from . import leaderboard

    entries = _entries(
        args, "bench leaderboard needs at least one --entry LABEL RUN [METRICS_JSON]"
    )
    # refused before any timing
    references = [leaderboard.load_reference(p) for p in args.reference]
    result = leaderboard.collect(
        entries,
        args.data,
        batch_size=args.batch_size,
        repeats=args.repeats,
        precision=args.precision,
        **_n_images(args),
    )
    result["references"] = references
    return result


def _run_bench(args) -> dict:
    """The result of the bench ``args.what`` names, run with the command line's settings."""
    kw = picked(args, "image_size", "batch_size", "repeats")
    if args.what == "teacher":
        return bench_teacher(**kw)
    if args.what == "precision":
        return bench_precision(
            **kw,
            **({"methods": tuple(args.methods)} if args.methods else {}),
            agreement_data=args.data,
        )
    if args.what == "accuracy":
        return bench_accuracy(
            args.method,
            args.data,
            **picked(args, "out_dir", "epochs", "preset", "protocol", "seeds", "reuse"),
            extra_args=(
                "--precision",
                args.precision,
                *(("--threads", str(args.threads)) if args.threads else ()),
            ),
        )
    if args.what == "train":
        return bench_train(_workload(args), compare=args.compare)
    if args.what == "leaderboard":
        return _leaderboard_from_args(args)
    if args.what == "curve":
        return _curve_from_args(args)
    if args.what == "calibration":
        return bench_calibration(
            args.run, quantile=args.quantile, trials=args.trials, test=args.test, data=args.data
        )
    if args.what == "export":
        return bench_export(
            _entries(args, "bench export needs at least one --entry LABEL RUN"),
            args.data,
            **picked(args, "batch_size", "repeats", "precision", "threads", "out_dir"),
            **_n_images(args),
        )
    return bench_infer(_workload(args))


def _markdown_command(args) -> str:
    """The command to record in the markdown report, quoted as a shell would need it (a label such
    as "memory bank (faithful)" stays one argument)."""
    import sys

    return (
        "python -m unistad_edu " + shlex.join(sys.argv[1:])
        if sys.argv[0].endswith("__main__.py")
        else f"bench {args.what}"
    )


def _write_outputs(args, result: dict, text: str) -> None:
    """``text`` (the result as JSON) written to ``--json``, the result appended as markdown to
    ``--markdown``: each if asked for."""
    if args.json:
        from .checkpoint import atomic_write_text

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.json), text)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n" + to_markdown(args.what, result, _markdown_command(args)))


def main(args) -> int:
    result = _run_bench(args)
    result = {"bench": args.what, "date": date.today().isoformat(), "machine": machine(), **result}
    text = json.dumps(result, indent=2)
    print(text)
    _write_outputs(args, result, text)
    return 0
