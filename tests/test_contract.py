"""The method contract, held over every registered method (timm style: a new method gets these for free).

For each method in ``METHODS``: a finite loss whose gradient reaches only trainable parameters and never the
frozen teacher; maps and scores of the right shapes; ``explain.score_function(m)(x)`` equal to
``m.score(Batch(x))`` (attributions explain the very score the model returns); the same seed gives the same
model and the same training step; a batch carries no category; and fit -> checkpoint -> load gives equal
scores, while a trained model scores differently from a fresh one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from unistad_edu import explain
from unistad_edu.checkpoint import load_checkpoint
from unistad_edu.data import MVTecDataset
from unistad_edu.engine import TrainConfig, fit
from unistad_edu.inference import score_dataset
from unistad_edu.methods import METHODS, build_model
from unistad_edu.methods.base import Batch

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for this module

SIZE = 64
# smaller networks where a method's cpu preset is larger than a test needs; a method not listed runs its preset
SMALL = {
    "uniad": dict(hidden_dim=32, num_heads=4, ffn_dim=64, enc_layers=1, dec_layers=1),
    "unistad": dict(hidden_dim=32, num_heads=4, ffn_dim=64, layers=1),
    "dual_student": dict(hidden_dim=32, num_heads=4, ffn_dim=64, dec_layers=2, ee_image_size=None),
    "enhanced_stpm": dict(batch_size=4),
}
NAMES = sorted(METHODS)


def _build(name, teacher, **kw):
    return build_model(name, teacher, image_size=SIZE, **{**SMALL.get(name, {}), **kw})


def _images(n=2, seed=0):
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _training_batch(model, x):
    """What the engine gives a method in training: cached features, and the images only if it needs them."""
    return Batch(image=x if model.needs_images else None, features=model.teacher(x))


def _ready(model, x):
    """A model that can score: a memory bank first builds its bank (the engine's build step)."""
    if not model.trains_by_gradient:
        with torch.no_grad():
            model.eval().build([Batch(image=x, features=model.teacher(x))])
    return model.eval()


@pytest.fixture(autouse=True)
def fp32_teacher(lite0_teacher):
    """Exact comparisons: the session teacher in fp32 for this module, restored afterwards."""
    before = lite0_teacher.precision
    lite0_teacher.precision = "fp32"
    yield
    lite0_teacher.precision = before


@pytest.mark.parametrize("name", NAMES)
def test_loss_is_finite_and_its_gradient_reaches_only_trainable_parameters(name, lite0_teacher):
    model = _build(
        name, lite0_teacher
    ).eval()  # eval: no dropout, no running statistics -- repeatable
    batch = _training_batch(model, _images())
    terms = model.loss_terms(batch)
    assert terms and all(torch.isfinite(t) and t.dim() == 0 for t in terms.values())
    torch.testing.assert_close(
        model.loss(batch), sum(terms.values())
    )  # the loss is the sum of its terms
    model.train()
    assert not model.teacher.training and not any(
        p.requires_grad for p in model.teacher.parameters()
    )
    loss = model.loss(batch)
    assert torch.isfinite(loss)
    trainable = {id(p) for p in model.trainable_parameters()}
    if not model.trains_by_gradient:
        assert not trainable and not loss.requires_grad
        return
    loss.backward()
    with_grad = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
    assert with_grad and all(id(p) in trainable for _, p in with_grad), (
        "a gradient reached a frozen parameter"
    )
    assert not any(n.startswith(model.frozen_prefixes) for n, _ in with_grad)
    assert any(p.grad.abs().sum() > 0 for _, p in with_grad)
    assert all(p.grad is None for p in model.teacher.parameters())
    saved = model.state_for_checkpoint()
    assert saved and not any(
        k.startswith(model.frozen_prefixes) for k in saved
    )  # frozen modules never saved


@pytest.mark.parametrize("name", NAMES)
def test_maps_and_scores_have_the_contract_shapes(name, lite0_teacher):
    x = _images(3, seed=1)
    model = _ready(_build(name, lite0_teacher), x)
    with torch.no_grad():
        maps = model.anomaly_maps(Batch(image=x))
    assert maps and all(
        m.dim() == 4 and m.shape[:2] == (3, 1) and torch.isfinite(m).all() for m in maps.values()
    )
    out = model.score(Batch(image=x))
    assert out.anomaly_map.shape == (3, 1, SIZE, SIZE) and out.pred_score.shape == (3,)
    assert torch.isfinite(out.pred_score).all() and torch.isfinite(out.anomaly_map).all()


@pytest.mark.parametrize("name", NAMES)
def test_explain_scores_exactly_what_score_returns(name, lite0_teacher):
    x = _images(2, seed=2)
    model = _ready(_build(name, lite0_teacher), _images(4, seed=3))
    expect = model.score(Batch(image=x)).pred_score
    got = explain.score_function(model)(x.clone().requires_grad_(True))
    torch.testing.assert_close(got.detach(), expect, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_model_and_same_training_step(name, lite0_teacher):
    x = _images(2, seed=4)
    a, b = _build(name, lite0_teacher), _build(name, lite0_teacher)
    sa, sb = a.state_for_checkpoint(), b.state_for_checkpoint()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    losses = []
    for m in (a, b):
        m.train()
        torch.manual_seed(
            0
        )  # the engine seeds the global RNG; jitter, dropout, sampling draw from it
        losses.append(m.loss(_training_batch(m, x)))
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "field,value",
    [
        ("sampling", "weighted"),
        ("optimizer", "lbfgs"),
        ("schedule", "poly"),
        ("epochs", 0),
        ("batch_size", -2),
    ],
)
def test_every_config_refuses_a_bad_shared_choice_when_built(name, field, value):
    """The fields every method shares are checked by MethodConfig itself, so a method's own ``__post_init__``
    cannot skip them: the error names the field at config time, before any data or teacher is touched."""
    from unistad_edu.methods import make_config

    with pytest.raises(ValueError, match=f"^{field} must be"):
        make_config(name, **{field: value})


def test_a_batch_carries_no_category():
    assert [f.name for f in dataclasses.fields(Batch)] == ["image", "features"]


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory):
    from unistad_edu.synthetic import make_synthetic

    data = make_synthetic(
        tmp_path_factory.mktemp("syn") / "tiny",
        size=SIZE,
        n_train=8,
        n_test_good=2,
        n_test_defect=2,
        categories=("weave", "bolt"),
    )
    return MVTecDataset(data, "train", image_size=SIZE), MVTecDataset(data, "test", image_size=SIZE)


@pytest.mark.parametrize("name", NAMES)
def test_fit_checkpoint_round_trip_and_trained_differs_from_fresh(
    name, lite0_teacher, tiny_sets, tmp_path
):
    train, test = tiny_sets
    model = _build(name, lite0_teacher, batch_size=4)
    res = fit(
        model, train, TrainConfig(epochs=1, progress=False, precision="fp32"), out=tmp_path / "run"
    )
    assert res.threshold is not None and np.isfinite(res.threshold)
    loaded = load_checkpoint(tmp_path / "run", teacher=lite0_teacher)
    assert type(loaded) is type(model) and loaded.cfg == model.cfg
    trained = score_dataset(model.eval(), test, keep_maps=False)["scores"]
    np.testing.assert_allclose(
        score_dataset(loaded, test, keep_maps=False)["scores"], trained, rtol=1e-5, atol=1e-6
    )
    fresh = _build(name, lite0_teacher, batch_size=4)
    if (
        not fresh.trains_by_gradient
    ):  # an empty bank cannot score: the fresh one is built from other images
        _ready(fresh, _images(4, seed=5))
    assert not np.allclose(
        score_dataset(fresh.eval(), test, keep_maps=False)["scores"], trained, rtol=1e-3
    )


@pytest.mark.parametrize("name", NAMES)
def test_the_training_seed_reaches_the_models_own_randomness(name, lite0_teacher):
    """`train --seed S` sets the method's seed fields (seed_overrides): every method has one, every field of its
    config named ``*_seed`` is one of them (a second student's too), and for a student another seed gives other
    initial weights."""
    from unistad_edu.methods import METHODS, seed_overrides

    assert seed_overrides(name, 1), (
        f"{name} has no seed field: its randomness cannot be varied by --seed"
    )
    seeds = {f.name for f in dataclasses.fields(METHODS[name].Config) if f.name.endswith("_seed")}
    assert seeds == set(seed_overrides(name, 1)), (
        f"--seed leaves {seeds - set(seed_overrides(name, 1))} fixed"
    )
    a, b = (
        _build(name, lite0_teacher, **seed_overrides(name, 0)),
        _build(name, lite0_teacher, **seed_overrides(name, 1)),
    )
    if a.trains_by_gradient:
        pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
        assert any(not torch.equal(pa[k], pb[k]) for k in pa if not k.startswith(a.frozen_prefixes))
    else:
        assert all(getattr(b.cfg, f) == v for f, v in seed_overrides(name, 1).items())


# ---- the teacher stays the teacher ------------------------------------------------------------------------------
VIT = "vit_tiny_patch16_224"  # random weights: a ViT is full of nn.Linear layers, which a student's init could hit
ON_VIT = {
    "memory_bank": dict(strides=(16,))
}  # a ViT has one stride (16): the bank aggregates that level


@pytest.fixture(scope="module")
def vit_teacher():
    from unistad_edu.teacher import Teacher

    return Teacher(VIT, weights=None, precision="fp32")


def _frozen_state(model) -> dict[str, torch.Tensor]:
    """Every tensor of every frozen module (the teacher, a second teacher, an ImageNet network), copied."""
    return {
        f"{i}.{k}": v.detach().clone()
        for i, m in enumerate(model.frozen_modules())
        for k, v in m.state_dict().items()
    }


@pytest.mark.parametrize("kind", ["cnn", "vit"])
@pytest.mark.parametrize("name", NAMES)
def test_building_and_training_leave_the_teacher_bit_identical(
    name, kind, lite0_teacher, vit_teacher, tiny_sets
):
    """Building a method (its seeded initialisers) and training it one epoch through the engine leave every
    frozen weight bit-identical -- with Lite0 and with a ViT, whose linear layers a student's init reached."""
    teacher = lite0_teacher if kind == "cnn" else vit_teacher
    before = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    model = _build(name, teacher, batch_size=4, **(ON_VIT.get(name, {}) if kind == "vit" else {}))
    frozen = _frozen_state(model)
    assert frozen and model.frozen_modules()[0] is teacher
    after_build = teacher.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after_build[k])]
    assert not changed, f"building {name} changed the teacher: {changed[:3]}"
    fit(
        model,
        tiny_sets[0],
        TrainConfig(epochs=1, progress=False, precision="fp32", holdout_fraction=0.0),
    )
    now = _frozen_state(model)
    assert now.keys() == frozen.keys()
    changed = [k for k in frozen if not torch.equal(frozen[k], now[k])]
    assert not changed, f"training {name} changed a frozen module: {changed[:3]}"
