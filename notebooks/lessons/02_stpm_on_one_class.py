"""Lesson 02 -- STPM on one class. Cells for ``notebooks/02_stpm_on_one_class.ipynb`` (built by ``notebooks/_build.py``)."""

from _cells import code, exercise, md

CELLS = [
    md(r"""
# Lesson 02 — STPM: a student that imitates the teacher, on one product

**STPM** (Student–Teacher Feature Pyramid Matching, Wang et al., BMVC 2021) turns the frozen teacher into
an anomaly detector with one trick:

1. Take a **student** network with the teacher's architecture and *random* weights.
2. Train it on **normal images only** to reproduce the teacher's features at every pyramid level.
3. At test time, wherever the student **fails to imitate** the teacher, something is unlike the training
   images: that is the anomaly.

The student only learns to imitate on what it has seen. A defect is new, so there its features drift
away from the teacher's. In this lesson we train STPM on **one** category (the per-class setting); lesson 03
will ask one student to cover all of them.
"""),
    md(r"""
### Paper vs. ours

| aspect | the paper states (source) | what we built (`methods/stpm.py`) | our reading / why |
|---|---|---|---|
| teacher / student | ResNet-18 (ImageNet, frozen), `layer1`–`layer3`; student = the same net, random init [code: anomalib `Stfpm`] | `cpu` preset: Lite0 (strides 4/8/16); `paper` preset: ResNet-18; student `Pyramid.random_like(teacher)` | Lite0 loads offline and trains in minutes on a CPU |
| loss | per level `0.5 / (h·w) · Σ (t̂ − ŝ)²` of channel-normalised features (Eq. 1), summed over the batch [code: anomalib `Stfpm`] | `loss_terms`: the mean of each level's map | the batch mean keeps the learning rate independent of the batch size |
| anomaly map & image score | per level `0.5 ‖t̂ − ŝ‖²`, upsampled, multiplied [code: anomalib `Stfpm`]; score = max [recalled] | `fuse="product"`, `image_score="max"`, in both presets | plus a Gaussian σ = 4 (`blur_sigma`), our addition |
| training recipe | SGD lr 0.4, momentum 0.9, weight decay 1e-4, 100 epochs, batch 32, 256 px [recalled] | `paper`: that recipe; `cpu`: Adam 1e-3, weight decay 1e-5, 10 epochs, batch 16 | recalled, not checked against the paper |
| the one idea | match a feature **pyramid** — several levels, one student (title, arXiv 2103.04257) | three teacher levels, three maps, one student | one level would see one defect size only |
| this lesson | one-class training [recalled] | one category; quick mode: 128 px, ≤ 96 images, batch 8, ~80 steps; `fit` keeps 10 % aside for the threshold | full mode on a GPU takes the `paper` preset |

Labels: [code: …] was read in the public code; [recalled] is from memory and was not checked against the paper.
"""),
    code(r"""
import math
import os

import numpy as np
import torch
from IPython.display import Markdown, display

from unistad_edu import MVTecDataset, TrainConfig, build_model, evaluate, fit, report, viz
from unistad_edu.course import method_and_teacher, setup
from unistad_edu.methods.base import Batch
from unistad_edu.report import format_table
from unistad_edu.scoring import score

lesson = setup(["bottle"], min_categories=1, fallback=1)   # one category; quick/full switch, device, data
QUICK, device, root = lesson.quick, lesson.device, lesson.root
CATEGORY = lesson.categories[0] if QUICK else ("bottle" if "bottle" in lesson.found else lesson.found[0])
lesson.categories = [CATEGORY]
# quick: 128 px, at most 96 training images, batches of 8, about 80 optimiser steps; full: the preset's recipe
OVERRIDES = dict(image_size=128, epochs=4, batch_size=8) if QUICK else dict(image_size=256)
N_TRAIN = 96 if QUICK else None
QUICK_STEPS = 80
print(lesson.describe(overrides=OVERRIDES))
"""),
    md(r"""
## 1. Data, teacher and an untrained student

The method's config comes from a **preset** (`cpu`: the Lite0 teacher, Adam; `paper`: the paper's
ResNet-18 and SGD recipe) plus our overrides. Only the training images of one category are used; the test
set has normal and defective images of that category.
"""),
    code(r"""
cfg, teacher = method_and_teacher(lesson, "stpm", **OVERRIDES)  # cpu preset if offline
PRESET = lesson.preset
SIZE = cfg.image_size

train = MVTecDataset(root, "train", categories=[CATEGORY], image_size=SIZE).evenly(N_TRAIN)
test = MVTecDataset(root, "test", categories=[CATEGORY], image_size=SIZE)
EPOCHS = cfg.epochs
if QUICK:  # enough epochs for ~QUICK_STEPS batches (fit holds 10 % of the images out and drops the last partial batch)
    EPOCHS = max(cfg.epochs, math.ceil(QUICK_STEPS / max(1, int(0.9 * len(train)) // cfg.batch_size)))
print(f"train: {len(train)} normal images, {EPOCHS} epochs;  test: {test.counts()[CATEGORY]}")

model = build_model("stpm", teacher, cfg=cfg).to(device)
n_student = sum(p.numel() for p in model.trainable_parameters())
print(f"teacher {cfg.teacher} (frozen), student with {n_student:,} trainable parameters, random init "
      f"(seed {cfg.student_seed}); levels {teacher.layer_names}")
"""),
    md(r"""
## 2. Epoch 0: how good is a student that has learned nothing?

Always measure the starting point. `evaluate` scores every test image with the shared scoring path and
returns the per-category metrics table (values × 100 below):

* **I-AUROC** — image level: the probability that a random defective image scores higher than a random
  normal one (0.5 = chance, 1 = perfect).
* **P-AUROC** — the same over all pixels, with the masks as labels.
* **AUPRO** — pixel level again, but every defect *region* counts equally, however small.
"""),
    code(r"""
untrained_table = evaluate(model, test, progress=False)
display(Markdown(format_table(untrained_table, columns=("I-AUROC", "I-AP", "P-AUROC", "AUPRO"))))
"""),
    md(r"""
## 3. Train

The loss (Eq. 1 of the paper): at each level, L2-normalise teacher and student vectors along the channels
and average `0.5 * ||t - s||²` over positions, then sum over levels. `fit` handles the rest: the teacher's
features are computed once per image and cached, and 10 % of the training images are **held out** to
calibrate a decision threshold from normal images only.

For every batch `fit` calls one function, `engine.train_step` -- the whole optimisation step, short enough to
read here (`prec` is the precision `fit` chose by measuring this machine; `ddp` averages the gradients when
several processes train together):
"""),
    code(r"""
import inspect

from unistad_edu import engine

print(inspect.getsource(engine.train_step))
"""),
    code(r"""
result = fit(model, train, TrainConfig(epochs=EPOCHS, batch_size=cfg.batch_size, device=device, progress=True))
print(f"{result.epochs_done} epochs in {result.seconds:.0f} s; threshold (0.99 quantile of held-out normal scores): "
      f"{result.threshold:.4g}")
viz.loss_curve(result.history, title=f"STPM training loss on {CATEGORY}").show()
"""),
    md(r"""
## 4. Re-derive, then verify: the anomaly map

At test time STPM's per-level map is `0.5 * ||t̂ - ŝ||²` at every position (t̂, ŝ: unit-length teacher and
student vectors). The shared scoring path upsamples the levels to the image size, **multiplies** them,
blurs with a Gaussian, and takes the image score as the **maximum** of the map. We write the per-level map
from scratch and check it against the library.
"""),
    code(r"""
model.eval()
x = torch.stack([test[i]["image"] for i in range(4)]).to(device)
with torch.no_grad():
    t = teacher(x)
    s = model.student(teacher.normalize(x))
    mine = {k: 0.5 * (torch.nn.functional.normalize(t[k].float(), dim=1)
                      - torch.nn.functional.normalize(s[k].float(), dim=1)).pow(2).sum(dim=1, keepdim=True)
            for k in teacher.layer_names}
    theirs = model.anomaly_maps(Batch(image=x))
for k in teacher.layer_names:
    torch.testing.assert_close(mine[k], theirs[k])
out = score(mine, SIZE, cfg.scoring)
torch.testing.assert_close(out.pred_score, out.anomaly_map.flatten(1).max(dim=1).values)
print("per-level maps and max image score re-derived: OK", {k: tuple(v.shape) for k, v in mine.items()})
"""),
    md(r"""
## 5. Evaluate the trained student
"""),
    code(r"""
trained_table, outputs = evaluate(model, test, progress=False, return_outputs=True)
display(Markdown(format_table(trained_table, columns=("I-AUROC", "I-AP", "P-AUROC", "AUPRO"))))
cols = ("I-AUROC", "P-AUROC", "AUPRO")
display(Markdown(report.markdown_table(
    [{"student": "epoch 0 (untrained)", **{c: untrained_table["mean"][c] for c in cols}},
     {"student": f"after {result.epochs_done} epochs", **{c: trained_table["mean"][c] for c in cols}}])))
"""),
    md(r"""
## 6. Where does it look?

Top row: defective test images (one per defect type, and a normal one at the end) with the ground-truth
mask outlined in green. Bottom row: the anomaly map on **one shared colour scale** for all images — maps
must never be normalised per image, or the quietest normal image would look as alarming as a defect.
"""),
    code(r"""
images = [viz.as_uint8(test[i]["image"]) for i in range(len(test))]
scores, labels, maps, masks = outputs["scores"], outputs["labels"], outputs["maps"], outputs["masks"]
vmax = float(np.quantile(scores, 0.95))                 # shared scale: 0 .. a high image score

show = []
for defect in dict.fromkeys(r.defect for r in test.records if r.label == 1):
    show.append(next(i for i, r in enumerate(test.records) if r.defect == defect))
show.append(next(i for i, r in enumerate(test.records) if r.label == 0))
top = [viz.mask_overlay(images[i], masks[i], color=(40, 220, 40), alpha=0.0) for i in show]
bottom = [viz.mask_overlay(viz.overlay(images[i], maps[i], vmin=0, vmax=vmax), masks[i], color=(40, 220, 40), alpha=0.0)
          for i in show]
titles = [f"{test.records[i].defect}: score {scores[i]:.3g}" for i in show] + [""] * len(show)
viz.image_grid(top + bottom, titles, cols=len(show), title=f"STPM on {CATEGORY}: images and anomaly maps").show()
"""),
    md(r"""
## 7. Image scores and the threshold

The histogram of image scores, normal vs defective test images, with the threshold `fit` calibrated from
held-out **normal training** images only (no defective image was used to choose it). I-AUROC measures how
well the two histograms are separated, whatever the threshold; the counts below are what *this* threshold
actually does.
"""),
    code(r"""
viz.score_histogram(scores, labels, threshold=result.threshold, title=f"{CATEGORY}: image scores").show()
flagged = scores > result.threshold
print(f"defective images flagged: {flagged[labels == 1].sum()} of {(labels == 1).sum()};  "
      f"normal images flagged (false alarms): {flagged[labels == 0].sum()} of {(labels == 0).sum()}")
"""),
    md(r"""
## 8. Explore

Move through the test images and the threshold. Red = pixels above the threshold, green outline = the true
defect. Since the image score is the map's maximum, an image is flagged exactly when some pixel is red.
Where do false alarms come from? Which defects are missed?
"""),
    code(r"""
viz.image_browser(images, maps=list(maps), masks=list(masks), scores=scores, labels=labels,
                  titles=[f"{r.defect} / {os.path.basename(r.path)}" for r in test.records],
                  threshold=result.threshold, vmax=vmax)
"""),
    md(r"""
## Your turn

2 small tasks on the heart of this lesson. In the exercise notebook (`notebooks/exercises/02_stpm_on_one_class.ipynb`) each marked cell is a stub for you to write; the check after it runs your function and the package's own on the same small inputs, and says what is still missing.
"""),
    exercise(
        "STPM's per-level anomaly map",
        task=r"""
Write `my_level_map(t, s)`: teacher and student features (B, C, h, w) -> (B, 1, h, w), the map
`0.5 * || t/|t| - s/|s| ||^2` (each position's channel vector made unit length first, the squared distance
summed over channels). Its mean is STPM's loss of that level.
""",
        solution=r"""
import torch.nn.functional as F


def my_level_map(t, s):
    tn, sn = F.normalize(t.float(), dim=1), F.normalize(s.float(), dim=1)  # unit length along channels
    return 0.5 * (tn - sn).pow(2).sum(dim=1, keepdim=True)                 # (B, 1, h, w)
""",
        stub=r"""
import torch.nn.functional as F


def my_level_map(t, s):
    # your code: F.normalize along the channel dimension, then half the squared distance summed over channels
    raise NotImplementedError
""",
        check=r"""
import torch

from unistad_edu.course import check
from unistad_edu.layers import pyramid_maps

_g = torch.Generator().manual_seed(0)
_t, _s = torch.randn(2, 8, 5, 5, generator=_g), torch.randn(2, 8, 5, 5, generator=_g)
check("Exercise 1 (level map)", lambda: my_level_map(_t, _s),
      lambda: pyramid_maps({"l": _t}, {"l": _s}, ["l"])["l"], hint={hint})
""",
        hint="normalise each position's vector over the channels, then sum the squared difference over the channels without losing that dimension",
        more="Make teacher and student unit length with torch's functional normalize along dimension 1, subtract, square, sum over dimension 1 with keepdim so the shape stays B x 1 x h x w, and multiply by one half.",
    ),
    exercise(
        "from level maps to an image score",
        task=r"""
The shared scoring path turns per-level maps into one map and one number: upsample every level to the image
size (bilinear, `align_corners=False`), **multiply** them, blur with a Gaussian of sigma 4 px
(`scoring.gaussian_blur(x, 4.0)`, given), and take the **maximum** as the image score. Write
`my_image_score(maps, size)` returning the (B,) scores.
""",
        solution=r"""
import torch
import torch.nn.functional as F

from unistad_edu.scoring import gaussian_blur


def my_image_score(maps, size):
    up = [F.interpolate(m.float(), size=(size, size), mode="bilinear", align_corners=False) for m in maps.values()]
    fused = torch.stack(up).prod(dim=0)        # (B, 1, S, S): the product of the levels
    fused = gaussian_blur(fused, 4.0)
    return fused.flatten(1).max(dim=1).values  # (B,)
""",
        stub=r"""
import torch
import torch.nn.functional as F

from unistad_edu.scoring import gaussian_blur


def my_image_score(maps, size):
    # your code: upsample each map to (size, size), multiply them, gaussian_blur(..., 4.0), max per image
    raise NotImplementedError
""",
        check=r"""
import torch

from unistad_edu.course import check
from unistad_edu.scoring import ScoringConfig, score

_g = torch.Generator().manual_seed(1)
_maps = {"a": torch.rand(2, 1, 8, 8, generator=_g), "b": torch.rand(2, 1, 4, 4, generator=_g)}
check("Exercise 2 (image score)", lambda: my_image_score(_maps, 32),
      lambda: score(_maps, 32, ScoringConfig()).pred_score, hint={hint})
""",
        hint="three steps: combine the upsampled levels by a product, blur, then take each image's largest value",
        more="Upsample each level with functional interpolate to the full image size (bilinear, corners not aligned), stack the results and multiply along the stacking axis; blur with sigma 4, then flatten each image's map and take its maximum -- one number per image.",
    ),
    md(r"""
## Check yourself

**Exercise.** (1) Before training, the student is a random network and its I-AUROC is close to 0.5. Explain
why chance level — not 0, not 1 — is what a random student should get. (2) Halve `QUICK_STEPS` (or `N_TRAIN`) in
the first cell. Before running, predict which metric drops most: I-AUROC, P-AUROC or
AUPRO — and then check. (3) In the explorer, find the defective images the calibrated threshold misses:
what do they have in common?

The cell checks the lesson's claim on this run's numbers: training the student on normal images makes it a
clearly better detector than the same student at epoch 0, by at least 0.15 I-AUROC.
"""),
    code(r"""
auroc_untrained = untrained_table["mean"]["I-AUROC"]
auroc_trained = trained_table["mean"]["I-AUROC"]
print(f"I-AUROC on {CATEGORY}: epoch 0 {auroc_untrained:.3f} -> after {result.epochs_done} epochs {auroc_trained:.3f}")
assert auroc_trained >= auroc_untrained + 0.15, "training did not clearly improve the student"
"""),
]
