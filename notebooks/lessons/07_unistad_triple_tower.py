"""Lesson 07 -- UniSTAD: a teacher and two context students; anomalies are broken consistencies. Cells for
``notebooks/07_unistad_triple_tower.ipynb`` (built by ``notebooks/_build.py``)."""

from _cells import code, exercise, md

CELLS = [
    md(r"""
# Lesson 07 — UniSTAD: three towers, three consistencies, and a refinement with nothing to train

Lesson 04 showed the trap of reconstruction: a network that can see the token it must rebuild learns to copy
it, defects included. **UniSTAD** (Liu & Sun, IEEE TCSVT 2025) builds a *triple tower* around that lesson:

1. a frozen, pre-trained **teacher**;
2. a **global student** that predicts each teacher token from the *global* context of the image;
3. a **local student** that predicts each teacher token from its *local* context.

Trained on normal images, the three agree. At test time the abstract flags regions "where the expected
feature consistencies are broken", and sharpens the map with an **untrained, category-agnostic refinement**.

There is no public code, and only the paper's abstract could be read here (the full paper, in IEEE TCSVT, was
not retrieved), so the mechanics are **our reading** (`unistad_edu/methods/unistad.py`, `unistad_edu/refine.py`):

| tower / map | what it sees (our reading) | catches |
|---|---|---|
| global student *G* | every token **except** a k × k window around the one it predicts (UniAD's neighbour mask) | defects up to the window's size: their own tokens are hidden, so *G* predicts "normal" there |
| local student *L* | **only** the 8 neighbours of the token, not the token itself | small defects, sharply |
| map `teacher_global` | `1 − cos(T, G)` per token, averaged over the teacher's levels | |
| map `teacher_local` | `1 − cos(T, L)` | |
| map `global_local` | `1 − cos(G, L)`: the two students disagree | anomalies that mislead one context but not the other |

The students never mix context tokens with each other, so a token's own feature cannot leak back into its
prediction (the tests check this). The refinement is a short **random walk** over the image's own teacher
tokens: each token's value is averaged with the values of the tokens whose features look most like its own.
"""),
    md(r"""
### Paper vs. ours

| aspect | the paper states (source) | what we built (`methods/unistad.py`) | our reading / why |
|---|---|---|---|
| teacher | a pre-trained **transformer** [paper] | `cpu` preset: Lite0 (a CNN), a 16 × 16 token grid at 256 px; `paper` preset: DINOv2 ViT-S/14, 224 px | both presets are ours |
| students | a **global** and a **local** student predict teacher features from global / local context [paper] | learned queries, masked cross-attention: global hides a 7 × 7 window (`global_window`), local sees 3 × 3 minus the token (`local_window`) | tokens never mix, so none leaks into its own prediction |
| loss | joint distillation, global/local context-based reconstruction, global–local consistency [paper] | `distill` (per-level `1 − cos`), `rec` (`‖S − T‖² / ‖T‖²`), `consistency` (`1 − cos(G, L)`), weights 1; the `cpu` preset scales the gradient of each student's best-predicted 90 % of tokens by 0.1 (the loose loss, chosen on validation; lesson 16) | the split is ours; no weights are published |
| anomaly map & image score | regions where the expected feature consistencies break [paper] | three maps (`maps`), fused by the mean, Gaussian σ 4, max (chosen on validation over the top-1 % mean) | one map per pair of towers |
| refinement | an untrained, category-agnostic localisation refinement [paper] | `refine`: one random-walk step over the image's teacher tokens, 8 neighbours, half the map kept | the mildest setting tried (`refine.py`) |
| training recipe | not known: only the abstract was read here; no code found | `cpu`: AdamW 1e-3, cosine, 20 epochs, batch 8; `paper`: AdamW 1e-4, 300 epochs, batch 16 | ours; never quote the paper's numbers as ours |
| this lesson | — | quick mode: ≤ 60 images per category, 128 px, tokens at stride 8 (16 × 16), 6 epochs | full mode on a GPU takes the `paper` preset |

Labels: [paper] is the paper's abstract (IEEE TCSVT 35(4), 2025), the only text of it read here.
"""),
    code(r"""
import dataclasses
import os

import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

from unistad_edu import TrainConfig, build_model, engine, evaluate, fit, report, viz
from unistad_edu.course import lesson_data, method_and_teacher, setup
from unistad_edu.methods.unistad import MAP_NAMES

QUICK_CATEGORIES = ["bottle", "cookie", "metal_plate"]   # real data: the three categories of lessons 03-06
lesson = setup(QUICK_CATEGORIES)   # quick/full switch (UNISTAD_QUICK), device, data, categories, preset
QUICK, device, root, CATEGORIES = lesson.quick, lesson.device, lesson.root, lesson.categories
# quick: 128 px with tokens at stride 8 -- the same 16 x 16 token grid as the cpu preset at 256 px, from a
# cheaper teacher pass -- and 6 epochs (~80 optimiser steps of 8 images); full: the preset's recipe
OVERRIDES = dict(image_size=128, feature_stride=8, epochs=6) if QUICK else {}
N_TRAIN = 60 if QUICK else None       # at most this many normal training images per category (None: all)
N_TEST = 40 if QUICK else None        # at most this many test images per category (None: all)
SEED = 0
print(lesson.describe(overrides=OVERRIDES))
"""),
    md(r"""
## 1. Data, teacher, feature cache, model

Both students read only the teacher's tokens — the teacher's levels resized to one grid and stacked, as in
UniAD — so UniSTAD trains from the feature cache without images.
"""),
    code(r"""
cfg, teacher = method_and_teacher(lesson, "unistad", init_seed=SEED, **OVERRIDES)  # cpu preset if offline
PRESET = lesson.preset
SIZE = cfg.image_size

train, test, cache = lesson_data(lesson, SIZE, N_TRAIN, N_TEST, teacher)  # capped sets + warm cache
model = build_model("unistad", teacher, cfg=cfg).to(device)
h, w = model.grid
print(f"train: {len(train)} normal images; test: {len(test)} images")
print(f"token grid {h} x {w}, {model.in_channels} channels per token (levels {model.level_channels}); global window "
      f"{model.global_window[0]} x {model.global_window[1]} hidden, local window {cfg.local_window} x {cfg.local_window} "
      f"minus the token; {sum(p.numel() for p in model.trainable_parameters()):,} trainable parameters")
"""),
    md(r"""
## 2. What each student may look at

Each student is a small transformer: a learned query per grid position reads the context tokens through
masked cross-attention. The mask decides everything. Below, for a token in the middle and one in a corner:
the tokens the **global** student may read when it predicts that token (yellow = visible), and the tokens
the **local** student may read. The two never read the same token, and neither reads the token it predicts;
but they are **not complementary**: the tokens inside the global student's hidden window and outside the
local one's 3 × 3 neighbourhood are read by **neither** (for a middle token, 7 × 7 − 3 × 3 = 40 of them).
"""),
    code(r"""
def visible(student, r, c):
    return (~student.mask[r * w + c]).float().reshape(h, w)      # mask: True = hidden -> 1 = visible


spots = [(h // 2, w // 2), (0, 0)]
mats, titles = [], []
for name, student in (("global", model.global_student), ("local", model.local_student)):
    for r, c in spots:
        mats.append(visible(student, r, c))
        titles.append(f"{name} student, token ({r}, {c}): {int(visible(student, r, c).sum())} visible")
viz.matrix_grid(mats, titles, cols=4, zrange=(0, 1), colorscale="Viridis", panel_height=260,
                title="which tokens a student may read (yellow) when it predicts one token").show()
for r, c in spots:
    seen_by_both = visible(model.global_student, r, c) * visible(model.local_student, r, c)
    assert seen_by_both.sum() == 0 and visible(model.global_student, r, c)[r, c] == 0
print("no token is visible to both students, and neither sees the token it predicts: OK")
r, c = spots[0]
neither = (1 - visible(model.global_student, r, c)) * (1 - visible(model.local_student, r, c))
neither[r, c] = 0                                                # the token itself aside
print(f"middle token ({r}, {c}): {int(neither.sum())} other tokens are read by neither student")
assert neither.sum() > 0                                          # a blind ring: not complementary
"""),
    md(r"""
## 3. Train

The loss has three parts (our split, weights 1 each): **distillation** — each student's per-level cosine
distance to the teacher; **reconstruction** — each student's squared error relative to the teacher's
energy, `‖S − T‖² / ‖T‖²`; **consistency** — the cosine distance between the two students.
"""),
    code(r"""
tcfg = TrainConfig(seed=SEED, device=device, progress=False)
res = fit(model, train, tcfg, cache=cache)
model.eval()
print(f"{res.epochs_done} epochs in {res.seconds:.0f} s, loss {res.history[0]['loss']:.3f} -> {res.history[-1]['loss']:.3f}")
viz.loss_curve(res.history, title="UniSTAD training loss (distillation + reconstruction + consistency)").show()


def batch_of(indices):  # these test images (B, 3, S, S) with their cached teacher features (engine.batch_of)
    return engine.batch_of(test, indices, cache, device)


normal_ids = [i for i, r in enumerate(test.records) if r.label == 0]
defect_ids = [i for i, r in enumerate(test.records) if r.label == 1]
rows = []
with torch.no_grad():
    for label, ids in (("normal", normal_ids), ("defective", defect_ids)):
        chunked = list(engine.batches(test, ids, 16, cache, device, with_indices=True))
        parts = [model.terms_from(model.forward(b)) for _, b in chunked]
        sizes = [len(p) for p, _ in chunked]
        rows.append({"test images": f"{label} ({len(ids)})",
                     **{k: sum(float(t[k]) * n for t, n in zip(parts, sizes)) / len(ids) for k in parts[0]}})
display(Markdown("**loss terms on the test images** (unweighted)\n\n" + report.markdown_table(rows, digits=4)))
"""),
    md(r"""
Every term is higher on the defective test images: a defect breaks the students' predictions of the teacher
*and* their agreement with each other. Section 4 shows where.

## 4. Three broken consistencies, on real defects

For a few defective test images (rows): the image with its defect outlined in green, then the three maps,
**without** refinement. Each map type has one colour scale for all rows (0 up to its largest value among
these images), so the columns can be compared down, not across.
"""),
    code(r"""
TRAINED = model.cfg


def with_cfg(**changes):
    # a test-time switch on the trained model (maps, refine, ...), relative to its training config:
    # no retraining, no new parameters; with_cfg() restores the config it was trained with
    model.cfg = dataclasses.replace(TRAINED, **changes)


def token_maps(ids, **changes):
    with_cfg(**{"refine": False, **changes})
    with torch.no_grad():
        out = model.anomaly_maps(batch_of(ids))                      # {name: (B, 1, h, w)}
    with_cfg()
    return {k: v[:, 0].float().cpu().numpy() for k, v in out.items()}


def mask_fraction(i):
    return float(np.asarray(test[i]["mask"]).mean())


show = []
for c in CATEGORIES:
    ids = [i for i in defect_ids if test.records[i].category == c and 0 < mask_fraction(i) < 0.2]
    show += [max(ids, key=mask_fraction)] if ids else []
raw = token_maps(show)
green = (40, 220, 40)
vmax = {k: float(v.max()) for k, v in raw.items()}
tiles, titles = [], []
for n, i in enumerate(show):
    img, msk = viz.as_uint8(test[i]["image"]), test[i]["mask"]
    tiles.append(viz.mask_overlay(img, msk, color=green, alpha=0.0))
    titles.append(f"{test.records[i].category}: {test.records[i].defect}")
    for k in MAP_NAMES:
        tiles.append(viz.mask_overlay(viz.overlay(img, raw[k][n], alpha=0.6, vmin=0, vmax=vmax[k]), msk, color=green,
                                      alpha=0.0))
        titles.append(k.replace("_", " - "))
viz.image_grid(tiles, titles, cols=1 + len(MAP_NAMES), title="the three consistency maps (no refinement)").show()
"""),
    md(r"""
Two numbers per map, over **all** defective test images: the mean map value inside the defect against the
mean outside it (token grid, a token counts as inside if the defect covers ≥ 30 % of it), and the detection
metrics of each map on its own — `maps` is another test-time switch: the trained model scores with only the
maps named there.
"""),
    code(r"""
def inside_outside(maps_by_name, ids):
    masks = torch.stack([test[i]["mask"] for i in ids]).float()
    inside = (F.interpolate(masks, size=(h, w), mode="area") > 0.3)[:, 0].numpy()   # (B, h, w)
    ok = [k for k in range(len(ids)) if inside[k].any() and (~inside[k]).any()]
    return {name: (np.array([m[k][inside[k]].mean() for k in ok]), np.array([m[k][~inside[k]].mean() for k in ok]))
            for name, m in maps_by_name.items()}


all_raw = {k: np.concatenate([token_maps(defect_ids[j:j + 16])[k] for j in range(0, len(defect_ids), 16)])
           for k in MAP_NAMES}
io_raw = inside_outside(all_raw, defect_ids)
rows = []
for k in MAP_NAMES:
    ins, outs = io_raw[k]
    with_cfg(maps=(k,), refine=False)
    table = evaluate(model, test, cache=cache, progress=False)
    rows.append({"map": k, "mean inside defects": ins.mean(), "mean outside": outs.mean(),
                 "images inside > outside": f"{(ins > outs).mean():.0%}",
                 "I-AUROC (this map alone)": table["mean"]["I-AUROC"], "P-AUROC": table["mean"]["P-AUROC"]})
with_cfg(refine=False)
table_all = evaluate(model, test, cache=cache, progress=False)
with_cfg()
rows.append({"map": "all three (mean)", "I-AUROC (this map alone)": table_all["mean"]["I-AUROC"],
             "P-AUROC": table_all["mean"]["P-AUROC"]})
display(Markdown(report.markdown_table(rows, digits=3)))
"""),
    md(r"""
The teacher–student maps localise best. The students' mutual disagreement (`global_local`) is much weaker
at localising on its own (its P-AUROC): where a defect is large, *both* students predict "normal" there and
agree with each other; they disagree mainly at a defect's borders and on defects smaller than the global
window. As an image-level signal it can still be useful. Which
combination works best is an empirical question — at quick-mode budget, do not read more than that into the
table.

## 5. The refinement: a random walk with nothing to train

For every image, `refine.py` builds a graph on its teacher tokens: each token is linked to its `knn` most
similar tokens (cosine of the teacher features, each level normalised), with weights
`softmax(similarity / temperature)`. One step replaces each map value by `α × (weighted mean over its
neighbours) + (1 − α) × (its own original value)`. No parameter is learnt, and nothing but the image's own
features is read — hence "untrained" and "category-agnostic".

Why it should help: a lone high token whose features look like many normal tokens of the same image is
averaged with their (low) values and fades; a defect's tokens look like *each other* and unlike the rest, so
they average among themselves and stay high. Two settings: the package default (1 step, knn 8, temperature
0.05, α 0.5 — mild, chosen because stronger settings did not help on the benchmark, see `refine.py`) and a
strong one (3 steps, temperature 0.1, α 1).
"""),
    code(r"""
SETTINGS = {"off": dict(refine=False),
            "default": dict(refine=True),
            "strong": dict(refine=True, refine_steps=3, refine_temperature=0.1, refine_alpha=1.0)}

refiner = model.refiner
print(f"refiner {refiner}: {sum(p.numel() for p in refiner.parameters())} parameters")

refined = {name: token_maps(show, **s) for name, s in SETTINGS.items()}
# category-agnostic, per image: each image refined alone gets the map it gets in this batch of every category's
# images -- nothing is read from the other images, a class label or a class statistic
alone = np.stack([token_maps([i], **SETTINGS["strong"])["teacher_local"][0] for i in show])
batch_gap = float(np.abs(alone - refined["strong"]["teacher_local"]).max())
print(f"{len(show)} images of {len(CATEGORIES)} categories, refined alone vs together: largest difference "
      f"{batch_gap:.2e} (the maps reach {refined['strong']['teacher_local'].max():.3g})")
K = "teacher_local"
tiles, titles = [], []
for n, i in enumerate(show):
    img, msk = viz.as_uint8(test[i]["image"]), test[i]["mask"]
    tiles.append(viz.mask_overlay(img, msk, color=green, alpha=0.0))
    titles.append(f"{test.records[i].category}: {test.records[i].defect}")
    for name in SETTINGS:
        tiles.append(viz.mask_overlay(viz.overlay(img, refined[name][K][n], alpha=0.6, vmin=0, vmax=vmax[K]), msk,
                                      color=green, alpha=0.0))
        titles.append(f"{K}, refine {name}")
viz.image_grid(tiles, titles, cols=1 + len(SETTINGS), title=f"the {K} map before and after refinement "
                                                            "(one colour scale)").show()
"""),
    md(r"""
### A lone spike against a real defect

The refinement is **linear** in the map (a fixed matrix per image, built from the features), so we can ask
exactly how much of an isolated value survives. Experiment: on every normal test image, add a spike of height
1 to one token of the unrefined map (the token with the median value — an ordinary, normal place), refine,
and measure how much of the spike is left. Against that, on every defective test image, how much of the map's
value *inside the defect* is left after refinement.
"""),
    code(r"""
def refine_with(maps, feats, name):
    with_cfg(**SETTINGS[name])
    out = model.refiner(maps, feats)
    with_cfg()
    return out


spike_keep = {n: [] for n in ("default", "strong")}
defect_keep = {n: [] for n in ("default", "strong")}
with torch.no_grad():
    for part, b in engine.batches(test, normal_ids, 16, cache, device, with_indices=True):
        feats = model.forward(b)["target"]                                  # the teacher tokens (B, C, h, w)
        with_cfg(refine=False)
        m = model.anomaly_maps(b)[K]                                        # (B, 1, h, w), unrefined
        flat = m.flatten(1)
        spot = (flat - flat.median(dim=1, keepdim=True).values).abs().argmin(dim=1)   # a median-valued token
        spiked = flat.clone()
        spiked[torch.arange(len(part)), spot] += 1.0
        spiked = spiked.reshape_as(m)
        for n in spike_keep:
            gain = (refine_with(spiked, feats, n) - refine_with(m, feats, n)).flatten(1)
            spike_keep[n] += gain[torch.arange(len(part)), spot].tolist()   # what is left of the +1
    for part, b in engine.batches(test, defect_ids, 16, cache, device, with_indices=True):
        feats = model.forward(b)["target"]
        with_cfg(refine=False)
        m = model.anomaly_maps(b)[K]
        masks = torch.stack([test[i]["mask"] for i in part]).float().to(m.device)
        inside = F.interpolate(masks, size=(h, w), mode="area") > 0.3
        for n in defect_keep:
            r = refine_with(m, feats, n)
            defect_keep[n] += [float(r[k][inside[k]].sum() / m[k][inside[k]].sum()) for k in range(len(part))
                               if inside[k].any()]
with_cfg()
spike_keep = {n: np.array(v) for n, v in spike_keep.items()}
defect_keep = {n: np.array(v) for n, v in defect_keep.items()}
display(Markdown(report.markdown_table([
    {"setting": n, "spike left (mean)": spike_keep[n].mean(), "spike left (largest)": spike_keep[n].max(),
     "defect value left (mean)": defect_keep[n].mean(), "images": f"{len(spike_keep[n])} normal / {len(defect_keep[n])} defective"}
    for n in spike_keep], digits=3)))
"""),
    md(r"""
The strong setting removes most of a lone spike and keeps most of a defect — exactly the mechanism above.
(The *largest* remaining spike sits far above the mean: a few tokens have few look-alikes in their image —
an edge, a unique part — and the walk treats them like a defect.) The default setting is mild by design and
leaves most of a spike. Does any of this make a better detector? Score the test set with each setting:
"""),
    code(r"""
tables, outputs = {}, {}
for name, s in SETTINGS.items():
    with_cfg(**s)
    tables[name], outputs[name] = evaluate(model, test, cache=cache, progress=False, return_outputs=True)
with_cfg()
display(Markdown(report.markdown_table([{"refinement": n, **{c: tables[n]["mean"][c] for c in ("I-AUROC", "P-AUROC", "AUPRO")}}
                                     for n in tables], digits=4)))
"""),
    md(r"""
Be honest about what you see: the differences are small, and not always in the refinement's favour. The
shared scoring path already blurs every map with a Gaussian (σ = 4 px), which removes lone spikes too, and a
defect's value can leak to look-alike tokens elsewhere in the image. `refine.py` records the same finding on
the benchmark, which is why the package default is the mild setting. The paper's own module may well differ
from our reading.

## 6. Explore

Test images of every category; switch between the refinement settings (the image stays in view). All three
use the same model and the same colour scale (0 up to the 0.99 quantile of the unrefined image scores), so
you can watch what the walk moves.
"""),
    code(r"""
N_BROWSE = 12 if QUICK else None    # test images per category in the explorer, half defective (None: all)
labels, cats = outputs["off"]["labels"], outputs["off"]["categories"]
browse = viz.browse_indices(cats, labels, N_BROWSE, order=CATEGORIES)  # defective, then normal
records = [test.records[i] for i in browse]
viz.run_switcher({n: [outputs[n]["maps"][i] for i in browse] for n in outputs},
                 scores={n: [outputs[n]["scores"][i] for i in browse] for n in outputs},
                 images=[viz.as_uint8(test[i]["image"]) for i in browse],
                 masks=[outputs["off"]["masks"][i] for i in browse], labels=[r.label for r in records],
                 categories=[r.category for r in records],
                 titles=[f"{r.category} / {r.defect} / {os.path.basename(r.path)}" for r in records],
                 threshold=res.threshold, vmax=float(np.quantile(outputs["off"]["scores"], 0.99)),
                 description="refine")
"""),
    md(r"""
## Your turn

2 small tasks on the heart of this lesson. In the exercise notebook (`notebooks/exercises/07_unistad_triple_tower.ipynb`) each marked cell is a stub for you to write; the check after it runs your function and the package's own on the same small inputs, and says what is still missing.
"""),
    exercise(
        "what the local student may see",
        task=r"""
UniSTAD's local student attends **only** inside a k x k window around each token, and not to the token
itself. Write `my_local_mask(h, w, k)` -> (h w, h w) bool, True (hidden) everywhere except the window around
token i (row-major tokens, |drow| <= k // 2 and |dcol| <= k // 2), and token i itself hidden too.
""",
        solution=r"""
import torch


def my_local_mask(h, w, k):
    rows, cols = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)
    near = ((rows[:, None] - rows[None, :]).abs() <= k // 2) & ((cols[:, None] - cols[None, :]).abs() <= k // 2)
    return ~near | torch.eye(h * w, dtype=torch.bool)
""",
        stub=r"""
import torch


def my_local_mask(h, w, k):
    # your code: the k x k window of every token (as in lesson 04), inverted, with the diagonal hidden too
    raise NotImplementedError
""",
        check=r"""
from unistad_edu.course import check
from unistad_edu.layers import local_mask

check("Exercise 1 (local mask)", lambda: my_local_mask(4, 5, 3), lambda: local_mask(4, 5, 3), hint={hint})
""",
        hint="a token is hidden when it lies outside the window -- and the token itself is hidden too, even though it is inside",
        more="Build the same window as lesson 04's neighbour mask, invert it with the logical not, then OR in a boolean identity matrix (torch's eye of size h w) so that every token also hides itself.",
    ),
    exercise(
        "the refinement: a random walk",
        task=r"""
The untrained refinement spreads scores along a row-stochastic matrix P: `m <- alpha P m + (1 - alpha) m0`,
`steps` times, from the map m0. Write `my_propagate(score_map, P, steps, alpha)`: score_map (B, 1, h, w),
P (B, h w, h w) -> (B, 1, h, w).
""",
        solution=r"""
def my_propagate(score_map, P, steps, alpha):
    B, _, h, w = score_map.shape
    m0 = score_map.float().reshape(B, h * w, 1)  # (B, L, 1)
    m = m0
    for _ in range(steps):
        m = alpha * (P @ m) + (1 - alpha) * m0
    return m.reshape(B, 1, h, w)
""",
        stub=r"""
def my_propagate(score_map, P, steps, alpha):
    # your code: flatten the map to (B, L, 1), iterate m = alpha * P @ m + (1 - alpha) * m0, reshape back
    raise NotImplementedError
""",
        check=r"""
import torch

from unistad_edu.course import check
from unistad_edu.refine import propagate

_g = torch.Generator().manual_seed(0)
_m = torch.rand(2, 1, 3, 4, generator=_g)
_P = torch.rand(2, 12, 12, generator=_g).softmax(dim=-1)   # rows sum to 1
check("Exercise 2 (propagate)", lambda: my_propagate(_m, _P, 3, 0.5), lambda: propagate(_m, _P, 3, 0.5), hint={hint})
""",
        hint="keep m0 fixed: every step mixes the propagated map with the *original* map, not the previous one",
        more="Reshape the map to B x L x 1 (L = h w) so that the batched matrix product with P works, keep that as m0, apply the task's update `steps` times with the @ operator, and reshape back to B x 1 x h x w at the end.",
    ),
    md(r"""
## Check yourself

**Exercise.** (1) Set `global_window=3` (and retrain): what should happen to the `teacher_global` map on large
defects, and why? (2) With `AffinityRefiner(..., radius=2)` (`unistad_edu.refine`) the walk may only move values between
tokens at most two rows and columns apart. Predict the spike and defect numbers of section 5 for the strong setting, then measure them.
(3) Why does the largest remaining spike stay far above the mean? Find such a token (hint: which tokens of an
image have no look-alike?).

The cell checks the lesson's claims on this run's numbers: (a) on defective test images, the two
teacher–student maps are higher inside the defects than outside, on average; (b) the refinement is
category-agnostic: an image refined alone gets the map it gets in a batch of every category's images; (c) it shrinks a lone spike — the
default leaves less than all of it on average, the strong setting less than half — while the strong setting
keeps more of a real defect's value than of a spike.
"""),
    code(r"""
for k in ("teacher_global", "teacher_local"):
    ins, outs = io_raw[k]
    print(f"(a) {k}: inside defects {ins.mean():.4f} vs outside {outs.mean():.4f}")
    assert ins.mean() > outs.mean(), f"the {k} map is not higher on the defects"
print(f"(b) an image refined alone vs in a batch of every category: largest difference {batch_gap:.2e}")
assert batch_gap <= 1e-4 * max(1.0, float(np.abs(alone).max())), "the refinement read other images of the batch"
print(f"(c) spike left: default {spike_keep['default'].mean():.3f}, strong {spike_keep['strong'].mean():.3f}; "
      f"defect value left (strong): {defect_keep['strong'].mean():.3f}")
assert spike_keep["default"].mean() < 1.0 and spike_keep["strong"].mean() < 0.5, "the refinement did not shrink a lone spike"
assert defect_keep["strong"].mean() > spike_keep["strong"].mean(), "a defect lost as much as a lone spike"
"""),
]
