"""Lesson 08 -- two heterogeneous students joined by a Noisy-OR. Cells for
``notebooks/08_dual_students_noisy_or.ipynb`` (built by ``notebooks/_build.py``)."""

from _cells import code, exercise, md

CELLS = [
    md(r"""
# Lesson 08 — Two different students, one probability: the Noisy-OR

Every model so far produced an anomaly **map** and took the image score from it. That suits *local* defects
— a scratch, a crack, a stain. It misses a different kind of anomaly: an image whose every patch looks
normal, but whose *whole* is wrong — a bottle filled to the wrong level, a missing label, the wrong object.
Park, Seo & Kim (arXiv 2509.24448) train **two heterogeneous students** on one frozen teacher:

* an **encoder–decoder (ED) student** rebuilds the teacher's mid-level patch features through a noisy
  bottleneck (as Dinomaly does): its per-patch errors give a **local** map and a map score `s_loc`;
* an **encoder–encoder (EE) student**, trained *from scratch* on the image alone, predicts the teacher's
  **image embedding** (its class token): the distance gives a **semantic** score `s_sem`, with no map.

Each score becomes a probability, and the two are joined by a **Noisy-OR** — "anomalous if either detector
fires", assuming the two fire independently:

$$P(\text{anomaly}) = 1 - (1 - p_{loc})(1 - p_{sem}).$$

The paper uses the Noisy-OR both as the image score and as a joint training objective. There is no public
code; **our reading** (`unistad_edu/methods/dual_student.py`): each branch is a detector that should be near 0 on a
normal image, so `p = sigmoid((s − offset) / T)` with the offset at the **95 % point** of the branch's scores on
**normal** images (`p = 0.5` there) and the temperature `T` set so that the normal **median** gets `p = 0.01`
(both measured on the held-out normal training images after training); the joint objective is `−log(1 − P)`
on normal images; the `cpu` preset's teacher is Lite0. A CNN has no class token, so the EE student's target is the
**ImageNet embedding of the whole network Lite0 was cut from** (all its stages, head and pooling: 1280
numbers per image at 224 px, frozen, `semantic_target="imagenet"`); with a ViT teacher it is the class token.
(An earlier version regressed the pooled deepest *teacher* level, 112 numbers with little meaning: the
semantic branch alone scored 5.5 points lower with it -- `docs/benchmarks.md`, "Dual students and enhanced
STPM".) Every formula choice
is documented in the module's paper card. The `combine` switch picks the image score: `noisy_or`, `sum`
(`z_loc + z_sem`), `local` or `semantic` — one trained model, four ways to score it, all through the shared
scoring path (`unistad_edu.scoring`).
"""),
    md(r"""
### Paper vs. ours

| aspect | the paper states (source) | what we built (`methods/dual_student.py`) | our reading / why |
|---|---|---|---|
| teacher | a frozen **DINOv2** ViT, shared by both students [paper] | `cpu` preset: Lite0, 256 px; `paper` preset: DINOv2 ViT-B/14-reg, blocks 2–9 (+ 11 for the class token), 392 px | ViT size and 392 px follow Dinomaly [inference] |
| ED student & loss | rebuilds averaged mid-level features in **two groups**, `½ Σ_g (1 − cos(vec T_g, vec S_g))` [summary] | 4 pre-norm blocks (`paper`: 8), `ed_groups`; `paper`: noisy bottleneck (dropout 0.2) and hard mining 0.9 / 0.1, both off in `cpu`, which instead jitters the input tokens (UniAD's feature jitter, alpha 5; all compared on validation, lesson 16) | softmax attention (Dinomaly: linear); a fixed mining share |
| EE student | a DINOv2-architecture encoder from scratch regresses the **class token** [summary] | `cpu`: ResNet-10-T at 128 px → Lite0's 1280-d ImageNet embedding; `paper`: ViT-S/14-reg → the class token | a CNN teacher has no class token |
| scores | a local map and a semantic distance [summary/inference] | `s_loc`: per-group `1 − cos`, mean, σ 4, top-1 % mean; `s_sem`: `1 − cos` of the embeddings | Dinomaly's scoring [inference] |
| Noisy-OR | `P = 1 − (1 − p_loc)(1 − p_sem)`, as training objective and image score [paper] | `p = sigmoid((s − offset) / T)`: 0.5 at the normal 95 % point, 0.01 at the median; `−log(1 − P)` × 0.1 | p near 0 on normals, so the OR acts as an OR |
| training recipe | not retrieved: image size, schedule, DINOv2 size; no code found | `cpu`: AdamW 1e-3, cosine, 20 epochs, batch 8; `paper`: AdamW 2e-3, 45 epochs, batch 16 | 45 epochs ≈ Dinomaly's 10k steps [inference] |
| this lesson | — | quick mode: ≤ 40 images per category, 128 px, stride-8 tokens, EE at 128 px, 4 epochs | full mode on a GPU takes the `paper` preset |

Labels: [paper] is the abstract and [summary] a third-party summary (the full paper, arXiv 2509.24448, was not
read here); [inference] is our reading.
"""),
    code(r"""
import dataclasses
import os

import numpy as np
import plotly.graph_objects as go
import torch
from IPython.display import Markdown, display

from unistad_edu import TrainConfig, build_model, engine, evaluate, fit, report, viz
from unistad_edu.course import lesson_data, method_and_teacher, setup
from unistad_edu.metrics import auroc
from unistad_edu.scoring import combine_scores, noisy_or, noisy_or_nll, standardize

# real data: two categories with local defects, and juice_bottle (MVTec LOCO), whose test defects are *logical*
# anomalies -- wrong fill level, missing or swapped label -- the kind the semantic student is meant for
QUICK_CATEGORIES = ["bottle", "cookie", "juice_bottle"]
lesson = setup(QUICK_CATEGORIES)   # quick/full switch (UNISTAD_QUICK), device, data, categories, preset
QUICK, device, root, CATEGORIES = lesson.quick, lesson.device, lesson.root, lesson.categories
# quick: 128 px, tokens at stride 8 (a 16 x 16 grid, as the cpu preset at 256 px), the EE student at 128 px,
# 4 epochs (~50 optimiser steps of 8 images); full: the preset's recipe
OVERRIDES = dict(image_size=128, feature_stride=8, ee_image_size=128, epochs=4) if QUICK else {}
N_TRAIN = 40 if QUICK else None       # at most this many normal training images per category (None: all)
N_TEST = 40 if QUICK else None        # at most this many test images per category (None: all)
SEED = 0
print(lesson.describe(overrides=OVERRIDES))
"""),
    md(r"""
## 1. Data, teacher, model

The ED student reads only teacher features (from the cache); the EE student reads the **image** — never the
teacher's patch tokens — so this model keeps the training images in memory too.
"""),
    code(r"""
cfg, teacher = method_and_teacher(lesson, "dual_student", init_seed=SEED, **OVERRIDES)  # cpu preset if offline
PRESET = lesson.preset
SIZE = cfg.image_size

train, test, cache = lesson_data(lesson, SIZE, N_TRAIN, N_TEST, teacher)  # capped sets + warm cache
model = build_model("dual_student", teacher, cfg=cfg).to(device)
n_ed, n_ee = (sum(p.numel() for p in part.parameters()) for part in (model.ed, model.ee))
print(f"train: {len(train)} normal images; test: {len(test)} images, by category: "
      + ", ".join(f"{c} {v}" for c, v in test.counts().items()))
print(f"ED student {n_ed:,} parameters (groups {model.groups} on a {model.grid[0]} x {model.grid[1]} grid); "
      f"EE student ({cfg.ee_backbone}, from scratch) {n_ee:,} parameters, predicting a "
      f"{model.semantic_dim}-d image embedding"
      + (" (the ImageNet network Lite0 was cut from)" if model.semantic_net is not None else " (the class token)"))
"""),
    md(r"""
## 2. Train

The loss is the ED student's global-cosine loss + the EE student's cosine distance + 0.1 × the joint
Noisy-OR term `−log(1 − P)` on the (normal) training images. After the last epoch, `fit` hands the held-out
normal images to the model's `calibrate`: the median and the 95 % point of both scores on them become each
branch's offset and temperature (`model.or_calibration()`), used at test time. (While training, the same
anchors come from a running mean and std of the scores.)
"""),
    code(r"""
tcfg = TrainConfig(seed=SEED, device=device, progress=False)
res = fit(model, train, tcfg, cache=cache)
model.eval()
calib = model.or_calibration()                                     # {branch: (offset, temperature)}
print(f"{res.epochs_done} epochs in {res.seconds:.0f} s, loss {res.history[0]['loss']:.3f} -> {res.history[-1]['loss']:.3f}")
for name, (offset, temp) in calib.items():
    print(f"{name!r} branch (held-out normal images): p = 0.5 at s = {float(offset):.4g} (their 95 % point), "
          f"temperature {float(temp):.4g}")
viz.loss_curve(res.history, title="dual-student training loss").show()
"""),
    md(r"""
## 3. Re-derive, then verify: from two scores to P

`model.score(batch)` returns the shared scoring path's `AnomalyOutput`: the pixel map (from the ED student
only), the two raw per-image scores in `image_scores` (`"map"` = `s_loc`, `"semantic"` = `s_sem`), the
image score, and, for `noisy_or`, the probability `P`. We recompute `z = (s − offset) / T`, `p` and `P` from
the raw scores with the functions of `unistad_edu.scoring` and the model's calibration, and check them against
the library.
"""),
    code(r"""
def batch_of(indices):  # these test images (B, 3, S, S) with their cached teacher features (engine.batch_of)
    return engine.batch_of(test, indices, cache, device)


ids = list(range(len(test)))
s_loc, s_sem, P_lib, score_lib = [], [], [], []
with torch.no_grad():
    for k in range(0, len(ids), 16):
        out = model.score(batch_of(ids[k:k + 16]))
        s_loc.append(out.image_scores["map"])
        s_sem.append(out.image_scores["semantic"])
        P_lib.append(out.probability)
        score_lib.append(out.pred_score)
s_loc, s_sem, P_lib, score_lib = (torch.cat(v).float().cpu() for v in (s_loc, s_sem, P_lib, score_lib))
calib_cpu = {k: (float(m), float(s)) for k, (m, s) in calib.items()}
z = standardize({"map": s_loc, "semantic": s_sem}, calib_cpu)       # z = (s - offset) / temperature
p_loc, p_sem = torch.sigmoid(z["map"]), torch.sigmoid(z["semantic"])
P = noisy_or(p_loc, p_sem)                                          # 1 - (1 - p_loc)(1 - p_sem)
torch.testing.assert_close(P, 1 - (1 - p_loc) * (1 - p_sem))
torch.testing.assert_close(P, P_lib, rtol=1e-4, atol=1e-5)
torch.testing.assert_close(score_lib, noisy_or_nll(z["map"], z["semantic"]), rtol=1e-4, atol=1e-5)
print(f"z, p and P re-derived for {len(ids)} test images: OK; the image score is -log(1 - P) "
      "(same order as P, but it never rounds to a tie at P = 1)")
labels = np.array([r.label for r in test.records])
cats = np.array([r.category for r in test.records])
"""),
    md(r"""
## 4. Two students, two opinions

Each test image is a point: its local logit `z_loc` (ED student) against its semantic logit `z_sem` (EE
student). `z = 0` is the 95 % point of normal images (`p = 0.5`), a typical normal image sits near
`z = −4.6` (`p = 0.01`), and `z > 0` means the branch fires. Hover for the file and defect type. If the two students were redundant, the points
would lie along a line; where the defects leave the normal cloud *along one axis only*, that student saw
something the other did not.
"""),
    code(r"""
def hover(i):
    r = test.records[i]
    return f"{r.category} / {r.defect} / {os.path.basename(r.path)}"


fig = go.Figure()
symbols = dict(zip(CATEGORIES, ("circle", "diamond", "square", "x", "triangle-up", "cross")))
for c in CATEGORIES:
    for value, label, colour in ((0, "normal", "#2e86c1"), (1, "defect", "#c0392b")):
        sel = np.flatnonzero((cats == c) & (labels == value))
        fig.add_trace(go.Scatter(x=z["map"][sel].numpy(), y=z["semantic"][sel].numpy(), mode="markers",
                                 name=f"{c}: {label}", marker=dict(color=colour, symbol=symbols.get(c, "circle"),
                                                                   size=8, opacity=0.7),
                                 text=[hover(i) for i in sel],
                                 hovertemplate="%{text}<br>z_loc %{x:.2f}, z_sem %{y:.2f}<extra></extra>"))
fig.add_hline(y=0, line=dict(dash="dot", color="gray"))
fig.add_vline(x=0, line=dict(dash="dot", color="gray"))
fig.update_layout(title="local vs semantic logit of every test image (0 = the normal images' 95 % point)",
                  xaxis_title="z_loc  (ED student: map score)", yaxis_title="z_sem  (EE student: embedding distance)",
                  height=520)
fig.show()


def rank(v):
    return np.argsort(np.argsort(v))


spearman = float(np.corrcoef(rank(s_loc.numpy()), rank(s_sem.numpy()))[0, 1])
print(f"rank correlation of the two scores over the test images: {spearman:.2f}")
"""),
    md(r"""
## 5. The Noisy-OR surface

Each logit becomes a probability, `p = sigmoid(z)`, and the two are joined by
`P = 1 − (1 − p_loc)(1 − p_sem)`. Below, that surface over the unit square, and every test image placed on
it at its `(p_loc, p_sem)`. Rotate it: `P` is 0 only in the corner where *both* students are sure the image
is normal, and climbs to 1 along *both* far edges — one confident student is enough. The second figure shows
the same surface from above, with its contour lines.
"""),
    code(r"""
grid = np.linspace(0, 1, 41)
GL, GS = np.meshgrid(grid, grid)                                     # rows: p_sem, columns: p_loc
surface = noisy_or(torch.tensor(GL), torch.tensor(GS)).numpy()       # P on the grid, from the package
point_text = [hover(i) + f"<br>p_loc {p_loc[i]:.2f}, p_sem {p_sem[i]:.2f}, P {P[i]:.3f}" for i in ids]

fig3d = go.Figure(go.Surface(x=grid, y=grid, z=surface, colorscale="Viridis", opacity=0.75, showscale=False,
                             contours=dict(z=dict(show=True, start=0.1, end=0.9, size=0.1, color="white")),
                             hoverinfo="skip"))
for value, label, colour in ((0, "normal", "#2e86c1"), (1, "defect", "#c0392b")):
    sel = np.flatnonzero(labels == value)
    fig3d.add_trace(go.Scatter3d(x=p_loc[sel].numpy(), y=p_sem[sel].numpy(), z=P[sel].numpy(), mode="markers",
                                 name=label, marker=dict(size=4, color=colour),
                                 text=[point_text[i] for i in sel], hovertemplate="%{text}<extra></extra>"))
fig3d.update_layout(title="P = 1 - (1 - p_loc)(1 - p_sem), and the test images on it", height=600,
                    scene=dict(xaxis_title="p_loc", yaxis_title="p_sem", zaxis_title="P(anomaly)"))
fig3d.show()

fig2d = go.Figure(go.Contour(x=grid, y=grid, z=surface, colorscale="Viridis", contours=dict(start=0.1, end=0.9, size=0.1,
                                                                                           showlabels=True),
                             colorbar=dict(title="P"), hoverinfo="skip", opacity=0.8))
for value, label, colour in ((0, "normal", "#2e86c1"), (1, "defect", "#c0392b")):
    sel = np.flatnonzero(labels == value)
    fig2d.add_trace(go.Scatter(x=p_loc[sel].numpy(), y=p_sem[sel].numpy(), mode="markers", name=label,
                               marker=dict(color=colour, size=7, line=dict(color="white", width=1)),
                               text=[point_text[i] for i in sel], hovertemplate="%{text}<extra></extra>"))
fig2d.update_layout(title="the same surface from above: contour lines of P", xaxis_title="p_loc", yaxis_title="p_sem",
                    height=520, width=640)
fig2d.show()
normal = torch.from_numpy(labels == 0)
print(f"normal test images (never used for the calibration): median p_loc {float(p_loc[normal].median()):.3f}, "
      f"median p_sem {float(p_sem[normal].median()):.3f}, median P {float(P[normal].median()):.3f}")
fires_loc, fires_sem = p_loc > 0.5, p_sem > 0.5
for name, sel in (("only the local branch fires", fires_loc & ~fires_sem),
                  ("only the semantic branch fires", fires_sem & ~fires_loc),
                  ("both fire", fires_loc & fires_sem), ("neither fires", ~fires_loc & ~fires_sem)):
    n_def = int((sel & ~normal).sum())
    print(f"{name:32s}: {int(sel.sum()):3d} test images ({n_def} defective), "
          + (f"median P {float(P[sel].median()):.2f}" if sel.any() else "none"))
"""),
    md(r"""
Look at where the **normal** images sit: in the corner near `P = 0`, because each branch's probability is
anchored on normal images (median `p` = 0.01 on the held-out ones by construction; the printout above
measures it on the normal *test* images, which the calibration never saw). An image leaves the corner
only if *at least one* branch leaves its normal range, and then `P` is at least that branch's `p`: the table of
"only one fires" rows is the OR at work — one confident student is enough, the other may stay silent.
Compare the `sum` rule, which adds the two z-scores: there a moderately high score in *both* branches counts
as much as one clear detection. `P` is still not a calibrated probability of a defect (the anchors are
quantiles of normal scores, not of defects); the verdict's threshold still comes from normal images (as `fit`
does). The Noisy-OR's independence assumption is also only an assumption — section 4's rank correlation
tells you how far from independent the two students are on these images.

## 6. Four ways to score one model

`combine` only chooses the image score: it is the last step of the scoring path
(`scoring.combine_scores`), applied to the raw per-image scores — the map's and the semantic student's — that
`evaluate` keeps in its outputs (`terms`). So we score the test set once, then switch the rule on the trained
model and re-run only that step, with the calibration the rule uses (`model.score_calibration()`). The pixel
map comes from the ED student alone — the semantic student has no map — so the pixel metrics cannot change;
only the image-level ones can (the cell checks it on a few images scored under every rule).
"""),
    code(r"""
RULES = ("noisy_or", "sum", "local", "semantic")
TRAINED = model.cfg
table, scored = evaluate(model, test, cache=cache, progress=False, return_outputs=True)   # scored once
raw = {k: torch.from_numpy(v) for k, v in scored["terms"].items()}   # {"map": (N,), "semantic": (N,)}
few = batch_of(ids[:8])
tables, few_maps = {}, {}
for rule in RULES:
    model.cfg = dataclasses.replace(TRAINED, combine=rule)           # a test-time switch: no retraining
    scores = combine_scores(raw, model.combine_rule(), model.score_calibration())[0].numpy()
    per_cat = {c: {"I-AUROC": auroc(scores[scored["categories"] == c], scored["labels"][scored["categories"] == c])}
               for c in CATEGORIES}
    tables[rule] = {"categories": per_cat, "mean": {"I-AUROC": float(np.mean([v["I-AUROC"] for v in per_cat.values()])),
                                                   "P-AUROC": table["mean"]["P-AUROC"], "AUPRO": table["mean"]["AUPRO"]}}
    few_maps[rule] = model.score(few).anomaly_map
    if rule == TRAINED.combine:   # the rule evaluate() scored with: the same scores, re-derived
        np.testing.assert_allclose(scores, scored["scores"], rtol=1e-5, atol=1e-6)
model.cfg = TRAINED
rows = [{"combine": rule, **{f"I-AUROC {c}": tables[rule]["categories"][c]["I-AUROC"] for c in CATEGORIES},
         "I-AUROC mean": tables[rule]["mean"]["I-AUROC"], "P-AUROC mean": tables[rule]["mean"]["P-AUROC"],
         "AUPRO mean": tables[rule]["mean"]["AUPRO"]} for rule in RULES]
display(Markdown(report.markdown_table(rows)))
viz.bar_per_class(tables, "I-AUROC", title="image AUROC per category, by combine rule").show()
"""),
    md(r"""
Read the table category by category. The semantic student has no notion of *where*: on small local defects
it is usually the weaker detector; on logical anomalies (juice_bottle, if present) it may hold its own. On
the synthetic set, whose defects are all local, expect it near chance at this budget — and then the OR can
only add false alarms to the local student's ranking.
Whether the Noisy-OR beats the best single branch depends on the data, the budget and how the branches'
errors overlap; a quick run on ~40 test images per category cannot settle it. What the Noisy-OR guarantees
is the behaviour of section 5: a confident detection by *either* student raises the image's P.

## 7. Where the map looks — and where it cannot

A few defective images with the largest gap between the two students: in the top row those the
**semantic** student ranks far above the local one, in the bottom row the reverse. The map (ED student) is shown on one colour
scale, up to the largest map value among them.
"""),
    code(r"""
with torch.no_grad():
    gap = (z["semantic"] - z["map"]).numpy()
defects = np.flatnonzero(labels == 1)
order = defects[np.argsort(gap[defects])]
pick = list(order[::-1][:3]) + list(order[:3])                      # semantic >> local, then local >> semantic
maps = []
with torch.no_grad():
    for i in pick:
        maps.append(model.score(batch_of([i])).anomaly_map[0, 0].float().cpu().numpy())
vmax = float(max(m.max() for m in maps))
green = (40, 220, 40)
tiles = [viz.mask_overlay(viz.overlay(viz.as_uint8(test[i]["image"]), m, alpha=0.55, vmin=0, vmax=vmax),
                          test[i]["mask"], color=green, alpha=0.0) for i, m in zip(pick, maps)]
titles = [f"{test.records[i].category}/{test.records[i].defect}: z_loc {z['map'][i]:.1f}, z_sem {z['semantic'][i]:.1f}"
          for i in pick]
viz.image_grid(tiles, titles, cols=3, title="top row: the semantic student's catches; bottom row: the local "
                                            "student's (ED map, green: true defect)").show()
"""),
    md(r"""
## Your turn

3 small tasks on the heart of this lesson. In the exercise notebook (`notebooks/exercises/08_dual_students_noisy_or.ipynb`) each marked cell is a stub for you to write; the check after it runs your function and the package's own on the same small inputs, and says what is still missing.
"""),
    exercise(
        "Noisy-OR",
        task=r"""
Two detectors fire independently with probabilities p1 and p2; the image is anomalous if **any** fires.
Write `my_noisy_or(p1, p2)` -> P(anomaly).
""",
        solution=r"""
def my_noisy_or(p1, p2):
    return 1 - (1 - p1) * (1 - p2)
""",
        stub=r"""
def my_noisy_or(p1, p2):
    # your code: P(anomaly) = 1 - P(neither fires)
    raise NotImplementedError
""",
        check=r"""
import torch

from unistad_edu.course import check
from unistad_edu.scoring import noisy_or

_g = torch.Generator().manual_seed(0)
_p1, _p2 = torch.rand(10, generator=_g), torch.rand(10, generator=_g)
check("Exercise 1 (Noisy-OR)", lambda: my_noisy_or(_p1, _p2), lambda: noisy_or(_p1, _p2), hint={hint})
""",
        hint="the alarm stays silent only if neither branch fires: what is the chance of that when they fire independently?",
        more="A branch stays silent with probability one minus its p; multiply the two silent chances (they are independent) and subtract that product from one -- element-wise, so it works on whole tensors as they are.",
    ),
    exercise(
        "scores on a common scale",
        task=r"""
Before two scores can be combined each is put on a common scale by a location and a scale measured on
**normal** images (for `sum`: their mean and std; for the Noisy-OR: the offset and temperature of section 2).
Write `my_standardize(scores, calibration)`: `scores` {name: (B,)}, `calibration` {name: (location, scale)}
-> {name: (s - location) / scale}; a score without calibration stays as it is.
""",
        solution=r"""
def my_standardize(scores, calibration):
    out = {}
    for name, s in scores.items():
        mean, std = calibration.get(name, (0.0, 1.0))
        out[name] = (s - mean) / std
    return out
""",
        stub=r"""
def my_standardize(scores, calibration):
    # your code: for every name, (s - mean) / std, with (0, 1) for a name not in calibration
    raise NotImplementedError
""",
        check=r"""
import torch

from unistad_edu.course import check
from unistad_edu.scoring import standardize

_g = torch.Generator().manual_seed(1)
_sc = {"map": torch.rand(6, generator=_g), "semantic": torch.rand(6, generator=_g), "other": torch.rand(6, generator=_g)}
_cal = {"map": (0.4, 0.1), "semantic": (0.2, 0.05)}
check("Exercise 2 (standardise)", lambda: my_standardize(_sc, _cal), lambda: standardize(_sc, _cal), hint={hint})
""",
        hint="a score with no calibration entry must come out unchanged: which offset and temperature do nothing?",
        more="Loop over the scores dict and look each name up in the calibration with the default pair location 0, scale 1 (a dict's get takes that default); subtract, then divide, and keep every name of the scores in the result, calibrated or not.",
    ),
    exercise(
        "the semantic student's distance",
        task=r"""
The semantic student is judged on the whole image at once: write `my_global_distance(t, s)`: (B, ...) x 2 ->
(B,), 1 - cosine similarity of the two tensors of each image, each flattened to one vector.
""",
        solution=r"""
import torch.nn.functional as F


def my_global_distance(t, s):
    return 1 - F.cosine_similarity(t.flatten(1), s.flatten(1), dim=1)
""",
        stub=r"""
import torch.nn.functional as F


def my_global_distance(t, s):
    # your code: flatten each image to a vector, 1 - cosine similarity
    raise NotImplementedError
""",
        check=r"""
import torch

from unistad_edu.course import check
from unistad_edu.methods.dual_student import global_cosine_distance

_g = torch.Generator().manual_seed(2)
_t, _s = torch.randn(3, 4, 5, 5, generator=_g), torch.randn(3, 4, 5, 5, generator=_g)
check("Exercise 3 (global distance)", lambda: my_global_distance(_t, _s), lambda: global_cosine_distance(_t, _s),
      hint={hint})
""",
        hint="one vector per image: flatten everything but the batch, then compare teacher and student vectors image by image",
        more="Flatten each tensor from dimension 1 on, so each image becomes one row, then take torch's functional cosine similarity along dimension 1 and subtract it from one -- one number per image.",
    ),
    md(r"""
## Check yourself

**Exercise.** (1) In section 5, move one image's `p_loc` from 0.5 to 0.9 by hand: how much does its `P`
change if `p_sem = 0.1`? And if `p_sem = 0.9`? Why does the Noisy-OR care less about the second detector once
the first is confident? (2) Train with `joint_weight=0` (no joint objective) and compare section 6's table.
(3) `sum` adds the z-scores, `noisy_or` adds `softplus(z)` of the anchored logits. For which images do the two
rules disagree most — look at where `softplus` is flat (every typical normal image sits there).

The cell checks the lesson's claims on this run's numbers: (a) the Noisy-OR is an OR of detectors — both
branches sit low on the normal test images (median `p` at most 0.1), and an image on which exactly one branch
fires (`p > 0.5`) is more often defective than a test image picked at random: one student's detection alone
carries information; (b) `combine` changes only the image score —
the anomaly map (so every pixel metric) is identical under all four rules; (c) the two students are not redundant: their scores
rank the test images differently (rank correlation below 0.95).
"""),
    code(r"""
med = (float(p_loc[normal].median()), float(p_sem[normal].median()))
print(f"(a) median p_loc, p_sem of the normal test images: {med[0]:.3f}, {med[1]:.3f}")
assert max(med) <= 0.1, "a branch does not sit near 0 on normal images: it is not an OR of detectors"
one = (fires_loc ^ fires_sem).numpy()
share_one, share_all = float((labels[one] == 1).mean()) if one.any() else 0.0, float((labels == 1).mean())
print(f"    defective among the {int(one.sum())} images where exactly one branch fires: {share_one:.0%} "
      f"(among all test images: {share_all:.0%})")
assert share_one > share_all, "a single branch firing says nothing about a defect here"
map_gap = max(float((m - few_maps["noisy_or"]).abs().max()) for m in few_maps.values())
print(f"(b) largest difference between the anomaly maps of {len(few.image)} images under the four rules: {map_gap:.1e}")
assert map_gap == 0, "a combine rule changed the anomaly map (and so the pixel metrics)"
print(f"(c) rank correlation of s_loc and s_sem over the test images: {spearman:.2f}")
assert spearman < 0.95, "the two students rank the images (almost) identically: nothing for the Noisy-OR to add"
"""),
]
