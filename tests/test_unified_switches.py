"""The unified-reconstruction switches do what they say: a noisy bottleneck makes the student's input (never
its target) random while training only; hard-point mining scales the gradient of the best-reconstructed
positions by its factor and leaves the rest and the loss's value alone (checked against the plain loss's
gradient, position by position)."""
from __future__ import annotations

import pytest
import torch

from unistad_edu.methods import build_model
from unistad_edu.methods.base import Batch
from unistad_edu.methods.rd import distillation_loss, position_cosine_distance

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher():
    from unistad_edu.teacher import load_teacher
    return load_teacher(precision="fp32")


@pytest.mark.parametrize("name", ["rd", "snl"])
def test_a_noisy_bottleneck_is_random_while_training_only(teacher, name):
    x = Batch(image=torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    noisy = build_model(name, teacher, image_size=64, bottleneck_dropout=0.3)
    clean = build_model(name, teacher, image_size=64)
    noisy.train()
    a, b = noisy(x), noisy(x)
    assert any(not torch.equal(s1, s2) for s1, s2 in zip(a["student"], b["student"]))  # random input
    assert all(torch.equal(t1, t2) for t1, t2 in zip(a["teacher"], b["teacher"]))  # clean targets
    noisy.eval()
    a, b = noisy(x), noisy(x)
    assert all(torch.equal(s1, s2) for s1, s2 in zip(a["student"], b["student"]))
    clean.train()
    c, d = clean(x), clean(x)
    assert all(torch.equal(s1, s2) for s1, s2 in zip(c["student"], d["student"]))  # p = 0: no noise


@pytest.mark.parametrize("rule", ["position", "flattened"])
@pytest.mark.parametrize("q, f", [(0.5, 0.1), (0.9, 0.0), (0.25, 0.5)])
def test_hard_mining_scales_the_gradient_of_the_easy_positions(rule, q, f):
    g = torch.Generator().manual_seed(3)
    t = [torch.randn(2, 5, 4, 4, generator=g), torch.randn(2, 7, 2, 2, generator=g)]
    s0 = [x + 0.5 * torch.randn(x.shape, generator=g) for x in t]
    plain = [x.clone().requires_grad_(True) for x in s0]
    mined = [x.clone().requires_grad_(True) for x in s0]
    lp = distillation_loss(t, plain, rule)
    lm = distillation_loss(t, mined, rule, hm_quantile=q, hm_factor=f)
    assert lm.item() == pytest.approx(lp.item())  # the value is unchanged
    lp.backward()
    lm.backward()
    for tl, sp, sm in zip(t, plain, mined):
        d = position_cosine_distance(tl, sp.detach())[:, 0]  # (B, h, w)
        easy = (d < torch.quantile(d.flatten(), q))[:, None].expand_as(sp)
        assert easy.any() and (~easy).any()
        torch.testing.assert_close(sm.grad[easy], f * sp.grad[easy])
        torch.testing.assert_close(sm.grad[~easy], sp.grad[~easy])


def test_the_switches_are_off_by_default_and_ranged(teacher):
    cfg = build_model("rd", teacher, image_size=64).cfg
    assert cfg.bottleneck_dropout == 0.0 and cfg.hm_quantile == 0.0
    for bad in ({"hm_quantile": 1.0}, {"hm_factor": 1.5}, {"bottleneck_dropout": 1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            build_model("rd", teacher, image_size=64, **bad)
