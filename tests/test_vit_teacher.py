"""ViT teachers: patch tokens per block as (B, C, h, w) and the class token, checked against the ViT run by
hand block by block; normalisation from timm's pretrained_cfg; frozen and truncated; offline the hub path
fails fast with TeacherWeightsError. Plus the CNN teacher's optional pooled embedding."""

from __future__ import annotations

import socket
import time

import pytest
import torch

from unistad_edu.teacher import Teacher, TeacherWeightsError, create_backbone, load_teacher

DINO = "vit_small_patch14_dinov2"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for this module


@pytest.fixture(scope="module")
def dino():
    # blocks 2, 5 and the last one (11): the class token is then the ViT's own CLS embedding
    return Teacher(DINO, weights=None, layers=(2, 5, 11), precision="fp32")


def _by_hand(model, x, blocks):
    """Run a full (unpruned) timm ViT block by block: tokens after each wanted block and the final CLS."""
    t = model.patch_embed(x)  # (B, h, w, C) with dynamic_img_size
    t = model._pos_embed(t)  # (B, n_prefix + h w, C)
    t = model.norm_pre(t)
    out = {}
    for i, blk in enumerate(model.blocks):
        t = blk(t)
        if i in blocks:
            out[i] = t
    return out, model.norm(t)[:, 0]


def test_vit_levels_and_class_token_match_the_vit_run_by_hand(dino):
    info = dino.feature_info
    assert [(lv.name, lv.channels, lv.stride) for lv in info] == [
        ("blocks.2", 384, 14),
        ("blocks.5", 384, 14),
        ("blocks.11", 384, 14),
    ]
    assert dino.output_names == ["blocks.2", "blocks.5", "blocks.11", "cls"] and dino.is_vit
    x = torch.rand(
        2, 3, 112, 98, generator=torch.Generator().manual_seed(0)
    )  # 8 x 7 patches of 14 px
    with torch.no_grad():
        feats = dino(x)
        full, _ = create_backbone(
            DINO, weights=None
        )  # same seed -> same random weights, not truncated
        full.eval()
        mean = torch.tensor([0.485, 0.456, 0.406]).view(
            1, 3, 1, 1
        )  # DINOv2 was trained on ImageNet stats
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        tokens, cls = _by_hand(full, (x - mean) / std, {2, 5, 11})
    assert set(feats) == {"blocks.2", "blocks.5", "blocks.11", "cls"}
    for b in (2, 5, 11):
        f = feats[f"blocks.{b}"]
        assert f.shape == (2, 384, 8, 7) and f.dtype == torch.float32
        patches = tokens[b][:, 1:]  # (B, 56, C): drop the class token (DINOv2-S has no registers)
        # row-major: patch (r, c) is token r * 7 + c
        torch.testing.assert_close(f[:, :, 3, 5], patches[:, 3 * 7 + 5], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(f.flatten(2).transpose(1, 2), patches, rtol=1e-4, atol=1e-4)
    assert feats["cls"].shape == (2, 384)
    torch.testing.assert_close(feats["cls"], cls, rtol=1e-4, atol=1e-4)


def test_vit_default_blocks_truncation_and_normalisation_from_pretrained_cfg():
    t = Teacher("vit_tiny_patch16_224", weights=None)  # 12 blocks, AugReg: mean = std = 0.5
    assert t.layer_names == ["blocks.2", "blocks.5", "blocks.8"]  # ends of the first three quarters
    assert len(t.model.blocks) == 9  # blocks 9-11 dropped
    assert isinstance(t.model.head, torch.nn.Identity)
    assert t.normalization == {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    feats = t(torch.rand(1, 3, 64, 80))  # any multiple of the patch size
    assert feats["blocks.8"].shape == (1, 192, 4, 5) and feats["cls"].shape == (1, 192)
    with pytest.raises(ValueError, match="unknown teacher layer"):
        Teacher("vit_tiny_patch16_224", weights=None, layers=(12,))


def test_vit_teacher_is_frozen_and_fast_path_agrees(dino):
    dino.train()
    assert not dino.training and not dino.model.training
    assert all(not p.requires_grad for p in dino.parameters())
    x = torch.rand(1, 3, 56, 56, requires_grad=True)
    dino(x)["blocks.5"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in dino.parameters())
    fast = Teacher(
        DINO, weights=None, layers=(2, 5, 11), precision="bf16"
    )  # bf16 autocast + channels_last
    assert fast.weights_hash == dino.weights_hash
    with torch.no_grad():
        a, b = fast(x.detach()), dino(x.detach())
    for k in a:
        cos = torch.nn.functional.cosine_similarity(a[k].flatten(1), b[k].flatten(1)).min()
        assert a[k].dtype == torch.float32 and cos > 0.98, (k, cos)


def test_vit_hub_path_offline_fails_fast_with_clear_error(monkeypatch, tmp_path):
    from huggingface_hub import constants

    attempts = []

    def unreachable(*args, **kwargs):
        attempts.append(args)
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket.socket, "connect", unreachable)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    for var in (
        "HF_HUB_OFFLINE",
        "UNISTAD_OFFLINE",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty local cache
    start = time.perf_counter()
    with pytest.raises(TeacherWeightsError, match="weights=") as err:
        Teacher(
            "deit_small_patch16_224"
        )  # weights="auto": no offline package for this one -> the hub
    # huggingface_hub alone retries an unreachable hub with back-off for ~50 s; the probe makes it quick
    assert time.perf_counter() - start < 15
    assert attempts, "the hub was never tried"
    assert "cannot reach" in str(err.value)


def test_cnn_embedding_is_the_pooled_deepest_level(lite0_teacher):
    assert lite0_teacher.output_names == lite0_teacher.layer_names  # default CNN output unchanged
    assert not lite0_teacher.embedding and not lite0_teacher.is_vit
    emb = load_teacher(embedding=True)
    assert emb.output_names == [*lite0_teacher.layer_names, "cls"]
    assert emb.weights_hash == lite0_teacher.weights_hash and emb.embedding_dim == 112
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = emb(x)
        plain = lite0_teacher(x)
    deepest = plain["blocks.4"]  # (2, 112, 4, 4): stride 16
    torch.testing.assert_close(feats["cls"], deepest.mean(dim=(2, 3)), rtol=1e-5, atol=1e-5)
    for name in lite0_teacher.layer_names:
        torch.testing.assert_close(feats[name], plain[name])
    # a method can get the same embedding from levels-only features
    torch.testing.assert_close(
        lite0_teacher.embedding_of(plain), feats["cls"], rtol=1e-5, atol=1e-5
    )


def test_vit_features_without_cls_are_refused_not_guessed(dino):
    with torch.no_grad():
        feats = dino(torch.rand(1, 3, 28, 28))
    del feats["cls"]
    with pytest.raises(KeyError, match="cls"):
        dino.embedding_of(feats)
