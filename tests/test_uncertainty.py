"""Uncertainty tools against independent references: sklearn's AUROC, the exact bootstrap distribution of a
tiny set (every resample enumerated), coverage on data with a known AUROC, scipy's paired t-test and a
hand-enumerated sign-flip test."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from unistad_edu.uncertainty import auroc, bootstrap_auroc, paired_seeds


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: many ties
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_bootstrap_matches_the_exact_distribution_of_a_tiny_set():
    pos, neg = np.array([0.9, 0.4, 0.7]), np.array([0.5, 0.1, 0.4])
    labels, scores = np.r_[np.ones(3), np.zeros(3)], np.r_[pos, neg]
    # every stratified resample (3^3 x 3^3 ordered draws, equally likely) and its AUROC, by sklearn
    values = []
    for ip in itertools.product(range(3), repeat=3):
        for ineg in itertools.product(range(3), repeat=3):
            values.append(
                roc_auc_score(np.r_[np.ones(3), np.zeros(3)], np.r_[pos[list(ip)], neg[list(ineg)]])
            )
    exact = np.quantile(values, [0.025, 0.975])
    got = bootstrap_auroc(labels, scores, n_boot=20000, seed=1)
    assert got.value == pytest.approx(roc_auc_score(labels, scores))
    assert got.low == pytest.approx(exact[0], abs=0.06) and got.high == pytest.approx(
        exact[1], abs=0.06
    )
    assert not (got.low == got.high)  # a real spread, not a point


def test_the_interval_covers_a_known_auroc_about_95_percent_of_the_time():
    d = 1.0
    true = stats.norm.cdf(d / math.sqrt(2))  # AUROC of N(d, 1) against N(0, 1)
    rng = np.random.default_rng(0)
    covered = 0
    sims = 300
    for s in range(sims):
        pos, neg = rng.normal(d, 1, 40), rng.normal(0, 1, 60)
        iv = bootstrap_auroc(np.r_[np.ones(40), np.zeros(60)], np.r_[pos, neg], n_boot=400, seed=s)
        covered += iv.low <= true <= iv.high
    assert 0.88 <= covered / sims <= 0.99  # percentile bootstrap: close to nominal at these sizes


def test_bootstrap_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="normal and defective"):
        bootstrap_auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="level"):
        bootstrap_auroc([0, 1], [0.1, 0.2], level=1.5)


@pytest.mark.parametrize(
    "a, b",
    [
        ([93.1, 92.0, 94.5], [90.2, 91.9, 92.0]),
        ([80.0, 85.0, 82.0, 81.0, 79.5], [81.0, 83.0, 82.5, 80.0, 80.0]),
        ([1.0, 2.0], [0.5, 2.5]),
    ],
)
def test_paired_comparison_matches_scipy_and_a_hand_enumerated_sign_flip(a, b):
    got = paired_seeds(a, b)
    ref = stats.ttest_rel(a, b)
    assert got.t == pytest.approx(ref.statistic) and got.p_t == pytest.approx(ref.pvalue)
    d = np.subtract(a, b)
    n = len(d)
    ci = stats.t.interval(0.95, n - 1, loc=d.mean(), scale=stats.sem(d))
    assert (got.low, got.high) == pytest.approx(ci)
    count = sum(
        abs(np.mean([s * abs(x) for s, x in zip(signs, d)])) >= abs(d.mean()) - 1e-12
        for signs in itertools.product((1, -1), repeat=n)
    )
    assert got.p_sign_flip == pytest.approx(count / 2**n)


def test_three_seeds_cannot_settle_a_difference_by_sign_flips():
    got = paired_seeds(
        [95.0, 96.0, 97.0], [90.0, 90.5, 91.0]
    )  # A better on every seed, by 5-6 points
    assert got.p_sign_flip == pytest.approx(0.25) and got.p_t < 0.05 and got.low > 0


def test_eval_reports_an_interval_around_each_categorys_auroc(demo_run, demo_data):
    from unistad_edu.checkpoint import load_checkpoint
    from unistad_edu.data import MVTecDataset
    from unistad_edu.inference import evaluate

    model = load_checkpoint(demo_run)
    test = MVTecDataset(demo_data, "test", image_size=model.cfg.image_size)
    table, res = evaluate(model, test, progress=False, pixel=False, return_outputs=True)
    for cat, row in table["categories"].items():
        idx = res["categories"] == cat
        lo, hi = table["intervals"][cat]["I-AUROC"]
        assert row["I-AUROC"] == pytest.approx(
            roc_auc_score(res["labels"][idx], res["scores"][idx])
        )
        assert lo <= row["I-AUROC"] <= hi and 0 <= lo <= hi <= 1
    assert table["intervals"]["level"] == 0.95
    from unistad_edu.report import format_intervals

    line = format_intervals(table)
    assert "bootstrap" in line and all(cat in line for cat in table["categories"])
