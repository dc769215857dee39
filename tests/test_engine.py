"""Engine, checkpoints and the CLI, end to end on a tiny synthetic set."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from unistad_edu.checkpoint import CheckpointError, load_checkpoint
from unistad_edu.data import MVTecDataset
from unistad_edu.engine import TrainConfig, fit
from unistad_edu.inference import method_batch, predict, score_dataset
from unistad_edu.methods import METHODS, build_model, make_config
from unistad_edu.methods.base import Batch

SIZE = 64


# tiny_data / train_set: conftest's synthetic set of every category at 64 px


def _stpm(teacher):
    return build_model("stpm", teacher, image_size=SIZE, batch_size=8)


QUIET = dict(progress=False)


def _reads_category(source: str) -> bool:
    """Does code (not docstrings or comments) name a category: an attribute, variable or string key?"""
    tree = ast.parse(source)
    docstrings = {
        id(n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and "categor" in node.attr:
            return True
        if isinstance(node, ast.Name) and "categor" in node.id:
            return True
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and re.search(r"\bcategor", node.value)
        ):
            return True
    return False


def test_category_check_catches_reads():
    assert _reads_category("def f(b):\n    return b['category']")
    assert _reads_category("def f(b):\n    return b.category")
    assert _reads_category("def f(b):\n    categories = 1")
    assert not _reads_category(
        'def f(b):\n    """Works for every category."""\n    return b.image  # any category'
    )


def test_methods_cannot_read_the_category(train_set, lite0_teacher):
    # what a method sees has no category field, and the engine drops it
    assert {f.name for f in dataclasses.fields(Batch)} == {"image", "features"}
    from unistad_edu.data import collate

    batch = collate([train_set[i] for i in range(4)])
    mb = method_batch(batch, None, torch.device("cpu"))
    assert not hasattr(mb, "category")
    for name, cls in METHODS.items():
        assert not _reads_category(inspect.getsource(sys.modules[cls.__module__])), (
            f"method {name} reads the category"
        )
        model = build_model(name, lite0_teacher, image_size=SIZE)
        assert torch.isfinite(model.loss(mb))
        maps = model.anomaly_maps(mb)
        assert all(m.ndim == 4 and m.shape[1] == 1 for m in maps.values())


def test_resume_is_exact(train_set, lite0_teacher, tmp_path):
    straight = _stpm(lite0_teacher)
    fit(straight, train_set, TrainConfig(epochs=3, **QUIET), out=tmp_path / "a")
    interrupted = _stpm(lite0_teacher)
    fit(
        interrupted, train_set, TrainConfig(epochs=1, **QUIET), out=tmp_path / "b"
    )  # "killed" after epoch 1
    resumed = _stpm(lite0_teacher)
    res = fit(resumed, train_set, TrainConfig(epochs=3, **QUIET), out=tmp_path / "b", resume=True)
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    a, b = straight.state_for_checkpoint(), resumed.state_for_checkpoint()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = [json.loads(x) for x in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in log] == [1, 2, 3]
    ref_log = [json.loads(x) for x in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert [x["loss"] for x in log] == [x["loss"] for x in ref_log]


@pytest.mark.parametrize("method", ["stpm", "uniad"])
def test_in_memory_store_trains_exactly_like_streaming(method, train_set, lite0_teacher):
    """preload=True (tensors in memory; UniAD without images) must give the very same weights as batches
    streamed through the DataLoader and the cache: same order, same values."""
    cfg = dict(epochs=2, holdout_fraction=0.0, **QUIET)
    streamed = build_model(method, lite0_teacher, image_size=SIZE, batch_size=4)
    fit(streamed, train_set, TrainConfig(preload=False, **cfg))
    stored = build_model(method, lite0_teacher, image_size=SIZE, batch_size=4)
    seen = []
    loss = stored.loss
    stored.loss = lambda b: (seen.append(b.image is None), loss(b))[1]  # what the method was handed
    fit(stored, train_set, TrainConfig(preload=True, **cfg))
    assert seen and all(seen) == (not stored.needs_images)
    a, b = streamed.state_for_checkpoint(), stored.state_for_checkpoint()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_budget_stops_cleanly_and_resume_finishes(train_set, lite0_teacher, tmp_path):
    model = _stpm(lite0_teacher)
    res = fit(model, train_set, TrainConfig(epochs=3, max_minutes=1e-6, **QUIET), out=tmp_path)
    assert res.stopped_early and res.epochs_done == 1
    assert json.loads((tmp_path / "config.json").read_text())["complete"] is False
    res2 = fit(
        _stpm(lite0_teacher), train_set, TrainConfig(epochs=3, **QUIET), out=tmp_path, resume=True
    )
    assert (
        res2.epochs_done == 3
        and json.loads((tmp_path / "config.json").read_text())["complete"] is True
    )
    res3 = fit(
        _stpm(lite0_teacher), train_set, TrainConfig(epochs=3, **QUIET), out=tmp_path, resume=True
    )
    assert res3.already_complete and res3.epochs_done == 3  # finished run: nothing to do


def test_the_budget_stops_the_run_after_the_epoch_it_runs_out_in(
    train_set, lite0_teacher, tmp_path, monkeypatch
):
    """A fake clock that advances 10 s per training step: an epoch of k steps takes 10 k s. With a budget of
    3.5 epochs and 10 asked, the run stops after epoch 4 (the one in which the budget ran out), not complete,
    its cosine schedule that of 10 epochs (mid-schedule); --resume goes on from epoch 4."""
    import unistad_edu.engine as engine

    clock = [0.0]
    monkeypatch.setattr(engine.time, "perf_counter", lambda: clock[0])
    model = build_model(
        "stpm", lite0_teacher, image_size=SIZE, batch_size=8, schedule="cosine", lr=0.01
    )
    loss = model.loss
    model.loss = lambda b: (clock.__setitem__(0, clock[0] + 10.0), loss(b))[1]
    from unistad_edu.engine import held_out

    n_train = len(held_out(train_set)[0])  # the engine's split
    steps = n_train // 8 if n_train > 8 else 1  # batches of 8, the last partial one dropped
    budget_min = 3.5 * 10.0 * steps / 60
    res = fit(
        model, train_set, TrainConfig(epochs=10, max_minutes=budget_min, **QUIET), out=tmp_path
    )
    saved = json.loads((tmp_path / "config.json").read_text())
    lrs = [
        json.loads(line)["lr"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()
    ]
    assert (res.epochs_done, res.stopped_early) == (4, True) and saved["complete"] is False
    assert lrs == pytest.approx([0.01 * 0.5 * (1 + math.cos(math.pi * e / 10)) for e in range(4)])


@pytest.fixture(scope="module")
def trained_run(train_set, lite0_teacher, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    model = _stpm(lite0_teacher)
    fit(model, train_set, TrainConfig(epochs=2, **QUIET), out=run)
    return run, model


def test_load_time_overrides_change_scoring_not_weights(trained_run, lite0_teacher):
    run, model = trained_run
    from unistad_edu.scoring import ScoringConfig

    changed = load_checkpoint(
        run, teacher=lite0_teacher, overrides={"scoring": {"image_score": "topk_mean"}}
    )
    assert changed.cfg.scoring.image_score == "topk_mean" and model.cfg.scoring.image_score == "max"
    # the saved threshold belongs to the saved scoring: with an override there is none (no false-alarm rate)
    assert (
        load_checkpoint(run, teacher=lite0_teacher).threshold is not None
        and changed.threshold is None
    )
    for k, v in model.state_for_checkpoint().items():
        assert torch.equal(v, changed.state_for_checkpoint()[k]), k
    with pytest.raises(CheckpointError, match="no_such_field"):
        load_checkpoint(run, teacher=lite0_teacher, overrides={"no_such_field": 1})
    assert isinstance(changed.cfg.scoring, ScoringConfig)


def test_scoring_accepts_a_device_string(trained_run, train_set):
    run, model = trained_run
    a = score_dataset(model, train_set, device="cpu", keep_maps=False)["scores"]
    b = score_dataset(model, train_set, device=torch.device("cpu"), keep_maps=False)["scores"]
    np.testing.assert_array_equal(a, b)


def test_checkpoint_roundtrip(trained_run, lite0_teacher, tiny_data):
    run, model = trained_run
    loaded = load_checkpoint(run, teacher=lite0_teacher)
    for k, v in model.state_for_checkpoint().items():
        assert torch.equal(v, loaded.state_for_checkpoint()[k])
    assert loaded.threshold == model.threshold and loaded.threshold is not None
    cfg = json.loads((run / "config.json").read_text())
    for key in (
        "method",
        "method_config",
        "teacher",
        "image_size",
        "normalization",
        "threshold",
        "package_version",
        "validation",
    ):
        assert key in cfg
    assert cfg["teacher"]["weights_hash"] == lite0_teacher.weights_hash
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))
    test = MVTecDataset(tiny_data, "test", image_size=SIZE)
    a = score_dataset(model.eval(), test, keep_maps=False)["scores"]
    b = score_dataset(loaded, test, keep_maps=False)["scores"]
    np.testing.assert_allclose(
        a, b, rtol=1e-4
    )  # channels_last vs plain layout: float rounding only


def test_threshold_comes_from_heldout_normal_images(trained_run, train_set):
    run, model = trained_run
    cfg = json.loads((run / "config.json").read_text())
    assert "held-out normal train images" in cfg["threshold_rule"]
    from unistad_edu.engine import held_out

    _, held = held_out(train_set)
    assert all(r.label == 0 and "train" in r.path.parts for r in held.records)
    scores = [r["score"] for r in predict(model, [r.path for r in held.records])]
    assert cfg["threshold"] == pytest.approx(float(np.quantile(scores, 0.99)), rel=1e-3)


def test_checkpoint_mismatches_say_what(trained_run, tmp_path):
    import shutil

    from unistad_edu.teacher import Teacher

    run, _ = trained_run
    with pytest.raises(CheckpointError, match="holds a 'stpm' model, not 'uniad'"):
        load_checkpoint(run, method="uniad")
    with pytest.raises(CheckpointError, match="teacher weights"):
        load_checkpoint(run, teacher=Teacher(weights=None))
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(bad)
    shutil.rmtree(bad)
    shutil.copytree(run, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["method"] = "nosuchmethod"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown method 'nosuchmethod'"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")


def test_nan_weights_refused(trained_run, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    run, _ = trained_run
    bad = tmp_path / "nan"
    shutil.copytree(run, bad)
    t = load_file(str(bad / "model.safetensors"))
    k = next(k for k, v in t.items() if v.is_floating_point())
    t[k] = torch.full_like(t[k], float("nan"))
    save_file(t, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(bad)


def test_presets_exist_for_every_method():
    for name, cls in METHODS.items():
        assert {"cpu", "paper"} <= set(cls.presets), name
        make_config(name, "paper")
    assert make_config("stpm", "paper").teacher == "resnet18"
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("stpm", "gpu")


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "unistad_edu", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.slow  # over 30 s on a 2-core CPU
def test_cli_train_eval_predict(tiny_data, tmp_path):
    run = tmp_path / "run"
    train = ("train", "--data", tiny_data, "--image-size", SIZE, "--epochs", 2, "--out", run)
    r = _cli(*train, "--no-progress")
    assert r.returncode == 0, r.stderr
    r = _cli("eval", "--run", run, "--no-progress")
    assert r.returncode == 0, r.stderr
    m = json.loads((run / "metrics.json").read_text())
    assert m["setting"] == "unified" and m["method"] == "stpm"
    assert set(m["categories"]) == set(MVTecDataset(tiny_data, "train").categories)
    assert all(0 <= v <= 1 for v in m["mean"].values() if v is not None)
    imgs = (
        sorted((tiny_data).glob("*/test/good/*.png"))[:1]
        + sorted(tiny_data.glob("*/test/hole/*.png"))[:1]
    )
    r = _cli("predict", "--run", run, *imgs, "--out", tmp_path / "pred")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.strip().splitlines()]
    assert len(lines) == 2 and all(x["verdict"] in ("normal", "ANOMALOUS") for x in lines)
    assert all(Path(x["heatmap"]).is_file() for x in lines)
    r = _cli(*train, "--resume", "--no-progress")
    assert r.returncode == 0 and "already complete" in r.stdout


def test_cli_per_class(tiny_data, tmp_path):
    run = tmp_path / "pc"
    r = _cli(
        "train",
        "--data",
        tiny_data,
        "--image-size",
        SIZE,
        "--epochs",
        1,
        "--setting",
        "per-class",
        "--categories",
        "weave,bolt",
        "--out",
        run,
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    assert (run / "weave" / "model.safetensors").is_file() and (
        run / "bolt" / "model.safetensors"
    ).is_file()
    r = _cli("eval", "--run", run, "--no-progress")
    assert r.returncode == 0, r.stderr
    m = json.loads((run / "metrics.json").read_text())
    assert m["setting"] == "per-class" and set(m["categories"]) == {"weave", "bolt"}


def test_cli_errors_are_messages_not_tracebacks(tmp_path):
    for args, text in [
        (("train", "--method", "nope", "--out", tmp_path / "x"), "unknown method 'nope'"),
        (("eval", "--run", tmp_path / "none"), "does not exist"),
        (("train", "--data", tmp_path / "empty", "--out", tmp_path / "y"), "does not exist"),
    ]:
        r = _cli(*args)
        assert r.returncode == 2 and text in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_no_pickle_anywhere():
    pkg = Path(__file__).resolve().parents[1] / "unistad_edu"
    for f in pkg.rglob("*.py"):
        src = f.read_text()
        assert "import pickle" not in src and "pickle.load" not in src, f
        for line in src.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, (f, line)


def test_cli_set_overrides_parse_and_reach_the_config():
    from unistad_edu.__main__ import _parse_overrides

    assert _parse_overrides(["jitter=false", "hidden_dim=256", "lr=0.001", "optimizer=sgd"]) == {
        "jitter": False,
        "hidden_dim": 256,
        "lr": 0.001,
        "optimizer": "sgd",
    }
    cfg = make_config("uniad", "cpu", **_parse_overrides(["neighbor_mask=false", "enc_layers=3"]))
    assert cfg.neighbor_mask is False and cfg.enc_layers == 3
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        _parse_overrides(["jitter"])
    with pytest.raises(ValueError, match="unknown UniADConfig fields"):
        make_config("uniad", "cpu", nosuch=1)


def test_public_helpers_follow_the_engines_own_rules(
    train_set, lite0_teacher, tmp_path, monkeypatch
):
    """batch_of / batches, held_out, steps_per_epoch and fit_per_class (equal steps) -- the helpers lessons use
    instead of copies -- agree with what fit itself does (its optimiser steps counted, its split read back)."""
    from unistad_edu import engine
    from unistad_edu.cache import FeatureCache

    cache = FeatureCache(lite0_teacher, SIZE)
    ids = [0, 3, 5, 6, 7]
    chunks = list(engine.batches(train_set, ids, 2, cache, with_indices=True))
    assert [p for p, _ in chunks] == [[0, 3], [5, 6], [7]]
    b = engine.batch_of(train_set, [5, 6], cache)
    torch.testing.assert_close(b.image, torch.stack([train_set[5]["image"], train_set[6]["image"]]))
    torch.testing.assert_close(
        b.features[lite0_teacher.layer_names[0]],
        lite0_teacher(b.image)[lite0_teacher.layer_names[0]],
    )
    cfg = TrainConfig(epochs=1, progress=False)
    train_part, held = engine.held_out(train_set, cfg)
    assert len(train_part) + len(held) == len(train_set) and len(held) > 0
    steps = []
    real_step = torch.optim.Adam.step
    monkeypatch.setattr(
        torch.optim.Adam,
        "step",
        lambda self, *a, **k: (steps.append(1), real_step(self, *a, **k))[1],
    )
    fit(_stpm(lite0_teacher), train_set, cfg, out=tmp_path / "run")
    assert len(steps) == engine.steps_per_epoch(
        train_set, 8, cfg
    )  # fit's own steps in one epoch, batches of 8
    assert json.loads((tmp_path / "run" / "config.json").read_text())["heldout_images"] == len(held)
    # per class, equal steps: every category's model takes at least the unified model's steps
    steps.clear()
    fits = engine.fit_per_class(lambda: _stpm(lite0_teacher), train_set, cfg)
    unified = engine.steps_per_epoch(train_set, 8, cfg)
    assert set(fits) == set(train_set.categories)
    for cat, (model, res) in fits.items():
        per_cat = res.epochs_done * engine.steps_per_epoch(train_set.by_category()[cat], 8, cfg)
        assert per_cat >= unified and res.threshold is not None
    assert len(steps) == sum(
        r.epochs_done * engine.steps_per_epoch(train_set.by_category()[c], 8, cfg)
        for c, (_, r) in fits.items()
    )


def test_balanced_epoch_order_gives_every_category_the_same_share():
    """A balanced epoch (sampling "balanced-labels" / "balanced-clusters"): an epoch of n draws where each of K categories fills n / K places (the first n mod K
    one more), each drawn from its own images only, small categories repeating and large ones subsampled."""
    from unistad_edu.engine import epoch_order

    groups = ["a"] * 2 + ["b"] * 3 + ["c"] * 12  # n = 17, K = 3 -> quotas 6, 6, 5 (sorted names)
    order = epoch_order(len(groups), seed=5, groups=groups).tolist()
    assert len(order) == 17 and all(0 <= i < 17 for i in order)
    drawn = {c: [i for i in order if groups[i] == c] for c in "abc"}
    assert [len(drawn[c]) for c in "abc"] == [6, 6, 5]
    assert sorted(drawn["a"]) == [
        0,
        0,
        0,
        1,
        1,
        1,
    ]  # 2 images x 3 full cycles: each exactly as often
    assert sorted(drawn["b"]) == [2, 2, 3, 3, 4, 4]
    assert len(set(drawn["c"])) == 5  # 5 distinct of the 12: no repeats before a cycle ends
    assert epoch_order(17, 5, groups).tolist() == order  # fixed by the seed
    assert epoch_order(17, 6, groups).tolist() != order
    assert sorted(epoch_order(17, 5).tolist()) == list(
        range(17)
    )  # uniform: a permutation, as before
    with pytest.raises(ValueError, match="category of each"):
        epoch_order(17, 5, groups[:-1])


def test_fit_with_balanced_sampling_feeds_the_small_category_as_often(tiny_data, lite0_teacher):
    """The engine hands the method a class-balanced stream when the config says so (counted through loss())."""
    from unistad_edu.engine import sampling_groups

    full = MVTecDataset(tiny_data, "train", image_size=SIZE)
    cats = full.categories
    # drop all but 2 images of the first category: an unbalanced set
    keep = [i for i, r in enumerate(full.records) if r.category != cats[0]]
    keep += [i for i, r in enumerate(full.records) if r.category == cats[0]][:2]
    data = full.subset(sorted(keep))
    counts = {}
    for sampling in ("uniform", "balanced-labels"):
        model = build_model(
            "stpm", lite0_teacher, image_size=SIZE, batch_size=1, epochs=1, sampling=sampling
        )
        groups = [r.category for r in data.records]
        assert (sampling_groups(model, data) is None) == (sampling == "uniform")
        seen = []
        loss = model.loss
        # each batch of 1 image: match its features back to the image's category by the image itself
        images = torch.stack([data[i]["image"] for i in range(len(data))])
        model.loss = lambda b: (
            seen.append(groups[int((images - b.image[0]).abs().flatten(1).sum(1).argmin())]),
            loss(b),
        )[1]
        fit(model, data, TrainConfig(holdout_fraction=0.0, cache=False, **QUIET))
        counts[sampling] = seen.count(cats[0])
    assert counts["uniform"] == 2  # once each
    assert counts["balanced-labels"] == len(data) // len(cats) + (
        0 < len(data) % len(cats)
    )  # its share of the epoch
    with pytest.raises(ValueError, match="sampling must be"):
        sampling_groups(
            build_model("stpm", lite0_teacher, image_size=SIZE, sampling="weighted"), data
        )
    with pytest.raises(
        ValueError, match="balanced-labels"
    ):  # the old name, which hid that it reads the folders
        build_model("stpm", lite0_teacher, image_size=SIZE, sampling="balanced")


@pytest.mark.parametrize("sampling", ["uniform", "balanced-clusters", "balanced-labels"])
def test_unified_training_reads_no_category_unless_asked_by_name(
    sampling, tiny_data, lite0_teacher
):
    """The engine and its sampler, not only the method files: training on the same images with every category
    folder renamed to one name gives bit-identical weights -- except with "balanced-labels", which reads the
    folders by design (so this test can tell a reader of labels from a non-reader)."""
    import dataclasses

    from unistad_edu.engine import sampling_groups

    folders = MVTecDataset(tiny_data, "train", image_size=SIZE)
    one = MVTecDataset(
        tiny_data,
        "train",
        image_size=SIZE,
        records=[dataclasses.replace(r, category="mixed") for r in folders.records],
    )
    weights = []
    for data in (folders, one):
        model = build_model(
            "stpm", lite0_teacher, image_size=SIZE, batch_size=2, epochs=1, sampling=sampling
        )
        fit(model, data, TrainConfig(holdout_fraction=0.0, **QUIET))
        weights.append(model.state_for_checkpoint())
    same = all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert same == (sampling != "balanced-labels")
    if (
        sampling == "balanced-clusters"
    ):  # the clusters do find the products (here: 2+ groups), from pixels alone
        model = build_model("stpm", lite0_teacher, image_size=SIZE, sampling=sampling)
        assert len(set(sampling_groups(model, one))) >= 2


def test_train_step_is_one_plain_optimiser_step(lite0_teacher, one_thread):
    """engine.train_step against the same step written out by hand on a copy of the model: identical weights
    after it (with grad_clip the clipped gradient, checked against a hand-computed global norm); a non-finite
    loss raises before any weight changes."""
    import copy

    from unistad_edu.engine import make_optimizer, train_step
    from unistad_edu.precision import Precision

    torch.manual_seed(0)
    x = torch.rand(2, 3, SIZE, SIZE)
    batch = Batch(image=x, features=lite0_teacher(x))
    for clip in (None, 1e-3):
        model = build_model(
            "stpm", lite0_teacher, image_size=SIZE, optimizer="sgd", lr=0.1, grad_clip=clip
        )
        twin = copy.deepcopy(model)
        loss = train_step(model, batch, make_optimizer(model), Precision("fp32", False))
        opt = torch.optim.SGD(
            twin.trainable_parameters(),
            lr=0.1,
            momentum=twin.cfg.momentum,
            weight_decay=twin.cfg.weight_decay,
        )
        expect = twin.loss(batch)
        expect.backward()
        params = twin.trainable_parameters()
        if clip:
            norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in params))
            assert norm > clip  # the clip does something here
            for p in params:
                p.grad.mul_(clip / (norm + 1e-6))
        opt.step()
        assert loss == pytest.approx(expect.item(), rel=1e-6)
        for a, b in zip(model.trainable_parameters(), params):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    before = [p.detach().clone() for p in model.trainable_parameters()]
    model.loss = lambda b: torch.tensor(float("nan"), requires_grad=True)
    with pytest.raises(FloatingPointError, match="loss became nan"):
        train_step(model, batch, make_optimizer(model), Precision("fp32", False))
    assert all(torch.equal(a, b) for a, b in zip(before, model.trainable_parameters()))
