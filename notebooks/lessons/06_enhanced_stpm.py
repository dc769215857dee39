"""Lesson 06 -- the enhanced STPM: a second teacher-student pair and six anomaly maps. Cells for
``notebooks/06_enhanced_stpm.ipynb`` (built by ``notebooks/_build.py``)."""

from _cells import code, exercise, md

CELLS = [
    md(r"""
# Lesson 06 — Enhanced STPM: a second pair that looks elsewhere, and six maps to combine

STPM (lesson 02) has one teacher and one student, compared at three pyramid levels: three maps, multiplied.
The *enhanced STPM* (*Reconstruction Student with Attention for Student-Teacher Pyramid Matching*,
arXiv 2111.15376) adds a **second teacher–student pair**:

* its teacher is a **different network**, so the two pairs "do not look at the same regions";
* its student carries **attention modules**, meant to rebuild *normal* features from a possibly anomalous
  input (attention can fill a position in from its context);
* 3 levels × 2 pairs = **six anomaly maps**, combined into the final one.

That is all the summary we could read says: the full text (arXiv PDF) could not be retrieved here, and no code
was found. Later papers describe the second student as a **decoder** that reconstructs the teacher's features
(a reversed student, as in RD4AD), trained on normal images only. **Our reading**
(`unistad_edu/methods/enhanced_stpm.py`): pair 1 *is* our STPM; pair 2's teacher is EfficientNet-Lite1
(separately trained, deeper and wider than pair 1's Lite0; its weights ship offline), and its student is a
**reconstruction decoder**: RD's bottleneck squeezes the teacher's three levels into an 8 × 8 embedding (at
256 px), two **self-attention** layers let every position of it be rebuilt from the whole image's context, and
RD's decoder rebuilds the three levels — trained on normal images, so it rebuilds *normal* features and a
defect's come back wrong. (Our first version, `pair2_student="forward"`, gave pair 2 a student that sees the
image with a CBAM block after each stage; CBAM gates channels and positions but cannot fill a region in from
its context.) The combination is a switch, `combine`:

| rule | the final map | why |
|---|---|---|
| `product` (default) | all six maps multiplied | STPM's own rule, extended; insensitive to the scale of any one map |
| `pair_sum` | each pair's product, divided by its normal scale; the two pairs **added** | an OR: either pair can flag a defect |
| `mean` | each of the six maps divided by its normal scale; averaged | every map one equal vote |

The "normal scale" of a map is its mean over the held-out normal training images (`calibrate`, the pass the
threshold comes from), kept in the model. `product` is the preset's rule, chosen on a validation set built from training images only
(`docs/benchmarks.md`, "Choose on validation, report on test": `pair_sum` scored 0.2 points higher, within
the rule's 0.5, so the simpler and original rule; `mean` 0.6 lower). The paper is one-class; training it unified, as here,
is our extension.
"""),
    md(r"""
### Paper vs. ours

| aspect | the paper states (source) | what we built (`methods/enhanced_stpm.py`) | our reading / why |
|---|---|---|---|
| pair 1 | exactly STPM [summary] | our STPM, the same student seed; `cpu` preset: Lite0, `paper` preset: ResNet-18 | section 3 checks that pair 1 is plain STPM |
| pair 2's teacher | a **different** network, so the pairs "do not look at the same regions" [summary] | `teacher2`: `cpu` Lite1 (weights offline), `paper` ResNet-34 | ResNet-34 is our guess [inference] |
| pair 2's student | attention modules rebuild *normal* features [summary]; a "reversed student as decoder" (DeSTSeg, CVPR 2023) | `pair2_student="decoder"`: RD's bottleneck → 2 self-attention layers → RD's decoder | attention fills a position in from context; CBAM (`"forward"`) only gates |
| training data & loss | pairs trained on normal images only (the authors' follow-up, arXiv 2210.07548) | `pair2_input="clean"`; STPM's loss for each pair, summed | pair 2's loss is our reading [inference] |
| six maps → one | 3 levels × 2 pairs, combined into one map; the rule is unverified [summary] | `combine="product"`: the six maps multiplied (chosen on validation; `mean` and `pair_sum` divide by each map's mean on held-out normals); Gaussian σ 4, max | scales from normal images only |
| setting & recipe | one-class MVTec [summary]; the full text is on arXiv (2111.15376) but could not be retrieved here; no code found | `cpu`: Adam 1e-3, 4 epochs, batch 16; `paper`: STPM's SGD recipe, 100 epochs | unified training is our extension |
| this lesson | — | quick mode: ≤ 40 images per category, 128 px, batch 8, 3 epochs | full mode on a GPU takes the `paper` preset |

Labels: [summary] is a summary of the abstract, [inference] our guess; the two later papers are named where they
are the source.
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
from unistad_edu.methods import make_config
from unistad_edu.scoring import score
from unistad_edu.metrics import auroc

QUICK_CATEGORIES = ["bottle", "cookie", "metal_plate"]   # real data: the three categories of lessons 03-05
lesson = setup(QUICK_CATEGORIES)   # quick/full switch (UNISTAD_QUICK), device, data, categories, preset
QUICK, device, root, CATEGORIES = lesson.quick, lesson.device, lesson.root, lesson.categories
# quick: 128 px, batches of 8, 3 epochs (~36 optimiser steps); full: the preset's recipe
OVERRIDES = dict(image_size=128, batch_size=8, epochs=3) if QUICK else {}
N_TRAIN = 40 if QUICK else None       # at most this many normal training images per category (None: all)
N_TEST = 30 if QUICK else None        # at most this many test images per category (None: all)
SEED = 0                              # same student initialisation and data order for every model
print(lesson.describe(overrides=OVERRIDES))
"""),
    md(r"""
## 1. Data, two teachers, one feature cache

Pair 1's teacher features come from the feature cache, as in lesson 03. Pair 2's teacher is not cached (the
cache holds one teacher's features): it runs on every training step, which is most of the extra cost of the
second pair.
"""),
    code(r"""
cfg, teacher = method_and_teacher(lesson, "enhanced_stpm", student_seed=SEED, **OVERRIDES)  # cpu preset if offline
PRESET = lesson.preset
enhanced = build_model("enhanced_stpm", teacher, cfg=cfg).to(device)   # loads the second teacher too
SIZE = cfg.image_size

train, test, cache = lesson_data(lesson, SIZE, N_TRAIN, N_TEST, teacher)  # capped sets + warm cache
for name, t in (("pair 1", teacher), ("pair 2", enhanced.teacher2)):
    print(f"{name} teacher {t.backbone_name}: " + ", ".join(f"{lv.name} ({lv.channels} ch, stride {lv.stride})"
                                                           for lv in t.feature_info))
student2 = enhanced.pair2.student
n2 = sum(p.numel() for p in student2.parameters())
print(f"pair 2's student: {type(student2).__name__} ({cfg.pair2_student}), {n2:,} parameters, "
      f"{cfg.decoder_attention_layers} self-attention layers at its bottleneck; "
      f"train: {len(train)} normal images, test: {len(test)} images")
"""),
    md(r"""
## 2. Train three models

* **STPM** — plain STPM, student seed 0: the baseline.
* **enhanced STPM** — pair 1 from the same seed 0, plus pair 2. Its loss is pair 1's STPM loss plus pair 2's.
* **STPM, seed 1** — a *control*: plain STPM again with another random student. Section 6 uses it to ask
  whether the second pair looks at different regions because of its *different teacher*, or merely because
  any second, independently trained student would.

All three see the same images in the same order for the same number of steps.
"""),
    code(r"""
tcfg = TrainConfig(seed=SEED, device=device, progress=False)
stpm = build_model("stpm", teacher, cfg=make_config("stpm", PRESET, student_seed=SEED, **OVERRIDES)).to(device)
control = build_model("stpm", teacher, cfg=make_config("stpm", PRESET, student_seed=SEED + 1, **OVERRIDES)).to(device)
fits = {}
for name, model in (("STPM", stpm), ("enhanced STPM", enhanced), ("STPM, seed 1", control)):
    fits[name] = fit(model, train, tcfg, cache=cache)
    model.eval()
    print(f"{name}: {fits[name].epochs_done} epochs in {fits[name].seconds:.0f} s, loss "
          f"{fits[name].history[0]['loss']:.3f} -> {fits[name].history[-1]['loss']:.3f}")
viz.loss_curves({n: f.history for n, f in fits.items()}, log_y=True,
                title="training loss (the enhanced model's is the sum over its two pairs)").show()
"""),
    md(r"""
## 3. Re-derive, then verify: pair 1 *is* STPM

The enhanced model's loss is a **sum** of the two pairs' losses, and the pairs share no parameter. So the
gradient that reaches pair 1's student is exactly plain STPM's gradient; with the same seed, the same data
order and an optimiser that treats every parameter on its own (Adam), pair 1 trains *exactly* like plain
STPM. Its three maps should be plain STPM's maps, to the last digit. If they are, any difference between the
two models comes from pair 2 and from the combination — nothing else.
"""),
    code(r"""
def batch_of(indices):  # these test images (B, 3, S, S) with their cached teacher features (engine.batch_of)
    return engine.batch_of(test, indices, cache, device)


probe = batch_of(range(min(8, len(test))))
with torch.no_grad():
    six = enhanced.level_maps(probe)        # {"p1.<level>", "p2.<level>": (B, 1, h, w)}
    plain = stpm.anomaly_maps(probe)        # {"<level>": (B, 1, h, w)}
pair1_gap = max(float((six[f"p1.{k}"] - v).abs().max()) for k, v in plain.items())
for k, v in plain.items():
    torch.testing.assert_close(six[f"p1.{k}"], v)
print(f"the six maps: {', '.join(f'{k} {tuple(v.shape[-2:])}' for k, v in six.items())}")
print(f"pair 1's three maps = plain STPM's (largest difference {pair1_gap:.2e}): OK")
"""),
    md(r"""
## 4. Six maps for one defect

One defective test image, its six per-level maps, and each pair's product. Every map is divided by its
**normal scale** (its mean over the held-out normal training images, set by `calibrate`), so `1` means "as high as
a normal image, on average", and all panels share one colour scale, from 0 to the largest value of the six
level maps (the products, which multiply three such values, may saturate it). Top row pair 1 (Lite0
teacher), bottom row pair 2 (Lite1 teacher, reconstruction decoder); green outline: the true defect.
"""),
    code(r"""
def mask_fraction(i):
    return float(np.asarray(test[i]["mask"]).mean())


defect_ids = [i for i, r in enumerate(test.records) if r.label == 1]
candidates = [i for i in defect_ids if 0 < mask_fraction(i) < 0.15] or defect_ids
DEFECT = max(candidates, key=mask_fraction)     # a clearly visible but not huge defect
one = batch_of([DEFECT])
with torch.no_grad():
    maps6 = enhanced.level_maps(one)
    p1 = [v for k, v in maps6.items() if k.startswith("p1.")]
    p2 = [v for k, v in maps6.items() if k.startswith("p2.")]
    products = [enhanced.pair_product(p1) / enhanced.pair_scale[0], enhanced.pair_product(p2) / enhanced.pair_scale[1]]
green = (40, 220, 40)
img = viz.as_uint8(test[DEFECT]["image"])
msk = test[DEFECT]["mask"]


names = list(maps6)
VMAX = max(float((maps6[n] / enhanced.level_scale[k]).max()) for k, n in enumerate(names))


def tile(m):
    return viz.mask_overlay(viz.overlay(img, m[0, 0].float().cpu().numpy(), alpha=0.6, vmin=0, vmax=VMAX), msk,
                            color=green, alpha=0.0)


tiles, titles = [], []
for pair, offset in ((0, 0), (1, len(p1))):
    tiles.append(viz.mask_overlay(img, msk, color=green, alpha=0.0))
    titles.append(f"pair {pair + 1} ({(teacher, enhanced.teacher2)[pair].backbone_name}): "
                  f"{test.records[DEFECT].category} / {test.records[DEFECT].defect}")
    for j in range(len(p1)):
        k = offset + j
        tiles.append(tile(maps6[names[k]] / enhanced.level_scale[k]))
        titles.append(f"{names[k]} / normal scale")
    tiles.append(tile(products[pair]))
    titles.append(f"pair {pair + 1}: product / normal scale")
viz.image_grid(tiles, titles, cols=len(p1) + 2, title=f"the six per-level maps (pair 1 top, pair 2 bottom) and "
                                                    f"each pair's product, / normal scale, colour scale 0 .. {VMAX:.1f}").show()
"""),
    md(r"""
Things to notice: the levels disagree (the stride-4 level is sharp and noisy, the stride-16 level blurry but
confident); a product keeps only what *all* its factors agree on; and the two pairs' products are similar but
not the same — the second teacher sees the defect through different features.

## 5. Four ways to get one map

One trained model, three combination rules: `combine` only changes how `anomaly_maps` hands the six maps to
the shared scoring path (`scoring.fuse`), so we switch it on the trained model and score the test set again —
no retraining. Plain STPM is the first row. Each rule's scores live on their own scale, so every map is
divided by **that rule's own threshold** (the 0.99 quantile of the image scores of the held-out normal
training images — the same images `fit` used), shared colour scale 0 … 2: yellow-green = at the threshold.
"""),
    code(r"""
RULES = ("product", "pair_sum", "mean")
PRESET_RULE = enhanced.cfg.combine   # restored after each switch


def set_rule(rule):
    # a test-time switch: __post_init__ sets scoring.fuse for the rule
    enhanced.cfg = dataclasses.replace(enhanced.cfg, combine=rule)


tables, outputs, thresholds = {}, {}, {}
tables["STPM"], outputs["STPM"] = evaluate(stpm, test, cache=cache, progress=False, return_outputs=True)
thresholds["STPM"] = fits["STPM"].threshold
for rule in RULES:
    set_rule(rule)
    tables[rule], outputs[rule] = evaluate(enhanced, test, cache=cache, progress=False, return_outputs=True)
    thresholds[rule] = engine.recalibrate(enhanced, train, tcfg, cache)[0]  # fit's held-out images, this rule
set_rule(PRESET_RULE)

columns = report.HEADLINE
display(Markdown(report.markdown_table([{"model": ("plain " if n == "STPM" else "enhanced, ") + n,
                                      **{c: tables[n]["mean"][c] for c in columns}} for n in tables])))
viz.bar_per_class({n: tables[n] for n in tables}, "P-AUROC", title="pixel AUROC per category").show()

labels, cats = outputs["STPM"]["labels"], outputs["STPM"]["categories"]
show = []
for c in CATEGORIES:
    ids = np.flatnonzero((cats == c) & (labels == 1))
    show += ids[np.linspace(0, len(ids) - 1, 2).astype(int)].tolist() if len(ids) else []
grid, grid_titles = [], []
for n in tables:
    for i in show:
        im = viz.as_uint8(test[i]["image"])
        over = viz.overlay(im, outputs[n]["maps"][i] / thresholds[n], vmin=0, vmax=2)
        grid.append(viz.mask_overlay(over, outputs[n]["masks"][i], color=green, alpha=0.0))
        grid_titles.append(f"{n}: {outputs[n]['scores'][i] / thresholds[n]:.2f} x thr")
viz.image_grid(grid, grid_titles, cols=len(show),
               title="rows: plain STPM, product, pair_sum, mean (maps in units of each rule's threshold)").show()
"""),
    md(r"""
A table like this, from a quick run, does not crown a rule: with ~40 test images per category, differences of
a hundredth or two are noise. What *is* solid is how the rules behave:

* `pair_sum` is an **OR**. Its map is the sum of the two normalised pair maps, so a defect one pair misses can
  still be flagged by the other — and a pair that fires on normal images raises their scores too. An OR is
  as good as what its weaker member adds: the next cell ranks each category's test images by pair 1 alone,
  by pair 2 alone and by `pair_sum` (image AUROC), to see where the second pair helps and where it costs.
* `product` is an **AND** across all six maps: a pixel stays high only if every map is above 1 there. It
  needs no normal statistics at all — multiply any one map by a constant and every image score is multiplied
  by the same constant, so the ranking does not change.
* `mean` gives every map an equal vote, which only makes sense after each is divided by its normal scale.
"""),
    code(r"""
set_rule("pair_sum")
pair_scores, or_scores = [], []
ids = list(range(len(test)))
with torch.no_grad():
    for k in range(0, len(ids), 16):
        b = batch_of(ids[k:k + 16])
        maps = enhanced.anomaly_maps(b)                           # {"p1", "p2"}: normalised pair products
        or_scores.append(score(maps, SIZE, enhanced.cfg.scoring).pred_score)
        pair_scores.append(torch.stack([score({n: m}, SIZE, enhanced.cfg.scoring).pred_score for n, m in maps.items()]))
set_rule(PRESET_RULE)
or_scores, pair_scores = torch.cat(or_scores).numpy(), torch.cat(pair_scores, dim=1).numpy()   # (N,), (2, N)
t_labels, t_cats = outputs["STPM"]["labels"], outputs["STPM"]["categories"]
or_rows = []
for c in CATEGORIES:
    sel = t_cats == c
    or_rows.append({"category": c, "I-AUROC pair 1 alone": auroc(pair_scores[0, sel], t_labels[sel]),
                    "pair 2 alone": auroc(pair_scores[1, sel], t_labels[sel]),
                    "pair_sum (OR)": auroc(or_scores[sel], t_labels[sel])})
display(Markdown(report.markdown_table(or_rows)))
# where the two pairs clearly differ (by 0.05 or more), does the OR move the way pair 2 differs from pair 1?
clear = [r for r in or_rows if abs(r["pair 2 alone"] - r["I-AUROC pair 1 alone"]) >= 0.05]
or_follows = [np.sign(r["pair_sum (OR)"] - r["I-AUROC pair 1 alone"])
              == np.sign(r["pair 2 alone"] - r["I-AUROC pair 1 alone"]) for r in clear]
print(f"categories where the pairs differ by >= 0.05: {[r['category'] for r in clear]}; the OR moves with pair 2 "
      f"in {sum(or_follows)} of them")
"""),
    md(r"""
## 6. Does the second pair look at different regions?

The paper's reason for a *different* teacher: the two pairs should not look at the same regions. Measure it.
For every test image, correlate pair 1's map with pair 2's (Pearson correlation over the pixels of the
log-maps, which turns the products into sums). The control: pair 1 against the **seed-1 STPM** — a second
student on the *same* teacher. If a different teacher adds a different view, pair 2 agrees with pair 1 less
than the control does. Each point is one test image (hover for its file).
"""),
    code(r"""
def pair_map(model_maps, prefix=""):
    sub = {k: v for k, v in model_maps.items() if k.startswith(prefix)}
    return score(sub, SIZE, stpm.cfg.scoring).anomaly_map[:, 0].flatten(1).clamp_min(1e-12).log()   # (B, H*W)


def rowwise_corr(a, b):
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


corr_pairs, corr_control = [], []
with torch.no_grad():
    for k in range(0, len(ids), 16):
        b = batch_of(ids[k:k + 16])
        lm = enhanced.level_maps(b)
        m1, m2, mc = pair_map(lm, "p1."), pair_map(lm, "p2."), pair_map(control.anomaly_maps(b))
        corr_pairs.append(rowwise_corr(m1, m2))
        corr_control.append(rowwise_corr(m1, mc))
corr_pairs, corr_control = torch.cat(corr_pairs).numpy(), torch.cat(corr_control).numpy()

fig = go.Figure()
for value, label, colour in ((0, "normal", "#2e86c1"), (1, "defect", "#c0392b")):
    sel = labels == value
    fig.add_trace(go.Scatter(x=corr_control[sel], y=corr_pairs[sel], mode="markers", name=label,
                             marker=dict(color=colour, size=7, opacity=0.7),
                             text=[os.path.basename(test.records[i].path) + f" ({test.records[i].category})"
                                   for i in np.flatnonzero(sel)],
                             hovertemplate="%{text}<br>control %{x:.3f}, pair 2 %{y:.3f}<extra></extra>"))
lo = float(min(corr_pairs.min(), corr_control.min()))
fig.add_trace(go.Scatter(x=[lo, 1], y=[lo, 1], mode="lines", line=dict(dash="dash", color="gray"), name="equal"))
fig.update_layout(title="per-image agreement with pair 1's map (below the diagonal: pair 2 disagrees more)",
                  xaxis_title="corr(pair 1, STPM seed 1)  — same teacher", yaxis_title="corr(pair 1, pair 2)  — other teacher",
                  height=480)
fig.show()
print(f"mean correlation with pair 1: pair 2 (other teacher) {corr_pairs.mean():.3f}, "
      f"STPM seed 1 (same teacher) {corr_control.mean():.3f}; "
      f"pair 2 agrees less on {(corr_pairs < corr_control).mean():.0%} of the images")
"""),
    md(r"""
Both correlations are high — both pairs see the same object edges and the same big defects. But most points
sit below the diagonal: a second student on the same teacher repeats pair 1's opinions more closely than a
student of a different teacher does. That residual disagreement is what a combination rule can exploit.

## 7. Explore

All test images; switch between plain STPM and the three rules (the image stays in view). Maps and scores
are in units of each rule's own threshold, so the slider starts at 1 for all. Find a defect that only one
rule flags.
"""),
    code(r"""
N_BROWSE = 12 if QUICK else None    # test images per category in the explorer, half defective (None: all)
browse = viz.browse_indices(cats, labels, N_BROWSE, order=CATEGORIES)  # defective, then normal
records = [test.records[i] for i in browse]
viz.run_switcher({n: [outputs[n]["maps"][i] / thresholds[n] for i in browse] for n in outputs},
                 scores={n: [outputs[n]["scores"][i] / thresholds[n] for i in browse] for n in outputs},
                 images=[viz.as_uint8(test[i]["image"]) for i in browse],
                 masks=[outputs["STPM"]["masks"][i] for i in browse], labels=[r.label for r in records],
                 categories=[r.category for r in records],
                 titles=[f"{r.category} / {r.defect} / {os.path.basename(r.path)}" for r in records],
                 threshold=1.0, vmax=2.0, description="map")
"""),
    md(r"""
## Your turn

2 small tasks on the heart of this lesson. In the exercise notebook (`notebooks/exercises/06_enhanced_stpm.ipynb`) each marked cell is a stub for you to write; the check after it runs your function and the package's own on the same small inputs, and says what is still missing.
"""),
    exercise(
        "one pair's map: the product of its levels",
        task=r"""
Within one teacher-student pair, STPM multiplies its per-level maps. Write `my_pair_product(maps)`: a list of
(B, 1, h_l, w_l) maps -> (B, 1, h, w) on the **finest** of their grids (bilinear, `align_corners=False`), the
product of all of them.
""",
        solution=r"""
import torch.nn.functional as F


def my_pair_product(maps):
    size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])  # the finest grid
    out = None
    for m in maps:
        up = F.interpolate(m.float(), size=size, mode="bilinear", align_corners=False)
        out = up if out is None else out * up
    return out
""",
        stub=r"""
import torch.nn.functional as F


def my_pair_product(maps):
    # your code: find the largest (h, w), upsample every map to it, multiply
    raise NotImplementedError
""",
        check=r"""
import torch

from unistad_edu.course import check
from unistad_edu.methods.enhanced_stpm import EnhancedSTPM

_g = torch.Generator().manual_seed(0)
_maps = [torch.rand(2, 1, 16, 16, generator=_g), torch.rand(2, 1, 8, 8, generator=_g), torch.rand(2, 1, 4, 4, generator=_g)]
check("Exercise 1 (pair product)", lambda: my_pair_product(_maps), lambda: EnhancedSTPM.pair_product(_maps), hint={hint})
""",
        hint="bring every map to the finest grid first: which of the maps has it?",
        more="Among the maps' last two sizes, the finest grid is the one with the largest h times w; upsample every map to it with functional interpolate (bilinear, align_corners off) and multiply them together one after another.",
    ),
    exercise(
        "a combination rule",
        task=r"""
Section 5 switched how the six maps become one. Write `my_fuse(maps, size, rule)` for `rule` "sum" or
"mean": upsample every map of the dict to (size, size) (bilinear, `align_corners=False`) and add them, or
average them (no blur).
""",
        solution=r"""
import torch
import torch.nn.functional as F


def my_fuse(maps, size, rule):
    up = torch.stack([F.interpolate(m.float(), size=(size, size), mode="bilinear", align_corners=False)
                      for m in maps.values()])  # (L, B, 1, S, S)
    return up.sum(dim=0) if rule == "sum" else up.mean(dim=0)
""",
        stub=r"""
import torch
import torch.nn.functional as F


def my_fuse(maps, size, rule):
    # your code: upsample each map to (size, size), stack, then sum or mean over the maps
    raise NotImplementedError
""",
        check=r"""
import torch

from unistad_edu.course import check
from unistad_edu.scoring import ScoringConfig, score

_g = torch.Generator().manual_seed(1)
_maps = {f"m{i}": torch.rand(2, 1, 8 // (i + 1), 8 // (i + 1), generator=_g) for i in range(3)}
check("Exercise 2 (fuse)", lambda: (my_fuse(_maps, 16, "sum"), my_fuse(_maps, 16, "mean")),
      lambda: tuple(score(_maps, 16, ScoringConfig(fuse=r, blur_sigma=0)).anomaly_map for r in ("sum", "mean")),
      hint={hint})
""",
        hint="upsample the maps to one grid, then combine them across maps the way the rule's name says",
        more="Interpolate every map of the dict to size by size (bilinear, corners not aligned), stack them so the maps lie along a new first axis, and reduce that axis by a sum or a mean depending on the rule -- the result keeps the B x 1 x size x size shape.",
    ),
    md(r"""
## Check yourself

**Exercise.** (1) Build the model with `decoder_attention_layers=0` (the decoder without attention) and
with `pair2_student="forward"` (the first version: a student that sees the image, with CBAM) and repeat
section 6: does the kind of student change how differently pair 2 looks? (2) Build it with
`teacher2="tf_efficientnet_lite0", teacher2_layers=(2, 3, 4)` — the *same* teacher weights at coarser
levels. Predict where its points land in the section 6 scatter. (3) Why does the `mean` rule need the
normal scales while `product` does not? Multiply one of the six maps by 10 and work out what each rule does.

The cell checks the lesson's claims on this run's numbers: (a) pair 1 of the enhanced model reproduces plain
STPM trained alone (its three maps are equal); (b) `pair_sum` is only as good as what pair 2 adds: in every
category where the two pairs' image AUROCs differ by 0.05 or more (at least one), the OR ranks better than
pair 1 alone where pair 2 is better, and worse where pair 2 is worse; (c) the second pair, with its different teacher, agrees with pair 1
less than a second STPM student on the same teacher does (mean per-image correlation of the maps).
"""),
    code(r"""
print(f"(a) pair 1 vs plain STPM: largest map difference {pair1_gap:.2e}")
assert pair1_gap <= 1e-4, "pair 1 did not train like plain STPM"
print(f"(b) the OR moves with pair 2 in {sum(or_follows)} of {len(clear)} categories where the pairs differ")
assert clear and all(or_follows), "the OR did not move the way the second pair differs from the first"
print(f"(c) mean correlation with pair 1: other teacher {corr_pairs.mean():.3f} < same teacher {corr_control.mean():.3f}?")
assert corr_pairs.mean() < corr_control.mean(), "the second teacher's pair agrees with pair 1 as much as a re-seeded STPM"
"""),
]
