"""Training across processes with PyTorch's own engine: ``torch.distributed`` and DistributedDataParallel.

``torchrun --nproc-per-node N -m seglab train RECIPE`` starts N copies of the ``seglab`` command with
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. The trainer opens one
process group per job (:func:`distributed_session`) and asks this module everything that depends on
the process it runs in: which rank writes files (:attr:`DistContext.is_main`), which part of the
validation split it scores (:func:`shard_range`), the job-wide loss and stop decision
(:meth:`DistContext.mean`, :meth:`DistContext.any`) and the metrics of all shards together
(:func:`combine_meters`). Without ``WORLD_SIZE > 1`` nothing here opens a process group and every
helper is the identity, so a plain ``seglab train`` runs exactly as before.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from seglab.core.errors import SeglabError

__all__ = ["BACKENDS", "DistContext", "SINGLE_PROCESS", "combine_meters", "distributed_session", "env_world_size",
           "prepare_model", "shard_range", "split_batch_size", "threads_per_process"]

#: ``train.dist_backend`` choices; ``auto`` is nccl with CUDA, gloo without.
BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job: rank ``rank`` of ``world_size`` (one process when 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints, draws the progress bar and writes the run folder."""
        return self.rank == 0

    def mean(self, value: float) -> float:
        """The mean of ``value`` over all ranks (a NaN or inf on any rank makes it non-finite everywhere)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._device())
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one (e.g. a signal reached one rank)."""
        if not self.active:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable objects only, e.g. the run folder's path)."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def _device(self) -> torch.device:
        # nccl reduces CUDA tensors only; gloo takes CPU tensors.
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")


SINGLE_PROCESS = DistContext()


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun (or Slurm's srun with the same variables) sets it; 1 without."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(raw)
    except ValueError as e:
        raise SeglabError(f"The environment variable WORLD_SIZE must be a whole number, got {raw!r}.") from e


def _resolve_backend(spec: str, device_spec: str) -> str:
    if spec not in BACKENDS:
        raise SeglabError(f"train.dist_backend must be one of {', '.join(BACKENDS)}; got {spec!r}.")
    cuda = torch.cuda.is_available() and not device_spec.startswith("cpu")
    if spec == "auto":
        return "nccl" if cuda else "gloo"
    if spec == "nccl" and not cuda:
        why = "no CUDA GPU is visible" if not torch.cuda.is_available() else "train.device is cpu"
        raise SeglabError(f"train.dist_backend nccl needs CUDA GPUs, but {why}. Use --train.dist_backend gloo "
                          "(or auto) to train on CPUs.")
    return spec


def _local_rank_device(device_spec: str, backend: str, local_rank: int) -> torch.device:
    if backend == "nccl" or (device_spec in ("auto", "cuda") and torch.cuda.is_available()):
        if local_rank >= torch.cuda.device_count():
            raise SeglabError(f"Local rank {local_rank} has no GPU: this node shows {torch.cuda.device_count()}. "
                              "Start at most one process per GPU (torchrun --nproc-per-node).")
        torch.cuda.set_device(local_rank)  # only with CUDA: each process owns one GPU
        return torch.device("cuda", local_rank)
    if device_spec.startswith("cuda"):
        raise SeglabError(f"train.device {device_spec!r} was asked for, but no CUDA GPU is visible.")
    return torch.device("cpu")


@contextlib.contextmanager
def distributed_session(backend: str = "auto", device: str = "auto", timeout_s: float = 600.0
                        ) -> Iterator[tuple[DistContext, torch.device | None]]:
    """Open the job's process group when launched by torchrun (``WORLD_SIZE > 1``), close it after.

    Yields ``(context, device)``; ``device`` is this rank's (``cuda:LOCAL_RANK`` with GPUs) or None
    outside a job, where the trainer picks its device as always. ``timeout_s`` bounds every
    collective, so a rank that stops answering fails the job instead of hanging it.
    """
    world = env_world_size()
    if world <= 1 or (torch.distributed.is_available() and torch.distributed.is_initialized()):
        yield _existing_context(), None
        return
    if not torch.distributed.is_available():
        raise SeglabError("This PyTorch build has no torch.distributed; install a standard PyTorch wheel.")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise SeglabError(f"WORLD_SIZE={world} is set but {', '.join(missing)} is not: start distributed training "
                          "with torchrun (docs/distributed.md), which sets them all.")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    name = _resolve_backend(backend, device)
    dev = _local_rank_device(device, name, local_rank)
    try:
        torch.distributed.init_process_group(name, timeout=timedelta(seconds=timeout_s),
                                             **({"device_id": dev} if dev.type == "cuda" else {}))
    except Exception as e:  # noqa: BLE001  (store timeouts, refused connections, bad hosts)
        raise SeglabError(f"Rank {rank} could not join the job's rendezvous at {os.environ['MASTER_ADDR']}:"
                          f"{os.environ['MASTER_PORT']} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
                          "Check --rdzv-endpoint / MASTER_ADDR and that the port is open between nodes.") from e
    ctx = DistContext(rank, world, local_rank, name)
    try:
        yield ctx, dev
    except Exception as e:
        if not _is_collective_failure(e):
            raise
        raise SeglabError(f"Rank {rank}: a collective operation failed ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:240]}). Another process of the job most likely died or "
                          f"stopped answering (train.dist_timeout is {timeout_s:g} s): its own error is shown "
                          "above or in its log; the job stops.") from e
    finally:
        with contextlib.suppress(Exception):
            torch.distributed.destroy_process_group()


#: Words in the messages of gloo's and nccl's errors (a peer gone, a timeout), which raise plain RuntimeErrors.
_COLLECTIVE_MARKERS = ("gloo", "nccl", "connection", "processgroup", "c10d", "timed out", "peer")


def _is_collective_failure(error: BaseException) -> bool:
    if isinstance(error, torch.distributed.DistError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(m in text for m in _COLLECTIVE_MARKERS)


def _existing_context() -> DistContext:
    """The context of a process group someone else opened (or one process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return DistContext(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                           int(os.environ.get("LOCAL_RANK", "0")), torch.distributed.get_backend())
    return SINGLE_PROCESS


def split_batch_size(global_batch: int, ctx: DistContext, num_train: int) -> int:
    """Each rank's share of ``train.batch_size``, which stays the batch of one optimisation step."""
    if ctx.world_size > num_train:
        raise SeglabError(f"The job has {ctx.world_size} processes but the training split only {num_train} images: "
                          "every process needs at least one. Start fewer processes (--nproc-per-node).")
    if global_batch % ctx.world_size:
        lower = global_batch - global_batch % ctx.world_size
        raise SeglabError(f"train.batch_size={global_batch} is the global batch and must split evenly over the "
                          f"job's {ctx.world_size} processes: use --train.batch_size {lower or ctx.world_size} or "
                          f"{lower + ctx.world_size}, or another number of processes.")
    return global_batch // ctx.world_size


def shard_range(n: int, ctx: DistContext) -> range:
    """The contiguous block of ``range(n)`` that rank ``ctx.rank`` evaluates: no padding, no overlap.

    Blocks in rank order cover ``range(n)`` in order, so merging the ranks' metrics in rank order
    sees the images in the order one process sees them.
    """
    return range(n * ctx.rank // ctx.world_size, n * (ctx.rank + 1) // ctx.world_size)


def combine_meters(meter: Any, ctx: DistContext) -> Any:
    """All ranks' metric accumulators merged in rank order (``meter.merge(other)``), on every rank.

    Confusion matrices add exactly and per-image scores (BF) are concatenated in data-set order,
    so the result equals one process's. A task's meter must be picklable with CPU tensors.
    """
    if not ctx.active:
        return meter
    if not hasattr(meter, "merge"):
        raise SeglabError(f"{type(meter).__name__} has no merge(other), so its metrics cannot be combined across "
                          "processes; validate with one process (--train.val_every 0) or add merge().")
    gathered: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(gathered, meter)
    merged = gathered[0]
    for other in gathered[1:]:
        merged.merge(other)
    return merged


def threads_per_process(threads: int | None, ctx: DistContext) -> int | None:
    """``train.threads``, or in a job this node's cores shared by its processes (never oversubscribed)."""
    if threads is not None or not ctx.active:
        return threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size)))


def prepare_model(model: torch.nn.Module, ctx: DistContext, device: torch.device, sync_bn: bool
                  ) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(module, module_to_train)``: the plain module, and in a job the DDP wrapper that syncs its gradients.

    Checkpoints hold the plain module's state dict (no ``module.`` prefix), so a run resumes on any
    number of processes and its checkpoints load in ``seglab predict`` as one process's do.
    """
    if sync_bn and device.type != "cuda":
        raise SeglabError("train.sync_bn needs CUDA: PyTorch's SyncBatchNorm does not run on CPU tensors. Drop "
                          "--train.sync_bn (each process then normalises its own share of the batch).")
    if not ctx.active:
        return model, model
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, ddp
