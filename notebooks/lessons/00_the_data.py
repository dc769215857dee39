"""Lesson 00 -- the data. Cells for ``notebooks/00_the_data.ipynb`` (built by ``notebooks/_build.py``)."""

from _cells import code, exercise, md

CELLS = [
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
from IPython.display import Markdown, display

from unistad_edu import report, viz
from unistad_edu.course import setup
from unistad_edu.data import MVTecDataset, discover_categories, load_mask

lesson = setup(None)   # every category; quick/full switch (UNISTAD_QUICK), data (no model in this lesson)
QUICK, root = lesson.quick, lesson.root
SIZE = 128 if QUICK else 256          # side of the square images the models see
N_SHOW = 4 if QUICK else 6            # images per category in the grids
N_BROWSE = 12 if QUICK else None      # defective images per category in the explorer (None: all)
print(lesson.describe(image_size=SIZE))
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
results can be *reported* per category: no method and no `cpu` preset reads it while training. (One switch
does, and says so by its name: `sampling="balanced-labels"` groups each epoch's batches by the category
folder. The label-free alternative, `"balanced-clusters"`, balances clusters of the teacher's image
embedding instead; the presets use plain uniform batches.)
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
display(Markdown(report.markdown_table(rows)))
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
display(Markdown(report.markdown_table(stats, digits=2)))

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
## Your turn

2 small tasks on the heart of this lesson. In the exercise notebook (`notebooks/exercises/00_the_data.ipynb`) each marked cell is a stub for you to write; the check after it runs your function and a reference (the package's own function, or an answer worked out by hand) on the same small inputs, and says what is still missing.
"""),
    exercise(
        "binarise and resize a mask",
        task=r"""
A ground-truth mask PNG is 8-bit grey: write `my_load_mask(path, size)` that returns a (size, size) uint8
array of 0 and 1 the way the package reads such masks (`data.load_mask`, which also reads label maps and
16-bit masks by one documented rule): a pixel is **defect** when its value is at least 128 (half of the
8-bit range), and the binary mask is then resized with **nearest-neighbour** (Pillow's
`Image.NEAREST`), never bilinear — a mask has no "half defect".
""",
        solution=r"""
import numpy as np
from PIL import Image


def my_load_mask(path, size):
    grey = np.asarray(Image.open(path).convert("L"))             # (H, W) uint8
    binary = (grey >= 128).astype(np.uint8) * 255                # defect = at least half of the range
    small = Image.fromarray(binary).resize((size, size), Image.NEAREST)
    return (np.asarray(small) > 0).astype(np.uint8)              # (size, size) in {0, 1}
""",
        stub=r"""
import numpy as np
from PIL import Image


def my_load_mask(path, size):
    # your code: read the PNG as grey, defect = value >= 128, resize with Image.NEAREST, return 0/1 uint8
    raise NotImplementedError
""",
        check=r"""
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from unistad_edu.course import check
from unistad_edu.data import load_mask

_mask_png = Path(tempfile.mkdtemp()) / "mask.png"
Image.fromarray(np.random.default_rng(0).integers(0, 256, (23, 31), dtype=np.uint8)).save(_mask_png)
check("Exercise 1 (mask)", lambda: my_load_mask(_mask_png, 16), lambda: load_mask(_mask_png, 16), hint={hint})
""",
        hint="Which comes first, the threshold or the resize? And which resampling filter can never invent a grey value between 0 and 1?",
        more="Read the PNG as 8-bit grey and make it 0/1 first (a value of 128 or more is defect); only then resize that 0/1 picture with Pillow's nearest-neighbour filter, and return a size-by-size uint8 array holding nothing but zeros and ones.",
    ),
    exercise(
        "how many tokens a defect touches",
        task=r"""
A teacher level of stride s cuts the image into s x s cells, one feature (token) each; a defect can only be seen
by the tokens whose cell holds some of it. Write `my_cells_touched(mask, stride)`: an (H, W) mask (nonzero =
defect, H and W multiples of `stride`) -> the number of stride x stride cells that hold at least one defect pixel.
""",
        solution=r"""
import numpy as np


def my_cells_touched(mask, stride):
    h, w = mask.shape
    cells = (np.asarray(mask) > 0).reshape(h // stride, stride, w // stride, stride)
    return int(cells.any(axis=(1, 3)).sum())
""",
        stub=r"""
import numpy as np


def my_cells_touched(mask, stride):
    # your code: cut the mask into stride x stride cells, ask each cell whether it holds a defect, count
    raise NotImplementedError
""",
        check=r"""
import numpy as np

from unistad_edu.course import check

_square = np.zeros((64, 64), np.uint8)
_square[12:22, 40:50] = 1            # a 10 x 10 defect: rows 12-21, columns 40-49
_dot = np.zeros((64, 64), np.uint8)
_dot[63, 0] = 255                    # one defect pixel in a corner
# counted by hand: stride 4 -> rows in cells 3-5, columns in 10-12: 9 cells; stride 8 -> 2 x 2; stride 16 -> 2 x 2
check("Exercise 2 (tokens a defect touches)",
      lambda: [my_cells_touched(_square, s) for s in (4, 8, 16)] + [my_cells_touched(_dot, 16)],
      lambda: [9, 4, 4, 1], hint={hint})
""",
        hint="cut the mask into a grid of stride x stride blocks and ask of each block one yes-or-no question",
        more="Reshape the boolean mask to (H / s, s, W / s, s): axes 1 and 3 then run inside a cell, so `any` over those two axes gives one answer per cell; count the True ones (a max-pool of stride s does the same).",
    ),
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
