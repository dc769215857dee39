"""Metrics: image- and pixel-level anomaly-detection metrics, computed exactly from raw scores.

All seven metrics lie in ``[0, 1]`` (reports multiply by 100). They are computed **per category** and then
averaged over categories (the "mean" row), in both the unified and the per-class setting.

Image level -- ``scores (N,)`` (higher = more anomalous) against ``labels (N,)`` in ``{0, 1}``:

``I-AUROC``
    Area under the ROC curve = probability that a random anomalous image scores higher than a random
    normal one (ties count 1/2). 0.5 = chance, 1.0 = perfect ranking. Insensitive to class imbalance.
``I-AP``
    Average precision = area under the precision-recall curve, as the step sum
    ``sum_k (R_k - R_{k-1}) P_k`` over thresholds (same definition as scikit-learn, no interpolation).
    Chance level is the fraction of anomalous images, not 0.5.
``I-F1max``
    The best F1 score over all thresholds. The threshold is picked *with the test labels*, so this is an
    oracle (optimistic) number, not the F1 a deployed system with a fixed threshold would reach.

Pixel level -- ``maps (N, H, W)`` against ``masks (N, H, W)`` (binarised with ``> 0``); ``(N, 1, H, W)`` and a
single ``(H, W)`` image are accepted too:

``P-AUROC``, ``P-AP``, ``P-F1max``
    The same three metrics with every pixel of every test image of the category as one sample (pixels are
    pooled over the images, not averaged per image).
``AUPRO``
    Area under the per-region-overlap curve. Every connected defect region (8-connectivity, found per
    image) counts equally, whatever its size, so small defects matter as much as large ones -- unlike
    P-AUROC, which is dominated by the few large defects and the huge number of easy normal pixels. For a
    threshold ``t``: ``FPR(t)`` = fraction of normal pixels (mask 0, all images, including the normal
    pixels of defective images) with ``map >= t``; ``PRO(t)`` = mean over all regions of the fraction of the
    region's pixels with ``map >= t``. The curve is evaluated at **every** distinct map value and starts at
    ``(0, 0)`` (a threshold above the largest value); PRO is integrated over FPR in ``[0, fpr_limit]``
    (``0.3``) with the trapezoid rule, the curve being linearly interpolated exactly at ``fpr_limit``, and
    the area is divided by ``fpr_limit`` so that a perfect map scores 1.

``mAD``
    The mean of the seven. It is ``NaN`` unless all seven are defined (an image-only method, or a category
    without anomalous test images, has no mAD), so that mAD values are always comparable.

Reference values (useful to sanity-check a pipeline): a **constant** score/map gives AUROC = 0.5,
AP = the fraction of positives, F1max = ``2P / (2P + N)`` (everything flagged) and AUPRO = ``fpr_limit / 2``
= 0.15 (its PRO curve is the diagonal from (0, 0) to (1, 1)); a random map gives about the same. A perfect
score/map gives 1.0 for all.

Pitfalls (read these before reporting numbers)
----------------------------------------------
* **Never squash or clamp scores before ranking metrics.** Everything here depends only on the *order* of
  the raw scores; pass them unchanged. A sigmoid saturates in floating point (``sigmoid(20)`` is already
  ``1.0`` in float32), min-max scaling followed by clipping to [0, 1] flattens the tail, and casting to
  float16 or uint8 rounds nearby values together. All of these create artificial **ties** -- a perfectly
  separating model with scores around ``1e6`` drops from AUROC 1.0 to 0.5 after a sigmoid. Any strictly
  increasing transform (``a * s + b`` with ``a > 0``, ``log`` of positive scores, ...) leaves every metric
  unchanged, so there is never a reason to normalise.
* **Do not normalise each anomaly map by its own min/max.** Pixel metrics pool pixels across images, so the
  maps must share one scale: per-image normalisation makes the most "normal" region of a good image look as
  anomalous as a real defect.
* **Ties** are one threshold: tied samples are accepted or rejected together, so the result never depends on
  the order of the inputs (a naive ``argsort`` + ``cumsum`` without grouping ties does).
* **Resolution and masks.** Maps must have the mask resolution (upsample the maps, do not downsample the
  masks). Masks are binarised with ``> 0``: a mask resized with bilinear interpolation must be re-binarised
  (e.g. ``> 0.5``) *before* it comes here, otherwise its blurred border counts as defect.
* **Undefined metrics.** A category with no anomalous test images (or no normal ones) has no ranking to
  evaluate: the affected metrics are ``NaN`` (never a fake 0 or 1), ``mAD`` is ``NaN``, the category is left
  out of that column's mean (``nanmean``) and :func:`metrics_table` records why in ``"warnings"``. The
  rank functions return ``NaN`` whenever either class is absent (AP and F1max would otherwise be a
  trivial 1.0 or 0.0 whatever the model does).
* **P-AUROC saturates.** With ~98 % normal pixels, P-AUROC is often 95+ even for poor localisation;
  look at P-AP, P-F1max and AUPRO as well.

Implementation: all metrics are computed from sorted scores with ``numpy`` (``sort`` + ``searchsorted``), in
``O(n log n)``, exactly (scikit-learn is used only as a reference in the tests). For pooled pixels only the
normal pixels are sorted once and shared by the four pixel metrics; 150 maps of 256 x 256 take about a
second. NaN scores raise ``ValueError``. Torch tensors are accepted (converted to numpy).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "METRIC_NAMES",
    "IMAGE_METRICS",
    "PIXEL_METRICS",
    "ALL_KEYS",
    "SETTINGS",
    "auroc",
    "average_precision",
    "f1_max",
    "binary_metrics",
    "pixel_metrics",
    "pro_curve",
    "aupro",
    "compute_metrics",
    "defect_aurocs",
    "LOGICAL_DEFECTS",
    "undefined_reason",
    "metrics_table",
    "save_metrics",
    "load_metrics",
]

IMAGE_METRICS = ("I-AUROC", "I-AP", "I-F1max")
PIXEL_METRICS = ("P-AUROC", "P-AP", "P-F1max", "AUPRO")
METRIC_NAMES = IMAGE_METRICS + PIXEL_METRICS
ALL_KEYS = METRIC_NAMES + ("mAD",)
SETTINGS = ("unified", "per-class")
NAN = float("nan")
#: defect folder names counted as *logical* defects (a part missing or added, not a local flaw): the synthetic
#: set's ``missing`` / ``extra`` and MVTec LOCO's ``logical_anomalies``. Local methods are not expected to catch
#: them, so :func:`defect_aurocs` reports them apart from the structural ones.
LOGICAL_DEFECTS = ("missing", "extra", "logical_anomalies")

# 8-connectivity inside one image, never across images of the stack (N, H, W)
_STRUCTURE_2D = np.ones((3, 3), dtype=bool)
_STRUCTURE_3D = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE_3D[1] = True


# --------------------------------------------------------------------------------------------------- inputs
def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_scores(x, what: str) -> np.ndarray:
    a = _to_numpy(x)
    if (
        a.dtype.kind not in "fiu"
    ):  # bool, object, ... -> float64; float32/float64/ints keep their values
        a = a.astype(np.float64)
    if a.dtype.kind == "f" and np.isnan(a).any():
        raise ValueError(f"{what} contain NaN; fix the model output (a NaN has no rank)")
    return a


def _as_labels(x, n: int | None = None) -> np.ndarray:
    a = _to_numpy(x)
    if a.dtype != bool:
        if a.size and not np.isin(a, (0, 1)).all():
            bad = np.unique(a[~np.isin(a, (0, 1))])[:5]
            raise ValueError(
                f"labels must be 0 (normal) or 1 (anomalous); got values such as {bad.tolist()}"
            )
        a = a == 1
    a = a.reshape(-1)
    if n is not None and a.shape[0] != n:
        raise ValueError(f"scores have {n} entries but labels have {a.shape[0]}")
    return a


def _image_inputs(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = _as_scores(scores, "scores")
    if s.ndim == 2 and s.shape[1] == 1:  # (N, 1) column
        s = s[:, 0]
    if s.ndim != 1:
        raise ValueError(f"scores must have shape (N,), got {s.shape}")
    return s, _as_labels(labels, s.shape[0])


def _pixel_inputs(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    m = _as_scores(maps, "maps")
    g = _to_numpy(masks)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if g.ndim == 4 and g.shape[1] == 1:
        g = g[:, 0]
    if m.ndim == 2:
        m = m[None]
    if g.ndim == 2:
        g = g[None]
    if m.ndim != 3 or m.shape != g.shape:
        raise ValueError(
            f"maps and masks must both have shape (N, H, W) (or (N, 1, H, W)); got maps {m.shape} "
            f"and masks {g.shape} -- upsample the maps to the mask resolution first"
        )
    return m, g > 0


# --------------------------------------------------------------------------------------- ranking core
def _rank_from_sorted(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float, float]:
    """(AUROC, AP, F1max) from the positive and negative scores, each sorted ascending."""
    n_pos, n_neg = pos.shape[0], neg.shape[0]
    if n_pos == 0 or n_neg == 0:
        return NAN, NAN, NAN
    below = np.searchsorted(neg, pos, side="left")  # negatives strictly below each positive
    below_eq = np.searchsorted(neg, pos, side="right")  # ... below or tied
    # Mann-Whitney: each (pos, neg) pair counts 1 if pos > neg, 1/2 if tied; integer sums are exact
    auc = (int(below.sum(dtype=np.int64)) + int(below_eq.sum(dtype=np.int64))) / (
        2.0 * n_pos * n_neg
    )

    # Recall only changes where a positive score is crossed, so the distinct positive values u are the only
    # thresholds that contribute to AP. F1 = 2TP / (TP + FP + P) is maximal there too: all thresholds
    # t in (next lower positive value, u] share the same TP, and t = u has the fewest FP.
    first = np.flatnonzero(
        np.r_[True, pos[1:] != pos[:-1]]
    )  # first index of each distinct positive value
    tp = (n_pos - first).astype(np.float64)  # positives >= that value (tie group included)
    fp = (n_neg - below[first]).astype(np.float64)  # negatives >= that value
    count = np.diff(np.r_[first, n_pos])  # positives exactly at that value
    ap = float(np.sum(count * (tp / (tp + fp))) / n_pos)
    f1 = float(np.max(2.0 * tp / (tp + fp + n_pos)))
    return float(auc), ap, f1


def _split_sorted(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.sort(scores[positive]), np.sort(scores[~positive])


def binary_metrics(scores, labels) -> dict[str, float]:
    """``{"AUROC", "AP", "F1max"}`` of ``scores`` against binary ``labels`` with one sort (any shape, flattened).

    All three are ``NaN`` when either class is absent.
    """
    s = _as_scores(scores, "scores").reshape(-1)
    y = _as_labels(labels, s.shape[0])
    a, p, f = _rank_from_sorted(*_split_sorted(s, y))
    return {"AUROC": a, "AP": p, "F1max": f}


def auroc(scores, labels) -> float:
    """Area under the ROC curve (ties count 1/2); ``NaN`` if only one class is present."""
    return binary_metrics(scores, labels)["AUROC"]


def average_precision(scores, labels) -> float:
    """Average precision ``sum_k (R_k - R_{k-1}) P_k`` over all distinct thresholds (as scikit-learn);
    ``NaN`` if only one class is present."""
    return binary_metrics(scores, labels)["AP"]


def f1_max(scores, labels) -> float:
    """Largest F1 over all thresholds ``score >= t`` (an oracle threshold); ``NaN`` if only one class is present."""
    return binary_metrics(scores, labels)["F1max"]


# --------------------------------------------------------------------------------------------- PRO / AUPRO
class _PixelData:
    """Pooled pixels of one category, sorted once and shared by the four pixel metrics."""

    def __init__(self, maps, masks):
        m, g = _pixel_inputs(maps, masks)
        self.n_images = m.shape[0]
        self.neg = np.sort(m[~g])  # normal pixels, ascending
        comp, self.n_regions = ndimage.label(
            g, structure=_STRUCTURE_3D
        )  # regions per image, 8-connected
        ids = comp[g]  # region id of each defect pixel (C order)
        del comp
        vals = m[g]
        order = np.argsort(vals, kind="stable")
        self.pos = vals[order]  # defect pixels, ascending
        if self.n_regions:
            sizes = np.bincount(ids, minlength=self.n_regions + 1).astype(np.float64)
            self.inv_size = (1.0 / sizes[ids])[order]  # weight 1/|region| per defect pixel
        else:
            self.inv_size = np.zeros(0)

    def rank(self) -> tuple[float, float, float]:
        return _rank_from_sorted(self.pos, self.neg)

    def curve(self, num_thresholds: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        pos, neg, w = self.pos, self.neg, self.inv_size
        n_pos, n_neg = pos.shape[0], neg.shape[0]
        if n_pos == 0 or n_neg == 0:
            return np.array([NAN]), np.array([NAN])
        # suffix[i] = PRO contribution of defect pixels pos[i:], normalised so that suffix[0] == 1
        suffix = np.r_[np.cumsum(w[::-1])[::-1], 0.0]
        suffix /= suffix[0]
        if num_thresholds is None:
            # exact: PRO only changes at distinct defect values u, FPR only at normal values. Between two
            # consecutive u's the curve is horizontal, so two points per u describe it completely:
            # (FPR(> u), PRO(> u)) just before u is crossed, and (FPR(>= u), PRO(>= u)) right after.
            first = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1]])[::-1]  # descending values
            u = pos[first]
            fp_ge = n_neg - np.searchsorted(neg, u, side="left")
            fp_gt = n_neg - np.searchsorted(neg, u, side="right")
            pro_ge = suffix[first]
            pro_gt = np.r_[0.0, pro_ge[:-1]]
            fpr = np.r_[0.0, np.column_stack([fp_gt, fp_ge]).ravel() / n_neg, 1.0]
            pro = np.r_[0.0, np.column_stack([pro_gt, pro_ge]).ravel(), 1.0]
        else:
            if int(num_thresholds) < 2:
                raise ValueError("num_thresholds must be >= 2 (or None for the exact curve)")
            lo, hi = min(pos[0], neg[0]), max(pos[-1], neg[-1])
            thr = np.linspace(float(lo), float(hi), int(num_thresholds))[
                ::-1
            ]  # descending; last = min
            thr[-1], thr[0] = lo, hi
            fpr = np.r_[0.0, (n_neg - np.searchsorted(neg, thr, side="left")) / n_neg]
            pro = np.r_[0.0, suffix[np.searchsorted(pos, thr, side="left")]]
        keep = np.r_[True, (np.diff(fpr) != 0) | (np.diff(pro) != 0)]  # drop repeated points
        return fpr[keep], pro[keep]

    def aupro(self, fpr_limit: float = 0.3, num_thresholds: int | None = None) -> float:
        fpr, pro = self.curve(num_thresholds)
        if np.isnan(fpr[0]):
            return NAN
        return _normalised_area(fpr, pro, fpr_limit)


def _check_limit(fpr_limit: float) -> float:
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    return fpr_limit


def _normalised_area(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Trapezoid area under ``pro(fpr)`` on ``[0, limit]`` (interpolated at ``limit``), divided by ``limit``.
    ``fpr`` is non-decreasing, starts at 0 and ends at 1."""
    k = int(np.searchsorted(fpr, limit, side="right"))  # points with fpr <= limit
    f, p = fpr[:k], pro[:k]
    area = float(np.sum(np.diff(f) * (p[1:] + p[:-1])) / 2.0)
    if k < fpr.shape[0] and f[-1] < limit:
        f0, f1, p0, p1 = fpr[k - 1], fpr[k], pro[k - 1], pro[k]
        p_lim = p0 + (p1 - p0) * (limit - f0) / (f1 - f0)
        area += (limit - f0) * (p0 + p_lim) / 2.0
    return float(area / limit)


def pro_curve(maps, masks, num_thresholds: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The PRO curve ``(fpr, pro)``, both non-decreasing, from ``(0, 0)`` to ``(1, 1)``, for plots.

    Exact by default (every distinct map value is a threshold; collinear points on the horizontal runs
    between defect values are omitted); with ``num_thresholds`` the thresholds are that many values evenly
    spaced between the smallest and largest map value (an approximation). ``(array([nan]), array([nan]))``
    if the masks have no defect pixel or no normal pixel.
    """
    return _PixelData(maps, masks).curve(num_thresholds)


def aupro(maps, masks, fpr_limit: float = 0.3, num_thresholds: int | None = None) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (see the module docstring); ``NaN`` if the
    masks have no defect pixel or no normal pixel. Perfect map: 1.0; constant map: ``fpr_limit / 2``."""
    fpr_limit = _check_limit(fpr_limit)
    return _PixelData(maps, masks).aupro(fpr_limit, num_thresholds)


def pixel_metrics(
    maps, masks, fpr_limit: float = 0.3, num_thresholds: int | None = None
) -> dict[str, float]:
    """``{"P-AUROC", "P-AP", "P-F1max", "AUPRO"}`` of one category, sharing one sort of the pixels."""
    return _pixel_metrics(_PixelData(maps, masks), _check_limit(fpr_limit), num_thresholds)


def _pixel_metrics(
    data: _PixelData, fpr_limit: float, num_thresholds: int | None
) -> dict[str, float]:
    a, p, f = data.rank()
    return {"P-AUROC": a, "P-AP": p, "P-F1max": f, "AUPRO": data.aupro(fpr_limit, num_thresholds)}


# -------------------------------------------------------------------------------------------- per category
def _mad(values: Mapping[str, float]) -> float:
    vals = [float(values[k]) for k in METRIC_NAMES]
    return NAN if any(math.isnan(v) for v in vals) else float(np.mean(vals))


def compute_metrics(
    scores,
    labels,
    maps=None,
    masks=None,
    *,
    fpr_limit: float = 0.3,
    num_thresholds: int | None = None,
) -> dict[str, float]:
    """The seven metrics and ``mAD`` of one category, as a dict of floats in ``[0, 1]`` or ``NaN``.

    Pixel metrics are ``NaN`` when ``maps``/``masks`` are not given (image-only evaluation) or the masks have
    no defect (or no normal) pixel; image metrics are ``NaN`` when ``labels`` lack one class. ``mAD`` is the
    mean of the seven only if all seven are defined, else ``NaN``. Nothing raises for a degenerate category;
    :func:`undefined_reason` explains the NaNs in words.
    """
    s, y = _image_inputs(scores, labels)
    a, p, f = _rank_from_sorted(*_split_sorted(s, y))
    out = {"I-AUROC": a, "I-AP": p, "I-F1max": f}
    if (maps is None) != (masks is None):
        raise ValueError("give both maps and masks for pixel metrics, or neither")
    if maps is None:
        out.update({k: NAN for k in PIXEL_METRICS})
    else:
        fpr_limit = _check_limit(fpr_limit)
        data = _PixelData(maps, masks)
        if data.n_images != s.shape[0]:
            raise ValueError(f"{s.shape[0]} image scores but {data.n_images} anomaly maps")
        out.update(_pixel_metrics(data, fpr_limit, num_thresholds))
    out["mAD"] = _mad(out)
    return out


def false_alarm_rates(scores, labels, categories, threshold: float | None) -> dict | None:
    """How often normal test images are flagged at the calibrated ``threshold`` (score > threshold), per
    category and over all of them: ``{"threshold", "categories": {cat: {"rate", "alarms", "normal"}}, "mean",
    "all"}`` (``mean``: over categories; ``all``: over images). None without a threshold. A category without
    normal test images has rate NaN."""
    if threshold is None:
        return None
    s = np.asarray(scores, dtype=np.float64)
    y = _as_labels(labels)
    cats = np.asarray(categories)
    per = {}
    for cat in sorted(set(cats.tolist())):
        normal = s[(cats == cat) & ~y]
        alarms = int((normal > threshold).sum())
        per[str(cat)] = {
            "rate": alarms / normal.size if normal.size else NAN,
            "alarms": alarms,
            "normal": int(normal.size),
        }
    return combine_false_alarms(per, float(threshold))


def combine_false_alarms(
    per_category: Mapping[str, Mapping], threshold: float | None = None
) -> dict:
    """The :func:`false_alarm_rates` structure from per-category ``{"rate", "alarms", "normal"}`` entries (e.g.
    of per-class models, each at its own threshold: ``threshold`` is then None)."""
    rates = [v["rate"] for v in per_category.values() if not math.isnan(_num(v["rate"]))]
    n_normal = sum(v["normal"] for v in per_category.values())
    return {
        "threshold": threshold,
        "categories": {str(c): dict(v) for c, v in per_category.items()},
        "mean": float(np.mean(rates)) if rates else NAN,
        "all": sum(v["alarms"] for v in per_category.values()) / n_normal if n_normal else NAN,
    }


def verdict_metrics(
    scores, labels, categories, thresholds, routed=None, calibration_n=None
) -> dict:
    """What a user asks of verdicts at per-image ``thresholds`` (one per image: its routed category's, or the
    same number for all), per true category: ``normal``, ``alarms``, ``rate`` (normal test images flagged),
    ``ci95`` (Clopper-Pearson), ``floor`` (1 / (n + 1) for the category's ``calibration_n`` held-out images, when
    given), ``defects``, ``caught``, ``recall``, ``f1``; over all images: ``all`` (pooled false-alarm rate) with
    its ``ci95``, ``mean`` (over categories), ``mean_f1``, ``mean_recall``, and ``routing_accuracy`` (share of
    images whose ``routed`` name is their category; None without routing). The same layout as
    :func:`false_alarm_rates`, so every reader of that keeps working."""
    from .calibration import clopper_pearson, floor_rate, verdict

    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = _as_labels(labels, s.size)
    cats = np.asarray(categories)
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), s.shape)
    flagged = verdict(s, thr)  # the one rule, per image: score > its threshold
    per = {}
    for cat in sorted(set(cats.tolist())):
        m = cats == cat
        normal, defect = m & ~y, m & y
        n, d = int(normal.sum()), int(defect.sum())
        alarms, caught = int((flagged & normal).sum()), int((flagged & defect).sum())
        fn = d - caught
        row = {
            "rate": alarms / n if n else NAN,
            "alarms": alarms,
            "normal": n,
            "ci95": list(clopper_pearson(alarms, n)) if n else None,
            "defects": d,
            "caught": caught,
            "recall": caught / d if d else NAN,
            "f1": 2 * caught / (2 * caught + alarms + fn) if (caught + alarms + fn) else NAN,
        }
        if calibration_n is not None and cat in calibration_n:
            row["calibration_n"] = int(calibration_n[cat])
            row["floor"] = floor_rate(int(calibration_n[cat]))
        per[str(cat)] = row
    out = combine_false_alarms(
        per, float(thr.flat[0]) if thr.size and np.all(thr == thr.flat[0]) else None
    )
    n_all = int((~y).sum())
    out["ci95"] = list(clopper_pearson(int((flagged & ~y).sum()), n_all)) if n_all else None
    out["mean_f1"] = _nanmean([v["f1"] for v in per.values()])
    out["mean_recall"] = _nanmean([v["recall"] for v in per.values()])
    out["routing_accuracy"] = (
        float(np.mean(np.asarray(routed) == cats)) if routed is not None else None
    )
    return out


def defect_aurocs(
    scores, labels, categories, defects, logical: Sequence[str] = LOGICAL_DEFECTS
) -> dict:
    """I-AUROC of each category's normal test images against each of its defect kinds alone, and against
    all its ``structural`` defects (every kind not in ``logical``) and all its ``logical`` ones together:
    ``{cat: {"structural": a, "logical": a, "kinds": {kind: a}}}`` (a group the category has no images of
    is left out). ``defects``: per image, its folder name ("good" for a normal one)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = _as_labels(labels, s.size)
    cats, kinds = np.asarray(categories), np.asarray(defects)
    is_logical = np.isin(kinds, list(logical))
    out = {}
    for cat in sorted(set(cats.tolist())):
        m = cats == cat
        normal = m & ~y
        if not normal.any():
            continue
        row: dict = {"kinds": {}}
        for name, sel in (("structural", m & y & ~is_logical), ("logical", m & y & is_logical)):
            if sel.any():
                row[name] = auroc(s[normal | sel], y[normal | sel])
        for kind in sorted(set(kinds[m & y].tolist())):
            sel = m & y & (kinds == kind)
            row["kinds"][str(kind)] = auroc(s[normal | sel], y[normal | sel])
        out[str(cat)] = row
    return out


def undefined_reason(labels, masks=None) -> str | None:
    """Why some of a category's metrics are ``NaN`` (e.g. ``"no anomalous test images"``), or ``None``.

    ``masks=None`` means no pixel evaluation, which makes the pixel metrics (and mAD) undefined too.
    """
    y = _as_labels(labels)
    reasons = []
    if y.size == 0:
        reasons.append("no test images")
    elif not y.any():
        reasons.append("no anomalous test images")
    elif y.all():
        reasons.append("no normal test images")
    if masks is None:
        reasons.append("no anomaly maps / masks (pixel metrics not computed)")
    else:
        g = _to_numpy(masks) > 0
        if not g.any():
            if y.any():  # otherwise already explained by "no anomalous test images"
                reasons.append("the masks contain no defect pixel")
        elif g.all():
            reasons.append("the masks contain no normal pixel")
    return "; ".join(reasons) or None


# ------------------------------------------------------------------------------------------------- tables
def _num(v) -> float:
    return NAN if v is None else float(v)


def _nanmean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else NAN


def _infer_reason(nan_keys: Sequence[str]) -> str:
    parts = []
    if any(k in nan_keys for k in IMAGE_METRICS):
        parts.append("image metrics undefined (no anomalous or no normal test images)")
    if any(k in nan_keys for k in PIXEL_METRICS):
        parts.append("pixel metrics undefined (no maps, or masks without defect / normal pixels)")
    return "; ".join(parts) or "metrics undefined"


def metrics_table(
    per_category: Mapping[str, Mapping[str, float]],
    setting: str,
    method: str,
    reasons: Mapping[str, str | None] | None = None,
) -> dict:
    """The ``metrics.json`` structure::

        {"setting": "unified" | "per-class", "method": str,
         "categories": {cat: {"I-AUROC": ..., ..., "AUPRO": ..., "mAD": ...}},
         "mean": {same keys}, "warnings": [str, ...]}

    ``per_category`` maps each category to a :func:`compute_metrics` dict (``mAD`` is recomputed if absent).
    ``"mean"`` is the ``nanmean`` over categories of each key (so ``mean["mAD"]`` averages the categories
    whose mAD is defined). Every category with a ``NaN`` gets a warning naming it, the undefined metrics and
    the reason -- ``reasons[cat]`` (e.g. from :func:`undefined_reason`) if given, else a generic one.
    Values must be fractions in ``[0, 1]`` (a value like 97.3 is rejected as a percentage).
    """
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    reasons = dict(reasons or {})
    categories: dict[str, dict[str, float]] = {}
    warnings: list[str] = []
    for cat, values in per_category.items():
        missing = [k for k in METRIC_NAMES if k not in values]
        if missing:
            raise ValueError(
                f"category {cat!r} lacks metrics {missing} (use NaN for undefined ones)"
            )
        row = {k: _num(values[k]) for k in METRIC_NAMES}
        row["mAD"] = _num(values["mAD"]) if "mAD" in values else _mad(row)
        for k, v in row.items():
            if not math.isnan(v) and not -1e-9 <= v <= 1.0 + 1e-9:
                raise ValueError(
                    f"{cat}/{k} = {v} is outside [0, 1]; metrics are fractions, not percentages"
                )
        categories[str(cat)] = row
        nan_keys = [k for k in ALL_KEYS if math.isnan(row[k])]
        if nan_keys:
            why = reasons.get(cat) or _infer_reason(nan_keys)
            warnings.append(
                f"{cat}: {why} -- {', '.join(nan_keys)} undefined (NaN) and excluded from the mean"
            )
    mean = {k: _nanmean([row[k] for row in categories.values()]) for k in ALL_KEYS}
    if categories:
        for k in ALL_KEYS:
            if math.isnan(mean[k]):
                warnings.append(f"mean: {k} is undefined for every category")
    return {
        "setting": setting,
        "method": str(method),
        "categories": categories,
        "mean": mean,
        "warnings": warnings,
    }


def save_metrics(table: Mapping, path) -> None:
    """Write ``table`` as JSON (NaN as ``null``) atomically: a temporary file in the same folder, then
    ``os.replace``, so a crash never leaves a half-written ``metrics.json``."""
    from .files import atomic_write_text, dumps_json

    atomic_write_text(path, dumps_json(table, flags=False, indent=2) + "\n")


def load_metrics(path) -> dict:
    """Read a ``metrics.json``; the ``null`` metric values come back as ``float('nan')``."""
    from .files import read_json_object
    from .ownership import is_metrics

    table = read_json_object(
        path, "a metrics table", "evaluate the run again (python -m unistad_edu eval --run RUN)"
    )
    if not is_metrics(table):
        raise ValueError(
            f"{path} is not a metrics table as `eval` writes it (an object with 'setting', "
            f"'categories' and 'mean'): evaluate the run again (python -m unistad_edu eval --run RUN)"
        )
    for cat, row in table.get("categories", {}).items():
        table["categories"][cat] = {k: _num(v) for k, v in row.items()}
    if "mean" in table:
        table["mean"] = {k: _num(v) for k, v in table["mean"].items()}
    return table
