"""A disk cache entry says what made it and is signed with this user's secret: a planted, copied or edited
entry is never served. Every feature served is compared with an independent forward of the teacher."""

from __future__ import annotations

import os
import shutil
import stat
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from unistad_edu import cache as cache_mod
from unistad_edu.cache import FeatureCache

from .conftest import write_image
from .test_cache_identity import SIZE, _assert_features, _direct, _image

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher():
    from unistad_edu.teacher import load_teacher

    return load_teacher(precision="fp32")


@pytest.fixture()
def images(tmp_path):
    return [write_image(tmp_path / "imgs" / f"{i}.png", (40, 40), seed=10 + i) for i in range(2)]


def _only_entry(root):
    (f,) = root.rglob("*.safetensors")
    return f


def _serve(teacher, root, path):
    """A fresh process's cache serving ``path``: (features, cache, warnings said)."""
    cache = FeatureCache(teacher, SIZE, root=root)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        got = cache.features(_image(path), [str(path)])
    return got, cache, [str(w.message) for w in record if "did not write" in str(w.message)]


def test_an_entry_copied_under_another_images_key_is_not_served(teacher, images, tmp_path):
    a, b = images
    root = tmp_path / "cache"
    FeatureCache(teacher, SIZE, root=root).features(_image(a), [str(a)])
    fa = _only_entry(root)
    kb = FeatureCache(teacher, SIZE, root=root).key(b)
    planted = root / kb[:2] / f"{kb}.safetensors"
    planted.parent.mkdir(exist_ok=True)
    shutil.copyfile(fa, planted)  # a's features, signature and all, where b's belong
    got, cache, said = _serve(teacher, root, b)
    _assert_features(got, _direct(teacher, b))
    assert (
        (cache.hits, cache.unsigned, cache.rejected) == (0, 1, 1)
        and len(said) == 1
        and str(root) in said[0]
    )


@pytest.mark.parametrize(
    "how", ["no_signature", "other_secret", "edited_value", "edited_made_from", "old_format"]
)
def test_a_planted_or_edited_entry_is_not_served(teacher, images, tmp_path, how):
    a, _ = images
    root = tmp_path / "cache"
    FeatureCache(teacher, SIZE, root=root).features(_image(a), [str(a)])
    f = _only_entry(root)
    with safe_open(str(f), framework="pt") as st:
        meta = dict(st.metadata())
    entry = load_file(str(f))
    planted = {
        k: torch.rand_like(v) for k, v in entry.items()
    }  # features of the planter's choosing
    if how == "no_signature":
        save_file(planted, str(f))
    elif how == "other_secret":  # signed the same way, with a secret that is not this user's
        h = cache_mod.hashlib.blake2b(key=os.urandom(32), digest_size=32)
        meta["signature"] = h.hexdigest()
        save_file(planted, str(f), metadata=meta)
    elif how == "edited_value":  # the genuine signature kept, one number changed
        entry[next(iter(entry))].view(-1)[0] += 1.0
        save_file(entry, str(f), metadata=meta)
    elif how == "edited_made_from":  # claims other provenance: its text no longer hashes to the key
        meta["made_from"] = meta["made_from"].replace("fp32", "bf16")
        meta["signature"] = cache_mod.entry_signature(meta["made_from"], entry)
        save_file(entry, str(f), metadata=meta)
    else:
        meta["format"] = "unistad-edu features v1"
        save_file(entry, str(f), metadata=meta)
    got, cache, said = _serve(teacher, root, a)
    _assert_features(got, _direct(teacher, a))
    assert (cache.hits, cache.unsigned) == (0, 1) and len(said) == 1
    again = FeatureCache(
        teacher, SIZE, root=root
    )  # rewritten, signed: the next process is served it
    _assert_features(again.features(_image(a), [str(a)]), _direct(teacher, a))
    assert (again.hits, again.unsigned) == (1, 0)


def test_the_entry_records_what_made_it(teacher, images, tmp_path):
    a, _ = images
    root = tmp_path / "cache"
    cache = FeatureCache(teacher, SIZE, root=root)
    cache.features(_image(a), [str(a)])
    with safe_open(str(_only_entry(root)), framework="pt") as st:
        meta = st.metadata()
    made = meta["made_from"]
    assert cache_mod.content_hash(a) in made and teacher.weights_hash in made and "fp32" in made
    assert cache_mod.hashlib.sha256(made.encode()).hexdigest() == _only_entry(root).stem


def test_the_secret_is_private_and_outside_the_cache(tmp_path, monkeypatch):
    secret = tmp_path / "home" / "secret"
    monkeypatch.setenv("UNISTAD_CACHE_SECRET", str(secret))
    monkeypatch.setattr(cache_mod, "_SECRET", None)
    key = cache_mod.cache_secret()
    assert len(key) == 32 and secret.read_bytes() == key
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    monkeypatch.setattr(cache_mod, "_SECRET", None)
    assert cache_mod.cache_secret() == key  # read back, not made anew
