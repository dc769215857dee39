"""Lesson 05 -- SNL: structural distillation on top of reverse distillation. Cells for
``notebooks/05_snl_structural_distillation.ipynb`` (built by ``notebooks/_build.py``)."""

from _cells import code, exercise, md

CELLS = [
    md(r"""
# Lesson 05 — SNL: the student must also copy the teacher's *structure*

Lessons 02–03 used **forward** distillation (STPM): the student sees the image and imitates the teacher.
**Reverse distillation** (RD4AD, Deng & Li, CVPR 2022; `unistad_edu/methods/rd.py`) makes the student's
job harder to cheat at: a trainable *bottleneck* squeezes the teacher's pyramid into a small embedding, and
the student is a **decoder** that must rebuild every teacher level from it. Its loss, and its anomaly map, is
the per-position cosine distance `1 − cos(t_i, s_i)` between the teacher's and the student's feature vectors
at each position *i* of each level.

**SNL** (*Structural Teacher-Student Normality Learning*, Deng & Li, CVPR 2024) targets the problem of lesson
03 — cross-class interference: trained on many products at once, a student becomes over-tolerant. The
abstract's remedy is to match not only each feature vector but **how features relate to each other**: four
ideas, each a switch of `methods/snl.py`, side by side with the paper's words in the table below.

**Read this with care:** the full SNL paper is on arXiv, but it could not be retrieved where this package
was written, and there is no public code: we worked from its abstract and a third-party summary. Every
formula in the table's "what we built" column is *our* reading, documented in the module's paper card; do
not quote the paper's numbers as this implementation's. This lesson trains RD and SNL from the same starting
weights and looks at what the structural terms actually measure — the affinity matrices — on a normal and a
defective image.
"""),
    md(r"""
### Paper vs. ours

| aspect | the paper states (source) | what we built (`methods/snl.py`, a switch each) | our reading / why |
|---|---|---|---|
| base model | applied on forward (STPM-like) and reverse (RD4AD-like) baselines [summary]; likely RD4AD's WideResNet-50 at 256 px [recalled/inference] | RD's bottleneck, decoder and loss (`methods/rd.py`); `cpu` preset: Lite0; `paper` preset: RD4AD's recipe | every switch off, SNL *is* RD (section 2 checks it) |
| spatial-channel distillation | the T–S distance along the channels (per position) and along space (per channel) [paper abstract] | `spatial_channel`: adds a **per-channel** cosine, each channel's map a vector over the positions | the formula is ours |
| intra-affinity distillation | match the affinities *within* a feature map [paper abstract] | `intra_affinity`: the **position × position** cosines `A[i, j]` of a level, MSE over i ≠ j | ≤ 256 positions sampled (`affinity_positions`) |
| inter-affinity distillation | match affinities *across* levels or samples — the abstract is ambiguous [paper abstract] | `inter_affinity`: the **channel × channel** cosines `G[c, d]` of adjacent levels, MSE | levels, not samples: a decoder's multi-scale structure |
| CRAM | aggregate residuals to learned centres to encapsulate the normal space [paper abstract] | `cram`: NetVLAD-style, 16 centres; each position rebuilt from its centres plus β = 0.5 of the image's residuals; compactness loss × 0.1 | a patch off the centres is not passed on to the decoder |
| anomaly map & image score | probably RD4AD's: `1 − cos` per level, summed, Gaussian σ 4 [recalled/inference] | RD's map, Gaussian σ 4, image score = max | not verified against the paper |
| training recipe | not known: the full paper is on arXiv (2402.17091) but could not be retrieved here; no public code | `cpu`: Adam 0.005, 30 epochs, batch 16; `paper`: RD4AD's (200 epochs) with 64 centres | the `paper` preset is our guess [inference] |
| this lesson | — | quick mode: ≤ 60 images per category, 128 px, batch 8, 12 epochs | full mode on a GPU takes the `paper` preset |

Labels: [paper abstract] is the abstract, [summary] a third-party summary, [recalled/inference] memory or our
guess, not checked against the paper.
"""),
    code(r"""

import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

from unistad_edu import TrainConfig, build_model, engine, evaluate, fit, report, viz
from unistad_edu.course import lesson_data, method_and_teacher, setup
from unistad_edu.methods import make_config
from unistad_edu.methods.snl import cross_level_affinity, intra_affinity_loss, position_affinity
from unistad_edu.report import format_table

QUICK_CATEGORIES = ["bottle", "cookie", "metal_plate"]   # real data: the three categories of lessons 03-04
lesson = setup(QUICK_CATEGORIES)   # quick/full switch (UNISTAD_QUICK), device, data, categories, preset
QUICK, device, root, CATEGORIES = lesson.quick, lesson.device, lesson.root, lesson.categories
# quick: 128 px, batches of 8, 12 epochs (~170 optimiser steps); full: the preset's recipe (RD4AD's for the paper)
OVERRIDES = dict(image_size=128, batch_size=8, epochs=12) if QUICK else {}
N_TRAIN = 60 if QUICK else None       # at most this many normal training images per category (None: all)
N_TEST = 40 if QUICK else None        # at most this many test images per category (None: all)
SEED = 0                              # same initial weights and data order for both students
print(lesson.describe(overrides=OVERRIDES))
"""),
    md(r"""
## 1. Data, teacher, one feature cache

Both students train on the normal images of all categories mixed (the unified setting). Neither reads the
image during training — RD's bottleneck and decoder see only the teacher's features — so the teacher runs
once per image and both models train from the cache.
"""),
    code(r"""
snl_cfg, teacher = method_and_teacher(lesson, "snl", init_seed=SEED, **OVERRIDES)  # cpu preset if offline
PRESET = lesson.preset
# RD and SNL share the teacher; RD gets SNL's loss rule, so that everything but SNL's four terms is equal
# (RD's cpu preset takes the flattened loss, the loose loss, RD++'s projection and a feature jitter, SNL's
# none of them: each chosen on validation)
rd_cfg = make_config("rd", PRESET, init_seed=SEED, rd_loss=snl_cfg.rd_loss, hm_quantile=snl_cfg.hm_quantile,
                     rdpp=snl_cfg.rdpp, bottleneck_jitter=snl_cfg.bottleneck_jitter, **OVERRIDES)
SIZE = snl_cfg.image_size

train, test, cache = lesson_data(lesson, SIZE, N_TRAIN, N_TEST, teacher)  # capped sets + warm cache
LEVELS = teacher.layer_names
print(f"train: {len(train)} normal images; test: {len(test)} images; teacher {snl_cfg.teacher} levels "
      + ", ".join(f"{lv.name} ({lv.channels} ch, stride {lv.stride})" for lv in teacher.feature_info))
"""),
    md(r"""
## 2. Two students from the same start

RD and SNL are built from the same `init_seed`: SNL's bottleneck and decoder start with exactly RD's weights,
and SNL adds the CRAM centres. With all four switches off, SNL **is** RD — same weights, same loss. We check
both, so that whatever differs after training comes from the structural terms (and CRAM), nothing else.
"""),
    code(r"""
rd = build_model("rd", teacher, cfg=rd_cfg).to(device)
snl = build_model("snl", teacher, cfg=snl_cfg).to(device)
snl_untrained = build_model("snl", teacher, cfg=snl_cfg).to(device).eval()   # kept as the "epoch 0" reference
snl_off = build_model("snl", teacher, cfg=make_config("snl", PRESET, init_seed=SEED, spatial_channel=False,
                                                      intra_affinity=False, inter_affinity=False, cram=False,
                                                      **OVERRIDES)).to(device)

rd_state = rd.state_for_checkpoint()
for k, v in snl.state_for_checkpoint().items():
    if k in rd_state:
        torch.testing.assert_close(v, rd_state[k])


def batch_of(indices):  # these test images (B, 3, S, S) with their cached teacher features (engine.batch_of)
    return engine.batch_of(test, indices, cache, device)


probe = batch_of(range(min(8, len(test))))
rd.eval(), snl_off.eval()
with torch.no_grad():
    torch.testing.assert_close(snl_off.loss(probe), rd.loss(probe))
n_rd, n_snl = (sum(p.numel() for p in m.trainable_parameters()) for m in (rd, snl))
print(f"RD: {n_rd:,} trainable parameters; SNL: {n_snl:,} (+{n_snl - n_rd:,} = the CRAM's "
      f"{snl_cfg.cram_centres} centres x {snl.embed_channels} channels)")
print("same initial weights, and SNL with every switch off has RD's loss: OK")
"""),
    md(r"""
## 3. Train both, briefly

Same data, same order, same number of steps. The two loss curves are **not** comparable: SNL's loss is a
sum of more terms (RD's term is one of them). Section 4 splits it up.
"""),
    code(r"""
tcfg = TrainConfig(seed=SEED, device=device, progress=False)
fit_rd = fit(rd, train, tcfg, cache=cache)
fit_snl = fit(snl, train, tcfg, cache=cache)
for name, res in (("RD", fit_rd), ("SNL", fit_snl)):
    print(f"{name}: {res.epochs_done} epochs in {res.seconds:.1f} s, loss {res.history[0]['loss']:.3f} -> "
          f"{res.history[-1]['loss']:.3f}")
rd.eval(), snl.eval()
viz.loss_curves({"RD (one term)": fit_rd.history, "SNL (sum of its terms)": fit_snl.history}, log_y=True,
                title="training loss").show()
"""),
    md(r"""
## 4. The loss terms, one by one

`snl.loss_breakdown(batch)` returns each (weighted) term for a batch. We evaluate it on the **normal test
images** — images neither student trained on — for three students: SNL before training, SNL after training,
and RD after training. RD never optimised the structural terms; we only *measure* them on its output
(`snl.terms_from(rd.forward(batch))`), to see whether matching every feature vector (RD's loss) already
gets the structure right for free. Each term is summed over the levels (over the two pairs of adjacent
levels for the inter-affinity). The intra-affinity term samples positions on large grids, so the random
generator is seeded before every call: all three students are measured on the same positions.
"""),
    code(r"""
normal_ids = [i for i, r in enumerate(test.records) if r.label == 0]
defect_ids = [i for i, r in enumerate(test.records) if r.label == 1]


def mean_terms(terms_of, ids):
    # average of each term over batches of the given test images (same sampled positions for every student)
    total = {}
    for part, b in engine.batches(test, ids, 16, cache, device, with_indices=True):
        torch.manual_seed(SEED)
        for k, v in terms_of(b).items():
            total[k] = total.get(k, 0.0) + float(v) * len(part) / len(ids)
    return total


with torch.no_grad():
    terms = {"SNL, untrained": mean_terms(snl_untrained.loss_breakdown, normal_ids),
             "SNL, trained": mean_terms(snl.loss_breakdown, normal_ids),
             "RD, trained (measured only)": mean_terms(lambda b: snl.terms_from(rd.forward(b)), normal_ids)}
names = list(terms["SNL, untrained"])
display(Markdown(f"**loss terms on the {len(normal_ids)} normal test images** (weighted as in training)\n\n"
                 + report.markdown_table([{"student": s, **{k: t.get(k, float("nan")) for k in names}}
                                       for s, t in terms.items()], digits=4)))
"""),
    md(r"""
How to read it:

* Training lowers **every** term of SNL — they are what it optimises.
* `position_cosine` is RD's loss here (the paper's Eq. 2, the rule SNL's preset uses; RD's own `cpu` preset
  takes the flattened cosine of the official code, with the loose loss of lesson 16, instead). RD, which spends its whole budget on it, usually
  gets it lower than SNL does: SNL shares its capacity and steps between five terms.
* The terms RD never saw tell the interesting story. Matching each position's feature *direction* leaves the
  **per-channel** maps (`channel_cosine`) and the **cross-level channel affinity** (`inter_affinity`) far
  from the teacher's: a channel that is weak everywhere barely moves a position's cosine, but it counts as
  much as any other channel in those two terms. The position × position affinity (`intra_affinity`) is
  largely implied by matching every position's direction, so RD gets it about as low as SNL does.

## 5. Re-derive, then verify: the intra-affinity term

For one level, with `f_i` the channel vector at position *i* normalised to unit length, the affinity is
`A[i, j] = f_i · f_j` — the cosine between positions *i* and *j*, an N × N matrix (N = h·w). The term is the
mean of `(A_T[i, j] − A_S[i, j])²` over the pairs i ≠ j. On a small grid no positions need to be sampled, so
we can check the library's value exactly. We use the level whose grid has at most 256 positions (a 256 × 256
matrix is still readable), which is also the level the next figures show.
"""),
    code(r"""
with torch.no_grad():
    out = snl.forward(probe)
# the finest level with at most 256 positions
AFF = next((k for k, f in enumerate(out["teacher"]) if f.shape[-2] * f.shape[-1] <= 256), len(LEVELS) - 1)
t, s = out["teacher"][AFF], out["student"][AFF]                # (B, C, h, w)
gh, gw = t.shape[-2:]
N = gh * gw


def unit_positions(f):
    return F.normalize(f.flatten(2), dim=1)                    # (B, C, N): unit length along the channels


A_t = unit_positions(t).transpose(1, 2) @ unit_positions(t)    # (B, N, N)
A_s = unit_positions(s).transpose(1, 2) @ unit_positions(s)
off_diagonal = ~torch.eye(N, dtype=torch.bool, device=A_t.device)
mine = (A_t - A_s).pow(2)[:, off_diagonal].mean()
torch.testing.assert_close(mine, intra_affinity_loss(t, s, max_positions=N))   # max_positions=N: no sampling
torch.testing.assert_close(A_t, position_affinity(t))
print(f"level {LEVELS[AFF]!r}: a {gh} x {gw} grid, N = {N} positions; intra-affinity of this batch "
      f"{float(mine):.4f} -- re-derived: OK")
"""),
    md(r"""
## 6. Look at the matrices: a normal and a defective image

One normal and one defective test image of the same category. For each: the teacher's affinity `A_T`, the
trained SNL student's `A_S` (both cosines, −1 blue … +1 red, one colour scale), and `|A_T − A_S|` (one scale
for both images). Positions are numbered row by row across the grid, so the matrix shows blocks of `w`
positions; a bright **row and column** in the difference is one position whose relations to *all* others the
student got wrong.
"""),
    code(r"""
def mask_fraction(i):
    return float(np.asarray(test[i]["mask"]).mean())


# the defect: the defective test image with the largest defect region that still covers < 15 % of the image
candidates = [i for i in defect_ids if 0 < mask_fraction(i) < 0.15] or defect_ids
DEFECT = max(candidates, key=mask_fraction)
CAT = test.records[DEFECT].category
NORMAL = next(i for i in normal_ids if test.records[i].category == CAT)
pair = batch_of([NORMAL, DEFECT])
with torch.no_grad():
    o_snl, o_rd = snl.forward(pair), rd.forward(pair)
A_T = position_affinity(o_snl["teacher"][AFF])                 # (2, N, N)
A_S = position_affinity(o_snl["student"][AFF])
diff = (A_T - A_S).abs()
dmax = float(diff.max())
mats, titles = [], []
for k, label in enumerate(("normal", f"defect ({test.records[DEFECT].defect})")):
    mats += [A_T[k], A_S[k], diff[k]]
    titles += [f"{label}: teacher A_T", f"{label}: SNL student A_S", f"{label}: |A_T - A_S|"]
viz.matrix_grid(mats, titles, cols=3, zrange=[(-1, 1), (-1, 1), (0, dmax)] * 2,
                colorscale=["RdBu_r", "RdBu_r", "Viridis"] * 2, axis_titles=("position j", "position i"),
                title=f"{CAT}: position x position affinity at level {LEVELS[AFF]!r} ({gh} x {gw} grid)").show()
"""),
    md(r"""
The normal image's two matrices look almost alike. In the defective image, look for the bright crosses in
the difference: the defect's positions. Fold each matrix row back onto the grid — the mean squared affinity
error of position *i* with all others, `e_i = mean_j (A_T[i, j] − A_S[i, j])²` — and it becomes a map we can
lay over the image, next to the per-position cosine distance at the same level (the anomaly map RD and SNL
actually use). Green outline: the true defect. Each kind of map has one colour scale for both images.
"""),
    code(r"""
def affinity_error_map(o):
    # (B, 1, h, w): e_i = mean_j (A_T[i, j] - A_S[i, j])^2 at the level AFF
    a_t, a_s = position_affinity(o["teacher"][AFF]), position_affinity(o["student"][AFF])
    return (a_t - a_s).pow(2).mean(dim=-1).reshape(-1, 1, gh, gw)


with torch.no_grad():
    e_map = affinity_error_map(o_snl)[:, 0].cpu().numpy()
    c_map = snl.anomaly_maps(pair)[LEVELS[AFF]][:, 0].cpu().numpy()   # the per-position 1 - cos of this level
green = (40, 220, 40)
tiles, tile_titles = [], []
for k, i in enumerate((NORMAL, DEFECT)):
    img = viz.as_uint8(test[i]["image"])
    msk = test[i]["mask"]
    tiles += [viz.mask_overlay(img, msk, color=green, alpha=0.0),
              viz.mask_overlay(viz.overlay(img, e_map[k], vmin=0, vmax=float(e_map.max())), msk, color=green, alpha=0.0),
              viz.mask_overlay(viz.overlay(img, c_map[k], vmin=0, vmax=float(c_map.max())), msk, color=green, alpha=0.0)]
    tile_titles += [f"{test.records[i].defect}", "affinity error e_i", "1 - cos (the anomaly map's level)"]
viz.image_grid(tiles, tile_titles, cols=3, title=f"SNL student, level {LEVELS[AFF]!r}").show()
"""),
    md(r"""
A defect changes the teacher's features at its positions, and so their relations to every other position;
the student, trained only on normal images, rebuilds "normal-looking" relations there. So the affinity error
concentrates on the defect — like the cosine map, but as a statement about *relations* rather than about
single vectors. Does that hold beyond this one image? Over all defective test images, compare the mean
affinity error inside the defect with the mean outside it — for the trained and the untrained SNL student.
"""),
    code(r"""
def inside_outside(model, ids):
    # mean affinity error e_i inside / outside the defect (mask at the affinity grid), per defective image
    ins, outs = [], []
    for part, b in engine.batches(test, ids, 16, cache, device, with_indices=True):
        with torch.no_grad():
            e = affinity_error_map(model.forward(b))                      # (B, 1, h, w)
        m = torch.stack([test[i]["mask"] for i in part]).float().to(e.device)
        m = F.interpolate(m, size=(gh, gw), mode="area") > 0.3            # the positions mostly inside the defect
        for k in range(len(part)):
            if m[k].any() and (~m[k]).any():
                ins.append(float(e[k][m[k]].mean()))
                outs.append(float(e[k][~m[k]].mean()))
    return np.array(ins), np.array(outs)


rows, in_out = [], {}
for name, model in (("SNL, untrained", snl_untrained), ("SNL, trained", snl), ("RD, trained", rd)):
    ins, outs = in_out[name] = inside_outside(model, defect_ids)
    rows.append({"student": name, "images": len(ins), "mean e inside defects": ins.mean(),
                 "mean e outside": outs.mean(), "ratio": ins.mean() / outs.mean(),
                 "images with inside > outside": f"{(ins > outs).mean():.0%}"})
display(Markdown(report.markdown_table(rows, digits=4)))
"""),
    md(r"""
The untrained student's affinity errors are large everywhere (and, if anything, *smaller* inside defects:
its output is unrelated to the image, and the defect is a small region). Training brings them down on what it
has seen — normal structure — and leaves them high where the structure is new.

## 7. The inter-level affinity: channels across scales

The inter-affinity term compares *channels* of two adjacent levels. On the coarser level's grid (the finer
level average-pooled to it), each channel map becomes a unit vector over the positions, and `G[c, d]` is the
cosine between channel *c* of the finer level and channel *d* of the coarser one: do they fire at the same
places? Below, for the first pair of levels: the teacher's `G`, the trained SNL student's and the trained RD
student's, for the normal and the defective image (one colour scale, −1 … +1). The numbers in the titles are
the mean squared difference to the teacher's `G` (the term's value for that image).
"""),
    code(r"""
G = {"teacher": cross_level_affinity(o_snl["teacher"][0], o_snl["teacher"][1]),      # (2, C_0, C_1)
     "SNL student": cross_level_affinity(o_snl["student"][0], o_snl["student"][1]),
     "RD student": cross_level_affinity(o_rd["student"][0], o_rd["student"][1])}
mats, titles = [], []
for k, label in enumerate(("normal", "defect")):
    for name, g in G.items():
        mats.append(g[k])
        err = "" if name == "teacher" else f" (MSE {float((g[k] - G['teacher'][k]).pow(2).mean()):.3f})"
        titles.append(f"{label}: {name}{err}")
c0, c1 = G["teacher"].shape[1:]
viz.matrix_grid(mats, titles, cols=3, zrange=(-1, 1), colorscale="RdBu_r",
                axis_titles=(f"channel d of {LEVELS[1]!r}", f"channel c of {LEVELS[0]!r}"),
                title=f"{CAT}: channel affinity between levels {LEVELS[0]!r} ({c0} ch) and {LEVELS[1]!r} ({c1} ch)").show()
"""),
    md(r"""
RD's student rebuilds each position's feature *direction*, and still its channel-to-channel pattern across
scales can be visibly off — the table of section 4 said the same in one number. SNL's inter-affinity term
asks for that pattern explicitly. Whether this extra structure makes a **better detector** is an empirical
question, which the next section asks — on a tiny budget.

## 8. Anomaly maps and metrics: RD vs SNL

Both use the same map (per-level `1 − cos`, summed over the levels, Gaussian blur σ = 4, image score = max).
Row 1: defective test images (two per category) with their masks; row 2: RD's map; row 3: SNL's. Each map is
divided by its own model's threshold (calibrated on held-out normal training images), so the middle of the
colour scale (0 … 2) is the threshold for both models.
"""),
    code(r"""
table_rd, out_rd = evaluate(rd, test, cache=cache, progress=False, return_outputs=True)
table_snl, out_snl = evaluate(snl, test, cache=cache, progress=False, return_outputs=True)
for name, table in (("RD", table_rd), ("SNL", table_snl)):
    display(Markdown(f"**{name}**\n\n" + format_table(table, report.HEADLINE)))

show = viz.pick_defects(out_rd, 2, CATEGORIES)
viz.threshold_unit_grid(test, show, {"RD": (out_rd, fit_rd.threshold), "SNL": (out_snl, fit_snl.threshold)},
                        title="defects (row 1), RD maps (row 2), SNL maps (row 3), "
                              "in units of each model's threshold").show()
"""),
    md(r"""
## Your turn

3 small tasks on the heart of this lesson. In the exercise notebook (`notebooks/exercises/05_snl_structural_distillation.ipynb`) each marked cell is a stub for you to write; the check after it runs your function and the package's own on the same small inputs, and says what is still missing.
"""),
    exercise(
        "the intra-affinity matrix",
        task=r"""
SNL's intra-affinity term compares, within one level, how similar every pair of **positions** is. Write
`my_position_affinity(f)`: (B, C, h, w) -> (B, N, N), N = h w, the cosine similarity of the channel vectors of
every pair of positions.
""",
        solution=r"""
import torch.nn.functional as F


def my_position_affinity(f):
    x = F.normalize(f.float().flatten(2), dim=1)  # (B, C, N): unit length along channels
    return x.transpose(1, 2) @ x                  # (B, N, N)
""",
        stub=r"""
import torch.nn.functional as F


def my_position_affinity(f):
    # your code: flatten the positions, make each position's channel vector unit length, all dot products
    raise NotImplementedError
""",
        check=r"""
import torch

from unistad_edu.course import check
from unistad_edu.methods.snl import position_affinity

_f = torch.randn(2, 6, 3, 4, generator=torch.Generator().manual_seed(0))
check("Exercise 1 (intra-affinity)", lambda: my_position_affinity(_f), lambda: position_affinity(_f), hint={hint})
""",
        hint="flatten the positions, make every position's channel vector unit length, then one batched matrix product gives every pair's cosine",
        more="Flatten h and w into one axis (B x C x N), normalise along the channels (dimension 1), then multiply the transposed tensor (B x N x C) by the untransposed one with the @ operator to get B x N x N.",
    ),
    exercise(
        "the spatial half of spatial-channel distillation",
        task=r"""
Write `my_channel_distance(t, s)`: (B, C, h, w) x 2 -> (B, C), for each channel the cosine **distance**
(1 - cosine similarity) between the teacher's and the student's map of that channel, each map taken as one
vector over the h w positions.
""",
        solution=r"""
import torch.nn.functional as F


def my_channel_distance(t, s):
    return 1 - F.cosine_similarity(t.float().flatten(2), s.float().flatten(2), dim=2)  # (B, C)
""",
        stub=r"""
import torch.nn.functional as F


def my_channel_distance(t, s):
    # your code: flatten the positions, cosine similarity along them, 1 minus it
    raise NotImplementedError
""",
        check=r"""
import torch

from unistad_edu.course import check
from unistad_edu.methods.snl import channel_cosine_distance

_g = torch.Generator().manual_seed(1)
_t, _s = torch.randn(2, 5, 4, 4, generator=_g), torch.randn(2, 5, 4, 4, generator=_g)
check("Exercise 2 (channel distance)", lambda: my_channel_distance(_t, _s),
      lambda: channel_cosine_distance(_t, _s), hint={hint})
""",
        hint="this time each channel is a vector over the positions: compare teacher and student channel by channel",
        more="Flatten from dimension 2 on so each channel becomes one vector of h w values (B x C x N), take torch's functional cosine similarity of teacher against student along that last axis, and subtract it from one.",
    ),
    exercise(
        "channels across scales: the inter-affinity",
        task=r"""
Write `my_cross_level(fine, coarse)`: (B, Ca, ha, wa), (B, Cb, hb, wb) -> (B, Ca, Cb). Average-pool the
finer level onto the coarser grid (`F.adaptive_avg_pool2d`), then the cosine similarity of every channel map of
one level with every channel map of the other (each map a vector over the common positions).
""",
        solution=r"""
import torch.nn.functional as F


def my_cross_level(fine, coarse):
    fine = F.adaptive_avg_pool2d(fine.float(), coarse.shape[-2:])   # (B, Ca, hb, wb)
    a = F.normalize(fine.flatten(2), dim=2)                         # (B, Ca, N), unit length over positions
    b = F.normalize(coarse.float().flatten(2), dim=2)               # (B, Cb, N)
    return a @ b.transpose(1, 2)                                    # (B, Ca, Cb)
""",
        stub=r"""
import torch.nn.functional as F


def my_cross_level(fine, coarse):
    # your code: pool fine onto coarse's grid, normalise each channel map over positions, all dot products
    raise NotImplementedError
""",
        check=r"""
import torch

from unistad_edu.course import check
from unistad_edu.methods.snl import cross_level_affinity

_g = torch.Generator().manual_seed(2)
_fine, _coarse = torch.randn(2, 4, 8, 8, generator=_g), torch.randn(2, 6, 4, 4, generator=_g)
check("Exercise 3 (inter-affinity)", lambda: my_cross_level(_fine, _coarse),
      lambda: cross_level_affinity(_fine, _coarse), hint={hint})
""",
        hint="each channel is a vector over positions: make those unit length, then one matrix product pairs every fine channel with every coarse one",
        more="Pool the fine level to the coarse level's last two sizes with adaptive average pooling, flatten both to B x C x N, normalise along the positions (the last axis, not the channels as in exercise 1), then multiply the fine one by the transposed coarse one to get B x Ca x Cb.",
    ),
    md(r"""
Do not read a winner off this table. In quick mode both students train for a couple of hundred steps on a
few dozen images per category, SNL's capacity is split over five terms, and with ~40 test images per
category a difference of a few hundredths is noise. The abstract reports SNL ahead of the best distillation
method by +3.9 % (MVTec detection) at full scale; that is the paper's claim with its own implementation,
not ours. To ask the question properly, run the full mode (all categories; on a GPU the `paper` preset's 200 epochs, on a CPU the `cpu` preset's
30) and the
ablation (`python -m unistad_edu bench accuracy` with each switch of `SNLConfig` off in turn).

## Check yourself

**Exercise.** (1) Switch off one structural term at a time (`make_config("snl", ..., inter_affinity=False)`)
and re-run sections 3–4: which terms of the table move, and which stay where RD left them? (2) Explain why
`intra_affinity` is nearly as low for RD as for SNL, but `inter_affinity` is not. (Hint: what does a position's
cosine ignore?) (3) In section 6, find a defect whose affinity error map misses the defect — is the defect
small compared with one cell of the `gh × gw` grid?

The cell checks the lesson's claims on this run's numbers: (a) training lowers SNL's intra- and
inter-affinity terms on unseen normal images to at most half of the untrained student's; (b) the terms SNL
optimises and RD does not — the inter-affinity and the per-channel cosine — are lower for SNL's student than
for RD's; (c) the trained SNL student's affinity error is larger inside defects than outside them, on
average over all defective test images.
"""),
    code(r"""
untrained, trained, rd_terms = terms["SNL, untrained"], terms["SNL, trained"], terms["RD, trained (measured only)"]
for k in ("intra_affinity", "inter_affinity"):
    print(f"{k}: untrained {untrained[k]:.4f} -> trained {trained[k]:.4f} (RD's student: {rd_terms[k]:.4f})")
    assert trained[k] <= 0.5 * untrained[k], f"training did not halve SNL's {k}"
for k in ("inter_affinity", "channel_cosine"):
    print(f"{k}: SNL {trained[k]:.4f} < RD {rd_terms[k]:.4f}?")
    assert trained[k] < rd_terms[k], f"SNL's student is not closer to the teacher than RD's on {k}"
ins, outs = in_out["SNL, trained"]
print(f"trained SNL, affinity error inside defects {ins.mean():.4f} vs outside {outs.mean():.4f} "
      f"over {len(ins)} defective images")
assert ins.mean() > outs.mean(), "the affinity error does not concentrate on the defects"
"""),
]
