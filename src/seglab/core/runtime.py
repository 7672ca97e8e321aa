"""Device, precision, threads and seeding: the few machine-dependent choices, made in one place."""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any

import numpy as np
import torch

from seglab.core.errors import SeglabError

__all__ = ["select_device", "resolve_amp", "autocast", "seed_everything", "rng_state", "set_rng_state", "cpu_supports_bf16",
           "DEFAULT_MIN_AGREEMENT", "DEFAULT_MAX_MIOU_DROP", "passes_default_rule", "resolve_inference_amp", "amp_for_precision"]

#: The rule a reduced-precision path must pass on a trained model's val split before it may run by
#: default: argmax agreement with fp32 of at least this many percent of the pixels ...
DEFAULT_MIN_AGREEMENT = 99.0
#: ... and an mIoU at most this many points below fp32's.
DEFAULT_MAX_MIOU_DROP = 0.5


def select_device(spec: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as e:
        raise SeglabError(f"Unknown device {spec!r} (train.device): use auto, cpu, cuda or cuda:N.") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SeglabError(f"Device {spec!r} was asked for, but no CUDA GPU is visible. Use --train.device cpu (or auto).")
    return device


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 is fast."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_amp(spec: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``spec`` (auto | bf16 | fp16 | none) on ``device``; None means fp32."""
    if spec in ("none", "fp32", "off"):
        return None
    if spec == "bf16":
        return torch.bfloat16
    if spec == "fp16":
        if device.type != "cuda":
            raise SeglabError("fp16 autocast needs a CUDA device; on CPU use --train.amp bf16 or none.")
        return torch.float16
    if spec == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else None
    raise SeglabError(f"Unknown precision {spec!r} (train.amp): use auto, bf16, fp16 or none.")


def passes_default_rule(agreement_pct: float, miou_change_points: float) -> bool:
    """Whether a precision that agrees with fp32 on ``agreement_pct`` % of the pixels and moves mIoU by
    ``miou_change_points`` may be a default (:data:`DEFAULT_MIN_AGREEMENT`, :data:`DEFAULT_MAX_MIOU_DROP`)."""
    return agreement_pct >= DEFAULT_MIN_AGREEMENT and miou_change_points >= -DEFAULT_MAX_MIOU_DROP


def resolve_inference_amp(spec: str, device: torch.device, verified: list[str] | tuple[str, ...] = ()) -> str:
    """The autocast spec a prediction runs at. ``auto`` is bf16 where the CPU computes bf16 natively
    (AVX512-BF16, AMX) *and* the weights record that bf16 passed :func:`passes_default_rule` on their val
    split (``verified``, written by ``seglab weights pack``); fp32 everywhere else, as a checkpoint with no
    such record. bf16 flips labels wherever two logits are close, so it is chosen per model, on evidence.
    Any other spec is returned as given."""
    if spec != "auto":
        return spec
    if device.type == "cpu" and "bf16" in verified and cpu_supports_bf16():
        return "bf16"
    return "none"


def amp_for_precision(precision: str) -> str:
    """The autocast spec of a command line's ``--precision`` (``auto`` | ``f32`` | ``bf16``) for PyTorch."""
    return {"bf16": "bf16", "f32": "none"}.get(precision, "auto")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast context for ``dtype``, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """All RNG states a resumed run needs to continue identically, as tensors, numbers and lists
    (what ``torch.load(weights_only=True)`` reads back)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` (or the tuples and arrays seglab 0.1.0 stored)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        keys = numpy_state["keys"]
        keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
        numpy_state = (numpy_state["kind"], keys.astype(np.uint32), numpy_state["pos"], numpy_state["has_gauss"],
                       numpy_state["cached_gaussian"])
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def configure_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op threads (default: all cores the process may use)."""
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, threads))
