"""Dynamic micro-batching: requests wait in a bounded queue and run together in one forward pass.

The worker takes the first waiting request, then keeps collecting for at most ``max_batch_delay_ms``
or until ``max_batch_size`` requests are in hand, groups them by image size (and ``mc_samples``:
only same-size images are stacked; other sizes run as their own batch right after) and runs each
group in a single inference thread, so the event loop never waits on the model. A full queue is
refused at once (:class:`QueueFull`, answered 503 with ``Retry-After``), never an unbounded backlog.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from seglab.apps.serve.runner import Prediction

__all__ = ["MicroBatcher", "QueueFull"]


class QueueFull(Exception):
    """The bounded queue holds ``max_queue`` requests already."""


@dataclass
class _Job:
    image: np.ndarray
    mc_samples: int
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def key(self) -> tuple:
        return self.image.shape, self.mc_samples


class MicroBatcher:
    """Collects requests into batches for ``run_batch(images, mc_samples) -> predictions``.

    ``on_batch(size)`` is called for each batch run (the metrics' batch-size histogram).
    """

    def __init__(self, run_batch: Callable[[list[np.ndarray], int], list[Prediction]], max_batch_size: int,
                 max_batch_delay_ms: float, max_queue: int, on_batch: Callable[[int], None] | None = None) -> None:
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay = max_batch_delay_ms / 1000
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        self.on_batch = on_batch or (lambda size: None)
        # One thread: batches run one after another, each using all the cores torch is given.
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="seglab-infer")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._work(), name="seglab-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while not self.queue.empty():  # nobody will run these: tell their callers
            job = self.queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        self.executor.shutdown(wait=True)

    async def run_in_thread(self, fn: Callable, *args):
        """Run ``fn(*args)`` in the inference thread (warm-up uses it, so it never races a batch)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def submit(self, image: np.ndarray, mc_samples: int = 0) -> asyncio.Future:
        """Queue one image; the future resolves to its :class:`Prediction`. Raises :class:`QueueFull`."""
        job = _Job(image, mc_samples, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull from None
        return job.future

    async def _collect(self) -> list[_Job]:
        jobs = [await self.queue.get()]
        deadline = time.perf_counter() + self.max_delay
        while len(jobs) < self.max_batch_size:
            if not self.queue.empty():
                jobs.append(self.queue.get_nowait())
                continue
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self.queue.get(), left))
            except asyncio.TimeoutError:
                break
        return jobs

    async def _work(self) -> None:
        while True:
            jobs = await self._collect()
            groups: dict[tuple, list[_Job]] = defaultdict(list)
            for job in jobs:
                if not job.future.done():  # a caller that timed out is not computed for
                    groups[job.key].append(job)
            for group in groups.values():
                await self._run_group(group)

    async def _run_group(self, group: list[_Job]) -> None:
        self.on_batch(len(group))
        try:
            results = await self.run_in_thread(self.run_batch, [j.image for j in group], group[0].mc_samples)
        except Exception as e:  # the model failed: every caller of the batch hears why, the worker lives on
            for job in group:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        for job, result in zip(group, results):
            if not job.future.done():
                job.future.set_result(result)
