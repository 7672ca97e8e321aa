"""Data loaders whose order and augmentation depend only on (seed, epoch, position).

A data set batches with its own ``collate_fn`` attribute when it has one (detection data: lists
of images and target dicts), else with PyTorch's default (stacked tensors).

Each training sample carries its own seed, set inside the worker just before the
random transforms run. So a run resumed in the middle of an epoch, with any number
of worker processes, sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["SeededSampler", "build_train_loader", "build_eval_loader"]


class SeededSampler(Sampler):
    """Yields ``(index, sample_seed)`` pairs in an order fixed by ``seed`` and the epoch."""

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Start ``epoch``, skipping its first ``skip`` samples (already seen before a resume)."""
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=g) if self.shuffle else torch.arange(self.num_samples)
        seeds = torch.randint(0, 2**62, (self.num_samples,), generator=g)
        for pos in range(self.skip, self.num_samples):
            yield int(order[pos]), int(seeds[pos])

    def __len__(self) -> int:
        return self.num_samples - self.skip


class _SeededDataset(Dataset):
    """Applies the per-sample seed before delegating to the wrapped data set."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def _ignore_stop_signals(worker_id: int) -> None:
    """Workers leave Ctrl-C/SIGTERM to the main process, which stops gracefully and then closes them.

    A terminal sends SIGINT to the whole process group; a worker dying of it would make the
    main process fail mid-step instead of writing its resumable checkpoint.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _loader_kwargs(num_workers: int, pin_memory: bool) -> dict:
    kwargs: dict = {"num_workers": num_workers, "pin_memory": pin_memory}
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=_ignore_stop_signals)
    return kwargs


def build_train_loader(dataset: Dataset, batch_size: int, seed: int, num_workers: int, pin_memory: bool) -> DataLoader:
    """Shuffled loader of full batches; call ``loader.sampler.set_epoch(e, skip)`` each epoch."""
    sampler = SeededSampler(len(dataset), seed)  # type: ignore[arg-type]
    return DataLoader(_SeededDataset(dataset), batch_size=batch_size, sampler=sampler, drop_last=True,
                      collate_fn=getattr(dataset, "collate_fn", None), **_loader_kwargs(num_workers, pin_memory))


def build_eval_loader(dataset: Dataset, batch_size: int, num_workers: int, pin_memory: bool) -> DataLoader:
    """Loader in data set order; keeps the last partial batch."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=getattr(dataset, "collate_fn", None),
                      **_loader_kwargs(num_workers, pin_memory))
