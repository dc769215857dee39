"""Procedural, offline, deterministic multi-class anomaly-detection dataset.

This module draws a small industrial-inspection data set from scratch (numpy +
PIL only, no downloads) and writes it to disk in the **MVTec AD layout**::

    OUT/<category>/train/good/000.png ...
    OUT/<category>/test/good/000.png ...
    OUT/<category>/test/<defect_kind>/000.png ...
    OUT/<category>/ground_truth/<defect_kind>/000_mask.png
    OUT/SYNTHETIC.json                      (manifest, written last)

It is the package's embedded default data set: something to train a unified
(one model for all classes) unsupervised detector on, on a laptop CPU, when you
have no data of your own.

Categories (``CATEGORIES``)
    Textures -- the whole image is the "surface":

    * ``weave``  -- plain-weave fabric: two families of threads going over and
      under each other, with thread-to-thread irregularities.
    * ``grain``  -- wood: warped growth rings plus fine fibre streaks.
    * ``carpet`` -- (extra, not in the default set) looped pile with mottling.

    Objects -- one part on a plain, unevenly lit background:

    * ``bolt``    -- a hex bolt seen from the side, with a washer and a nut on
      the thread.
    * ``pcb``     -- a small circuit board with an IC, resistors, capacitors,
      an LED, traces and mounting holes.
    * ``capsule`` -- (extra, not in the default set) a two-colour capsule with
      an imprint.

    The default ``SyntheticConfig.categories`` is ``("weave", "grain", "bolt",
    "pcb")``; pass ``categories=tuple(CATEGORIES)`` for all six.

Normal variation
    Every normal image is a fresh random draw: random phase/offset, small
    rotation, object position / scale / flip, per-part position jitter,
    colour and brightness jitter, an illumination gradient and per-image
    sensor noise.  A model has to learn a *distribution*, not a template.

Defect kinds (``DEFECTS``)
    * ``scratch`` -- a thin curved line, lighter or darker than the surface.
    * ``hole``    -- a dark, irregular blob (a hole / pit / burn).
    * ``stain``   -- a soft blob whose colour is a small shift of the local
      colour (the surface stays visible through it).
    * ``missing`` -- objects only, *logical*: a part is absent (the nut or the
      washer of the bolt, a component of the board, the imprint of the
      capsule).
    * ``extra``   -- objects only, *logical*: an additional part (a second nut
      or washer, an extra component, an extra imprint mark).

    Structural defects are drawn onto the object surface only (never onto the
    background of an object image).  Logical defects are rendered by drawing
    the same scene again with the part removed or added.

Masks are exact
    The normal image and the defective image are rendered from the same random
    draw, with the same sensor-noise field; the ground-truth mask is exactly
    the set of pixels whose 8-bit RGB value differs between the two (stored as
    0/255 'L' PNG).  Very faint fringes of soft shapes are cut away *before*
    rendering, so every masked pixel really changed noticeably.

How hard it is
    Defects cover roughly 0.06--2 % of the image (scratches are the thin end,
    stains the large one) and are clearly visible to a person, but their colours stay near the local colour range, so global
    image statistics hardly move.  The trivial detector of
    :func:`trivial_baseline` (mean absolute difference to the mean training
    image) scores around chance level; a patch-level method (PatchCore-like,
    feature reconstruction, ...) should do well on the structural defects and
    find the logical ones harder.

Determinism
    Every image is drawn from ``numpy.random.default_rng`` seeded by
    ``(seed, category, split, kind, index)``, so the same seed gives
    byte-identical files (with the same numpy/scipy/Pillow versions), and
    generating a subset of the categories gives exactly the same images for
    those categories.

Typical use::

    from unistad_edu.synthetic import make_synthetic, trivial_baseline
    root = make_synthetic("data/synthetic")          # ~ a few seconds
    print(trivial_baseline(root))

or ``python -m unistad_edu data synthetic --out OUT [--size 128] [--seed 0] [--force] [--baseline]``.
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from . import ownership
from .files import install_folder, staging_folder

__all__ = [
    "CATEGORIES",
    "DEFECTS",
    "DEFAULT_CATEGORIES",
    "MANIFEST_NAME",
    "SyntheticConfig",
    "SyntheticDatasetError",
    "make_synthetic",
    "render_sample",
    "draw_structural",
    "sample_rng",
    "trivial_baseline",
]

GENERATOR_VERSION = 1
MANIFEST_NAME = "SYNTHETIC.json"

#: category name -> "texture" or "object"
CATEGORIES: dict[str, str] = {
    "weave": "texture",
    "grain": "texture",
    "carpet": "texture",
    "bolt": "object",
    "pcb": "object",
    "capsule": "object",
}

#: category name -> defect kinds used for that category (order = folder order)
DEFECTS: dict[str, tuple[str, ...]] = {
    "weave": ("scratch", "hole", "stain"),
    "grain": ("scratch", "hole", "stain"),
    "carpet": ("scratch", "hole", "stain"),
    "bolt": ("scratch", "hole", "stain", "missing", "extra"),
    "pcb": ("scratch", "hole", "stain", "missing", "extra"),
    "capsule": ("scratch", "hole", "stain", "missing", "extra"),
}

DEFAULT_CATEGORIES: tuple[str, ...] = ("weave", "grain", "bolt", "pcb")

F32 = np.float32


class SyntheticDatasetError(ValueError):
    """An output folder exists but is incomplete or was made with another config."""


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate.  ``n_test_defect`` is per defect kind."""

    size: int = 256
    n_train: int = 60
    n_test_good: int = 15
    n_test_defect: int = 6
    categories: tuple[str, ...] = field(default=DEFAULT_CATEGORIES)
    seed: int = 0

    def __post_init__(self):
        cats = self.categories
        if isinstance(cats, str):
            cats = (cats,)
        cats = tuple(cats)
        object.__setattr__(self, "categories", tuple(str(c) for c in cats))
        for name in ("size", "n_train", "n_test_good", "n_test_defect", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))
        unknown = [c for c in cats if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; choose from {sorted(CATEGORIES)}")
        if not cats or len(set(cats)) != len(cats):
            raise ValueError(f"categories must be non-empty and unique, got {cats}")
        if int(self.size) < 32:
            raise ValueError(f"size must be >= 32, got {self.size}")
        if self.n_train < 1 or self.n_test_good < 0 or self.n_test_defect < 0:
            raise ValueError("n_train must be >= 1 and the test counts >= 0")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["categories"] = list(self.categories)
        return d


# ----------------------------------------------------------------------------
# random streams
# ----------------------------------------------------------------------------


def _tag(s: str) -> int:
    return zlib.crc32(s.encode("utf-8")) & 0xFFFFFFFF


def sample_rng(seed: int, category: str, split: str, kind: str, index: int) -> np.random.Generator:
    """The generator used for image ``index`` of ``OUT/category/split/kind``.

    Independent of which other categories / how many images are generated.
    """
    ss = np.random.SeedSequence([int(seed), _tag(category), _tag(split), _tag(kind), int(index)])
    return np.random.default_rng(ss)


# ----------------------------------------------------------------------------
# small drawing helpers (float32 RGB images in [0, 1], pixel centres at ints)
# ----------------------------------------------------------------------------

_GRID_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(S: int) -> tuple[np.ndarray, np.ndarray]:
    if S not in _GRID_CACHE:
        y, x = np.mgrid[0:S, 0:S].astype(F32)
        _GRID_CACHE[S] = (x, y)
    return _GRID_CACHE[S]


def _smooth_noise(
    rng: np.random.Generator, S: int, cells: int, shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Zero-mean, ~unit-std smooth noise of size S x S with ``cells`` bumps per side."""
    cells = max(2, int(cells))
    h, w = shape if shape is not None else (cells + 3, cells + 3)
    low = rng.standard_normal((h, w), dtype=F32)
    big = Image.fromarray(low, mode="F").resize(
        (S * w // (cells + 1) + 2, S * h // (cells + 1) + 2), Image.BICUBIC
    )
    arr = np.asarray(big, dtype=F32)
    oy = int(rng.integers(0, max(1, arr.shape[0] - S)))
    ox = int(rng.integers(0, max(1, arr.shape[1] - S)))
    out = arr[oy : oy + S, ox : ox + S]
    return (out - out.mean()) / (out.std() + 1e-6)


def _rot(x, y, cx, cy, ang):
    c, s = math.cos(ang), math.sin(ang)
    dx, dy = x - F32(cx), y - F32(cy)
    return F32(c) * dx + F32(s) * dy, F32(-s) * dx + F32(c) * dy


def _sd_box(u, v, hw, hh, r=0.0):
    qx = np.abs(u) - F32(hw - r)
    qy = np.abs(v) - F32(hh - r)
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0) - F32(r)


def _coverage(d):
    """Anti-aliased coverage from a signed distance in pixels (negative inside)."""
    return np.clip(F32(0.5) - d, 0, 1)


def _illumination(rng, S, strength):
    x, y = _grid(S)
    a = rng.uniform(0, 2 * math.pi)
    g = (math.cos(a) * (x - S / 2) + math.sin(a) * (y - S / 2)) / S
    return (F32(1.0) + F32(strength) * g).astype(F32)


@dataclass
class _Part:
    """One shape of an object scene, in pixel units."""

    shape: str  # "box" | "circle"
    cx: float
    cy: float
    ang: float
    hw: float  # half width (box) / radius (circle)
    hh: float = 0.0
    r: float = 0.0  # corner radius (box) / inner hole radius (circle = ring)
    color: tuple = (0.5, 0.5, 0.5)
    shade: str = "flat"  # flat | cyl | hex | thread | dome | bands
    extra: dict = field(default_factory=dict)
    fg: bool = True


def _part_distance(p: _Part, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (pixels, negative inside) to the part's box, disc or ring."""
    if p.shape == "box":
        return _sd_box(u, v, p.hw, p.hh, p.r)
    rho = np.sqrt(u * u + v * v)
    d = rho - F32(p.hw)
    if p.r > 0:  # ring
        d = np.maximum(d, F32(p.r) - rho)
    return d


def _part_colour(p: _Part, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The part's shaded RGB colour at part coordinates ``u`` (along) and ``v`` (across)."""
    col = np.asarray(p.color, F32)
    if p.shade == "flat":
        return col[None, None, :]
    t = v / F32(max(p.hh if p.shape == "box" else p.hw, 1e-3))  # -1..1 across the part
    if p.shape == "box" and p.shade in ("cyl", "thread"):
        sh = F32(0.62) + F32(0.5) * np.exp(-(((t + F32(0.3)) / F32(0.45)) ** 2)) - F32(0.18) * t * t
        if p.shade == "thread":
            pitch = F32(p.extra["pitch"])
            start = F32(p.extra["start"])
            ph = (u + F32(0.45) * v) / pitch
            tri = np.abs(ph - np.floor(ph) - F32(0.5)) * F32(2)  # 0..1
            on = (u > start).astype(F32)
            sh = sh * (F32(1) - on * F32(0.32) * tri)
        return col[None, None, :] * sh[..., None]
    if p.shade == "hex":  # three visible faces of a hexagonal prism
        face = np.where(np.abs(t) < 0.5, F32(1.08), np.where(t < 0, F32(0.86), F32(0.66)))
        return col[None, None, :] * face[..., None]
    if p.shade == "dome":
        rho = np.sqrt(u * u + v * v) / F32(p.hw)
        hx, hy = u / F32(p.hw) + F32(0.35), v / F32(p.hw) + F32(0.35)
        hl = np.exp(-(hx * hx + hy * hy) / F32(0.12))
        sh = F32(0.85) + F32(0.15) * (F32(1) - rho * rho) + F32(0.35) * hl
        return col[None, None, :] * sh[..., None]
    if p.shade == "bands":  # resistor colour bands along u
        c = np.broadcast_to(col, u.shape + (3,)).copy()
        for bu, bw, bcol in p.extra["bands"]:
            m = (np.abs(u - F32(bu)) < F32(bw))[..., None]
            c = np.where(m, np.asarray(bcol, F32), c)
        sh = F32(0.8) + F32(0.3) * np.exp(-(((t + F32(0.3)) / F32(0.5)) ** 2))
        return c * sh[..., None]
    raise ValueError(p.shade)


def _draw_part(img: np.ndarray, fg: np.ndarray, p: _Part) -> None:
    """Paint part ``p`` over ``img`` (anti-aliased) and, for a foreground part, into ``fg``."""
    S = img.shape[0]
    ext = (math.hypot(p.hw, p.hh) if p.shape == "box" else p.hw) + 2
    x0, x1 = max(int(p.cx - ext), 0), min(int(p.cx + ext) + 2, S)
    y0, y1 = max(int(p.cy - ext), 0), min(int(p.cy + ext) + 2, S)
    if x0 >= x1 or y0 >= y1:
        return
    X, Y = _grid(S)
    X, Y = X[y0:y1, x0:x1], Y[y0:y1, x0:x1]
    u, v = _rot(X, Y, p.cx, p.cy, p.ang)
    a = _coverage(_part_distance(p, u, v))
    if not a.any():
        return
    c = _part_colour(p, u, v)
    a3 = a[..., None]
    win = img[y0:y1, x0:x1]
    win *= F32(1) - a3
    win += a3 * c
    if p.fg:
        np.maximum(fg[y0:y1, x0:x1], a, out=fg[y0:y1, x0:x1])


# ----------------------------------------------------------------------------
# textures
# ----------------------------------------------------------------------------


def _tex_weave(rng: np.random.Generator, S: int):
    x, y = _grid(S)
    p = S / rng.uniform(9.0, 12.0)  # thread pitch in px
    ang = math.radians(rng.uniform(-5, 5))
    u, v = _rot(x, y, S / 2, S / 2, ang)
    u = u + F32(rng.uniform(0, 2 * p))
    v = v + F32(rng.uniform(0, 2 * p))
    warp_amp = F32(rng.uniform(0.02, 0.06) * p)
    u = u + warp_amp * _smooth_noise(rng, S, 5)
    v = v + warp_amp * _smooth_noise(rng, S, 5)
    su, sv = u / F32(p), v / F32(p)
    iu, iv = np.floor(su), np.floor(sv)
    fu, fv = su - iu, sv - iv
    fill = F32(rng.uniform(0.74, 0.86))

    def prof(f):
        t = (f - F32(0.5)) / (fill / 2)
        inside = np.abs(t) < 1
        return inside, np.sqrt(np.clip(F32(1) - t * t, 0, 1))

    h_in, h_sh = prof(fv)  # horizontal thread (runs along u)
    v_in, v_sh = prof(fu)
    K = 64
    row_j = rng.normal(0, 0.05, K).astype(F32)
    col_j = rng.normal(0, 0.05, K).astype(F32)
    h_val = (F32(0.55) + F32(0.45) * h_sh) * (F32(0.78) + F32(0.22) * np.sin(np.pi * fu)) + row_j[
        iv.astype(np.int64) % K
    ]
    v_val = (F32(0.55) + F32(0.45) * v_sh) * (F32(0.78) + F32(0.22) * np.sin(np.pi * fv)) + col_j[
        iu.astype(np.int64) % K
    ]
    # fine fibres, along each thread
    fib_f = F32(rng.uniform(5, 8))
    h_val = h_val + F32(0.05) * np.sin(F32(2 * np.pi) * fib_f * (fv + F32(0.3) * fu))
    v_val = v_val + F32(0.05) * np.sin(F32(2 * np.pi) * fib_f * (fu + F32(0.3) * fv))
    h_top = ((iu + iv) % 2) == 0
    show_h = np.where(h_top, h_in, h_in & ~v_in)
    show_v = ~show_h & v_in
    base = rng.uniform(0.5, 0.7)
    hue = 0.6 + rng.uniform(-0.04, 0.04)  # denim-like blue
    warp_col = np.array(_hsv(hue, rng.uniform(0.25, 0.45), base), F32)
    weft_col = np.array(
        _hsv(hue + rng.uniform(-0.06, 0.06), rng.uniform(0.2, 0.4), base * rng.uniform(0.85, 1.0)),
        F32,
    )
    gap_col = warp_col * F32(0.35)
    img = np.where(
        show_h[..., None],
        h_val[..., None] * warp_col,
        np.where(show_v[..., None], v_val[..., None] * weft_col, gap_col),
    ).astype(F32)
    return img


def _tex_grain(rng: np.random.Generator, S: int):
    x, y = _grid(S)
    ang = math.radians(rng.uniform(-8, 8) + (90 if rng.random() < 0.5 else 0))
    u, v = _rot(x, y, rng.uniform(0, S), rng.uniform(0, S), ang)
    period = S * rng.uniform(0.07, 0.11)
    warp = _smooth_noise(rng, S, 3) * F32(S * rng.uniform(0.03, 0.06))
    warp2 = _smooth_noise(rng, S, 7) * F32(S * 0.012)
    bend = F32(rng.uniform(-0.6, 0.6) / S) * u * u
    r = (v + warp + warp2 + bend) / F32(period) + F32(rng.uniform(0, 1))
    g = r - np.floor(r)
    ring = g ** F32(rng.uniform(2.0, 3.5))  # slow early wood, sharp late wood
    # fibre streaks: 1-d noise across the grain, stretched along it
    L = 4 * S
    n1 = np.interp(np.arange(L), np.arange(0, L, 2), rng.standard_normal(L // 2)).astype(F32)
    idx = np.clip(((v + warp * F32(0.5)) * F32(1.5)).astype(np.int64) + L // 2, 0, L - 1)
    streak = n1[idx]
    m = F32(0.62) * ring + F32(0.1) * streak + F32(0.12) * _smooth_noise(rng, S, 4)
    light = np.array([0.80, 0.60, 0.40], F32) * rng.uniform(0.95, 1.05, 3).astype(F32)
    dark = light * np.array([0.67, 0.60, 0.50], F32) * F32(rng.uniform(0.92, 1.05))
    m = np.clip(m, -0.2, 1.2)[..., None]
    return (light * (F32(1) - m) + dark * m).astype(F32)


def _tex_carpet(rng: np.random.Generator, S: int):
    x, y = _grid(S)
    p = S / rng.uniform(28, 36)
    ang = math.radians(rng.uniform(-6, 6))
    u, v = _rot(x, y, S / 2, S / 2, ang)
    wu = _smooth_noise(rng, S, 8) * F32(0.35 * p)
    wv = _smooth_noise(rng, S, 8) * F32(0.35 * p)
    ph = rng.uniform(0, 2 * math.pi, 2)
    loops = np.sin((u + wu) * F32(2 * math.pi / p) + F32(ph[0])) * np.sin(
        (v + wv) * F32(2 * math.pi / p) + F32(ph[1])
    )
    from scipy.ndimage import gaussian_filter

    fib = gaussian_filter(rng.standard_normal((S, S), dtype=F32), 0.8)
    fib /= fib.std() + 1e-6
    mott = _smooth_noise(rng, S, 5)
    m = F32(0.75) + F32(0.12) * loops + F32(0.08) * fib + F32(0.06) * mott
    col = np.array(
        _hsv(0.03 + rng.uniform(-0.025, 0.025), rng.uniform(0.4, 0.55), rng.uniform(0.5, 0.65)), F32
    )
    return (m[..., None] * col).astype(F32)


def _hsv(h, s, v):
    return colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))


# ----------------------------------------------------------------------------
# objects: a background + an ordered list of parts (+ candidates for "extra")
# ----------------------------------------------------------------------------


@dataclass
class _Scene:
    bg: np.ndarray  # S x S x 3
    parts: list  # list[_Part]
    removable: list  # indices into parts (groups: list of lists of indices)
    extras: list  # list of list[_Part] (candidate additions)


def _background(rng, S, base, spread=0.04, illum=0.25):
    col = np.asarray(base, F32) * F32(rng.uniform(1 - spread, 1 + spread))
    n = _smooth_noise(rng, S, 4) * F32(0.015)
    return (
        col[None, None, :] * (_illumination(rng, S, rng.uniform(0, illum)) + n)[..., None]
    ).astype(F32)


def _obj_bolt(rng: np.random.Generator, S: int) -> _Scene:
    bg = _background(rng, S, (0.80, 0.80, 0.78))
    L = S * rng.uniform(0.58, 0.68)
    cx = S / 2 + rng.uniform(-0.05, 0.05) * S
    cy = S / 2 + rng.uniform(-0.05, 0.05) * S
    ang = math.radians(rng.uniform(-20, 20) + (180 if rng.random() < 0.5 else 0))
    steel = np.array([0.50, 0.52, 0.56], F32) * F32(rng.uniform(0.88, 1.12))
    ca, sa = math.cos(ang), math.sin(ang)

    def at(uu):  # point on the bolt axis, uu in units of L
        return cx + ca * uu * L, cy + sa * uu * L

    def box(u0, u1, hh, shade, color=None, r=0.0, **extra):
        px, py = at((u0 + u1) / 2)
        return _Part(
            "box",
            px,
            py,
            ang,
            (u1 - u0) / 2 * L,
            hh * L,
            r * L,
            tuple(color if color is not None else steel),
            shade,
            extra,
        )

    j = lambda s: rng.uniform(-s, s)  # noqa: E731
    shank_hh = 0.058 + j(0.004)
    thread_start = -0.10 + j(0.02)
    nut_c = 0.12 + j(0.025)
    parts = [
        box(
            -0.34,
            0.47,
            shank_hh,
            "thread",
            r=0.025,
            pitch=0.036 * L,
            start=(thread_start - 0.065) * L,
        ),
        box(-0.365, -0.33, 0.15 + j(0.005), "cyl", color=steel * F32(1.1)),  # washer
        box(-0.50, -0.36, 0.17 + j(0.006), "hex", r=0.012),  # head
        box(
            nut_c - 0.055, nut_c + 0.055, 0.145 + j(0.005), "hex", color=steel * F32(0.95), r=0.01
        ),  # nut
    ]
    extras = [
        [
            box(0.33 - 0.055, 0.33 + 0.055, 0.145, "hex", color=steel * F32(0.95), r=0.01)
        ],  # second nut
        [
            box(nut_c - 0.09, nut_c - 0.06, 0.135, "cyl", color=steel * F32(1.1))
        ],  # washer under the nut
    ]
    return _Scene(bg, parts, [[1], [3]], extras)


class _Board:
    """A printed circuit board drawn from ``rng``: its pose, colours and part builders (board coordinates in
    units of the board's scale). The draws happen in the order the methods are called."""

    def __init__(self, rng: np.random.Generator, S: int):
        self.rng, self.S = rng, S
        self.bg = _background(rng, S, (0.22, 0.22, 0.24), illum=0.3)
        self.ang = math.radians(rng.uniform(-3, 3))
        self.cos, self.sin = math.cos(self.ang), math.sin(self.ang)
        self.bx = S / 2 + rng.uniform(-0.035, 0.035) * S
        self.by = S / 2 + rng.uniform(-0.035, 0.035) * S
        self.sc = S * rng.uniform(0.95, 1.03)
        self.green = np.array(
            _hsv(0.36 + self.j(0.03), 0.7 + self.j(0.08), 0.42 + self.j(0.05)), F32
        )
        self.gold = np.array([0.80, 0.66, 0.32], F32) * F32(rng.uniform(0.92, 1.05))
        self.silk = np.array([0.88, 0.9, 0.86], F32)

    def j(self, s):
        return self.rng.uniform(-s, s)

    def at(self, u, v):
        ca, sa = self.cos, self.sin
        return self.bx + (ca * u - sa * v) * self.sc, self.by + (sa * u + ca * v) * self.sc

    def box(self, u, v, hw, hh, color, shade="flat", r=0.0, rot=0.0, fg=True, **extra):
        px, py = self.at(u, v)
        sc = self.sc
        return _Part(
            "box", px, py, self.ang + rot, hw * sc, hh * sc, r * sc, tuple(color), shade, extra, fg
        )

    def circ(self, u, v, rad, color, shade="flat", inner=0.0):
        px, py = self.at(u, v)
        return _Part(
            "circle", px, py, self.ang, rad * self.sc, 0.0, inner * self.sc, tuple(color), shade
        )

    def bare(self) -> list[_Part]:
        """The board, its traces and its four mounting holes."""
        parts = [self.box(0, 0, 0.44, 0.43, self.green, r=0.03)]
        trace, w = self.green * F32(1.35), 0.008
        for u0, v0, u1, v1 in [
            (-0.30, -0.30, 0.30, -0.30),
            (0.30, -0.30, 0.30, 0.10),
            (-0.36, 0.05, -0.30, 0.05),
            (-0.30, 0.05, -0.30, 0.30),
            (-0.30, 0.30, 0.02, 0.30),
            (0.02, 0.30, 0.02, 0.24),
            (0.12, -0.20, 0.12, 0.16),
            (0.12, 0.16, 0.22, 0.16),
            (-0.12, 0.04, -0.12, 0.20),
            (-0.12, 0.20, -0.15, 0.20),
            (0.20, -0.08, 0.34, -0.08),
        ]:
            parts.append(
                self.box(
                    (u0 + u1) / 2, (v0 + v1) / 2, abs(u1 - u0) / 2 + w, abs(v1 - v0) / 2 + w, trace
                )
            )
        S = self.S
        for u, v in [(-0.37, -0.36), (0.37, -0.36), (-0.37, 0.36), (0.37, 0.36)]:
            parts.append(self.circ(u, v, 0.032, self.gold))
            x, y = self.at(u, v)
            parts.append(
                self.circ(
                    u, v, 0.017, self.bg[int(np.clip(y, 0, S - 1)), int(np.clip(x, 0, S - 1))]
                )
            )
        return parts

    def resistor(self, u, v, vertical):
        """(footprint, body) of a banded resistor."""
        rot, sc, gold = (math.pi / 2 if vertical else 0.0), self.sc, self.gold
        du, dv = (0.0, 0.052) if vertical else (0.052, 0.0)
        pads = [
            self.box(u - du, v - dv, 0.016, 0.02, gold, rot=rot),
            self.box(u + du, v + dv, 0.016, 0.02, gold, rot=rot),
        ]
        body_col = np.array([0.80, 0.70, 0.50], F32) * F32(self.rng.uniform(0.93, 1.05))
        band_cols = [
            tuple(
                self.rng.choice(
                    [(0.5, 0.1, 0.1), (0.1, 0.1, 0.1), (0.85, 0.45, 0.1), (0.2, 0.2, 0.6)]
                )
            )
            for _ in range(3)
        ]
        body = self.box(
            u,
            v,
            0.05,
            0.02,
            body_col,
            "bands",
            r=0.012,
            rot=rot,
            bands=[
                (-0.022 * sc, 0.005 * sc, band_cols[0]),
                (-0.004 * sc, 0.005 * sc, band_cols[1]),
                (0.016 * sc, 0.005 * sc, band_cols[2]),
            ],
        )
        return pads, [body]

    def capacitor(self, u, v, rad):
        """(footprint, body) of an electrolytic capacitor seen from above."""
        ring = self.circ(u, v, rad + 0.01, self.silk, inner=rad + 0.002)
        cap_col = np.array(_hsv(0.62 + self.j(0.03), 0.6, 0.45 + self.j(0.05)), F32)
        body = [
            self.circ(u, v, rad, cap_col, "dome"),
            self.box(u - rad * 0.55, v, rad * 0.22, rad * 0.75, cap_col * F32(1.8), r=rad * 0.2),
            self.circ(u, v, rad * 0.45, cap_col * F32(0.8), inner=rad * 0.38),
        ]
        pads = [
            self.box(u, v - rad * 0.5, 0.01, 0.01, self.gold),
            self.box(u, v + rad * 0.5, 0.01, 0.01, self.gold),
        ]
        return [ring, *pads], body

    def led(self, u, v):
        """(footprint, body) of a red LED."""
        red = np.array([0.85, 0.12 + self.j(0.04), 0.1], F32)
        return [self.circ(u, v, 0.034, self.silk, inner=0.028)], [
            self.circ(u, v, 0.026, red, "dome")
        ]

    def ic(self) -> list[_Part]:
        """A 12-pin chip: its pins, body and pin-1 dot."""
        icu, icv = -0.12 + self.j(0.008), -0.08 + self.j(0.008)
        parts = [
            self.box(icu - 0.1 + k * 0.04, icv + s_ * 0.105, 0.009, 0.022, (0.72, 0.72, 0.74))
            for k in range(6)
            for s_ in (-1, 1)
        ]
        parts.append(self.box(icu, icv, 0.14, 0.09, (0.12, 0.12, 0.13), "flat", r=0.008))
        parts.append(self.circ(icu - 0.11, icv + 0.055, 0.01, (0.3, 0.3, 0.32)))
        return parts


def _obj_pcb(rng: np.random.Generator, S: int) -> _Scene:
    """A circuit board: a chip, three resistors, two capacitors and an LED, any of whose bodies may go
    missing; four more parts that may be added."""
    board = _Board(rng, S)
    parts = board.bare() + board.ic()
    j = board.j
    comps = [
        board.resistor(0.21 + j(0.006), -0.20 + j(0.006), False),
        board.resistor(0.21 + j(0.006), -0.02 + j(0.006), False),
        board.resistor(-0.19 + j(0.006), 0.20 + j(0.006), True),
        board.capacitor(0.24 + j(0.006), 0.18 + j(0.006), 0.06),
        board.capacitor(0.02 + j(0.006), 0.14 + j(0.006), 0.05),
        board.led(-0.30 + j(0.006), -0.12 + j(0.006)),
    ]
    for footprint, body in comps:
        parts.extend(footprint)
    removable = []
    for footprint, body in comps:
        removable.append(list(range(len(parts), len(parts) + len(body))))
        parts.extend(body)
    extras = []
    for u, v in [(-0.05, 0.30), (0.30, 0.33), (-0.02, -0.31)]:
        fp, body = board.resistor(u + j(0.01), v + j(0.01), False)
        extras.append(fp + body)
    fp, body = board.capacitor(-0.09 + j(0.008), 0.245 + j(0.008), 0.042)
    extras.append(fp + body)
    fp, body = board.led(0.05 + j(0.01), 0.25 + j(0.01))
    extras.append(body)
    return _Scene(board.bg, parts, removable, extras)


def _obj_capsule(rng: np.random.Generator, S: int) -> _Scene:
    bg = _background(rng, S, (0.30, 0.27, 0.25), illum=0.3)
    L = S * rng.uniform(0.62, 0.72)
    hh = L * rng.uniform(0.15, 0.17)
    cx = S / 2 + rng.uniform(-0.05, 0.05) * S
    cy = S / 2 + rng.uniform(-0.05, 0.05) * S
    ang = math.radians(rng.uniform(-15, 15) + (180 if rng.random() < 0.5 else 0))
    ca, sa = math.cos(ang), math.sin(ang)
    col_a = np.array(_hsv(rng.uniform(0.0, 0.06), 0.7, 0.75), F32)
    col_b = np.array([0.92, 0.9, 0.84], F32) * F32(rng.uniform(0.95, 1.02))

    def at(uu, vv=0.0):
        return cx + ca * uu - sa * vv, cy + sa * uu + ca * vv

    parts = [
        _Part("box", *at(L * 0.1), ang, L * 0.4, hh, hh, tuple(col_b), "cyl"),
        _Part("box", *at(-L * 0.21), ang, L * 0.29, hh * 1.04, hh * 1.04, tuple(col_a), "cyl"),
        _Part("box", *at(-L * 0.02), ang, L * 0.1, hh * 1.04, 0.0, tuple(col_a), "cyl"),
    ]
    ink = (0.18, 0.18, 0.22)
    n0 = len(parts)
    for k in range(3):
        parts.append(
            _Part("circle", *at(L * (0.13 + 0.1 * k), hh * 0.1), ang, L * 0.028, color=ink)
        )
    parts.append(_Part("box", *at(L * 0.23, -hh * 0.45), ang, L * 0.12, L * 0.014, L * 0.01, ink))
    removable = [list(range(n0, n0 + 3)), [n0 + 3]]
    extras = [
        [_Part("circle", *at(-L * 0.2, hh * 0.1), ang, L * 0.028, color=(0.95, 0.9, 0.85))],
        [_Part("box", *at(L * 0.23, hh * 0.6), ang, L * 0.12, L * 0.014, L * 0.01, ink)],
    ]
    return _Scene(bg, parts, removable, extras)


def _draw_scene(scene: _Scene, drop: list | None = None, add: list | None = None):
    img = scene.bg.copy()
    S = img.shape[0]
    fg = np.zeros((S, S), F32)
    skip = set(drop or [])
    for i, p in enumerate(scene.parts):
        if i not in skip:
            _draw_part(img, fg, p)
    for p in add or []:
        _draw_part(img, fg, p)
    return img, fg


_TEXTURES: dict[str, Callable] = {"weave": _tex_weave, "grain": _tex_grain, "carpet": _tex_carpet}
_OBJECTS: dict[str, Callable] = {"bolt": _obj_bolt, "pcb": _obj_pcb, "capsule": _obj_capsule}


# ----------------------------------------------------------------------------
# structural defects (drawn on the clean float image, restricted to ``fg``)
# ----------------------------------------------------------------------------


def _pick_point(rng, fg, margin):
    S = fg.shape[0]
    m = fg > 0.99
    if margin > 0:
        mm = np.zeros_like(m)
        mm[margin : S - margin, margin : S - margin] = m[margin : S - margin, margin : S - margin]
        if mm.any():
            m = mm
    idx = np.flatnonzero(m)
    if idx.size == 0:
        idx = np.flatnonzero(fg > 0.5)
    k = int(idx[rng.integers(0, idx.size)])
    return float(k % S), float(k // S)


def _blob(rng, S, cx, cy, r0, soft):
    """Irregular blob alpha (full image), radius ~r0 px; soft = edge width in px."""
    X, Y = _grid(S)
    dx, dy = X - F32(cx), Y - F32(cy)
    rho = np.sqrt(dx * dx + dy * dy)
    th = np.arctan2(dy, dx)
    R = np.full_like(rho, F32(r0))
    for k in (2, 3, 4, 5):
        R += F32(r0 * rng.uniform(0, 0.25) / math.sqrt(k - 1)) * np.cos(
            F32(k) * th + F32(rng.uniform(0, 2 * math.pi))
        )
    R = np.maximum(R, F32(0.3 * r0))
    if soft <= 1.0:
        return _coverage(rho - R), rho, R
    return np.clip((R - rho) / F32(soft) + F32(0.5), 0, 1), rho, R


def _local_mean(img, a):
    w = a.sum()
    return (img * a[..., None]).reshape(-1, 3).sum(0) / max(w, 1e-6)


def _defect_hole(rng, img, fg, S):
    r0 = S * rng.uniform(0.025, 0.05)
    cx, cy = _pick_point(rng, fg, int(r0))
    a, rho, R = _blob(rng, S, cx, cy, r0, 1.0)
    a = a * fg
    a[a < 0.25] = 0
    local = _local_mean(img, a)
    depth = F32(rng.uniform(0.15, 0.3))
    col = (local * depth)[None, None, :] * (F32(0.55) + F32(0.45) * np.clip(rho / R, 0, 1))[
        ..., None
    ]
    return img * (F32(1) - a[..., None]) + col * a[..., None]


def _defect_stain(rng, img, fg, S):
    r0 = S * rng.uniform(0.045, 0.08)
    cx, cy = _pick_point(rng, fg, int(r0 * 0.5))
    soft = max(1.5, 0.2 * r0)
    a, rho, R = _blob(rng, S, cx, cy, r0, soft)
    # mottled interior and a slightly darker dried rim ("coffee ring")
    rim = np.exp(-(((R - rho) / F32(soft)) ** 2))
    a = a * (F32(0.8) + F32(0.12) * _smooth_noise(rng, S, 10).clip(-1, 1) + F32(0.25) * rim)
    a = np.clip(a * F32(rng.uniform(0.85, 1.0)), 0, 1) * fg
    a[a < 0.2] = 0
    tints = [
        (0.74, 0.56, 0.34),
        (0.56, 0.56, 0.62),
        (0.95, 0.62, 0.45),
        (0.58, 0.68, 0.95),
        (1.4, 1.32, 1.12),
    ]
    tint = np.array(tints[int(rng.integers(0, len(tints)))], F32)
    # pixelwise: the surface stays visible through the stain
    stained = np.clip(img * tint, 0, 1)
    return img * (F32(1) - a[..., None]) + stained * a[..., None]


def _defect_scratch(rng, img, fg, S):
    x0, y0 = _pick_point(rng, fg, 2)
    length = S * rng.uniform(0.15, 0.32)
    th = rng.uniform(0, 2 * math.pi)
    x2, y2 = x0 + length * math.cos(th), y0 + length * math.sin(th)
    bend = length * rng.uniform(-0.35, 0.35)
    mx, my = (x0 + x2) / 2 - bend * math.sin(th), (y0 + y2) / 2 + bend * math.cos(th)
    t = np.linspace(0, 1, 24)
    px = (1 - t) ** 2 * x0 + 2 * (1 - t) * t * mx + t * t * x2
    py = (1 - t) ** 2 * y0 + 2 * (1 - t) * t * my + t * t * y2
    ss = 4
    width = max(1.0, rng.uniform(1.3, 2.5) * S / 256)
    canvas = Image.new("L", (S * ss, S * ss), 0)
    ImageDraw.Draw(canvas).line(
        [(float((a + 0.5) * ss), float((b + 0.5) * ss)) for a, b in zip(px, py)],
        fill=255,
        width=max(1, int(round(width * ss))),
        joint="curve",
    )
    a = np.asarray(canvas.resize((S, S), Image.BOX), dtype=F32) / F32(255)
    a = a * fg
    a[a < 0.3] = 0
    if rng.random() < 0.5:
        mod = img + (F32(1) - img) * F32(rng.uniform(0.4, 0.6))
    else:
        mod = img * F32(rng.uniform(0.35, 0.5))
    return img * (F32(1) - a[..., None]) + mod * a[..., None]


_STRUCTURAL = {"hole": _defect_hole, "stain": _defect_stain, "scratch": _defect_scratch}


def draw_structural(
    kind: str, rng: np.random.Generator, img: np.ndarray, fg: np.ndarray | None = None
) -> np.ndarray:
    """One structural defect (``hole`` | ``stain`` | ``scratch``) drawn on ``img`` (S, S, 3) float32 in [0, 1],
    inside the foreground weights ``fg`` (S, S) (None: anywhere). Returns the new float image."""
    S = img.shape[0]
    if img.shape[:2] != (S, S):
        raise ValueError(f"draw_structural needs a square image, got {img.shape}")
    return _STRUCTURAL[kind](
        rng, img.astype(F32), np.ones((S, S), F32) if fg is None else fg.astype(F32), S
    )


# ----------------------------------------------------------------------------
# one sample
# ----------------------------------------------------------------------------


def render_sample(
    category: str, rng: np.random.Generator, size: int = 256, defect: str | None = None
):
    """Render one image of ``category`` from ``rng``.

    Returns ``(normal, defective, mask)``: ``normal`` is an ``(S, S, 3)`` uint8
    image.  With ``defect=None`` the other two are ``None``; otherwise
    ``defective`` is the same image (same random draw, same sensor noise) with
    the defect, and ``mask`` is a bool ``(S, S)`` array that is exactly
    ``(normal != defective).any(-1)`` (never empty).

    ``render_sample(c, sample_rng(seed, c, split, kind, i), size, kind)`` is
    what :func:`make_synthetic` writes for image ``i`` (``defect=None`` for
    ``good``), so callers can re-render the defect-free twin of any test image.
    """
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; choose from {sorted(CATEGORIES)}")
    if defect is not None and defect not in DEFECTS[category]:
        raise ValueError(
            f"category {category!r} has no defect {defect!r}; it has {DEFECTS[category]}"
        )
    S = int(size)
    if category in _TEXTURES:
        clean = _TEXTURES[category](rng, S)
        fg = np.ones((S, S), F32)
        scene = None
    else:
        scene = _OBJECTS[category](rng, S)
        clean, fg = _draw_scene(scene)
    finish = _photometric(rng, S)  # applied identically to the defective twin
    normal = finish(clean)
    if defect is None:
        return normal, None, None
    out, mask = _defective_twin(rng, category, defect, scene, clean, fg, normal, finish, S)
    return normal, out, mask


def _photometric(rng: np.random.Generator, S: int) -> Callable[[np.ndarray], np.ndarray]:
    """A global gain per channel, an offset and sensor noise drawn from ``rng``: the function that turns a
    clean float image into the uint8 photograph (the same draw for an image and its defective twin)."""
    gain = F32(rng.uniform(0.9, 1.1))
    cgain = rng.uniform(0.96, 1.04, 3).astype(F32)
    offset = F32(rng.uniform(-0.03, 0.03))
    sigma = F32(rng.uniform(0.008, 0.025))
    noise = rng.standard_normal((S, S, 3), dtype=F32)
    scale = (gain * cgain * F32(255)).astype(F32)
    base = noise * (sigma * F32(255))
    base += offset * F32(255) + F32(0.5)

    def finish(x):
        y = x * scale
        y += base
        np.clip(y, 0, 255, out=y)
        return y.astype(np.uint8)

    return finish


def _defective_twin(rng, category, defect, scene, clean, fg, normal, finish, S):
    """(defective image, mask): ``defect`` drawn on the clean image (or a part dropped / added to the scene)
    until it changes at least ``max(4, 0.06 % of the pixels)`` of the photograph; 30 tries."""
    min_area = max(4, int(0.0006 * S * S))
    for _ in range(30):
        if defect in _STRUCTURAL:
            bad = _STRUCTURAL[defect](rng, clean, fg, S)
        elif defect == "missing":
            group = scene.removable[int(rng.integers(0, len(scene.removable)))]
            bad, _ = _draw_scene(scene, drop=group)
        elif defect == "extra":
            add = scene.extras[int(rng.integers(0, len(scene.extras)))]
            bad, _ = _draw_scene(scene, add=add)
        else:  # pragma: no cover - guarded by render_sample
            raise ValueError(defect)
        out = finish(bad)
        mask = (out != normal).any(-1)
        if mask.sum() >= min_area:
            return out, mask
    raise RuntimeError(f"could not place a visible {defect!r} defect on {category!r} (size {S})")


# ----------------------------------------------------------------------------
# writing the data set
# ----------------------------------------------------------------------------


def _save_png(arr: np.ndarray, path: Path) -> None:
    # noisy images hardly compress; Huffman-only zlib is ~2x faster than the
    # default at the same file size
    Image.fromarray(arr).save(path, format="PNG", compress_level=1, compress_type=2)


def _expected_counts(cfg: SyntheticConfig) -> dict:
    counts = {}
    for c in cfg.categories:
        d = {"train/good": cfg.n_train, "test/good": cfg.n_test_good}
        for k in DEFECTS[c]:
            d[f"test/{k}"] = cfg.n_test_defect
            d[f"ground_truth/{k}"] = cfg.n_test_defect
        counts[c] = d
    return counts


def _name(i: int, n: int) -> str:
    return f"{i:0{max(3, len(str(max(n - 1, 0))))}d}"


def _jobs(root: Path, cfg: SyntheticConfig) -> list[tuple]:
    """One job per image; creates the folders."""
    jobs = []
    for cat in cfg.categories:
        for split, n in (("train", cfg.n_train), ("test", cfg.n_test_good)):
            d = root / cat / split / "good"
            d.mkdir(parents=True, exist_ok=True)
            jobs += [(cat, split, "good", i, d / f"{_name(i, n)}.png", None) for i in range(n)]
        for kind in DEFECTS[cat]:
            d = root / cat / "test" / kind
            g = root / cat / "ground_truth" / kind
            d.mkdir(parents=True, exist_ok=True)
            g.mkdir(parents=True, exist_ok=True)
            n = cfg.n_test_defect
            jobs += [
                (cat, "test", kind, i, d / f"{_name(i, n)}.png", g / f"{_name(i, n)}_mask.png")
                for i in range(n)
            ]
    return jobs


def _run_job(job: tuple, cfg: SyntheticConfig) -> None:
    cat, split, kind, i, path, mask_path = job
    rng = sample_rng(cfg.seed, cat, split, kind, i)
    if kind == "good":
        img, _, _ = render_sample(cat, rng, cfg.size)
        _save_png(img, path)
    else:
        _, bad, mask = render_sample(cat, rng, cfg.size, kind)
        _save_png(bad, path)
        _save_png(mask.astype(np.uint8) * 255, mask_path)


def _generate(root: Path, cfg: SyntheticConfig, workers: int) -> None:
    jobs = _jobs(root, cfg)
    if workers <= 1:
        for job in jobs:
            _run_job(job, cfg)
        return
    # threads: numpy and the PNG encoder release the GIL; every image has its
    # own random stream, so the output does not depend on the scheduling.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as ex:
        for _ in ex.map(lambda j: _run_job(j, cfg), jobs):
            pass


def _count_on_disk(root: Path, cat: str, rel: str) -> int:
    d = root / cat / rel
    return sum(1 for _ in d.glob("*.png")) if d.is_dir() else -1


def _generated_paths(cfg: SyntheticConfig) -> set[str]:
    """Every folder and file (relative POSIX paths) the generator writes for ``cfg``, the manifest included."""
    paths = {MANIFEST_NAME}
    for cat in cfg.categories:
        paths |= {cat, f"{cat}/train", f"{cat}/test", f"{cat}/ground_truth"}
        for split, n in (("train", cfg.n_train), ("test", cfg.n_test_good)):
            paths |= {f"{cat}/{split}/good"} | {
                f"{cat}/{split}/good/{_name(i, n)}.png" for i in range(n)
            }
        for kind in DEFECTS[cat]:
            n = cfg.n_test_defect
            paths |= {f"{cat}/test/{kind}", f"{cat}/ground_truth/{kind}"}
            paths |= {f"{cat}/test/{kind}/{_name(i, n)}.png" for i in range(n)}
            paths |= {f"{cat}/ground_truth/{kind}/{_name(i, n)}_mask.png" for i in range(n)}
    return paths


def check_replaceable(out: Path) -> None:
    """Refuse (:class:`SyntheticDatasetError`) to delete ``out`` for ``--force`` unless it is a set this generator
    wrote: a folder (not a link) whose ``SYNTHETIC.json`` carries the generator's format, holding only files the
    generator writes for the settings that manifest records (a set with an image missing is fine; a user's
    file, folder or data set is never deleted)."""
    out = Path(out)
    fix = "move it away or choose another --out; --force replaces only a synthetic set"
    if out.is_symlink() or not out.is_dir():
        raise SyntheticDatasetError(
            f"--force refused: {out} is {ownership.describe(out)}, not a synthetic data set: {fix}"
        )
    man = ownership.read_json(out / MANIFEST_NAME)
    if not ownership.is_synthetic_manifest(man):
        raise SyntheticDatasetError(
            f"--force refused: {out} is {ownership.describe(out)}, with no {MANIFEST_NAME} "
            f"written by this generator (its marker): it is not a synthetic set, and "
            f"--force never deletes other data: {fix}"
        )
    try:
        made = SyntheticConfig(**man["config"])
    except (TypeError, ValueError) as err:
        raise SyntheticDatasetError(
            f"--force refused: {out / MANIFEST_NAME} records unreadable settings ({err}), "
            f"so the generator's files cannot be told from others: {fix}"
        ) from None
    allowed = _generated_paths(made)
    other = ownership.foreign_entries(
        out, lambda rel, is_dir: rel in allowed and is_dir != rel.endswith((".png", ".json"))
    )
    if other:
        raise SyntheticDatasetError(
            f"--force refused: the synthetic set {out} also holds "
            f"{ownership.listing(other)}, which the generator did not write; replacing "
            f"the set would delete them: move them away, or choose another --out"
        )


def _check_existing(out: Path, cfg: SyntheticConfig) -> str | None:
    """None if ``out`` is a complete set for ``cfg``, else the reason it is not."""
    if not out.is_dir():
        return f"it is {ownership.describe(out)}, not a folder"
    man_path = out / MANIFEST_NAME
    if not man_path.is_file():
        return f"it has no {MANIFEST_NAME} manifest, so it is incomplete (an interrupted run?) or not a synthetic set"
    try:
        man = json.loads(man_path.read_text())
    except (OSError, ValueError) as e:
        return f"its {MANIFEST_NAME} is unreadable ({e})"
    if not isinstance(man, dict):
        return (
            f"its {MANIFEST_NAME} holds a JSON {type(man).__name__}, not the generator's manifest"
        )
    if man.get("generator_version") != GENERATOR_VERSION:
        return (
            f"it was made by generator version {man.get('generator_version')}, "
            f"this is version {GENERATOR_VERSION}"
        )
    if man.get("config") != cfg.to_json():
        saved, want = man.get("config") or {}, cfg.to_json()
        diff = [
            f"{k}: made with {saved.get(k)!r}, asked {want.get(k)!r}"
            for k in want
            if saved.get(k) != want.get(k)
        ]
        return f"it was generated with other settings ({'; '.join(diff) or saved})"
    for cat, counts in _expected_counts(cfg).items():
        for rel, n in counts.items():
            have = _count_on_disk(out, cat, rel)
            if have != n:
                return f"{cat}/{rel} holds {max(have, 0)} PNG files, expected {n}"
    return None


def _write_manifest(folder: Path, cfg: SyntheticConfig) -> None:
    """Write ``folder/SYNTHETIC.json``, the manifest that marks a finished set made with ``cfg``."""
    manifest = {
        "format": ownership.SYNTHETIC_FORMAT,
        "generator_version": GENERATOR_VERSION,
        "config": cfg.to_json(),
        "kinds": {c: CATEGORIES[c] for c in cfg.categories},
        "defects": {c: list(DEFECTS[c]) for c in cfg.categories},
        "counts": _expected_counts(cfg),
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def _replace_policy(cfg: SyntheticConfig, force: bool) -> Callable[[Path], bool]:
    """The ``replace`` callback of :func:`install_folder`: what to do with a folder at ``out``."""

    def replace(old: Path) -> bool:
        """With force: replace the set (checked again, it may have changed while this one was
        drawn); without: another process finished the same set meanwhile -- keep it -- or something
        else is there."""
        if force:
            check_replaceable(old)
            return True
        problem = _check_existing(old, cfg)
        if problem is None:
            return False
        raise SyntheticDatasetError(
            f"synthetic data folder {old} appeared while this set was drawn and cannot "
            f"be reused: {problem}. Use another --out, or --force"
        )

    return replace


def make_synthetic(
    out,
    cfg: SyntheticConfig | None = None,
    *,
    force: bool = False,
    workers: int | None = None,
    **overrides,
) -> Path:
    """Generate the synthetic set into ``out`` (MVTec AD layout) and return ``Path(out)``.

    ``overrides`` replace fields of ``cfg`` (default ``SyntheticConfig()``), e.g.
    ``make_synthetic("data/syn", size=128, n_train=30)``.

    * ``out`` exists and is a complete set for this config -> returned as is.
    * ``out`` exists but is incomplete / from another config -> raises
      :class:`SyntheticDatasetError`, or with ``force=True`` deletes and
      regenerates it -- only if it is a set this generator wrote
      (:func:`check_replaceable`); anything else is refused, never deleted.
    * ``workers`` threads render/encode in parallel (default: up to 4, one per
      CPU core); the output does not depend on it.
    * Generation goes to ``out.parent/.<out.name>.tmp-<pid>`` and is renamed to
      ``out`` at the end, with the manifest written last, so a crash never
      leaves a half-written ``out``.
    """
    cfg = dataclasses.replace(cfg or SyntheticConfig(), **overrides)
    out = Path(out)
    if out.exists() or out.is_symlink():
        problem = _check_existing(out, cfg)
        if problem is None:
            return out
        if not force:
            raise SyntheticDatasetError(
                f"synthetic data folder {out} already exists but cannot be reused: {problem}. "
                f"Use another --out, or regenerate it with --force (make_synthetic(..., force=True)), which "
                f"replaces the folder (a synthetic set only)"
            )
        check_replaceable(out)  # before generating: a refusal costs nothing
    with staging_folder(out) as tmp:
        _generate(tmp, cfg, workers if workers is not None else min(4, os.cpu_count() or 1))
        _write_manifest(tmp, cfg)
        install_folder(tmp, out, _replace_policy(cfg, force))
    return out


# ----------------------------------------------------------------------------
# "is it hard enough" check
# ----------------------------------------------------------------------------


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=F32) / F32(255)


def trivial_baseline(root) -> dict[str, float]:
    """Per-category image AUROC of a trivial detector.

    score(image) = mean |image - mean train/good image of the category|.  The
    synthetic set is meant to make this detector fail (AUROC near 0.5); a
    value near 1.0 would mean the defects are trivially detectable.
    Categories are the folders of ``root`` that contain ``train/good``.
    """
    from sklearn.metrics import roc_auc_score

    root = Path(root)
    res: dict[str, float] = {}
    for cat_dir in sorted(p for p in root.iterdir() if (p / "train" / "good").is_dir()):
        train = sorted((cat_dir / "train" / "good").glob("*.png"))
        mean = np.mean([_load(p) for p in train], axis=0)
        scores, labels = [], []
        for kind_dir in sorted(p for p in (cat_dir / "test").iterdir() if p.is_dir()):
            for p in sorted(kind_dir.glob("*.png")):
                scores.append(float(np.abs(_load(p) - mean).mean()))
                labels.append(0 if kind_dir.name == "good" else 1)
        if len(set(labels)) == 2:
            res[cat_dir.name] = float(roc_auc_score(labels, scores))
    return res
