"""Calibration: which product an image shows, and the threshold that product's normal images support.

A unified model gives every image one anomaly score; the scores of different products' *normal* images sit at
different heights, so one threshold for all products flags some products' normal images far more often than
others. This module gives every image the threshold of its own product without being told the product:

* **Routing** (:class:`Router`): the frozen teacher's image embedding (the global average pool of its deepest
  level, L2-normalised; a ViT's class token) tells products apart from pixels alone. Each training category
  gets a centroid; a test image goes to the nearest one, and one farther from every centroid than
  :data:`UNLIKE_FACTOR` x the largest spread of any category's own training images (the 99 % quantile of their
  cosine distances to their centroid) is reported as unlike anything trained on. The category folders of the training data name the groups (the user made them;
  the model still never reads a label); a data root of one folder of mixed products is grouped by k-means of
  the embeddings instead, k chosen by silhouette up to :data:`MAX_GROUPS` (:func:`cluster`).
* **A threshold per group** (:func:`tail_threshold`): from that group's held-out normal scores, as the
  ``quantile`` of a fitted tail model rather than an order statistic of a handful of images. A group with
  fewer than :data:`MIN_TAIL` held-out normals gets the pooled threshold of all held-out images (recorded as
  its rule). Also the standardised score ``(s - mean_c) / std_c`` of the routed group, one scale for every
  product.
* **One verdict rule** (:func:`verdict`): ``score > threshold``.

The kind of calibration travels with the run (``config.json["calibration"]``) and its exports; a run saved
before this module (one pooled threshold) loads as kind ``"global"``. Numpy and scipy only, no torch: served
exports use it too. Measurements of the tail models and of routing: ``docs/benchmarks.md``, "Calibration".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

TAILS = ("lognormal", "normal", "empirical", "gpd", "shared")
KINDS = ("global", "per-category", "clusters")
#: the tail model a run uses unless told otherwise (chosen on held-out normals, docs/benchmarks.md)
DEFAULT_TAIL = "lognormal"
#: fewer held-out normals than this in a group: no tail is fitted, the group gets the pooled threshold
MIN_TAIL = 5
#: an image this many times farther from every centroid than the most spread-out group's own images is "unlike"
UNLIKE_FACTOR = 2.0
#: most pseudo-categories :func:`cluster` makes from a folder of mixed products
MAX_GROUPS = 8
EMBEDDING = "teacher image embedding (global average pool of the deepest level, or a ViT's class token), L2-normalised"


def verdict(score, threshold):
    """The one verdict rule: anomalous when ``score > threshold``; None without a threshold. Works on numbers
    (-> bool) or arrays (-> bool array; ``threshold`` one number or one per score)."""
    if threshold is None:
        return None
    out = np.asarray(score, dtype=np.float64) > np.asarray(threshold, dtype=np.float64)
    return bool(out) if out.ndim == 0 else out


def normalise(emb) -> np.ndarray:
    """Rows scaled to unit length: (N, D) float64."""
    e = np.asarray(emb, dtype=np.float64)
    if e.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {e.shape}")
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


# ---- tail models ---------------------------------------------------------------------------------------------
def tail_threshold(scores, quantile: float = 0.99, tail: str = DEFAULT_TAIL) -> tuple[float, str]:
    """The score a new normal image of this group exceeds with probability about ``1 - quantile``, from the
    group's held-out normal ``scores``. Returns ``(threshold, the tail actually used)``.

    * ``empirical``: the ``quantile`` of the scores (with n of them it cannot resolve a rate below 1/(n+1)).
    * ``normal``: the one-sided normal **prediction bound** ``mean + t_{q, n-1} * sd * sqrt(1 + 1/n)`` -- for
      normal scores a new image exceeds it with probability exactly ``1 - q``, the estimation error of mean and
      sd included (``mean + z_q * sd`` would promise 1 % and deliver more at n = 10).
    * ``lognormal``: the same bound on ``log(score)``, for right-skewed positive scores; falls back to
      ``normal`` when a score is not positive (the tail used is returned).
    * ``gpd``: peaks over the median: a generalised Pareto fitted (scipy, location 0) to the exceedances,
      extrapolated to ``1 - quantile``; falls back to ``normal`` below 8 exceedances.
    """
    from scipy import stats

    s = np.asarray(scores, dtype=np.float64).ravel()
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, got {tail!r}")
    if tail == "shared":
        return shared_thresholds({"one": s}, quantile)["one"], "shared"
    if s.size == 0 or not np.all(np.isfinite(s)):
        raise ValueError("tail_threshold needs finite scores")
    if s.size < 2 or tail == "empirical":
        return float(np.quantile(s, quantile)), "empirical"
    if tail == "lognormal" and np.all(s > 0):
        return float(np.exp(_prediction_bound(np.log(s), quantile))), "lognormal"
    if tail == "gpd":
        u = float(np.median(s))
        y = s[s > u] - u
        if y.size >= 8:
            shape, _, scale = stats.genpareto.fit(y, floc=0.0)
            p_exceed = y.size / s.size  # P(S > u)
            return float(
                u + stats.genpareto.ppf(1.0 - (1.0 - quantile) / p_exceed, shape, 0.0, scale)
            ), "gpd"
    return float(_prediction_bound(s, quantile)), "normal"


def robust_scale(x) -> float:
    """1.4826 x the median absolute deviation (the standard deviation for normal data, unmoved by one outlier);
    the sample standard deviation where the MAD is 0."""
    x = np.asarray(x, dtype=np.float64)
    mad = 1.4826 * float(np.median(np.abs(x - np.median(x))))
    return mad if mad > 0 else float(x.std(ddof=1)) if x.size > 1 else 1.0


def shared_thresholds(groups: dict, quantile: float = 0.99) -> dict:
    """The ``shared`` tail: each group keeps its own location and scale (median and :func:`robust_scale` of its
    held-out scores), and the tail's *shape* is estimated once from every group's images together -- the
    ``quantile`` of all standardised scores ``(s - median_g) / scale_g`` pooled. A group of 10 normals then
    needs only a location and a scale, while the rare tail is measured on all of them (80-odd images, not 10).
    Returns ``{group: median_g + z_q * scale_g}``."""
    std = {
        k: (np.median(v), robust_scale(v))
        for k, v in ((k, np.asarray(v, np.float64)) for k, v in groups.items())
    }
    z = np.concatenate(
        [(np.asarray(v, np.float64) - std[k][0]) / std[k][1] for k, v in groups.items()]
    )
    zq = float(np.quantile(z, quantile))
    return {k: float(m + zq * sc) for k, (m, sc) in std.items()}


def _prediction_bound(x: np.ndarray, quantile: float) -> float:
    from scipy import stats

    n = x.size
    sd = float(x.std(ddof=1))
    return float(x.mean() + stats.t.ppf(quantile, n - 1) * sd * math.sqrt(1.0 + 1.0 / n))


# ---- routing -------------------------------------------------------------------------------------------------
@dataclass
class Router:
    """Nearest-centroid routing of image embeddings to the training groups (cosine distance)."""

    names: list[str]
    centroids: np.ndarray  # (K, D) unit rows
    radius: np.ndarray  # (K,) cosine distance beyond which an image is unlike group k

    @classmethod
    def fit(cls, emb, groups, factor: float = UNLIKE_FACTOR) -> "Router":
        """Centroid and radius of every group from its training images' embeddings ``emb`` (N, D)."""
        e = normalise(emb)
        groups = np.asarray(groups)
        if len(groups) != len(e):
            raise ValueError(f"{len(e)} embeddings but {len(groups)} group names")
        names = sorted(set(groups.tolist()))
        cents, spread = [], []
        for name in names:
            own = e[groups == name]
            c = normalise(own.mean(axis=0, keepdims=True))[0]
            cents.append(c)
            spread.append(float(np.quantile(1.0 - own @ c, 0.99)))
        # one radius for all: a tight category (every bottle photographed alike) would otherwise call its own
        # defective images "unlike anything" (docs/benchmarks.md, "Calibration")
        radius = factor * max(max(spread), 1e-3)
        return cls(names, np.stack(cents), np.full(len(names), radius))

    def distances(self, emb) -> np.ndarray:
        """(N, K) cosine distances of ``emb`` to every centroid."""
        return 1.0 - normalise(emb) @ self.centroids.T

    def route(self, emb) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(group index (N,), distance to it (N,), unlike every group (N,) bool)``."""
        d = self.distances(emb)
        idx = d.argmin(axis=1)
        unlike = np.all(d > self.radius[None, :], axis=1)
        return idx, d[np.arange(len(d)), idx], unlike

    def to_json(self) -> dict:
        return {
            name: {"centroid": [round(float(v), 7) for v in c], "radius": float(r)}
            for name, c, r in zip(self.names, self.centroids, self.radius)
        }

    @classmethod
    def from_json(cls, d: dict) -> "Router":
        names = list(d)
        return cls(
            names,
            normalise([d[n]["centroid"] for n in names]),
            np.asarray([float(d[n]["radius"]) for n in names]),
        )


def cluster(
    emb, max_groups: int = MAX_GROUPS, min_size: int = 5, seed: int = 0, min_silhouette: float = 0.5
) -> tuple[np.ndarray, dict]:
    """Pseudo-categories for a folder of mixed products: k-means on the unit embeddings for every k from 2 to
    ``max_groups`` (and no more than N / ``min_size``), keeping the k with the best silhouette; one group when
    no k reaches ``min_silhouette``. Returns ``(group name of each image, {"k", "silhouette": {k: value}})``."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    e = normalise(emb)
    best, best_labels, scores = None, np.zeros(len(e), dtype=int), {}
    for k in range(2, min(max_groups, len(e) // max(min_size, 1)) + 1):
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(e)
        if np.bincount(labels).min() < 2:
            continue
        scores[k] = round(float(silhouette_score(e, labels, metric="cosine")), 4)
        if scores[k] >= min_silhouette and (best is None or scores[k] > scores[best]):
            best, best_labels = k, labels
    names = np.array([f"group-{i + 1}" for i in best_labels])
    return names, {"k": best or 1, "silhouette": scores}


# ---- the calibration of a run --------------------------------------------------------------------------------
@dataclass
class Calibration:
    """How a run turns a score (and the image's embedding) into a verdict.

    ``kind``: ``"global"`` (one pooled threshold for every image; runs saved before per-category calibration),
    ``"per-category"`` (routed to the training category folders) or ``"clusters"`` (routed to pseudo-categories
    of a mixed folder). ``groups``: per group ``{"n", "mean", "std", "threshold", "rule"}``.
    """

    kind: str
    quantile: float
    global_threshold: float | None
    tail: str | None = None
    router: Router | None = None
    groups: dict[str, dict] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def routed(self) -> bool:
        return self.kind != "global" and self.router is not None

    def describe(self) -> str:
        if not self.routed:
            return "one threshold for all categories" + (
                f" ({self.global_threshold:.4g})"
                if self.global_threshold is not None
                else " (none)"
            )
        what = (
            "its training category"
            if self.kind == "per-category"
            else "its pseudo-category (k-means)"
        )
        return (
            f"each image routed by its teacher embedding to {what}; that group's threshold = the "
            f"{self.quantile:g} quantile of a {self.tail} tail fitted to its held-out normal scores"
        )

    def decide(self, scores, emb=None, threshold: float | None = None) -> list[dict]:
        """Per image: ``category`` (routed; None for kind global), ``threshold``, ``score``, ``z`` (standardised
        by the routed group's normal scores; None for kind global), ``anomalous`` (:func:`verdict`) and
        ``notice`` (unlike every training group, else None). ``threshold`` overrides every group's."""
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        n = len(scores)
        if self.routed and emb is None:
            raise ValueError("a routed calibration needs the images' embeddings")
        idx, dist, unlike = (
            self.router.route(emb)
            if self.routed
            else (np.zeros(n, int), np.zeros(n), np.zeros(n, bool))
        )
        out = []
        for i in range(n):
            name = self.router.names[idx[i]] if self.routed else None
            g = self.groups.get(name, {}) if name is not None else {}
            thr = (
                threshold
                if threshold is not None
                else (g.get("threshold") if self.routed else self.global_threshold)
            )
            z = (scores[i] - g["mean"]) / max(g["std"], 1e-12) if g.get("std") is not None else None
            out.append(
                {
                    "category": name,
                    "threshold": thr,
                    "score": float(scores[i]),
                    "z": None if z is None else float(z),
                    "anomalous": verdict(scores[i], thr),
                    "distance": float(dist[i]) if self.routed else None,
                    "notice": (
                        f"unlike anything this model was trained on: its embedding is "
                        f"{UNLIKE_FACTOR * dist[i] / self.router.radius[idx[i]]:.1f} x farther from the "
                        f"nearest category ({name}) than the training images of any category go"
                        if self.routed and unlike[i]
                        else None
                    ),
                }
            )
        return out

    def to_json(self) -> dict:
        d = {
            "kind": self.kind,
            "quantile": self.quantile,
            "tail": self.tail,
            "embedding": EMBEDDING,
            "global_threshold": self.global_threshold,
            "groups": self.groups,
            **self.info,
        }
        if self.router is not None:
            d["router"] = self.router.to_json()
        return d

    @classmethod
    def from_json(
        cls, d: dict | None, threshold: float | None = None, quantile: float = 0.99
    ) -> "Calibration":
        """From ``config.json["calibration"]``; ``d`` None (a run saved before per-category calibration): kind
        ``"global"`` with the run's one ``threshold``."""
        if not d:
            return cls(
                "global",
                quantile,
                threshold,
                info={
                    "note": "saved before per-category calibration: "
                    "one threshold for all categories"
                },
            )
        kind = d.get("kind")
        if kind not in KINDS:
            raise ValueError(f"calibration kind must be one of {KINDS}, got {kind!r}")
        info = {
            k: v
            for k, v in d.items()
            if k
            not in ("kind", "quantile", "tail", "global_threshold", "groups", "router", "embedding")
        }
        router = Router.from_json(d["router"]) if d.get("router") else None
        return cls(
            kind,
            float(d.get("quantile", quantile)),
            d.get("global_threshold", threshold),
            d.get("tail"),
            router,
            {str(k): dict(v) for k, v in (d.get("groups") or {}).items()},
            info,
        )


def check_calibration(d) -> None:
    """Refuse a saved calibration block whose fields are not what :meth:`Calibration.from_json` reads: a known
    kind, finite numbers, centroids of one length, a threshold for every routed group. Raises ValueError naming
    the field."""

    def num(field, v, allow_none=False):
        if v is None and allow_none:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"calibration.{field} is {v!r}, expected a finite number")

    if not isinstance(d, dict):
        raise ValueError(f"calibration is {type(d).__name__}, expected an object")
    if d.get("kind") not in KINDS:
        raise ValueError(f"calibration.kind is {d.get('kind')!r}, expected one of {KINDS}")
    num("quantile", d.get("quantile"))
    if not 0 < d["quantile"] < 1:
        raise ValueError(f"calibration.quantile is {d['quantile']!r}, expected a number in (0, 1)")
    num("global_threshold", d.get("global_threshold"), allow_none=True)
    groups = d.get("groups") or {}
    if not isinstance(groups, dict):
        raise ValueError("calibration.groups is not an object")
    for name, g in groups.items():
        if not isinstance(g, dict):
            raise ValueError(f"calibration.groups.{name} is not an object")
        for key in ("mean", "std", "threshold"):
            num(
                f"groups.{name}.{key}",
                g.get(key),
                allow_none=key != "threshold" or d["kind"] == "global",
            )
        if not isinstance(g.get("scores", []), list):
            raise ValueError(f"calibration.groups.{name}.scores is not a list of numbers")
        for v in g.get("scores", []):
            num(f"groups.{name}.scores", v)
    if d["kind"] == "global":
        return
    router = d.get("router")
    if not isinstance(router, dict) or not router:
        raise ValueError(
            f"calibration.router is {router!r}, expected the routing centroids of kind {d['kind']}"
        )
    dims = set()
    for name, r in router.items():
        if name not in groups:
            raise ValueError(
                f"calibration.router.{name} has no group statistics (calibration.groups.{name})"
            )
        c = r.get("centroid") if isinstance(r, dict) else None
        if not isinstance(c, list) or not c:
            raise ValueError(f"calibration.router.{name}.centroid is not a list of numbers")
        for v in c:
            num(f"router.{name}.centroid", v)
        dims.add(len(c))
        num(f"router.{name}.radius", r.get("radius"))
    if len(dims) != 1:
        raise ValueError(f"calibration.router centroids have different lengths {sorted(dims)}")


def fit_calibration(
    held_scores,
    held_groups,
    train_emb,
    train_groups,
    quantile: float = 0.99,
    tail: str = DEFAULT_TAIL,
    kind: str = "per-category",
    held_emb=None,
    seed: int = 0,
    min_tail: int = MIN_TAIL,
) -> Calibration:
    """A run's :class:`Calibration` from its held-out normal scores and its training embeddings.

    ``kind``: ``"per-category"`` (``train_groups`` / ``held_groups`` are the category folders), ``"clusters"``
    (groups made by :func:`cluster` from ``train_emb``; held-out images grouped by routing ``held_emb``), or
    ``"global"`` (one pooled threshold). The pooled ``quantile`` of all held-out scores is kept as the global
    threshold in every kind (a group below ``min_tail`` held-out normals uses it)."""
    s = np.asarray(held_scores, dtype=np.float64).ravel()
    if kind not in KINDS:
        raise ValueError(f"calibration kind must be one of {KINDS}, got {kind!r}")
    pooled = float(np.quantile(s, quantile)) if s.size else None
    if kind == "global" or s.size == 0:
        return Calibration("global", quantile, pooled)
    info = {}
    if kind == "clusters":
        train_groups, info["clustering"] = cluster(train_emb, seed=seed)
    router = Router.fit(train_emb, train_groups)
    if kind == "clusters":
        if held_emb is None:
            raise ValueError("kind 'clusters' needs the held-out images' embeddings")
        held_groups = np.asarray(router.names)[router.route(held_emb)[0]]
    held_groups = np.asarray(held_groups)
    fitted = {name: s[held_groups == name] for name in router.names}
    groups = _group_thresholds(fitted, pooled, s.size, quantile, tail, min_tail)
    return Calibration(kind, quantile, pooled, tail, router, groups, info)


def _group_thresholds(
    fitted: dict, pooled: float, n_held: int, quantile: float, tail: str, min_tail: int
) -> dict:
    """Each group's held-out statistics and threshold, with the rule that set it, from its
    held-out normal scores (``fitted``: name -> scores); below ``min_tail``: the ``pooled`` one."""
    groups = {}
    shared = (
        shared_thresholds({k: v for k, v in fitted.items() if v.size >= min_tail}, quantile)
        if tail == "shared" and any(v.size >= min_tail for v in fitted.values())
        else {}
    )
    for name, v in fitted.items():
        g = {
            "n": int(v.size),
            "mean": float(v.mean()) if v.size else None,
            "std": float(v.std(ddof=1)) if v.size > 1 else None,
            "scores": [round(float(x), 6) for x in np.sort(v)],
        }  # kept: another tail can be fitted later
        if v.size >= min_tail and tail == "shared":
            g["threshold"] = shared[name]
            g["rule"] = (
                f"shared tail: median + z x scale of its {v.size} held-out normals, z = the {quantile:g} "
                f"quantile of the standardised held-out scores of {len(shared)} categories"
            )
        elif v.size >= min_tail:
            g["threshold"], used = tail_threshold(v, quantile, tail)
            g["rule"] = f"{used} tail of {v.size} held-out normals, quantile {quantile:g}"
        else:
            g["threshold"] = pooled
            g["rule"] = (
                f"only {v.size} held-out normal(s) (< {min_tail}): the pooled quantile {quantile:g} of "
                f"all {n_held} held-out images"
            )
        groups[name] = g
    return groups


# ---- what a user asks of verdicts ------------------------------------------------------------------------------
def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided ``level`` interval of a rate seen as ``k`` of ``n``."""
    from scipy import stats

    if n <= 0:
        return (0.0, 1.0)
    a = (1.0 - level) / 2.0
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1.0 - a, k + 1, n - k))
    return lo, hi


def floor_rate(n: int) -> float:
    """The smallest false-alarm rate ``n`` calibration images can show: an order statistic of n scores cannot
    resolve a tail rarer than 1 / (n + 1) (a fitted tail model extrapolates past it, on its assumption)."""
    return 1.0 / (n + 1)


# ---- choosing a tail model on validation data -------------------------------------------------------------------
def loo_groups(
    groups: dict, quantile: float = 0.99, tail: str = DEFAULT_TAIL, min_tail: int = MIN_TAIL
) -> dict:
    """:func:`loo_exceedances` for every group of held-out scores ``{name: scores}`` with at least ``min_tail``;
    for the ``shared`` tail each image is left out of its group *and* of the pool. ``{name: (hits, n)}``."""
    groups = {k: np.asarray(v, np.float64) for k, v in groups.items() if len(v) >= min_tail}
    if tail != "shared":
        return {k: loo_exceedances(v, quantile, tail) for k, v in groups.items()}
    out = {}
    for k, v in groups.items():
        hits = 0
        for i in range(v.size):
            rest = {**groups, k: np.delete(v, i)}
            hits += bool(v[i] > shared_thresholds(rest, quantile)[k])
        out[k] = (hits, int(v.size))
    return out


def loo_exceedances(scores, quantile: float = 0.99, tail: str = DEFAULT_TAIL) -> tuple[int, int]:
    """Leave-one-out check of a tail model on one group's held-out normal scores: each score is left out in turn,
    the threshold fitted to the others, and counted when it lies above. Returns ``(exceedances, n)``; for a tail
    that holds its promise, exceedances / n is about ``1 - quantile``."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    hits = sum(
        bool(s[i] > tail_threshold(np.delete(s, i), quantile, tail)[0]) for i in range(s.size)
    )
    return int(hits), int(s.size)


#: the score distributions :func:`simulate_tail` draws from: shapes a normal image's score may take
SHAPES = {
    "normal": lambda rng, n: rng.normal(10.0, 1.0, n),
    "lognormal (sd 0.3)": lambda rng, n: rng.lognormal(0.0, 0.3, n),
    "gamma (shape 4)": lambda rng, n: rng.gamma(4.0, 1.0, n),
    "heavy (1 + Pareto, a 4)": lambda rng, n: 1.0 + rng.pareto(4.0, n),
    "outlier mix (10 % x 1.5)": lambda rng, n: (
        rng.lognormal(0.0, 0.15, n) * np.where(rng.random(n) < 0.1, 1.5, 1.0)
    ),
}


def simulate_tail(
    tail: str,
    shape: str,
    n: int,
    quantile: float = 0.99,
    trials: int = 2000,
    seed: int = 0,
    fresh: int = 2000,
) -> float:
    """The false-alarm rate a tail model delivers when a group's normal scores follow ``shape``: ``trials``
    calibration sets of ``n`` scores, each threshold checked against ``fresh`` new normal scores of the same
    shape. Returns the mean rate (target: ``1 - quantile``)."""
    rng = np.random.default_rng(seed)
    draw = SHAPES[shape]
    if (
        tail == "shared"
    ):  # five groups of n, each its own location and scale, one shape: the model's premise
        rates = []
        for _ in range(trials):
            shift = {k: (rng.uniform(0.5, 2.0), rng.uniform(-1.0, 1.0)) for k in range(5)}
            thr = shared_thresholds(
                {k: a * draw(rng, n) + b for k, (a, b) in shift.items()}, quantile
            )
            rates += [
                float(np.mean(a * draw(rng, fresh // 5) + b > thr[k]))
                for k, (a, b) in shift.items()
            ]
        return float(np.mean(rates))
    rates = [
        float(np.mean(draw(rng, fresh) > tail_threshold(draw(rng, n), quantile, tail)[0]))
        for _ in range(trials)
    ]
    return float(np.mean(rates))
