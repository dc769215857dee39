"""What every lesson starts with, in one place.

Each notebook opens with the same few decisions: quick or full mode (``UNISTAD_QUICK``), which device,
which data (``find_data``: ``$UNISTAD_DATA``, the real categories in ``../shared/datasets``, else the
synthetic set), which categories, which preset, how many threads, and a teacher that falls back to the
offline ``cpu`` preset when the paper preset's weights cannot be downloaded. ``setup`` makes those
decisions the same way for every lesson; ``method_and_teacher`` loads the config and teacher.

    lesson = setup(["bottle", "cookie", "metal_plate"])
    cfg, teacher = method_and_teacher(lesson, "stpm", image_size=128)
    train = MVTecDataset(lesson.root, "train", categories=lesson.categories, image_size=128).evenly(60)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

QUICK_ENV = "UNISTAD_QUICK"


def quick_mode() -> bool:
    """Quick mode (the default): small images, few epochs, capped data -- minutes on a 2-core CPU.
    ``UNISTAD_QUICK=0`` runs the lesson at full scale (meant for a GPU)."""
    value = os.environ.get(QUICK_ENV, "1").strip().lower()
    if value not in ("0", "1", "true", "false", "yes", "no"):
        raise ValueError(f"{QUICK_ENV} must be 1 (quick) or 0 (full), not {value!r}")
    return value in ("1", "true", "yes")


@dataclass
class Lesson:
    """The decisions a lesson runs with; printed by ``describe``."""

    quick: bool
    device: str
    root: Path
    where: str  # human description of the data source
    categories: list[str]
    preset: str  # "paper" at full scale on a GPU, else "cpu"
    found: list[str] = field(default_factory=list)  # every category present in the data

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"

    def describe(self, **details) -> str:
        extra = "".join(f", {k} {v!r}" for k, v in details.items())
        return (
            f"This lesson uses {self.where}: categories {self.categories}, preset {self.preset!r}{extra} "
            f"({self.mode} mode, device {self.device})."
        )


def setup(
    quick_categories: Sequence[str] | None = None,
    *,
    min_categories: int = 2,
    fallback: int = 3,
    quick_threads: int | None = None,
    data: str | Path | None = None,
) -> Lesson:
    """Decide the lesson's mode, device, data and categories.

    ``quick_categories``: the categories a quick run uses when the data has them (``None``: all); if fewer
    than ``min_categories`` of them exist (e.g. on the synthetic set), the first ``fallback`` categories of
    the data are used instead. Full mode always uses every category.
    ``quick_threads``: torch threads in quick mode on CPU; ``None`` (the default): every core this process may
    use (:func:`~unistad_edu.precision.configure_threads`, which says so when the machine is already busy --
    then pass e.g. ``quick_threads=1``). Precision is ``auto`` everywhere (the teacher's default; see
    :mod:`unistad_edu.precision`), measured once per machine.
    """
    import torch

    from .data import discover_categories, find_data

    quick = quick_mode()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if data is not None:
        root, where = Path(data), f"the data in {data}"
    else:
        root, where = find_data()
    found = sorted(
        discover_categories(root)
    )  # DataError naming the expected layout if there is none
    if quick and quick_categories is not None:
        categories = [c for c in quick_categories if c in found]
        if len(categories) < min(min_categories, len(quick_categories)):
            categories = found[:fallback]
    else:
        categories = list(found)
    from .precision import configure_threads

    configure_threads(quick_threads if (quick and device == "cpu" and quick_threads) else None)
    preset = "paper" if (not quick and device == "cuda") else "cpu"
    return Lesson(quick, device, Path(root), where, categories, preset, found)


def method_and_teacher(lesson: Lesson, method: str, **overrides):
    """``(cfg, teacher)`` for ``method`` in the lesson's preset plus ``overrides``, the teacher on the
    lesson's device. If the paper preset's teacher weights are not available offline, says so and falls back to
    the ``cpu`` preset (``lesson.preset`` is updated, so later configs of the lesson agree)."""
    from .methods import make_config
    from .teacher import TeacherWeightsError, load_teacher

    cfg = make_config(method, lesson.preset, **overrides)
    try:
        teacher = load_teacher(cfg.teacher, layers=cfg.teacher_layers)
    except TeacherWeightsError as err:  # paper teachers come from timm's hub (needs internet)
        print(f"{err}\n-> using the cpu preset instead")
        lesson.preset = "cpu"
        cfg = make_config(method, "cpu", **overrides)
        teacher = load_teacher(cfg.teacher, layers=cfg.teacher_layers)
    return cfg, teacher.to(lesson.device)


def lesson_data(
    lesson: Lesson,
    image_size: int,
    n_train: int | None = None,
    n_test: int | None = None,
    teacher=None,
):
    """``(train, test, cache)``: the lesson's categories at ``image_size``, at most ``n_train`` / ``n_test``
    images per category (evenly spread, ``None``: all), and -- given a ``teacher`` -- one ``FeatureCache``
    already holding the teacher's features of both sets (else ``None``), so every model of the lesson trains
    and scores without running the teacher again."""
    from .cache import FeatureCache
    from .data import MVTecDataset

    train = MVTecDataset(
        lesson.root, "train", categories=lesson.categories, image_size=image_size
    ).evenly(n_train)
    test = MVTecDataset(
        lesson.root, "test", categories=lesson.categories, image_size=image_size
    ).evenly(n_test)
    cache = None
    if teacher is not None:
        cache = FeatureCache(teacher, image_size)
        cache.warm(train)
        cache.warm(test)
    return train, test, cache


# ---- exercise checks ------------------------------------------------------------------------------------------
class ExerciseNotDone(AssertionError):
    """What a check cell of an exercise notebook raises until the learner's code does what the task asks; the
    message ends with the task's hint."""


def _to_numpy(value):
    if hasattr(value, "detach"):  # a torch tensor (no torch import needed here)
        return value.detach().float().cpu().numpy()
    return value


def _compare(got, want, rtol: float, atol: float, where: str = "the result") -> str | None:
    """None if ``got`` equals ``want`` (numbers, arrays, tensors, tuples / lists / dicts of them, to tolerance),
    else what differs, in words."""
    import numpy as np

    got, want = _to_numpy(got), _to_numpy(want)
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return (
                f"{where} should be a dict with keys {sorted(want)}, not {type(got).__name__} "
                f"{sorted(got) if isinstance(got, dict) else ''}"
            )
        for k in want:
            why = _compare(got[k], want[k], rtol, atol, f"{where}[{k!r}]")
            if why:
                return why
        return None
    if isinstance(want, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            return f"{where} should be a sequence of {len(want)} items"
        for i, (g, w) in enumerate(zip(got, want)):
            why = _compare(g, w, rtol, atol, f"{where}[{i}]")
            if why:
                return why
        return None
    if isinstance(want, (bool, str)) or want is None:
        return None if got == want else f"{where} is {got!r}, expected {want!r}"
    if got is None:
        return f"{where} is None (did the function return its value?)"
    g, w = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if g.shape != w.shape:
        return f"{where} has shape {g.shape}, expected {w.shape}"
    if not np.allclose(g, w, rtol=rtol, atol=atol, equal_nan=True):
        worst = float(np.nanmax(np.abs(g - w))) if g.size else 0.0
        return f"{where} differs from the expected value (largest difference {worst:.3g})"
    return None


_FAILED_CHECKS: dict[str, int] = {}  # task -> how often its check has failed in this kernel


def _hint_text(task: str, hint) -> str:
    """``hint`` (one string) or ``(first, second)``: the first hint on a task's first failed check, both from
    its second failure on -- a learner who tries again gets more help, one who has not tried gets less."""
    if isinstance(hint, str):
        return f"Hint: {hint}"
    first, second = hint
    failed = _FAILED_CHECKS.get(task, 0)
    _FAILED_CHECKS[task] = failed + 1
    if failed == 0:
        return f"Hint: {first} (Still stuck after your next try? Run this check again for a second hint.)"
    return f"Hint: {first} Second hint: {second}"


def check(task: str, mine, reference, hint, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """The check cell of an exercise: call ``mine()`` (the learner's code on small inputs) and ``reference()``
    (the package's own function on the same inputs, or an answer worked out by hand) and compare the results
    (numbers, arrays, tensors and containers of them, to ``rtol`` / ``atol``). Prints a tick when they agree;
    else raises :class:`ExerciseNotDone` saying what differs, then the hint: ``hint`` is one string, or
    ``(first, second)`` -- the second is added from the task's second failed check on. A stub that raises
    ``NotImplementedError`` gets "not done yet" and the hint."""
    try:
        got = mine()
    except NotImplementedError:
        raise ExerciseNotDone(f"{task}: not done yet. {_hint_text(task, hint)}") from None
    except Exception as err:  # the learner's code failed: say how, then the hint
        raise ExerciseNotDone(
            f"{task}: your code raised {type(err).__name__}: {err}. {_hint_text(task, hint)}"
        ) from None
    why = _compare(got, reference(), rtol, atol)
    if why:
        raise ExerciseNotDone(f"{task}: {why}. {_hint_text(task, hint)}")
    print(f"✓ {task}: matches the reference")
