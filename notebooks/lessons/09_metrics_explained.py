"""Lesson 09 -- the metrics explained, and a threshold from normal images only. Cells for
``notebooks/09_metrics_explained.ipynb`` (built by ``notebooks/_build.py``)."""

from _cells import code, exercise, md

CELLS = [
    md(r"""
# Lesson 09 — Four metrics, one model, four verdicts — and a threshold from normal images only

Every lesson so far reported a table of **I-AUROC, P-AUROC, AUPRO, F1-max**. They are not four views of one
number. On the *same* model and the *same* test images they can rank categories differently, move by very
different amounts when the same pixels improve, and one of them (F1-max) even picks its threshold with the test
labels. This lesson trains one small unified model and takes the numbers apart with the package's
`unistad_edu.metrics` functions:

| metric | counts | what it is blind to |
|---|---|---|
| **I-AUROC** | pairs (defective image, normal image) ranked the right way | any threshold; class balance |
| **I-F1max** | F1 at the best threshold — chosen *with the test labels* | its own chance level (2P / (2P + N)) depends on the defect share |
| **P-AUROC** | pixels, pooled over all images of a category | region count: a large defect has many pixels, a tiny one few |
| **AUPRO** | defect **regions**, each weighted equally, up to 30 % false-positive rate | defect size (on purpose) |

Then the question a deployment has to answer and the table never does: **which threshold?** With no
defective images at hand, the engine takes a quantile of the scores of held-out *normal* images. We measure
what that costs on the defects, in a unified model where **one threshold serves every category**.
"""),
    code(r"""

import numpy as np
import plotly.graph_objects as go
import torch
from IPython.display import Markdown, display
from scipy import ndimage
from sklearn.metrics import roc_curve

from unistad_edu import TrainConfig, build_model, engine, evaluate, fit, inference, report, viz
from unistad_edu.course import lesson_data, method_and_teacher, setup
from unistad_edu import metrics

lesson = setup(None)   # every category (the unified setting); quick/full switch, device, data, preset
QUICK, device, root, CATEGORIES = lesson.quick, lesson.device, lesson.root, lesson.categories
# quick: UniAD trained from cached teacher features (as in lesson 04): 128 px, a one-layer transformer, 30 epochs
OVERRIDES = dict(image_size=128, hidden_dim=128, num_heads=4, ffn_dim=256, enc_layers=1, dec_layers=1,
                 neighbor_size=5, lr=3e-3, epochs=30, batch_size=8) if QUICK else {}
N_TRAIN = 60 if QUICK else None       # at most this many normal training images per category (None: all)
N_TEST = 40 if QUICK else None        # at most this many test images per category (None: all)
SEED = 0
print(lesson.describe(method="uniad", overrides=OVERRIDES))
"""),
    md(r"""
## 1. One unified model

The model itself is not the topic, so we take the cheapest one to train: **UniAD** (lesson 04), whose loss
reads only the teacher's features — the teacher runs once per image into a `FeatureCache`, and training costs
only the small transformer. One model for all categories, no category labels. `fit` holds 10 % of the normal
training images of every category out and calibrates a threshold on them (section 6).
"""),
    code(r"""
cfg, teacher = method_and_teacher(lesson, "uniad", init_seed=SEED, **OVERRIDES)  # cpu preset if offline
PRESET = lesson.preset
SIZE = cfg.image_size


train, test, cache = lesson_data(lesson, SIZE, N_TRAIN, N_TEST, teacher)  # capped sets + warm cache

train_cfg = TrainConfig(seed=SEED, device=device, progress=False)
model = build_model("uniad", teacher, cfg=cfg)
result = fit(model, train, train_cfg, cache=cache)
table, out = evaluate(model, test, cache=cache, progress=False, return_outputs=True)
scores, labels, cats = out["scores"], out["labels"], out["categories"]
maps, masks = out["maps"], out["masks"]
print(f"trained {result.epochs_done} epochs in {result.seconds:.0f} s on {len(train)} normal images; "
      f"test: {len(test)} images, {int(labels.sum())} defective")
ALL = ("I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "P-F1max", "AUPRO")
display(Markdown(report.format_table(table, ALL)))
"""),
    md(r"""
## 2. Same model, different orderings

Rank the categories by each metric (1 = the category the model handles best). If the metrics measured one
thing, every column would give the same order.
"""),
    code(r"""
per_cat = table["categories"]
rank = {m: {c: r + 1 for r, c in enumerate(sorted(CATEGORIES, key=lambda c: -per_cat[c][m]))} for m in ALL}
display(Markdown(report.markdown_table([{"category": c, **{m: rank[m][c] for m in ALL}} for c in CATEGORIES])))
pairs = [(a, b) for i, a in enumerate(ALL) for b in ALL[i + 1:]]
differ = [(a, b) for a, b in pairs if [rank[a][c] for c in CATEGORIES] != [rank[b][c] for c in CATEGORIES]]
print(f"{len(differ)} of {len(pairs)} pairs of metrics order the {len(CATEGORIES)} categories differently, e.g.:",
      ", ".join(f"{a} vs {b}" for a, b in differ[:6]))
"""),
    md(r"""
How settled is such an order? A category's test set holds a few dozen images, so its I-AUROC would move with
other images of the same kind. `unistad_edu.uncertainty.bootstrap_auroc` resamples the normal and the
defective images separately, with replacement, 2000 times, and reports the 2.5 % and 97.5 % points of the
resampled AUROCs (a 95 % percentile interval of the *test set's* sampling — not of the training). Two
categories whose intervals overlap are not ordered by this test set.
"""),
    code(r"""
from unistad_edu.uncertainty import bootstrap_auroc

iv = {c: bootstrap_auroc(labels[cats == c], scores[cats == c], seed=SEED) for c in CATEGORIES}
for c in CATEGORIES:  # two implementations of one AUROC: the bootstrap's own and unistad_edu.metrics
    assert np.isclose(iv[c].value, per_cat[c]["I-AUROC"]), (c, iv[c].value, per_cat[c]["I-AUROC"])
by_auroc = sorted(CATEGORIES, key=lambda c: -iv[c].value)
display(Markdown(report.markdown_table([
    {"I-AUROC rank": r + 1, "category": c, "defects": int(labels[cats == c].sum()),
     "normals": int((labels[cats == c] == 0).sum()), "I-AUROC [95 % interval]": str(iv[c]),
     "width (points)": 100 * (iv[c].high - iv[c].low)} for r, c in enumerate(by_auroc)])))
unsettled = [(a, b) for a, b in zip(by_auroc, by_auroc[1:]) if iv[a].low <= iv[b].high]
print(f"{len(unsettled)} of {len(by_auroc) - 1} neighbours in the I-AUROC order have overlapping intervals:",
      ", ".join(f"{a} / {b}" for a, b in unsettled))
"""),
    md(r"""
## 3. I-AUROC vs I-F1max: a ranking vs the best threshold

I-AUROC asks: *pick one defective and one normal image at random — how often does the defective one score
higher?* It never fixes a threshold, and a category with 90 % defects gets the same 0.5 for a useless model
as one with 10 %.

I-F1max is the F1 score `2TP / (TP + FP + P)` at the **best** threshold, and the best threshold is found
with the test labels — an oracle no deployed system has. Its chance level is not 0.5: flagging every image
gives recall 1 and precision P / (P + N), so F1 = **2P / (2P + N)**. A category with many defects gets a high
F1-max for free.

First, re-derive F1-max (and find *where* its best threshold lies, which `metrics.f1_max` does not return):
F1 at every candidate threshold "score ≥ t", with t running over the defect scores.
"""),
    code(r"""
def f1_curve(s, y):
    # F1 of the rule "score >= t" at every defect score t; returns (thresholds, F1 at each)
    t = np.unique(s[y == 1])
    flagged = s[None, :] >= t[:, None]                      # (T, N)
    tp = (flagged & (y == 1)).sum(1)
    fp = (flagged & (y == 0)).sum(1)
    return t, 2 * tp / (tp + fp + (y == 1).sum())


oracle_thr, rows = {}, []
for c in CATEGORIES:
    sel = cats == c
    s, y = scores[sel], labels[sel]
    t, f1 = f1_curve(s, y)
    assert np.isclose(f1.max(), metrics.f1_max(s, y)), "re-derived F1-max differs from the library"
    oracle_thr[c] = float(t[np.argmax(f1)])
    P, N = int(y.sum()), int((y == 0).sum())
    rows.append({"category": c, "defects P": P, "normals N": N, "I-AUROC": metrics.auroc(s, y),
                 "I-F1max": metrics.f1_max(s, y), "flag-all F1 = 2P/(2P+N)": 2 * P / (2 * P + N),
                 "F1max above flag-all": metrics.f1_max(s, y) - 2 * P / (2 * P + N)})
print("F1-max re-derived for every category: OK (same values as metrics.f1_max)")
display(Markdown(report.markdown_table(rows)))
worst = min(rows, key=lambda r: r["I-AUROC"])
print(f"lowest I-AUROC: {worst['category']} ({worst['I-AUROC']:.3f}) -- yet its I-F1max is {worst['I-F1max']:.3f}, "
      f"against a flag-everything level of {worst['flag-all F1 = 2P/(2P+N)']:.3f}")
"""),
    md(r"""
The defect share moves F1-max and not I-AUROC. Keep every normal image of a category and only every other
defective one — the same model, the same kinds of defect, half the share — and compute both again:
"""),
    code(r"""
def every_other_defect(c):  # (scores, labels) of category c: all its normal images, every 2nd defective one
    idx = np.flatnonzero(cats == c)
    keep = np.r_[idx[labels[idx] == 0], idx[labels[idx] == 1][::2]]
    return scores[keep], labels[keep]


balance = []
for c in CATEGORIES:
    s_half, y_half = every_other_defect(c)
    balance.append({"category": c, "I-AUROC": per_cat[c]["I-AUROC"],
                    "I-AUROC, half the defects": metrics.auroc(s_half, y_half),
                    "I-F1max": per_cat[c]["I-F1max"], "I-F1max, half the defects": metrics.f1_max(s_half, y_half)})
display(Markdown(report.markdown_table(balance)))
moved_auroc = np.mean([abs(r["I-AUROC, half the defects"] - r["I-AUROC"]) for r in balance])
moved_f1 = np.mean([abs(r["I-F1max, half the defects"] - r["I-F1max"]) for r in balance])
print(f"mean change over categories: I-AUROC {moved_auroc:.3f}, I-F1max {moved_f1:.3f}")
"""),
    md(r"""
Read the last two columns before trusting an F1-max. A category with mostly defective test images can show a
high F1-max while its I-AUROC is at chance: F1 mostly rewards the positives, and "everything is defective" is
already a good answer there. I-AUROC does not move with the class balance; F1-max does.

The image-level ROC curves, one per category (the area under each is its I-AUROC):
"""),
    code(r"""
roc_image = {}
for c in CATEGORIES:
    fpr, tpr, _ = roc_curve(labels[cats == c], scores[cats == c])
    roc_image[f"{c} ({per_cat[c]['I-AUROC']:.2f})"] = (fpr, tpr)
viz.rate_curves(roc_image, title="image-level ROC per category (I-AUROC in brackets)").show()
"""),
    md(r"""
## 4. P-AUROC vs AUPRO: pixels vs regions

Both are pixel-level, both use the same maps and masks. The difference is **what one unit of credit is**:

* **P-AUROC** pools every pixel of every test image of the category. Defect pixels are a few percent of all
  pixels, and a big defect contributes as many of them as dozens of small ones. The normal pixels, which are
  the vast majority and mostly easy, push the number up: P-AUROC is often above 0.9 for a mediocre map.
* **AUPRO** finds each connected defect region and asks, at a threshold, what fraction of *that region* is
  above it; the regions are **averaged**, so a 10-pixel scratch counts as much as a missing cap. The curve is
  integrated only up to 30 % false-positive rate on the normal pixels (where a usable threshold would sit)
  and divided by 0.3.

How different are the regions in these categories?
"""),
    code(r"""
EIGHT = np.ones((3, 3), dtype=bool)   # 8-connectivity, as metrics.aupro uses


def regions(cat_masks):
    # per category: a region label image per test image (0 = normal) and the size of every region
    labelled, sizes, offset = [], [], 0
    for m in cat_masks:
        lab, n = ndimage.label(m > 0, structure=EIGHT)
        labelled.append(np.where(lab > 0, lab + offset, 0))
        sizes += np.bincount(lab.ravel(), minlength=n + 1)[1:].tolist()
        offset += n
    return np.stack(labelled), np.array(sizes)


region_rows = []
for c in CATEGORIES:
    _, sizes = regions(masks[cats == c])
    region_rows.append({"category": c, "defect regions": len(sizes), "median size (px)": int(np.median(sizes)),
                        "largest (px)": int(sizes.max()), "smallest (px)": int(sizes.min()),
                        "defect pixels": float((masks[cats == c] > 0).mean()),
                        "P-AUROC": per_cat[c]["P-AUROC"], "P-AP": per_cat[c]["P-AP"], "AUPRO": per_cat[c]["AUPRO"]})
display(Markdown(f"region sizes at {SIZE} x {SIZE} px (defect pixels = share of all test pixels)\n\n"
                 + report.markdown_table(region_rows)))
"""),
    md(r"""
The ROC curves of the pixels next to the PRO curves. On the ROC plot only the far left matters in
practice — nobody deploys a pixel threshold that flags 30 % of the normal pixels — but P-AUROC integrates the
whole width. The PRO plot shows only that left part (FPR ≤ 0.3, dashed line), and its y axis is the mean
*region* overlap instead of the pooled pixel recall.
"""),
    code(r"""
roc_pixel, pro = {}, {}
for c in CATEGORIES:
    sel = cats == c
    fpr, tpr, _ = roc_curve((masks[sel] > 0).ravel(), maps[sel].ravel())
    roc_pixel[f"{c} ({per_cat[c]['P-AUROC']:.2f})"] = (fpr, tpr)
    pro[f"{c} ({per_cat[c]['AUPRO']:.2f})"] = metrics.pro_curve(maps[sel], masks[sel])
viz.rate_curves(roc_pixel, title="pixel ROC per category (P-AUROC in brackets): the whole width counts").show()
viz.rate_curves(pro, y_title="per-region overlap (PRO)", x_max=0.3, mark_x=0.3,
                title="PRO curve per category (AUPRO in brackets): only FPR <= 0.3 counts, every region equally").show()
"""),
    md(r"""
## 5. The experiment: repair the same number of pixels, two ways

Let us *edit the anomaly maps* and watch the two metrics. In each category, two repairs, each making a set of
defect pixels perfectly detected (their map values raised above every other value):

* **large**: the single largest defect region;
* **small**: the smallest regions, taken from the smallest up, as long as together they have *no more*
  pixels than the large one.

Both repairs fix (at most) the same number of defect pixels. A pixel-pooled metric should barely tell them
apart. A region-averaged metric should reward the small repair far more: it fixes many regions, the large
repair fixes one.
"""),
    code(r"""
repair_rows, repairs = [], {}
for c in CATEGORIES:
    sel = cats == c
    cat_maps, cat_masks = maps[sel], masks[sel]
    labelled, sizes = regions(cat_masks)
    largest = int(np.argmax(sizes)) + 1                       # region ids start at 1
    small, budget = [], 0
    for r in np.argsort(sizes, kind="stable") + 1:            # smallest first
        if r != largest and budget + sizes[r - 1] <= sizes[largest - 1]:
            small.append(int(r))
            budget += int(sizes[r - 1])
    top = float(cat_maps.max()) * 2 + 1.0                     # above every map value
    base = metrics.pixel_metrics(cat_maps, cat_masks)
    fixed_large = metrics.pixel_metrics(np.where(labelled == largest, top, cat_maps), cat_masks)
    fixed_small = metrics.pixel_metrics(np.where(np.isin(labelled, small), top, cat_maps), cat_masks)
    repairs[c] = {"n_small": len(small),
                  "dPA_large": fixed_large["P-AUROC"] - base["P-AUROC"], "dPA_small": fixed_small["P-AUROC"] - base["P-AUROC"],
                  "dPRO_large": fixed_large["AUPRO"] - base["AUPRO"], "dPRO_small": fixed_small["AUPRO"] - base["AUPRO"]}
    repair_rows.append({"category": c, "large: pixels": int(sizes[largest - 1]), "small: regions": len(small),
                        "small: pixels": budget, "ΔP-AUROC large": repairs[c]["dPA_large"],
                        "ΔP-AUROC small": repairs[c]["dPA_small"], "ΔAUPRO large": repairs[c]["dPRO_large"],
                        "ΔAUPRO small": repairs[c]["dPRO_small"]})
display(Markdown(report.markdown_table(repair_rows)))
fig = go.Figure()
for key, name in (("dPA_large", "ΔP-AUROC, large repaired"), ("dPA_small", "ΔP-AUROC, small repaired"),
                  ("dPRO_large", "ΔAUPRO, large repaired"), ("dPRO_small", "ΔAUPRO, small repaired")):
    fig.add_bar(name=name, x=CATEGORIES, y=[repairs[c][key] for c in CATEGORIES])
fig.update_layout(barmode="group", title="the same pixel budget, repaired as one large or many small regions",
                  yaxis_title="gain", height=400)
fig.show()
"""),
    md(r"""
P-AUROC moves about equally for both repairs — it counts pixels, and both repairs fix about as many. AUPRO
jumps for the small repair and hardly notices the large one: each region is `1 / (number of regions)` of its
value, whatever its size. Neither is "right". If a missed hairline crack is as costly as a missed missing
part, AUPRO is your number; if the area matters (paint coverage, say), the pixel-pooled metrics are. And
because P-AUROC is dominated by easy normal pixels, also look at P-AP (section 1's table), which ignores
true negatives and is far less flattering.

## 6. A threshold from normal images only

Every metric above either avoids a threshold (AUROC, AUPRO) or cheats to get one (F1-max). A deployed
detector needs one number, chosen **before** any defect is seen. The engine's rule
(`inference.calibrate_threshold`): keep 10 % of each category's normal training images out of training, at
least 10 where the category has 30 or more (`TrainConfig.holdout_fraction`, `holdout_min`), score them, and take
the `TrainConfig.threshold_quantile` (0.99) quantile of their pooled scores — "flag about 1 % of normal
images". Below we rebuild the same held-out split, call `calibrate_threshold` ourselves, and verify it against
the pooled threshold `fit` stored. (`fit` also stores one threshold per category, each image routed to its
category by the teacher's embedding: lesson 14 compares the two.)
"""),
    code(r"""
_, held = engine.held_out(train, train_cfg)  # the held-out normal images fit used
threshold, stats = inference.calibrate_threshold(model, held, cache, torch.device(device), train_cfg)
assert np.isclose(threshold, result.threshold), (threshold, result.threshold)
held_scores = inference.score_dataset(model, held, cache, keep_maps=False)["scores"]
assert np.isclose(np.quantile(held_scores, train_cfg.threshold_quantile), threshold)
print(f"{stats['rule']}: threshold {threshold:.4g} (same as fit's)")
display(Markdown("held-out normal scores per category\n\n" + report.markdown_table(
    [{"category": c, **v, "max / threshold": v["max"] / threshold} for c, v in stats["per_class"].items()])))
"""),
    md(r"""
In a unified model the categories' normal scores need not share a scale: one category's *normal* images may
score where another category's *defects* do. The quantile is taken over all held-out images together, so the
category with the highest normal scores sets the threshold for everyone. Each category's box below: normal
vs defective test scores; dashed line across: the calibrated threshold; short dashes: each category's own
F1-max (oracle) threshold.
"""),
    code(r"""
viz.scores_by_category({"calibrated (one line)": out, "F1-max oracle (per category)": out},
                       thresholds={"calibrated (one line)": threshold, "F1-max oracle (per category)": oracle_thr},
                       title="test scores per category: the one calibrated threshold vs each category's oracle").show()
"""),
    md(r"""
What does the calibrated threshold cost? Per category: recall (defective images flagged), false alarms
(normal images flagged) and F1, at

* the **calibrated** threshold (normal images only, one for all categories);
* the **best shared** threshold: the one threshold that maximises the mean F1 over categories — an oracle,
  but still one number for all, as a unified deployment would have;
* each category's own **F1-max** threshold — the oracle behind the I-F1max column.

(The verdict is `score > threshold`; F1-max uses `score ≥ t`, so the oracle thresholds are nudged down by one
float step.)
"""),
    code(r"""
def rows_at(t):
    return {r["category"]: r for r in viz.threshold_rows(scores, labels, cats, t)}


def mean_f1(t):
    rows = rows_at(t)
    return float(np.mean([rows[c]["F1"] for c in CATEGORIES]))


candidates = np.r_[np.nextafter(np.unique(scores), -np.inf), np.inf]     # every distinct verdict split
shared_thr = float(max(candidates, key=mean_f1))
at_cal, at_shared = rows_at(threshold), rows_at(shared_thr)
at_own = {c: rows_at(np.nextafter(oracle_thr[c], -np.inf))[c] for c in CATEGORIES}
cost_rows = []
for c in CATEGORIES:
    cost_rows.append({"category": c,
                      "recall: calibrated": at_cal[c]["recall"], "false al.: calibrated": at_cal[c]["false alarms"],
                      "F1: calibrated": at_cal[c]["F1"],
                      "recall: best shared": at_shared[c]["recall"], "F1: best shared": at_shared[c]["F1"],
                      "recall: own F1-max": at_own[c]["recall"], "false al.: own F1-max": at_own[c]["false alarms"],
                      "F1: own F1-max": at_own[c]["F1"]})
f1_cal = {c: at_cal[c]["F1"] for c in CATEGORIES}
f1_own = {c: at_own[c]["F1"] for c in CATEGORIES}
for c in CATEGORIES:
    assert np.isclose(f1_own[c], per_cat[c]["I-F1max"]), "the oracle threshold does not reproduce I-F1max"
cost_rows.append({"category": "mean", **{k: float(np.mean([r[k] for r in cost_rows])) for k in cost_rows[0]
                                        if k != "category"}})
display(Markdown(report.markdown_table(cost_rows, digits=2)))
print(f"mean F1 over categories: calibrated {mean_f1(threshold):.3f} | best shared threshold {mean_f1(shared_thr):.3f} "
      f"| each category's own oracle {np.mean(list(f1_own.values())):.3f}")
"""),
    md(r"""
Two different losses stack up here. From the per-category oracles to the best shared threshold: the price of
**one** threshold for categories whose scores live on different scales — a unified model's own problem, which
no choice of threshold can remove. From the best shared threshold to the calibrated one: the price of choosing
**without defects** — the 0.99 quantile is set to keep false alarms on normal images rare, not to catch
defects. With a few dozen held-out images, the 0.99 quantile is essentially their **maximum**: a single
unusually high normal image (of whichever category scores highest) sets the threshold for all.

The quantile is a knob. A lower quantile catches more defects and raises more false alarms; this is what it
does here (re-computed from the held-out scores, `np.quantile` as in `calibrate_threshold`):
"""),
    code(r"""
q_rows = []
for q in (0.8, 0.9, 0.95, 0.99, 1.0):
    t = float(np.quantile(held_scores, q))
    r = rows_at(t)["all"]
    q_rows.append({"threshold_quantile": q, "threshold": t, "held-out normals flagged": float((held_scores > t).mean()),
                   "test recall (all)": r["recall"], "test false alarms (all)": r["false alarms"],
                   "mean F1 over categories": mean_f1(t)})
display(Markdown(report.markdown_table(q_rows, digits=3)))
"""),
    md(r"""
## 7. Explore the threshold

Move the slider (or jump to a marked threshold) and watch every category at once. Things to try: find the
threshold where the first category's false alarms reach 100 % while another category still misses defects;
compare the calibrated threshold with the best shared one — which categories pay for the difference?
"""),
    code(r"""
viz.threshold_explorer(scores, labels, cats, threshold=threshold,
                       marks={"calibrated (normal only)": threshold, "best shared (oracle)": shared_thr})
"""),
    md(r"""
## Your turn

2 small tasks on the heart of this lesson. In the exercise notebook (`notebooks/exercises/09_metrics_explained.ipynb`) each marked cell is a stub for you to write; the check after it runs your function and the package's own on the same small inputs, and says what is still missing.
"""),
    exercise(
        "I-AUROC by counting pairs",
        task=r"""
AUROC is the probability that a random anomalous image scores higher than a random normal one (ties count
half). Write `my_auroc(scores, labels)` by comparing **every** (anomalous, normal) pair — no sklearn.
""",
        solution=r"""
import numpy as np


def my_auroc(scores, labels):
    s, y = np.asarray(scores, float), np.asarray(labels).astype(bool)
    pos, neg = s[y][:, None], s[~y][None, :]                  # (P, 1), (1, N): every pair
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())
""",
        stub=r"""
import numpy as np


def my_auroc(scores, labels):
    # your code: for every anomalous score a and normal score n, count a > n (and half of a == n)
    raise NotImplementedError
""",
        check=r"""
import numpy as np

from unistad_edu.course import check
from unistad_edu.metrics import auroc

_rng = np.random.default_rng(0)
_y = _rng.integers(0, 2, 50)
_s = np.round(_rng.random(50) + 0.4 * _y, 1)   # rounded: there are ties
check("Exercise 1 (AUROC)", lambda: my_auroc(_s, _y), lambda: auroc(_s, _y), hint={hint})
""",
        hint="compare every defective score with every normal score at once; a tie is worth half a win",
        more="Turn the labels into booleans, put the defective scores in a column and the normal scores in a row so broadcasting builds the whole P x N table; count 1 where the column's score is larger, 0.5 where the two are equal, and return the table's mean as a float.",
    ),
    exercise(
        "the best F1 over all thresholds",
        task=r"""
I-F1max is the F1 score at the **best** threshold. Write `my_f1_max(scores, labels)`: try every score as a
threshold (anomalous = score >= threshold), compute precision, recall and F1 = 2PR / (P + R), return the
largest F1.
""",
        solution=r"""
import numpy as np


def my_f1_max(scores, labels):
    s, y = np.asarray(scores, float), np.asarray(labels).astype(bool)
    best = 0.0
    for thr in np.unique(s):
        flagged = s >= thr
        tp = (flagged & y).sum()
        if tp == 0:
            continue
        precision, recall = tp / flagged.sum(), tp / y.sum()
        best = max(best, 2 * precision * recall / (precision + recall))
    return float(best)
""",
        stub=r"""
import numpy as np


def my_f1_max(scores, labels):
    # your code: for each distinct score as threshold (>=), precision, recall, F1; keep the best
    raise NotImplementedError
""",
        check=r"""
import numpy as np

from unistad_edu.course import check
from unistad_edu.metrics import f1_max

_rng = np.random.default_rng(1)
_y = _rng.integers(0, 2, 60)
_s = _rng.random(60) + 0.3 * _y
check("Exercise 2 (F1-max)", lambda: my_f1_max(_s, _y), lambda: f1_max(_s, _y), hint={hint})
""",
        hint="try every score as the threshold; at each, count what is flagged and what of it is truly defective; a threshold that catches nothing has no F1",
        more="Loop over the distinct scores as thresholds with greater-or-equal; true positives are flagged and defective, precision divides them by everything flagged and recall by every defective image; skip a threshold with no true positive and keep the largest F1, starting from 0.",
    ),
    md(r"""
## Check yourself

**Exercise.** (1) A colleague reports "P-AUROC 95 %" for a scratch detector. What two other numbers would
you ask for, and why? (2) In section 3, which category's F1-max would you discount most, and by how much?
(3) Set `threshold_quantile` to 0.9 in `train_cfg`, rerun, and predict first: which columns of the cost
table move, and which cannot? (4) Why can no threshold rule — however clever — close the gap between the
"best shared" and the "own F1-max" columns of a unified model?

The cell checks the lesson's claims on this run's numbers:

1. **Regions vs pixels**: in every category where the small repair covers ≥ 3 regions, it raises AUPRO more
   than repairing the largest region — and on average AUPRO separates the two repairs far more than P-AUROC
   does (by at least 3× as much).
2. **F1-max moves with the defect share, I-AUROC does not**: with every other defective image left out, the
   categories' I-F1max changes at least twice as much on average as their I-AUROC; and the order of the
   categories by I-AUROC is not settled by this test set — at least two neighbours in it have overlapping
   95 % intervals.
3. **The normal-only threshold costs**: the calibrated threshold loses at least 0.05 mean F1 against the
   per-category oracles (that the oracles cannot be beaten is true by construction, so it is not checked).
"""),
    code(r"""
small_wins = [c for c in CATEGORIES if repairs[c]["n_small"] >= 3]
gap_pro = np.mean([repairs[c]["dPRO_small"] - repairs[c]["dPRO_large"] for c in CATEGORIES])
gap_pa = np.mean([abs(repairs[c]["dPA_small"] - repairs[c]["dPA_large"]) for c in CATEGORIES])
print(f"1. categories with >= 3 small regions repaired: {small_wins}; AUPRO gain small - large: "
      + ", ".join(f"{c} {repairs[c]['dPRO_small'] - repairs[c]['dPRO_large']:+.3f}" for c in small_wins)
      + f"\n   mean AUPRO gap {gap_pro:.4f} vs mean |P-AUROC gap| {gap_pa:.4f}")
assert small_wins, "no category had three small regions to repair"
assert all(repairs[c]["dPRO_small"] > repairs[c]["dPRO_large"] for c in small_wins), "AUPRO did not favour many small regions"
assert gap_pro >= 3 * gap_pa, "AUPRO did not separate the two repairs more than P-AUROC"

print(f"2. mean change with half the defects: I-F1max {moved_f1:.3f} vs I-AUROC {moved_auroc:.3f}; "
      f"neighbours with overlapping intervals: {len(unsettled)}")
assert moved_f1 >= 2 * moved_auroc, "F1-max did not move more than I-AUROC with the defect share"
assert unsettled, "every neighbour in the I-AUROC order was separated by its interval"

own, shared, cal = np.mean(list(f1_own.values())), mean_f1(shared_thr), mean_f1(threshold)
print(f"3. mean F1: own oracle {own:.3f} >= best shared {shared:.3f} >= calibrated {cal:.3f}; cost {own - cal:.3f}")
assert own - cal >= 0.05, "the normal-only threshold cost less than 0.05 mean F1"
"""),
]
