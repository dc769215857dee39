"""The interference curve: one category's AUROC against the number of categories trained with it.

Fix one category (the *probe*), always test on its test images only, and train on the probe alone, then on the
probe and one more category, two more, four more ... -- the data's other categories first, then synthetic ones
(``synthetic.make_synthetic``), so the curve can go past the categories there are. Every model takes the same
number of optimiser steps *per category* it trains on (K categories: K times the steps, lesson 03's rule), and
every point is repeated over seeds. A method is summarised by the least-squares slope of its AUROC against K
(:func:`~unistad_edu.report.trend`), over all seeds and for each seed alone, so a claim about a slope can say
whether every seed agrees. Lesson 13 draws it; ``python -m unistad_edu bench curve`` records it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

SYNTHETIC_CATEGORIES = ("weave", "grain", "bolt", "pcb")
CURVE_METRICS = ("I-AUROC", "P-AUROC")


@dataclass
class CurveSetup:
    """One curve's protocol: the ``probe``, the numbers of categories trained together (``ks``), the
    ``seeds``, the image side, at most ``n_train`` training images per category (None: all), the batch size,
    the optimiser steps per category, the methods' preset and the precision (``TrainConfig.precision``)."""

    probe: str
    ks: tuple = (1, 2, 3, 5, 7, 9)
    seeds: tuple = (0, 1, 2)
    image_size: int = 256
    n_train: int | None = None
    batch_size: int = 16
    steps_per_category: int = 300
    preset: str = "cpu"
    precision: str = "auto"
    methods: dict = field(default_factory=dict)  # label -> (method name, config overrides)

    def __post_init__(self):
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be numbers of categories >= 1, got {self.ks!r}")
        if not self.seeds:
            raise ValueError("a curve needs at least one seed")
        if self.steps_per_category < 1:
            raise ValueError(f"steps_per_category must be >= 1, got {self.steps_per_category}")


def curve_sources(root, probe: str, work) -> list[tuple[Path, str]]:
    """(folder, category) in the order the curve adds them: the probe, the other categories of ``root``
    (sorted), then synthetic categories generated under ``work`` (none when ``root`` is itself synthetic)."""
    from .data import discover_categories
    from .synthetic import MANIFEST_NAME

    root = Path(root)
    found = discover_categories(root)
    if probe not in found:
        raise ValueError(f"probe {probe!r} is not a category of {root} (found: {sorted(found)})")
    sources = [(root, probe)] + [(root, c) for c in sorted(found) if c != probe]
    if not (root / MANIFEST_NAME).is_file():
        sources += [(Path(work) / "synthetic", c) for c in SYNTHETIC_CATEGORIES]
    return sources


def _make_synthetic(sources, setup: CurveSetup) -> None:
    """Generate the synthetic categories ``sources`` names, at the curve's image size, if any."""
    from .synthetic import make_synthetic

    folders = {folder for folder, c in sources if c in SYNTHETIC_CATEGORIES}
    for folder in folders:
        if not folder.is_dir():
            make_synthetic(
                folder,
                size=setup.image_size,
                n_train=setup.n_train or 200,
                n_test_good=1,
                n_test_defect=1,
                categories=SYNTHETIC_CATEGORIES,
            )


def train_sets(sources, ks, setup: CurveSetup) -> dict:
    """K -> the first K categories' normal training images (at most ``n_train`` each, evenly spread); each
    category's folder is read once, and each set is built once for every method and seed (so the images it
    decodes stay decoded)."""
    from .data import MVTecDataset

    per_category = [
        MVTecDataset(folder, "train", categories=[cat], image_size=setup.image_size)
        .evenly(setup.n_train)
        .records
        for folder, cat in sources[: max(ks)]
    ]
    return {
        k: MVTecDataset(
            sources[0][0],
            "train",
            image_size=setup.image_size,
            records=[r for records in per_category[:k] for r in records],
        )
        for k in ks
    }


def _one_point(name, overrides, k, seed, data, test, setup, teacher, cache, device) -> list[float]:
    """Train one model on ``data`` (K = ``k`` categories, seed ``seed``) and test it on the probe."""
    from .engine import TrainConfig, fit
    from .inference import evaluate
    from .methods import build_model, seed_overrides

    model = build_model(
        name,
        teacher,
        preset=setup.preset,
        image_size=setup.image_size,
        batch_size=setup.batch_size,
        **{**overrides, **seed_overrides(name, seed)},
    ).to(device)
    steps = k * setup.steps_per_category if model.trains_by_gradient else None
    train_cfg = TrainConfig(
        epochs=1,
        min_steps=steps,
        seed=seed,
        holdout_fraction=0.0,
        device=device,
        progress=False,
        precision=setup.precision,
    )
    fit(model, data, train_cfg, cache=cache)
    table = evaluate(model, test, cache=cache, progress=False, precision=setup.precision)
    row = table["categories"][setup.probe]
    return [float(row[m]) for m in CURVE_METRICS]


def interference_curve(root, setup: CurveSetup, teacher, work, device="cpu", log=print) -> dict:
    """Train every method of ``setup`` for every K and seed on the first K categories of
    :func:`curve_sources` and test each model on the probe's test images. ``work``: a folder for the
    synthetic categories and for each finished point (``curve_points.json``, written atomically), so that
    the same call after an interruption trains only the points still missing. Returns the setup, the
    categories in the order added, the probe's test set size, ``results`` (label -> K -> one
    [I-AUROC, P-AUROC] per seed) and :func:`curve_slopes`."""
    import time

    from .cache import FeatureCache
    from .data import MVTecDataset

    sources = curve_sources(root, setup.probe, work)
    ks = [k for k in setup.ks if k <= len(sources)]
    _make_synthetic(sources[: max(ks)], setup)
    test = MVTecDataset(root, "test", categories=[setup.probe], image_size=setup.image_size)
    sets = train_sets(sources, ks, setup)
    cache = FeatureCache(teacher, setup.image_size)  # the teacher runs once per image
    cache.warm(sets[max(ks)], progress=False)
    cache.warm(test, progress=False)
    points = _Points(Path(work) / "curve_points.json", {**asdict(setup), "root": str(root)})
    results = {}
    for label, (name, overrides) in setup.methods.items():
        t0 = time.perf_counter()
        results[label] = {k: [] for k in ks}
        for k in ks:
            for s in setup.seeds:
                point = points.get(label, k, s)
                if point is None:
                    args = (k, s, sets[k], test, setup, teacher, cache, device)
                    point = points.put(label, k, s, _one_point(name, overrides, *args))
                results[label][k].append(point)
        log(f"{label}: {len(ks) * len(setup.seeds)} points in {time.perf_counter() - t0:.0f} s")
    defective = sum(r.label for r in test.records)
    return {
        "setup": {**asdict(setup), "ks": ks},
        "order": [c for _, c in sources[: max(ks)]],
        "probe_test": {"images": len(test), "defective": defective},
        "results": results,
        "slopes": curve_slopes(results),
    }


class _Points:
    """The finished points of one curve, kept in a JSON file beside the setup they belong to."""

    def __init__(self, path: Path, setup: dict):
        import json

        self.path, self.setup = path, json.loads(json.dumps(setup))  # tuples as lists, as read back
        self.points = {}
        if path.is_file():
            saved = json.loads(path.read_text())
            if not _same_protocol(saved.get("setup", {}), self.setup):
                raise ValueError(
                    f"{path} holds the points of another curve setup: choose another work folder, "
                    f"or delete that file to start this one afresh"
                )
            self.setup["methods"] = {**saved["setup"]["methods"], **self.setup["methods"]}
            self.points = saved["points"]

    def get(self, label: str, k: int, seed: int) -> list[float] | None:
        return self.points.get(f"{label}|{k}|{seed}")

    def put(self, label: str, k: int, seed: int, value: list[float]) -> list[float]:
        import json

        from .files import atomic_write_text

        self.points[f"{label}|{k}|{seed}"] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({"setup": self.setup, "points": self.points}))
        return value


def _same_protocol(saved: dict, setup: dict) -> bool:
    """Whether points saved under ``saved`` belong to ``setup``'s curve: everything but the list of
    methods equal, and a method both name trained with the same overrides -- so a method can be added
    to, or left out of, a recorded curve without retraining the others."""
    rest = [key for key in {**saved, **setup} if key != "methods"]
    if any(saved.get(key) != setup.get(key) for key in rest):
        return False
    old, new = saved.get("methods", {}), setup.get("methods", {})
    return all(old[label] == new[label] for label in old.keys() & new.keys())


def curve_slopes(results: dict) -> dict:
    """Per method and metric: the least-squares slope of AUROC against K over every (K, seed) point
    (``all``), and the slope of each seed's own curve (``per_seed``)."""
    from .report import trend

    out = {}
    for label, by_k in results.items():
        ks = sorted(by_k, key=int)
        n_seeds = len(by_k[ks[0]])
        out[label] = {}
        for i, metric in enumerate(CURVE_METRICS):
            xs = [int(k) for k in ks for _ in range(n_seeds)]
            ys = [v[i] for k in ks for v in by_k[k]]
            per_seed = [
                trend([int(k) for k in ks], [by_k[k][s][i] for k in ks]) for s in range(n_seeds)
            ]
            out[label][metric] = {"all": trend(xs, ys), "per_seed": per_seed}
    return out


def curve_markdown(result: dict) -> list[str]:
    """Markdown lines: the probe, the order, one row per method with mean ± std per K, and the slopes."""
    from .report import mean_std

    setup = result["setup"]
    ks = setup["ks"]
    test = result["probe_test"]
    budget = [
        f"{setup['image_size']} px",
        f"at most {setup['n_train'] or 'all'} training images per category",
        f"batch {setup['batch_size']}",
        f"{setup['steps_per_category']} optimiser steps per category",
        f"seeds {list(setup['seeds'])}",
        f"preset {setup['preset']}",
    ]
    probe = f"{setup['probe']} ({test['images']} test images, {test['defective']} defective)"
    order = ", ".join(result["order"])
    lines = [
        f"- probe: {probe}; categories in the order added: {order}",
        "- " + ", ".join(budget),
        "",
    ]
    for i, metric in enumerate(CURVE_METRICS):
        lines += [
            f"| {metric} of the probe | " + " | ".join(f"K={k}" for k in ks) + " | slope per K "
            "(all points) | slope per seed |",
            "|---|" + "---:|" * (len(ks) + 2),
        ]
        for label, by_k in result["results"].items():
            cells = []
            for k in ks:
                points = by_k[k] if k in by_k else by_k[str(k)]  # str keys: read back from JSON
                m, s = mean_std([v[i] for v in points])
                cells.append(f"{100 * m:.1f} ± {100 * s:.1f}")
            sl = result["slopes"][label][metric]
            seeds = ", ".join(f"{100 * v:+.2f}" for v in sl["per_seed"])
            lines.append(
                f"| {label} | " + " | ".join(cells) + f" | {100 * sl['all']:+.2f} | {seeds} |"
            )
        lines.append("")
    return lines
