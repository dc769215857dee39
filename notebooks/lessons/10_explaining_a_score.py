"""Lesson 10 -- explaining an image score with captum. Cells for ``notebooks/10_explaining_a_score.ipynb``
(built by ``notebooks/_build.py``)."""

from _cells import code, exercise, md

CELLS = [
    md(r"""
# Lesson 10 — Explaining a score: which pixels made this image anomalous?

A teacher–student model already gives an explanation for free: the **anomaly map**. But the map is not the
score's *cause* — the image score is one number computed from it (here: the maximum of the blurred, fused
map), and the map itself is computed from the pixels through two deep networks. An **attribution method**
answers a sharper question: *how much did each input pixel contribute to this image's score?*

We use [captum](https://captum.ai) on the image score, as a function of the input pixels, with two classic
methods:

* **Integrated Gradients (IG)** — integrate the gradient of the score along the straight path from a
  *baseline* image x' to the image x. Its defining property, **completeness**: the attributions add up
  exactly to `score(x) − score(x')`.
* **Occlusion** — slide a patch over the image, replace it by the baseline's pixels, and record how much the
  score drops. No gradients at all, just many forward passes.

Then we compare the two with the anomaly map on real defects: how much of each one's mass lies inside the
defect mask, against the share of the image the defect covers?
"""),
    code(r"""
import math

import numpy as np
import torch
from IPython.display import Markdown, display

from unistad_edu import MVTecDataset, TrainConfig, build_model, evaluate, explain, fit, report, scoring, viz
from unistad_edu.course import method_and_teacher, setup
from unistad_edu.methods.base import Batch
from unistad_edu.report import format_table

QUICK_CATEGORIES = ["bottle", "cookie", "metal_plate"]   # real data: three visually different products
lesson = setup(QUICK_CATEGORIES)   # quick/full switch (UNISTAD_QUICK), device, data, categories, preset
QUICK, device, root, CATEGORIES = lesson.quick, lesson.device, lesson.root, lesson.categories
OVERRIDES = dict(image_size=128, epochs=4, batch_size=8) if QUICK else dict(image_size=256)
N_TRAIN = 40 if QUICK else None      # normal training images per category (None: all)
N_TEST = 16 if QUICK else None       # test images per category (None: all)
QUICK_STEPS = 56                     # optimiser steps in quick mode
PER_CATEGORY = 2 if QUICK else 4     # defects explained per category
IG_STEPS = 256                       # points on the integration path
print(lesson.describe(method="stpm", overrides=OVERRIDES))
"""),
    md(r"""
## 1. A unified STPM to explain

STPM (lesson 02), trained on the normal images of all the categories at once. Its anomaly map is the
student's failure to imitate the frozen teacher; the image score is the maximum of the fused, blurred map.
"""),
    code(r"""
cfg, teacher = method_and_teacher(lesson, "stpm", **OVERRIDES)  # cpu preset if offline
PRESET = lesson.preset
SIZE = cfg.image_size

train = MVTecDataset(root, "train", categories=CATEGORIES, image_size=SIZE).evenly(N_TRAIN)
test = MVTecDataset(root, "test", categories=CATEGORIES, image_size=SIZE).evenly(N_TEST)
EPOCHS = cfg.epochs
if QUICK:  # enough epochs for ~QUICK_STEPS batches (fit holds 10 % out and drops the last partial batch)
    EPOCHS = max(cfg.epochs, math.ceil(QUICK_STEPS / max(1, int(0.9 * len(train)) // cfg.batch_size)))
model = build_model("stpm", teacher, cfg=cfg).to(device)
result = fit(model, train, TrainConfig(epochs=EPOCHS, batch_size=cfg.batch_size, device=device, progress=False))
table, out = evaluate(model, test, progress=False, return_outputs=True)
model.eval()
print(f"trained {result.epochs_done} epochs in {result.seconds:.0f} s on {len(train)} normal images; "
      f"threshold {result.threshold:.4g}")
display(Markdown(format_table(table, ("I-AUROC", "P-AUROC", "AUPRO"))))
"""),
    md(r"""
## 2. Is the score differentiable, end to end?

IG needs `∂ score / ∂ pixels`. Follow the pipeline: pixels → frozen teacher and student → per-level maps →
`scoring.score` (upsample, multiply, Gaussian blur, **max**). Upsampling, products and the blur are smooth; the
max passes the gradient to the one position where the map peaks — differentiable almost everywhere, which is
all IG needs. The frozen teacher has no trainable parameters (`requires_grad_(False)`), but that only
stops gradients to its *weights*; gradients to its *input* flow through it as through any network.

Two things in the package stand in the way, though, and both are deliberate for training and testing:

* `Method.score` is decorated with `@torch.no_grad()` — scoring thousands of test images must not build
  graphs;
* `Method.teacher_features` runs the teacher under `torch.no_grad()` when no cached features are given — the
  teacher is frozen, so training never needs its graph.

So `model.score(...)` has no gradient at all, and `anomaly_maps` on a bare image differentiates only the
*student* branch: the teacher's side of `‖t̂ − ŝ‖²` is treated as a constant, and the gradient is wrong. The
fix uses the contract as it is: compute the teacher's features ourselves, *with* gradients, and hand them in
through `Batch.features`; then call `anomaly_maps` and `scoring.score` ourselves, with gradients on (the
default outside `torch.no_grad()`; IG turns them on by itself), with the teacher's bf16 autocast (where `precision="auto"` chose it
on this CPU) switched off so that the gradients are float32. That is `unistad_edu.explain.score_function(model)`: read its
six lines, then check it below against `model.score` and against the student-only gradient.
"""),
    code(r"""
image_score = explain.score_function(model)   # (B, 3, S, S) pixels -> (B,) scores, gradients through teacher + student


def student_only_score(x):
    # what a bare Batch gives: the teacher runs under no_grad inside teacher_features
    return scoring.score(model.anomaly_maps(Batch(image=x)), x.shape[-2:], model.cfg.scoring).pred_score


first_defect = int(np.flatnonzero(out["labels"] == 1)[0])
x = test[first_defect]["image"][None].to(device).requires_grad_(True)
print("model.score(...) requires grad:", model.score(Batch(image=x)).pred_score.requires_grad)
with torch.no_grad():
    # the same score; model.score runs the teacher at the measured precision (bf16 only where faster), image_score in float32
    torch.testing.assert_close(image_score(x), model.score(Batch(image=x)).pred_score.float(), rtol=3e-2, atol=1e-4)
g_full, = torch.autograd.grad(image_score(x).sum(), x)
g_student, = torch.autograd.grad(student_only_score(x).sum(), x)
cos = torch.nn.functional.cosine_similarity(g_full.flatten(), g_student.flatten(), dim=0).item()
print(f"gradient norm, teacher + student: {g_full.norm():.4g};  student branch only: {g_student.norm():.4g};  "
      f"cosine between them {cos:.3f}")
"""),
    md(r"""
The same score as `model.score` (checked above, up to bf16 rounding where this CPU runs the teacher in bf16), but the student-only gradient points elsewhere: half of the story is missing. From here on, `image_score` is the function we explain.

## 3. The baseline: "compared with what?"

IG explains `score(x) − score(x')` and Occlusion replaces patches by the baseline's pixels, so the baseline
x' must be something the model finds **normal** — otherwise we explain the difference between two anomalies.
Candidates, scored by the model (threshold from section 1 for reference):
"""),
    code(r"""
train_images = torch.stack([train[i]["image"] for i in range(len(train))]).to(device)

nearest_normal = lambda x: explain.nearest_normal(x, train_images)   # closest training image in pixel space


x = test[first_defect]["image"][None].to(device)
candidates = {
    "black": torch.zeros_like(x),
    "mid-grey": torch.full_like(x, 0.5),
    "blurred image (sigma 8 px)": scoring.gaussian_blur(x.transpose(0, 1), 8.0).transpose(0, 1),
    "nearest normal training image": nearest_normal(x),
    "the defective image itself": x,
}
with torch.no_grad():
    base_rows = [{"baseline": k, "image score": float(image_score(v)), "score / threshold": float(image_score(v)) / result.threshold,
                  "mean |x - x'|": float((x - v).abs().mean())} for k, v in candidates.items()]
display(Markdown(report.markdown_table(base_rows)))
"""),
    md(r"""
A black image is itself an anomaly to this model — typically as anomalous as a real defect; explaining
"defect vs black" would spread credit over every pixel. A flat grey image scores low (a student imitates a
featureless image easily) but differs from x *everywhere*, so IG has to distribute the score over the whole
object. The **nearest normal training image** both scores as normal and differs from x mostly where x is
unusual — the defect, plus whatever misalignment there is between the two pictures. We use it for both
methods.

## 4. Integrated Gradients and Occlusion on real defects

Per category, the defective test images with the highest scores — the images an operator would ask about.
For each: IG with `IG_STEPS` points on the path (captum's `IntegratedGradients`, which also returns the
*convergence delta*: `Σ attributions − (score(x) − score(x'))`), and Occlusion with patches an eighth of
the image side wide (16 × 16 at 128 px), side by side (captum's `Occlusion`, the baseline's pixels pasted
in; a stride of half a patch, captum's usual overlap, gives smoother maps for 3.5x the forward passes). Attributions come per pixel and colour
channel; we sum the channels.
"""),
    code(r"""
chosen = []
for c in CATEGORIES:
    ids = np.flatnonzero((out["categories"] == c) & (out["labels"] == 1))
    chosen += ids[np.argsort(-out["scores"][ids])][:PER_CATEGORY].tolist()

patch = max(8, SIZE // 8)
explained = []
for i in chosen:
    x = test[i]["image"][None].to(device)
    ref = nearest_normal(x)
    attr_ig, delta = explain.integrated_gradients(image_score, x, ref, n_steps=IG_STEPS)   # (1, S, S), (1,)
    attr_occ = explain.occlusion(image_score, x, ref, window=patch, stride=patch)          # (1, S, S)
    with torch.no_grad():
        s_x, s_ref = float(image_score(x)), float(image_score(ref))
    explained.append({"index": i, "category": test.records[i].category, "defect": test.records[i].defect,
                      "score": s_x, "baseline score": s_ref, "sum IG": float(attr_ig.sum()), "delta": float(delta[0]),
                      "ig": attr_ig[0], "occ": attr_occ[0],
                      "ref": viz.as_uint8(ref[0])})
display(Markdown("**completeness**: Σ IG vs score(x) − score(x')\n\n" + report.markdown_table(
    [{"category": e["category"], "defect": e["defect"], "score(x)": e["score"], "score(x')": e["baseline score"],
      "score(x) − score(x')": e["score"] - e["baseline score"], "Σ IG": e["sum IG"],
      "relative gap": abs(e["sum IG"] - (e["score"] - e["baseline score"])) / abs(e["score"] - e["baseline score"])}
     for e in explained], digits=4)))
"""),
    md(r"""
The sums match up to a few percent. The gap is the error of approximating the path integral with
`IG_STEPS` points, and the max makes it larger than for a smooth function: wherever the peak of the map
jumps from one position to another along the path, the gradient jumps too. Fewer steps widen it, more
shrink it (try `IG_STEPS = 32` and `512`; at 128 this check failed here once, at a gap of 0.14).

Now look. Per defect, from left to right: the image with its defect mask (green), the anomaly map (one scale
for all rows), IG's positive attributions and Occlusion's positive attributions (each on its own scale — IG
is in score units per pixel, Occlusion per patch), and the baseline image.
"""),
    code(r"""
green = (40, 220, 40)
vmax_map = float(max(out["maps"][e["index"]].max() for e in explained))
tiles, titles = [], []
for e in explained:
    img = viz.as_uint8(test[e["index"]]["image"])
    mask = out["masks"][e["index"]]
    pos_ig, pos_occ = np.clip(e["ig"], 0, None), np.clip(e["occ"], 0, None)
    tiles += [viz.mask_overlay(img, mask, color=green, alpha=0.0),
              viz.mask_overlay(viz.overlay(img, out["maps"][e["index"]], vmin=0, vmax=vmax_map), mask, color=green, alpha=0.0),
              viz.mask_overlay(viz.overlay(img, pos_ig, vmin=0, vmax=float(np.quantile(pos_ig, 0.995)) or 1.0), mask,
                               color=green, alpha=0.0),
              viz.mask_overlay(viz.overlay(img, pos_occ, vmin=0, vmax=float(pos_occ.max()) or 1.0), mask,
                               color=green, alpha=0.0),
              e["ref"]]
    titles += [f"{e['category']}: {e['defect']}", f"anomaly map (score {e['score']:.3g})", "Integrated Gradients (+)",
               "Occlusion (+)", f"baseline (score {e['baseline score']:.3g})"]
viz.image_grid(tiles, titles, cols=5, title="image | anomaly map | IG | Occlusion | baseline (green: defect mask)").show()
"""),
    md(r"""
## 5. How much of the explanation lies on the defect?

For each defect and each explanation: the share of its (positive) mass inside the mask, next to the share of
the image the mask covers. An explanation spread at random would put as much mass inside as the area share —
a ratio of 1. Above 1, the explanation concentrates on the defect.
"""),
    code(r"""
share_inside = explain.share_inside   # positive mass inside the mask / all positive mass
share_rows = []
for e in explained:
    mask = out["masks"][e["index"]] > 0
    area = float(mask.mean())
    row = {"category": e["category"], "defect": e["defect"], "area share": area,
           "map": share_inside(out["maps"][e["index"]], mask), "IG (+)": share_inside(e["ig"], mask),
           "Occlusion (+)": share_inside(e["occ"], mask)}
    for k in ("map", "IG (+)", "Occlusion (+)"):
        row[f"{k} / area"] = row[k] / area
    share_rows.append(row)
display(Markdown(report.markdown_table(share_rows, digits=3)))
for k in ("map", "IG (+)", "Occlusion (+)"):
    ratios = [r[f"{k} / area"] for r in share_rows]
    print(f"{k:14s} median concentration on the defect: {np.median(ratios):5.1f}x its area share "
          f"(above 1 on {sum(r > 1 for r in ratios)} of {len(ratios)} defects)")
"""),
    md(r"""
## Your turn

2 small tasks on the heart of this lesson. In the exercise notebook (`notebooks/exercises/10_explaining_a_score.ipynb`) each marked cell is a stub for you to write; the check after it runs your function and the package's own on the same small inputs, and says what is still missing.
"""),
    exercise(
        "how much of an explanation lies on the defect",
        task=r"""
Write `my_share_inside(values, mask)`: the fraction of the **positive** part of an attribution map (H, W)
that lies inside the defect mask (nonzero = defect); NaN when nothing is positive.
""",
        solution=r"""
import numpy as np


def my_share_inside(values, mask):
    v = np.clip(np.asarray(values, float), 0, None)   # only the positive part counts
    total = v.sum()
    return float(v[np.asarray(mask) > 0].sum() / total) if total > 0 else float("nan")
""",
        stub=r"""
import numpy as np


def my_share_inside(values, mask):
    # your code: clip negatives to 0, then (sum inside the mask) / (sum everywhere)
    raise NotImplementedError
""",
        check=r"""
import numpy as np

from unistad_edu.course import check
from unistad_edu.explain import share_inside

_rng = np.random.default_rng(0)
_v = _rng.normal(size=(16, 16))
_mask = np.zeros((16, 16), np.uint8)
_mask[4:9, 3:12] = 1
check("Exercise 1 (share inside)", lambda: my_share_inside(_v, _mask), lambda: share_inside(_v, _mask), hint={hint})
""",
        hint="negative attributions do not count as evidence: what do you do with them before adding anything up?",
        more="Clip the values at 0 from below only (numpy's clip with no upper bound), then sum the clipped map once over the mask's nonzero pixels and once everywhere and divide; when the total is 0, return NaN as a float instead of dividing.",
    ),
    exercise(
        "a baseline the model finds normal",
        task=r"""
Integrated Gradients needs a baseline. Write `my_nearest_normal(x, normals)`: for each image of x
(B, 3, S, S), the image of `normals` (N, 3, S, S) closest to it in pixel space (Euclidean distance of the
flattened images).
""",
        solution=r"""
import torch


def my_nearest_normal(x, normals):
    d = torch.cdist(x.flatten(1).float(), normals.flatten(1).float())   # (B, N)
    return normals[d.argmin(dim=1)]                                      # (B, 3, S, S)
""",
        stub=r"""
import torch


def my_nearest_normal(x, normals):
    # your code: pairwise distances of the flattened images, then the closest normal image for each x
    raise NotImplementedError
""",
        check=r"""
import torch

from unistad_edu.course import check
from unistad_edu.explain import nearest_normal

_g = torch.Generator().manual_seed(0)
_x, _normals = torch.rand(3, 3, 8, 8, generator=_g), torch.rand(7, 3, 8, 8, generator=_g)
check("Exercise 2 (nearest normal)", lambda: my_nearest_normal(_x, _normals), lambda: nearest_normal(_x, _normals),
      hint={hint})
""",
        hint="measure the distance from every image to every normal image, each as one long vector, and keep the nearest",
        more="Flatten each image to one row, get the B x N table of Euclidean distances with torch's cdist, take the index of the smallest per row with argmin, and index the normals with those indices so whole B x 3 x S x S images come back.",
    ),
    md(r"""
Read the table with the pictures next to it:

* The **anomaly map** is smooth by construction (a Gaussian blur of coarse feature maps), so its mass leaks
  around the defect; on a small defect, its share inside the mask is small even when its peak sits right on it.
* **IG** is sharp and speckled: it credits the individual pixels whose change from the baseline raised the
  score — the defect's pixels, but also edges where the baseline is misaligned with the image, and, when no
  training image looks much like the test image (check the baseline column), everything that differs.
* **Occlusion** is as coarse as its patch, but it measures something concrete: "put normal pixels here, how
  much does the score drop?" For a max score only the patches at the peak matter; a second, weaker defect
  elsewhere in the image gets no credit at all — the score never depended on it.

That last point holds for every explanation of a **max** image score: it explains the score, not the map.
If you want every defect region explained, explain the map (e.g. the sum of the map above the threshold)
instead of the image score.

## Check yourself

**Exercise.** (1) Swap the baseline for the black image in section 4 and predict, before running, what
happens to Σ IG and to the pictures. (2) Change the image score to `avgpool_max` (`model.cfg.scoring.image_score
= "avgpool_max"`): is it still differentiable almost everywhere, and do the explanations spread out?
(3) Why does Occlusion give a second, far-away defect no credit under a max score?

The cell checks the lesson's claims on this run's numbers:

1. **Gradients reach the pixels** through the teacher: the full gradient differs from the student-only one.
2. **Completeness**: for every explained defect, Σ IG equals score(x) − score(x') within 10 %.
3. **Concentration**: the anomaly map, IG and Occlusion each put more of their mass inside the defect than
   the defect's area share, on most of the explained defects.
"""),
    code(r"""
print(f"1. cosine(full gradient, student-only gradient) = {cos:.3f}")
assert g_full.abs().sum() > 0 and cos < 0.99, "the teacher branch added nothing to the input gradient"

gaps = [abs(e["sum IG"] - (e["score"] - e["baseline score"])) / abs(e["score"] - e["baseline score"]) for e in explained]
print(f"2. IG completeness: largest relative gap {max(gaps):.3f} over {len(gaps)} defects")
assert max(gaps) <= 0.10, "IG attributions do not add up to the score difference"

for k in ("map", "IG (+)", "Occlusion (+)"):
    above = sum(r[f"{k} / area"] > 1 for r in share_rows)
    print(f"3. {k}: more mass inside the defect than its area share on {above} of {len(share_rows)} defects")
    assert above > len(share_rows) / 2, f"{k} does not concentrate on the defects"
"""),
]
