"""Every registered method detects: trained briefly on a small synthetic set, it beats chance by a clear margin,
and beats its own untrained self.

The set: two synthetic textures (weave, grain) at 96 px, 20 normal training images each (none held out), 6
normal and 4 defective test images per defect kind. A method's training here is short (a few seconds to half a
minute at one thread), so the margins are modest but far outside what an untrained model or chance gives; the
fp32 figures the margins were set from (2026-12-04, AVX2, one thread): trained, the best of image / pixel AUROC
0.87-0.96 (pixel: STPM 0.87 the lowest; image: RD 0.65 the lowest), untrained pixel AUROC 0.26 (STPM) to 0.68
(UniAD). It is a check that each method learns, not a benchmark (those are in docs/benchmarks.md).
"""

from __future__ import annotations

import pytest

from unistad_edu.data import MVTecDataset
from unistad_edu.engine import TrainConfig, fit
from unistad_edu.inference import evaluate
from unistad_edu.methods import METHODS, build_model

from .test_contract import SMALL

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 96
# epochs (and batch) per method: enough for each to learn something at this size
TRAINING = {
    "stpm": dict(epochs=6),
    "rd": dict(epochs=15),  # its RD++ projection starts random: 6 epochs left it at chance
    "snl": dict(epochs=6),
    "unistad": dict(epochs=6),
    "uniad": dict(epochs=30, batch_size=4),
    "dual_student": dict(epochs=3),
    "enhanced_stpm": dict(epochs=3),
    "memory_bank": {},
}
CHANCE_MARGIN = 0.25  # best of image / pixel AUROC at least 0.75
UNTRAINED_MARGIN = 0.15  # pixel AUROC at least this much above the same method before training


@pytest.fixture(scope="module")
def textures(tmp_path_factory):
    from unistad_edu.synthetic import make_synthetic

    root = make_synthetic(
        tmp_path_factory.mktemp("detect") / "set",
        size=SIZE,
        n_train=20,
        n_test_good=6,
        n_test_defect=4,
        categories=("weave", "grain"),
    )
    return MVTecDataset(root, "train", image_size=SIZE), MVTecDataset(root, "test", image_size=SIZE)


def test_every_method_has_a_training_recipe_here():
    assert set(TRAINING) == set(METHODS)


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.slow  # over 30 s on a 2-core CPU
def test_method_detects_after_brief_training(name, textures, lite0_teacher):
    train, test = textures
    model = build_model(
        name, lite0_teacher, image_size=SIZE, **{**SMALL.get(name, {}), **TRAINING[name]}
    )
    before = None
    if (
        model.trains_by_gradient
    ):  # an empty memory bank cannot score: only the trained one is compared
        before = evaluate(model, test, progress=False, precision="fp32")["mean"]
    fit(model, train, TrainConfig(progress=False, holdout_fraction=0.0, precision="fp32"))
    after = evaluate(model, test, progress=False, precision="fp32")["mean"]
    best = max(after["I-AUROC"], after["P-AUROC"])
    assert best >= 0.5 + CHANCE_MARGIN, (
        f"{name}: I-AUROC {after['I-AUROC']:.3f}, P-AUROC {after['P-AUROC']:.3f}"
    )
    if before is not None:
        assert after["P-AUROC"] >= before["P-AUROC"] + UNTRAINED_MARGIN, (
            f"{name}: pixel AUROC {before['P-AUROC']:.3f} untrained -> {after['P-AUROC']:.3f} trained"
        )
