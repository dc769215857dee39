"""How sure is a number? A bootstrap interval for one AUROC, a paired comparison of two methods over seeds.

A category's test set holds 14-142 defective images here, so one image-AUROC moves by several points with
the images that happened to be photographed; and three seeds of a method spread by a point or more. Two
questions, two tools:

* :func:`bootstrap_auroc` -- *how much would this AUROC move with other test images of the same kind?*
  Resample the normal and the defective images separately, with replacement (a stratified bootstrap: every
  resample keeps both kinds in their numbers), recompute the AUROC each time, and report the 2.5 % and 97.5 %
  points of those values (the percentile interval). It describes the test set's sampling, not the training.
* :func:`paired_seeds` -- *is method A better than method B, given the seeds?* Pair the runs by seed (the
  same data order and split), take the differences, and report their mean with a t interval, the paired
  t-test's p-value and an exact sign-flip permutation p-value. With three seeds the sign-flip test can never
  go below 0.25: three seeds show a spread, they cannot settle a small difference.

The functions take plain arrays; ``metrics.json`` holds no per-image scores, so lessons and reports call
them on the scores of ``inference.score_dataset``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties counted half): the probability that a random defective image scores
    above a random normal one -- the Mann-Whitney U statistic divided by n_normal * n_defect."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUROC needs normal and defective images")
    order = np.argsort(np.concatenate([neg, pos]), kind="mergesort")
    ranks = np.empty(len(order))
    values = np.concatenate([neg, pos])[order]
    # average ranks over ties (1-based)
    starts = np.r_[0, np.flatnonzero(np.diff(values)) + 1]
    ends = np.r_[starts[1:], len(values)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    u = ranks[len(neg) :].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


@dataclass(frozen=True)
class Interval:
    """A point estimate and its interval, at ``level`` (e.g. 0.95)."""

    value: float
    low: float
    high: float
    level: float

    def __str__(self) -> str:
        return f"{100 * self.value:.1f} [{100 * self.low:.1f}, {100 * self.high:.1f}]"


def bootstrap_auroc(
    labels, scores, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> Interval:
    """The image AUROC of ``scores`` (higher = more anomalous) against ``labels`` (1 = defective) with a
    stratified percentile bootstrap interval (module docstring): ``n_boot`` resamples, seeded."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 100:
        raise ValueError(f"n_boot must be at least 100 for a percentile interval, got {n_boot}")
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("a bootstrap AUROC needs normal and defective images")
    rng = np.random.default_rng(seed)
    # a resample with replacement = how many times each image is drawn (multinomial counts), so each
    # resample's AUROC is counts_pos @ K @ counts_neg over the pair matrix K (1 above, 1/2 tied, 0 below)
    k = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])  # (n_pos, n_neg)
    cp = rng.multinomial(len(pos), np.full(len(pos), 1 / len(pos)), size=n_boot)  # (B, n_pos)
    cn = rng.multinomial(len(neg), np.full(len(neg), 1 / len(neg)), size=n_boot)  # (B, n_neg)
    values = ((cp @ k) * cn).sum(axis=1) / (len(pos) * len(neg))
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return Interval(auroc(labels, scores), float(low), float(high), level)


@dataclass(frozen=True)
class PairedComparison:
    """Method A minus method B over paired seeds: the differences, their mean with a t interval, the paired
    t-test's two-sided p-value and the exact sign-flip permutation p-value."""

    differences: tuple[float, ...]
    mean: float
    low: float
    high: float
    level: float
    t: float
    p_t: float
    p_sign_flip: float

    def __str__(self) -> str:
        return (
            f"A - B = {self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}] over {len(self.differences)} "
            f"seeds (paired t p = {self.p_t:.3f}, sign-flip p = {self.p_sign_flip:.3f})"
        )


def paired_seeds(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> PairedComparison:
    """Compare ``a[i]`` with ``b[i]`` (the same seed i) -- see the module docstring. Needs at least 2 pairs."""
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"a and b must be paired lists of the same length, got {a.shape} and {b.shape}"
        )
    if len(a) < 2:
        raise ValueError("a paired comparison needs at least 2 seeds")
    d = a - b
    n, mean, sd = len(d), float(d.mean()), float(d.std(ddof=1))
    q = float(stats.t.ppf(0.5 + level / 2, n - 1))
    half = q * sd / math.sqrt(n)
    if sd == 0:
        t, p_t = (
            (math.inf if mean > 0 else -math.inf if mean < 0 else 0.0),
            (0.0 if mean != 0 else 1.0),
        )
    else:
        t = mean / (sd / math.sqrt(n))
        p_t = float(2 * stats.t.sf(abs(t), n - 1))
    # exact sign-flip: under "no difference" each difference's sign is a fair coin
    flips = np.array(list(itertools.product((1.0, -1.0), repeat=n))) if n <= 16 else None
    if flips is None:
        raise ValueError("the exact sign-flip test enumerates 2^n sign patterns: at most 16 seeds")
    means = (flips * np.abs(d)).mean(axis=1)
    p_flip = float(np.mean(np.abs(means) >= abs(mean) - 1e-12))
    return PairedComparison(
        tuple(float(x) for x in d), mean, mean - half, mean + half, level, float(t), p_t, p_flip
    )
