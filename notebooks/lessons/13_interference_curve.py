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
import json
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
  must imitate, and something a defect of the probe may now *look like* to it. In this quick run (64 px, four
  steps per category) the probe's image AUROC falls as products are added, even though every model took the same
  number of steps per category. Whether that fall is what sharing one student costs, or what four steps per
  category do, a quick run cannot say: section 4 reads a recorded run at a budget where the student has learned.
* **The memory bank** keeps the probe's own normal patches whatever else it stores. An added product only adds
  patches; the probe's normal test patches still find their own nearest neighbours, and a defect patch is
  rarely closer to another product than to anything normal of its own. With every patch kept, its curve is flat
  up to the last digit; with a coreset (full mode) the coreset's choice moves it a little.
* **The best teacher–student method** sits in between, and in quick mode its curve is noisy: a few steps per
  category of a transformer student leave it far from converged, and more categories also means more steps in
  total. The error bars say how much of a wiggle is noise.

A curve from a quick run on small images is a sketch, and its slope is not a claim. The next section reads the
curve this lesson's conclusion comes from.
"""),
    md(r"""
## 4. The recorded run: the claim this lesson makes

`python -m unistad_edu bench curve` recorded the same curve at a larger budget (the command, machine and date
are in `docs/benchmarks.md`, "The interference curve, recorded"; the numbers in
`docs/results/interference_curve.json`): probe cookie, 128 px, 60 training images per category, 100 optimiser
steps per category (25 times the quick run's), K = 1, 2, 3, 5, 9, three seeds, STPM and the memory bank at their
`cpu` presets (the memory bank with its 1 % coreset). The best teacher–student method's points are not
recorded yet: the CPU time went to STPM's; `bench curve --methods` adds a method to the same recorded run later
without retraining the others.

What it shows:

* **STPM's image AUROC on the probe does not fall** as categories are added: its least-squares slope is within
  ±0.005 per added category (less than 0.04 from one category to nine), and the seeds do not agree on its sign.
  The quick run's fall does not survive a budget at which the student has learned the probe.
* Its **pixel AUROC drifts down a little**: every seed's slope is negative, but the drift is under 0.002 per
  added category (about one point from one category to nine). That is the only trace of interference at this
  budget, and a small one.
* **STPM sits below the memory bank at every K**, by about as much at K = 1 as at K = 9 (the gap moves by less
  than one point): on cookie, what separates the two is the method, not the sharing.
* **The memory bank** stays at an image AUROC of 0.98 or more at every K and seed.

So, on this probe and at this budget, cross-class interference does not show as a slope for STPM. Lesson 03's
unified-versus-per-class gap is a different question (a threshold and a model per category, three categories,
and a budget that moves the gap); neither lesson claims more than its own run shows. Another probe may behave
otherwise: exercise (1) asks for one.
"""),
    code(r"""
RECORDED = leaderboard.find_results("interference_curve.json")   # docs/results/ of this checkout, or None
recorded = json.loads(RECORDED.read_text()) if RECORDED is not None else None
if recorded is None:
    print("no recorded curve here (docs/results/interference_curve.json is in the repository, not the package)")
else:
    rs = recorded["setup"]
    print(f"recorded: probe {rs['probe']}, {rs['image_size']} px, {rs['steps_per_category']} steps per category, "
          f"at most {rs['n_train']} training images per category, seeds {rs['seeds']}, "
          f"{recorded['probe_test']['images']} probe test images ({recorded['probe_test']['defective']} defective)")
    REC_KS = rs["ks"]
    rec_i = {name: {k: mean_std([v[0] for v in recorded["results"][name][str(k)]]) for k in REC_KS}
             for name in recorded["results"]}   # name -> K -> (mean, std) of the image AUROC over the seeds
    viz.spread_curves(rec_i, "categories trained together (the probe included)", f"I-AUROC of {rs['probe']}",
                      y_range=(0.85, 1.01), title="recorded: I-AUROC of the probe as categories are added").show()
    rec_slopes = recorded["slopes"]
    display(Markdown(report.markdown_table(
        [{"method": name, **{f"K={k}": f"{m:.3f} ± {sd:.3f}" for k, (m, sd) in rec_i[name].items()},
          "I-AUROC per added category": f"{rec_slopes[name]['I-AUROC']['all']:+.4f}",
          "per seed": ", ".join(f"{x:+.4f}" for x in rec_slopes[name]["I-AUROC"]["per_seed"]),
          "P-AUROC per added category": f"{rec_slopes[name]['P-AUROC']['all']:+.4f}"}
         for name in rec_i])))
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

The cell checks what this lesson says: on this run's numbers,

1. every method was trained for every K and seed, and the probe's test images hold normal and defective ones;
2. in this run the **memory bank** loses less per added category than STPM (a larger slope), on image AUROC,
   and in quick mode STPM's image AUROC falls (a negative slope);

and on the recorded run (section 4):

3. **STPM's** image AUROC slope is within ±0.005 per added category, and not every seed's curve falls;
4. STPM's pixel AUROC slope is negative for every seed and above -0.002 per added category;
5. STPM is below the memory bank at every K, the gap at K = 9 within 0.01 of the gap at K = 1, and the memory
   bank at 0.98 or more at every K and seed.
"""),
    code(r"""
n_test, n_defective = curve["probe_test"]["images"], curve["probe_test"]["defective"]
print(f"1. {sum(len(v) for r in results.values() for v in r.values())} models; probe test images: "
      f"{n_test} ({n_defective} defective)")
assert all(len(results[n][k]) == len(SEEDS) for n in METHODS for k in KS)
assert 0 < n_defective < n_test, "the probe needs normal and defective test images"
stpm, bank = slopes["STPM"]["I-AUROC"]["all"], slopes["memory bank"]["I-AUROC"]["all"]
print(f"2. this run: memory bank {bank:+.4f} vs STPM {stpm:+.4f} I-AUROC per added category")
assert bank > stpm, "the memory bank lost as much as STPM"
assert stpm < 0 or not QUICK, "STPM's image AUROC did not fall in this quick run"
if recorded is not None:
    rec_stpm = rec_slopes["stpm"]["I-AUROC"]
    print(f"3. recorded STPM: {rec_stpm['all']:+.4f} per added category; per seed "
          f"{', '.join(f'{x:+.4f}' for x in rec_stpm['per_seed'])}")
    assert abs(rec_stpm["all"]) < 0.005, "the recorded STPM curve moves by 0.005 or more per added category"
    assert not all(x < 0 for x in rec_stpm["per_seed"]), "every recorded seed's STPM curve falls"
    rec_pix = rec_slopes["stpm"]["P-AUROC"]
    print(f"4. recorded STPM pixel AUROC: {rec_pix['all']:+.4f} per added category; per seed "
          f"{', '.join(f'{x:+.4f}' for x in rec_pix['per_seed'])}")
    assert all(x < 0 for x in rec_pix["per_seed"]), "a recorded seed's STPM pixel AUROC did not drift down"
    assert rec_pix["all"] > -0.002, "the recorded STPM pixel AUROC falls by 0.002 or more per added category"
    gap = {k: rec_i["memory_bank"][k][0] - rec_i["stpm"][k][0] for k in REC_KS}
    bank_low = min(v[0] for k in REC_KS for v in recorded["results"]["memory_bank"][str(k)])
    print(f"5. memory bank minus STPM: {', '.join(f'K={k}: {g:+.3f}' for k, g in gap.items())}; "
          f"the bank's lowest image AUROC {bank_low:.3f}")
    assert all(g > 0 for g in gap.values()), "STPM reached the memory bank at some K of the recorded run"
    assert abs(gap[REC_KS[-1]] - gap[REC_KS[0]]) < 0.01, "the gap to the memory bank moved by 0.01 or more"
    assert bank_low >= 0.98, "the memory bank fell below 0.98 in the recorded run"
shutil.rmtree(WORK, ignore_errors=True)
"""),
]
