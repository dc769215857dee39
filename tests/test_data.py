"""MVTec-layout data: discovery at any depth, conversions, and a specific error for every bad layout."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from unistad_edu.data import (
    DataError,
    MVTecDataset,
    collate,
    discover_categories,
    holdout_split,
    load_image,
    scan_category,
)

from .conftest import make_category, needs_real_data, write_image

REAL_COUNTS = {  # from each category's SOURCE.md
    "bottle": (209, 20, 63),
    "juice_bottle": (220, 54, 142),
    "commutator": (245, 103, 52),
    "metal_plate": (41, 39, 81),
    "cookie": (31, 14, 32),
}


@needs_real_data
def test_real_datasets_load_with_correct_counts(real_data):
    cats = discover_categories(real_data)
    assert sorted(cats) == sorted(REAL_COUNTS)
    train = MVTecDataset(real_data, "train", image_size=64, keep_in_memory=False)
    test = MVTecDataset(real_data, "test", image_size=64, keep_in_memory=False)
    tc, sc = train.counts(), test.counts()
    for cat, (n_train, n_good, n_bad) in REAL_COUNTS.items():
        assert tc[cat] == {"good": n_train}
        assert sc[cat]["good"] == n_good
        assert sum(v for k, v in sc[cat].items() if k != "good") == n_bad
    # grayscale commutator becomes 3-channel, non-square images become square, masks are binary
    i = next(i for i, r in enumerate(test.records) if r.category == "commutator" and r.label == 1)
    s = test[i]
    assert s["image"].shape == (3, 64, 64) and s["mask"].shape == (1, 64, 64)
    assert set(torch.unique(s["mask"]).tolist()) <= {0.0, 1.0} and s["mask"].sum() > 0
    assert 0 <= s["image"].min() and s["image"].max() <= 1


def test_discovery_at_any_depth_and_duplicate_names(tmp_path):
    make_category(tmp_path / "a" / "b", "widget")
    make_category(tmp_path / "c", "gadget")
    make_category(tmp_path / "d", "widget")
    cats = discover_categories(tmp_path)
    assert set(cats) == {"gadget", "a/b/widget", "d/widget"}


def test_symlink_loop_does_not_hang(tmp_path):
    make_category(tmp_path, "widget")
    os.symlink(tmp_path, tmp_path / "loop")
    assert list(discover_categories(tmp_path)) == ["widget"]


def test_sample_format_and_labels(tmp_path):
    make_category(tmp_path, "widget", n_train=3, n_good=2, n_defect=2, size=(40, 30))
    train = MVTecDataset(tmp_path, "train", image_size=32)
    test = MVTecDataset(tmp_path, "test", image_size=32)
    assert len(train) == 3 and len(test) == 4
    labels = [test[i]["label"] for i in range(len(test))]
    assert sorted(labels) == [0, 0, 1, 1]
    batch = collate([test[i] for i in range(len(test))])
    assert batch["image"].shape == (4, 3, 32, 32) and batch["mask"].shape == (4, 1, 32, 32)
    assert batch["category"] == ["widget"] * 4
    good = [test[i] for i in range(4) if test[i]["label"] == 0]
    assert all(g["mask"].sum() == 0 for g in good)
    bad = [test[i] for i in range(4) if test[i]["label"] == 1]
    assert all(b["mask"].sum() > 0 for b in bad)


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P", "LA"])
def test_any_image_mode_becomes_rgb(tmp_path, mode):
    p = tmp_path / f"img_{mode.replace(';', '')}.png"
    if mode == "I;16":
        arr = np.full((20, 30), 65535 // 2, np.uint16)
        Image.fromarray(arr).save(p)
        out = load_image(p)
        assert out.shape == (20, 30, 3) and abs(int(out[0, 0, 0]) - 127) <= 1
    else:
        Image.new(mode, (30, 20)).save(p)
        assert load_image(p, 16).shape == (16, 16, 3)


def test_rgba_alpha_composited_on_black(tmp_path):
    p = tmp_path / "a.png"
    Image.new("RGBA", (8, 8), (200, 100, 50, 0)).save(p)
    assert load_image(p).max() == 0


def test_masks_resized_nearest_and_binary(tmp_path):
    make_category(tmp_path, "widget", size=(40, 40))
    test = MVTecDataset(tmp_path, "test", image_size=20)
    m = test[[r.label for r in test.records].index(1)]["mask"]
    assert set(torch.unique(m).tolist()) == {0.0, 1.0}
    assert m.sum() == 3 * 4  # 6x8 box at half size


# ---- bad inputs: each has its own specific message -------------------------------------------------
def test_no_categories(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="no categories found.*train/good"):
        discover_categories(tmp_path)


def test_missing_data_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        discover_categories(tmp_path / "nope")


def test_empty_train_good(tmp_path):
    (tmp_path / "widget" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images.*widget"):
        MVTecDataset(tmp_path, "train")


def test_defect_without_mask(tmp_path):
    cat = make_category(tmp_path, "widget")
    (cat / "ground_truth" / "scratch" / "000_mask.png").unlink()
    with pytest.raises(DataError, match="has no mask.*000_mask.png"):
        MVTecDataset(tmp_path, "test")
    assert len(MVTecDataset(tmp_path, "test", check_masks=False)) == 4


def test_mask_size_mismatch(tmp_path):
    cat = make_category(tmp_path, "widget")
    Image.new("L", (10, 10)).save(cat / "ground_truth" / "scratch" / "001_mask.png")
    with pytest.raises(DataError, match="10x10 but its image.*32x32"):
        MVTecDataset(tmp_path, "test")


def test_non_image_file_named_png(tmp_path):
    cat = make_category(tmp_path, "widget")
    (cat / "train" / "good" / "notes.png").write_text("not an image")
    with pytest.raises(DataError, match="notes.png is not a readable image"):
        MVTecDataset(tmp_path, "train")


def test_zero_byte_file(tmp_path):
    cat = make_category(tmp_path, "widget")
    (cat / "train" / "good" / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match="empty.png is an empty"):
        MVTecDataset(tmp_path, "train")


def test_truncated_png(tmp_path):
    cat = make_category(tmp_path, "widget")
    p = write_image(cat / "train" / "good" / "big.png", (64, 64))
    p.write_bytes(p.read_bytes()[:200])
    ds = MVTecDataset(tmp_path, "train")  # the header is fine
    i = [r.path.name for r in ds.records].index("big.png")
    with pytest.raises(DataError, match="corrupt or truncated"):
        ds[i]


def test_tiny_image(tmp_path):
    cat = make_category(tmp_path, "widget")
    write_image(cat / "train" / "good" / "dot.png", (1, 1))
    with pytest.raises(DataError, match="1x1 pixels"):
        MVTecDataset(tmp_path, "train")


def test_unknown_category(tmp_path):
    make_category(tmp_path, "widget")
    with pytest.raises(DataError, match=r"\['gizmo'\] not found"):
        MVTecDataset(tmp_path, "train", categories=["gizmo"])


def test_holdout_is_per_category_and_disjoint(tmp_path):
    make_category(tmp_path, "a", n_train=20)
    make_category(tmp_path, "b", n_train=3)
    ds = MVTecDataset(tmp_path, "train")
    tr, held = holdout_split(ds, 0.2, seed=1)
    assert held.counts() == {"a": {"good": 4}, "b": {"good": 2}}
    assert not {r.path for r in tr.records} & {r.path for r in held.records}
    assert len(tr) + len(held) == len(ds)
    assert [r.path for r in holdout_split(ds, 0.2, seed=1)[1].records] == [
        r.path for r in held.records
    ]


def test_scan_reports_missing_test_folder(tmp_path):
    cat = tmp_path / "widget"
    write_image(cat / "train" / "good" / "0.png")
    with pytest.raises(DataError, match="no test/ folder"):
        scan_category("widget", cat, "test")


def test_load_image_turns_exif_rotated_photos_upright_only_when_asked(tmp_path):
    from PIL import Image

    from unistad_edu.data import load_image

    rng = np.random.default_rng(0)
    upright = rng.integers(0, 256, (40, 24, 3), dtype=np.uint8)  # (H, W): portrait
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # (24, 40): how a phone stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to view
    path = tmp_path / "phone.png"
    Image.fromarray(stored).save(path, exif=exif)
    assert load_image(path).shape == (24, 40, 3)  # datasets: the stored pixels
    assert np.array_equal(load_image(path, exif_orientation=True), upright)


def test_predict_scores_the_same_picture_as_the_demo_upload(tmp_path):
    from PIL import Image

    from unistad_edu import build_model, load_teacher, predict
    from unistad_edu.demo.logic import decode_upload

    rng = np.random.default_rng(1)
    stored = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 8
    path = tmp_path / "rotated.png"
    Image.fromarray(stored).save(path, exif=exif)
    model = build_model("stpm", load_teacher(), image_size=64).eval()
    from_file = predict(model, [path])[0]
    from_upload = predict(model, [decode_upload(path).array])[0]
    assert np.array_equal(from_file["image"], from_upload["image"])
    assert from_file["score"] == from_upload["score"]


# ---- one decoder, typed reasons -------------------------------------------------------------------------------
def test_decode_image_refuses_with_a_typed_reason_and_the_demo_words_every_reason(tmp_path):
    """``data.decode_image`` is the one decoder (datasets, CLI, demo); each refusal carries a reason word, and the
    demo has its own page text for every reason there is."""
    from PIL import Image as PILImage

    from unistad_edu.data import IMAGE_REJECTIONS, ImageRejected, PixelBudget, decode_image
    from unistad_edu.demo import logic

    assert set(logic.UPLOAD_TEXT) == set(IMAGE_REJECTIONS)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("hello, not pixels")
    (tmp_path / "noise.png").write_bytes(bytes(range(256)) * 4)
    PILImage.new("RGB", (1, 5)).save(tmp_path / "thin.png")
    PILImage.new("RGB", (300, 200)).save(tmp_path / "big.png")
    PILImage.new("RGB", (40, 40)).save(tmp_path / "ok.gif")
    good = tmp_path / "good.png"
    PILImage.new("RGB", (64, 48), (10, 20, 30)).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    cases = {
        "missing.png": "unreadable",
        "empty.png": "empty",
        "notes.png": "text",
        "noise.png": "not_image",
        "thin.png": "too_small",
        "cut.png": "corrupt",
    }
    for name, reason in cases.items():
        with pytest.raises(ImageRejected) as err:
            decode_image(tmp_path / name)
        assert err.value.reason == reason and name in str(err.value), (
            name,
            err.value.reason,
            str(err.value),
        )
        with pytest.raises(logic.UploadError) as up:
            logic.decode_upload(tmp_path / name)
        assert up.value.reason == reason and name in str(up.value)
    with pytest.raises(ImageRejected) as err:
        decode_image(tmp_path / "big.png", max_pixels=300 * 199)
    assert err.value.reason == "too_many_pixels" and err.value.facts["width"] == 300
    with pytest.raises(ImageRejected) as err:
        decode_image(tmp_path / "ok.gif", formats=("PNG",))
    assert err.value.reason == "format" and err.value.facts["format"] == "GIF"
    budget = PixelBudget(64 * 48 + 10)
    arr, mode = decode_image(good, size=32, budget=budget)
    assert arr.shape == (32, 32, 3) and mode == "RGB"
    with pytest.raises(ImageRejected) as err:
        decode_image(good, budget=budget)
    assert err.value.reason == "budget"
