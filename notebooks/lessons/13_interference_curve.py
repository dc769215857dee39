"""Lesson 13 -- cross-class interference as a curve: one category's AUROC as more categories are trained with it.
Cells for ``notebooks/13_interference_curve.ipynb`` (built by ``notebooks/_build.py``)."""

from _cells import code, exercise, md

CELLS = [
    md(r"""
# Lesson 13 — Interference as a curve: what each added product costs one category

Lesson 03 compared one student per category with one student for three categories, along a curve of
training steps. Is the cost fixed, or does it grow with the number of products trained together? This lesson
draws it as a **curve** over the number of products, by the same rule as lesson 03:

* fix one category (the *probe*) and always test on its test images only;
* train on the probe alone, then on the probe and one more category, two more, four more, … — the real
  categories first, then **synthetic** ones, so the curve can go further than the data we have;
* give every model the **same number of optimiser steps per category** it trains on (K categories, K times the
  steps: lesson 03's rule), so a model with more categories is not simply less trained on each;
* repeat with different **seeds** and draw the spread, because one run of a small model is noisy;
* three methods: **STPM** (one student imitating the teacher, lesson 02), the best teacher–student method of the
  leaderboard (lesson 12), and the **memory bank**, which has no weights for categories to fight over.
"""),
    code(r"""
import shutil
import tempfile
from pathlib import Path

import numpy as np
from IPython.display import Markdown, display

from unistad_edu import leaderboard, report, viz
from unistad_edu.course import method_and_teacher, setup
from unistad_edu.curve import CurveSetup, interference_curve
from unistad_edu.report import mean_std

lesson = setup(None)   # quick/full switch (UNISTAD_QUICK), device, data; every category present
QUICK, device, root = lesson.quick, lesson.device, lesson.root
PROBE = "cookie" if "cookie" in lesson.found else lesson.found[0]   # the category we always test on
SIZE = 64 if QUICK else 256              # image side
N_TRAIN = 16 if QUICK else None          # normal training images per category (None: all)
BATCH = 4 if QUICK else 16
STEPS_PER_CATEGORY = 4 if QUICK else 300  # optimiser steps (at least) per category trained on
KS = [1, 2, 3, 5] if QUICK else [1, 2, 3, 5, 7, 9]   # numbers of categories trained together
SEEDS = [0, 1] if QUICK else [0, 1, 2]
print(lesson.describe(probe=PROBE, image_size=SIZE, categories_trained_together=KS, seeds=SEEDS))
"""),
    md(r"""
## 1. The methods and the categories

The best teacher–student method is read from the leaderboard's results file (`docs/results/leaderboard.json`,
lesson 12): the highest mean image AUROC among the methods that train a student. The memory bank keeps **every**
training patch in quick mode (`coreset_ratio=1.0`: the bank is tiny here), so it has no randomness at all; at full
scale it keeps PatchCore's 1 % coreset, whose seed is the run's.

The probe comes first, then the other real categories, then synthetic categories (generated in seconds at the
same size) when the lesson's data are real: they are other products, as different from the probe as real
ones, and they let the curve continue past the five categories we have.
"""),
    code(r"""
found = leaderboard.find_results()
best, best_why = "unistad", "no leaderboard results found: UniSTAD, the best of the last published table"
if found is not None:
    rows = [r for r in leaderboard.load(found)["rows"] if r["method"] != "memory_bank"]
    top = max(rows, key=lambda r: r["mean"]["I-AUROC"])
    best, best_why = top["method"], f"{top['label']}, mean I-AUROC {top['mean']['I-AUROC']:.3f} in {found.name}"
SMALL = {"unistad": dict(feature_stride=8), "dual_student": dict(feature_stride=8, ee_image_size=SIZE)}
METHODS = {"STPM": ("stpm", {}),
           f"best teacher-student ({best})": (best, SMALL.get(best, {}) if QUICK else {}),
           "memory bank": ("memory_bank", dict(coreset_ratio=1.0) if QUICK else {})}
print(f"best teacher-student method: {best} ({best_why})")

WORK = Path(tempfile.mkdtemp(prefix="unistad_lesson13_"))   # removed at the end of the lesson
curve_setup = CurveSetup(probe=PROBE, ks=tuple(KS), seeds=tuple(SEEDS), image_size=SIZE, n_train=N_TRAIN,
                         batch_size=BATCH, steps_per_category=STEPS_PER_CATEGORY, preset=lesson.preset,
                         methods=METHODS)
"""),
    md(r"""
## 2. Train: every method, every number of categories, every seed

`interference_curve` (in `unistad_edu.curve`; `python -m unistad_edu bench curve` runs the same from a shell)
warms the feature cache once, then for every method, K and seed builds a fresh model and calls `fit` with
`TrainConfig(min_steps=K * STEPS_PER_CATEGORY)`, which takes at least that many optimiser steps (whole epochs,
so a few more): with the same number of images per category, every model takes the same number of steps **per
category**. No images are held out (`holdout_fraction=0`): this lesson reads AUROCs, which need
no threshold. Each model is tested on the probe's test images only.
"""),
    code(r"""
_, teacher = method_and_teacher(lesson, "stpm", image_size=SIZE)   # one teacher for every method
curve = interference_curve(root, curve_setup, teacher, WORK, device=device)
results, slopes = curve["results"], curve["slopes"]   # name -> K -> [(I-AUROC, P-AUROC) per seed]
KS = curve["setup"]["ks"]   # the Ks there were categories for
print(f"categories in the order they are added: {curve['order']}")
print(f"probe {PROBE}: {curve['probe_test']['images']} test images ({curve['probe_test']['defective']} defective)")
"""),
    md(r"""
## 3. The curves

Mean over the seeds, with one standard deviation as the error bar (none where every seed gave the same
number). The y-axis starts at 0.4, below chance (0.5), not at 0 — read the slopes, not the bar heights.
"""),
    code(r"""
curves = {col: {name: {k: mean_std([v[i] for v in results[name][k]]) for k in KS} for name in METHODS}
          for i, col in enumerate(("I-AUROC", "P-AUROC"))}
for col in curves:
    viz.spread_curves(curves[col], "categories trained together (the probe included)",
                      f"{col} of {PROBE} (axis from 0.4)", y_range=(0.4, 1.02),
                      title=f"{col} of {PROBE} as categories are added ({len(SEEDS)} seeds)").show()
rows = [{"method": name, **{f"K={k}": f"{curves['I-AUROC'][name][k][0]:.3f} ± {curves['I-AUROC'][name][k][1]:.3f}"
                            for k in KS},
         "I-AUROC per added category": f"{slopes[name]['I-AUROC']['all']:+.4f}",
         "P-AUROC per added category": f"{slopes[name]['P-AUROC']['all']:+.4f}"} for name in METHODS]
display(Markdown(report.markdown_table(rows)))
"""),
    md(r"""
How to read it:

* **STPM** — one student, one set of weights for every product. Each added product is something more the student
  must imitate, and something a defect of the probe may now *look like* to it: the probe's AUROC tends to fall
  as products are added, even though every model took the same number of steps per category. That slope is
  cross-class interference.
* **The memory bank** keeps the probe's own normal patches whatever else it stores. An added product only adds
  patches; the probe's normal test patches still find their own nearest neighbours, and a defect patch is
  rarely closer to another product than to anything normal of its own. With every patch kept, its curve is flat
  up to the last digit; with a coreset (full mode) the coreset's choice moves it a little.
* **The best teacher–student method** sits in between, and in quick mode its curve is noisy: a few steps per
  category of a transformer student leave it far from converged, and more categories also means more steps in
  total. The error bars say how much of a wiggle is noise.

A curve from a quick run on small images is a sketch. At full scale (`UNISTAD_QUICK=0`, meant for a GPU: all
images, 256 px, 300 steps per category, three seeds, up to nine categories) the same cells give the curve to
quote.
"""),
    md(r"""
## Your turn

2 small tasks on the heart of this lesson. In the exercise notebook (`notebooks/exercises/13_interference_curve.ipynb`)
each marked cell is a stub for you to write; the check after it runs your function and the package's own on the
same small inputs, and says what is still missing.
"""),
    exercise(
        "the slope of a curve",
        task=r"""
Section 3 summarised each curve by its **least-squares slope**: the change of AUROC per added category. Write
`my_trend(x, y)` -> slope = sum((x - mean x)(y - mean y)) / sum((x - mean x)^2), over every (K, AUROC) pair
(one per seed).
""",
        solution=r"""
import numpy as np


def my_trend(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    dx = x - x.mean()
    return float((dx * (y - y.mean())).sum() / (dx * dx).sum())
""",
        stub=r"""
import numpy as np


def my_trend(x, y):
    # your code: centre x and y, then the ratio of the two sums
    raise NotImplementedError
""",
        check=r"""
import numpy as np

from unistad_edu.course import check
from unistad_edu.report import trend

_x = [1, 1, 2, 2, 3, 3, 5, 5, 7, 7]
_y = list(0.95 - 0.03 * np.array(_x) + np.random.default_rng(0).normal(0, 0.02, 10))
check("Exercise 1 (trend)", lambda: my_trend(_x, _y), lambda: trend(_x, _y), hint={hint})
""",
        hint="least squares: centre x and y on their means; the slope is their covariance divided by the variance of x",
        more="Convert both lists to float arrays and subtract each one's mean; the slope is the sum of the products of the centred x and y values divided by the sum of the squared centred x values, returned as a float.",
    ),
    exercise(
        "does every seed fall?",
        task=r"""
A slope over all points can be negative because one seed fell steeply while the others stayed flat. Before
calling a fall *interference*, ask every seed. With `my_trend` of exercise 1 in mind, write `my_seeds_falling(by_k)`: `by_k` maps each K to one
I-AUROC per seed (`{1: [0.95, 0.97], 3: [0.93, 0.96], ...}`, seed i at index i); return the **fraction of seeds
whose own curve has a negative least-squares slope** against K (the slope as in section 3, one seed at a time).
""",
        solution=r"""
import numpy as np


def my_seeds_falling(by_k):
    ks = np.array(sorted(by_k), dtype=float)
    curves = np.array([by_k[k] for k in sorted(by_k)], dtype=float).T   # (seeds, K)
    dx = ks - ks.mean()
    slopes = [(dx * (c - c.mean())).sum() / (dx * dx).sum() for c in curves]
    return float(np.mean([s < 0 for s in slopes]))
""",
        stub=r"""
import numpy as np


def my_seeds_falling(by_k):
    # your code: one curve per seed, its slope against K, then the share of negative slopes
    raise NotImplementedError
""",
        check=r"""
from unistad_edu.course import check
from unistad_edu.curve import curve_slopes

_by_k = {1: [0.95, 0.97, 0.90], 2: [0.93, 0.98, 0.91], 3: [0.90, 0.96, 0.93], 5: [0.88, 0.97, 0.95]}
_reference = curve_slopes({"m": {k: [[v, 0.0] for v in vs] for k, vs in _by_k.items()}})["m"]["I-AUROC"]
check("Exercise 2 (every seed)", lambda: my_seeds_falling(_by_k),
      lambda: sum(s < 0 for s in _reference["per_seed"]) / 3, hint={hint})
""",
        hint="the seeds are the columns of the table K x seed: fit one line per seed, not one line through all points",
        more="Sort the K values; for seed i take the i-th value at every K; centre both K and those values on their means and divide the sum of products by the sum of squared centred K; count the negative results and divide by the number of seeds.",
    ),
    md(r"""
## Check yourself

**Exercise.** (1) Make the probe another category (`PROBE = "bottle"`): is its curve as steep? What about the
category STPM found hardest in lesson 03? (2) Train STPM with the same number of **total** steps for every K
instead of steps per category: which way does the curve move, and why is that comparison unfair? (3) Set the
memory bank's `coreset_ratio` back to 0.01: how flat is its curve now, and what does the spread over seeds measure?

The cell checks the claims on this run's numbers:

1. every method was trained for every K and seed, and the probe's test images hold normal and defective ones;
2. **STPM's** image AUROC falls as categories are added: its least-squares slope is negative;
3. the **memory bank** loses less per added category than STPM (a larger slope), on image AUROC.
"""),
    code(r"""
n_test, n_defective = curve["probe_test"]["images"], curve["probe_test"]["defective"]
print(f"1. {sum(len(v) for r in results.values() for v in r.values())} models; probe test images: "
      f"{n_test} ({n_defective} defective)")
assert all(len(results[n][k]) == len(SEEDS) for n in METHODS for k in KS)
assert 0 < n_defective < n_test, "the probe needs normal and defective test images"
stpm, bank = slopes["STPM"]["I-AUROC"]["all"], slopes["memory bank"]["I-AUROC"]["all"]
print(f"2. STPM: I-AUROC {stpm:+.4f} per added category")
assert stpm < 0, "STPM's AUROC did not fall as categories were added in this run"
print(f"3. memory bank {bank:+.4f} vs STPM {stpm:+.4f} per category")
assert bank > stpm, "the memory bank lost as much as STPM"
shutil.rmtree(WORK, ignore_errors=True)
"""),
]
