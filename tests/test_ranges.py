"""Values refused where they enter (issue 32 item 4): every number of every method config finite and in its
field's range, the scoring config's too, --threads bounded by the machine; and a run whose weights or threshold
became non-finite is not saved as complete."""

from __future__ import annotations

import argparse
import json
import math
import os

import pytest
import torch

from unistad_edu.methods import METHODS, make_config
from unistad_edu.options import THREADS_PER_CORE, thread_count
from unistad_edu.scoring import ScoringConfig

pytestmark = pytest.mark.usefixtures("one_thread")

BAD = [  # (method, field, value, words of the message)
    ("stpm", "lr", 1e30, "lr must be in (0, 10]"),
    ("stpm", "lr", 0.0, "lr must be in (0, 10]"),
    ("stpm", "lr", -1e-3, "lr must be in (0, 10]"),
    ("stpm", "lr", math.nan, "lr must be a finite number"),
    ("stpm", "lr", math.inf, "lr must be a finite number"),
    ("stpm", "gamma", -0.5, "gamma must be in (0, 1]"),
    ("stpm", "gamma", 0.0, "gamma must be in (0, 1]"),
    ("stpm", "gamma", 1.5, "gamma must be in (0, 1]"),
    ("stpm", "momentum", 1.0, "momentum must be in [0, 1)"),
    ("stpm", "weight_decay", -1e-4, "weight_decay must be in [0, 1]"),
    ("uniad", "grad_clip", 0.0, "grad_clip must be in (0, inf)"),
    ("uniad", "dropout", 1.0, "dropout must be in [0, 1)"),
    ("uniad", "jitter_prob", 1.5, "jitter_prob must be in [0, 1]"),
    ("uniad", "hidden_dim", 0, "hidden_dim must be in [1, inf)"),
    ("uniad", "num_heads", 0, "num_heads must be in [1, inf)"),
    ("unistad", "w_rec", -1.0, "w_rec must be in [0, inf)"),
    ("unistad", "refine_temperature", 0.0, "refine_temperature must be in (0, inf)"),
    ("dual_student", "joint_weight", -0.1, "joint_weight must be in [0, inf)"),
    ("dual_student", "bottleneck_dropout", -0.2, "bottleneck_dropout must be in [0, 1)"),
    ("snl", "cram_weight", -1.0, "cram_weight must be in [0, inf)"),
    ("snl", "cram_centres", 0, "cram_centres must be in [1, inf)"),
    ("memory_bank", "coreset_ratio", 0.0, "coreset_ratio must be in (0, 1]"),
    ("memory_bank", "coreset_ratio", 1.5, "coreset_ratio must be in (0, 1]"),
    ("enhanced_stpm", "anomaly_prob", 2.0, "anomaly_prob must be in [0, 1]"),
    ("enhanced_stpm", "pair2_weight", -1.0, "pair2_weight must be in [0, inf)"),
    ("rd", "init_seed", -1, "init_seed must be in [0, inf)"),
    ("rd", "betas", (1.0, 0.999), "betas must be two numbers in [0, 1)"),
]


@pytest.mark.parametrize(
    "method, field, value, words", BAD, ids=[f"{m}-{f}={v}" for m, f, v, _ in BAD]
)
def test_a_value_outside_its_range_is_refused_naming_the_field(method, field, value, words):
    with pytest.raises(ValueError) as err:
        make_config(method, "cpu", **{field: value})
    assert words in str(err.value) and field in str(err.value)


GOOD = [
    ("stpm", "gamma", 1.0),
    ("stpm", "momentum", 0.0),
    ("stpm", "lr", 10.0),
    ("uniad", "dropout", 0.0),
    ("unistad", "w_rec", 0.0),
    ("memory_bank", "coreset_ratio", 1.0),
    ("uniad", "jitter_prob", 0.0),
]


@pytest.mark.parametrize("method, field, value", GOOD, ids=[f"{m}-{f}={v}" for m, f, v in GOOD])
def test_the_ends_of_a_range_are_accepted(method, field, value):
    assert getattr(make_config(method, "cpu", **{field: value}), field) == value


def test_every_preset_of_every_method_lies_in_its_ranges():
    for name, cls in METHODS.items():
        for preset in cls.presets:
            make_config(name, preset)  # raises if a preset's own value were out of range


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"topk": 0}, "topk must be"),
        ({"topk": -1}, "topk must be"),
        ({"topk": 1.5}, "topk must be"),
        ({"blur_sigma": -1.0}, "blur_sigma must be"),
        ({"blur_sigma": math.nan}, "blur_sigma must be"),
        ({"pool_size": 0}, "pool_size must be"),
        ({"pool_size": 2.5}, "pool_size must be"),
    ],
)
def test_scoring_config_ranges(kw, words):
    with pytest.raises(ValueError, match=words):
        ScoringConfig(**kw)
    assert ScoringConfig(topk=1.0, blur_sigma=0.0, pool_size=1).topk == 1.0  # the ends are fine


def test_threads_are_bounded_by_the_machine():
    cores = os.cpu_count() or 1
    assert (
        thread_count("1") == 1
        and thread_count(str(THREADS_PER_CORE * cores)) == THREADS_PER_CORE * cores
    )
    for bad in ("0", "-1", str(THREADS_PER_CORE * cores + 1), "999999", "two"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"this machine has {cores}"):
            thread_count(bad)


def test_weights_that_become_non_finite_stop_the_run_unsaved(lite0_teacher, tmp_path):
    """One optimiser step per epoch whose loss is finite but whose gradient is infinite (as a huge learning rate
    or an overflow would make it on the last step): the step leaves a weight non-finite, fit raises, and the run
    folder holds no model saved as complete."""
    from unistad_edu.data import MVTecDataset
    from unistad_edu.engine import TrainConfig, fit
    from unistad_edu.methods import build_model
    from unistad_edu.synthetic import make_synthetic

    data = make_synthetic(tmp_path / "syn", size=64, n_train=6, n_test_good=1, n_test_defect=1)
    train = MVTecDataset(data, "train", image_size=64)
    model = build_model("stpm", lite0_teacher, image_size=64, batch_size=16)
    next(iter(model.trainable_parameters())).register_hook(lambda g: torch.full_like(g, math.inf))
    run = tmp_path / "run"
    with pytest.raises(FloatingPointError, match="weights became non-finite in epoch 1"):
        fit(model, train, TrainConfig(epochs=2, progress=False, holdout_fraction=0.0), out=run)
    cfg = run / "config.json"
    assert not cfg.exists() or not json.loads(cfg.read_text()).get("complete")
