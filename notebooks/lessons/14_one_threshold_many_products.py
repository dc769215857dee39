"""Lesson 14 -- one threshold, many products: per-category calibration without test-time labels.
Cells for ``notebooks/14_one_threshold_many_products.ipynb`` (built by ``notebooks/_build.py``)."""

from _cells import code, exercise, md

CELLS = [
    md(r"""
# Lesson 14 — One threshold, many products

**After this lesson you can** say why one threshold for a unified model's scores judges some products far
more harshly than others; route an image to its product from pixels alone (the frozen teacher's embedding);
set each product's threshold from a model of its normal scores' tail; put scores of different products on one
scale; and report a detector's false alarms per product **with an interval** and the floor its calibration
data allows.

A unified model answers one question per image: normal or defective. Until now (lesson 09, section 6) that
answer came from **one** threshold: the 0.99 quantile of the scores of held-out normal training images of
*all* categories pooled. But the categories' normal scores sit at different heights, so the pooled quantile
is set by the category whose normal images score highest — and every other category is judged against it.
This lesson measures what that costs, then does what a production line needs: a threshold **per product**,
without being told the product at test time.
"""),
    code(r"""
import numpy as np
import plotly.graph_objects as go
from IPython.display import Markdown, display

from unistad_edu import MVTecDataset, TrainConfig, build_model, evaluate, fit, predict, report
from unistad_edu.cache import FeatureCache
from unistad_edu.calibration import clopper_pearson, floor_rate, tail_threshold
from unistad_edu.course import method_and_teacher, setup
from unistad_edu.metrics import auroc

lesson = setup(None)   # quick/full switch (UNISTAD_QUICK), device, data; every category present
QUICK, device, root, CATEGORIES = lesson.quick, lesson.device, lesson.root, lesson.categories
SIZE = 96 if QUICK else 256
print(lesson.describe(image_size=SIZE))
"""),
    md(r"""
## 1. One model, two calibrations

We train the **memory bank** (lesson 12): it needs no epochs, so the lesson's time goes to the question at
hand. `fit` keeps 10 % of each category's normal training images out of training — at least 10 where the
category has 30 or more, so each category's score tail can be estimated — and calibrates twice from them:

* the **pooled** threshold: the 0.99 quantile of all held-out scores (the rule of lesson 09);
* **per category**: each category's centroid in the teacher's embedding space (from its training images) and a
  threshold from its own held-out scores.

(`refit=False`: the bank that is judged is the bank whose held-out scores set the thresholds. With a refit the
bank would grow by the held-out images afterwards and score new images lower than the thresholds assume.)
"""),
    code(r"""
cfg, teacher = method_and_teacher(lesson, "memory_bank", image_size=SIZE)
train = MVTecDataset(root, "train", categories=CATEGORIES, image_size=SIZE)
test = MVTecDataset(root, "test", categories=CATEGORIES, image_size=SIZE)
cache = FeatureCache(teacher, SIZE)
model = build_model("memory_bank", teacher, cfg=cfg)
fit(model, train, TrainConfig(progress=False, refit=False, seed=0, device=device), cache=cache)
table, res = evaluate(model, test, cache, progress=False, return_outputs=True)
cal = model.verdict_calibration
glob, per = table["false_alarms_global"], table["false_alarms"]
print(f"calibration: {cal.describe()}")
print(f"pooled threshold {cal.global_threshold:.4g}; held-out normals per category:",
      {c: g["n"] for c, g in cal.groups.items()})
"""),
    md(r"""
## 2. What one threshold does to each product

For every category: how many of its **normal** test images the pooled threshold flags (false alarms), with a
95 % Clopper–Pearson interval — the test sets hold 14 to 100-odd normal images per category, so a rate is
uncertain by several points — and how many of its defective images it catches (recall).
"""),
    code(r"""
def verdict_rows(far):
    rows = []
    for c, v in far["categories"].items():
        lo, hi = v["ci95"]
        rows.append({"category": c, "false alarms": f"{v['alarms']}/{v['normal']}", "rate %": 100 * v["rate"],
                     "95 % interval %": f"{100 * lo:.1f}-{100 * hi:.1f}", "recall %": 100 * v["recall"],
                     "F1 %": 100 * v["f1"]})
    return rows


display(Markdown(f"**One pooled threshold ({glob['threshold']:.4g})**\n\n"
                 + report.markdown_table(verdict_rows(glob), digits=1)))
"""),
    md(r"""
The pooled threshold is one number for products whose normal scores do not share a scale: a category whose
normal images score low gets a threshold far above its normal range (few false alarms, and defects slip
through), while the category that scores highest sets the threshold for everyone.

## 3. Which product is it? Routing from pixels

Lesson 01 showed that the teacher's globally pooled deepest level tells the categories apart. The calibration
keeps, per training category, the centroid of those embeddings (unit length, cosine distance) and a radius: twice
as far as that category's own training images go. A test image is routed to the nearest centroid — no label
is read — and one outside every radius is reported as unlike anything the model was trained on.
"""),
    code(r"""
decisions = cal.decide(res["scores"], res["embeddings"])
routed = np.array([d["category"] for d in decisions])
accuracy = float(np.mean(routed == res["categories"]))
print(f"routing accuracy on {len(routed)} test images (normal and defective): {100 * accuracy:.1f} %")
confusion = {c: {r: int(np.sum((res["categories"] == c) & (routed == r))) for r in cal.router.names}
             for c in cal.router.names}
display(Markdown(report.markdown_table([{"true \\ routed": c, **row} for c, row in confusion.items()])))
odd = predict(model, [np.full((SIZE, SIZE, 3), 127, np.uint8)])[0]   # a flat grey frame: no product at all
print("a flat grey frame:", odd["category"], "-", odd["notice"])
"""),
    md(r"""
## 4. A threshold per product, from a model of its tail

With n held-out normal scores, a quantile rule cannot resolve a false-alarm rate below 1 / (n + 1): the 0.99
quantile of 10 scores is practically their maximum, which a new normal image exceeds about 1 time in 11. So
each category's threshold comes from a **tail model** fitted to its held-out scores: here the one-sided
*prediction bound* of a log-normal, `exp(m + t(0.99, n-1) * s * sqrt(1 + 1/n))` with m and s the mean and standard
deviation of the log-scores — a new normal image exceeds it with probability 1 % when the log-scores are normal,
the uncertainty of m and s included. (`python -m unistad_edu bench calibration` compares the tail models on
held-out scores; `docs/benchmarks.md`, "Calibration", says why this one.)
"""),
    code(r"""
rows = []
for c, g in cal.groups.items():
    s = np.asarray(g["scores"])
    rows.append({"category": c, "held-out n": g["n"], "max held-out": s.max(),
                 "empirical 0.99 quantile": tail_threshold(s, 0.99, "empirical")[0],
                 "log-normal bound (used)": g["threshold"], "floor 1/(n+1) %": 100 * floor_rate(g["n"])})
display(Markdown(report.markdown_table(rows, digits=3)))
display(Markdown("**Each image at its routed category's threshold**\n\n"
                 + report.markdown_table(verdict_rows(per), digits=1)))
"""),
    md(r"""
## 5. One scale for every product

A ranking of all images of a line — "which ten should a person look at first?" — needs scores that mean the
same for every product. The **standardised score** `z = (s - mean_c) / std_c` of the routed category c (mean and
standard deviation of its held-out normal scores) is that scale. The **pooled** I-AUROC, over all test images
mixed, measures such a ranking; it is not the mean of the per-category AUROCs.
"""),
    code(r"""
z = np.array([d["z"] for d in decisions])
labels = res["labels"].astype(bool)
pooled_raw, pooled_z = auroc(res["scores"], labels), auroc(z, labels)
print(f"mean of per-category I-AUROC: {100 * table['mean']['I-AUROC']:.1f}")
print(f"pooled I-AUROC, raw scores:   {100 * pooled_raw:.1f}")
print(f"pooled I-AUROC, z-scores:     {100 * pooled_z:.1f}")
"""),
    md(r"""
## 6. The worst product and the recall, on one chart

What a person running the line asks of the two calibrations: how often is the **worst** product's normal image
flagged, and how many defects are caught over all products?
"""),
    code(r"""
def summary(far):
    worst = max(far["categories"].items(), key=lambda kv: kv[1]["rate"])
    recalls = [v["recall"] for v in far["categories"].values()]
    return {"worst category": worst[0], "worst false alarms %": 100 * worst[1]["rate"],
            "mean recall %": 100 * float(np.mean(recalls)), "min recall %": 100 * float(np.min(recalls)),
            "mean F1 %": 100 * far["mean_f1"], "pooled false alarms %": 100 * far["all"]}


S = {"one pooled threshold": summary(glob), "routed, per category": summary(per)}
display(Markdown(report.markdown_table([{"calibration": k, **v} for k, v in S.items()], digits=1)))
fig = go.Figure()
for key in ("worst false alarms %", "mean recall %", "min recall %", "mean F1 %"):
    fig.add_bar(name=key, x=list(S), y=[S[k][key] for k in S])
fig.update_layout(barmode="group", yaxis_title="%", height=380, title="Verdicts of one model, two calibrations")
fig.show()
"""),
    md(r"""
## Check yourself

The claim of this lesson, on this run's own numbers: routing recognises the products from pixels (at least 95 %
of the test images go to their own category), and per-category thresholds judge every product by its own
normal range — the product worst served by the pooled threshold (the lowest recall) is served better, and
the mean F1 over products is higher. (Their false-alarm rates are estimates from 14–100 normal images each:
read them with their intervals.)
"""),
    code(r"""
worst_served = min(glob["categories"], key=lambda c: glob["categories"][c]["recall"])
print(f"worst served by the pooled threshold: {worst_served} (recall "
      f"{100 * glob['categories'][worst_served]['recall']:.1f} % -> "
      f"{100 * per['categories'][worst_served]['recall']:.1f} % with its own threshold)")
assert accuracy >= 0.95, f"routing accuracy {accuracy:.3f}"
assert per["categories"][worst_served]["recall"] > glob["categories"][worst_served]["recall"]
assert per["mean_f1"] > glob["mean_f1"], (per["mean_f1"], glob["mean_f1"])
print("checks passed")
"""),
    exercise(
        "a threshold from a tail model",
        task=r"""
Write `my_bound(scores, q)`: the one-sided **normal prediction bound** of section 4 on the raw scores (not their
logarithms): the mean, plus the `q` quantile of Student's t with n - 1 degrees of freedom, times the sample
standard deviation, times sqrt(1 + 1/n).
""",
        solution=r"""
import numpy as np
from scipy import stats


def my_bound(scores, q):
    s = np.asarray(scores, dtype=float)
    n = s.size
    return float(s.mean() + stats.t.ppf(q, n - 1) * s.std(ddof=1) * np.sqrt(1 + 1 / n))
""",
        stub=r"""
import numpy as np
from scipy import stats


def my_bound(scores, q):
    # your code
    raise NotImplementedError
""",
        check=r"""
from unistad_edu.calibration import tail_threshold
from unistad_edu.course import check

_cases = [([1.0, 2.0, 3.0, 4.0, 5.0], 0.99), ([0.3, 0.35, 0.31, 0.4, 0.33, 0.36, 0.29], 0.95)]
check("Exercise 1 (prediction bound)", lambda: [my_bound(s, q) for s, q in _cases],
      lambda: [tail_threshold(s, q, "normal")[0] for s, q in _cases], hint={hint})
""",
        hint="Which standard deviation estimates a population's spread from a sample? And scipy.stats has the "
        "t distribution's percent-point function.",
        more="With n scores: take the sample std (delta degrees of freedom 1), multiply it by the t percent-point "
        "function of scipy.stats at q with n minus 1 degrees of freedom and by the square root of one plus "
        "one over n, then add the mean.",
    ),
    exercise(
        "route by the nearest centroid",
        task=r"""
Write `my_route(emb, centroids)`: for each row of `emb` (N, D), the index of the nearest of the K rows of
`centroids` (K, D) by **cosine distance** (1 - the cosine of the angle between the two vectors).
""",
        solution=r"""
import numpy as np


def my_route(emb, centroids):
    e = np.asarray(emb, float)
    c = np.asarray(centroids, float)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    return (1 - e @ c.T).argmin(axis=1)
""",
        stub=r"""
import numpy as np


def my_route(emb, centroids):
    # your code
    raise NotImplementedError
""",
        check=r"""
import numpy as np

from unistad_edu.calibration import Router
from unistad_edu.course import check

_rng = np.random.default_rng(0)
_cent = _rng.normal(size=(4, 6))
_emb = _rng.normal(size=(20, 6)) * 3
_router = Router(["a", "b", "c", "d"], _cent / np.linalg.norm(_cent, axis=1, keepdims=True), np.ones(4))
check("Exercise 2 (routing)", lambda: my_route(_emb, _cent), lambda: _router.route(_emb)[0], hint={hint})
""",
        hint="A cosine ignores length: what can you do to every vector first so that a dot product becomes the "
        "cosine?",
        more="Divide every row of both arrays by its own Euclidean length (numpy's linalg norm along axis 1, "
        "keeping the dimension); one matrix product with the transposed centroids then gives the N x K "
        "cosines, and the nearest centroid is the one with the largest cosine (the smallest one minus it).",
    ),
    exercise(
        "how sure is a false-alarm rate?",
        task=r"""
A category's test set holds `n` normal images and `k` of them were flagged. Write `my_interval(k, n)`: the
two-sided 95 % **Clopper–Pearson** interval (lower, upper) of the false-alarm rate, with lower = 0 when k = 0 and
upper = 1 when k = n.
""",
        solution=r"""
from scipy import stats


def my_interval(k, n):
    lo = 0.0 if k == 0 else float(stats.beta.ppf(0.025, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(0.975, k + 1, n - k))
    return lo, hi
""",
        stub=r"""
from scipy import stats


def my_interval(k, n):
    # your code
    raise NotImplementedError
""",
        check=r"""
from unistad_edu.calibration import clopper_pearson
from unistad_edu.course import check

_cases = [(0, 14), (1, 20), (5, 103), (39, 39)]
check("Exercise 3 (interval)", lambda: [my_interval(k, n) for k, n in _cases],
      lambda: [clopper_pearson(k, n) for k, n in _cases], hint={hint})
""",
        hint="The exact interval's ends are quantiles of beta distributions whose parameters count the "
        "flagged and the unflagged images; look up which count gets the + 1 at each end.",
        more="Use the percent-point function of scipy.stats' beta: the lower end is its 2.5 % point with "
        "parameters k and (n minus k) plus one, the upper end its 97.5 % point with k plus one and n minus "
        "k; k = 0 and k = n skip the beta and give 0 and 1.",
    ),
]
