"""Calibration: routing by the teacher's embedding, per-category tail thresholds, the verdict figures.

References are independent of the code: closed-form exceedance probabilities of known distributions, the
Clopper-Pearson interval's closed form at k = 0 and k = n, hand-counted verdicts, and the synthetic set's
category folders (which routing never reads at test time)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from unistad_edu.calibration import (
    Calibration,
    Router,
    check_calibration,
    clopper_pearson,
    cluster,
    fit_calibration,
    floor_rate,
    tail_threshold,
    verdict,
)
from unistad_edu.metrics import verdict_metrics


# ---- tail thresholds against known distributions ---------------------------------------------------------------
def test_normal_prediction_bound_by_hand():
    # mean 3, sd 1.5811 (ddof 1), t_{0.99, 4} = 3.7469 (tables), sqrt(1 + 1/5) = 1.0954
    thr, used = tail_threshold([1, 2, 3, 4, 5], 0.99, "normal")
    assert used == "normal"
    assert thr == pytest.approx(3 + 3.7469 * 1.58114 * 1.09545, abs=2e-3)


@pytest.mark.parametrize(
    "tail,draw,exceed",
    [
        ("normal", lambda rng, n: rng.normal(5.0, 2.0, n), lambda t: stats.norm.sf(t, 5.0, 2.0)),
        (
            "lognormal",
            lambda rng, n: rng.lognormal(0.3, 0.5, n),
            lambda t: stats.lognorm.sf(t, 0.5, scale=math.exp(0.3)),
        ),
    ],
)
def test_tail_holds_its_false_alarm_rate_on_its_own_distribution(tail, draw, exceed):
    """Over many calibration sets of 12 normals, the true probability that a new normal exceeds the threshold
    averages 1 % (the prediction bound's promise); the order statistic of the same 12 images cannot (it is their
    maximum, exceeded 1 / 13 of the time)."""
    rng = np.random.default_rng(0)
    rates = [exceed(tail_threshold(draw(rng, 12), 0.99, tail)[0]) for _ in range(3000)]
    assert np.mean(rates) == pytest.approx(0.01, abs=0.0025)
    empirical = [exceed(tail_threshold(draw(rng, 12), 0.99, "empirical")[0]) for _ in range(3000)]
    assert np.mean(empirical) > 0.05  # about 1 / (n + 1) = 0.077


def test_tail_fallbacks_and_refusals():
    assert (
        tail_threshold([-1.0, 0.5, 1.0, 2.0], 0.99, "lognormal")[1] == "normal"
    )  # a score <= 0: no log
    assert (
        tail_threshold(np.arange(6.0), 0.99, "gpd")[1] == "normal"
    )  # too few exceedances for a Pareto fit
    assert tail_threshold([3.0], 0.99, "normal") == (3.0, "empirical")
    rng = np.random.default_rng(1)
    g = stats.genpareto(0.1, scale=1.0)
    thr, used = tail_threshold(g.rvs(400, random_state=rng), 0.99, "gpd")
    assert used == "gpd" and g.sf(thr) == pytest.approx(0.01, abs=0.006)
    with pytest.raises(ValueError, match="quantile"):
        tail_threshold([1, 2, 3], 1.0)
    with pytest.raises(ValueError, match="finite"):
        tail_threshold([1, np.nan, 3])
    with pytest.raises(ValueError, match="tail must be"):
        tail_threshold([1, 2, 3], 0.99, "weibull")


# ---- intervals, floor, verdict counts -----------------------------------------------------------------------------
def test_clopper_pearson_by_hand():
    # closed forms: k = 0 -> upper = 1 - (a/2)^(1/n); k = n -> lower = (a/2)^(1/n)
    assert clopper_pearson(0, 14) == pytest.approx((0.0, 1 - 0.025 ** (1 / 14)))
    assert clopper_pearson(20, 20) == pytest.approx((0.025 ** (1 / 20), 1.0))
    lo, hi = clopper_pearson(1, 10)  # published: 0.0025, 0.4450
    assert (lo, hi) == pytest.approx((0.00253, 0.44502), abs=1e-4)
    assert clopper_pearson(0, 0) == (0.0, 1.0)


def test_floor_by_hand():
    assert floor_rate(3) == 0.25 and floor_rate(10) == pytest.approx(1 / 11)


def test_verdict_metrics_by_hand():
    # category a: normals 0.1 0.5 0.9 (threshold 0.6 -> 1 alarm), defects 0.7 0.2 (1 caught)
    # category b: normals 1.0 2.0 (threshold 3.0 -> none), defects 4.0 5.0 2.5 (2 caught)
    scores = [0.1, 0.5, 0.9, 0.7, 0.2, 1.0, 2.0, 4.0, 5.0, 2.5]
    labels = [0, 0, 0, 1, 1, 0, 0, 1, 1, 1]
    cats = ["a"] * 5 + ["b"] * 5
    thr = [0.6] * 5 + [3.0] * 5
    routed = ["a", "a", "b", "a", "a", "b", "b", "b", "b", "b"]  # one of ten misrouted
    v = verdict_metrics(scores, labels, cats, thr, routed=routed, calibration_n={"a": 3, "b": 9})
    a, b = v["categories"]["a"], v["categories"]["b"]
    assert (a["alarms"], a["normal"], a["caught"], a["defects"]) == (1, 3, 1, 2)
    assert a["rate"] == pytest.approx(1 / 3) and a["recall"] == 0.5
    assert a["f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert (b["alarms"], b["caught"], b["recall"], b["f1"]) == (
        0,
        2,
        pytest.approx(2 / 3),
        pytest.approx(0.8),
    )
    assert a["floor"] == 0.25 and b["floor"] == 0.1
    assert v["all"] == pytest.approx(1 / 5) and v["routing_accuracy"] == pytest.approx(0.9)
    assert v["mean_f1"] == pytest.approx((0.5 + 0.8) / 2)
    assert verdict(0.6, 0.6) is False and verdict(0.61, 0.6) is True and verdict(1.0, None) is None


# ---- routing -----------------------------------------------------------------------------------------------------
def _blobs(rng, centres, n):
    return np.concatenate([c + 0.05 * rng.normal(size=(n, c.size)) for c in centres])


def test_router_routes_and_flags_the_unlike():
    rng = np.random.default_rng(0)
    centres = [np.eye(8)[i] * 3 for i in range(3)]
    train = _blobs(rng, centres, 20)
    names = np.repeat(["x", "y", "z"], 20)
    router = Router.fit(train, names)
    idx, _, unlike = router.route(_blobs(rng, centres, 5))
    assert list(np.asarray(router.names)[idx]) == list(np.repeat(["x", "y", "z"], 5))
    assert not unlike.any()
    far = router.route(np.eye(8)[5:6] * 3)[2]  # a direction no category has
    assert far.all()


def test_cluster_finds_the_groups_without_names():
    rng = np.random.default_rng(0)
    centres = [np.eye(8)[i] * 3 for i in range(4)]
    groups, info = cluster(_blobs(rng, centres, 15), seed=0)
    assert info["k"] == 4
    for i in range(4):  # each true group lands in one cluster
        assert len(set(groups[i * 15 : (i + 1) * 15])) == 1
    one, info1 = cluster(0.05 * rng.normal(size=(40, 8)) + np.eye(8)[0], seed=0)
    assert info1["k"] == 1 and len(set(one)) == 1


def test_calibration_per_category_json_round_trip_and_fallback():
    rng = np.random.default_rng(0)
    centres = [np.eye(6)[i] * 2 for i in range(2)]
    emb = _blobs(rng, centres, 30)
    groups = np.repeat(["low", "high"], 30)
    held = np.concatenate([rng.lognormal(0, 0.2, 12), rng.lognormal(2, 0.2, 3)])
    held_groups = ["low"] * 12 + ["high"] * 3
    cal = fit_calibration(held, held_groups, emb, groups, tail="lognormal", min_tail=5)
    assert cal.groups["low"]["rule"].startswith("lognormal") and cal.groups["low"]["n"] == 12
    assert (
        cal.groups["high"]["threshold"] == cal.global_threshold
    )  # 3 < 5 held-out: the pooled threshold
    assert "only 3 held-out" in cal.groups["high"]["rule"]
    d = json.loads(json.dumps(cal.to_json()))
    check_calibration(d)
    back = Calibration.from_json(d)
    probe = _blobs(rng, centres, 2)
    assert [r["category"] for r in back.decide([1.0] * 4, probe)] == ["low", "low", "high", "high"]
    assert back.decide([1.0], probe[:1])[0]["threshold"] == pytest.approx(
        cal.groups["low"]["threshold"]
    )
    z = back.decide([cal.groups["low"]["mean"] + cal.groups["low"]["std"]], probe[:1])[0]["z"]
    assert z == pytest.approx(1.0)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("kind", "per-class", "kind"),
        ("quantile", float("nan"), "quantile"),
        ("quantile", 1.5, "quantile"),
        ("threshold", "high", "threshold"),
        ("centroid", [1.0, "x"], "centroid"),
        ("radius", None, "radius"),
    ],
)
def test_altered_calibration_is_refused(field, value, match):
    cal = fit_calibration(
        [1.0, 1.1, 1.2, 0.9, 1.05], ["a"] * 5, np.eye(3)[[0, 0, 1, 1]], ["a", "a", "b", "b"]
    )
    d = json.loads(json.dumps(cal.to_json()))
    if field in ("kind", "quantile"):
        d[field] = value
    elif field == "threshold":
        d["groups"]["a"]["threshold"] = value
    else:
        d["router"]["a"][field] = value
    with pytest.raises(ValueError, match=match):
        check_calibration(d)


# ---- the whole path on the synthetic set --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def routed_run(tmp_path_factory, lite0_teacher):
    """STPM, one epoch, unified on all six synthetic categories (64 px, 30 training images each: 10 held out)."""
    from tests.conftest import tiny_synthetic
    from unistad_edu import build_model
    from unistad_edu.data import MVTecDataset
    from unistad_edu.engine import TrainConfig, fit
    from unistad_edu.synthetic import CATEGORIES

    data = tiny_synthetic(
        tmp_path_factory,
        64,
        n_train=30,
        n_test_good=4,
        n_test_defect=2,
        categories=tuple(CATEGORIES),
    )
    run = tmp_path_factory.mktemp("routed") / "run"
    model = build_model("stpm", lite0_teacher, image_size=64, epochs=1)
    fit(model, MVTecDataset(data, "train", image_size=64), TrainConfig(progress=False), out=run)
    return data, run, model


def test_routing_on_synthetic_categories(routed_run):
    from unistad_edu.data import MVTecDataset
    from unistad_edu.inference import evaluate, predict

    data, run, model = routed_run
    cal = model.verdict_calibration
    assert cal.kind == "per-category" and len(cal.groups) == 6
    assert all(g["n"] == 10 for g in cal.groups.values())  # 30 images each: at least 10 held out
    test = MVTecDataset(data, "test", image_size=64)
    table = evaluate(model, test, progress=False)
    far = table["false_alarms"]
    assert far["routing_accuracy"] >= 0.95, far["routing_accuracy"]
    assert table["false_alarms_global"]["kind"] == "global"
    assert 0.0 <= table["pooled"]["I-AUROC"] <= 1.0 and table["pooled"]["images"] == len(test)
    # an image unlike every category: a flat mid-grey frame
    odd = predict(model, [np.full((64, 64, 3), 128, np.uint8)])[0]
    assert odd["notice"] and "unlike anything" in odd["notice"]
    normal = predict(model, [MVTecDataset(data, "test", image_size=64).records[0].path])[0]
    assert normal["notice"] is None and normal["category"] is not None


def test_old_run_with_one_threshold_loads_and_says_so(routed_run, tmp_path):
    from unistad_edu.checkpoint import load_checkpoint
    from unistad_edu.demo.logic import model_card
    from unistad_edu.inference import predict

    data, run, _ = routed_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    cfg = json.loads((old / "config.json").read_text())
    del cfg["calibration"]  # as saved before per-category calibration
    (old / "config.json").write_text(json.dumps(cfg))
    model = load_checkpoint(old)
    assert (
        model.verdict_calibration.kind == "global"
        and model.verdict_calibration.global_threshold == cfg["threshold"]
    )
    r = predict(model, [np.zeros((64, 64, 3), np.uint8)])[0]
    assert r["category"] is None and r["threshold"] == cfg["threshold"]
    assert "one threshold for all categories" in model_card(cfg)


def test_eval_image_only_on_a_folder_without_masks(routed_run, tmp_path):
    data, run, _ = routed_run
    bare = tmp_path / "bare"
    shutil.copytree(data, bare)
    for gt in bare.rglob("ground_truth"):
        shutil.rmtree(gt)
    cmd = [
        sys.executable,
        "-m",
        "unistad_edu",
        "eval",
        "--run",
        str(run),
        "--data",
        str(bare),
        "--no-progress",
        "--json",
        str(tmp_path / "m.json"),
    ]
    refused = subprocess.run(cmd, capture_output=True, text=True)
    assert refused.returncode != 0 and "--image-only" in refused.stderr
    done = subprocess.run(cmd + ["--image-only"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["mean"]["I-AUROC"] is not None and metrics["mean"]["P-AUROC"] is None
    assert "routing accuracy" in done.stdout and "pooled I-AUROC" in done.stdout
    # the objects' logical defects (a part missing or added) are a row of their own; textures have none
    by = metrics["by_defect"]
    assert {"missing", "extra"} <= set(by["bolt"]["kinds"]) and "logical" in by["bolt"]
    assert "logical" not in by["weave"] and set(by["weave"]["kinds"]) == {
        "scratch",
        "hole",
        "stain",
    }
    assert "| bolt |" in done.stdout.split("I-AUROC by defect kind")[1]


def test_leave_one_out_by_hand():
    from unistad_edu.calibration import loo_exceedances

    # the empirical 0.99 quantile of the other n - 1 scores lies below only the largest score
    assert loo_exceedances([3.0, 1.0, 2.0, 5.0, 4.0], 0.99, "empirical") == (1, 5)
    # a far outlier exceeds any tail fitted to the rest
    assert loo_exceedances([1.0, 1.1, 0.9, 1.05, 0.95, 1.02, 9.0], 0.99, "lognormal")[0] >= 1


def test_bench_calibration_reads_the_runs_held_out_scores(routed_run):
    from unistad_edu.bench import bench_calibration, calibration_markdown

    data, run, model = routed_run
    r = bench_calibration([run], trials=20, test=True, data=data)
    n = sum(g["n"] for g in model.verdict_calibration.groups.values())
    assert all(v["n"] == n for v in r["leave_one_out"].values())
    assert r["leave_one_out"]["empirical"]["hits"] <= n
    per = r["test"][str(run)]
    assert set(per) == {"global", "lognormal", "normal", "empirical", "gpd", "shared"}
    # the lognormal rule refitted from the stored scores is the run's own calibration
    from unistad_edu.data import MVTecDataset
    from unistad_edu.inference import evaluate

    table = evaluate(model, MVTecDataset(data, "test", image_size=64), progress=False)
    assert per["lognormal"]["all"] == pytest.approx(table["false_alarms"]["all"])
    assert per["global"]["all"] == pytest.approx(table["false_alarms_global"]["all"])
    assert "leave-one-out" in "\n".join(calibration_markdown(r)).lower()


def test_shared_tail_by_hand():
    from unistad_edu.calibration import robust_scale, shared_thresholds

    # MAD of [1, 2, 3, 4, 100] is 1 (median 3): an outlier does not move the scale
    assert robust_scale([1, 2, 3, 4, 100]) == pytest.approx(1.4826)
    a, b = np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    # b is a scaled copy of a: the same standardised scores, so one z_q and thresholds median + z_q * scale
    z = (a - 3.0) / robust_scale(a)
    zq = np.quantile(np.concatenate([z, z]), 0.9)
    thr = shared_thresholds({"a": a, "b": b}, 0.9)
    assert thr["a"] == pytest.approx(3.0 + zq * robust_scale(a))
    assert thr["b"] == pytest.approx(30.0 + zq * robust_scale(b))
