"""Using a trained model: score a data set, calibrate its verdicts, evaluate it, predict on images.

Everything here runs the method's one scoring path (:meth:`~unistad_edu.methods.base.Method.score`) and never
trains: the demo, the export, the CLI's ``eval`` / ``predict`` and the lessons import this module, not the
training loop (:mod:`unistad_edu.engine`, which calls :func:`calibrate` at the end of ``fit``).

* :func:`score_dataset` -- scores, maps, labels, categories and the teacher's image embedding of every image;
* :func:`calibrate` -- the run's :class:`~unistad_edu.calibration.Calibration` from held-out normal images:
  routing by embedding and a threshold per category (see :mod:`unistad_edu.calibration`);
* :func:`evaluate` -- the per-category metrics table, the pooled I-AUROC, and the verdicts at the calibrated
  thresholds (false alarms with intervals, recall, F1, routing accuracy), beside those of one global threshold;
* :func:`predict` -- per image: score, map, routed category, its threshold, standardised score, verdict.
"""

from __future__ import annotations

import numpy as np
import torch

from .cache import FeatureCache
from .calibration import DEFAULT_TAIL, Calibration, fit_calibration
from .data import MVTecDataset, collate, model_inputs
from .methods.base import Batch, Method


def precision_of(model: Method, precision=None, device=None):
    """Resolve ``precision`` (``None``: the teacher's own setting, ``"auto"`` unless changed) for ``model`` on
    ``device`` (measured with the model's own teacher at its image size), make the teacher use it, and put the
    model in the chosen memory layout. Returns the :class:`~unistad_edu.precision.Precision`."""
    from .precision import resolve

    device = torch.device(device) if device is not None else next(model.parameters()).device
    if precision is None:
        precision = model.teacher.precision
    prec = resolve(precision, device, model.teacher, model.cfg.image_size)
    model.set_teacher_precision(
        prec
    )  # every teacher (the enhanced STPM's second one too) at the same precision
    model.to(memory_format=prec.memory_format)
    return prec


def method_batch(batch: dict, cache: FeatureCache | None, device: torch.device) -> Batch:
    """A data batch -> what a method may see: images (and cached features). The category is dropped here."""
    images = batch["image"].to(device)
    features = cache.features(images, batch["path"]) if cache is not None else None
    return Batch(image=images, features=features)


def with_features(model: Method, batch: Batch) -> Batch:
    """``batch`` with the teacher's features filled in (one teacher forward when it has none), so the score and
    the routing embedding come from the same features."""
    if batch.features is not None:
        return batch
    with torch.no_grad():
        return Batch(image=batch.image, features=model.teacher(batch.image))


def progress_bar(iterable, desc: str, enabled: bool, total=None):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, disable=not enabled, leave=False, total=total)


def in_order(dataset, batch_size: int):
    """The data set's batches in file order (no shuffling)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=0
    )


# ---- scoring many images ------------------------------------------------------------------------------
@torch.no_grad()
def _with_teacher_features(model: Method, dataset, cache, device, batch_size, precision, bar=None):
    """The loader batches of ``dataset`` in file order, each with its method :class:`Batch` holding the teacher
    features (from ``cache`` or the teacher, at the model's precision): yields (batch, method batch, autocast).
    ``bar``: the description of a progress bar (None: no bar)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    prec = precision_of(model, precision, device)
    for batch in progress_bar(in_order(dataset, batch_size), bar or "", bar is not None):
        mb = method_batch(batch, cache, device)
        with prec.autocast(device):
            mb = with_features(model, mb)
        yield batch, mb, lambda: prec.autocast(device)


@torch.no_grad()
def score_dataset(
    model: Method,
    dataset,
    cache: FeatureCache | None = None,
    device=None,
    batch_size: int = 16,
    keep_maps: bool = True,
    progress: bool = False,
    precision=None,
    desc: str = "scoring",
):
    """Run the shared scoring path over a dataset. Returns dict of numpy arrays: scores (N,), labels (N,),
    categories, defects (each image's folder name, "good" for a normal one), paths, embeddings (N, D) (the
    teacher's image embedding, for routing) and (if keep_maps) maps (N, H, W) float32 and masks (N, H, W) uint8."""
    model.eval()
    out = {k: [] for k in ("scores", "labels", "categories", "defects", "paths")}
    out.update({k: [] for k in ("maps", "masks", "embeddings", "terms")})
    bar = desc if progress else None
    for batch, mb, autocast in _with_teacher_features(
        model, dataset, cache, device, batch_size, precision, bar
    ):
        with autocast():
            res = model.score(mb)
        out["embeddings"].append(model.teacher.embedding_of(mb.features).float().cpu().numpy())
        out["scores"].append(res.pred_score.float().cpu().numpy())
        if res.image_scores:
            # every raw per-image score that was combined ({"map": (B,), term: (B,)})
            out["terms"].append({k: v.float().cpu().numpy() for k, v in res.image_scores.items()})
        out["labels"].append(batch["label"].numpy())
        out["categories"] += batch["category"]
        out["defects"] += batch.get(
            "defect", ["good" if v == 0 else "defect" for v in batch["label"].tolist()]
        )
        out["paths"] += batch["path"]
        if keep_maps:
            out["maps"].append(res.anomaly_map[:, 0].float().cpu().numpy())
            out["masks"].append(batch["mask"][:, 0].numpy().astype(np.uint8))
    return _as_arrays(out, keep_maps)


def _as_arrays(out: dict, keep_maps: bool) -> dict:
    """:func:`score_dataset`'s per-batch lists joined into its arrays (empty ones for no images)."""
    result = {
        "scores": np.concatenate(out["scores"]) if out["scores"] else np.zeros(0),
        "labels": np.concatenate(out["labels"]) if out["labels"] else np.zeros(0, int),
        "categories": np.array(out["categories"]),
        "defects": np.array(out["defects"]),
        "paths": out["paths"],
        "embeddings": np.concatenate(out["embeddings"]) if out["embeddings"] else np.zeros((0, 0)),
    }
    if out["terms"]:
        result["terms"] = {k: np.concatenate([t[k] for t in out["terms"]]) for k in out["terms"][0]}
    if keep_maps and out["maps"]:
        result["maps"] = np.concatenate(out["maps"])
        result["masks"] = np.concatenate(out["masks"])
    return result


def embeddings(model: Method, dataset, cache=None, device=None, precision=None) -> np.ndarray:
    """(N, D) teacher image embeddings of every image of ``dataset`` (no method forward)."""
    out = [
        model.teacher.embedding_of(mb.features).float().cpu().numpy()
        for _, mb, _ in _with_teacher_features(model, dataset, cache, device, 32, precision)
    ]
    return np.concatenate(out) if out else np.zeros((0, 0))


# ---- calibration ---------------------------------------------------------------------------------------------
def calibrate_threshold(model: Method, held: MVTecDataset, cache, device, cfg):
    """One pooled threshold from held-out **normal** images: the ``cfg.threshold_quantile`` of their image
    scores (so about 1 - q of normal images would be flagged if every category scored alike). Also returns
    per-class stats of those scores, which show how far apart the categories' normal score ranges are."""
    if len(held) == 0:
        return None, {"rule": "no held-out images (holdout_fraction=0): no threshold"}
    res = score_dataset(model, held, cache, device, keep_maps=False)
    return _pooled(res, cfg.threshold_quantile)


def _pooled(res: dict, quantile: float):
    s = res["scores"]
    stats = {
        "rule": f"quantile {quantile} of image scores of {len(s)} held-out normal train images",
        "per_class": {},
    }
    for cat in sorted(set(res["categories"])):
        v = s[res["categories"] == cat]
        stats["per_class"][cat] = {
            "n": int(v.size),
            "mean": float(v.mean()),
            "std": float(v.std()),
            "max": float(v.max()),
        }
    return float(np.quantile(s, quantile)), stats


def calibrate(
    model: Method,
    train_data: MVTecDataset,
    held: MVTecDataset,
    cache,
    device,
    quantile: float = 0.99,
    tail: str = DEFAULT_TAIL,
    kind: str = "auto",
    seed: int = 0,
) -> tuple[Calibration, dict]:
    """The run's :class:`Calibration` and the pooled statistics (``config.json["validation"]``).

    ``held``: the held-out normal images (their scores set the thresholds); ``train_data``: every training image
    (their embeddings place the routing centroids). ``kind``: ``"auto"`` (``"per-category"`` for two or more
    category folders, ``"clusters"`` for one folder, which may mix products), ``"per-category"``,
    ``"clusters"`` or ``"global"`` (one pooled threshold, the rule before routing)."""
    if len(held) == 0:
        return Calibration("global", quantile, None), {
            "rule": "no held-out images (holdout_fraction=0): no threshold"
        }
    res = score_dataset(model, held, cache, device, keep_maps=False)
    pooled, stats = _pooled(res, quantile)
    if kind == "auto":
        kind = "per-category" if len(set(train_data.categories)) > 1 else "clusters"
    if kind == "global":
        return Calibration("global", quantile, pooled), stats
    train_emb = embeddings(model, train_data, cache, device)
    train_groups = [r.category for r in train_data.records]
    cal = fit_calibration(
        res["scores"],
        res["categories"],
        train_emb,
        train_groups,
        quantile=quantile,
        tail=tail,
        kind=kind,
        held_emb=res["embeddings"],
        seed=seed,
    )
    routed = cal.router.route(res["embeddings"])[0]
    if (
        kind == "per-category"
    ):  # how often the held-out images go to their own folder (validation, no test)
        cal.info["heldout_routing_accuracy"] = float(
            np.mean(np.asarray(cal.router.names)[routed] == res["categories"])
        )
    return cal, stats


def calibration_of(model) -> Calibration:
    """The model's calibration (a run saved before routing: kind ``global`` with its one threshold)."""
    cal = getattr(model, "verdict_calibration", None)
    return (
        cal if cal is not None else Calibration.from_json(None, getattr(model, "threshold", None))
    )


# ---- evaluate ------------------------------------------------------------------------------------------
def evaluate(
    model: Method,
    test_data: MVTecDataset,
    cache: FeatureCache | None = None,
    batch_size: int = 16,
    progress: bool = True,
    setting: str = "unified",
    return_outputs: bool = False,
    precision=None,
    pixel: bool = True,
):
    """Per-category metrics table (and mean) of ``model`` on ``test_data``, in the metrics.json format, plus:
    ``pooled`` (I-AUROC over all test images mixed -- one production line's view, not the mean of the
    per-category AUROCs), ``by_defect`` (per category: I-AUROC against its structural and its logical defects and
    against each defect kind, :func:`metrics.defect_aurocs`), ``false_alarms`` (the verdicts at the run's
    calibration: per category the normal test images flagged with a 95 % interval and the floor of its
    calibration size, recall, F1, routing accuracy) and ``false_alarms_global`` (the same at one pooled threshold, for comparison). ``pixel=False``: image
    metrics only (a test set without masks)."""
    from .metrics import auroc, compute_metrics, defect_aurocs, metrics_table

    res = score_dataset(
        model,
        test_data,
        cache,
        batch_size=batch_size,
        progress=progress,
        desc="evaluating",
        precision=precision,
        keep_maps=pixel,
    )
    per_cat = {}
    for cat in sorted(set(res["categories"])):
        idx = res["categories"] == cat
        maps = (res["maps"][idx], res["masks"][idx]) if pixel else (None, None)
        per_cat[cat] = compute_metrics(res["scores"][idx], res["labels"][idx], *maps)
    table = metrics_table(per_cat, setting=setting, method=model.name)
    table["pooled"] = {
        "I-AUROC": auroc(res["scores"], res["labels"]),
        "images": int(len(res["scores"])),
    }
    table["by_defect"] = defect_aurocs(
        res["scores"], res["labels"], res["categories"], res["defects"]
    )
    table["intervals"] = auroc_intervals(res)
    table.update(verdict_report(calibration_of(model), res))
    if "terms" in res and model.combine_rule() == "noisy_or":
        table["noisy_or"] = branch_report(res, model.score_calibration())
    return (table, res) if return_outputs else table


def auroc_intervals(res: dict, n_boot: int = 2000, level: float = 0.95) -> dict:
    """Per category, the image AUROC's stratified bootstrap interval over its test images
    (:func:`uncertainty.bootstrap_auroc`, seeded): ``{cat: {"I-AUROC": [low, high]}, "level": 0.95}``;
    categories without both normal and defective images are left out."""
    from .uncertainty import bootstrap_auroc

    out: dict = {"level": level, "resamples": n_boot}
    for cat in sorted(set(res["categories"])):
        idx = res["categories"] == cat
        labels = res["labels"][idx]
        if labels.min() == labels.max():
            continue
        iv = bootstrap_auroc(labels, res["scores"][idx], n_boot=n_boot, level=level, seed=0)
        out[str(cat)] = {"I-AUROC": [iv.low, iv.high]}
    return out


def branch_report(res: dict, calibration: dict) -> dict:
    """A Noisy-OR's branches on the test set: each branch's probability p = sigmoid((s - offset) / temperature)
    (the model's calibration), its median over the normal test images -- near 0 if the branch is a detector
    that stays quiet on normal images -- and over the defective ones, overall and per category."""
    normal = res["labels"] == 0
    p = {}
    for name, s in res["terms"].items():
        offset, temp = (float(v) for v in calibration[name])
        p[name] = 1.0 / (1.0 + np.exp(-(s.astype(np.float64) - offset) / temp))

    def medians(sel):
        return {name: float(np.median(v[sel])) if sel.any() else None for name, v in p.items()}

    out = {
        "median_p_normal": medians(normal),
        "median_p_defect": medians(~normal),
        "normal_images": int(normal.sum()),
        "by_category": {},
    }
    for cat in sorted(set(res["categories"])):
        in_cat = res["categories"] == cat
        out["by_category"][cat] = {"median_p_normal": medians(in_cat & normal)}
    return out


def verdict_report(cal: Calibration, res: dict) -> dict:
    """``{"false_alarms": ..., "false_alarms_global": ...}`` of scored images ``res`` (see :func:`evaluate`);
    empty without a threshold."""
    from .metrics import verdict_metrics

    out = {}
    if cal.routed:
        decisions = cal.decide(res["scores"], res["embeddings"])
        routed = [d["category"] for d in decisions]
        n_cal = {name: g["n"] for name, g in cal.groups.items()}
        far = verdict_metrics(
            res["scores"],
            res["labels"],
            res["categories"],
            [d["threshold"] for d in decisions],
            routed=routed if cal.kind == "per-category" else None,
            calibration_n=n_cal,
        )
        far.update(
            {
                "kind": cal.kind,
                "tail": cal.tail,
                "unlike": int(sum(d["notice"] is not None for d in decisions)),
            }
        )
        out["false_alarms"] = far
    if cal.global_threshold is not None:
        glob = verdict_metrics(
            res["scores"], res["labels"], res["categories"], cal.global_threshold
        )
        glob["kind"] = "global"
        out["false_alarms" if not cal.routed else "false_alarms_global"] = glob
    return out


# ---- predict -------------------------------------------------------------------------------------------
@torch.no_grad()
def predict(
    model: Method, images, threshold: float | None = None, batch_size: int = 8, precision=None
) -> list[dict]:
    """Score images given as file paths, (H, W, 3) uint8 arrays or (3, H, W) float tensors in [0, 1].
    Returns per image: ``score``, ``anomaly_map`` (S, S) float32, ``level_maps``, the resized ``image``
    (S, S, 3) uint8, and the verdict of the run's calibration: ``category`` (routed by the teacher's
    embedding; None for one global threshold), ``threshold`` (that category's; ``threshold`` given here
    overrides it), ``z`` (standardised score), ``anomalous`` (score > threshold, None without one) and
    ``notice`` (unlike anything trained on, else None). A file is turned upright by its EXIF orientation
    first, as the demo does with an upload, so both score the same picture."""
    size = model.cfg.image_size
    device = next(model.parameters()).device
    model.eval()
    prec = precision_of(model, precision, device)
    cal = calibration_of(model)
    arrays = model_inputs(
        [
            (im.clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).cpu().numpy()  # (3,H,W) -> uint8
            if isinstance(im, torch.Tensor)
            else im
            for im in images
        ],
        size,
    )
    results = []
    for i in range(0, len(arrays), batch_size):
        chunk = np.stack(arrays[i : i + batch_size])  # (b, S, S, 3)
        x = torch.from_numpy(chunk).permute(0, 3, 1, 2).float().div(255).to(device)
        with prec.autocast(device):
            batch = with_features(model, Batch(image=x))
            res = model.score(batch)
        emb = model.teacher.embedding_of(batch.features).float().cpu().numpy()
        decisions = cal.decide(res.pred_score.float().cpu().numpy(), emb, threshold)
        for j in range(x.shape[0]):
            results.append(
                {
                    **decisions[j],
                    "anomaly_map": res.anomaly_map[j, 0].float().cpu().numpy(),
                    "level_maps": {
                        k: v[j, 0].float().cpu().numpy() for k, v in res.level_maps.items()
                    },
                    "image": chunk[j],
                }
            )
    return results
