"""The teacher: offline Lite0 weights must be the real ImageNet weights (checked on real photos), the
teacher is frozen and truncated, and the offline path never opens a network connection."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from PIL import Image

from unistad_edu import load_teacher
from unistad_edu.teacher import Teacher, TeacherWeightsError, lite0_package_file, lukemelas_to_timm

skdata = pytest.importorskip("skimage.data")

ESPRESSO, CUP = 967, 968
CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def _classify(model, rgb: np.ndarray) -> list[int]:
    img = Image.fromarray(rgb).resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float()[None] / 255.0
    cfg = model.pretrained_cfg
    x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x)[0].topk(5).indices.tolist()


@pytest.fixture(scope="module")
def classifier():
    return load_teacher(classifier=True)


def test_mapped_lite0_weights_recognise_real_photos(classifier):
    assert "package" in classifier.weights_source
    coffee = _classify(classifier, skdata.coffee())
    cat = _classify(classifier, skdata.chelsea())
    assert coffee[0] in (ESPRESSO, CUP) and {ESPRESSO, CUP} <= set(coffee), coffee
    assert cat[0] in CATS and len(CATS & set(cat)) >= 2, cat


def test_random_weights_do_not_recognise_them():
    model = load_teacher(weights=None, classifier=True)
    coffee = _classify(model, skdata.coffee())
    cat = _classify(model, skdata.chelsea())
    assert not (coffee[0] in (ESPRESSO, CUP) and cat[0] in CATS)


def test_offline_path_opens_no_socket(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the offline teacher tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    teacher = load_teacher()
    assert "package" in teacher.weights_source


def test_lite0_mapping_is_strict_and_complete():
    path = lite0_package_file()
    state = torch.load(path, map_location="cpu", weights_only=True)
    mapped = lukemelas_to_timm(state, [1, 2, 2, 3, 3, 4, 1])
    assert len(mapped) == len(state)
    assert "blocks.0.0.conv_dw.weight" in mapped and "blocks.1.0.conv_pwl.weight" in mapped
    assert "classifier.weight" in mapped and "bn2.running_var" in mapped


def test_feature_pyramid_shapes_and_feature_info(lite0_teacher):
    info = lite0_teacher.feature_info
    assert [lv.stride for lv in info] == [4, 8, 16]
    assert [lv.channels for lv in info] == [24, 40, 112]
    feats = lite0_teacher(torch.rand(2, 3, 128, 96))
    for lv in info:
        f = feats[lv.name]
        assert f.dtype == torch.float32
        assert tuple(f.shape) == (2, lv.channels, 128 // lv.stride, 96 // lv.stride)


def test_truncated_after_last_used_stage(lite0_teacher):
    # Lite0 has 7 stages; stride 16 ends at stage 4, so stages 5-6 and the head are gone
    assert len(lite0_teacher.model.blocks) == 5
    assert not hasattr(lite0_teacher.model, "conv_head") or isinstance(
        lite0_teacher.model.conv_head, torch.nn.Identity
    )


def test_frozen_always(lite0_teacher):
    lite0_teacher.train()
    assert not lite0_teacher.training and not lite0_teacher.model.training
    assert all(not p.requires_grad for p in lite0_teacher.parameters())
    # gradients still flow to the *input* (needed by attribution)
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    sum(f.sum() for f in lite0_teacher(x).values()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bf16_path_matches_fp32():
    x = torch.rand(2, 3, 128, 128)
    slow = Teacher(weights=lite0_package_file(), precision="fp32")
    fast = Teacher(weights=lite0_package_file(), precision="bf16")  # bf16 autocast + channels_last
    with torch.no_grad():
        a, b = fast(x), slow(x)
    for name in a:
        cos = torch.nn.functional.cosine_similarity(a[name].flatten(1), b[name].flatten(1)).min()
        assert cos > 0.98, (name, cos)


def test_explicit_file_and_hash(tmp_path, lite0_teacher):
    from safetensors.torch import save_file

    clf = load_teacher(classifier=True)
    f = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, str(f))
    t = Teacher(weights=f)
    assert t.weights_hash == lite0_teacher.weights_hash
    assert Teacher(weights=None).weights_hash != lite0_teacher.weights_hash


def test_wrong_file_gives_clear_error(tmp_path):
    from safetensors.torch import save_file

    f = tmp_path / "bad.safetensors"
    save_file({"foo": torch.zeros(3)}, str(f))
    with pytest.raises(TeacherWeightsError, match="do not fit"):
        Teacher(weights=f)
    with pytest.raises(TeacherWeightsError, match="does not exist"):
        Teacher(weights=tmp_path / "missing.pth")


def test_no_weights_offline_says_how_to_fix(monkeypatch):
    monkeypatch.setenv("UNISTAD_OFFLINE", "1")
    with pytest.raises(TeacherWeightsError, match="weights="):
        Teacher("resnet18")


def test_other_backbones_random_weights():
    t = Teacher("resnet18", weights=None)
    assert [lv.name for lv in t.feature_info] == ["layer1", "layer2", "layer3"]
    assert [lv.channels for lv in t.feature_info] == [64, 128, 256]
    feats = t(torch.rand(1, 3, 64, 64))
    assert feats["layer3"].shape == (1, 256, 4, 4)
    with pytest.raises(ValueError, match="unknown teacher layer"):
        Teacher("resnet18", weights=None, layers=["nope"])
