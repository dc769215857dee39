"""The engine: one ``fit`` / ``evaluate`` / ``predict`` for every method.

``fit`` trains on normal images: optimiser and learning-rate schedule come from the method's config; teacher
features come from the :class:`~unistad_edu.cache.FeatureCache` (the teacher runs once per image); precision
and memory layout are a measured choice (``precision="auto"``: bf16 + channels_last only on a CPU where it
measures faster, see :mod:`unistad_edu.precision`), fp16 AMP on CUDA; a checkpoint every epoch, written atomically; ``resume=True``
continues exactly where a run stopped (the data order and random draws of epoch e depend only on the seed
and e, and the optimiser state is saved with the weights); ``max_minutes`` stops cleanly after the epoch
in which the budget runs out. At the end, the verdicts are
calibrated from held-out **normal** training images only -- routing by the teacher's embedding and a threshold
per category (:func:`unistad_edu.inference.calibrate`) -- so no defective image is needed to deploy. Using a
trained model (scoring, evaluation, prediction) lives in :mod:`unistad_edu.inference`.

Under ``torchrun`` the same ``fit`` trains data-parallel, one process per GPU (or CPU processes with
``gloo``): each process takes a shard of every epoch, gradients are averaged over processes after each
backward, and only rank 0 writes files and prints (see :mod:`unistad_edu.distributed`). ``batch_size`` is
then per process: the global batch is ``batch_size * world_size``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from . import distributed, files, runs
from .cache import FeatureCache
from .calibration import DEFAULT_TAIL, Calibration
from .checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    STATE_FILE,
    atomic_write_text,
    load_train_state,
    non_finite,
    read_tensors,
    save_checkpoint,
    save_train_state,
)
from .data import MVTecDataset, collate, holdout_split
from .inference import calibrate, method_batch, precision_of, progress_bar
from .layout import LOG_FILE, SETTING_FILE
from .methods.base import SAMPLINGS, Batch, Method

PRELOAD_MAX_MB = (
    4096  # a training set larger than this in memory is streamed from the feature cache instead
)


@dataclass
class TrainConfig:
    epochs: int | None = None  # None: the method config's epochs
    batch_size: int | None = None  # None: the method config's batch size
    max_minutes: float | None = None  # stop after the epoch in which this budget runs out
    min_steps: int | None = (
        None  # train at least this many optimiser steps (more epochs on small data sets)
    )
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    cache: bool = True  # serve teacher features from a FeatureCache
    cache_dir: str | None = None  # disk cache folder; None = in memory
    # with the cache: keep the training set in memory as tensors (TrainStore), unless that would take more than
    # PRELOAD_MAX_MB; then batches are streamed from the cache
    preload: bool = True
    holdout_fraction: float = 0.1  # normal train images kept aside to calibrate the thresholds
    # ... but at least this many per category (never more than a third of it), so each category's score tail
    # can be estimated (a category of 31 images gives 10, not 3); see data.holdout_split
    holdout_min: int = 10
    # after calibrating, rebuild on all images; None: only for a method without gradients (one pass) calibrated
    # with one global threshold -- per-category thresholds must come from the model that is served, and a refit
    # would grow the bank by the very images whose scores set them
    refit: bool | None = None
    threshold_quantile: float = 0.99  # threshold = this quantile of held-out normal scores
    # how verdicts are calibrated (unistad_edu.calibration): auto = per-category routing for two or more
    # category folders, clusters of the teacher embedding for one folder; per-category | clusters | global
    calibration: str = "auto"
    tail: str = DEFAULT_TAIL  # tail model of each category's held-out scores: lognormal | normal | empirical | gpd
    precision: str = (
        "auto"  # auto | fp32 | bf16 (see unistad_edu.precision); CUDA: fp16 autocast for auto
    )
    progress: bool = True


@dataclass
class FitResult:
    run_dir: Path | None
    history: list[dict] = field(default_factory=list)
    threshold: float | None = None
    epochs_done: int = 0
    stopped_early: bool = False
    already_complete: bool = False  # resume=True on a finished run: nothing was trained
    seconds: float = 0.0
    calibration: object = (
        None  # the run's calibration.Calibration (routing + per-category thresholds)
    )


def _say(message: str) -> None:
    """Print one line of progress now (flushed: it shows at once even when the output is piped)."""
    print(message, flush=True)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux/macOS)."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def make_optimizer(model: Method) -> torch.optim.Optimizer:
    """The method's optimiser over its parameter groups (``Method.param_groups``: each at ``lr_scale`` x lr)."""
    cfg = model.cfg
    params = [{**g, "lr": cfg.lr * g["lr_scale"]} for g in model.param_groups()]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    adam = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(cfg.optimizer)
    if adam is None:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}: sgd | adam | adamw")
    return adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def lr_at(method_cfg, epoch: int, epochs: int) -> float:
    """Learning rate of (0-based) ``epoch``: constant, step (x gamma every step_epochs) or cosine to 0."""
    if method_cfg.schedule == "constant":
        return method_cfg.lr
    if method_cfg.schedule == "step":
        return method_cfg.lr * (
            method_cfg.gamma ** (epoch // method_cfg.step_epochs) if method_cfg.step_epochs else 1.0
        )
    if method_cfg.schedule == "cosine":
        return method_cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs)))
    raise ValueError(f"unknown schedule {method_cfg.schedule!r}: constant | step | cosine")


def epoch_order(n: int, seed: int, groups: Sequence[str] | None = None) -> torch.Tensor:
    """The shuffled order of an epoch's ``n`` training images, fixed by ``seed``.

    ``groups`` None: a permutation of ``range(n)``. ``groups`` (the category of each image, length ``n``): a
    **class-balanced** epoch of the same length -- each of the K categories fills n / K places (+1 for the first
    n mod K), cycling through its own images in fresh shuffles, so a category with 31 images is seen as often as
    one with 245 (the small ones repeat within an epoch, the large ones are subsampled afresh each epoch). The
    number of steps per epoch is unchanged.
    """
    g = torch.Generator().manual_seed(seed)
    if groups is None:
        return torch.randperm(n, generator=g)
    if len(groups) != n:
        raise ValueError(
            f"groups must name the category of each of the {n} images, got {len(groups)}"
        )
    names = sorted(set(groups))
    members = [torch.tensor([i for i, c in enumerate(groups) if c == name]) for name in names]
    quota = [n // len(names) + (k < n % len(names)) for k in range(len(names))]
    picks = []
    for idx, q in zip(members, quota):
        cycles = -(-q // len(idx))  # ceil: enough shuffles of this category to fill its quota
        picks.append(
            torch.cat([idx[torch.randperm(len(idx), generator=g)] for _ in range(cycles)])[:q]
        )
    order = torch.cat(picks)  # (n,) category blocks
    return order[torch.randperm(n, generator=g)]  # (n,) mixed


class TrainStore:
    """The training set held in memory as tensors, so an epoch costs only the method's own compute.

    Built once per ``fit`` when the feature cache is on: the teacher's features of every training image,
    stacked per level, and -- only for methods whose loss looks at the image (``Method.needs_images``) -- the
    images as uint8 (N, 3, S, S). Batches come in the same order as the DataLoader path (both use
    :func:`epoch_order`), so a run trains identically either way (a test checks it).
    """

    def __init__(
        self, dataset: MVTecDataset, cache: FeatureCache, images: bool, progress: bool = True
    ):
        self.features = cache.stack(dataset, progress=progress)  # {name: (N, C_l, h_l, w_l)}
        self.images = None
        if images:
            # (N, 3, S, S) uint8: a quarter of the float32 memory
            self.images = torch.stack(
                [dataset[i]["image"].mul(255).round_().to(torch.uint8) for i in range(len(dataset))]
            )
        self.n = len(dataset)

    @staticmethod
    def estimate_mb(dataset: MVTecDataset, teacher, images: bool, fp16: bool = False) -> float:
        """Memory the store would take, from the teacher's level shapes (no teacher call)."""
        s = dataset.image_size
        per = sum(lv.channels * math.ceil(s / lv.stride) ** 2 for lv in teacher.feature_info) * (
            2 if fp16 else 4
        )
        if images:
            per += 3 * s * s
        return len(dataset) * per / 2**20

    def batches(
        self,
        batch_size: int,
        seed: int,
        drop_last: bool,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        groups: Sequence[str] | None = None,
    ):
        order = distributed.shard(
            epoch_order(self.n, seed, groups), rank, world_size
        )  # whole order in one process
        n = len(order)
        stop = n - n % batch_size if drop_last else n
        for i in range(0, stop, batch_size):
            idx = order[i : i + batch_size]
            feats = {
                k: v[idx].to(device=device, dtype=torch.float32) for k, v in self.features.items()
            }
            image = None if self.images is None else self.images[idx].to(device).float().div_(255.0)
            yield Batch(image=image, features=feats)


def sampling_groups(
    model: Method, train_set: MVTecDataset, cache: FeatureCache | None = None, precision=None
) -> list[str] | None:
    """The group of each training image that a balanced epoch gives equal shares (:func:`epoch_order`), or None
    for a plain shuffle. ``balanced-clusters``: pseudo-products, k-means clusters of the teacher's image embedding
    (``calibration.cluster``: k by silhouette, at most 8; one group -- a plain shuffle -- when no k separates
    the images), computed once from the training images: no label is read. ``balanced-labels``: the category
    folders, read because the user asked for it by that name."""
    sampling = model.cfg.sampling  # checked when the config was built; again for one set afterwards
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if sampling == "balanced-labels":
        return [r.category for r in train_set.records]
    if sampling != "balanced-clusters":
        return None
    from .calibration import cluster
    from .inference import embeddings

    names, _ = cluster(embeddings(model, train_set, cache, precision=precision))
    return names.tolist()


def _say_groups(model: Method, groups: list[str] | None) -> None:
    """Say how a balanced epoch groups the training images (clusters: how many, of which sizes)."""
    if model.cfg.sampling == "balanced-clusters":
        sizes = sorted(np.unique(groups, return_counts=True)[1].tolist())
        _say(
            f"balanced epochs over {len(sizes)} clusters of the teacher's embedding (sizes {sizes}; "
            f"no category read)"
        )


def _loader(
    dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    groups: Sequence[str] | None = None,
):
    order = (
        distributed.shard(epoch_order(len(dataset), seed, groups), rank, world_size).tolist()
        if shuffle
        else None
    )
    # its own generator: the loader draws a base seed from it, and must not touch the global RNG (jitter's)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=order,
        collate_fn=collate,
        drop_last=drop_last,
        num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )


def make_cache(model: Method, train_cfg: TrainConfig) -> FeatureCache | None:
    if not train_cfg.cache:
        return None
    return FeatureCache(model.teacher, model.cfg.image_size, root=train_cfg.cache_dir)


# ---- fit -------------------------------------------------------------------------------------------------
def fit(
    model: Method,
    train_data: MVTecDataset,
    train_cfg: TrainConfig | None = None,
    out=None,
    resume: bool = False,
    cache: FeatureCache | None = None,
    extra_config: dict | None = None,
    overwrite: bool = False,
) -> FitResult:
    """Train ``model`` on the normal images of ``train_data`` (one or many categories).

    ``out``: run folder for checkpoints and ``train_log.jsonl`` (None: keep in memory only). A folder that
    already holds a run is refused unless ``overwrite`` (which deletes that run and its metrics and
    predictions first) or ``resume`` (continue from ``out/train_state.safetensors``; refused if the saved
    method, teacher, image size, training data or precision differ). One process writes a run folder at a
    time (a lock; a second gets :class:`~unistad_edu.files.FolderBusy`). Temporary files an interrupted
    write left there are removed first.

    A method with ``trains_by_gradient = False`` (a memory bank) gets no optimiser and no epochs: its
    :meth:`~Method.build` is called once with every training batch (see :func:`_build_without_gradients`);
    the log then holds one line, ``epoch`` 1 (a second one for the refit). It writes no resume state -- there is no mid-way point to
    resume from -- so ``resume=True`` reuses a finished run's ``model.safetensors`` and rebuilds otherwise.
    """
    train_cfg = train_cfg or TrainConfig()
    _refits(model, train_cfg)  # refit=True for gradient training: refused before any work
    if out is None:
        return _train(model, train_data, train_cfg, None, resume, cache, extra_config)
    run = Path(out)
    now = runs.identity(model, train_data, train_cfg.precision)
    extra_config = {
        **(extra_config or {}),
        **{k: now[k] for k in ("train_root", "train_categories") if k in now},
    }
    if not distributed.is_master():  # torchrun: rank 0 checks, locks and writes the folder
        return _train(model, train_data, train_cfg, run, resume, cache, extra_config)
    if run.exists() and not run.is_dir():
        raise runs.RunFolderError(
            f"--out {run} is a file, not a folder: choose a folder for the run"
        )
    with files.folder_lock(run, "run folder"):
        runs.prepare(run, now, resume=resume, overwrite=overwrite, say=_say)
        files.remove_stale_temp_files(
            run
        )  # this process holds the lock: every temp file here is a dead write
        return _train(model, train_data, train_cfg, run, resume, cache, extra_config)


@dataclass
class _Fit:
    """One ``fit`` call's working state, handed from step to step (see :func:`_train`)."""

    model: Method
    train_cfg: TrainConfig
    run: Path | None
    ddp: distributed.DistInfo
    train_set: MVTecDataset
    held: MVTecDataset
    epochs: int
    batch_size: int
    prec: object
    cache: FeatureCache | None
    store: "TrainStore | None"
    optimizer: torch.optim.Optimizer | None
    result: FitResult
    extra_config: dict
    t_start: float
    groups: list[str] | None = None  # each training image's category when epochs are class-balanced
    start_epoch: int = 0

    @property
    def device(self) -> torch.device:
        return self.ddp.device

    @property
    def progress(self) -> bool:
        return self.train_cfg.progress and self.ddp.master

    @property
    def log_path(self) -> Path | None:
        return self.run / LOG_FILE if self.run is not None else None


def _train(
    model: Method,
    train_data: MVTecDataset,
    train_cfg: TrainConfig,
    run: Path | None,
    resume: bool,
    cache: FeatureCache | None,
    extra_config: dict | None,
) -> FitResult:
    """The training itself (see :func:`fit`), as named steps."""
    f = _prepare(
        model, train_data, train_cfg, run, resume, cache, extra_config
    )  # split, precision, cache, optimiser
    if _resume(f, resume):  # a finished run: nothing to do
        return f.result
    if model.trains_by_gradient:
        _train_epochs(f)
    else:
        _build_without_gradients(f, f.train_set, f.store)
        f.result.epochs_done = 1
    _calibrate_and_save(f, train_data)
    return f.result


def _prepare(model, train_data, train_cfg, run, resume, cache, extra_config) -> _Fit:
    """Device and processes, the held-out split, the epoch count, precision, feature cache, in-memory store."""
    t_start = time.perf_counter()
    # one process: rank 0 of 1, and nothing else changes
    ddp = distributed.setup(resolve_device(train_cfg.device))
    gradient = model.trains_by_gradient
    batch_size = train_cfg.batch_size or model.cfg.batch_size
    train_set, held = held_out(train_data, train_cfg)
    if len(train_set) == 0:
        raise ValueError("no training images left after the held-out split")
    if len(train_set) < ddp.world_size:
        raise ValueError(
            f"{len(train_set)} training images cannot be shared by {ddp.world_size} processes"
        )
    epochs = _epoch_count(model, train_cfg, len(train_set), batch_size, ddp.world_size)
    model.to(ddp.device)
    # a resumed run keeps the precision it started with (auto could measure differently today)
    saved = (
        _saved_precision(run, ddp.device)
        if resume and run is not None and train_cfg.precision == "auto"
        else None
    )
    prec = precision_of(model, saved or train_cfg.precision, ddp.device)
    cache = cache if cache is not None else make_cache(model, train_cfg)
    store = _train_store(model, train_set, cache, train_cfg, ddp.master)
    groups = sampling_groups(model, train_set, cache, prec)
    if train_cfg.progress and ddp.master:
        _say_groups(model, groups)
    return _Fit(
        model=model,
        train_cfg=train_cfg,
        run=run,
        ddp=ddp,
        train_set=train_set,
        held=held,
        epochs=epochs,
        batch_size=batch_size,
        prec=prec,
        cache=cache,
        store=store,
        optimizer=make_optimizer(model) if gradient else None,
        result=FitResult(run_dir=run),
        extra_config={**(extra_config or {}), "precision": prec.record()},
        t_start=t_start,
        groups=groups,
    )


def _epoch_count(
    model: Method, train_cfg: TrainConfig, n_train: int, batch_size: int, world_size: int
) -> int:
    """Epochs to train: the asked or the method's, more to reach ``min_steps``; a build: one."""
    if not model.trains_by_gradient:
        return 1  # build: one pass
    epochs = train_cfg.epochs if train_cfg.epochs is not None else model.cfg.epochs
    if train_cfg.min_steps:  # e.g. per-class models trained as many steps as one unified model
        epochs = max(
            epochs,
            math.ceil(train_cfg.min_steps / _steps_per_epoch(n_train, batch_size, world_size)),
        )
    return epochs


def _train_store(
    model: Method,
    train_set: MVTecDataset,
    cache: FeatureCache | None,
    train_cfg: TrainConfig,
    master: bool,
) -> TrainStore | None:
    """The training set in memory (:class:`TrainStore`) when the cache is on, preloading is
    asked and it fits in :data:`PRELOAD_MAX_MB`; else None (batches are streamed)."""
    if cache is None or not train_cfg.preload:
        return None
    need_mb = TrainStore.estimate_mb(
        train_set, model.teacher, model.needs_images, cache.dtype == torch.float16
    )
    if need_mb <= PRELOAD_MAX_MB:
        return TrainStore(
            train_set, cache, images=model.needs_images, progress=train_cfg.progress and master
        )
    if master:
        _say(
            f"training set would take {need_mb:.0f} MiB in memory "
            f"(more than {PRELOAD_MAX_MB} MiB): streaming batches from the cache instead"
        )
    return None


def _resume(f: _Fit, resume: bool) -> bool:
    """Load a resumed run's state and keep its log up to that epoch (or start a fresh log); True when the run in
    the folder is already complete (the model then holds its weights and threshold)."""
    run, model, ddp, log_path = f.run, f.model, f.ddp, f.log_path
    gradient = model.trains_by_gradient
    if run is not None:
        if gradient:
            resuming = resume and (run / STATE_FILE).is_file()
        else:  # no mid-way state: only a finished build is reused (its checkpoint is the whole state)
            resuming = resume and _complete(run)
        kept = []
        if resuming:
            if gradient:
                f.start_epoch = int(load_train_state(run, model, f.optimizer)["epoch"])
            else:
                model.load_from_checkpoint(read_tensors(run / MODEL_FILE))
                f.start_epoch = f.epochs
            if (
                log_path.is_file()
            ):  # keep the log of the epochs the state holds, drop any later lines
                lines = [ln for ln in log_path.read_text().splitlines() if ln.strip()]
                kept = [ln for ln in lines if json.loads(ln).get("epoch", 0) <= f.start_epoch]
                f.result.history = [json.loads(ln) for ln in kept]
        ddp.barrier()  # every rank has read the run folder before rank 0 changes it
        if ddp.master:
            run.mkdir(parents=True, exist_ok=True)
            if resuming and log_path.is_file():
                atomic_write_text(log_path, "".join(ln + "\n" for ln in kept))
            elif not resuming and log_path.is_file():
                log_path.unlink()
    if gradient:  # (a method without gradients has nothing to share yet: each rank builds)
        ddp.broadcast_state(model)  # all ranks start from rank 0's weights (fresh or resumed)
    if f.start_epoch > 0 and run is not None and (run / CONFIG_FILE).is_file():
        run_config = json.loads((run / CONFIG_FILE).read_text())
        if run_config.get("complete") and f.start_epoch >= f.epochs:
            f.result.already_complete = True
            f.result.epochs_done = f.start_epoch
            f.result.threshold = model.threshold = run_config.get("threshold")
            f.result.calibration = model.verdict_calibration = Calibration.from_json(
                run_config.get("calibration"), model.threshold, f.train_cfg.threshold_quantile
            )
            return True
    return False


def train_step(model: Method, batch: Batch, optimizer, prec, ddp=None) -> float:
    """One optimiser step on one batch: the loss under the chosen precision, backward, the gradients averaged
    over processes (``ddp``), clipped (``grad_clip``), the step. Returns the loss; a non-finite loss raises
    :class:`FloatingPointError` before any weight changes."""
    device = (
        batch.image.device
        if batch.image is not None
        else next(iter(batch.features.values())).device
    )
    with prec.autocast(device):
        loss = model.loss(batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = model.trainable_parameters()
    if ddp is not None:
        ddp.average_gradients(params)  # several processes: the global batch's gradient
    if model.cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(params, model.cfg.grad_clip)
    optimizer.step()
    return loss.item()


def _train_epochs(f: _Fit) -> None:
    """The optimiser loop from ``f.start_epoch``: per epoch a state + checkpoint (rank 0), the log line, and the
    ``max_minutes`` budget checked after it."""
    model, train_cfg, ddp, result = f.model, f.train_cfg, f.ddp, f.result
    epochs = f.epochs
    meta = {"epochs": epochs, "seed": train_cfg.seed, "train_config": asdict(train_cfg)}
    budget = train_cfg.max_minutes * 60 if train_cfg.max_minutes else None
    epoch = f.start_epoch
    while epoch < epochs:
        # jitter/dropout draws: own per rank
        torch.manual_seed(train_cfg.seed * 100_003 + epoch + 1_000_003 * ddp.rank)
        lr = lr_at(model.cfg, epoch, epochs)
        for group in f.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        model.train()
        t_epoch = time.perf_counter()
        losses = _epoch_losses(f, epoch)
        # rank 0's BatchNorm statistics everywhere (weights are equal already)
        ddp.broadcast_state(model)
        _check_weights_finite(model, epoch)
        record = {
            "epoch": epoch + 1,
            "loss": ddp.mean(float(np.mean(losses))),
            "lr": lr,
            "seconds": round(time.perf_counter() - t_epoch, 3),
            "images": len(losses) and len(f.train_set),
        }
        result.history.append(record)
        _report_epoch(f, record, budget)
        _save_epoch(f, record, meta)
        stop = _budget_spent(f, epoch, budget)
        epoch += 1
        if stop:
            break
    result.epochs_done = epoch


def _epoch_batches(f: _Fit, epoch: int):
    """``(batches, their number)`` of one epoch on this rank: from the store, or streamed."""
    ddp, batch_size = f.ddp, f.batch_size
    n_local = len(f.train_set) // ddp.world_size  # images per rank (all of them in one process)
    shuffle_seed, drop_last = f.train_cfg.seed * 100_003 + epoch, n_local > batch_size
    shard = dict(rank=ddp.rank, world_size=ddp.world_size, groups=f.groups)
    if f.store is not None:
        n_batches = n_local // batch_size if drop_last else math.ceil(n_local / batch_size)
        return f.store.batches(batch_size, shuffle_seed, drop_last, f.device, **shard), n_batches
    loader = _loader(
        f.train_set, batch_size, shuffle=True, seed=shuffle_seed, drop_last=drop_last, **shard
    )
    return (method_batch(b, f.cache, f.device) for b in loader), len(loader)


def _epoch_losses(f: _Fit, epoch: int) -> list[float]:
    """One epoch of optimiser steps; the loss of each. A non-finite loss raises, naming it."""
    batches, n_batches = _epoch_batches(f, epoch)
    losses = []
    for mb in progress_bar(batches, f"epoch {epoch + 1}/{f.epochs}", f.progress, total=n_batches):
        try:
            losses.append(train_step(f.model, mb, f.optimizer, f.prec, f.ddp))
        except FloatingPointError as err:
            raise FloatingPointError(
                f"{err} in epoch {epoch + 1}: lower the learning rate (--lr) or enable "
                f"grad clipping"
            ) from None
    return losses


def _check_weights_finite(model: Method, epoch: int) -> None:
    """Raise :class:`FloatingPointError` if a trainable weight or buffer (not the frozen teacher)
    is non-finite: a step can blow the weights up without a NaN loss first (e.g. a huge --lr on
    the last step)."""
    bad = non_finite(model.state_for_checkpoint())
    if bad:
        raise FloatingPointError(
            f"the weights became non-finite in epoch {epoch + 1} ({bad[:3]}): nothing of this "
            f"epoch is saved; lower the learning rate (--lr) or enable grad clipping"
        )


def _report_epoch(f: _Fit, record: dict, budget: float | None) -> None:
    """Print the epoch's loss, time and the run's time left (rank 0; progress or a run folder)."""
    if not (f.ddp.master and (f.train_cfg.progress or f.run is not None)):
        return
    done = record["epoch"]
    left = run_time_left(
        f.result.history[-(done - f.start_epoch) :],
        f.epochs - done,
        budget,
        time.perf_counter() - f.t_start,
    )
    _say(f"epoch {done}/{f.epochs}  loss {record['loss']:.5f}  ({record['seconds']:.1f} s; {left})")


def _save_epoch(f: _Fit, record: dict, meta: dict) -> None:
    """Rank 0, with a run folder: the epoch's log line, resume state and (incomplete) checkpoint."""
    if f.run is None or not f.ddp.master:
        return
    done = record["epoch"]
    with open(f.log_path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    save_train_state(f.run, f.model, f.optimizer, done, meta)
    save_checkpoint(
        f.run,
        f.model,
        {"complete": False, "epochs_done": done, "threshold": None, **f.extra_config},
    )


def _budget_spent(f: _Fit, epoch: int, budget: float | None) -> bool:
    """Whether the ``max_minutes`` budget stops the run after ``epoch`` (all ranks decide
    together); if so, the result says it stopped early and rank 0 says how to go on."""
    if not f.ddp.decide(
        budget is not None and time.perf_counter() - f.t_start > budget and epoch + 1 < f.epochs
    ):
        return False
    f.result.stopped_early = True
    if f.ddp.master:
        _say(
            f"stopping after epoch {epoch + 1}: the {f.train_cfg.max_minutes} min budget is used "
            f"(resume with --resume)"
        )
    return True


def _calibrate_and_save(f: _Fit, train_data: MVTecDataset) -> None:
    """Normal statistics and the threshold from the held-out images; the refit on every image (methods without
    gradients); the final checkpoint. Every rank calibrates (same weights, same images, so the same
    threshold); rank 0 writes it."""
    model, train_cfg, ddp, held, result = f.model, f.train_cfg, f.ddp, f.held, f.result
    if len(held):
        _held_out_statistics(f)
    cal, stats = _held_out_calibration(f, train_data)
    threshold = cal.global_threshold
    result.threshold = model.threshold = threshold
    result.calibration = model.verdict_calibration = cal
    refit = _refits(model, train_cfg) and len(held) > 0
    train_images = len(f.train_set)
    if refit:  # no training image wasted: the final state is built from every image
        _build_without_gradients(f, train_data, None, refit=True)
        stats["rule"] += f"; then rebuilt from all {len(train_data)} training images (refit)"
        train_images = len(train_data)
    result.seconds = time.perf_counter() - f.t_start
    if f.run is not None and ddp.master:
        save_checkpoint(
            f.run,
            model,
            {
                "complete": not result.stopped_early,
                "epochs_done": result.epochs_done,
                "threshold": threshold,
                "threshold_rule": stats.pop("rule"),
                "calibration": cal.to_json(),
                "validation": stats,
                "train_categories": train_data.categories,
                "train_images": train_images,
                "heldout_images": len(held),
                "refit": refit,
                "false_alarm_target": round(1.0 - train_cfg.threshold_quantile, 6),
                "train_seconds": round(result.seconds, 1),
                "peak_rss_mb": peak_rss_mb(),
                **f.extra_config,
            },
        )
    ddp.barrier()  # no rank returns before the run folder is complete


def _held_out_statistics(f: _Fit) -> None:
    """The normal statistics a method keeps (e.g. the dual student's), from the held-out images."""
    f.model.eval()
    with torch.no_grad(), f.prec.autocast(f.device):
        f.model.calibrate(
            method_batch(b, f.cache, f.device) for b in _loader(f.held, f.batch_size, shuffle=False)
        )


def _held_out_calibration(f: _Fit, train_data: MVTecDataset):
    """``(calibration, per-class stats)`` from the held-out normal images; a non-finite global
    threshold raises :class:`FloatingPointError`."""
    train_cfg = f.train_cfg
    cal, stats = calibrate(
        f.model,
        train_data,
        f.held,
        f.cache,
        f.device,
        train_cfg.threshold_quantile,
        train_cfg.tail,
        train_cfg.calibration,
        train_cfg.seed,
    )
    threshold = cal.global_threshold
    if threshold is not None and not math.isfinite(threshold):
        raise FloatingPointError(
            f"the calibrated threshold is {threshold}: the held-out normal images scored "
            f"non-finite; the run is not saved as complete"
        )
    return cal, stats


def _refits(model: Method, train_cfg: TrainConfig) -> bool:
    """Whether the final state is rebuilt from every training image after calibration (``train_cfg.refit``; None: for
    methods without gradients, where that costs one pass). Refused for gradient training: it would train twice."""
    if train_cfg.refit and model.trains_by_gradient:
        raise ValueError(
            "refit=True for a method trained by gradient would train it twice; it is offered for "
            "methods without gradients (a memory bank), where rebuilding costs one pass"
        )
    if train_cfg.refit is None:
        return not model.trains_by_gradient and train_cfg.calibration == "global"
    return bool(train_cfg.refit)


def run_time_left(
    records: list[dict], epochs_left: int, budget_s: float | None, elapsed_s: float
) -> str:
    """ "about N s left in the run": the mean epoch time of this session's epochs times the epochs still to
    go (capped by what remains of a ``max_minutes`` budget), plus the calibration at the end (not included)."""
    if epochs_left <= 0:
        return "last epoch; calibrating the threshold next"
    per_epoch = float(np.mean([r["seconds"] for r in records])) if records else 0.0
    left = per_epoch * epochs_left
    capped = budget_s is not None and budget_s - elapsed_s < left
    if capped:
        left = (
            max(0.0, budget_s - elapsed_s) + per_epoch
        )  # the budget stops the run after the epoch it runs out in
    text = f"{left / 60:.1f} min" if left >= 120 else f"{left:.0f} s"
    return f"about {text} left in the run" + (
        " (time budget)"
        if capped
        else f" ({epochs_left} epoch{'s' if epochs_left > 1 else ''} to go)"
    )


def _saved_precision(run: Path | None, device: torch.device):
    """The precision a run folder's checkpoint was trained with, on the same kind of device, else None."""
    from .precision import Precision

    try:
        rec = json.loads((run / CONFIG_FILE).read_text())["precision"]
        prec = Precision(
            str(rec["name"]), bool(rec["channels_last"]), f"resumed run: {rec.get('reason', '')}"
        )
    except (TypeError, OSError, ValueError, KeyError):
        return None
    cuda = prec.name.startswith("cuda")
    return (
        prec
        if prec.name in ("fp32", "bf16", "cuda-fp16", "cuda-bf16")
        and cuda == (device.type == "cuda")
        else None
    )


def _complete(run: Path) -> bool:
    """Does ``run`` hold a finished checkpoint (config.json says complete)?"""
    try:
        return bool(json.loads((run / CONFIG_FILE).read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def _build_without_gradients(f: _Fit, dataset, store, refit: bool = False) -> None:
    """``fit`` for a method with ``trains_by_gradient = False``: one ``model.build(batches)`` call over every
    image of ``dataset``, in eval mode, without gradients, in the order of epoch 0 (the in-memory store and the
    streamed DataLoader give the same order, so both build the same state). ``refit``: the second build, from
    all training images after calibration (logged as such).

    Under DDP every rank builds from the **whole** training set (no sharding, no communication while
    building): the state comes out the same on each rank, and rank 0's copy is then broadcast so that all
    ranks hold it bit for bit. That repeats the build on every rank -- simple, and a memory bank's build is
    one pass over cached features plus the coreset search."""
    t0 = time.perf_counter()
    model, train_cfg, ddp, device = f.model, f.train_cfg, f.ddp, f.device
    seed = train_cfg.seed * 100_003  # epoch 0's order
    if store is not None:
        batches = store.batches(f.batch_size, seed, drop_last=False, device=device)
    else:
        batches = (
            method_batch(b, f.cache, device)
            for b in _loader(dataset, f.batch_size, shuffle=True, seed=seed)
        )
    model.eval()
    with torch.no_grad(), f.prec.autocast(device):
        info = model.build(
            progress_bar(
                batches, "building", f.progress, total=math.ceil(len(dataset) / f.batch_size)
            )
        )
    ddp.broadcast_state(model)  # the same shapes on every rank: each built from the same images
    record = {
        "epoch": 1,
        "seconds": round(time.perf_counter() - t0, 3),
        "images": len(dataset),
        **(info or {}),
        **({"refit": True} if refit else {}),
    }
    f.result.history.append(record)
    if ddp.master and (train_cfg.progress or f.run is not None):
        _say(
            f"built from {len(dataset)} images ({record['seconds']:.1f} s): "
            + ", ".join(f"{k} {v}" for k, v in (info or {}).items())
        )
    if f.run is not None and ddp.master:
        with open(f.log_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


# ---- helpers for lessons and scripts: the engine's own rules, public ------------------------------------------
def recalibrate(
    model: Method,
    train_data: MVTecDataset,
    train_cfg: TrainConfig | None = None,
    cache=None,
    device=None,
):
    """The threshold ``fit`` would store, computed again for ``model`` as it is now (e.g. after a test-time
    switch such as another combine rule): the same held-out normal images of ``train_data`` (``held_out``),
    the same quantile. Returns ``(threshold, per-class stats)``; the model's per-category calibration, when it
    has one, is refitted too (``model.verdict_calibration``)."""
    train_cfg = train_cfg or TrainConfig(progress=False)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    cal, stats = calibrate(
        model,
        train_data,
        held_out(train_data, train_cfg)[1],
        cache,
        device,
        train_cfg.threshold_quantile,
        train_cfg.tail,
        train_cfg.calibration,
        train_cfg.seed,
    )
    model.verdict_calibration = cal
    return cal.global_threshold, stats


def held_out(
    train_data: MVTecDataset, train_cfg: TrainConfig | None = None
) -> tuple[MVTecDataset, MVTecDataset]:
    """``(training part, held-out normal images)`` exactly as ``fit`` splits ``train_data`` with ``train_cfg``
    (``holdout_fraction`` of each category, at least ``holdout_min`` where the category has three times that,
    seeded by ``train_cfg.seed``): the images the thresholds come from."""
    train_cfg = train_cfg or TrainConfig()
    return holdout_split(
        train_data,
        train_cfg.holdout_fraction,
        seed=train_cfg.seed,
        min_tail=train_cfg.holdout_min if train_cfg.holdout_fraction > 0 else 0,
    )


def _steps_per_epoch(n_images: int, batch_size: int, world_size: int = 1) -> int:
    return max(
        1, n_images // (batch_size * world_size)
    )  # full batches only (fit drops the last partial one)


def steps_per_epoch(
    train_data: MVTecDataset, batch_size: int, train_cfg: TrainConfig | None = None
) -> int:
    """Optimiser steps ``fit`` takes per epoch on ``train_data``: its training part (after the held-out
    split) in full batches of ``batch_size``."""
    return _steps_per_epoch(len(held_out(train_data, train_cfg)[0]), batch_size)


def batch_of(
    dataset, indices: Sequence[int], cache: FeatureCache | None = None, device="cpu"
) -> Batch:
    """The :class:`Batch` of ``dataset[i] for i in indices``: images (B, 3, S, S) on ``device`` and, with a
    feature cache, the teacher's features for them (read from the cache, computed once)."""
    items = [dataset[i] for i in indices]
    x = torch.stack([it["image"] for it in items]).to(device)  # (B, 3, S, S)
    feats = cache.features(x, [it["path"] for it in items]) if cache is not None else None
    return Batch(image=x, features=feats)


def batches(
    dataset,
    indices: Sequence[int] | None = None,
    batch_size: int = 16,
    cache: FeatureCache | None = None,
    device="cpu",
    with_indices: bool = False,
):
    """:func:`batch_of` over ``indices`` (default: every image, in order) in chunks of ``batch_size``;
    ``with_indices``: yield ``(the chunk's indices, Batch)`` pairs instead."""
    ids = list(range(len(dataset))) if indices is None else list(indices)
    for k in range(0, len(ids), batch_size):
        part = ids[k : k + batch_size]
        batch = batch_of(dataset, part, cache, device)
        yield (part, batch) if with_indices else batch


def fit_per_class(
    build: Callable[[], Method],
    train_data: MVTecDataset,
    train_cfg: TrainConfig | None = None,
    cache=None,
    equal_steps: bool = True,
    out=None,
    resume: bool = False,
    overwrite: bool = False,
    extra_config: dict | None = None,
    log=None,
) -> dict[str, tuple[Method, FitResult]]:
    """One model per category of ``train_data``, each from ``build()`` (the same initial weights if ``build``
    seeds them), trained and calibrated on its own category only -- the per-class protocol. With
    ``calibration="auto"`` each model gets one threshold for its one product (``per-category``).

    ``equal_steps`` (default): every per-class model trains **at least as many optimiser steps as one unified
    model** with ``train_cfg`` would (its epochs x its steps per epoch on the whole set), so a small category is not
    handicapped by taking fewer steps; False: the same number of epochs each (the unfair protocol lesson 03
    shows), or ``train_cfg.min_steps``. ``out``: the outer folder of a per-class run -- ``setting.json`` and one run
    folder per category; ``resume`` / ``overwrite`` as for :func:`fit` (``overwrite`` replaces the whole
    per-class run). ``log``: called with a line per category. Returns {category: (model, FitResult)}."""
    train_cfg = train_cfg or TrainConfig(progress=False)
    if train_cfg.calibration == "auto":
        # one product per model: nothing to route
        train_cfg = dataclasses.replace(train_cfg, calibration="per-category")
    probe = build()
    if equal_steps and probe.trains_by_gradient:
        train_cfg = _with_unified_steps(probe, train_data, train_cfg)
    extra = {**(extra_config or {}), "setting": "per-class"}
    if out is not None:
        out = Path(out)
        _prepare_per_class_folder(out, probe, train_data, resume, overwrite, extra_config, log)
    results = {}
    for i, (cat, ds) in enumerate(train_data.by_category().items()):
        if log:
            log(f"--- {cat}: {len(ds)} images")
        model = probe if i == 0 else build()
        run = None if out is None else out / cat
        results[cat] = (
            model,
            fit(model, ds, train_cfg, out=run, cache=cache, resume=resume, extra_config=extra),
        )
        if log:
            log(result_line(results[cat][1], run))
    return results


def _with_unified_steps(
    probe: Method, train_data: MVTecDataset, train_cfg: TrainConfig
) -> TrainConfig:
    """``train_cfg`` with ``min_steps`` raised to the steps one unified model would take."""
    epochs = train_cfg.epochs if train_cfg.epochs is not None else probe.cfg.epochs
    unified = epochs * steps_per_epoch(
        train_data, train_cfg.batch_size or probe.cfg.batch_size, train_cfg
    )
    return dataclasses.replace(train_cfg, min_steps=max(train_cfg.min_steps or 0, unified))


def _prepare_per_class_folder(
    out: Path,
    probe: Method,
    train_data: MVTecDataset,
    resume: bool,
    overwrite: bool,
    extra_config: dict | None,
    log,
) -> None:
    """Make ``out`` ready for a per-class run (as :func:`runs.prepare` allows) and write its
    ``setting.json``; refused when ``out`` is a file."""
    if out.exists() and not out.is_dir():
        raise runs.RunFolderError(
            f"--out {out} is a file, not a folder: choose a folder for the run"
        )
    with files.folder_lock(out, "run folder"):
        runs.prepare(
            out, None, resume=resume, overwrite=overwrite, per_class=True, say=log or print
        )
        files.atomic_write_text(
            out / SETTING_FILE,
            json.dumps(
                {
                    "setting": "per-class",
                    "method": probe.name,
                    "categories": train_data.categories,
                    **(extra_config or {}),
                },
                indent=2,
            ),
        )


def result_line(res: FitResult, run=None) -> str:
    """What a finished :func:`fit` did, in one line (the CLI prints it per run)."""
    if res.already_complete:
        return f"{run} is already complete ({res.epochs_done} epochs): nothing to do"
    state = "stopped early (budget)" if res.stopped_early else "done"
    where = f"; checkpoint in {run}" if run is not None else ""
    return f"{state}: {res.epochs_done} epochs in {res.seconds:.0f} s, threshold {res.threshold}{where}"
