"""The interference curve (``unistad_edu.curve``, ``bench curve``): order, slopes, resume, the command."""

import json
import subprocess
import sys

import numpy as np
import pytest

from unistad_edu import curve
from unistad_edu.curve import CurveSetup, curve_slopes, curve_sources, interference_curve


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from unistad_edu.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("curve") / "syn"
    return make_synthetic(
        root,
        size=64,
        n_train=6,
        n_test_good=2,
        n_test_defect=1,
        categories=("weave", "bolt", "pcb"),
    )


def test_slopes_match_numpy_polyfit():
    rng = np.random.default_rng(0)
    results = {"m": {k: [list(rng.random(2)) for _ in range(3)] for k in (1, 2, 4, 7)}}
    got = curve_slopes(results)["m"]
    for i, metric in enumerate(curve.CURVE_METRICS):
        xs = [k for k in (1, 2, 4, 7) for _ in range(3)]
        ys = [results["m"][k][s][i] for k in (1, 2, 4, 7) for s in range(3)]
        assert got[metric]["all"] == pytest.approx(np.polyfit(xs, ys, 1)[0])
        for s in range(3):
            own = [results["m"][k][s][i] for k in (1, 2, 4, 7)]
            assert got[metric]["per_seed"][s] == pytest.approx(np.polyfit([1, 2, 4, 7], own, 1)[0])


def test_slopes_of_a_straight_falling_line():
    results = {"m": {k: [[0.9 - 0.02 * k, 0.8]] * 2 for k in (1, 3, 5)}}
    got = curve_slopes(results)["m"]
    assert got["I-AUROC"]["all"] == pytest.approx(-0.02)
    assert got["P-AUROC"]["per_seed"] == pytest.approx([0.0, 0.0])


def test_sources_probe_first_then_sorted_then_synthetic(tiny, tmp_path):
    assert [c for _, c in curve_sources(tiny, "pcb", tmp_path)] == ["pcb", "bolt", "weave"]
    real = tmp_path / "real"  # the same folders without the synthetic manifest: "real" data
    for cat in ("weave", "bolt"):
        (real / cat / "train" / "good").mkdir(parents=True)
    order = curve_sources(real, "weave", tmp_path / "w")
    assert [c for _, c in order] == ["weave", "bolt", *curve.SYNTHETIC_CATEGORIES]
    assert {f for f, c in order[2:]} == {tmp_path / "w" / "synthetic"}
    with pytest.raises(ValueError, match="probe 'screw' is not a category"):
        curve_sources(tiny, "screw", tmp_path)


def test_setup_refuses_what_cannot_be_a_curve():
    with pytest.raises(ValueError, match="ks must be"):
        CurveSetup(probe="a", ks=(0, 1))
    with pytest.raises(ValueError, match="at least one seed"):
        CurveSetup(probe="a", seeds=())
    with pytest.raises(ValueError, match="steps_per_category"):
        CurveSetup(probe="a", steps_per_category=0)


def _setup(**kw):
    base = dict(probe="weave", ks=(1, 3), seeds=(0, 1), image_size=64, n_train=4, batch_size=2)
    return CurveSetup(**{**base, "steps_per_category": 2, **kw})


def test_curve_resumes_its_finished_points_adds_methods_and_refuses_another_setup(
    tiny, tmp_path, monkeypatch
):
    from unistad_edu.teacher import load_teacher

    calls = []

    def fake_point(name, overrides, k, seed, *rest):  # records what would be trained
        calls.append((name, k, seed))
        return [0.5 + 0.01 * k, 0.6 - 0.01 * seed]

    monkeypatch.setattr(curve, "_one_point", fake_point)
    setup = _setup(methods={"STPM": ("stpm", {})})
    teacher = load_teacher()
    first = interference_curve(tiny, setup, teacher, tmp_path, log=lambda *_: None)
    assert sorted(calls) == [("stpm", k, s) for k in (1, 3) for s in (0, 1)]
    assert first["results"]["STPM"][3] == [[0.53, 0.6], [0.53, 0.59]]
    calls.clear()
    again = interference_curve(tiny, setup, teacher, tmp_path, log=lambda *_: None)
    assert calls == [] and again["results"] == first["results"]
    with pytest.raises(ValueError, match="another curve setup"):
        interference_curve(tiny, _setup(steps_per_category=3), teacher, tmp_path, log=print)
    with pytest.raises(ValueError, match="another curve setup"):  # the same label, other overrides
        changed = _setup(methods={"STPM": ("stpm", {"lr": 0.1})})
        interference_curve(tiny, changed, teacher, tmp_path, log=print)
    both = _setup(methods={"STPM": ("stpm", {}), "bank": ("memory_bank", {})})
    added = interference_curve(tiny, both, teacher, tmp_path, log=lambda *_: None)
    assert sorted(calls) == [("memory_bank", k, s) for k in (1, 3) for s in (0, 1)]
    assert added["results"]["STPM"] == first["results"]["STPM"]
    calls.clear()
    alone = interference_curve(
        tiny, _setup(methods={"bank": ("memory_bank", {})}), teacher, tmp_path
    )
    assert calls == [] and alone["results"]["bank"] == added["results"]["bank"]
    saved = json.loads((tmp_path / "curve_points.json").read_text())
    assert set(saved["setup"]["methods"]) == {"STPM", "bank"}  # leaving one out forgets nothing


def test_memory_bank_keeping_every_patch_is_the_same_for_every_seed(tiny, tmp_path):
    from unistad_edu.teacher import load_teacher

    setup = _setup(methods={"bank": ("memory_bank", {"coreset_ratio": 1.0})}, ks=(1, 2))
    out = interference_curve(tiny, setup, load_teacher(), tmp_path, log=lambda *_: None)
    assert out["order"] == ["weave", "bolt"]
    assert out["probe_test"] == {"images": 5, "defective": 3}
    for k in (1, 2):
        a, b = out["results"]["bank"][k]
        assert a == b and all(0.0 <= v <= 1.0 for v in a)


def test_bench_curve_command_writes_json_and_markdown(tiny, tmp_path):
    js, md = tmp_path / "c.json", tmp_path / "c.md"
    cmd = [sys.executable, "-m", "unistad_edu", "bench", "curve", "--data", str(tiny)]
    cmd += ["--probe", "bolt", "--methods", "stpm", "--ks", "1", "2", "--seeds", "0", "1"]
    cmd += ["--image-size", "64", "--n-train", "4", "--batch-size", "2"]
    cmd += ["--steps-per-category", "2", "--threads", "1", "--json", str(js), "--markdown", str(md)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    result = json.loads(js.read_text())
    assert result["order"] == ["bolt", "pcb"] and result["setup"]["ks"] == [1, 2]
    assert len(result["results"]["stpm"]["2"]) == 2
    text = md.read_text()
    assert "### bench curve" in text and "| stpm |" in text and "probe: bolt" in text
