"""Tests for the procedural MVTec-layout data set (unistad_edu.synthetic)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unistad_edu.synthetic import (
    CATEGORIES,
    DEFAULT_CATEGORIES,
    DEFECTS,
    MANIFEST_NAME,
    SyntheticConfig,
    SyntheticDatasetError,
    make_synthetic,
    render_sample,
    sample_rng,
    trivial_baseline,
)

SMALL = dict(size=64, n_train=4, n_test_good=2, n_test_defect=2)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def _arr(p: Path) -> np.ndarray:
    with Image.open(p) as im:
        return np.asarray(im)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("syn") / "small", **SMALL)


def test_registry():
    kinds = set(CATEGORIES.values())
    assert kinds == {"texture", "object"}
    assert len(DEFAULT_CATEGORIES) == 4
    assert sum(CATEGORIES[c] == "texture" for c in DEFAULT_CATEGORIES) == 2
    assert sum(CATEGORIES[c] == "object" for c in DEFAULT_CATEGORIES) == 2
    assert SyntheticConfig().categories == DEFAULT_CATEGORIES
    all_kinds = {k for c in CATEGORIES for k in DEFECTS[c]}
    assert {"scratch", "hole", "stain"} <= all_kinds and len(all_kinds) >= 4
    for c, kind in CATEGORIES.items():
        if kind == "object":
            assert {"missing", "extra"} & set(DEFECTS[c]), c
    with pytest.raises(ValueError):
        SyntheticConfig(categories=("nope",))


def test_layout(small_set):
    root = small_set
    man = json.loads((root / MANIFEST_NAME).read_text())
    assert man["config"]["categories"] == list(DEFAULT_CATEGORIES)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(DEFAULT_CATEGORIES)
    for cat in DEFAULT_CATEGORIES:
        d = root / cat
        train = sorted((d / "train" / "good").glob("*.png"))
        good = sorted((d / "test" / "good").glob("*.png"))
        assert len(train) == SMALL["n_train"] and len(good) == SMALL["n_test_good"]
        assert sorted(p.name for p in (d / "test").iterdir()) == sorted(("good",) + DEFECTS[cat])
        assert sorted(p.name for p in (d / "ground_truth").iterdir()) == sorted(DEFECTS[cat])
        for p in train[:1] + good[:1]:
            with Image.open(p) as im:
                assert im.mode == "RGB" and im.size == (64, 64)
        for kind in DEFECTS[cat]:
            imgs = sorted((d / "test" / kind).glob("*.png"))
            assert len(imgs) == SMALL["n_test_defect"]
            for p in imgs:
                mp = d / "ground_truth" / kind / f"{p.stem}_mask.png"
                assert mp.is_file(), mp
                with Image.open(p) as im, Image.open(mp) as mm:
                    assert im.mode == "RGB" and mm.mode == "L"
                    assert im.size == mm.size == (64, 64)
                    m = np.asarray(mm)
                assert set(np.unique(m)) <= {0, 255}
                assert (m > 0).any(), f"empty mask {mp}"
                assert (m > 0).mean() < 0.2, f"implausibly large mask {mp}"


def test_determinism(tmp_path):
    cfg = dict(SMALL, n_train=2, n_test_good=1, n_test_defect=1, categories=("grain", "pcb"))
    a = _files(make_synthetic(tmp_path / "a", **cfg))
    b = _files(make_synthetic(tmp_path / "b", **cfg, workers=1))
    assert a.keys() == b.keys() and a == b
    c = _files(make_synthetic(tmp_path / "c", **dict(cfg, seed=1)))
    assert c.keys() == a.keys()
    assert all(a[k] != c[k] for k in a)


def test_subset_consistency(tmp_path, small_set):
    one = make_synthetic(tmp_path / "one", **dict(SMALL, categories=("bolt",)))
    sub = _files(one)
    full = {k: v for k, v in _files(small_set).items() if k.startswith("bolt" + os.sep)}
    assert sub == full and len(sub) > 0


@pytest.mark.parametrize(
    "category,kind",
    [
        ("weave", "stain"),
        ("bolt", "hole"),
        ("pcb", "missing"),
        ("grain", "scratch"),
        ("capsule", "extra"),
    ],
)
def test_mask_exact_vs_rerendered_normal(tmp_path, category, kind):
    cfg = SyntheticConfig(
        size=64, n_train=1, n_test_good=0, n_test_defect=2, categories=(category,), seed=3
    )
    root = make_synthetic(tmp_path / "set", cfg)
    for i in range(cfg.n_test_defect):
        bad = _arr(root / category / "test" / kind / f"{i:03d}.png").astype(int)
        mask = _arr(root / category / "ground_truth" / kind / f"{i:03d}_mask.png") > 0
        # re-render the defect-free twin from the same random stream
        normal, bad2, mask2 = render_sample(
            category, sample_rng(cfg.seed, category, "test", kind, i), cfg.size, kind
        )
        assert np.array_equal(bad2, bad) and np.array_equal(mask2, mask)
        diff = np.abs(bad - normal.astype(int)).max(-1)
        assert (diff[~mask] == 0).all(), "pixels outside the mask changed"
        assert (diff[mask] > 0).all()
        assert (diff[mask] >= 6).mean() > 0.5, "most masked pixels should change visibly"


def test_render_sample_api():
    rng = sample_rng(0, "weave", "train", "good", 0)
    img, bad, mask = render_sample("weave", rng, 48)
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8 and bad is None and mask is None
    with pytest.raises(ValueError):
        render_sample("weave", rng, 48, "missing")  # textures have no logical defects


def test_normal_variation(small_set):
    for cat in DEFAULT_CATEGORIES:
        imgs = [
            _arr(p).astype(int) for p in sorted((small_set / cat / "train" / "good").glob("*.png"))
        ]
        for i in range(len(imgs)):
            for j in range(i + 1, len(imgs)):
                d = np.abs(imgs[i] - imgs[j]).mean()
                assert d > 1.0, (cat, i, j, d)  # more than sensor noise differs


def test_reuse_and_incomplete(tmp_path):
    cfg = dict(SMALL, n_train=2, n_test_good=1, n_test_defect=1, categories=("weave",))
    out = make_synthetic(tmp_path / "set", **cfg)
    pngs = sorted(out.rglob("*.png"))
    before = {p: p.stat().st_mtime_ns for p in pngs}
    man_before = (out / MANIFEST_NAME).stat().st_mtime_ns
    again = make_synthetic(tmp_path / "set", **cfg)
    assert again == out
    assert {p: p.stat().st_mtime_ns for p in sorted(out.rglob("*.png"))} == before
    assert (out / MANIFEST_NAME).stat().st_mtime_ns == man_before
    assert not list(tmp_path.glob(".set.build-*")), "temporary folder left behind"

    # another config -> clear error
    with pytest.raises(SyntheticDatasetError, match="other settings"):
        make_synthetic(tmp_path / "set", **dict(cfg, seed=5))

    # incomplete folder (no manifest) -> error naming the folder and the fix
    (out / MANIFEST_NAME).unlink()
    with pytest.raises(SyntheticDatasetError) as ei:
        make_synthetic(tmp_path / "set", **cfg)
    msg = str(ei.value)
    assert str(out) in msg and "force=True" in msg and "incomplete" in msg

    # a missing image is detected too (manifest present, counts wrong)
    out2 = make_synthetic(tmp_path / "set2", **cfg)
    next((out2 / "weave" / "train" / "good").glob("*.png")).unlink()
    with pytest.raises(SyntheticDatasetError, match="expected"):
        make_synthetic(out2, **cfg)

    # force=True regenerates a set the generator wrote (here: one with an image missing) ...
    again = make_synthetic(out2, force=True, **cfg)
    assert (again / MANIFEST_NAME).is_file()
    assert len(list(again.rglob("*.png"))) == len(pngs)
    # ... but never a folder without its marker (tests/test_ownership.py has the other cases)
    with pytest.raises(SyntheticDatasetError, match=f"--force refused: .*with no {MANIFEST_NAME}"):
        make_synthetic(tmp_path / "set", force=True, **cfg)
    assert len(list(out.rglob("*.png"))) == len(pngs)


def test_hardness(tmp_path):
    root = make_synthetic(tmp_path / "hard", size=128, n_train=20, n_test_good=10, n_test_defect=4)
    res = trivial_baseline(root)
    assert set(res) == set(DEFAULT_CATEGORIES)
    assert all(0.0 <= v <= 1.0 for v in res.values())
    mean = float(np.mean(list(res.values())))
    assert mean < 0.9, res


def test_cli_over_a_set_made_with_other_settings_is_a_message(tmp_path, capsys):
    from unistad_edu import __main__ as cli

    out = tmp_path / "syn"
    assert cli.main(["data", "synthetic", "--out", str(out), "--size", "32", "--n-train", "2"]) == 0
    capsys.readouterr()
    assert cli.main(["data", "synthetic", "--out", str(out), "--size", "48", "--n-train", "2"]) == 2
    err = capsys.readouterr().err
    assert "size: made with 32, asked 48" in err and "--force" in err and "Traceback" not in err


def test_staging_folders_of_killed_runs_are_removed(tmp_path):
    from unistad_edu.synthetic import make_synthetic

    dead = (
        tmp_path / f".syn.build-{2**22 + 4321}-0123abcd"
    )  # above the kernel's largest pid: nobody runs it
    (dead / "weave").mkdir(parents=True)
    make_synthetic(
        tmp_path / "syn", size=32, n_train=2, n_test_good=1, n_test_defect=1, categories=("weave",)
    )
    assert not dead.exists()


def test_the_cli_makes_chosen_products_and_prints_the_trivial_baseline(tmp_path, capsys):
    from unistad_edu import __main__ as cli
    from unistad_edu.synthetic import trivial_baseline

    out = tmp_path / "syn"
    argv = [
        "data",
        "synthetic",
        "--out",
        str(out),
        "--size",
        "32",
        "--n-train",
        "3",
        "--n-test-good",
        "2",
        "--n-test-defect",
        "1",
        "--categories",
        "weave",
        "bolt",
        "--baseline",
    ]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["bolt", "weave"]
    assert len(list((out / "weave" / "test" / "good").glob("*.png"))) == 2
    for cat, auroc in trivial_baseline(out).items():  # the numbers printed are the library's
        assert f"{cat:10s} {auroc:.3f}" in printed
    assert (
        cli.main(["data", "synthetic", "--out", str(tmp_path / "x"), "--categories", "nosuch"]) == 2
    )
    assert "unknown synthetic products ['nosuch']" in capsys.readouterr().err
