"""Decode-once cache for data set arrays, shared with forked DataLoader workers.

PNG decoding dominates CPU data loading, so every sample is decoded (and resized)
once and kept in memory. When the array shape is known up front (``image_size`` set,
synthetic data, or a data set whose images all share the first image's size) the
arrays live in one anonymous shared ``mmap``: a sample decoded by any worker is then
visible to the main process and to every later worker, because forked children
inherit shared mappings. Samples of another shape fall back to a per-process dict.

Anonymous shared memory is not limited by a small ``/dev/shm`` (Docker's default
64 MB), unlike ``torch`` shared tensors. The cache is skipped when it would need
more than half of the machine's RAM.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ArrayCache"]

_ALIGN = 64


def _memory_budget() -> int:
    """Half the physical memory, in bytes (a generous default when unknown)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


class ArrayCache:
    """Fixed-size store of ``n`` arrays, indexed by sample number.

    Args:
        n: Number of samples.
        shape: Expected array shape, or None when unknown (per-process dict only).
        dtype: Array dtype.
    """

    def __init__(self, n: int, shape: Sequence[int] | None, dtype: Any) -> None:
        self.n = int(n)
        self.shape = tuple(int(s) for s in shape) if shape is not None else None
        self.dtype = np.dtype(dtype)
        self.enabled = True
        self._private: dict[int, np.ndarray] = {}
        self._ready: np.ndarray | None = None
        self._data: np.ndarray | None = None
        self._buf: mmap.mmap | None = None
        if self.shape is not None and self.n > 0:
            self._allocate()

    def _allocate(self) -> None:
        assert self.shape is not None
        nbytes = self.n * math.prod(self.shape) * self.dtype.itemsize
        if nbytes > _memory_budget():
            self.enabled = False  # too big to hold: decode on every access instead
            return
        offset = -(-self.n // _ALIGN) * _ALIGN  # ready flags first, data aligned after them
        # mmap(-1, ...) is anonymous and MAP_SHARED: pages are reserved lazily and survive fork.
        self._buf = mmap.mmap(-1, offset + max(nbytes, 1))
        self._ready = np.frombuffer(self._buf, dtype=np.uint8, count=self.n)
        count = self.n * math.prod(self.shape)
        self._data = np.frombuffer(self._buf, dtype=self.dtype, count=count, offset=offset).reshape(
            (self.n, *self.shape)
        )

    @property
    def shared(self) -> bool:
        """Whether the arrays live in memory shared with forked workers."""
        return self._data is not None

    def get(self, i: int) -> np.ndarray | None:
        """The cached array ``i`` (read-only view), or None when not decoded yet."""
        if self._ready is not None and self._ready[i]:
            assert self._data is not None
            view = self._data[i]
            view.flags.writeable = False
            return view
        return self._private.get(i)

    def put(self, i: int, arr: np.ndarray) -> np.ndarray:
        """Store ``arr`` as sample ``i`` and return the stored (read-only) array."""
        if not self.enabled:
            return arr
        if self._data is not None and arr.shape == self.shape:
            assert self._ready is not None
            self._data[i] = arr
            self._ready[i] = 1  # set after the data so a reader never sees a half-written array
            return self.get(i)  # type: ignore[return-value]
        stored = np.array(arr, dtype=self.dtype, copy=True)
        stored.flags.writeable = False
        self._private[i] = stored
        return stored

    def __len__(self) -> int:
        ready = int(self._ready.sum()) if self._ready is not None else 0
        return ready + len(self._private)

    # Pickling (spawn-started workers): an mmap cannot travel, so the copy starts empty.
    def __getstate__(self) -> dict[str, Any]:
        return {"n": self.n, "shape": self.shape, "dtype": self.dtype.str}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["n"], state["shape"], np.dtype(state["dtype"]))  # type: ignore[misc]
