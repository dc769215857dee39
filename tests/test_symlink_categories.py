"""Data roots assembled with symbolic links: linked categories, linked roots, link loops and broken links."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unistad_edu.data import DataError, MVTecDataset, discover_categories, scan_category

from .conftest import write_image

pytestmark = pytest.mark.skipif(
    not hasattr(os, "symlink") or os.name == "nt", reason="symbolic links need a POSIX file system"
)


def make_mvtec(parent: Path, name: str, seed: int = 0) -> Path:
    """``<name>/train/good/000.png``, ``test/good/000.png``, ``test/crack/000.png`` and its mask, all 32x32."""
    cat = parent / name
    write_image(cat / "train" / "good" / "000.png", seed=seed)
    write_image(cat / "test" / "good" / "000.png", seed=seed + 1)
    write_image(cat / "test" / "crack" / "000.png", seed=seed + 2)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 4:20] = 255
    (cat / "ground_truth" / "crack").mkdir(parents=True)
    Image.fromarray(mask).save(cat / "ground_truth" / "crack" / "000_mask.png")
    return cat


@pytest.fixture
def downloads(tmp_path) -> Path:
    """Two separate 'downloads' holding the real category folders, outside the data root."""
    make_mvtec(tmp_path / "downloads" / "mvtec", "bottle", seed=0)
    make_mvtec(tmp_path / "downloads" / "visa", "cashew", seed=10)
    return tmp_path / "downloads"


def test_symlinked_categories_are_found_and_load(tmp_path, downloads):
    root = tmp_path / "my_data"
    root.mkdir()
    os.symlink(downloads / "mvtec" / "bottle", root / "bottle")
    os.symlink(downloads / "visa" / "cashew", root / "cashew")
    cats = discover_categories(root)
    assert cats == {
        "bottle": root / "bottle",
        "cashew": root / "cashew",
    }  # paths as reached, not resolved

    train = MVTecDataset(root, "train", image_size=16)
    assert train.counts() == {"bottle": {"good": 1}, "cashew": {"good": 1}}
    assert train[0]["image"].shape == (3, 16, 16)

    test = MVTecDataset(root, "test", image_size=16)
    assert test.counts() == {"bottle": {"good": 1, "crack": 1}, "cashew": {"good": 1, "crack": 1}}
    crack = [i for i, r in enumerate(test.records) if r.defect == "crack"]
    assert [test.records[i].mask_path for i in crack] == [
        root / "bottle" / "ground_truth" / "crack" / "000_mask.png",
        root / "cashew" / "ground_truth" / "crack" / "000_mask.png",
    ]
    assert all(
        test[i]["label"] == 1 and test[i]["mask"].sum() == 4 * 8 for i in crack
    )  # 8x16 box at half size


def test_symlinked_root_and_intermediate_folder(tmp_path, downloads):
    os.symlink(downloads, tmp_path / "data_link")  # the root itself is a link
    assert set(discover_categories(tmp_path / "data_link")) == {"bottle", "cashew"}
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(downloads / "mvtec", root / "industrial")  # a link to a folder *holding* a category
    cats = discover_categories(root)
    assert cats == {"bottle": root / "industrial" / "bottle"}
    assert len(MVTecDataset(root, "test")) == 2


def test_links_inside_a_category_are_followed(tmp_path, downloads):
    """test/good, ground_truth and single image files may be links into another download."""
    src = downloads / "mvtec" / "bottle"
    cat = tmp_path / "root" / "mixed"
    write_image(cat / "train" / "good" / "000.png")
    os.symlink(src / "train" / "good" / "000.png", cat / "train" / "good" / "001.png")
    (cat / "test" / "crack").mkdir(parents=True)
    os.symlink(src / "test" / "good", cat / "test" / "good")
    os.symlink(src / "test" / "crack" / "000.png", cat / "test" / "crack" / "000.png")
    os.symlink(src / "ground_truth", cat / "ground_truth")
    root = tmp_path / "root"
    assert MVTecDataset(root, "train").counts() == {"mixed": {"good": 2}}
    test = MVTecDataset(root, "test", image_size=32)
    assert test.counts() == {"mixed": {"good": 1, "crack": 1}}
    i = [r.defect for r in test.records].index("crack")
    assert test.records[i].mask_path == cat / "ground_truth" / "crack" / "000_mask.png"
    assert test[i]["mask"].sum() == 8 * 16


def test_broken_image_link_inside_a_category_is_an_error_not_a_smaller_set(tmp_path):
    cat = make_mvtec(tmp_path, "bottle")
    os.symlink(tmp_path / "gone.png", cat / "train" / "good" / "001.png")
    with pytest.raises(DataError, match=r"001.png is a broken symbolic link to .*gone.png"):
        MVTecDataset(tmp_path, "train")
    (cat / "train" / "good" / "001.png").unlink()
    os.symlink(tmp_path / "gone", cat / "test" / "scratch")
    with pytest.raises(
        DataError, match=r"test/scratch is a broken symbolic link to .*gone: fix the link"
    ):
        scan_category("bottle", cat, "test")
    (cat / "test" / "scratch").unlink()
    mask = cat / "ground_truth" / "crack" / "000_mask.png"
    mask.unlink()
    os.symlink(tmp_path / "gone_mask.png", mask)
    with pytest.raises(
        DataError, match=r"mask .*000_mask.png is a broken symbolic link to .*gone_mask.png"
    ):
        MVTecDataset(tmp_path, "test")


def test_link_to_root_terminates_and_lists_once(tmp_path, downloads):
    root = tmp_path / "root"
    make_mvtec(root, "widget")
    os.symlink(root, root / "loop")
    os.symlink(downloads / "mvtec" / "bottle", root / "bottle")
    os.symlink(tmp_path, root / "up")  # an ancestor of the root: not entered
    cats = discover_categories(root)
    assert cats == {"widget": root / "widget", "bottle": root / "bottle"}


def test_two_link_cycle_terminates_and_lists_once(tmp_path):
    root = tmp_path / "root"
    make_mvtec(root / "a", "gadget")
    make_mvtec(root / "b", "widget")
    os.symlink(root / "b", root / "a" / "to_b")  # a -> b and b -> a
    os.symlink(root / "a", root / "b" / "to_a")
    os.symlink("..", root / "a" / "parent")  # relative link to an ancestor
    cats = discover_categories(root)
    assert cats == {"gadget": root / "a" / "gadget", "widget": root / "b" / "widget"}
    assert len(MVTecDataset(root, "train")) == 2


def test_category_reached_by_folder_and_link_is_listed_once(tmp_path):
    root = tmp_path / "root"
    make_mvtec(root / "mvtec", "bottle")
    os.symlink(
        root / "mvtec" / "bottle", root / "aaa_bottle"
    )  # sorts first, yet the real path wins
    os.symlink(root / "mvtec", root / "also_mvtec")
    cats = discover_categories(root)
    assert cats == {"bottle": root / "mvtec" / "bottle"}  # one name: no "duplicate" path names
    assert MVTecDataset(root, "test").counts() == {"bottle": {"good": 1, "crack": 1}}


def test_same_category_through_two_links_is_listed_once(tmp_path, downloads):
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(downloads / "mvtec" / "bottle", root / "b2")
    os.symlink(downloads / "mvtec" / "bottle", root / "b1")
    assert discover_categories(root) == {"b1": root / "b1"}  # first in sorted order


def test_broken_links_skipped_and_named_when_nothing_found(tmp_path, downloads):
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(tmp_path / "nowhere" / "bottle", root / "bottle")
    os.symlink(tmp_path / "nowhere" / "cable", root / "cable")
    with pytest.raises(
        DataError,
        match=r"no categories found.*train/good.*"
        r"\(broken symbolic links: bottle, cable\)",
    ):
        discover_categories(root)
    os.symlink(downloads / "visa" / "cashew", root / "cashew")  # a good link beside the broken ones
    assert list(discover_categories(root)) == ["cashew"]


def test_only_looping_links_are_named_when_nothing_found(tmp_path):
    root = tmp_path / "root"
    (root / "empty").mkdir(parents=True)
    os.symlink(root, root / "empty" / "loop")
    with pytest.raises(
        DataError,
        match=r"no categories found.*"
        r"symbolic links back into folders already searched: empty/loop\)",
    ):
        discover_categories(root)


def test_no_hint_without_links(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"<category>/ground_truth/<defect>\)$"):
        discover_categories(tmp_path)


def test_hidden_links_are_skipped(tmp_path, downloads):
    root = tmp_path / "root"
    make_mvtec(root, "widget")
    os.symlink(downloads / "mvtec" / "bottle", root / ".bottle")
    assert list(discover_categories(root)) == ["widget"]


def test_broken_root_link_says_so(tmp_path):
    os.symlink(tmp_path / "unmounted", tmp_path / "data")
    with pytest.raises(
        DataError, match=r"does not exist \(a broken symbolic link to .*unmounted\)"
    ):
        discover_categories(tmp_path / "data")
