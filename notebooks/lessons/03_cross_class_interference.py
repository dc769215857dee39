"""Lesson 03 -- cross-class interference. Cells for ``notebooks/03_cross_class_interference.ipynb`` (built by ``notebooks/_build.py``)."""

from _cells import code, exercise, md

CELLS = [
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
from IPython.display import Markdown, display

from unistad_edu import MVTecDataset, TrainConfig, build_model, engine, evaluate, fit, report, viz
from unistad_edu.cache import FeatureCache
from unistad_edu.course import method_and_teacher, setup
from unistad_edu.metrics import auroc, metrics_table
from unistad_edu.report import format_table
from unistad_edu.synthetic import MANIFEST_NAME

QUICK_CATEGORIES = ["bottle", "cookie", "metal_plate"]   # real data: two small categories and a capped big one
lesson = setup(QUICK_CATEGORIES)   # quick/full switch (UNISTAD_QUICK), device, data, categories, preset
QUICK, device, root, CATEGORIES = lesson.quick, lesson.device, lesson.root, lesson.categories
OVERRIDES = dict(image_size=128, batch_size=8) if QUICK else dict(image_size=256)
N_TRAIN = 60 if QUICK else None       # at most this many normal training images per category (None: all)
STEPS = 48 if QUICK else None         # optimiser steps (at least) of the unified model (None: the preset's epochs)
EQUAL_EPOCHS_TOO = True               # also train the unfair comparison (equal epochs), to see what it shows
SEED = 0                              # same student initialisation and data order for every model
print(lesson.describe(overrides=OVERRIDES))
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
cfg, teacher = method_and_teacher(lesson, "stpm", student_seed=SEED, **OVERRIDES)  # cpu preset if offline
PRESET = lesson.preset
SIZE, BATCH = cfg.image_size, cfg.batch_size

train = MVTecDataset(root, "train", categories=CATEGORIES, image_size=SIZE).evenly(N_TRAIN)
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
    # what fit() does: hold 10 % out (seeded), then full batches only (engine.steps_per_epoch)
    return engine.steps_per_epoch(dataset, BATCH, TrainConfig(seed=SEED))


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
display(Markdown(report.markdown_table(rows)))
"""),
    md(r"""
How much this matters, recorded on the five real categories (`docs/benchmarks.md`, "Cross-class
interference, STPM": 256 px, `cpu` preset, the unified student trained 5 epochs = 210 steps, one seed):

| protocol | mean I-AUROC, per-class | mean I-AUROC, unified | looks better |
|---|---:|---:|---|
| equal **epochs** (5 each) | 69.2 | 85.8 | unified (!), by 16.7 |
| equal **steps** (each per-class model >= 210 steps) | 94.9 | 85.8 | per-class, by 9.0 |

With equal epochs the unified model *looked* far better — the per-class student of a small category had
taken only a few steps (metal_plate: 10 in all). With equal steps the per-class models win on every category
but bottle (tied at 100.0), most on the products least like the others (juice_bottle -21.5, cookie -16.5).
Two cautions: these are one seed at a small budget, and the direction depends on the budget — when no student
is near convergence, the unified student's extra images can act as extra training and the comparison can
flip. A claim "unified is worse by X" is only meaningful with its protocol and budget attached. This run trains both protocols, so you can see it for yourself.

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
def train_per_class(equal_steps):
    # one fresh student per category (engine.fit_per_class: at least the unified model's steps each, or its
    # epochs); returns (metrics table, outputs per category, thresholds, steps)
    rows, outs, thresholds, steps = {}, {}, {}, {}
    fits = engine.fit_per_class(lambda: build_model("stpm", teacher, cfg=cfg), train,
                                TrainConfig(epochs=UNI_EPOCHS, progress=False, **tcfg), cache=cache,
                                equal_steps=equal_steps)
    for cat, (model, res) in fits.items():
        ds = train_by_cat[cat]
        table, outs[cat] = evaluate(model, test_by_cat[cat], cache=cache, progress=False, return_outputs=True)
        rows[cat], thresholds[cat] = table["categories"][cat], res.threshold
        steps[cat] = res.epochs_done * steps_per_epoch(ds)
        print(f"  {cat}: {res.epochs_done} epochs = {steps[cat]} steps in {res.seconds:.0f} s, "
              f"I-AUROC {rows[cat]['I-AUROC']:.3f}")
    return metrics_table(rows, setting="per-class", method="stpm"), outs, thresholds, steps


print(f"per-class, equal steps (at least {unified_steps} each):")
table_per, out_per, thr_per, steps_per = train_per_class(equal_steps=True)
assert min(steps_per.values()) >= unified_steps, "a per-class model trained fewer steps than the unified one"
if EQUAL_EPOCHS_TOO:
    print(f"per-class, equal epochs ({UNI_EPOCHS} each):")
    table_ep, _, _, steps_ep = train_per_class(equal_steps=False)
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
columns = report.HEADLINE
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
                 + report.markdown_table(gaps)))
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
                 + report.markdown_table(rows, digits=2)))
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
show = viz.pick_defects(out_uni, N_PER_CAT, CATEGORIES)   # the same defective test images for both settings
viz.threshold_unit_grid(test, show, {"per-class": (pc, pc["threshold"]), "unified": (out_uni, res_uni.threshold)},
                        title="defects (row 1), per-class maps (row 2), unified maps (row 3); "
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
browse = viz.browse_indices(cat_of, out_uni["labels"], N_BROWSE, order=CATEGORIES)  # defective, then normal
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
## Your turn

2 small tasks on the heart of this lesson. In the exercise notebook (`notebooks/exercises/03_cross_class_interference.ipynb`) each marked cell is a stub for you to write; the check after it runs your function and the package's own on the same small inputs, and says what is still missing.
"""),
    exercise(
        "one threshold, many products: the false-alarm rate",
        task=r"""
A unified model has **one** threshold for every category. Write `my_false_alarms(scores, labels, categories,
threshold)` -> `{category: rate}`: for each category, the fraction of its **normal** images (label 0) whose
score is **above** the threshold.
""",
        solution=r"""
import numpy as np


def my_false_alarms(scores, labels, categories, threshold):
    scores, labels, categories = map(np.asarray, (scores, labels, categories))
    out = {}
    for cat in sorted(set(categories.tolist())):
        normal = scores[(categories == cat) & (labels == 0)]
        out[cat] = float((normal > threshold).mean())
    return out
""",
        stub=r"""
import numpy as np


def my_false_alarms(scores, labels, categories, threshold):
    # your code: per category, the share of normal images (label 0) with score > threshold
    raise NotImplementedError
""",
        check=r"""
import numpy as np

from unistad_edu.course import check
from unistad_edu.metrics import false_alarm_rates

_rng = np.random.default_rng(0)
_s, _y = _rng.random(40), _rng.integers(0, 2, 40)
_c = np.array(["bottle", "cookie"] * 20)
check("Exercise 1 (false alarms)", lambda: my_false_alarms(_s, _y, _c, 0.7),
      lambda: {k: v["rate"] for k, v in false_alarm_rates(_s, _y, _c, 0.7)["categories"].items()}, hint={hint})
""",
        hint="a false alarm is a normal image of that product whose score is above the threshold: count those among its normal images",
        more="Turn the three inputs into numpy arrays so that a boolean condition can select: for each distinct category keep the scores where the category matches and the label is 0, and return the share of them strictly greater than the threshold as a float -- a score equal to it is no alarm.",
    ),
    exercise(
        "the per-category table from one list of scores",
        task=r"""
The unified model scores all test images in one list. Write `my_auroc_per_category(scores, labels,
categories)` -> `{category: I-AUROC}`, each category's AUROC computed on its own images only (use
`sklearn.metrics.roc_auc_score`).
""",
        solution=r"""
import numpy as np
from sklearn.metrics import roc_auc_score


def my_auroc_per_category(scores, labels, categories):
    scores, labels, categories = map(np.asarray, (scores, labels, categories))
    return {c: float(roc_auc_score(labels[categories == c], scores[categories == c]))
            for c in sorted(set(categories.tolist()))}
""",
        stub=r"""
import numpy as np
from sklearn.metrics import roc_auc_score


def my_auroc_per_category(scores, labels, categories):
    # your code: one roc_auc_score per category, on that category's images only
    raise NotImplementedError
""",
        check=r"""
import numpy as np

from unistad_edu.course import check
from unistad_edu.metrics import auroc

_rng = np.random.default_rng(1)
_y = np.array([0, 1] * 15)
_s = _rng.random(30) + 0.5 * _y
_c = np.array(["a"] * 10 + ["b"] * 10 + ["c"] * 10)
check("Exercise 2 (AUROC per category)", lambda: my_auroc_per_category(_s, _y, _c),
      lambda: {k: auroc(_s[_c == k], _y[_c == k]) for k in ("a", "b", "c")}, hint={hint})
""",
        hint="select one category's images, then use scikit-learn's AUROC on them; read its signature for which argument comes first",
        more="`roc_auc_score` takes the true labels first and the scores second; build one boolean selection where the category equals c, apply it to both arrays, and put one float per category into the dict.",
    ),
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
