"""The feature cache knows its content: an entry belongs to the bytes of the image file (not to its path, size and
mtime) and to the teacher's precision, and every entry is checked before it is served. Every feature served is
compared with an independent forward of the teacher."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from unistad_edu import cache as cache_mod
from unistad_edu.cache import FeatureCache
from unistad_edu.data import load_image

from .conftest import write_image

SIZE = 64
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for this module


@pytest.fixture(scope="module")
def teacher():
    from unistad_edu.teacher import load_teacher

    return load_teacher(precision="fp32")


def _image(path) -> torch.Tensor:
    """(1, 3, S, S) in [0, 1], decoded exactly as MVTecDataset does."""
    return (
        torch.from_numpy(load_image(path, SIZE).copy()).permute(2, 0, 1).float().div_(255.0)[None]
    )


@torch.no_grad()
def _direct(teacher, path) -> dict[str, torch.Tensor]:
    return teacher(_image(path))


def _assert_features(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(
            got[name], want[name], rtol=1e-4, atol=1e-4
        )  # batch size may change rounding


def _differ(a: dict, b: dict) -> bool:
    return any(not torch.allclose(a[k], b[k], atol=1e-3) for k in a)


def _resave(f: Path, entry: dict) -> None:
    """Rewrite a disk entry with other tensors, signed as the cache would sign them (so what rejects it is the
    check under test, not the signature)."""
    from safetensors import safe_open

    with safe_open(str(f), framework="pt") as st:
        meta = dict(st.metadata())
    meta["signature"] = cache_mod.entry_signature(
        meta["made_from"], {k: v.contiguous() for k, v in entry.items()}
    )
    save_file(entry, str(f), metadata=meta)


def _past_racy_window() -> None:
    """Let the files just written age beyond the window in which the cache does not trust their stat."""
    time.sleep(cache_mod.RACY_NS / 1e9 + 0.05)


@pytest.fixture()
def pair(tmp_path) -> tuple[Path, Path]:
    """Two different images whose files have the same size (BMP: the size depends only on the dimensions)."""
    a = write_image(tmp_path / "imgs" / "a.bmp", (48, 40), seed=1)
    b = write_image(tmp_path / "other" / "b.bmp", (48, 40), seed=2)
    assert a.stat().st_size == b.stat().st_size and a.read_bytes() != b.read_bytes()
    return a, b


def _overwrite_keeping_mtime(src: Path, dst: Path, how: str) -> None:
    """Put ``src``'s bytes at ``dst`` and restore ``dst``'s old mtime: ``inplace`` as ``cp -p`` does (same inode),
    ``replace`` as ``rsync -a`` or unpacking an archive does (a new file renamed into place)."""
    st = dst.stat()
    if how == "inplace":
        shutil.copyfile(src, dst)
    else:
        tmp = dst.with_name(f".{dst.name}.part")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = dst.stat()
    assert (
        after.st_size == st.st_size and after.st_mtime_ns == st.st_mtime_ns
    )  # what the old key looked at


# ---- (a) a different image with the same size and the old mtime -------------------------------------------
@pytest.mark.parametrize("how", ["inplace", "replace"])
@pytest.mark.parametrize("on_disk", [False, True])
def test_same_size_and_mtime_but_new_bytes_gets_new_features(teacher, pair, tmp_path, how, on_disk):
    a, b = pair
    root = tmp_path / "cache" if on_disk else None
    cache = FeatureCache(teacher, SIZE, root=root)
    _past_racy_window()  # so the cache does remember the first hash: the stat signature alone must catch it
    old = cache.features(_image(a), [str(a)])
    _assert_features(old, _direct(teacher, a))
    cache.features(_image(a), [str(a)])
    assert (cache.misses, cache.hits) == (1, 1)

    _overwrite_keeping_mtime(b, a, how)
    new = cache.features(_image(a), [str(a)])
    assert cache.misses == 2  # not served the old image's entry
    _assert_features(new, _direct(teacher, b))
    assert _differ(new, old)
    if on_disk:  # a new process over the same folder agrees
        again = FeatureCache(teacher, SIZE, root=root)
        _assert_features(again.features(_image(a), [str(a)]), _direct(teacher, b))
        assert again.hits == 1


def test_touch_without_new_bytes_hits(teacher, pair):
    a, _ = pair
    cache = FeatureCache(teacher, SIZE)
    first = cache.features(_image(a), [str(a)])
    st = a.stat()
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    second = cache.features(_image(a), [str(a)])
    assert (cache.misses, cache.hits) == (1, 1)
    _assert_features(second, first)


def test_precision_is_part_of_the_identity(teacher, pair):
    a, _ = pair
    cache = FeatureCache(teacher, SIZE)
    key_fp32 = cache.key(a)
    try:
        teacher.precision = "bf16"
        assert cache.precision_name() == "bf16" and cache.key(a) != key_fp32
        low = cache.features(_image(a), [str(a)])
        _assert_features(
            low, _direct(teacher, a)
        )  # bf16 features, computed by the teacher under bf16
    finally:
        teacher.precision = "fp32"
    assert cache.key(a) == key_fp32
    full = cache.features(_image(a), [str(a)])
    assert cache.misses == 2  # the bf16 entry is not served to an fp32 teacher
    _assert_features(full, _direct(teacher, a))
    assert _differ(low, full)  # why: bf16 features are not fp32 features


# ---- (b) an entry of the wrong form is never served --------------------------------------------------------
def _spoil(entry: dict[str, torch.Tensor], how: str) -> dict[str, torch.Tensor]:
    entry = dict(entry)
    name = sorted(entry)[0]
    if how == "shape":
        entry[name] = entry[name][:, :-1].contiguous()
    elif how == "channels":
        entry[name] = entry[name][:-1].contiguous()
    elif how == "batched":
        entry[name] = entry[name][None].contiguous()
    elif how == "dtype":
        entry[name] = entry[name].half()
    elif how == "extra":
        entry["blocks.9"] = torch.zeros(3)
    elif how == "missing":
        del entry[name]
    elif how == "renamed":
        entry["x" + name] = entry.pop(name)
    return entry


@pytest.mark.parametrize(
    "how", ["shape", "channels", "batched", "dtype", "extra", "missing", "renamed"]
)
def test_bad_disk_entry_is_dropped_and_recomputed(teacher, pair, tmp_path, how):
    a, _ = pair
    root = tmp_path / "cache"
    FeatureCache(teacher, SIZE, root=root).features(_image(a), [str(a)])
    (f,) = root.rglob("*.safetensors")
    _resave(f, _spoil(load_file(str(f)), how))

    cache = FeatureCache(teacher, SIZE, root=root)
    got = cache.features(_image(a), [str(a)])
    assert (cache.misses, cache.hits, cache.rejected, cache.unsigned) == (1, 0, 1, 0)
    _assert_features(got, _direct(teacher, a))
    (f2,) = root.rglob(
        "*.safetensors"
    )  # rewritten whole: a later process is served the right entry
    assert f2 == f and cache._read(f.stem) is not None
    again = FeatureCache(teacher, SIZE, root=root)
    _assert_features(again.features(_image(a), [str(a)]), _direct(teacher, a))
    assert (again.hits, again.rejected) == (1, 0)


@pytest.mark.parametrize("how", ["shape", "dtype", "extra"])
def test_bad_memory_entry_is_dropped_and_recomputed(teacher, pair, how):
    a, _ = pair
    cache = FeatureCache(teacher, SIZE)
    cache.features(_image(a), [str(a)])
    (key,) = cache._memory
    cache._memory[key] = _spoil(cache._memory[key], how)
    got = cache.features(_image(a), [str(a)])
    assert (cache.misses, cache.rejected) == (2, 1)
    _assert_features(got, _direct(teacher, a))


def test_fp16_cache_rejects_an_fp32_entry(teacher, pair, tmp_path):
    a, _ = pair
    root = tmp_path / "cache"
    cache = FeatureCache(teacher, SIZE, root=root, fp16=True)
    cache.features(_image(a), [str(a)])
    (f,) = root.rglob("*.safetensors")
    _resave(f, {k: v.float() for k, v in load_file(str(f)).items()})
    again = FeatureCache(teacher, SIZE, root=root, fp16=True)
    got = again.features(_image(a), [str(a)])
    assert again.rejected == 1 and again.unsigned == 0
    want = {
        k: v.half().float() for k, v in _direct(teacher, a).items()
    }  # what an fp16 cache serves
    assert set(got) == set(want)
    for (
        name
    ) in want:  # batch size may move a value across an fp16 rounding step: one fp16 step of slack
        torch.testing.assert_close(got[name], want[name], rtol=2e-3, atol=1e-2)


@pytest.mark.parametrize("size", [64, 72])  # 72: not a multiple of the deepest stride (16)
def test_expected_shapes_are_what_the_teacher_returns(teacher, size):
    cache = FeatureCache(teacher, size)
    with torch.no_grad():
        out = teacher(torch.rand(1, 3, size, size))
    assert cache._shapes == {name: tuple(t.shape[1:]) for name, t in out.items()}


def test_vit_class_token_entry_is_checked(tmp_path):
    from unistad_edu.teacher import Teacher

    vit = Teacher("vit_small_patch14_dinov2", weights=None, layers=(2,), precision="fp32")
    size = 56  # 4 x 4 patches of 14 px
    img = write_image(tmp_path / "v.png", (size, size), seed=3)
    x = torch.from_numpy(load_image(img, size).copy()).permute(2, 0, 1).float().div_(255.0)[None]
    root = tmp_path / "cache"
    cache = FeatureCache(vit, size, root=root)
    assert cache._shapes == {"blocks.2": (384, 4, 4), "cls": (384,)}
    with torch.no_grad():
        want = vit(x)
    _assert_features(cache.features(x, [str(img)]), want)
    (f,) = root.rglob("*.safetensors")
    entry = load_file(str(f))
    entry["cls"] = entry["cls"][None].contiguous()  # (1, C): a batched class token
    _resave(f, entry)
    again = FeatureCache(vit, size, root=root)
    _assert_features(again.features(x, [str(img)]), want)
    assert again.rejected == 1 and again.unsigned == 0


# ---- (c) the same bytes at two paths -------------------------------------------------------------------------
def test_same_content_at_two_paths(teacher, pair, tmp_path):
    a, b = pair
    c = tmp_path / "copy" / "c.bmp"
    c.parent.mkdir()
    shutil.copyfile(a, c)
    cache = FeatureCache(teacher, SIZE)
    got = cache.features(torch.cat([_image(a), _image(c)]), [str(a), str(c)])
    want = _direct(teacher, a)
    for name in want:
        torch.testing.assert_close(got[name][0:1], want[name], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got[name][1:2], want[name], rtol=1e-4, atol=1e-4)
    assert len(cache) == 1  # one entry for the one content
    _overwrite_keeping_mtime(b, c, "inplace")  # now only c changes
    got = cache.features(torch.cat([_image(a), _image(c)]), [str(a), str(c)])
    want_b = _direct(teacher, b)
    for name in want:
        torch.testing.assert_close(got[name][0:1], want[name], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got[name][1:2], want_b[name], rtol=1e-4, atol=1e-4)


# ---- (d) the content hash is remembered, but never across a change ----------------------------------------
@pytest.fixture()
def reads(monkeypatch):
    """Counts the times the cache reads a file's bytes to hash them."""
    counter = {"n": 0}
    real = cache_mod.content_hash

    def counting(path):
        counter["n"] += 1
        return real(path)

    monkeypatch.setattr(cache_mod, "content_hash", counting)
    return counter


def test_hash_memo_reads_an_unchanged_file_once(teacher, pair, reads):
    a, b = pair
    cache = FeatureCache(teacher, SIZE)
    _past_racy_window()
    k = cache.key(a)
    assert reads["n"] == 1
    for _ in range(3):
        assert cache.key(a) == k and cache.key(str(a)) == k
        cache.features(_image(a), [str(a)])
    assert reads["n"] == 1  # stat only, no re-read
    assert (
        FeatureCache(teacher, SIZE).key(a) == k and reads["n"] == 2
    )  # the memo is per cache object

    _overwrite_keeping_mtime(b, a, "inplace")
    _past_racy_window()
    k2 = cache.key(a)
    assert reads["n"] == 3 and k2 != k  # re-read after the change (the ctime moved), new key
    _assert_features(cache.features(_image(a), [str(a)]), _direct(teacher, b))
    assert cache.key(a) == k2 and reads["n"] == 3  # and remembered again


def test_recently_changed_file_is_rehashed_every_time(teacher, pair, reads, monkeypatch):
    a, _ = pair
    monkeypatch.setattr(cache_mod, "RACY_NS", 3_600 * 10**9)  # every file here "changed just now"
    cache = FeatureCache(teacher, SIZE)
    k = [cache.key(a) for _ in range(3)]
    assert (
        len(set(k)) == 1 and reads["n"] == 3
    )  # a change within the same timestamp tick could hide otherwise
