"""Prometheus text exposition (format 0.0.4) of the server's counters, written by hand: request
counts by status, a request latency histogram, a batch-size histogram and the queue length."""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Callable, Sequence

__all__ = ["ServeMetrics"]

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str) -> list[str]:
        out, cumulative = [], 0
        for bound, count in zip([*self.buckets, float("inf")], self.counts):
            cumulative += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{le="{le}"}} {cumulative}')
        return out + [f"{name}_sum {self.total:.6f}", f"{name}_count {self.n}"]


class ServeMetrics:
    """Counters updated from the event loop and the inference thread (hence the lock)."""

    def __init__(self, max_batch_size: int, queue_length: Callable[[], int]) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.latency = _Histogram(LATENCY_BUCKETS_S)
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, max_batch_size} & set(range(1, max_batch_size + 1)))
        self.batch_size = _Histogram(sizes)
        self.queue_length = queue_length

    def observe_request(self, method: str, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, path, status)] += 1
            if path.startswith("/v1/segment"):
                self.latency.observe(seconds)

    def observe_batch(self, size: int) -> None:
        with self._lock:
            self.batch_size.observe(size)

    def render(self) -> str:
        with self._lock:
            lines = ["# HELP seglab_requests_total HTTP requests answered, by method, path and status.",
                     "# TYPE seglab_requests_total counter"]
            for (method, path, status), n in sorted(self.requests.items()):
                lines.append(f'seglab_requests_total{{method="{method}",path="{path}",status="{status}"}} {n}')
            lines += ["# HELP seglab_request_latency_seconds Time to answer POST /v1/segment, queueing included.",
                      "# TYPE seglab_request_latency_seconds histogram", *self.latency.lines(
                          "seglab_request_latency_seconds"),
                      "# HELP seglab_batch_size Images per forward pass.",
                      "# TYPE seglab_batch_size histogram", *self.batch_size.lines("seglab_batch_size"),
                      "# HELP seglab_queue_length Requests waiting for the model.",
                      "# TYPE seglab_queue_length gauge", f"seglab_queue_length {self.queue_length()}"]
        return "\n".join(lines) + "\n"
