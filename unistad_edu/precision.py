"""Precision and threads, chosen by measurement on the machine at hand.

Why this module exists: the same "fast CPU path" is fast on one CPU and slow on another. On a CPU with native
bf16 (AVX512-BF16 / AMX) channels_last + bf16 autocast measured about 3x faster than fp32 for the teacher; on a
CPU without it (AVX2 only, like most laptops) oneDNN falls back to slow reference kernels and the same path
measured 8-15x *slower*. So nothing here is assumed: ``precision="auto"`` asks two questions.

1. Does this CPU do bf16 natively? (:func:`native_bf16`: oneDNN's bf16 support **and** an ATen CPU capability
   above AVX2.) If not, bf16 is never tried.
2. Is bf16 actually faster here, for *this* teacher at *this* image size? (:func:`measure`: a short
   interleaved micro-benchmark of the teacher's forward, fp32 plain / fp32 channels_last / bf16
   channels_last, median of a few calls.) bf16 is picked only at >= :data:`BF16_MIN_SPEEDUP` x the best fp32
   layout; channels_last only where it measured faster.

The decision and its figures are cached per machine in ``$UNISTAD_CACHE/precision.json`` (key: CPU model,
cores, threads, torch version, teacher, image size); a corrupt or foreign file is recomputed, never a crash.
It is printed once per process, e.g. ``precision: fp32 (no native bf16 on this CPU: capability AVX2)``.
CUDA keeps its own path: fp16 autocast for ``auto`` (bf16 on request), no measurement.

Threads: :func:`configure_threads` sets torch's intra-op threads (default: ``OMP_NUM_THREADS`` if set, else the
cores this process may use)
and one inter-op thread, and says once when the machine is already busy.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .files import atomic_write_text

PRECISIONS = ("auto", "fp32", "bf16")
BF16_MIN_SPEEDUP = 1.2  # auto picks bf16 only when it measures at least this much faster than fp32
CHANNELS_LAST_MIN = 1.05  # ... and channels_last only when it measures at least 5 % faster
CACHE_FILE = "precision.json"
_SCHEMA = 1
_announced: set[str] = set()
_memo: dict[str, "Precision"] = {}


@dataclass(frozen=True)
class Precision:
    """A resolved choice: ``name`` is ``fp32`` | ``bf16`` (CPU) or ``cuda-fp16`` | ``cuda-bf16`` | ``fp32``
    (CUDA); ``channels_last``: the memory format of the teacher and the models; ``reason``: why."""

    name: str
    channels_last: bool = False
    reason: str = ""
    rates: dict | None = None  # img/s per measured variant, when measured

    def autocast(self, device) -> contextlib.AbstractContextManager:
        device_type = torch.device(device).type
        if device_type == "cuda" and self.name in ("cuda-fp16", "cuda-bf16"):
            return torch.autocast(
                "cuda", dtype=torch.float16 if self.name == "cuda-fp16" else torch.bfloat16
            )
        if device_type == "cpu" and self.name == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def describe(self) -> str:
        layout = " + channels_last" if self.channels_last else ""
        return f"precision: {self.name}{layout}" + (f" ({self.reason})" if self.reason else "")

    def record(self) -> dict:
        """What a run's config.json stores."""
        return {"name": self.name, "channels_last": self.channels_last, "reason": self.reason}


FP32 = Precision("fp32", False, "requested")


def as_precision(value) -> Precision | str:
    """Normalise what callers pass: a :class:`Precision`, a name, or the old ``fast_cpu`` bool."""
    if isinstance(value, Precision):
        return value
    if value is True:
        return "bf16"
    if value is False or value is None:
        return "fp32" if value is False else "auto"
    name = str(value).strip().lower()
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {value!r}")
    return name


# ---- what the CPU can do -----------------------------------------------------------------------------------
def cpu_capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # very old torch
        return "unknown"


def native_bf16() -> tuple[bool, str]:
    """``(native, why)``: does this CPU run bf16 convolutions with native kernels?"""
    cap = cpu_capability()
    try:
        onednn = bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except Exception:
        onednn = False
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if not onednn:
        return (
            False,
            f"no native bf16 on this CPU: oneDNN has no bf16 support here (capability {cap})",
        )
    if cap in ("DEFAULT", "NO AVX", "AVX", "AVX2", "ZVECTOR", "unknown") or cap.startswith("AVX2"):
        return False, f"no native bf16 on this CPU: capability {cap}"
    if isa and not isa.startswith(
        ("AVX512_CORE_BF16", "AVX512_CORE_AMX", "AVX10", "ALL", "DEFAULT")
    ):
        return False, f"no native bf16: ONEDNN_MAX_CPU_ISA={isa} limits oneDNN"
    return True, f"native bf16 (capability {cap})"


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """The cores this process may run on (``os.sched_getaffinity``), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# ---- threads ----------------------------------------------------------------------------------------------
def configure_threads(threads: int | None = None, announce: bool = True) -> int:
    """Intra-op threads = ``threads`` (default: :func:`usable_cores`), inter-op threads 1. When the load
    average already exceeds the cores, say so once and suggest ``--threads``. Returns the thread count."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"--threads must be a whole number >= 1, not {threads!r}")
    n = threads or _omp_threads() or usable_cores()
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # only settable before the first inter-op parallel work
        torch.set_num_interop_threads(1)
    if announce:
        busy = machine_busy()
        if busy and "busy" not in _announced:
            _announced.add("busy")
            print(
                f"note: this machine is already busy ({busy}); two heavy jobs on the same cores run several "
                f"times slower: give each its share, e.g. --threads {max(1, usable_cores() // 2)}",
                file=sys.stderr,
                flush=True,
            )
    return n


def _omp_threads() -> int | None:
    """``OMP_NUM_THREADS`` when set to a whole number >= 1 (a user's or a test harness's choice is kept)."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return n if n >= 1 else None


def machine_busy() -> str | None:
    """A description when the 1-minute load average exceeds the usable cores, else None."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cores = usable_cores()
    return f"load {load:.1f} on {cores} cores" if load > cores + 0.5 else None


# ---- measuring ----------------------------------------------------------------------------------------------
def measure(
    teacher, image_size: int, batch_size: int = 4, repeats: int = 5, bf16: bool = True
) -> dict[str, float]:
    """Images/s of the teacher's forward in each layout/precision, interleaved, median of ``repeats``.
    Keys: ``fp32``, ``fp32_channels_last`` and (``bf16=True``) ``bf16_channels_last``."""
    x = torch.rand(batch_size, 3, image_size, image_size)
    model = teacher.model
    variants = {
        "fp32": (torch.contiguous_format, False),
        "fp32_channels_last": (torch.channels_last, False),
    }
    if bf16:
        variants["bf16_channels_last"] = (torch.channels_last, True)
    before = _model_format(model)

    def run(fmt, low):
        model.to(memory_format=fmt)
        xx = teacher.normalize(x).contiguous(memory_format=fmt)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if low else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            t = time.perf_counter()
            teacher.pyramid(xx, embedding=False)
            return batch_size / (time.perf_counter() - t)

    try:
        for fmt, low in variants.values():  # warm-up: first calls pick kernels and allocate
            run(fmt, low)
        rates: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(repeats):
            for k, (fmt, low) in variants.items():
                rates[k].append(run(fmt, low))
    finally:
        model.to(memory_format=before)
    return {k: round(statistics.median(v), 3) for k, v in rates.items()}


def _model_format(model) -> torch.memory_format:
    for p in model.parameters():
        if p.dim() == 4:
            return (
                torch.channels_last
                if p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                else torch.contiguous_format
            )
    return torch.contiguous_format


def decide(native: bool, why_native: str, rates: dict[str, float]) -> Precision:
    """The rule, apart from the measuring (tests drive it with made-up rates)."""
    fp32, fp32_cl = rates["fp32"], rates.get("fp32_channels_last", 0.0)
    cl = fp32_cl >= CHANNELS_LAST_MIN * fp32
    best = max(fp32, fp32_cl)
    bf = rates.get("bf16_channels_last")
    layout = "channels_last" if cl else "plain layout"
    if not native:
        return Precision(
            "fp32", cl, f"{why_native}; {layout} measured faster" if cl else why_native, rates
        )
    if bf is None:
        return Precision("fp32", cl, f"{why_native}, bf16 not measured", rates)
    ratio = bf / best
    if ratio >= BF16_MIN_SPEEDUP:
        return Precision(
            "bf16", True, f"{why_native}; bf16 measured {ratio:.1f}x faster than fp32", rates
        )
    slower = (
        f"{1 / ratio:.1f}x slower"
        if ratio < 1
        else f"only {ratio:.2f}x faster (needs {BF16_MIN_SPEEDUP}x)"
    )
    return Precision("fp32", cl, f"{why_native}; bf16 measured {slower}", rates)


# ---- the cached decision ------------------------------------------------------------------------------------
def cache_path() -> Path:
    from .files import cache_root

    return cache_root() / CACHE_FILE


def machine_key(teacher_name: str, image_size: int) -> str:
    return (
        f"{cpu_model()} | {usable_cores()} cores | {torch.get_num_threads()} threads | torch {torch.__version__}"
        f" | {cpu_capability()} | {teacher_name} | {image_size}px"
    )


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if (
        not isinstance(data, dict)
        or data.get("schema") != _SCHEMA
        or not isinstance(data.get("entries"), dict)
    ):
        return {}
    return data


def _entry_ok(entry) -> bool:
    return (
        isinstance(entry, dict)
        and entry.get("name") in ("fp32", "bf16")
        and isinstance(entry.get("channels_last"), bool)
        and isinstance(entry.get("reason"), str)
        and isinstance(entry.get("rates"), dict)
    )


def _write_cache(path: Path, key: str, choice: Precision) -> None:
    data = _read_cache(path) or {"schema": _SCHEMA, "entries": {}}
    data["entries"][key] = {**asdict(choice), "measured": time.strftime("%Y-%m-%d %H:%M")}
    try:
        atomic_write_text(path, json.dumps(data, indent=1), fsync=False)
    except OSError:  # a read-only cache folder: the decision is simply measured again next time
        pass


def resolve(
    precision="auto", device="cpu", teacher=None, image_size: int = 256, announce: bool = True
) -> Precision:
    """Turn ``"auto" | "fp32" | "bf16"`` into a :class:`Precision` for ``device`` (see the module docstring)."""
    precision = as_precision(precision)
    if isinstance(precision, Precision):
        return precision
    device = torch.device(device)
    if device.type == "cuda":  # the GPU path as before: fp16 autocast unless asked otherwise
        return {
            "auto": Precision("cuda-fp16", False, "CUDA: fp16 autocast"),
            "bf16": Precision("cuda-bf16", False, "CUDA: bf16 autocast, requested"),
            "fp32": Precision("fp32", False, "CUDA: fp32, requested"),
        }[precision]
    if device.type != "cpu":
        return Precision("fp32", False, f"{device.type}: fp32")
    if precision == "fp32":
        return FP32
    if precision == "bf16":
        native, why = native_bf16()
        return Precision(
            "bf16", True, "requested" + ("" if native else f" -- {why}, expect it to be slow")
        )
    # auto
    name = getattr(teacher, "backbone_name", "tf_efficientnet_lite0")
    key = machine_key(name, int(image_size))
    choice = _memo.get(key)
    if choice is None:
        path = cache_path()
        entry = _read_cache(path).get("entries", {}).get(key)
        if _entry_ok(entry):
            choice = Precision(
                entry["name"], entry["channels_last"], entry["reason"], entry["rates"]
            )
        else:
            native, why = native_bf16()
            if teacher is None:
                raise ValueError(
                    "precision 'auto' measures the teacher it is for: pass the teacher"
                )
            busy = machine_busy()
            rates = measure(teacher, int(image_size), bf16=native)
            choice = decide(native, why, rates)
            if busy:  # other jobs distort the timings: use the decision in this process, measure again next time
                choice = Precision(
                    choice.name,
                    choice.channels_last,
                    f"{choice.reason}; measured while busy ({busy}), not cached",
                    rates,
                )
            else:
                _write_cache(path, key, choice)
        _memo[key] = choice
    if announce and key not in _announced:
        _announced.add(key)
        print(
            choice.describe(), file=sys.stderr, flush=True
        )  # stderr: stdout stays machine-readable
    return choice
