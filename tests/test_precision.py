"""precision="auto": the capability check and the micro-benchmark mocked both ways, the per-machine cache
(including a corrupt file), threads, and that fp32 and bf16 both train and score."""

from __future__ import annotations

import json

import pytest
import torch

from unistad_edu import precision as P


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A private cache folder and an empty in-process memo for each test."""
    monkeypatch.setenv("UNISTAD_CACHE", str(tmp_path))
    monkeypatch.setattr(P, "_memo", {})
    monkeypatch.setattr(P, "_announced", set())
    return tmp_path


def _mock(monkeypatch, native: bool, rates: dict, calls: list):
    monkeypatch.setattr(P, "machine_busy", lambda: None)
    monkeypatch.setattr(
        P,
        "native_bf16",
        lambda: (
            native,
            "native bf16 (test)"
            if native
            else "no native bf16 on this CPU: capability AVX2 (test)",
        ),
    )

    def measure(teacher, image_size, batch_size=4, repeats=5, bf16=True):
        calls.append((image_size, bf16))
        return {k: v for k, v in rates.items() if bf16 or not k.startswith("bf16")}

    monkeypatch.setattr(P, "measure", measure)


class _T:  # what resolve reads of a teacher when measuring is mocked
    backbone_name = "test_teacher"


def test_auto_picks_fp32_without_native_bf16_even_if_bf16_would_measure_fast(
    fresh, monkeypatch, capsys
):
    calls = []
    _mock(
        monkeypatch,
        native=False,
        rates={"fp32": 10.0, "fp32_channels_last": 12.0, "bf16_channels_last": 99.0},
        calls=calls,
    )
    p = P.resolve("auto", "cpu", _T(), 64)
    assert p.name == "fp32" and p.channels_last  # 12 >= 1.05 x 10: channels_last measured faster
    assert calls == [(64, False)]  # bf16 is not even tried without native kernels
    assert "no native bf16" in p.reason
    assert "precision: fp32 + channels_last (no native bf16" in capsys.readouterr().err  # said once


def test_auto_picks_bf16_only_when_native_and_measured_faster(fresh, monkeypatch):
    calls = []
    _mock(
        monkeypatch,
        native=True,
        rates={"fp32": 10.0, "fp32_channels_last": 9.0, "bf16_channels_last": 30.0},
        calls=calls,
    )
    p = P.resolve("auto", "cpu", _T(), 64)
    assert (p.name, p.channels_last) == ("bf16", True) and "3.0x faster" in p.reason


@pytest.mark.parametrize("bf16_rate, word", [(5.0, "2.0x slower"), (11.0, "only 1.08x faster")])
def test_native_but_not_fast_enough_stays_fp32(fresh, monkeypatch, bf16_rate, word):
    _mock(
        monkeypatch,
        native=True,
        rates={"fp32": 10.0, "fp32_channels_last": 10.2, "bf16_channels_last": bf16_rate},
        calls=[],
    )
    p = P.resolve("auto", "cpu", _T(), 64)
    assert (
        p.name == "fp32" and not p.channels_last
    )  # 10.2 < 1.05 x 10: plain layout kept; ratio vs 10.2
    assert word in p.reason


def test_decision_is_cached_per_machine_and_image_size(fresh, monkeypatch):
    calls = []
    _mock(
        monkeypatch,
        native=True,
        rates={"fp32": 10.0, "fp32_channels_last": 9.0, "bf16_channels_last": 30.0},
        calls=calls,
    )
    first = P.resolve("auto", "cpu", _T(), 64)
    monkeypatch.setattr(P, "_memo", {})  # a new process: only the file remains
    again = P.resolve("auto", "cpu", _T(), 64)
    assert again == first and len(calls) == 1
    data = json.loads((fresh / P.CACHE_FILE).read_text())
    (key,) = data["entries"]
    assert "test_teacher" in key and "64px" in key and torch.__version__ in key and "cores" in key
    P.resolve("auto", "cpu", _T(), 96)  # another image size: measured again
    assert len(calls) == 2


@pytest.mark.parametrize(
    "content",
    ["{not json", json.dumps([1, 2]), json.dumps({"schema": 99, "entries": {}}), "__bad_entry__"],
)
def test_corrupt_or_foreign_cache_file_is_recomputed_not_a_crash(fresh, monkeypatch, content):
    calls = []
    _mock(monkeypatch, native=False, rates={"fp32": 10.0, "fp32_channels_last": 8.0}, calls=calls)
    path = fresh / P.CACHE_FILE
    if content == "__bad_entry__":  # the right key, but a value that is not a decision
        content = json.dumps(
            {"schema": P._SCHEMA, "entries": {P.machine_key("test_teacher", 64): {"name": "fp8"}}}
        )
    path.write_text(content)
    p = P.resolve("auto", "cpu", _T(), 64)
    assert p.name == "fp32" and len(calls) == 1
    assert (
        json.loads(path.read_text())["entries"][P.machine_key("test_teacher", 64)]["name"] == "fp32"
    )  # rewritten


def test_explicit_choices_and_cuda_need_no_measurement(fresh, monkeypatch):
    calls = []
    _mock(monkeypatch, native=False, rates={"fp32": 1.0}, calls=calls)
    assert P.resolve("fp32", "cpu", _T(), 64).name == "fp32"
    bf = P.resolve("bf16", "cpu", _T(), 64)
    assert (
        bf.name == "bf16" and "expect it to be slow" in bf.reason
    )  # asked for on a CPU without native bf16
    assert (
        P.resolve("auto", torch.device("cuda"), _T(), 64).name == "cuda-fp16"
    )  # CUDA keeps its own path
    assert calls == []
    with pytest.raises(ValueError, match="precision must be one of"):
        P.resolve("fp16", "cpu", _T(), 64)


def test_native_check_reads_the_capability(monkeypatch):
    monkeypatch.setattr(P, "cpu_capability", lambda: "AVX2")
    assert P.native_bf16()[0] is False and "AVX2" in P.native_bf16()[1]


def test_autocast_of_each_choice():
    with P.Precision("bf16", True).autocast("cpu"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled(
            "cpu"
        )
    with P.Precision("fp32", False).autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")


def test_threads_default_to_the_usable_cores_and_busy_machine_is_named(monkeypatch, capsys):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(P, "_announced", set())
        monkeypatch.setattr(P.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert P.configure_threads(None) == 1  # a user's OMP_NUM_THREADS is kept
        monkeypatch.delenv("OMP_NUM_THREADS")
        n = P.configure_threads(None)
        assert n == P.usable_cores() == torch.get_num_threads()
        err = capsys.readouterr().err
        assert "already busy (load 9.0 on" in err and "--threads" in err
        P.configure_threads(1)
        assert torch.get_num_threads() == 1 and "busy" not in capsys.readouterr().err  # said once
        for bad in (0, -2, 1.5, True):
            with pytest.raises(ValueError, match="--threads"):
                P.configure_threads(bad)
    finally:
        torch.set_num_threads(before)


def test_teacher_follows_its_precision(one_thread):
    from unistad_edu.teacher import Teacher, lite0_package_file

    t = Teacher(weights=lite0_package_file(), precision="fp32")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a = t(x)
        t.precision = "bf16"
        b = t(x)
    assert t.precision_for("cpu", 64).name == "bf16" and t._layout == torch.channels_last
    for k in a:
        assert b[k].dtype == torch.float32 and not torch.equal(a[k], b[k])  # bf16 rounding shows
        assert torch.nn.functional.cosine_similarity(a[k].flatten(1), b[k].flatten(1)).min() > 0.98
    with pytest.raises(ValueError, match="precision must be one of"):
        t.precision = "half"


@pytest.mark.parametrize(
    "method",
    ["stpm", "uniad", "rd", "snl", "enhanced_stpm", "unistad", "dual_student", "memory_bank"],
)
@pytest.mark.slow  # over 30 s on a 2-core CPU
def test_every_method_trains_and_scores_under_fp32_and_bf16(
    method, tmp_path_factory, lite0_teacher, one_thread
):
    from unistad_edu.data import MVTecDataset
    from unistad_edu.engine import TrainConfig, fit
    from unistad_edu.inference import score_dataset
    from unistad_edu.methods import build_model

    from .conftest import tiny_synthetic
    from .test_contract import SMALL

    data = tiny_synthetic(tmp_path_factory, size=64, n_train=6, n_test_good=1, n_test_defect=1)
    train = MVTecDataset(data, "train", image_size=64)
    test = MVTecDataset(data, "test", image_size=64)
    for prec in ("fp32", "bf16"):
        # the contract tests' smaller networks: the precision path, not the preset's size, is under test
        sizes = {"batch_size": 4, "epochs": 1, **SMALL.get(method, {})}
        model = build_model(method, lite0_teacher, image_size=64, **sizes)
        res = fit(model, train, TrainConfig(progress=False, holdout_fraction=0.3, precision=prec))
        assert model.teacher.precision.name == prec
        out = score_dataset(model, test)
        assert out["scores"].shape == (len(test),) and bool(
            torch.isfinite(torch.from_numpy(out["scores"])).all()
        )
        assert res.threshold is not None and res.threshold == res.threshold  # finite, calibrated
    lite0_teacher.precision = "auto"


def test_run_config_records_the_precision(tmp_path_factory, tmp_path, lite0_teacher, one_thread):
    from unistad_edu.data import MVTecDataset
    from unistad_edu.engine import TrainConfig, fit
    from unistad_edu.methods import build_model

    from .conftest import tiny_synthetic

    data = tiny_synthetic(tmp_path_factory, size=64, n_train=4, n_test_good=1, n_test_defect=1)
    model = build_model("stpm", lite0_teacher, image_size=64, batch_size=4, epochs=1)
    fit(
        model,
        MVTecDataset(data, "train", image_size=64),
        TrainConfig(progress=False, precision="fp32"),
        out=tmp_path / "run",
    )
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["precision"] == {"name": "fp32", "channels_last": False, "reason": "requested"}
    lite0_teacher.precision = "auto"


def test_a_decision_measured_on_a_busy_machine_is_used_but_not_cached(fresh, monkeypatch):
    calls = []
    _mock(
        monkeypatch,
        native=True,
        rates={"fp32": 10.0, "fp32_channels_last": 9.0, "bf16_channels_last": 30.0},
        calls=calls,
    )
    monkeypatch.setattr(P, "machine_busy", lambda: "load 5.0 on 2 cores")
    p = P.resolve("auto", "cpu", _T(), 64)
    assert p.name == "bf16" and "not cached" in p.reason and not (fresh / P.CACHE_FILE).exists()


def test_resume_keeps_the_precision_the_run_started_with(
    tmp_path_factory, tmp_path, lite0_teacher, one_thread
):
    from unistad_edu.data import MVTecDataset
    from unistad_edu.engine import TrainConfig, fit
    from unistad_edu.methods import build_model

    from .conftest import tiny_synthetic

    data = tiny_synthetic(tmp_path_factory, size=64, n_train=4, n_test_good=1, n_test_defect=1)
    train = MVTecDataset(data, "train", image_size=64)
    model = build_model("stpm", lite0_teacher, image_size=64, batch_size=4, epochs=2)
    fit(
        model,
        train,
        TrainConfig(progress=False, precision="bf16", max_minutes=1e-6),
        out=tmp_path / "run",
    )
    again = build_model("stpm", lite0_teacher, image_size=64, batch_size=4, epochs=2)
    fit(
        again, train, TrainConfig(progress=False), out=tmp_path / "run", resume=True
    )  # auto, resumed
    assert again.teacher.precision.name == "bf16"  # not re-measured: the run's own precision
    lite0_teacher.precision = "auto"
