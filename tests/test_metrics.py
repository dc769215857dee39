"""Metrics against independent references: scikit-learn, brute-force loops and hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from unistad_edu.metrics import (
    ALL_KEYS,
    METRIC_NAMES,
    aupro,
    auroc,
    average_precision,
    compute_metrics,
    f1_max,
    load_metrics,
    metrics_table,
    pixel_metrics,
    pro_curve,
    save_metrics,
    undefined_reason,
)
from unistad_edu.report import format_table


# ------------------------------------------------------------------------------------------------ references
def brute_f1max(scores, labels, use_sklearn=False):
    """Max F1 over every threshold 'score >= t', t a distinct score value: with sklearn's f1_score (slow,
    for few thresholds) or by counting TP / FP / FN directly."""
    scores, labels = np.asarray(scores), np.asarray(labels).astype(bool)
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        if use_sklearn:
            f1 = f1_score(labels, pred, zero_division=0)
        else:
            tp = np.count_nonzero(pred & labels)
            fp = np.count_nonzero(pred & ~labels)
            fn = np.count_nonzero(~pred & labels)
            f1 = 2 * tp / (2 * tp + fp + fn)
        best = max(best, f1)
    return best


def brute_aupro(maps, masks, limit=0.3):
    """PRO curve by explicit loops: thresholds = +inf and every distinct map value; FPR over all normal pixels;
    PRO = mean over the 8-connected regions of each image; trapezoid to `limit` with linear interpolation."""
    maps, masks = np.asarray(maps, dtype=np.float64), np.asarray(masks) > 0
    regions = []
    for img, msk in zip(maps, masks):
        lab, n = ndimage.label(msk, structure=np.ones((3, 3)))
        for r in range(1, n + 1):
            regions.append(img[lab == r])
    normal = maps[~masks]
    points = []
    for t in [np.inf] + sorted(np.unique(maps).tolist(), reverse=True):
        fpr = np.count_nonzero(normal >= t) / normal.size
        pro = sum(np.count_nonzero(reg >= t) / reg.size for reg in regions) / len(regions)
        points.append((fpr, pro))
    area = 0.0
    for (f0, p0), (f1, p1) in zip(points[:-1], points[1:]):
        if f0 >= limit:
            break
        if f1 > limit:  # interpolate the curve exactly at the limit
            p1 = p0 + (p1 - p0) * (limit - f0) / (f1 - f0)
            f1 = limit
        area += (f1 - f0) * (p0 + p1) / 2
    return area / limit


# ------------------------------------------------------------------------------------------------ image level
@pytest.mark.parametrize("seed", range(6))
def test_rank_metrics_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = rng.integers(0, 6, n) + labels * rng.integers(
        0, 3, n
    )  # few distinct values: many ties
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )
    assert f1_max(scores, labels) == pytest.approx(
        brute_f1max(scores, labels, use_sklearn=True), abs=1e-12
    )


@pytest.mark.parametrize("seed", range(4))
def test_rank_metrics_match_sklearn_without_ties(seed):
    rng = np.random.default_rng(100 + seed)
    labels = (rng.random(500) < 0.2).astype(int)
    scores = rng.normal(size=500) + labels
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )
    assert f1_max(scores, labels) == pytest.approx(brute_f1max(scores, labels), abs=1e-12)


def test_hand_computed_small_case():
    # descending: 0.9(+) 0.8(-) 0.7(+) 0.7(-) 0.1(-)
    scores = [0.9, 0.8, 0.7, 0.7, 0.1]
    labels = [1, 0, 1, 0, 0]
    # pairs (pos, neg): 0.9 beats all 3; 0.7 beats 0.1, ties 0.7, loses to 0.8 -> (3 + 1 + 0.5) / 6
    assert auroc(scores, labels) == pytest.approx(4.5 / 6)
    # thresholds 0.9: P=1 R=1/2; 0.7: TP=2, FP=2 -> P=1/2, R=1 -> AP = 1/2*1 + 1/2*1/2
    assert average_precision(scores, labels) == pytest.approx(0.75)
    # F1 at 0.9: 2*1/(1+0+2)=2/3; at 0.7: 2*2/(2+2+2)=2/3
    assert f1_max(scores, labels) == pytest.approx(2 / 3)


def test_order_of_inputs_does_not_matter_with_ties():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 200)
    scores = rng.integers(0, 4, 200).astype(float)
    perm = rng.permutation(200)
    for fn in (auroc, average_precision, f1_max):
        assert fn(scores, labels) == fn(scores[perm], labels[perm])


def test_huge_scores_perfect_separation_and_the_sigmoid_pitfall():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([1e6, 1e6 + 1, 1e6 + 2, 1e6 + 3, 1e6 + 50, 3e6])
    assert auroc(scores, labels) == 1.0
    assert average_precision(scores, labels) == 1.0
    assert f1_max(scores, labels) == 1.0
    with np.errstate(over="ignore"):
        squashed = 1.0 / (1.0 + np.exp(-scores))  # what one must NOT do: every value becomes 1.0
    assert auroc(squashed, labels) == 0.5


def test_monotone_transforms_give_identical_metrics():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 300)
    scores = rng.integers(1, 20, 300) + 0.5 * labels  # positive, with ties
    ref = compute_metrics(scores, labels)
    for transformed in (3.0 * scores + 1e4, np.log(scores), scores**3, scores - 1e3):
        got = compute_metrics(transformed, labels)
        for k in ("I-AUROC", "I-AP", "I-F1max"):
            assert got[k] == pytest.approx(ref[k], abs=1e-12)


def test_constant_scores_reference_values():
    labels = np.array([0] * 6 + [1] * 2)
    scores = np.full(8, 0.3)
    assert auroc(scores, labels) == 0.5
    assert average_precision(scores, labels) == pytest.approx(2 / 8)  # prevalence
    assert f1_max(scores, labels) == pytest.approx(2 * 2 / (2 * 2 + 6))  # everything flagged


def test_one_class_gives_nan_not_error():
    for labels in ([0, 0, 0], [1, 1, 1]):
        for fn in (auroc, average_precision, f1_max):
            assert math.isnan(fn([0.1, 0.5, 0.2], labels))


def test_input_validation():
    with pytest.raises(ValueError, match="NaN"):
        auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        auroc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="entries"):
        auroc([0.1, 0.2, 0.3], [0, 1])


def test_torch_tensors_accepted():
    torch = pytest.importorskip("torch")
    scores, labels = [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]
    assert auroc(torch.tensor(scores, requires_grad=True), torch.tensor(labels)) == roc_auc_score(
        labels, scores
    )
    maps = torch.rand(2, 1, 8, 8)
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, 0, 2:5, 2:5] = 1
    assert pixel_metrics(maps, masks)["P-AUROC"] == pytest.approx(
        roc_auc_score(masks.numpy().ravel(), maps.numpy().ravel()), abs=1e-12
    )


# ------------------------------------------------------------------------------------------------ pixel level
@pytest.mark.parametrize("seed", range(3))
def test_pixel_metrics_match_sklearn_on_flattened_maps(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((5, 20, 24), np.uint8)
    masks[0, 3:9, 4:10] = 255
    masks[2, 10:12, 1:20] = 1
    masks[3, 15:, 20:] = 1
    maps = rng.normal(size=masks.shape).astype(np.float32) + (masks > 0)
    maps[1] = np.round(maps[1], 1)  # some ties
    y, s = (masks > 0).ravel(), maps.ravel()
    got = pixel_metrics(maps, masks)
    assert got["P-AUROC"] == pytest.approx(roc_auc_score(y, s), abs=1e-10)
    assert got["P-AP"] == pytest.approx(average_precision_score(y, s), abs=1e-10)
    assert got["P-F1max"] == pytest.approx(brute_f1max(s, y), abs=1e-10)


def hand_cases():
    # two images, regions of different sizes (a 1-pixel one, a diagonal one that is one 8-connected region)
    m1 = np.zeros((2, 6, 7), int)
    m1[0, 0:3, 0:3] = 1
    m1[0, 5, 6] = 1
    m1[1, 1, 1] = m1[1, 2, 2] = m1[1, 3, 3] = 1
    a1 = np.zeros((2, 6, 7))
    a1[0, 0:3, 0:3] = [[5, 4, 3], [2, 2, 1], [0, 0, 0]]
    a1[0, 5, 6] = 2
    a1[1, 1, 1], a1[1, 2, 2], a1[1, 3, 3] = 3, 1, 0.5
    a1[0, 4, 0], a1[1, 0, 5], a1[1, 5, 0] = 2, 4, 1  # some high normal pixels (ties)
    # three images, one without any defect, integer maps with many ties
    rng = np.random.default_rng(0)
    m2 = np.zeros((3, 8, 8), int)
    m2[0, 1:4, 1:3] = 1
    m2[0, 6:8, 5:8] = 1
    m2[2, 4, 4] = 1
    a2 = rng.integers(0, 5, (3, 8, 8)) + 2 * m2
    # large and small region in the same image, perfectly detected large one, missed small one
    m3 = np.zeros((1, 10, 10), int)
    m3[0, :5, :5] = 1
    m3[0, 8, 8] = 1
    a3 = np.linspace(0, 1, 100).reshape(1, 10, 10) + 2 * m3
    a3[0, 8, 8] = -1
    return [(a1, m1), (a2, m2), (a3, m3)]


@pytest.mark.parametrize("case", range(3))
def test_aupro_matches_brute_force_on_hand_made_cases(case):
    maps, masks = hand_cases()[case]
    assert aupro(maps, masks) == pytest.approx(brute_aupro(maps, masks), abs=1e-9)
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(
        brute_aupro(maps, masks, 1.0), abs=1e-9
    )


@pytest.mark.parametrize("seed", range(5))
def test_aupro_matches_brute_force_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 4)), int(rng.integers(4, 14)), int(rng.integers(4, 14)))
    masks = rng.random(shape) < 0.15
    masks.flat[0] = True
    masks.flat[-1] = False
    maps = rng.random(shape) + 0.5 * masks
    if seed % 2:
        maps = np.round(maps * 5)  # many ties
    for limit in (0.3, 0.05, 1.0):
        assert aupro(maps, masks, fpr_limit=limit) == pytest.approx(
            brute_aupro(maps, masks, limit), abs=1e-9
        )


def test_aupro_perfect_and_constant_maps():
    masks = np.zeros((3, 16, 16), int)
    masks[0, 2:6, 2:6] = 1
    masks[1, 10, 10] = 1
    assert aupro(masks * 7.0 + 1e6, masks) == pytest.approx(1.0, abs=1e-12)
    # a constant map flags everything at once: the PRO curve is the diagonal pro = fpr,
    # so the normalised area up to L is (L^2 / 2) / L = L / 2
    const = np.full(masks.shape, 0.42)
    assert aupro(const, masks) == pytest.approx(0.15, abs=1e-12)
    assert aupro(const, masks, fpr_limit=1.0) == pytest.approx(0.5, abs=1e-12)
    fpr, pro = pro_curve(const, masks)
    assert fpr.tolist() == [0.0, 1.0] and pro.tolist() == [0.0, 1.0]


def test_aupro_regions_are_per_image_and_8_connected():
    # the same pixel position in two images is two regions; a diagonal pair is one region
    masks = np.zeros((2, 5, 5), int)
    masks[:, 2, 2] = 1
    masks[0, 3, 3] = 1
    maps = np.zeros(masks.shape)
    maps[0, 2, 2] = maps[0, 3, 3] = 1.0  # image 0's region found, image 1's missed
    maps[1, 0, 0] = 0.5
    # thresholds: inf (0,0); 1.0 -> fpr 0, pro 1/2; 0.5 -> fpr 1/N, pro 1/2; 0 -> (1, 1)
    assert aupro(maps, masks) == pytest.approx(brute_aupro(maps, masks), abs=1e-12)
    n_normal = masks.size - 3
    fpr, pro = pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, [0, 0, 1 / n_normal, 1])
    np.testing.assert_allclose(pro, [0, 0.5, 0.5, 1])


def test_pro_curve_is_monotone_and_binned_version_approximates():
    rng = np.random.default_rng(11)
    masks = ndimage.gaussian_filter(rng.random((4, 40, 40)), (0, 3, 3)) > 0.55
    maps = rng.integers(0, 10, masks.shape) + 2 * masks  # integer values 0..11
    fpr, pro = pro_curve(maps, masks)
    assert fpr[0] == 0 and pro[0] == 0 and fpr[-1] == 1 and pro[-1] == pytest.approx(1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-12)
    exact = aupro(maps, masks)
    # 12 evenly spaced thresholds from 0 to 11 are exactly the distinct values: binned == exact
    assert aupro(maps, masks, num_thresholds=12) == pytest.approx(exact, abs=1e-12)
    smooth = maps + rng.random(maps.shape)
    assert aupro(smooth, masks, num_thresholds=2000) == pytest.approx(
        aupro(smooth, masks), abs=5e-3
    )


def test_pixel_metrics_without_defect_pixels_are_nan():
    maps = np.random.default_rng(0).random((2, 8, 8))
    empty = np.zeros((2, 8, 8))
    got = pixel_metrics(maps, empty)
    assert all(math.isnan(v) for v in got.values())
    assert math.isnan(aupro(maps, np.ones((2, 8, 8))))


# ------------------------------------------------------------------------------------------------ per category
def test_compute_metrics_keys_and_mad():
    rng = np.random.default_rng(5)
    masks = np.zeros((6, 12, 12), int)
    masks[3:, 4:8, 4:8] = 1
    maps = rng.random(masks.shape) + masks
    labels = masks.reshape(6, -1).max(1)
    scores = maps.reshape(6, -1).max(1)
    got = compute_metrics(scores, labels, maps, masks)
    assert tuple(got) == ALL_KEYS
    assert got["mAD"] == pytest.approx(np.mean([got[k] for k in METRIC_NAMES]))
    assert got["P-AUROC"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert undefined_reason(labels, masks) is None
    image_only = compute_metrics(scores, labels)
    assert all(math.isnan(image_only[k]) for k in ("P-AUROC", "P-AP", "P-F1max", "AUPRO", "mAD"))
    assert image_only["I-AUROC"] == got["I-AUROC"]
    with pytest.raises(ValueError, match="both"):
        compute_metrics(scores, labels, maps=maps)


def test_category_without_anomalies_nan_warning_mean_and_json(tmp_path):
    rng = np.random.default_rng(1)
    good_masks = np.zeros((4, 8, 8))
    good = compute_metrics(rng.random(4), [0, 0, 0, 0], rng.random((4, 8, 8)), good_masks)
    assert all(math.isnan(v) for v in good.values())
    reason = undefined_reason([0, 0, 0, 0], good_masks)
    assert "no anomalous test images" in reason

    masks = np.zeros((4, 8, 8))
    masks[2:, 1:4, 1:4] = 1
    ok = compute_metrics(
        [0.1, 0.2, 0.9, 0.8], [0, 0, 1, 1], masks + 0.1 * rng.random(masks.shape), masks
    )
    table = metrics_table(
        {"bottle": ok, "cookie": good}, setting="unified", method="toy", reasons={"cookie": reason}
    )
    assert table["setting"] == "unified" and table["method"] == "toy"
    assert list(table["categories"]) == ["bottle", "cookie"]
    assert any(
        w.startswith("cookie:") and "no anomalous test images" in w for w in table["warnings"]
    )
    assert not any("bottle" in w for w in table["warnings"])
    for k in ALL_KEYS:
        assert table["mean"][k] == pytest.approx(ok[k])  # cookie ignored, not counted as 0

    # without explicit reasons the category is still named
    auto = metrics_table({"bottle": ok, "cookie": good}, setting="per-class", method="toy")
    assert any(w.startswith("cookie:") for w in auto["warnings"])

    path = tmp_path / "run" / "metrics.json"
    save_metrics(table, path)
    raw = json.loads(path.read_text())
    assert raw["categories"]["cookie"]["I-AUROC"] is None
    assert raw["categories"]["bottle"]["I-AUROC"] == 1.0
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind
    back = load_metrics(path)
    assert math.isnan(back["categories"]["cookie"]["AUPRO"])
    assert back["mean"] == pytest.approx(table["mean"])
    assert back["warnings"] == table["warnings"]

    md = format_table(back)
    lines = md.splitlines()
    assert lines[0] == "| category | I-AUROC | P-AUROC | AUPRO | mAD |"
    assert lines[2].startswith("| bottle | 100.0 |")
    assert "n/a" in lines[3] and lines[-1].startswith("| **mean** | 100.0 |")


def test_metrics_table_rejects_bad_input():
    row = dict.fromkeys(METRIC_NAMES, 0.9)
    with pytest.raises(ValueError, match="setting"):
        metrics_table({"a": row}, setting="unify", method="m")
    with pytest.raises(ValueError, match="percentages"):
        metrics_table({"a": {**row, "I-AUROC": 97.3}}, setting="unified", method="m")
    with pytest.raises(ValueError, match="lacks"):
        metrics_table({"a": {"I-AUROC": 0.9}}, setting="unified", method="m")
    assert metrics_table({"a": row}, "unified", "m")["categories"]["a"]["mAD"] == pytest.approx(0.9)


def test_format_table_values():
    table = metrics_table(
        {"x": {**dict.fromkeys(METRIC_NAMES, 0.5), "I-AUROC": 0.98765}},
        setting="unified",
        method="m",
    )
    md = format_table(table, columns=("I-AUROC", "P-AP"))
    assert md.splitlines() == [
        "| category | I-AUROC | P-AP |",
        "|---|---:|---:|",
        "| x | 98.8 | 50.0 |",
        "| **mean** | 98.8 | 50.0 |",
    ]


def test_false_alarm_rate_of_a_hand_made_case():
    from unistad_edu.metrics import false_alarm_rates

    scores = [0.1, 0.5, 0.9, 2.0, 0.2, 0.95, 3.0, 0.3]
    labels = [0, 0, 0, 1, 0, 0, 1, 0]
    cats = ["a", "a", "a", "a", "b", "b", "b", "c"]
    far = false_alarm_rates(scores, labels, cats, threshold=0.8)
    # a: normals 0.1 0.5 0.9 -> 1 of 3 above 0.8; b: 0.2 0.95 -> 1 of 2; c: 0.3 -> 0 of 1; anomalies ignored
    assert far["categories"]["a"] == {"rate": 1 / 3, "alarms": 1, "normal": 3}
    assert far["categories"]["b"] == {"rate": 0.5, "alarms": 1, "normal": 2}
    assert far["categories"]["c"] == {"rate": 0.0, "alarms": 0, "normal": 1}
    assert far["all"] == 2 / 6 and abs(far["mean"] - (1 / 3 + 0.5 + 0.0) / 3) < 1e-12
    assert (
        false_alarm_rates(scores, labels, cats, threshold=0.9)["categories"]["a"]["alarms"] == 0
    )  # > not >=
    assert false_alarm_rates(scores, labels, cats, None) is None
    only_bad = false_alarm_rates([1.0], [1], ["d"], 0.5)
    assert np.isnan(only_bad["categories"]["d"]["rate"]) and np.isnan(only_bad["all"])


def test_defect_aurocs_against_sklearn_per_group():
    """Each group's AUROC is sklearn's on that category's normals plus that group's defects only; a category
    without logical defects has no 'logical' entry."""
    from unistad_edu.metrics import defect_aurocs

    rng = np.random.default_rng(3)
    cats = np.array(["a"] * 20 + ["b"] * 14)
    kinds = np.array(
        ["good"] * 8
        + ["hole"] * 4
        + ["scratch"] * 4
        + ["missing"] * 4
        + ["good"] * 6
        + ["stain"] * 8
    )
    labels = (kinds != "good").astype(int)
    scores = rng.normal(size=kinds.size) + labels * np.where(kinds == "missing", 0.0, 1.5)
    out = defect_aurocs(scores, labels, cats, kinds)

    def ref(mask):
        return roc_auc_score(labels[mask], scores[mask])

    a_good = (cats == "a") & (kinds == "good")
    assert out["a"]["structural"] == pytest.approx(
        ref(a_good | np.isin(kinds, ["hole", "scratch"]))
    )
    assert out["a"]["logical"] == pytest.approx(ref(a_good | (kinds == "missing")))
    assert out["a"]["kinds"]["hole"] == pytest.approx(ref(a_good | (kinds == "hole")))
    assert set(out["a"]["kinds"]) == {"hole", "scratch", "missing"}
    assert "logical" not in out["b"]
    assert out["b"]["structural"] == pytest.approx(ref(cats == "b"))


def test_defect_aurocs_hand_case():
    """Normals 0.1, 0.4; a defect at 0.3 beats one of two normals (AUROC 1/2), one at 0.5 beats both (1)."""
    from unistad_edu.metrics import defect_aurocs

    out = defect_aurocs(
        [0.1, 0.4, 0.3, 0.5], [0, 0, 1, 1], ["c"] * 4, ["good", "good", "extra", "hole"]
    )
    assert out["c"]["logical"] == pytest.approx(0.5)
    assert out["c"]["structural"] == pytest.approx(1.0)
