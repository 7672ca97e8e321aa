"""Data loaders whose order and augmentation depend only on (seed, epoch, position).

A data set batches with its own ``collate_fn`` attribute when it has one (detection data: lists
of images and target dicts), else with PyTorch's default (stacked tensors).

Each training sample carries its own seed, set inside the worker just before the
random transforms run. So a run resumed in the middle of an epoch, with any number
of worker processes, sees exactly the batches the uninterrupted run would have seen.

Across processes (``torchrun``, :mod:`seglab.engine.distributed`) every rank draws the same order
and takes its own slice of each global batch: for step ``s`` of global batch ``B`` over ``W``
ranks, rank ``r`` gets positions ``s*B + r*B/W`` to ``s*B + (r+1)*B/W``. The ranks' shards are
disjoint, their union is the one-process batch with the same per-sample seeds, and a resume skips
whole global batches, so a run may resume on any number of processes.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from seglab.core.errors import SeglabError

__all__ = ["LoaderError", "SeededSampler", "build_train_loader", "build_eval_loader", "close_loader",
           "closing_loaders"]


class LoaderError(SeglabError):
    """A :class:`SeglabError` raised while loading a sample, in the main process or a worker.

    DataLoader re-raises a worker's exception as ``type(message_with_the_worker_traceback)``; this
    class keeps only its own message (the traceback's last line), so the user reads what seglab said.
    """

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__module__}.{type(self).__qualname__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].rstrip()
        super().__init__(message)


class _UserErrors(Dataset):
    """Turns the wrapped data set's SeglabErrors into :class:`LoaderError` (see there)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: Any):
        try:
            return self._get(item)
        except LoaderError:
            raise
        except SeglabError as e:
            raise LoaderError(str(e)) from None

    def _get(self, item: Any):
        return self.dataset[item]


class SeededSampler(Sampler):
    """Yields ``(index, sample_seed)`` pairs in an order fixed by ``seed`` and the epoch."""

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 global_batch: int = 1) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.rank, self.world_size, self.global_batch = rank, world_size, global_batch
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Start ``epoch``, skipping its first ``skip`` samples (already seen before a resume)."""
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=g) if self.shuffle else torch.arange(self.num_samples)
        seeds = torch.randint(0, 2**62, (self.num_samples,), generator=g)
        for pos in self._positions():
            yield int(order[pos]), int(seeds[pos])

    def _positions(self) -> range | Iterator[int]:
        if self.world_size == 1:
            return range(self.skip, self.num_samples)
        share = self.global_batch // self.world_size
        first_step, steps = self.skip // self.global_batch, self.num_samples // self.global_batch
        return (s * self.global_batch + self.rank * share + i for s in range(first_step, steps) for i in range(share))

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.num_samples - self.skip
        steps = self.num_samples // self.global_batch - self.skip // self.global_batch
        return steps * (self.global_batch // self.world_size)


class _SeededDataset(_UserErrors):
    """Applies the per-sample seed before delegating to the wrapped data set."""

    def _get(self, item: tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def _ignore_ctrl_c(worker_id: int) -> None:
    """Workers leave Ctrl-C to the main process, which stops gracefully and then closes them.

    A terminal sends SIGINT to the whole process group; a worker dying of it would make the
    main process fail mid-step instead of writing its resumable checkpoint. SIGTERM still ends a
    worker: a worker that ignored it could never be terminated, and the interpreter's exit, which
    terminates and then joins its children, waited for it for ever. (A SIGTERM sent to the whole
    group also reaches the main process, which stops gracefully although its workers are gone.)
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _loader_kwargs(num_workers: int, pin_memory: bool) -> dict:
    kwargs: dict = {"num_workers": num_workers, "pin_memory": pin_memory}
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=_ignore_ctrl_c)
    return kwargs


def _collate_fn(dataset: Dataset):
    """The data set's own ``collate_fn`` (detection data batches lists), also through a ``Subset``
    (a rank's shard of the val split in a distributed job)."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    return getattr(dataset, "collate_fn", None)


def build_train_loader(dataset: Dataset, batch_size: int, seed: int, num_workers: int, pin_memory: bool,
                       rank: int = 0, world_size: int = 1) -> DataLoader:
    """Shuffled loader of full batches; call ``loader.sampler.set_epoch(e, skip)`` each epoch.

    ``batch_size`` is the global batch; with ``world_size > 1`` this rank's loader yields its
    ``batch_size // world_size`` share of each one.
    """
    sampler = SeededSampler(len(dataset), seed, rank=rank, world_size=world_size,  # type: ignore[arg-type]
                            global_batch=batch_size)
    return DataLoader(_SeededDataset(dataset), batch_size=batch_size // world_size, sampler=sampler, drop_last=True,
                      collate_fn=_collate_fn(dataset), **_loader_kwargs(num_workers, pin_memory))


def build_eval_loader(dataset: Dataset, batch_size: int, num_workers: int, pin_memory: bool) -> DataLoader:
    """Loader in data set order; keeps the last partial batch."""
    return DataLoader(_UserErrors(dataset), batch_size=batch_size, shuffle=False,
                      collate_fn=_collate_fn(dataset), **_loader_kwargs(num_workers, pin_memory))


def close_loader(loader: DataLoader | None) -> None:
    """Stop ``loader``'s (persistent) worker processes now, instead of whenever it is garbage-collected.

    DataLoader has no public close; its iterator's shutdown is what its own ``__del__`` calls.
    """
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    if loader is not None:
        loader._iterator = None


@contextlib.contextmanager
def closing_loaders(*loaders: Any):
    """Stop the loaders' worker processes however training ends (they would outlive an error)."""
    try:
        yield
    finally:
        for loader in loaders:
            close_loader(loader)
