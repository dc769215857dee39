"""The method registry: ``build_model(name, teacher, preset="cpu", **cfg)``."""

from __future__ import annotations

from .base import Batch, Method, MethodConfig
from .dual_student import DualStudent
from .enhanced_stpm import EnhancedSTPM
from .memory_bank import MemoryBank
from .rd import RD
from .snl import SNL
from .stpm import STPM
from .uniad import UniAD
from .unistad import UniSTAD

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (STPM, UniAD, RD, SNL, EnhancedSTPM, UniSTAD, DualStudent, MemoryBank)
}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def make_config(name: str, preset: str = "cpu", **overrides) -> MethodConfig:
    """The method's config: its dataclass defaults, then the preset, then explicit overrides."""
    cls = method_class(name)
    if preset not in cls.presets:
        raise ValueError(f"unknown preset {preset!r} for {name}; available: {sorted(cls.presets)}")
    values = {**cls.Config().to_dict(), **cls.presets[preset], **overrides}
    return cls.Config.from_dict(values)


def build_model(
    name: str, teacher=None, preset: str = "cpu", cfg: MethodConfig | None = None, **overrides
) -> Method:
    """Build method ``name`` on ``teacher`` (loaded from the config's teacher name if None)."""
    cls = method_class(name)
    cfg = cfg if cfg is not None else make_config(name, preset, **overrides)
    if teacher is None:
        from ..teacher import load_teacher

        teacher = load_teacher(cfg.teacher, layers=cfg.teacher_layers)
    return cls(teacher, cfg)


__all__ = [
    "Batch",
    "METHODS",
    "Method",
    "MethodConfig",
    "build_model",
    "make_config",
    "method_class",
]


#: the config fields that seed a method's randomness (a student's initial weights, a coreset's first centre),
#: each with its offset from ``--seed``: the enhanced STPM's second student takes seed + 1, its default at seed 0
SEED_FIELDS = {"student_seed": 0, "init_seed": 0, "coreset_seed": 0, "student2_seed": 1}


def seed_overrides(name: str, seed: int) -> dict:
    """{field: seed} for every seed field of method ``name``'s config: what ``train --seed S`` sets besides the
    data order and the held-out split, so one seed number reproduces, and varies, the whole run."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(method_class(name).Config)}
    return {f: int(seed) + offset for f, offset in SEED_FIELDS.items() if f in fields}
