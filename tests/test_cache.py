"""The feature cache serves exactly what the teacher computes, never a stale entry, and writes atomically."""
from __future__ import annotations

import os
import time

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


def test_touched_file_is_recomputed(dataset, lite0_teacher):
    cache = FeatureCache(lite0_teacher, 64)
    b = _batch(dataset)
    cache.features(b["image"], b["path"])
    p = b["path"][0]
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    cache.features(b["image"], b["path"])
    assert cache.misses == 5 and cache.hits == 3


def test_key_depends_on_teacher_and_size(dataset, lite0_teacher):
    from unistad_edu.teacher import Teacher
    p = dataset.records[0].path
    a = FeatureCache(lite0_teacher, 64).key(p)
    assert FeatureCache(lite0_teacher, 128).key(p) != a
    assert FeatureCache(Teacher(weights=None), 64).key(p) != a
    assert FeatureCache(lite0_teacher, 64).key(p) == a


def test_fp16_and_corrupt_entry(dataset, lite0_teacher, tmp_path):
    cache = FeatureCache(lite0_teacher, 64, root=tmp_path / "c", fp16=True)
    b = _batch(dataset)
    f = cache.features(b["image"], b["path"])
    assert all(v.dtype == torch.float32 for v in f.values())
    entries = sorted((tmp_path / "c").rglob("*.safetensors"))
    assert len(entries) == 4
    entries[0].write_bytes(entries[0].read_bytes()[:50])  # a torn file, e.g. from a crash in another tool
    again = FeatureCache(lite0_teacher, 64, root=tmp_path / "c", fp16=True)
    g = again.features(b["image"], b["path"])
    assert again.misses == 1 and again.hits == 3
    for name in f:
        torch.testing.assert_close(f[name], g[name])


def test_warm(dataset, lite0_teacher):
    cache = FeatureCache(lite0_teacher, 64)
    cache.warm(dataset, batch_size=3, progress=False)
    assert len(cache) == 4
