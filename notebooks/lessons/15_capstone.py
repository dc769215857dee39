"""Lesson 15 -- the capstone: the whole course on your own data. Cells for ``notebooks/15_capstone.ipynb`` (built by
``notebooks/_build.py``). A template, not a lesson with exercises: the learner's own data and report are the
exercise, so it has no twin in ``notebooks/exercises/`` (``TWIN = False``); the rubric is in ``docs/teaching.md``,
"Capstone: your own data"."""

from _cells import code, md

TWIN = False  # no exercise twin: the whole notebook is the learner's to run on their data

CELLS = [
    md(r"""
# Lesson 15 — Capstone: the whole course on your own data

This notebook is a **template**. It runs the course's pipeline end to end — check the data, choose the image
size, train unified and per-class, compare with the memory bank, calibrate, report false alarms and recall,
export and serve — and ends with a report table in Markdown. Out of the box (`DATA = None`) it runs on the
synthetic set, generated in seconds, so that it runs the same everywhere (CI runs it). **Your capstone**: point
`DATA` at your own MVTec-layout folder, set the knobs, run it top to bottom, and hand in the report with your
reading of it. The rubric you are graded by is in `docs/teaching.md`, "Capstone: your own data".

Each section says **what to do** (the knobs and choices that are yours) and **what to report** (what the rubric
asks for). The cells marked *check* stop the notebook when something that should hold does not: read their
message before you change anything else. Quick mode (`UNISTAD_QUICK=1`, the default) keeps every number small
so the notebook runs in about a minute on a laptop CPU; for the numbers you report, run it with
`UNISTAD_QUICK=0` (on a GPU if you have one) — quick-mode figures are a smoke test, not results.
"""),
    code(r"""
import dataclasses
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from IPython.display import Markdown, display

from unistad_edu import (MVTecDataset, TrainConfig, build_model, engine, evaluate, fit, make_synthetic, predict,
                         report)
from unistad_edu.cache import FeatureCache
from unistad_edu.calibration import clopper_pearson, floor_rate, verdict
from unistad_edu.course import method_and_teacher, quick_mode, setup
from unistad_edu.data import DataError, load_image, load_mask
from unistad_edu.export import PARITY_TOLERANCE, export_run
from unistad_edu.export_runtime import ExportedModel
from unistad_edu.methods import make_config
from unistad_edu.uncertainty import paired_seeds

# ---- your data -------------------------------------------------------------------------------------------
DATA = None            # None: the synthetic set (made in seconds); else your folder, e.g. "~/data/my_line"
CATEGORIES = None      # None: every category found under DATA; or a list of category names (at least two)
OUT = None             # None: a temporary folder, removed at the end; else a folder that keeps runs, export, report
SYNTHETIC = dict(size=128, n_train=30, n_test_good=8, n_test_defect=2, categories=("weave", "bolt"))

# ---- the knobs (every number the notebook uses is here) ------------------------------------------------
QUICK = quick_mode()            # UNISTAD_QUICK=1 (the default): a smoke test in about a minute; 0: your real run
METHOD = "stpm"                 # the teacher-student method (STPM: the fastest to train)
BASELINE = "memory_bank"        # the method without training and without interference (lesson 12)
SHIP = "memory_bank"            # the unified model you calibrate, report and export: choose BEFORE the test numbers
CANDIDATE_SIZES = (64, 128, 192, 256, 320, 384)  # image sizes the rule of section 2 chooses from
DEFECT_QUANTILE = 0.10          # the rule looks at this quantile of the defect sizes (0.10: 90 % of defects ...)
MIN_CELLS = 1.0                 # ... must cover at least this many cells of the teacher's finest feature level
QUICK_MAX_SIZE = 64             # quick mode caps the chosen size here (and says so)
N_TRAIN = 30 if QUICK else None         # normal training images per category (None: all)
N_TEST = None                           # test images per category (None: all -- the intervals need them)
STEPS = 10 if QUICK else None           # optimiser steps of the unified model (None: the preset's epochs)
BATCH = 4 if QUICK else 8               # batch size of every teacher-student model
SEEDS = (0, 1) if QUICK else (0, 1, 2)  # seeds of the paired comparison (section 4)
HOLDOUT_MIN = 10                # held-out normal training images per category for its threshold (a third at most)
QUANTILE = 0.99                 # each category's threshold: this quantile of a tail model of its held-out scores
"""),
    md(r"""
## 1. Your data, and a layout check

**What to do.** Assemble your images in the MVTec AD layout, one folder per product (category):

```
<category>/train/good/*.png                  normal images only: the training data
<category>/test/good/*.png                   normal test images
<category>/test/<defect type>/*.png          defective test images, one folder per defect type
<category>/ground_truth/<defect type>/*.png  a mask per defective image (white = defect), same size as its image
```

Set `DATA` to the folder that holds the categories (any depth). The package's loader checks the layout and
stops with a message that says what is wrong and how to fix it (no `train/good`, a defect image without a mask,
a mask of another size, an unreadable image); the check cell adds what this notebook needs on top: at least two
categories, and per category enough normal training images for a held-out set and both normal and defective
test images (an AUROC needs both).

**What to report.** Where the images come from (camera, lighting, how many products), the counts table, how
you made the masks, and anything unusual (very unequal categories, few normal test images).
"""),
    code(r"""
# the work folder: a temporary one, or a new dated folder under OUT (a re-run never overwrites an earlier one)
WORK = Path(OUT).expanduser() / time.strftime("%Y%m%d-%H%M%S") if OUT else Path(tempfile.mkdtemp(prefix="unistad_capstone_"))
WORK.mkdir(parents=True, exist_ok=True)
if DATA is None:    # the synthetic set, generated into the work folder: the same on every machine
    t0 = time.perf_counter()
    root = make_synthetic(WORK / "synthetic", **SYNTHETIC)
    print(f"synthetic set generated in {time.perf_counter() - t0:.1f} s")
else:
    root = Path(DATA).expanduser()
try:
    lesson = setup(None, data=root)             # finds the categories (discover_categories), device, threads
    CATS = list(CATEGORIES) if CATEGORIES else sorted(lesson.found)
    train_all = MVTecDataset(root, "train", categories=CATS, image_size=QUICK_MAX_SIZE)  # layout checks
    test_all = MVTecDataset(root, "test", categories=CATS, image_size=QUICK_MAX_SIZE)    # ... and the masks'
except DataError as err:
    raise DataError(f"the data folder does not pass the layout check: {err}") from None
train_counts, test_counts = train_all.counts(), test_all.counts()
rows = []
for c in CATS:
    defects = {k: v for k, v in test_counts.get(c, {}).items() if k != "good"}
    rows.append({"category": c, "train/good": train_counts[c]["good"], "test/good": test_counts.get(c, {}).get("good", 0),
                 "test defects": sum(defects.values()), "defect types": ", ".join(f"{k} ({v})" for k, v in defects.items())})
device = lesson.device
print(f"data: {'the synthetic set' if DATA is None else root}; {lesson.mode} mode, device {device}, "
      f"preset {lesson.preset!r}; work folder {WORK}")
display(Markdown(report.markdown_table(rows)))
"""),
    code(r"""
# check: what the rest of the notebook needs from the data
assert len(CATS) >= 2, f"a unified model needs at least two categories, found {CATS}"
for r in rows:
    assert r["train/good"] >= 3, f"{r['category']}: {r['train/good']} normal training images (3 at least, many more for real)"
    assert r["test/good"] >= 1 and r["test defects"] >= 1, (
        f"{r['category']}: {r['test/good']} normal and {r['test defects']} defective test images; an AUROC, a "
        f"false-alarm rate and a recall need both")
print(f"layout check passed: {len(CATS)} categories, {len(train_all)} training and {len(test_all)} test images")
"""),
    md(r"""
## 2. How small are your defects? The image size

**What to do.** Lesson 00 measured how much of a defective image is defect. A model sees a defect through the
teacher's feature maps; the finest level the methods use has a stride of a few pixels, so a defect smaller than
one of its cells at the model's input size is hard to see at all. The rule, written down **before training**:

> the smallest size in `CANDIDATE_SIZES` at which no defect mask vanishes (masks are resized with nearest
> neighbour, as every loader does) and the `DEFECT_QUANTILE` quantile of the defects covers at least
> `MIN_CELLS` cells of the teacher's finest level.

Change the rule if you have a reason (and say it), not because of a test result. Quick mode caps the size to
`QUICK_MAX_SIZE` and prints how many defects vanish there. The masks used are the test set's — the size is a
choice from the defect sizes you expect, made before any score is computed; no score of a test image is used.

**What to report.** The per-category defect sizes, the rule, the size it chose and, if you deviated (or quick
mode capped it), what that costs: which defects shrink below one cell.
"""),
    code(r"""
cfg0, teacher = method_and_teacher(lesson, METHOD)   # the teacher (cpu preset when offline); its finest stride
FINEST = min(level.stride for level in teacher.feature_info)
defect_records = [r for r in test_all.records if r.label == 1]
defect_cat = np.array([r.category for r in defect_records])
fraction = np.array([load_mask(r.mask_path).mean() for r in defect_records])     # at the mask's own resolution


def defect_cells(size):
    # per defective image: the cells of the finest level its mask covers at this input size
    return np.array([load_mask(r.mask_path, size).sum() for r in defect_records]) / FINEST**2


by_size = []
for size in CANDIDATE_SIZES:
    cells = defect_cells(size)
    by_size.append({"size": size, "defects that vanish": int((cells == 0).sum()),
                    f"{DEFECT_QUANTILE:g} quantile, cells": float(np.quantile(cells, DEFECT_QUANTILE)),
                    "median, cells": float(np.median(cells))})
ok = [row["size"] for row in by_size
      if row["defects that vanish"] == 0 and row[f"{DEFECT_QUANTILE:g} quantile, cells"] >= MIN_CELLS]
NEEDED = ok[0] if ok else CANDIDATE_SIZES[-1]
SIZE = min(NEEDED, QUICK_MAX_SIZE) if QUICK else NEEDED
display(Markdown(report.markdown_table(
    [{"category": c, "defect images": int((defect_cat == c).sum()), "median %": 100 * np.median(fraction[defect_cat == c]),
      "smallest %": 100 * fraction[defect_cat == c].min(), "largest %": 100 * fraction[defect_cat == c].max()}
     for c in CATS], digits=2)))
display(Markdown(f"**defect size in cells of the finest level (stride {FINEST})**\n\n"
                 + report.markdown_table(by_size, digits=2)))
print(f"the rule chooses {NEEDED} px" + ("" if ok else " (no candidate satisfies it: the largest)")
      + (f"; quick mode uses {SIZE} px, where {int((defect_cells(SIZE) == 0).sum())} of {len(fraction)} defects "
         f"vanish and the {DEFECT_QUANTILE:g} quantile covers {np.quantile(defect_cells(SIZE), DEFECT_QUANTILE):.2f} "
         f"cells" if SIZE != NEEDED else ""))
"""),
    md(r"""
## 3. Unified vs per-class, at equal optimiser steps per category

**What to do.** Train the teacher–student method (`METHOD`) twice on the same images: one **unified** student on
all K categories, and one student **per category** — each per-class student at least the unified student's
steps divided by K, the course's rule (lessons 03 and 13: the same optimiser steps per category in both
settings; equal *epochs* would starve the small categories). Lesson 03 shows why one budget is not enough:
for the numbers you report, train at two or three budgets and say whether the gap is still moving.
Every student starts from the same initialisation (seed), and one feature cache serves them all.

**What to report.** The protocol (steps of each model, images per category), the per-category I-AUROC of both
settings with their bootstrap intervals, and the gap. Say which gaps are larger than their intervals — with
tens of test images per category most are not.
"""),
    code(r"""
cfg = make_config(METHOD, lesson.preset, image_size=SIZE, batch_size=BATCH)
train = MVTecDataset(root, "train", categories=CATS, image_size=SIZE).evenly(N_TRAIN)
test = MVTecDataset(root, "test", categories=CATS, image_size=SIZE).evenly(N_TEST)
cache = FeatureCache(teacher, SIZE)
cache.warm(train, progress=False)
cache.warm(test, progress=False)


def train_cfg(seed, **kw):
    return TrainConfig(seed=seed, device=device, progress=False, holdout_min=HOLDOUT_MIN,
                       threshold_quantile=QUANTILE, **kw)


SPE = engine.steps_per_epoch(train, BATCH, train_cfg(SEEDS[0]))   # after the held-out split, full batches only
EPOCHS = -(-STEPS // SPE) if STEPS else cfg.epochs
UNIFIED_STEPS = EPOCHS * SPE


def student(seed):
    return build_model(METHOD, teacher, cfg=dataclasses.replace(cfg, student_seed=seed))


t0 = time.perf_counter()
unified = student(SEEDS[0])
fit(unified, train, train_cfg(SEEDS[0], epochs=EPOCHS), cache=cache, out=WORK / f"{METHOD}-unified")
table_uni, out_uni = evaluate(unified, test, cache=cache, progress=False, return_outputs=True)
PER_CATEGORY_STEPS = -(-UNIFIED_STEPS // len(CATS))   # the course's rule: the same steps per category
fits = engine.fit_per_class(lambda: student(SEEDS[0]), train,
                            train_cfg(SEEDS[0], epochs=1, min_steps=PER_CATEGORY_STEPS), cache=cache,
                            equal_steps=False)
test_by_cat, train_by_cat = test.by_category(), train.by_category()
per_class, steps = {}, {"unified": UNIFIED_STEPS}
for c, (model_c, res_c) in fits.items():
    per_class[c] = evaluate(model_c, test_by_cat[c], cache=cache, progress=False)
    steps[c] = res_c.epochs_done * engine.steps_per_epoch(train_by_cat[c], BATCH, train_cfg(SEEDS[0]))
print(f"trained 1 unified + {len(fits)} per-class students in {time.perf_counter() - t0:.0f} s; optimiser steps: {steps}")


def with_interval(table, c):
    lo, hi = table["intervals"][c]["I-AUROC"]
    return f"{100 * table['categories'][c]['I-AUROC']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


rows_uvp = [{"category": c, "train images": len(train_by_cat[c]), "steps, per-class": steps[c],
             "I-AUROC per-class [95 %]": with_interval(per_class[c], c),
             "I-AUROC unified [95 %]": with_interval(table_uni, c),
             "per-class - unified": 100 * (per_class[c]["categories"][c]["I-AUROC"] - table_uni["categories"][c]["I-AUROC"])}
            for c in CATS]
display(Markdown(f"**{METHOD}: per-class vs unified** (unified: {UNIFIED_STEPS} steps on {len(train)} images; "
                 f"I-AUROC x 100 with bootstrap intervals over the test images)\n\n" + report.markdown_table(rows_uvp, digits=1)))
"""),
    code(r"""
# check: the protocol was kept -- no per-class student trained fewer steps than the unified one per category
assert min(steps[c] for c in CATS) >= PER_CATEGORY_STEPS, f"a per-class model trained fewer steps: {steps}"
print(f"equal steps per category: every per-class student took at least {PER_CATEGORY_STEPS} steps "
      f"(the unified student's {UNIFIED_STEPS} over {len(CATS)} categories)")
"""),
    md(r"""
## 4. The memory bank vs the teacher–student method

**What to do.** The memory bank (lesson 12) trains nothing and has no weights for products to fight over: it is
the bar a teacher–student method has to clear. Both are unified and tested on the same images. One test set
gives one number per category with a bootstrap interval (how much it would move with other test images); the
**paired** comparison pairs the two methods seed by seed (a seed fixes the held-out split for both, and the
teacher–student's initialisation and data order or the bank's coreset) and asks whether the mean difference of
their mean I-AUROC is clear of zero.

**What to report.** The table, the paired comparison (mean difference, its interval, both p-values), and your
reading: which method is better *on your data*, or that the data cannot tell. Two or three seeds show a spread;
they cannot settle a small difference (with three seeds the sign-flip test cannot go below 0.25).
"""),
    code(r"""
bank_cfg, bank_teacher = method_and_teacher(lesson, BASELINE, image_size=SIZE)
bank_cache = FeatureCache(bank_teacher, SIZE)
t0 = time.perf_counter()
banks, students, tables = {}, {SEEDS[0]: unified}, {(METHOD, SEEDS[0]): table_uni}
for seed in SEEDS:
    banks[seed] = build_model(BASELINE, bank_teacher, cfg=dataclasses.replace(bank_cfg, coreset_seed=seed))
    fit(banks[seed], train, train_cfg(seed), cache=bank_cache, out=WORK / f"{BASELINE}-unified" if seed == SEEDS[0] else None)
    tables[BASELINE, seed] = evaluate(banks[seed], test, cache=bank_cache, progress=False, pixel=seed == SEEDS[0])
    if seed not in students:
        students[seed] = student(seed)
        fit(students[seed], train, train_cfg(seed, epochs=EPOCHS), cache=cache)
        tables[METHOD, seed] = evaluate(students[seed], test, cache=cache, progress=False, pixel=False)
print(f"{len(SEEDS)} seeds of both methods in {time.perf_counter() - t0:.0f} s")

table_bank = tables[BASELINE, SEEDS[0]]
rows_bvs = [{"category": c, f"{BASELINE} [95 %]": with_interval(table_bank, c), f"{METHOD} [95 %]": with_interval(table_uni, c),
             f"{BASELINE} - {METHOD}": 100 * (table_bank["categories"][c]["I-AUROC"] - table_uni["categories"][c]["I-AUROC"])}
            for c in CATS]
rows_bvs.append({"category": "**pooled**", f"{BASELINE} [95 %]": f"{100 * table_bank['pooled']['I-AUROC']:.1f}",
                 f"{METHOD} [95 %]": f"{100 * table_uni['pooled']['I-AUROC']:.1f}"})
display(Markdown(f"**unified {BASELINE} vs unified {METHOD}, seed {SEEDS[0]}** (I-AUROC x 100)\n\n"
                 + report.markdown_table(rows_bvs, digits=1)))
mean_auroc = {m: [100 * tables[m, s]["mean"]["I-AUROC"] for s in SEEDS] for m in (BASELINE, METHOD)}
paired = paired_seeds(mean_auroc[BASELINE], mean_auroc[METHOD])
print(f"mean I-AUROC per seed {SEEDS}: {BASELINE} {np.round(mean_auroc[BASELINE], 1)}, {METHOD} "
      f"{np.round(mean_auroc[METHOD], 1)}")
print(f"paired over seeds, {BASELINE} - {METHOD}: {paired}")
"""),
    code(r"""
# check: the bank finds defects (on the synthetic set it must; on your data, a bank at chance level points at the
# data -- labels, masks, an image size far too small -- before it points at the method); intervals are intervals
bank_pooled = table_bank["pooled"]["I-AUROC"]
assert bank_pooled > 0.5, f"the memory bank's pooled I-AUROC is {bank_pooled:.3f}: no better than chance"
for table in (table_uni, table_bank, *per_class.values()):
    for c, iv in table["intervals"].items():
        if isinstance(iv, dict):
            lo, hi = iv["I-AUROC"]
            assert 0 <= lo <= table["categories"][c]["I-AUROC"] <= hi <= 1, (c, lo, hi)
assert paired.low <= paired.mean <= paired.high and 0 <= paired.p_sign_flip <= 1, paired
print(f"the bank beats chance (pooled I-AUROC {bank_pooled:.3f}); every interval holds its estimate")
"""),
    md(r"""
## 5. Calibration: a threshold per product, from normal training images only

**What to do.** Decide which unified model you would deploy (`SHIP`, set in the first cell — before you read
the comparison above, or say in the report that you chose after it). `fit` already calibrated it: it kept
`HOLDOUT_MIN` normal **training** images of each category out of training (at most a third), routes every
image to its product by the teacher's embedding, and sets each product's threshold from a tail model of its
held-out scores (lesson 14). No test image — normal or defective — is used: the thresholds are fixed before
the test set is opened, which is what makes the false-alarm rates of section 6 honest.

**What to report.** The calibration rule, the held-out count per product and the floor it allows (a rate below
1 / (n + 1) cannot be checked with n images), and the thresholds.
"""),
    code(r"""
assert SHIP in (METHOD, BASELINE), f"SHIP must be one of the two unified models compared: {METHOD!r} or {BASELINE!r}"
ship = banks[SEEDS[0]] if SHIP == BASELINE else students[SEEDS[0]]
ship_run = WORK / f"{SHIP}-unified"
table_ship = table_bank if SHIP == BASELINE else table_uni
cal = ship.verdict_calibration
_, held = engine.held_out(train, train_cfg(SEEDS[0]))      # exactly the images fit calibrated on
held_counts = {c: v["good"] for c, v in held.counts().items()}
print(f"{SHIP}: {cal.describe()}")
display(Markdown(report.markdown_table(
    [{"category": c, "held-out normal images": g["n"], "threshold": g["threshold"], "tail": cal.tail,
      "floor 1/(n+1) %": 100 * floor_rate(g["n"])} for c, g in cal.groups.items()], digits=4)))
"""),
    code(r"""
# check: every category has its own threshold, from its held-out normal training images, none from the test set
assert set(cal.groups) == set(CATS), f"categories without a threshold: {set(CATS) - set(cal.groups)}"
for c, g in cal.groups.items():
    assert g["n"] == held_counts.get(c, 0) >= 1 and math.isfinite(g["threshold"]), (c, g["n"], held_counts.get(c))
held_paths = {str(r.path) for r in held.records}
assert held_paths <= {str(r.path) for r in train.records}, "a held-out image is not a training image"
assert not held_paths & {str(r.path) for r in test.records}, "a test image was used for calibration"
assert all(r.label == 0 for r in held.records), "a defective image was used for calibration"
print(f"calibrated on {len(held_paths)} held-out normal training images; no test image among them")
"""),
    md(r"""
## 6. False alarms and recall per product, with intervals

**What to do.** Read, per category, how many of its normal test images the calibrated model flags (false
alarms) and how many of its defective ones it catches (recall), each with a 95 % Clopper–Pearson interval —
with 8 normal test images a rate of 0 % still allows up to 37 %.

**What to report.** The table; the worst product; whether the false-alarm rates agree with the design rate
(1 - `QUANTILE`) given their intervals and floors; where recall is low and what kind of defect is missed
(`table_ship["by_defect"]` has the I-AUROC per defect kind).
"""),
    code(r"""
far = table_ship["false_alarms"]
rows_far = []
for c, v in far["categories"].items():
    (fa_lo, fa_hi), (re_lo, re_hi) = v["ci95"], clopper_pearson(v["caught"], v["defects"])
    rows_far.append({"category": c, "false alarms": f"{v['alarms']}/{v['normal']}", "rate %": 100 * v["rate"],
                     "95 % interval %": f"{100 * fa_lo:.1f}-{100 * fa_hi:.1f}", "floor %": 100 * v["floor"],
                     "caught": f"{v['caught']}/{v['defects']}", "recall %": 100 * v["recall"],
                     "recall 95 % %": f"{100 * re_lo:.1f}-{100 * re_hi:.1f}",
                     "_intervals": ((v["rate"], fa_lo, fa_hi), (v["recall"], re_lo, re_hi))})
display(Markdown(f"**{SHIP}, each image at its routed category's threshold** (routing accuracy "
                 f"{100 * far['routing_accuracy']:.1f} %)\n\n"
                 + report.markdown_table(rows_far, columns=[k for k in rows_far[0] if not k.startswith("_")], digits=1)))
"""),
    code(r"""
# check: every rate lies in its interval, and every interval in [0, 1]
for row in rows_far:
    for value, lo, hi in row["_intervals"]:
        assert 0 <= lo <= value <= hi <= 1, (row["category"], value, lo, hi)
print("every false-alarm rate and recall lies in its 95 % interval, within [0, 1]")
"""),
    md(r"""
## 7. Export and serve

**What to do.** Export the shipped run folder to ONNX (`export_run`: one graph from the image to the map, the
score and the routing embedding; it refuses to write an export that does not reproduce the model), serve it with
onnxruntime — no PyTorch — and check it yourself on every test image: the same maps, scores, routes and
verdicts as the PyTorch model that the tables above come from.

**What to report.** The export's parity (largest difference as a fraction of the threshold, verdicts that
differ), its size and the time per image of both. The time is this machine's; say which machine.
"""),
    code(r"""
t0 = time.perf_counter()
check_images = np.stack([load_image(r.path, SIZE) for r in test.evenly(2).records])   # real images for the parity
EXPORT = export_run(ship_run, "onnx", out=WORK / f"{SHIP}-onnx", images=check_images, log=lambda m: None)
export_seconds = time.perf_counter() - t0
served = ExportedModel(EXPORT, backend="onnxruntime")
paths = [r.path for r in test.records]
t0 = time.perf_counter()
got = served.predict(paths)
ms_export = 1e3 * (time.perf_counter() - t0) / len(paths)
t0 = time.perf_counter()
want = predict(ship, paths, precision="fp32")     # the model the tables above come from, in the graph's precision
ms_torch = 1e3 * (time.perf_counter() - t0) / len(paths)
max_rel = max(max(abs(a["score"] - b["score"]), float(np.abs(a["anomaly_map"] - b["anomaly_map"]).max()))
              / abs(b["threshold"]) for a, b in zip(got, want))   # map pixels and scores, per image's threshold
verdicts_differ = sum(a["anomalous"] != b["anomalous"] for a, b in zip(got, want))
routes_differ = sum(a["category"] != b["category"] for a, b in zip(got, want))
# the calibrated thresholds may flag few images (quick mode: often none), which makes "the same verdicts" easy:
# also compare the verdicts at a threshold in the middle of the scores, where about half the images are flagged
s_got, s_want = np.array([a["score"] for a in got]), np.array([w["score"] for w in want])
mid = float(np.median(s_want))
mid_flagged, mid_differ = int(verdict(s_want, mid).sum()), int((verdict(s_got, mid) != verdict(s_want, mid)).sum())
model_mb = sum(p.stat().st_size for p in EXPORT.iterdir() if p.suffix == ".onnx") / 1e6
print(f"exported in {export_seconds:.0f} s: {model_mb:.1f} MB; on {len(paths)} test images the export's maps and scores differ "
      f"by at most {max_rel:.1e} of the threshold, {verdicts_differ} verdicts and {routes_differ} routes differ; "
      f"{ms_export:.1f} ms/image served (onnxruntime) vs {ms_torch:.1f} ms/image PyTorch fp32 (batches of 8); at the "
      f"median score as threshold ({mid_flagged} flagged) {mid_differ} verdicts differ")
"""),
    code(r"""
# check: the served export is the model -- the same verdicts, routes and (within tolerance) scores
assert verdicts_differ == 0 and routes_differ == 0, f"{verdicts_differ} verdicts, {routes_differ} routes differ"
assert mid_differ == 0 and 0 < mid_flagged < len(paths), f"at the median score: {mid_differ} verdicts differ"
assert max_rel <= PARITY_TOLERANCE, f"scores differ by {max_rel:.2e} of the threshold (tolerance {PARITY_TOLERANCE})"
print(f"the export gives the model's verdict on all {len(paths)} test images ({sum(w['anomalous'] for w in want)} "
      f"flagged at the calibrated thresholds, {mid_flagged} at the median score)")
"""),
    md(r"""
## 8. Your report

The cell below assembles the numbers above into one Markdown report — copy it into your hand-in and **write the
reading around it**: what each table says, what it does not, and what you would measure next. The last part,
*Limits*, lists what this run did not measure; keep it, and add your own (data you did not have, defects your
test set lacks, a machine other than the one that will serve).
"""),
    code(r"""
far_rows = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows_far]
limits = [f"{len(test)} test images over {len(CATS)} categories: every rate and AUROC above carries the interval shown",
          f"{len(SEEDS)} seeds: the paired comparison shows a spread; it cannot settle a difference smaller than it",
          "one data set and one split; no validation set: any choice made after looking at the test tables "
          "(the method to ship, the rule's knobs) makes those tables optimistic",
          "pixel-level metrics (P-AUROC, AUPRO) are computed by evaluate() but not reported here",
          f"latency measured on this machine ({device}), batches of 8; not the serving machine"]
if QUICK:
    limits.insert(0, f"QUICK MODE: {SIZE} px (the rule chose {NEEDED}), {UNIFIED_STEPS} unified steps, at most "
                     f"{N_TRAIN} training images per category -- a smoke test of the pipeline, not results")
if DATA is None:
    limits.insert(0, "the synthetic set, not your data")
sections = [
    "# Capstone report", f"**Data**: {'the synthetic set' if DATA is None else root}; categories {', '.join(CATS)}; "
    f"{len(train)} training and {len(test)} test images.\n\n" + report.markdown_table(rows),
    f"**Image size**: the rule (the {DEFECT_QUANTILE:g} quantile of the defects covers >= {MIN_CELLS:g} cells of "
    f"stride {FINEST}, no mask vanishes) chose {NEEDED} px; used: {SIZE} px.\n\n" + report.markdown_table(by_size, digits=2),
    f"**Unified vs per-class {METHOD}**, equal steps per category (unified {UNIFIED_STEPS} over {len(CATS)} categories; per-class "
    f"{min(steps[c] for c in CATS)}-{max(steps[c] for c in CATS)}), seed {SEEDS[0]}:\n\n" + report.markdown_table(rows_uvp, digits=1),
    f"**{BASELINE} vs {METHOD}**, unified:\n\n" + report.markdown_table(rows_bvs, digits=1)
    + f"\n\nPaired over seeds {SEEDS}: {paired}.",
    f"**Calibration** of the shipped model ({SHIP}): {cal.describe()}; held-out normal training images per "
    f"category: {held_counts}; no test image used.",
    f"**False alarms and recall** of {SHIP}, 95 % Clopper-Pearson intervals:\n\n" + report.markdown_table(far_rows, digits=1),
    f"**Export**: ONNX, {model_mb:.1f} MB, served by onnxruntime: max map/score difference {max_rel:.1e} of the threshold, "
    f"{verdicts_differ} of {len(paths)} verdicts differ at the calibrated thresholds ({mid_differ} at the median score); "
    f"{ms_export:.1f} ms/image vs {ms_torch:.1f} ms/image in PyTorch fp32 on this machine.",
    "**Limits** (what this run did not measure):\n\n" + "\n".join(f"- {item}" for item in limits),
]
REPORT = "\n\n".join(sections)
display(Markdown(REPORT))
"""),
    code(r"""
if OUT is None:   # the temporary work folder: runs, export and the synthetic set go; set OUT to keep them
    shutil.rmtree(WORK, ignore_errors=True)
else:
    (WORK / "report.md").write_text(REPORT + "\n")
    print(f"report written to {WORK / 'report.md'}; runs and export kept in {WORK}")
"""),
]
