"""Lesson 12 -- the leaderboard. Cells for ``notebooks/12_leaderboard.ipynb`` (built by ``notebooks/_build.py``)."""

from _cells import code, exercise, md

CELLS = [
    md(r"""
# Lesson 12 — The leaderboard: every method, unified, on the same data

Lessons 02–08 each trained one method and looked inside it. This closing lesson puts them side by side:
**one model per method, trained on the normal images of all categories at once (unified), tested on the
same images**, with the same metrics (lesson 09) — and next to the accuracy, what each one **costs**: training
time, the state it stores and its inference time.

The table includes a method that is not a teacher–student at all: the **memory bank** (PatchCore-style,
`methods/memory_bank.py`). It trains nothing: it keeps the frozen teacher's locally aggregated patch features of
the normal training images (a greedy *coreset* of them) and calls a test patch anomalous by its distance to the
nearest stored normal patch. It is the honest baseline: a unified memory bank has no weights for categories to
fight over, so it suffers no cross-class interference by construction — but it pays in **memory** (the bank
grows with the training data) and in **inference time** (every test patch is compared with the bank).

Training eight methods on five categories at 256 px takes hours on this CPU, so the lesson reads the results
of `python -m unistad_edu bench leaderboard` from `docs/results/leaderboard.json` when the file is there, and
only trains (a small quick version) when it is not.

**How to read the saved table.** It is the leaderboard of 2026-12-06: every method at its `cpu` preset, trained
unified on the five shared categories, three seeds each, and scored **once** on the test set after every preset
choice had been made on a validation set built from training images only (`python -m unistad_edu data
validation`: held-out normal images and synthetic defects made from them; README "Choose on validation, report
on test"). No preset reads a category label. Choices made that way since the old table: UniAD trains on plain
shuffled batches with the loose loss, RD takes RD++'s projection and a feature jitter on its bottleneck's input,
the dual students' decoder lost its dropout and hard mining and reads jittered tokens instead, the enhanced STPM's second pair is a decoder and combines by the product, UniSTAD
scores by the max. The columns **false alarms %** and **worst product FA %** count verdicts at each run's
calibrated thresholds: the share of all normal test images flagged, and of the product that is flagged most
(the table below the main one gives every product). `docs/benchmarks.md` has the validation figures behind each
choice.
"""),
    code(r"""
import os
import time
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
from IPython.display import Markdown, display

from unistad_edu import MVTecDataset, TrainConfig, build_model, evaluate, fit, leaderboard, report, viz
from unistad_edu.cache import FeatureCache
from unistad_edu.course import method_and_teacher, setup
from unistad_edu.inference import score_dataset
from unistad_edu.methods import METHODS, make_config
from unistad_edu.metrics import save_metrics
from unistad_edu.uncertainty import bootstrap_auroc

QUICK_CATEGORIES = ["bottle", "cookie", "metal_plate"]   # for the quick retraining and the memory-bank study
lesson = setup(QUICK_CATEGORIES)
QUICK, device, root, CATEGORIES = lesson.quick, lesson.device, lesson.root, lesson.categories
RESULTS = leaderboard.find_results()            # docs/results/leaderboard.json of this checkout, or None
RETRAIN = os.environ.get("UNISTAD_RETRAIN", "0") == "1" or RESULTS is None   # True: train every method here
N_TRAIN = 30 if QUICK else None                  # normal training images per category for the live parts
N_TEST = 16 if QUICK else None                   # test images per category for the live parts
SIZE = 128 if QUICK else 256
print(lesson.describe(image_size=SIZE))
print("leaderboard:", "retrain here" if RETRAIN else f"read from {RESULTS}")
"""),
    md(r"""
## 1. The results

`bench leaderboard` takes one trained run folder per method (`python -m unistad_edu train --method … --out …`,
each with its `cpu` preset on the same data), reads its per-category metrics from `eval`, the training wall
time and peak memory recorded in the checkpoint, measures the size of the stored state (`model.safetensors`:
student weights, or the memory bank's patches) and times inference of every method **in the same process,
interleaved with a teacher-only forward on the same images** — so the speed column is a ratio that survives a
noisy, shared machine.

If the file is missing (or `UNISTAD_RETRAIN=1`), the cell below trains every registered method on a small quick
setting and measures it the same way: the numbers are then much lower and much noisier, but computed here.
"""),
    code(r"""
# quick retraining: small, cheap versions of every method (a few minutes on a CPU; full mode: each preset)
QUICK_OVERRIDES = {
    "stpm": dict(epochs=6, batch_size=8), "rd": dict(epochs=6, batch_size=8), "snl": dict(epochs=6, batch_size=8),
    "uniad": dict(hidden_dim=128, num_heads=4, ffn_dim=256, enc_layers=1, dec_layers=1, neighbor_size=5, lr=3e-3,
                  epochs=12, batch_size=8),
    "enhanced_stpm": dict(epochs=4, batch_size=8), "unistad": dict(epochs=6, batch_size=8),
    "dual_student": dict(feature_stride=8, ee_image_size=128, epochs=6, batch_size=8), "memory_bank": {},
}

if RETRAIN:
    runs_dir = Path("runs") / "lesson12"      # ignored by git
    train = MVTecDataset(root, "train", categories=CATEGORIES, image_size=SIZE).evenly(N_TRAIN)
    test = MVTecDataset(root, "test", categories=CATEGORIES, image_size=SIZE).evenly(N_TEST)
    entries = []
    for name in METHODS:
        over = dict(image_size=SIZE, **(QUICK_OVERRIDES.get(name, {}) if QUICK else {}))
        cfg, teacher = method_and_teacher(lesson, name, **over)
        model = build_model(name, teacher, cfg=cfg).to(device)
        fit(model, train, TrainConfig(device=device, progress=False), out=runs_dir / name, overwrite=True)
        save_metrics(evaluate(model, test, progress=False), runs_dir / name / "metrics.json")
        entries.append({"label": name, "run": runs_dir / name, "metrics": runs_dir / name / "metrics.json"})
    result = leaderboard.collect(entries, data=root, n_images=8 * len(CATEGORIES), batch_size=8, repeats=2,
                                 progress=False)
    result.update(date="today (retrained in this lesson)", machine="this machine")
else:
    result = leaderboard.load(RESULTS)
print(f"{len(result['rows'])} methods, measured {result.get('date')} on {result.get('machine')}")
display(Markdown(leaderboard.markdown(result)))
"""),
    md(r"""
Read the table from left to right: accuracy first (image-level I-AUROC, pixel-level P-AUROC, region-level AUPRO,
and mAD, the mean of the seven metrics), then cost. **train s** is wall time on a shared 2-core CPU — compare
methods with it only roughly; **state MiB** is what the run stores besides the frozen teacher; **ms/img** and
**speed vs teacher** come from one interleaved timing run (1.0× would be as fast as the teacher's forward pass
alone; every method runs the teacher, so all are below 1).

## 2. Per category: an explorer

The mean hides which categories a method fails on. Pick the metric and the column to rank by; the best value of
each column is bold.
"""),
    code(r"""
tables = {r["label"]: r for r in result["rows"]}     # each row carries its per-category metrics and mean
explorer = viz.results_explorer(tables)
display(explorer)
display(viz.bar_per_class(tables, metric="I-AUROC", title="I-AUROC per category, every method unified"))
"""),
    md(r"""
## 3. Accuracy against cost

Each point is one method: mean I-AUROC against inference time per image; the marker area grows with the stored
state. A method worth its cost sits up and to the left.
"""),
    code(r"""
fig = go.Figure()
for r in result["rows"]:
    fig.add_scatter(x=[r["infer_ms_per_img"]], y=[100 * r["mean"]["I-AUROC"]], mode="markers+text",
                    text=[r["label"]], textposition="top center", name=r["label"],
                    marker=dict(size=10 + 6 * np.sqrt(r["state_mib"]), opacity=0.6))
fig.update_layout(xaxis_title="inference ms / image (same timing run)", yaxis_title="mean I-AUROC x100",
                  title="accuracy vs inference cost (marker size ~ stored state)", showlegend=False, height=420)
fig.show()

by_label = {r["label"]: r for r in result["rows"]}
bank = next(r for r in result["rows"] if r["method"] == "memory_bank")
students = [r for r in result["rows"] if r["method"] != "memory_bank"]
best = max(students, key=lambda r: r["mean"]["I-AUROC"])
stpm = next((r for r in students if r["method"] == "stpm"), best)
print(f"memory bank: mean I-AUROC {100 * bank['mean']['I-AUROC']:.1f}, {bank['state_mib']:.2f} MiB stored, "
      f"{bank['infer_ms_per_img']:.1f} ms/img")
print(f"best teacher-student ({best['label']}): {100 * best['mean']['I-AUROC']:.1f}; "
      f"STPM stores {stpm['state_mib']:.2f} MiB and takes {stpm['infer_ms_per_img']:.1f} ms/img")
"""),
    md(r"""
## 4. The memory bank's bill, measured here

The table shows one bank size (the `cpu` preset keeps a coreset of 1 % of the training patches). What the bank
costs depends on how much of it is kept, and that is easy to measure live: build the same unified bank twice on
the quick data — 1 % and 10 % of the patches — and time both on the same test images. The teacher features come
from one shared cache, so the timing below is the nearest-neighbour search and the scoring path, not the teacher.
"""),
    code(r"""
cfg_mb, teacher = method_and_teacher(lesson, "memory_bank", image_size=SIZE)
train_q = MVTecDataset(root, "train", categories=CATEGORIES, image_size=SIZE).evenly(N_TRAIN)
test_q = MVTecDataset(root, "test", categories=CATEGORIES, image_size=SIZE).evenly(N_TEST)
cache = FeatureCache(teacher, SIZE)
cache.warm(train_q)
cache.warm(test_q)

RATIOS = (0.01, 0.10)
banks, costs, bank_scores = {}, [], {}
for ratio in RATIOS:
    model = build_model("memory_bank", teacher, cfg=make_config("memory_bank", lesson.preset, image_size=SIZE,
                                                                coreset_ratio=ratio)).to(device)
    t0 = time.perf_counter()
    res = fit(model, train_q, TrainConfig(device=device, progress=False), cache=cache)
    build_s = time.perf_counter() - t0
    times = []
    for _ in range(3):      # median of three timings: the machine is shared
        t0 = time.perf_counter()
        out = score_dataset(model, test_q, cache=cache, keep_maps=False)
        times.append(time.perf_counter() - t0)
    table = evaluate(model, test_q, cache=cache, progress=False)
    banks[ratio], bank_scores[ratio] = model, out
    costs.append({"coreset": f"{ratio:.0%}", "bank patches": int(model.bank.shape[0]),
                  "bank MiB": round(model.bank_mib(), 3), "build s": round(build_s, 1),
                  "ms/img (cached teacher)": round(1000 * float(np.median(times)) / len(test_q), 2),
                  "I-AUROC": round(100 * table["mean"]["I-AUROC"], 1), "P-AUROC": round(100 * table["mean"]["P-AUROC"], 1)})
display(Markdown(report.markdown_table(costs, digits=2)))

# how sure are these I-AUROCs? a 95 % bootstrap interval per category (lesson 09), for both banks
iv_rows, intervals = [], {}
for c in CATEGORIES:
    row = {"category": c}
    for ratio, o in bank_scores.items():
        sel = np.asarray(o["categories"]) == c
        intervals[c, ratio] = bootstrap_auroc(np.asarray(o["labels"])[sel], np.asarray(o["scores"])[sel])
        row[f"I-AUROC [95 % interval], {ratio:.0%} bank"] = str(intervals[c, ratio])
    iv_rows.append(row)
display(Markdown(report.markdown_table(iv_rows)))
"""),
    md(r"""
Ten times the bank is ten times the memory, and the search grows with it. What it buys in accuracy is the
column to look at — next to its interval (the second table: where the two banks' intervals overlap, this
test set cannot tell them apart): little (the check at the end asks that, in every category, the two banks' intervals overlap), because a 1 % coreset already covers the normal patches well — which is the
point of the coreset.

## 5. Why a unified bank has no interference

A teacher–student model shares its weights across categories; a memory bank shares nothing: a patch of a normal
bottle is compared with *all* stored patches, and its nearest neighbour is (almost always) a stored bottle patch.
We can count that directly: for every patch of the normal test images, which category does its nearest bank
entry come from? (The bank does not store categories; we label each entry by the training patch it came from,
finding it by a nearest-neighbour search among the labelled training patches.)
"""),
    code(r"""
from unistad_edu.engine import batches


def patches_of(model, dataset):
    # (N * h * w, D) patch features of every image (the bank's own, MemoryBank.patch_features) and each one's category
    feats = torch.cat([model.patch_features(b).float().cpu() for b in batches(dataset, batch_size=8, cache=cache,
                                                                               device=device)])
    per_image = feats.shape[0] // len(dataset)  # h * w patches per image
    cats = np.repeat([r.category for r in dataset.records], per_image)
    return feats, cats


bank_model = banks[RATIOS[0]]
train_patches, train_cat = patches_of(bank_model, train_q)
bank = bank_model.bank.float().cpu()
bank_cat = train_cat[torch.cdist(bank, train_patches).argmin(dim=1).numpy()]   # each bank entry's category
normal_test = test_q.subset([i for i, r in enumerate(test_q.records) if r.label == 0])
test_patches, test_cat = patches_of(bank_model, normal_test)
nn_cat = bank_cat[torch.cdist(test_patches, bank).argmin(dim=1).numpy()]
same = {c: float(np.mean(nn_cat[test_cat == c] == c)) for c in CATEGORIES}
display(Markdown(report.markdown_table([{"category": c, "normal test patches": int((test_cat == c).sum()),
                                      "nearest bank entry from the same category": f"{100 * same[c]:.1f} %"}
                                     for c in CATEGORIES])))
print("bank entries per category:", {c: int((bank_cat == c).sum()) for c in CATEGORIES})
"""),
    md(r"""
## Your turn

2 small tasks on the heart of this lesson. In the exercise notebook (`notebooks/exercises/12_leaderboard.ipynb`) each marked cell is a stub for you to write; the check after it runs your function and the package's own on the same small inputs, and says what is still missing.
"""),
    exercise(
        "the memory bank's score: distance to the nearest normal patch",
        task=r"""
Write `my_nearest_distance(queries, bank)`: (Q, D), (M, D) -> (Q,), the Euclidean distance from each query
patch to its nearest row of the bank.
""",
        solution=r"""
import torch


def my_nearest_distance(queries, bank):
    return torch.cdist(queries.float(), bank.float()).min(dim=1).values   # (Q,)
""",
        stub=r"""
import torch


def my_nearest_distance(queries, bank):
    # your code: all pairwise distances, the smallest per query
    raise NotImplementedError
""",
        check=r"""
import torch

from unistad_edu.course import check
from unistad_edu.methods.memory_bank import nearest_distance

_g = torch.Generator().manual_seed(0)
_q, _bank = torch.randn(20, 8, generator=_g), torch.randn(50, 8, generator=_g)
check("Exercise 1 (nearest distance)", lambda: my_nearest_distance(_q, _bank), lambda: nearest_distance(_q, _bank),
      hint={hint}, atol=1e-4)
""",
        hint="the distance from every query patch to every bank patch; a query is as anomalous as its nearest bank patch is far",
        more="torch's cdist gives the Q x M table of Euclidean distances in one call; take its minimum along the bank axis (dimension 1) and keep the values, not the indices.",
    ),
    exercise(
        "a coreset: cover the bank with few points",
        task=r"""
PatchCore keeps a **greedy coreset**: start from one random point, then repeatedly add the point farthest
from everything chosen so far. Write `my_coreset(x, n, seed)` -> the (n,) indices, the first one drawn as
`int(torch.randint(len(x), (1,), generator=torch.Generator().manual_seed(seed)))`.
""",
        solution=r"""
import torch


def my_coreset(x, n, seed):
    first = int(torch.randint(len(x), (1,), generator=torch.Generator().manual_seed(seed)))
    chosen = [first]
    nearest = torch.cdist(x, x[first:first + 1])[:, 0]   # (N,) distance to the nearest chosen point
    for _ in range(n - 1):
        nearest[chosen] = -1.0                            # never pick a chosen point again
        nxt = int(nearest.argmax())
        chosen.append(nxt)
        nearest = torch.minimum(nearest, torch.cdist(x, x[nxt:nxt + 1])[:, 0])
    return torch.tensor(chosen)
""",
        stub=r"""
import torch


def my_coreset(x, n, seed):
    # your code: the seeded first index, then n - 1 times the point with the largest distance to its nearest
    # chosen point
    raise NotImplementedError
""",
        check=r"""
import torch

from unistad_edu.course import check
from unistad_edu.methods.memory_bank import greedy_coreset

_x = torch.randn(60, 5, generator=torch.Generator().manual_seed(3))
check("Exercise 2 (coreset)", lambda: my_coreset(_x, 8, 0), lambda: greedy_coreset(_x, 8, seed=0), hint={hint})
""",
        hint="remember, for every point, how far it is from the nearest point chosen so far; the next pick is the point farthest from them all",
        more="Draw the first index exactly as the task shows, keep a vector of every point's distance to its nearest chosen point and, after each pick, update it with an element-wise minimum against the distances to the new point; make already chosen points unpickable and return the n indices as a tensor.",
    ),
    md(r"""
## 6. Check

The claims of this lesson, asserted from this run's numbers:

* the leaderboard has every method once;
* the memory bank's search time grows with the coreset (the 10 % bank is slower to search than the 1 % bank;
  that it stores ten times the patches is true by construction, so it is not checked), and the larger bank buys
  no accuracy this test set can see: in every category the two banks' 95 % intervals of I-AUROC overlap (a
  fixed bound on the difference of two point estimates would be decided by one or two quick-mode images);
* in the unified bank, a normal test patch's nearest neighbour comes from its own category for the large
  majority of patches in every category — the reason the bank has no cross-class interference.
"""),
    code(r"""
labels = [r["label"] for r in result["rows"]]
assert len(labels) == len(set(labels)) and any(r["method"] == "memory_bank" for r in result["rows"])
small, large = costs
assert large["ms/img (cached teacher)"] > small["ms/img (cached teacher)"], costs
for c in CATEGORIES:
    a, b = intervals[c, RATIOS[0]], intervals[c, RATIOS[1]]
    assert a.low <= b.high and b.low <= a.high, f"{c}: the 10 % bank is apart from the 1 % bank: {a} vs {b}"
assert min(same.values()) > 0.8, same
print("checks passed:", {c: f"{100 * v:.1f} %" for c, v in same.items()}, "|",
      f"bank 1 % -> 10 %: {small['bank MiB']} -> {large['bank MiB']} MiB, "
      f"{small['ms/img (cached teacher)']} -> {large['ms/img (cached teacher)']} ms/img, "
      f"I-AUROC {small['I-AUROC']} -> {large['I-AUROC']}")
"""),
    md(r"""
**Exercises.** (1) In section 4, try `coreset_ratio=1.0` (the whole bank): how much accuracy does the coreset
give up, and at what memory? (2) Re-run section 5 on *defective* test images: where do the nearest neighbours
of defect patches come from? (3) Train one more run with `python -m unistad_edu train --method … --out …` and
add it to the leaderboard with `python -m unistad_edu bench leaderboard --entry LABEL RUN …`.
"""),
]
