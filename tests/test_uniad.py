"""UniAD: the neighbour mask really hides the window, layer-wise queries, jitter only in training, the paper
preset's shapes on EfficientNet-B4, every switch combination, and train -> eval through the engine."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from unistad_edu.data import MVTecDataset
from unistad_edu.engine import TrainConfig, fit
from unistad_edu.inference import evaluate
from unistad_edu.layers import (
    PositionEmbedding2D,
    additive_mask,
    clip_neighbor_size,
    local_mask,
    neighbor_mask,
)
from unistad_edu.methods import build_model, make_config
from unistad_edu.methods.base import Batch

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for this module


def _uniad(teacher, size=128, **kw):
    """A small UniAD (8 x 8 grid at 128 px with the Lite0 teacher) for fast tests."""
    cfg = dict(image_size=size, hidden_dim=32, num_heads=4, ffn_dim=64, enc_layers=1, dec_layers=1)
    return build_model("uniad", teacher, **{**cfg, **kw})


def _tok(r, c, w=8):
    return r * w + c


# ---- layers.py -------------------------------------------------------------------------------------------
def test_neighbor_mask_window_and_clipping():
    m = neighbor_mask(14, 14, 7)
    assert m.shape == (196, 196) and m.dtype == torch.bool
    assert m.diagonal().all()  # a token always hides itself
    assert m.sum(1)[_tok(7, 7, 14)] == 49  # full 7 x 7 window in the middle
    assert m.sum(1)[0] == 16 and (~m).sum(1)[0] == 180  # corner: clipped 4 x 4 window
    assert m[_tok(7, 7, 14), _tok(10, 10, 14)] and not m[_tok(7, 7, 14), _tok(11, 7, 14)]
    assert torch.equal(m, m.T)
    assert (
        neighbor_mask(16, 16, 8).sum(1)[_tok(8, 8, 16)] == 81
    )  # even k spans k + 1, as the official code
    assert not neighbor_mask(4, 4, 0).any()
    assert torch.equal(neighbor_mask(4, 4, 1), torch.eye(16, dtype=torch.bool))
    add = additive_mask(m)
    assert torch.isneginf(add[m]).all() and (add[~m] == 0).all()
    # local-only mask for UniSTAD: the inverse, self excluded
    loc = local_mask(14, 14, 7)
    assert loc.diagonal().all()
    assert (~loc).sum(1)[_tok(7, 7, 14)] == 48 and (~loc).sum(1)[0] == 15
    assert torch.equal(
        ~loc, m & ~torch.eye(196, dtype=torch.bool)
    )  # visible = the window minus self
    # clipping: a window may never hide a whole grid
    assert clip_neighbor_size(14, 14, 7) == (7, 7) and clip_neighbor_size(16, 16, 8) == (8, 8)
    assert clip_neighbor_size(4, 4, 7) == (3, 3) and clip_neighbor_size(2, 2, 7) == (1, 1)
    for n in range(2, 12):
        k = clip_neighbor_size(n, n, 9)
        assert (~neighbor_mask(n, n, k)).any(1).all(), n


def test_position_embedding_rows_and_columns():
    pe = PositionEmbedding2D(3, 5, 8)
    pos = pe()
    assert pos.shape == (15, 8)
    grid = pos.view(3, 5, 8)
    assert torch.equal(grid[0, :, :4], grid[2, :, :4])  # first half: the column's embedding
    assert torch.equal(grid[:, 1, 4:], grid[:, 3, 4:])  # second half: the row's embedding
    with pytest.raises(ValueError, match="even"):
        PositionEmbedding2D(3, 3, 7)


# ---- the mask in the model --------------------------------------------------------------------------------
@pytest.mark.parametrize("token", [(4, 4), (0, 0), (7, 6)])  # middle, corner, edge
def test_encoder_mask_hides_the_window(lite0_teacher, token):
    model = _uniad(
        lite0_teacher, neighbor_size=3
    ).eval()  # one encoder layer, 8 x 8 grid, 3 x 3 window
    r, c = token
    i = _tok(r, c)
    window = [
        _tok(rr, cc)
        for rr in range(max(0, r - 1), min(8, r + 2))
        for cc in range(max(0, c - 1), min(8, c + 2))
        if (rr, cc) != (r, c)
    ]
    assert len(window) == (
        8 if token == (4, 4) else 3 if token == (0, 0) else 5
    )  # clipped at borders
    outside = _tok(r, c + 2) if c + 2 < 8 else _tok(r, c - 2)
    g = torch.Generator().manual_seed(0)
    src = torch.randn(2, 64, 32, generator=g)
    with torch.no_grad():
        base = model.encode(src)[:, i]
        near = src.clone()
        near[:, window] += 5 * torch.randn(2, len(window), 32, generator=g)
        torch.testing.assert_close(model.encode(near)[:, i], base, rtol=1e-5, atol=1e-5)
        far = src.clone()
        far[:, outside] += 5 * torch.randn(2, 32, generator=g)
        assert (model.encode(far)[:, i] - base).abs().max() > 1e-3
    # control: without the mask the same in-window change does reach token i
    open_model = _uniad(lite0_teacher, neighbor_size=3, neighbor_mask=False).eval()
    with torch.no_grad():
        assert (open_model.encode(near)[:, i] - open_model.encode(src)[:, i]).abs().max() > 1e-3


def test_masked_attention_paths_agree(lite0_teacher):
    # CPU bf16 (the engine's autocast) takes the written-out attention; fp32 takes SDPA: same result
    from unistad_edu.layers import Attention

    att = Attention(32, 4, dropout=0.0).eval()
    q, k, v = (
        torch.randn(2, 64, 32, generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3)
    )
    mask = neighbor_mask(8, 8, 3)
    with torch.no_grad():
        ref = att(q, k, v, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = att(q, k, v, mask)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=0.05, rtol=0.05)
    # and the bf16 path hides the window too: changing hidden keys/values leaves query 0 untouched
    k2, v2 = k.clone(), v.clone()
    hidden = mask[0].nonzero().flatten()
    k2[:, hidden] += 3
    v2[:, hidden] -= 3
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(att(q, k2, v2, mask)[:, 0], low[:, 0])


def test_layerwise_query_decoder_cannot_copy_its_own_token(lite0_teacher):
    # with a learned query and the mask, decoder output i ignores the memory in i's window *including i*
    model = _uniad(lite0_teacher, neighbor_size=3).eval()
    i, window = _tok(4, 4), [_tok(rr, cc) for rr in (3, 4, 5) for cc in (3, 4, 5)]
    memory = torch.randn(1, 64, 32)
    changed = memory.clone()
    changed[:, window] += 5 * torch.randn(1, 9, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model.decode(changed)[:, i], model.decode(memory)[:, i], rtol=1e-5, atol=1e-5
        )
    # a standard decoder (query = previous output) carries token i through its residual: the shortcut
    plain = _uniad(lite0_teacher, neighbor_size=3, layerwise_query=False).eval()
    only_i = memory.clone()
    only_i[:, i] += 5 * torch.randn(1, 32)
    with torch.no_grad():
        assert (plain.decode(only_i)[:, i] - plain.decode(memory)[:, i]).abs().max() > 1e-3


def test_each_decoder_layer_has_its_own_query(lite0_teacher):
    model = _uniad(lite0_teacher, dec_layers=4)
    queries = [layer.query.weight for layer in model.decoder]
    assert len({id(q) for q in queries}) == 4
    assert all(q.shape == (64, 32) and q.requires_grad for q in queries)
    trainable = {id(p) for p in model.trainable_parameters()}
    assert all(id(q) in trainable for q in queries)
    for a, b in itertools.combinations(queries, 2):
        assert not torch.allclose(a, b)
    names = [n for n, _ in model.named_parameters() if n.endswith("query.weight")]
    assert names == [f"decoder.{k}.query.weight" for k in range(4)]
    plain = _uniad(lite0_teacher, dec_layers=4, layerwise_query=False)
    assert all(layer.query is None for layer in plain.decoder)


# ---- jitter ------------------------------------------------------------------------------------------------
def test_jitter_only_in_training(lite0_teacher):
    model = _uniad(lite0_teacher)
    batch = Batch(image=torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1)))
    clean = model.neck(lite0_teacher(batch.image))  # (B, C, 8, 8)
    batch.features = lite0_teacher(batch.image)  # as the engine serves them from the cache
    model.eval()
    with torch.no_grad():
        a, b = model.anomaly_maps(batch)["rec"], model.anomaly_maps(batch)["rec"]
        out = model(batch)
    assert torch.equal(a, b) and a.shape == (2, 1, 8, 8)
    assert torch.equal(out["input"], out["target"])
    model.train()
    with torch.no_grad():
        o1, o2 = model(batch), model(batch)
    assert not torch.allclose(o1["input"], o2["input"])  # a fresh draw each call
    for o in (o1, o2):
        torch.testing.assert_close(o["target"], clean)  # the target is the clean feature
        assert not torch.allclose(o["input"], o["target"])
    # the default rule: per channel, sigma_c = jitter_spread * the channel's std over the batch's tokens
    noise = (o1["input"] - clean).transpose(0, 1).flatten(1)  # (C, B * L)
    spread = clean.transpose(0, 1).flatten(1).std(dim=1)  # (C,)
    ratio = noise.std(dim=1) / (model.cfg.jitter_spread * spread)
    assert model.cfg.jitter_rule == "spread" and 0.85 < ratio.median().item() < 1.15
    # the paper's rule: sigma_token = alpha * ||f||_2 / C
    paper = _uniad(lite0_teacher, jitter_rule="norm").train()
    with torch.no_grad():
        o = paper(batch)
    noise = (o["input"] - clean).flatten(2)  # (B, C, L)
    C = clean.shape[1]
    sigma = 20.0 * clean.flatten(2).norm(dim=1) / C  # (B, L)
    ratio = noise.std(dim=1) / sigma
    assert 0.8 < ratio.mean().item() < 1.2
    # switched off (or p = 0): the input is clean in training too
    for kw in (dict(jitter=False), dict(jitter_prob=0.0)):
        m = _uniad(lite0_teacher, **kw).train()
        with torch.no_grad():
            o = m(batch)
        assert torch.equal(o["input"], o["target"])


# ---- the paper preset on a random-weight EfficientNet-B4 ------------------------------------------------
@pytest.fixture(scope="module")
def b4_teacher():
    from unistad_edu import load_teacher

    return load_teacher("efficientnet_b4", weights=None, layers=(0, 1, 2, 3))


def test_paper_preset_shapes_on_b4(b4_teacher):
    cfg = make_config("uniad", "paper")
    assert (cfg.teacher, cfg.teacher_layers, cfg.image_size) == (
        "efficientnet_b4",
        (0, 1, 2, 3),
        224,
    )
    assert (cfg.hidden_dim, cfg.num_heads, cfg.enc_layers, cfg.dec_layers, cfg.ffn_dim) == (
        256,
        8,
        4,
        4,
        1024,
    )
    assert (cfg.neighbor_size, cfg.jitter_scale, cfg.jitter_prob) == (7, 20.0, 1.0)
    assert (
        cfg.optimizer,
        cfg.lr,
        cfg.weight_decay,
        cfg.epochs,
        cfg.schedule,
        cfg.step_epochs,
        cfg.grad_clip,
        cfg.batch_size,
    ) == ("adamw", 1e-4, 1e-4, 1000, "step", 800, 0.1, 64)
    assert [(lv.channels, lv.stride) for lv in b4_teacher.feature_info] == [
        (24, 2),
        (32, 4),
        (56, 8),
        (160, 16),
    ]
    model = build_model("uniad", b4_teacher, preset="paper")
    assert model.in_channels == 272 and model.grid == (14, 14) and model.neighbor_size == (7, 7)
    assert (
        model.attn_mask.shape == (196, 196) and model.attn_mask.sum(1).min() == 16
    )  # corners: 4 x 4
    assert "attn_mask" not in model.state_for_checkpoint()  # rebuilt, never saved
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    batch = Batch(image=images)
    assert model.neck(b4_teacher(images)).shape == (2, 272, 14, 14)
    model.train()
    loss = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert (
        model.decoder[0].query.weight.grad is not None and model.input_proj.weight.grad is not None
    )
    assert all(p.grad is None for p in b4_teacher.parameters())
    model.eval()
    maps = model.anomaly_maps(batch)
    assert list(maps) == ["rec"] and maps["rec"].shape == (2, 1, 14, 14)
    out = model.score(batch)  # shared scoring: upsampled to 224, max of a 16 x 16 average pool
    assert out.anomaly_map.shape == (2, 1, 224, 224) and out.pred_score.shape == (2,)
    with pytest.raises(ValueError, match="224 px"):
        model.anomaly_maps(Batch(image=torch.rand(1, 3, 256, 256)))


# ---- switches --------------------------------------------------------------------------------------------
def test_every_switch_combination_runs(lite0_teacher):
    batch = Batch(
        image=torch.rand(2, 3, 64, 64)
    )  # 4 x 4 grid: the 7 x 7 window is clipped to 3 x 3
    for mask, query, jitter in itertools.product([True, False], repeat=3):
        model = build_model(
            "uniad",
            lite0_teacher,
            image_size=64,
            neighbor_mask=mask,
            layerwise_query=query,
            jitter=jitter,
            hidden_dim=32,
            num_heads=2,
            ffn_dim=64,
        )
        assert (model.attn_mask is not None) == mask
        assert any(n.endswith("query.weight") for n, _ in model.named_parameters()) == query
        if mask:
            assert model.neighbor_size == (3, 3) and (~model.attn_mask).any(1).all()
        model.train()
        loss = model.loss(batch)
        loss.backward()
        assert torch.isfinite(loss)
        model.eval()
        assert torch.isfinite(model.anomaly_maps(batch)["rec"]).all()


# ---- train -> eval through the engine --------------------------------------------------------------------
def test_fit_and_evaluate_on_tiny_synthetic_set(lite0_teacher, tmp_path):
    from unistad_edu.synthetic import make_synthetic

    data = make_synthetic(tmp_path / "syn", size=64, n_train=10, n_test_good=3, n_test_defect=1)
    train = MVTecDataset(data, "train", image_size=64)
    test = MVTecDataset(data, "test", image_size=64)
    model = build_model(
        "uniad", lite0_teacher, image_size=64, batch_size=8, hidden_dim=64, num_heads=4, ffn_dim=128
    )
    res = fit(model, train, TrainConfig(epochs=3, progress=False), out=tmp_path / "run")
    losses = [h["loss"] for h in res.history]
    assert len(losses) == 3 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert res.threshold is not None
    table = evaluate(model, test, progress=False)
    assert table["method"] == "uniad" and set(table["categories"]) == set(test.categories)
    assert all(0 <= v <= 1 for v in table["mean"].values() if v is not None and np.isfinite(v))
    # the checkpoint round trip of every method: tests/test_contract.py


def test_neck_official_and_antialiased(lite0_teacher):
    """``neck="official"`` is the official MFCN (bilinear, align_corners=True, every level straight to the grid);
    ``"antialias"`` low-pass filters a shrinking level first -- both against torch's interpolate directly."""
    import torch.nn.functional as F

    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(7))
    feats = lite0_teacher(x)
    for neck, kw in (
        ("official", dict(align_corners=True)),
        ("antialias", dict(align_corners=False, antialias=True)),
    ):
        model = _uniad(lite0_teacher, neck=neck)
        expect = torch.cat(
            [
                F.interpolate(feats[n].float(), size=model.grid, mode="bilinear", **kw)
                if feats[n].shape[-2:] != model.grid
                else feats[n].float()
                for n in lite0_teacher.layer_names
            ],
            dim=1,
        )
        torch.testing.assert_close(model.neck(feats), expect)
    a = _uniad(lite0_teacher, neck="official").neck(feats)
    b = _uniad(lite0_teacher, neck="antialias").neck(feats)
    assert not torch.allclose(a[:, :24], b[:, :24])  # the stride-4 level differs
    with pytest.raises(ValueError, match="neck"):
        _uniad(lite0_teacher, neck="box")
