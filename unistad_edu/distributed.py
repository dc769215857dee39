"""Data-parallel training over several processes under ``torchrun`` (PyTorch DDP-style), kept small.

``torchrun --nproc_per_node N -m unistad_edu train ...`` starts N copies of the same command and tells each its
place through the environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``).
:func:`setup` reads that, joins the process group (``nccl`` on CUDA, ``gloo`` on CPU) and puts each process on
its own GPU (``cuda:LOCAL_RANK``). Without torchrun nothing happens and training is exactly single-process.

How the engine uses it (see ``engine.fit``):

* **one model, identical everywhere**: rank 0's weights and buffers are copied to every rank before training
  (:func:`DistInfo.broadcast_state`), so all ranks start from the same point even if their random inits differ;
* **sharded data**: each epoch's shuffled order (``engine.epoch_order``, the same permutation on every rank)
  is cut to a multiple of the world size and rank ``r`` takes every ``world_size``-th image from ``r`` on
  (:func:`shard`) -- the equivalent of ``DistributedSampler(drop_last=True)``. Global batch ``k`` is then
  exactly the single-process batch ``k`` of size ``batch_size * world_size``;
* **averaged gradients**: after ``loss.backward()`` the gradients of ``model.trainable_parameters()`` are
  summed over ranks and divided by the world size (:func:`DistInfo.average_gradients`), one flat all-reduce
  per step. Every rank then takes the same optimiser step. We do this instead of wrapping the method in
  ``torch.nn.parallel.DistributedDataParallel`` because a method trains through ``loss(batch)``, not
  ``forward()``, owns a frozen teacher, and is saved by its own ``state_for_checkpoint()``: the explicit
  all-reduce leaves all of that untouched and keeps the gradient semantics exact (the gradient of the mean
  loss over the global batch). What it gives up is DDP's overlap of communication with the backward pass;
* **buffers** (BatchNorm running statistics) are not averaged step by step: each rank normalises with its own
  local batch, as plain DDP does without SyncBatchNorm, and rank 0's buffers are copied to all ranks after
  each epoch (DDP's ``broadcast_buffers`` does the same before every forward); likewise a loss that takes a
  statistic over its batch -- the loose loss's quantile (``hm_quantile``) -- takes it over each rank's own part;
* **rank 0 writes**: checkpoints, the training log, prints and progress bars; :func:`DistInfo.barrier` keeps
  the other ranks from reading the run folder while rank 0 rewrites it, and from returning before it is done.

The process group is destroyed when the process exits (:func:`cleanup`, registered with ``atexit``; call it
yourself to end it earlier).
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes; ``device`` is the one it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace each parameter's gradient by its mean over ranks (one flat all-reduce).
        Parameters without a gradient are skipped; which parameters get one must not depend on the data."""
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat(
            [g.reshape(-1) for g in grads]
        )  # reshape: channels_last grads are copied, not viewed
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)  # gloo has no AVG
        flat /= self.world_size
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))  # copy_ keeps g's memory format
            offset += n

    def broadcast_state(self, module) -> None:
        """Copy rank 0's trainable state (weights and buffers, not the frozen teacher) to every rank, in place."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in module.state_for_checkpoint().values():  # detached views of the live tensors
                buf = (
                    t.contiguous()
                )  # collectives want dense tensors; channels_last ones get a copy
                dist.broadcast(buf, src=0)
                if buf.data_ptr() != t.data_ptr():
                    t.copy_(buf)

    def mean(self, value: float) -> float:
        """Mean of a per-rank number (e.g. the epoch loss) over ranks; every rank gets the same result."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / self.world_size

    def decide(self, flag: bool) -> bool:
        """Rank 0's decision (e.g. "the time budget is used up"), the same on every rank, so no rank waits
        in a collective that another one skipped."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.broadcast(t, src=0)
        return bool(t.item())


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun (or any launcher that sets WORLD_SIZE > 1 and RANK)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def is_master() -> bool:
    """True in the one process that writes files: rank 0 under torchrun, and every plain process."""
    return not launched_by_torchrun() or int(os.environ.get("RANK", "0")) == 0


def setup(device: torch.device) -> DistInfo:
    """Join the process group if this process was started by torchrun; return where it stands.

    ``device`` is what the user asked for; under torchrun a bare ``cuda`` becomes ``cuda:LOCAL_RANK``. Calling
    it again (another ``fit`` in the same process) reuses the group. Without torchrun: a single process.
    """
    if not (dist.is_available() and (dist.is_initialized() or launched_by_torchrun())):
        return DistInfo(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(cleanup)
    return DistInfo(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device
    )


def cleanup() -> None:
    """Leave the process group (safe to call more than once)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(order: torch.Tensor, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Rank ``rank``'s part of an epoch's order: the order is cut to a multiple of ``world_size`` (so every
    rank gets as many images and takes as many steps) and each rank takes every ``world_size``-th entry.
    With one process it is the whole order."""
    if world_size == 1:
        return order
    usable = len(order) - len(order) % world_size
    return order[rank:usable:world_size]
