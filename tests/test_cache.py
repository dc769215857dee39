"""The feature cache serves exactly what the teacher computes, never a stale entry, and writes atomically."""

from __future__ import annotations

import os

import pytest
import torch

from unistad_edu.cache import FeatureCache
from unistad_edu.data import MVTecDataset, collate

from .conftest import make_category


@pytest.fixture()
def dataset(tmp_path):
    make_category(tmp_path / "data", "widget", n_train=4)
    return MVTecDataset(tmp_path / "data", "train", image_size=64)


def _batch(ds):
    return collate([ds[i] for i in range(len(ds))])


@pytest.mark.parametrize("on_disk", [False, True])
def test_hit_equals_teacher_forward(dataset, lite0_teacher, tmp_path, on_disk):
    cache = FeatureCache(lite0_teacher, 64, root=tmp_path / "cache" if on_disk else None)
    b = _batch(dataset)
    first = cache.features(b["image"], b["path"])
    assert cache.misses == 4 and cache.hits == 0
    second = cache.features(b["image"], b["path"])
    assert cache.hits == 4 and len(cache) == 4
    with torch.no_grad():
        direct = lite0_teacher(b["image"])
    for name in direct:
        torch.testing.assert_close(first[name], direct[name])
        torch.testing.assert_close(second[name], direct[name])
    if on_disk:
        assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_touch_hits_new_bytes_with_same_size_and_mtime_miss(dataset, lite0_teacher):
    # the key is the file's content: a touch alone keeps the entry (it used to be recomputed when the key was
    # path + size + mtime); other bytes with the old size and mtime (as `cp -p` leaves them) get a new entry
    cache = FeatureCache(lite0_teacher, 64)
    b = _batch(dataset)
    cache.features(b["image"], b["path"])
    p = b["path"][0]
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    cache.features(b["image"], b["path"])
    assert cache.misses == 4 and cache.hits == 4
    data = bytearray(open(p, "rb").read())
    data[-1] ^= 0xFF  # the last byte of the PNG's IEND CRC: same size, other content
    st = os.stat(p)
    with open(p, "r+b") as f:
        f.write(data)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(p).st_size == st.st_size and os.stat(p).st_mtime_ns == st.st_mtime_ns
    cache.features(b["image"], b["path"])
    assert cache.misses == 5 and cache.hits == 7


def test_key_depends_on_teacher_and_size(dataset, lite0_teacher):
    from unistad_edu.teacher import Teacher

    p = dataset.records[0].path
    a = FeatureCache(lite0_teacher, 64).key(p)
    assert FeatureCache(lite0_teacher, 128).key(p) != a
    assert FeatureCache(Teacher(weights=None), 64).key(p) != a
    assert FeatureCache(lite0_teacher, 64).key(p) == a
    assert FeatureCache(lite0_teacher, 64, fp16=True).key(p) != a
    assert FeatureCache(lite0_teacher, 64).key(dataset.records[1].path) != a


def test_fp16_and_corrupt_entry(dataset, lite0_teacher, tmp_path):
    cache = FeatureCache(lite0_teacher, 64, root=tmp_path / "c", fp16=True)
    b = _batch(dataset)
    f = cache.features(b["image"], b["path"])
    assert all(v.dtype == torch.float32 for v in f.values())
    entries = sorted((tmp_path / "c").rglob("*.safetensors"))
    assert len(entries) == 4
    entries[0].write_bytes(
        entries[0].read_bytes()[:50]
    )  # a torn file, e.g. from a crash in another tool
    again = FeatureCache(lite0_teacher, 64, root=tmp_path / "c", fp16=True)
    g = again.features(b["image"], b["path"])
    assert again.misses == 1 and again.hits == 3
    for name in f:
        torch.testing.assert_close(f[name], g[name])


def test_warm(dataset, lite0_teacher):
    cache = FeatureCache(lite0_teacher, 64)
    cache.warm(dataset, batch_size=3, progress=False)
    assert len(cache) == 4
