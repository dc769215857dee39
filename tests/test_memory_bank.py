"""The nearest-neighbour memory bank (PatchCore-style): coreset, distances, and the engine's no-gradient path."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from unistad_edu.checkpoint import STATE_FILE, load_checkpoint
from unistad_edu.data import MVTecDataset
from unistad_edu.engine import TrainConfig, fit
from unistad_edu.inference import evaluate, score_dataset
from unistad_edu.methods import build_model, make_config
from unistad_edu.methods.base import Batch
from unistad_edu.methods.memory_bank import greedy_coreset, nearest_distance

SIZE = 64
QUIET = dict(progress=False)


# tiny_data / train_set: conftest's synthetic set of every category at 64 px


def _bank(teacher, **kw):
    return build_model("memory_bank", teacher, image_size=SIZE, **kw)


def _brute_force_k_center(x: torch.Tensor, n: int, start: int) -> list[int]:
    """k-center greedy written the slow, obvious way: every step recomputes all distances to the chosen set."""
    chosen = [start]
    while len(chosen) < n:
        d = (
            torch.cdist(x.double(), x[chosen].double()).min(dim=1).values
        )  # (N,) distance to the nearest chosen
        chosen.append(int(d.argmax()))
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coreset_picks_the_farthest_points_like_brute_force(seed):
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(seed))
    got = greedy_coreset(x, 40, projection_dim=None, seed=seed).tolist()
    assert len(set(got)) == 40
    assert got == _brute_force_k_center(x, 40, start=got[0])


@pytest.mark.parametrize("seed", [0, 1])
def test_both_coreset_loops_pick_like_brute_force(seed):
    """The numpy loop (CPU) and the torch loop (any other device; run here on CPU) each pick brute force's
    points from the same start."""
    from unistad_edu.methods.memory_bank import _greedy_loop_numpy, _greedy_loop_torch

    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(seed)) * torch.arange(1, 9)
    by_torch = _greedy_loop_torch(x, 30, torch.Generator().manual_seed(seed)).tolist()
    by_numpy = _greedy_loop_numpy(
        x.t().contiguous().numpy(), 30, torch.Generator().manual_seed(seed)
    )
    assert by_torch == _brute_force_k_center(x, 30, start=by_torch[0])
    assert by_numpy.tolist() == _brute_force_k_center(x, 30, start=int(by_numpy[0]))


def test_coreset_on_a_line_goes_to_the_ends_first():
    x = torch.arange(11, dtype=torch.float32)[:, None]  # points 0..10 on a line
    got = greedy_coreset(x, 3, seed=0).tolist()
    start = got[0]
    assert got[1] == (0 if start > 5 else 10)  # the farthest point from the start
    assert greedy_coreset(x, 11).tolist() == list(range(11)) and greedy_coreset(
        x, 50
    ).tolist() == list(range(11))


def test_coreset_with_projection_still_covers_the_set():
    """Clustered points, some clusters tiny (like rare normal patterns): the greedy coreset, projected or not,
    keeps a point near every one; a random subset of the same size misses the tiny ones."""
    g = torch.Generator().manual_seed(0)
    centres = 10 * torch.randn(30, 64, generator=g)
    sizes = [200] * 10 + [3] * 20
    x = torch.cat(
        [c + 0.3 * torch.randn(n, 64, generator=g) for c, n in zip(centres, sizes)]
    )  # (2060, 64)
    radius = {}
    for p in (None, 16):
        idx = greedy_coreset(x, 60, projection_dim=p, seed=0)
        assert len(set(idx.tolist())) == 60
        radius[p] = torch.cdist(x, x[idx]).min(dim=1).values.max().item()
    rand = torch.randperm(len(x), generator=g)[:60]
    radius["random"] = torch.cdist(x, x[rand]).min(dim=1).values.max().item()
    assert max(radius[None], radius[16]) < 0.5 * radius["random"], radius


def test_chunked_nearest_distance_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    q, bank = torch.randn(37, 5, generator=g), torch.randn(23, 5, generator=g)
    want = (q[:, None] - bank[None]).pow(2).sum(-1).sqrt().min(dim=1).values
    for chunk in (1, 7, 23, 100, 2**22):
        torch.testing.assert_close(nearest_distance(q, bank, chunk), want, atol=1e-5, rtol=1e-5)


def test_map_is_the_nearest_neighbour_distance(lite0_teacher):
    g = torch.Generator().manual_seed(0)
    train, test = (
        torch.rand(2, 3, SIZE, SIZE, generator=g),
        torch.rand(2, 3, SIZE, SIZE, generator=g),
    )
    model = _bank(lite0_teacher, coreset_ratio=1.0).eval()
    info = model.build([Batch(train)])
    assert info["patches"] == info["bank_size"] == 2 * (SIZE // 8) ** 2
    emb_train, emb_test = model.embed(Batch(train)), model.embed(Batch(test))  # (2, 152, 8, 8)
    assert emb_test.shape == (2, 40 + 112, SIZE // 8, SIZE // 8)
    bank = emb_train.permute(0, 2, 3, 1).reshape(-1, 152).double()
    patches = emb_test.permute(0, 2, 3, 1).reshape(-1, 152).double()
    want = (
        (patches[:, None] - bank[None])
        .pow(2)
        .sum(-1)
        .sqrt()
        .min(dim=1)
        .values.view(2, 1, SIZE // 8, SIZE // 8)
    )
    maps = model.anomaly_maps(Batch(test))
    assert set(maps) == {"nn"}
    torch.testing.assert_close(maps["nn"].double(), want, atol=2e-3, rtol=1e-4)


def test_a_training_image_is_at_distance_zero(lite0_teacher):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, SIZE, SIZE, generator=g)
    model = _bank(lite0_teacher, coreset_ratio=1.0).eval()
    model.build([Batch(images[:2])])
    seen = model.score(Batch(images[:2])).pred_score
    unseen = model.score(Batch(images[2:])).pred_score
    assert seen.max() < 0.02 * unseen.min(), (seen, unseen)  # ~0 up to cdist's float rounding


def test_engine_builds_without_gradients_checkpoints_and_resumes(
    train_set, tiny_data, lite0_teacher, tmp_path
):
    model = _bank(lite0_teacher, coreset_ratio=0.2)
    assert not model.trainable_parameters()
    res = fit(model, train_set, TrainConfig(refit=False, **QUIET), out=tmp_path)
    n_train = json.loads((tmp_path / "config.json").read_text())[
        "train_images"
    ]  # after the held-out split
    assert 0 < n_train < len(train_set) and res.history[0]["images"] == n_train
    assert res.epochs_done == 1 and res.threshold is not None and not res.stopped_early
    assert model.bank.shape == (int(np.ceil(0.2 * n_train * (SIZE // 8) ** 2)), 152)
    assert not (tmp_path / STATE_FILE).exists()  # nothing to resume mid-way
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["complete"] is True and cfg["epochs_done"] == 1 and cfg["method"] == "memory_bank"
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["bank_size"] == model.bank.shape[0]

    loaded = load_checkpoint(
        tmp_path, teacher=lite0_teacher
    )  # a fresh model's bank is empty: resized on load
    assert torch.equal(loaded.bank, model.bank) and loaded.threshold == res.threshold
    test = MVTecDataset(tiny_data, "test", image_size=SIZE)
    a = score_dataset(model.eval(), test, keep_maps=False)["scores"]
    b = score_dataset(loaded, test, keep_maps=False)["scores"]
    np.testing.assert_allclose(a, b, rtol=1e-5)
    table = evaluate(loaded, test, progress=False)
    assert all(0 <= v <= 1 for v in table["mean"].values() if v is not None)

    again = _bank(lite0_teacher, coreset_ratio=0.2)
    res2 = fit(again, train_set, TrainConfig(refit=False, **QUIET), out=tmp_path, resume=True)
    assert res2.already_complete and res2.epochs_done == 1 and res2.threshold == res.threshold
    assert torch.equal(again.bank, model.bank)  # the returned model is the finished one
    assert len((tmp_path / "train_log.jsonl").read_text().splitlines()) == 1


def test_in_memory_store_builds_the_same_bank_as_streaming(train_set, lite0_teacher):
    banks = []
    for preload in (True, False):
        model = _bank(lite0_teacher, coreset_ratio=0.1)
        fit(model, train_set, TrainConfig(preload=preload, holdout_fraction=0.0, **QUIET))
        banks.append(model.bank)
    assert torch.equal(*banks)


def test_cli_train_then_resume_says_complete(tiny_data, tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "unistad_edu",
        "train",
        "--method",
        "memory_bank",
        "--data",
        str(tiny_data),
        "--image-size",
        str(SIZE),
        "--out",
        str(run),
        "--no-progress",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (run / "model.safetensors").is_file()
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "already complete" in r.stdout, r.stdout + r.stderr


def test_paper_preset_reduces_wide_resnet_features_to_1024():
    from unistad_edu.teacher import load_teacher

    cfg = make_config("memory_bank", "paper")
    assert cfg.teacher == "wide_resnet50_2" and cfg.coreset_ratio == 0.01 and cfg.embed_dim == 1024
    teacher = load_teacher(
        cfg.teacher, weights=None, layers=cfg.teacher_layers
    )  # layer2 + layer3: 512 + 1024
    model = build_model(
        "memory_bank", teacher, cfg=make_config("memory_bank", "paper", image_size=SIZE)
    ).eval()
    assert model.dim == 1024
    assert model.embed(Batch(torch.rand(1, 3, SIZE, SIZE))).shape == (1, 1024, SIZE // 8, SIZE // 8)


def test_an_empty_bank_warns():
    from unistad_edu.teacher import load_teacher

    model = build_model("memory_bank", load_teacher(), image_size=SIZE).eval()
    with pytest.warns(RuntimeWarning, match="bank is empty"):
        maps = model.anomaly_maps(Batch(torch.rand(1, 3, SIZE, SIZE)))
    assert maps["nn"].shape == (1, 1, SIZE // 8, SIZE // 8) and maps["nn"].abs().sum() == 0
    with pytest.raises(NotImplementedError):
        build_model("stpm", model.teacher, image_size=SIZE).build([])


def _hand_3x3_zero_padded(f: np.ndarray) -> np.ndarray:
    """(C, h, w) -> (C, h, w): each cell the sum of its 3 x 3 neighbourhood divided by 9, cells outside the grid 0."""
    C, h, w = f.shape
    out = np.zeros_like(f)
    for i in range(h):
        for j in range(w):
            total = np.zeros(C)
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    if 0 <= i + di < h and 0 <= j + dj < w:
                        total += f[:, i + di, j + dj]
            out[:, i, j] = total / 9.0
    return out


def test_zero_padded_aggregation_equals_a_hand_computed_3x3_average(lite0_teacher):
    """border="zeros" (the default, as PatchCore's unfold and anomalib): a corner cell is the sum of its 4
    in-grid neighbours / 9, an edge cell of its 6 / 9; border="valid" divides by 4 and 6 instead."""
    g = torch.Generator().manual_seed(3)
    model = _bank(lite0_teacher).eval()
    fine, coarse = model.levels
    h = SIZE // 8
    feats = {
        fine: torch.rand(1, 40, h, h, generator=g),
        coarse: torch.rand(1, 112, h // 2, h // 2, generator=g),
    }
    emb = model.embed(Batch(image=None, features=feats))  # (1, 152, h, h)
    want_fine = _hand_3x3_zero_padded(feats[fine][0].double().numpy())
    np.testing.assert_allclose(emb[0, :40].double().numpy(), want_fine, rtol=1e-5, atol=1e-6)
    corner = feats[fine][0, :, :2, :2].sum(dim=(1, 2)) / 9  # 4 cells inside the grid, 5 zeros
    torch.testing.assert_close(emb[0, :40, 0, 0], corner)
    valid = _bank(lite0_teacher, border="valid").eval().embed(Batch(image=None, features=feats))
    torch.testing.assert_close(valid[0, :40, 0, 0], feats[fine][0, :, :2, :2].mean(dim=(1, 2)))
    torch.testing.assert_close(
        valid[0, :40, 1:-1, 1:-1], emb[0, :40, 1:-1, 1:-1]
    )  # the inside is the same
    with pytest.raises(ValueError, match="border"):
        _bank(lite0_teacher, border="reflect")


def test_refit_builds_the_final_bank_from_every_training_image(train_set, lite0_teacher, tmp_path):
    """The threshold comes from the held-out 10 % (scored by a bank built without them); the final bank is then
    rebuilt from all of train/good: every training image's patches are counted in it. The default for a bank
    calibrated with one global threshold; per-category calibration keeps the bank its thresholds came from."""
    model = _bank(lite0_teacher, coreset_ratio=1.0)
    res = fit(model, train_set, TrainConfig(calibration="global", **QUIET), out=tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    n_held = cfg["heldout_images"]
    assert n_held > 0 and cfg["refit"] is True and cfg["train_images"] == len(train_set)
    first, final = res.history
    assert (
        first["images"] == len(train_set) - n_held
        and final["images"] == len(train_set)
        and final["refit"]
    )
    assert final["patches"] == len(train_set) * (SIZE // 8) ** 2 == model.bank.shape[0]
    assert "rebuilt from all" in cfg["threshold_rule"] and res.threshold is not None
    # every training image, the held-out ones included, is in the bank: each at distance ~0 from it
    scores = score_dataset(model.eval(), train_set, keep_maps=False)["scores"]
    assert scores.max() < 0.05 * res.threshold


def test_per_category_calibration_keeps_the_bank_its_thresholds_came_from(
    train_set, lite0_teacher, tmp_path
):
    model = _bank(lite0_teacher, coreset_ratio=1.0)
    res = fit(
        model, train_set, TrainConfig(**QUIET), out=tmp_path
    )  # calibration auto: per category
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert (
        cfg["refit"] is False
        and cfg["calibration"]["kind"] == "per-category"
        and len(res.history) == 1
    )
    assert model.bank.shape[0] == (len(train_set) - cfg["heldout_images"]) * (SIZE // 8) ** 2


def test_refit_is_refused_for_a_method_trained_by_gradient(train_set, lite0_teacher):
    model = build_model("stpm", lite0_teacher, image_size=SIZE, epochs=1)
    with pytest.raises(ValueError, match="train it twice"):
        fit(model, train_set, TrainConfig(refit=True, **QUIET))


def test_a_config_without_the_border_option_is_refused_not_given_todays_default(
    train_set, lite0_teacher, tmp_path
):
    """A bank built with ``border="valid"`` whose config lost the field must not load as today's default
    (another border, another bank): the checkpoint format wants every field."""
    from unistad_edu.checkpoint import CheckpointError

    model = _bank(lite0_teacher, coreset_ratio=0.1, border="valid")
    fit(model, train_set, TrainConfig(holdout_fraction=0.0, **QUIET), out=tmp_path)
    assert load_checkpoint(tmp_path, teacher=lite0_teacher).cfg.border == "valid"
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["method_config"]["border"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"method_config lacks \['border'\]"):
        load_checkpoint(tmp_path, teacher=lite0_teacher)


def test_patchcore_reweighted_image_score_against_eq7_by_hand():
    """PatchCore Eq. 7 on a hand-made bank: s = (1 - e^{|m_test - m*|} / sum_{m in N_b(m*)} e^{|m_test - m|}) s*."""
    from unistad_edu.methods.memory_bank import nearest, reweighted_score

    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [10.0, 10.0]])  # (4, 2)
    patches = torch.tensor(
        [[[0.1, 0.0], [0.0, -3.0]]]
    )  # (1, 2, 2): the second patch is the far one
    d, k = nearest(patches[0], bank)
    assert torch.allclose(d, torch.tensor([0.1, 3.0])) and k.tolist() == [0, 0]
    got = reweighted_score(patches, d[None], k[None], bank, b=3)
    # s* = 3 (patch (0, -3), nearest m* = (0, 0)); N_3(m*) = (0,0), (1,0), (0,2)
    dists = np.array([3.0, np.hypot(1.0, 3.0), 5.0])
    expect = (1 - np.exp(dists[0]) / np.exp(dists).sum()) * 3.0
    assert got.item() == pytest.approx(expect, rel=1e-6)
    assert reweighted_score(patches, d[None], k[None], bank, b=1).item() == pytest.approx(
        0.0, abs=1e-7
    )  # b = 1: 1 - 1
    # chunked search gives the same nearest rows as one block
    q = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    d1, k1 = nearest(q, bank, chunk_elements=3)
    d2, k2 = nearest(q, bank)
    assert torch.equal(k1, k2) and torch.allclose(d1, d2)


def test_reweighted_rule_is_the_image_score_of_the_shared_path(train_set, lite0_teacher):
    model = _bank(lite0_teacher, image_score_rule="reweighted")
    b = [train_set[i] for i in range(4)]
    x = torch.stack([it["image"] for it in b])
    with torch.no_grad():
        model.eval().build([Batch(image=x, features=lite0_teacher(x))])
        out = model.score(Batch(image=x))
        maps, terms = model.score_inputs(Batch(image=x))
    torch.testing.assert_close(out.pred_score, terms["reweighted"])
    assert (
        terms["reweighted"] <= maps["nn"].flatten(1).amax(dim=1) + 1e-6
    ).all()  # a weight in [0, 1) times s*
    with pytest.raises(ValueError, match="image_score_rule"):
        make_config("memory_bank", image_score_rule="weighted")
