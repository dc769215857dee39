"""The method contract every paper implementation keeps.

A method is an ``nn.Module`` that owns the frozen teacher and its trainable parts, with

* ``loss_terms(batch) -> {name: weighted scalar Tensor}`` for training on normal images (the loss is their
  sum, ``loss(batch)``; lessons plot the terms), and
* ``anomaly_maps(batch) -> {name: (B, 1, h, w)}`` at test time, turned into a pixel map and an image score by
  the one shared :func:`unistad_edu.scoring.score` with the method's :class:`ScoringConfig`.

A :class:`Batch` holds only the images and, when the feature cache is on, the teacher's features. It has no
category field: a unified model cannot read which product it is looking at, by construction.

Each method has its own config dataclass (a subclass of :class:`MethodConfig`) and two presets: ``cpu`` (what
trains well in minutes on a 2-core laptop, with the Lite0 teacher) and ``paper`` (the paper's recipe, kept
with its source in ``paper_recipes.json`` and read by :func:`paper_recipe`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn

from ..scoring import AnomalyOutput, ScoringConfig, score


@dataclass
class Batch:
    """What a method sees: images (B, 3, S, S) in [0, 1] and optionally cached teacher features."""

    image: torch.Tensor
    features: dict[str, torch.Tensor] | None = None


def _as_tuple(value):
    """Lists (nested too) -> tuples, the form the configs' tuple fields hold."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value


OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")
SAMPLINGS = (
    "uniform",
    "balanced-clusters",
    "balanced-labels",
)  # engine.epoch_order / engine.sampling_groups


@dataclass
class MethodConfig:
    """Fields every method has; a method's own config adds its knobs."""

    # field -> its allowed values, checked when the config is built; a subclass adds its own fields
    choices: ClassVar[dict[str, tuple]] = {}

    teacher: str = "tf_efficientnet_lite0"
    teacher_layers: tuple | None = None  # None: the teacher's default levels (strides 4, 8, 16)
    image_size: int = 256
    epochs: int = 20
    batch_size: int = 16
    optimizer: str = "adam"  # sgd | adam | adamw
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    betas: tuple = (0.9, 0.999)  # adam/adamw
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | step | cosine
    step_epochs: int = 0  # step: multiply lr by gamma every step_epochs (0 = never)
    gamma: float = 0.1
    grad_clip: float | None = None
    # the order of an epoch's images (engine.epoch_order): "uniform" = a shuffle, every image once;
    # "balanced-clusters" = every pseudo-product (k-means clusters of the teacher's image embedding, no label read)
    # fills the same share of the epoch's steps; "balanced-labels" = the same by the category folders -- the one
    # choice with which unified training reads a label, so it says so in its name
    sampling: str = "uniform"
    scoring: ScoringConfig = field(default_factory=ScoringConfig)

    def __post_init__(self):
        """The choices every method shares and the config's own ``choices``, checked when the config is
        built (a method's own config checks its other fields after calling this)."""
        if self.sampling == "balanced":
            raise ValueError(
                "sampling 'balanced' read the category folders, which unified training should not: "
                "say 'balanced-labels' to balance by folder anyway, or 'balanced-clusters' to balance "
                "by clusters of the teacher's embedding (no labels)"
            )
        shared = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "sampling": SAMPLINGS}
        for name, allowed in {**shared, **self.choices}.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "image_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        check_ranges(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MethodConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} fields {sorted(unknown)}; known: {sorted(known)}"
            )
        for f in dataclasses.fields(cls):
            if f.name in d:
                _check_type(f"{cls.__name__}.{f.name}", str(f.type), d[f.name])
        if isinstance(d.get("scoring"), dict):
            unknown = set(d["scoring"]) - {f.name for f in dataclasses.fields(ScoringConfig)}
            if unknown:
                raise ValueError(
                    f"unknown scoring fields {sorted(unknown)}; known: "
                    f"{sorted(f.name for f in dataclasses.fields(ScoringConfig))}"
                )
            d["scoring"] = ScoringConfig(**d["scoring"])
        for f in dataclasses.fields(
            cls
        ):  # JSON has no tuples: a tuple-typed field comes back as a list
            if isinstance(d.get(f.name), list) and "tuple" in str(f.type):
                d[f.name] = _as_tuple(d[f.name])
        return cls(**d)


def _check_type(name: str, annotation: str, value) -> None:
    """Refuse (ValueError) a config value of the wrong kind for its annotation, naming the field: a text for a
    number (``--set lr=fast``), a number for a switch, a text for the scoring object (``--set scoring={bad``)."""
    kinds = [k.strip() for k in annotation.split("|")]
    if value is None and "None" in kinds:
        return
    ok = {
        "bool": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "tuple": lambda v: isinstance(v, (list, tuple)),
        "ScoringConfig": lambda v: isinstance(v, (dict, ScoringConfig)),
    }
    if not any(ok.get(k, lambda v: True)(value) for k in kinds if k != "None"):
        want = {
            "bool": "true or false",
            "int": "a whole number",
            "float": "a number",
            "str": "a text",
            "tuple": "a list",
            "ScoringConfig": 'an object such as {"topk": 0.01}',
        }
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ValueError(
            f"{name} is {shown}, expected "
            + " or ".join(want.get(k, k) for k in kinds if k != "None")
            + (" (or null)" if "None" in kinds else "")
            + (" -- a --set value is read as JSON, else as text" if isinstance(value, str) else "")
        )


# ---- ranges every config's numbers must lie in ------------------------------------------------------------
def _in(lo, hi, lo_open=False, hi_open=False):
    """A check ``value -> bool`` and its wording, for a closed or open interval (None: unbounded)."""

    def ok(v):
        return (lo is None or (v > lo if lo_open else v >= lo)) and (
            hi is None or (v < hi if hi_open else v <= hi)
        )

    lo_s = "-inf" if lo is None else f"{lo:g}"
    hi_s = "inf" if hi is None else f"{hi:g}"
    return (
        ok,
        f"{'(' if lo_open or lo is None else '['}{lo_s}, {hi_s}{')' if hi_open or hi is None else ']'}",
    )


# config fields added after runs of today's checkpoint format had been saved, each with the value that
# reproduces what such a run did (its switch off) -- never today's default, which may be on: a run saved
# before the field existed loads with this value; any other missing field is refused (checkpoint.py)
ADDED_FIELDS: dict[str, object] = {"bottleneck_jitter": 0.0, "input_jitter": 0.0}

# by field name: the shared optimisation fields, then any method's fields by the ending of their name
RANGES = {
    "lr": _in(0, 10, lo_open=True),  # larger than 10 only ever diverges (a NaN run "complete")
    "weight_decay": _in(0, 1),
    "momentum": _in(0, 1, hi_open=True),
    "gamma": _in(
        0, 1, lo_open=True
    ),  # the step schedule's decay factor: the rate never grows or turns negative
    "step_epochs": _in(0, None),
    "grad_clip": _in(0, None, lo_open=True),
    "init_seed": _in(0, None),
    "hm_quantile": _in(0, 1, hi_open=True),  # hard-point mining's share of easy points; 0 = off
    "hm_factor": _in(0, 1),  # their gradient's factor; 1 = no mining
}
SUFFIX_RANGES = (
    (
        "_weight",
        _in(0, None),
    ),  # a loss term's weight: 0 switches it off, negative would reward the error
    ("dropout", _in(0, 1, hi_open=True)),
    ("_jitter", _in(0, None)),  # a feature jitter's alpha (layers.add_jitter); 0 = off
    ("_prob", _in(0, 1)),
    ("_momentum", _in(0, 1, lo_open=True)),
    ("_seed", _in(0, None)),
    ("_dim", _in(1, None)),
    ("_layers", _in(0, None)),
    ("_heads", _in(1, None)),
    ("num_heads", _in(1, None)),
    ("_size", _in(1, None)),
    ("_window", _in(1, None)),
    ("_stride", _in(1, None)),
    ("_grid", _in(1, None)),
    ("_reduction", _in(1, None)),
    ("_blocks", _in(1, None)),
    ("_centres", _in(1, None)),
    ("_positions", _in(1, None)),
    ("_knn", _in(1, None)),
    ("_neighbours", _in(1, None)),
    ("_elements", _in(1, None)),
    ("neighbourhood", _in(1, None)),
    ("_steps", _in(0, None)),
    ("_radius", _in(0, None)),
    ("_ratio", _in(0, 1, lo_open=True)),
    ("_quantile", _in(0, 1, lo_open=True, hi_open=True)),
    ("_temperature", _in(0, None, lo_open=True)),
    ("_width", _in(0, None, lo_open=True)),
    ("_alpha", _in(0, None)),
    ("_scale", _in(0, None)),
    ("_spread", _in(0, None)),
)
PREFIX_RANGES = (("w_", _in(0, None)),)  # a loss term's weight, named w_<term>


def check_ranges(cfg) -> None:
    """Every number of a config must be finite, and in its field's range (:data:`RANGES` by name, else
    :data:`SUFFIX_RANGES` / :data:`PREFIX_RANGES` by the name's ending or start; ``betas`` each in [0, 1));
    ValueError naming the field, its value and the range otherwise. Runs before a method's own checks, so a
    ``--set`` value is refused where it enters."""
    import math

    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if not math.isfinite(v):
            raise ValueError(f"{f.name} must be a finite number, got {v!r}")
        rule = (
            RANGES.get(f.name)
            or next((r for end, r in SUFFIX_RANGES if f.name.endswith(end)), None)
            or next((r for start, r in PREFIX_RANGES if f.name.startswith(start)), None)
        )
        if rule is not None and not rule[0](v):
            raise ValueError(f"{f.name} must be in {rule[1]}, got {v!r}")
    betas = getattr(cfg, "betas", None)
    if betas is not None and (
        len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)
    ):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")


@dataclass
class TransformerTrainingConfig(MethodConfig):
    """The optimisation defaults the transformer methods (UniAD, UniSTAD, dual students) share: AdamW with weight
    decay, a cosine schedule, gradient clipping at 1, batches of 8, and a seed for the initial weights."""

    init_seed: int = 0  # the modules' initial weights, reproducible
    epochs: int = 20
    batch_size: int = 8
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    grad_clip: float | None = 1.0


def token_grid(teacher, cfg) -> tuple[int, int]:
    """(h, w) token grid at ``feature_stride`` (else the last level's stride); checks ViT sizes."""
    info = teacher.feature_info
    stride = cfg.feature_stride or info[-1].stride
    if getattr(teacher, "is_vit", False) and cfg.image_size % info[-1].stride:
        raise ValueError(
            f"a ViT teacher with patch size {info[-1].stride} needs an image size that is a "
            f"multiple of it; got {cfg.image_size}"
        )
    side = math.ceil(cfg.image_size / stride)
    return side, side


@dataclass
class ReverseDistillationConfig(MethodConfig):
    """The student network and optimisation defaults RD and SNL share (``layers.reverse_student``): OCBE
    bottleneck + decoder sized from the teacher's levels, Adam 0.005 (0.5, 0.999) as RD4AD, 30 epochs."""

    choices: ClassVar[dict[str, tuple]] = {"rd_loss": ("position", "flattened")}

    embed_channels: int | None = (
        None  # OCE output D; None = 2 * C_L (RD4AD: 2048 for WideResNet-50)
    )
    oce_blocks: int = 1  # residual blocks in the one-class embedding (RD4AD: 3)
    decoder_blocks: tuple | int = (
        1  # blocks per decoder stage, in teacher-level order (fine -> coarse)
    )
    block_width: float = 0.5  # inner width of a residual block = block_width * its output channels
    linear_outputs: bool = True  # no ReLU on the decoder's per-level outputs (rd.py's paper card)
    # the distillation loss per level: "position" = mean over positions of 1 - cos along channels (the paper's
    # Eq. 2, the same quantity as the anomaly map); "flattened" = 1 - cos of the whole level flattened to one
    # vector per image (the official training script's loss_fucntion; the paper preset's). Chosen per method
    # on the validation set: RD's cpu preset takes flattened, SNL's keeps position (docs/benchmarks.md)
    rd_loss: str = "position"
    # two ideas of the unified reconstruction literature, off here: a noisy bottleneck -- dropout on the
    # teacher levels entering the student, while training only, so copying them is never exact (Dinomaly) --
    # and hard-point mining: the gradient of the best-reconstructed hm_quantile of positions scaled by
    # hm_factor (Dinomaly's loose loss; 0 = off). RD's cpu preset takes the loose loss (chosen on validation)
    bottleneck_dropout: float = 0.0
    # the noise as UniAD's feature jitter (layers.add_jitter) instead of or beside the dropout: its alpha
    # (UniAD's is 20); 0 = off
    bottleneck_jitter: float = 0.0
    hm_quantile: float = 0.0
    hm_factor: float = 0.1
    # RD++'s projection (methods/rd_plus.py): a trainable projection per level between the teacher and the
    # bottleneck, taught to erase noise patches (rdpp_weight: its loss's weight, the official 0.2); off here,
    # on in RD's cpu preset (chosen on validation)
    rdpp: bool = False
    rdpp_weight: float = 0.2
    init_seed: int = 0  # the bottleneck's and decoder's initial weights, reproducible
    epochs: int = 30
    batch_size: int = 16
    optimizer: str = "adam"
    lr: float = 0.005
    betas: tuple = (0.5, 0.999)
    weight_decay: float = 0.0
    scoring: ScoringConfig = field(
        default_factory=lambda: ScoringConfig(fuse="sum", blur_sigma=4.0, image_score="max")
    )


@functools.cache
def _recipes_file() -> str:
    """``paper_recipes.json`` as text, read once per process (every method module asks at import)."""
    from importlib.resources import files

    return files(__package__).joinpath("paper_recipes.json").read_text()


def paper_recipes() -> dict:
    """Every method's ``paper`` preset as ``paper_recipes.json`` keeps it: method -> {"source": where
    each value comes from (a paper, an official config, methods.md, or "ours"), "values": config fields}."""
    import json

    return json.loads(_recipes_file())  # a fresh copy: a caller may change it


def paper_recipe(name: str) -> dict:
    """The config values of method ``name``'s ``paper`` preset (JSON lists stand for tuples and a
    ``scoring`` dict for a :class:`ScoringConfig`; ``MethodConfig.from_dict`` turns them back)."""
    return paper_recipes()[name]["values"]


class Method(nn.Module):
    """Base class: subclasses set ``name``, ``Config``, ``presets`` and implement ``loss``/``anomaly_maps``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = MethodConfig
    presets: ClassVar[dict[str, dict]] = {"cpu": {}, "paper": {}}
    # False: loss() reads only batch.features, never batch.image -- the engine then trains from cached
    # features without keeping images (batch.image is None during training)
    needs_images: ClassVar[bool] = True
    # False: nothing is learned by gradient (e.g. a nearest-neighbour memory bank). engine.fit then makes no
    # optimiser and runs no epochs; it calls build() once with every training batch, then calibrates as usual
    trains_by_gradient: ClassVar[bool] = True
    # names in state_for_checkpoint() whose first dimension is set by the data (loading checks only the rest)
    growing_state: ClassVar[tuple[str, ...]] = ()
    # state_dict prefixes of frozen modules: never trained, never saved (a checkpoint records the teacher's
    # name and weights hash instead)
    frozen_prefixes: ClassVar[tuple[str, ...]] = ("teacher.",)

    def __init__(self, teacher, cfg: MethodConfig):
        super().__init__()
        self.teacher = teacher
        self.cfg = cfg

    # ---- helpers every method uses ---------------------------------------------------------------------
    def teacher_features(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Cached features when the engine supplied them, else one frozen teacher forward."""
        if batch.features is not None:
            return batch.features
        with torch.no_grad():
            return self.teacher(batch.image)

    def set_teacher_precision(self, precision) -> None:
        """Every frozen teacher of the model (the enhanced STPM has two) runs at ``precision``."""
        from ..teacher import Teacher

        for m in self.modules():
            if isinstance(m, Teacher):
                m.precision = precision

    def frozen_modules(self) -> list[nn.Module]:
        """The frozen sub-modules named by ``frozen_prefixes`` (the teacher, ...) that this model has: a method's
        initialiser skips them (``layers.xavier_init_(self, skip=self.frozen_modules())``), so building a method
        never touches pretrained weights."""
        out = []
        for prefix in self.frozen_prefixes:
            try:
                out.append(self.get_submodule(prefix.rstrip(".")))
            except AttributeError:  # e.g. a second teacher this configuration does not build
                pass
        return out

    def param_groups(self) -> list[dict]:
        """The optimiser's parameter groups, each ``{"params", "lr_scale"}``: the learning rate of a group is
        ``lr_scale`` x the schedule's (one group of every trainable parameter at 1.0, unless a method says
        otherwise)."""
        return [{"params": self.trainable_parameters(), "lr_scale": 1.0}]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [
            p
            for n, p in self.named_parameters()
            if not n.startswith(self.frozen_prefixes) and p.requires_grad
        ]

    def state_for_checkpoint(self) -> dict[str, torch.Tensor]:
        """Everything but the frozen modules (``frozen_prefixes``)."""
        return {
            k: v for k, v in self.state_dict().items() if not k.startswith(self.frozen_prefixes)
        }

    def load_from_checkpoint(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(self.frozen_prefixes)]
        if missing or unexpected:
            raise ValueError(
                f"checkpoint does not fit method {self.name!r}: missing {missing[:5]}, "
                f"unexpected {list(unexpected)[:5]}"
            )

    # ---- the contract -----------------------------------------------------------------------------------
    def loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The named, already weighted terms of the training loss on a batch of normal images."""
        raise NotImplementedError

    def loss(self, batch: Batch) -> torch.Tensor:
        """The training loss: the sum of :meth:`loss_terms`. Methods do not override this."""
        terms = list(self.loss_terms(batch).values())
        return sum(terms[1:], terms[0])

    def anomaly_maps(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def build(self, batches) -> dict | None:
        """Only for ``trains_by_gradient = False``: called by the engine once, in eval mode and without
        gradients, with an iterable of :class:`Batch` over **all** training images (one pass, the order of
        epoch 0). The method fits its state from them (e.g. fills a memory bank); it may return numbers for
        the training log. Gradient-trained methods never get this call."""
        raise NotImplementedError(
            f"{type(self).__name__} trains by gradient; build() is for methods that do not"
        )

    def calibrate(self, batches) -> None:
        """Called by the engine once after training, in eval mode and without gradients, with the held-out
        **normal** images (an iterable of :class:`Batch`) -- the same images the threshold comes from.
        A method that standardises its scores by normal statistics sets them here; the default does nothing."""

    def score_inputs(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """What the shared scoring path consumes: ``(maps, image_terms)``. ``image_terms`` are per-image scores
        that come from no map ({name: (B,)}, e.g. the dual students' semantic distance); most methods have none.
        A method with terms overrides this (one forward for both) together with :meth:`combine_rule` and
        :meth:`score_calibration`."""
        return self.anomaly_maps(batch), {}

    def combine_rule(self) -> str:
        """How the map score and the image terms combine (``scoring.COMBINE``); ``map`` = the map alone."""
        return "map"

    def score_calibration(self) -> dict | None:
        """{score name: (mean, std)} of normal images, for the rules that standardise (``sum``, ``noisy_or``)."""
        return None

    def score_from(
        self, maps: dict[str, torch.Tensor], terms: dict[str, torch.Tensor], image_size
    ) -> AnomalyOutput:
        """The shared scoring path over what :meth:`score_inputs` returned (``explain`` calls this too, with
        gradients on, so an attribution explains exactly the score :meth:`score` returns)."""
        return score(
            maps,
            image_size,
            self.cfg.scoring,
            image_terms=terms or None,
            combine=self.combine_rule() if terms else "map",
            calibration=self.score_calibration(),
        )

    @torch.no_grad()
    def score(self, batch: Batch) -> AnomalyOutput:
        """score_inputs -> the shared scoring path, at the input image size. Methods do not override this:
        they change what goes in (``score_inputs``, ``combine_rule``, ``score_calibration``, ``cfg.scoring``)."""
        maps, terms = self.score_inputs(batch)
        return self.score_from(maps, terms, batch.image.shape[-2:])

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.train(False)  # the teacher stays in eval mode, whatever the method does
        return self
