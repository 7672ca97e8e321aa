"""What ``seglab serve`` is configured with, and the rule that guards non-loopback binds."""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass, fields

from seglab.apps.cli_args import add_exported_arguments
from seglab.core.errors import SeglabError

__all__ = ["ServeSettings", "add_serve_arguments", "is_loopback", "API_KEY_ENV"]

#: Environment variable read when ``--api-key`` is not given.
API_KEY_ENV = "SEGLAB_API_KEY"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for anything else."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve to anything
        return False


@dataclass
class ServeSettings:
    """Limits and batching of the server (the ``seglab serve`` options of the same names).

    ``max_batch_size`` 1 switches batching off. Only images of the same height and width (and the
    same ``mc_samples``) are batched together; other sizes wait in their own batch.
    ``score_threshold`` (instance models only) is the default of requests that give none; ``None``
    keeps the predictor's (0.5 for a checkpoint).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch_size: int = 8
    max_batch_delay_ms: float = 5.0
    max_queue: int = 64
    max_upload_mb: float = 10.0
    max_pixels: int = 16_000_000
    request_timeout_s: float = 30.0
    max_mc_samples: int = 32
    warmup: bool = True
    score_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ServeSettings":
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def check(self) -> "ServeSettings":
        """Refuse settings that cannot work or would expose the model to the network unprotected."""
        if not is_loopback(self.host) and not self.api_key:
            raise SeglabError(f"Binding --host {self.host} exposes the server beyond this machine: give --api-key KEY "
                              f"(or set {API_KEY_ENV}); clients then send `Authorization: Bearer KEY` or "
                              "`X-API-Key: KEY`. Without a key, keep the default --host 127.0.0.1.")
        for name in ("max_batch_size", "max_queue", "max_pixels", "max_mc_samples"):
            if getattr(self, name) < 1:
                raise SeglabError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        for name in ("max_upload_mb", "request_timeout_s"):
            if getattr(self, name) <= 0:
                raise SeglabError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}.")
        if self.max_batch_delay_ms < 0:
            raise SeglabError(f"--max-batch-delay-ms must be 0 or more, got {self.max_batch_delay_ms}.")
        if self.score_threshold is not None and not 0.0 <= self.score_threshold <= 1.0:
            raise SeglabError(f"--score-threshold must lie in [0, 1] (detection scores do), got {self.score_threshold}.")
        return self


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``seglab serve`` (defaults from :class:`ServeSettings`)."""
    d = ServeSettings(api_key="unused")
    parser.add_argument("model", help="a checkpoint, an exported .onnx (or OpenVINO .xml) file or the name of trained "
                                      "weights")
    parser.add_argument("--host", default=d.host, help="address to bind (default loopback; others need --api-key)")
    parser.add_argument("--port", type=int, default=d.port)
    parser.add_argument("--api-key", help=f"key clients must send (Bearer or X-API-Key); default ${API_KEY_ENV}")
    parser.add_argument("--max-batch-size", type=int, default=d.max_batch_size,
                        help="images per forward pass (same-size images only); 1 turns batching off")
    parser.add_argument("--max-batch-delay-ms", type=float, default=d.max_batch_delay_ms,
                        help="how long the first request of a batch waits for others")
    parser.add_argument("--max-queue", type=int, default=d.max_queue,
                        help="waiting requests beyond this are answered 503 with Retry-After")
    parser.add_argument("--max-upload-mb", type=float, default=d.max_upload_mb, help="larger bodies get 413")
    parser.add_argument("--max-pixels", type=int, default=d.max_pixels, help="larger images get 413")
    parser.add_argument("--request-timeout-s", type=float, default=d.request_timeout_s,
                        help="upload (408) and prediction (504) time limit")
    parser.add_argument("--max-mc-samples", type=int, default=d.max_mc_samples)
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="instance models: default detection score threshold of requests (default 0.5)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch / onnxruntime / OpenVINO threads (default: all cores)")
    add_exported_arguments(parser, ("torch", "onnxruntime", "openvino"),
                           "runtime (default auto: onnxruntime for .onnx, openvino for .xml; trained weights that ship "
                           "an int8 OpenVINO model run it where OpenVINO is installed; else torch)")
