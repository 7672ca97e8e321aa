"""Inference fast path: ``optimize_for_inference(model)`` returns a faster copy with the same outputs.

What it does, in order (each step is cheap to undo: the caller's model is never touched):

1. ``copy.deepcopy`` and ``eval()``; parameters stop requiring gradients.
2. BatchNorm folding (:func:`fold_batchnorm`): every ``BatchNorm2d`` that directly follows a
   ``Conv2d`` / ``ConvTranspose2d`` inside an ``nn.Sequential`` (which includes
   :class:`~torchvision.ops.Conv2dNormActivation`) is folded into the conv's weight and bias and
   replaced by ``nn.Identity``. In eval mode BN is a per-channel affine map, so this is exact up
   to float rounding and removes one full read+write of every activation per layer.
3. Memory format: channels-last where it is faster (:func:`prefers_channels_last`).
4. Precision: bf16 autocast where the hardware has fast bf16 (:func:`resolve_inference_dtype`).
5. Optional ``torch.compile`` that falls back to eager with a warning if it fails.
6. Process-wide settings: intra-op threads = usable cores, and glibc ``malloc`` tuning
   (:func:`tune_malloc`) so large activation buffers are reused instead of being ``mmap``-ed and
   page-faulted on every forward.

Measured on this project's 2-core AVX2 machine (torch 2.15, SegNet / SegNet-Basic, 360x480,
batch 1, 2 threads, a contended machine; ``python benchmarks/run_benchmarks.py --format-ab 8``,
method in ``docs/benchmarks.md``): the channels-last *forward*
took 0.88-0.93x (SegNet) and 0.98-1.02x (SegNet-Basic) the NCHW time, measured as the median
ratio of alternating call pairs in one process, so channels-last is the default on AVX2 as on
AVX-512 and CUDA. (Training keeps NCHW on AVX2: there the conv *backward* is 2.3x slower.)

Example:
    >>> import torch, seglab
    >>> from seglab.inference.fastpath import optimize_for_inference
    >>> fast = optimize_for_inference(seglab.create_model("segnet_basic", num_classes=11))
    >>> fast(torch.zeros(1, 3, 64, 80)).shape
    torch.Size([1, 11, 64, 80])
"""

from __future__ import annotations

import copy
import ctypes
import os
import platform
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from seglab.core.runtime import autocast, configure_threads, cpu_supports_bf16
from seglab.core.errors import SeglabError
from seglab.models.layers.folding import fold_batchnorm, fuse_conv_bn

__all__ = [
    "FastInferenceModel",
    "fold_batchnorm",
    "fuse_conv_bn",
    "optimize_for_inference",
    "prefers_channels_last",
    "resolve_inference_dtype",
    "tune_malloc",
]

# CPU capabilities (torch.backends.cpu.get_cpu_capability()) where channels-last is the default.
# AVX2 is measured (module docstring); AVX-512 is where oneDNN's NHWC kernels are strongest (not
# measured here). Others (ARM, POWER, no AVX) keep PyTorch's native NCHW until measured.
_CHANNELS_LAST_CPU_CAPABILITIES: frozenset[str] = frozenset({"AVX2", "AVX512"})

# glibc <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int; INT_MAX bytes means "do not give the heap top back"
_malloc_tuned: bool | None = None


def prefers_channels_last(device: torch.device) -> bool:
    """Default memory format for inference on ``device``: True means channels-last.

    CUDA: yes (cuDNN's tensor-core convolutions are NHWC). CPU: on AVX2 and AVX-512 (on AVX2 the
    SegNet forward measured 7-12 % faster, SegNet-Basic equal; see the module docstring); NCHW on
    other CPUs, where it is unmeasured.
    """
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        return torch.backends.cpu.get_cpu_capability() in _CHANNELS_LAST_CPU_CAPABILITIES
    return False


def resolve_inference_dtype(dtype: torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for the fast path; ``None`` means plain fp32.

    Args:
        dtype: ``None`` to decide by hardware (bf16 on CUDA GPUs that support it and on CPUs with
            AVX512-BF16/AMX, where it is fast; fp32 elsewhere, e.g. AVX2 where bf16 is emulated
            and slow), ``torch.float32`` to opt out, ``torch.bfloat16`` to force it, or
            ``torch.float16`` (CUDA only).
        device: Where the model runs.
    """
    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if device.type == "cpu" and cpu_supports_bf16() else None
    if dtype == torch.float32:
        return None
    if dtype == torch.bfloat16 or (dtype == torch.float16 and device.type == "cuda"):
        return dtype
    raise SeglabError(f"Unsupported inference dtype {dtype} on {device.type}: use torch.float32 or torch.bfloat16"
                      " (torch.float16 on CUDA only), or None to decide by hardware.")


def tune_malloc() -> bool:
    """Make glibc keep freed memory for reuse instead of unmapping it; once per process.

    By default glibc serves blocks above ~128 KiB-32 MiB with ``mmap`` and unmaps them on
    ``free``, so every forward pass page-faults its large activation buffers in again (the
    kernel zeroes each fresh page). ``M_MMAP_MAX=0`` serves them from the heap and
    ``M_TRIM_THRESHOLD=INT_MAX`` stops ``free`` from shrinking the heap. The price: the process's
    resident memory stays at its high-water mark. Skipped when ``SEGLAB_NO_MALLOPT=1`` or when the
    C library is not glibc.

    Returns:
        True if the settings are in effect (applied now or by an earlier call).
    """
    global _malloc_tuned
    if _malloc_tuned is not None:
        return _malloc_tuned
    _malloc_tuned = False
    if os.environ.get("SEGLAB_NO_MALLOPT", "") not in ("", "0") or platform.system() != "Linux":
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) == 1
    except (OSError, AttributeError):
        return False
    _malloc_tuned = bool(ok)
    return _malloc_tuned


def _to_plain_fp32(out: Any) -> Any:
    """Tensors contiguous (NCHW) and bf16/fp16 as fp32, recursively through dicts, lists and tuples."""
    if isinstance(out, Tensor):
        return (out.float() if out.dtype in (torch.bfloat16, torch.float16) else out).contiguous()
    if isinstance(out, dict):
        return {k: _to_plain_fp32(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_to_plain_fp32(v) for v in out)
    return out


class FastInferenceModel(nn.Module):
    """Inference-only wrapper made by :func:`optimize_for_inference`.

    ``forward`` runs under ``torch.inference_mode`` (outputs cannot enter autograd), converts a
    4-D input to channels-last when enabled, autocasts to ``amp_dtype`` and returns contiguous
    outputs, bf16/fp16 ones as fp32, so callers see the eager model's dtype and layout.

    Args:
        module: The rewritten model (already in eval mode, on its device).
        amp_dtype: Autocast dtype or ``None`` for fp32.
        channels_last: Convert 4-D inputs to channels-last.
        compiled: ``torch.compile(module)``, or ``None`` for eager.
    """

    def __init__(self, module: nn.Module, amp_dtype: torch.dtype | None, channels_last: bool,
                 compiled: Any = None) -> None:
        super().__init__()
        self.module = module
        self.amp_dtype = amp_dtype
        self.channels_last = channels_last
        # Kept out of _modules: the compiled wrapper shares module's parameters, and registering
        # it would list them twice in state_dict().
        self.__dict__["_compiled"] = compiled

    @property
    def compiled(self) -> bool:
        """Whether forward currently goes through ``torch.compile``."""
        return self.__dict__["_compiled"] is not None

    def train(self, mode: bool = True) -> "FastInferenceModel":
        """Only eval mode exists; BN is folded. (Dropout submodules may still be switched on their
        own, e.g. for Monte-Carlo dropout.)"""
        if mode:
            raise SeglabError("A model from optimize_for_inference() is inference-only; train the original model.")
        return super().train(False)

    def _call(self, x: Tensor) -> Any:
        compiled = self.__dict__["_compiled"]
        if compiled is None:
            return self.module(x)
        try:
            return compiled(x)
        except Exception as compile_error:  # noqa: BLE001  (compile errors have no common base class)
            out = self.module(x)  # an input error raises here, keeping the compiled path for later calls
            warnings.warn(f"torch.compile failed ({type(compile_error).__name__}: {compile_error}); "
                          "running eagerly from now on.", RuntimeWarning, stacklevel=3)
            self.__dict__["_compiled"] = None
            return out

    def forward(self, x: Tensor) -> Any:
        with torch.inference_mode():
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(x.device, self.amp_dtype):
                out = self._call(x)
            return _to_plain_fp32(out)


def _model_device(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _try_compile(module: nn.Module) -> Any:
    try:
        return torch.compile(module)
    except Exception as e:  # noqa: BLE001  (unsupported Python/platform raise various types)
        warnings.warn(f"torch.compile is unavailable ({type(e).__name__}: {e}); running eagerly.",
                      RuntimeWarning, stacklevel=3)
        return None


def optimize_for_inference(
    model: nn.Module,
    dtype: torch.dtype | None = None,
    compile: bool = False,
    channels_last: bool | None = None,
    *,
    threads: int | None = None,
) -> FastInferenceModel:
    """A faster, inference-only copy of ``model`` with the same outputs; ``model`` is untouched.

    Move the model to its device first: the defaults are decided for the device its parameters
    are on. Process-wide effects (CPU only): ``torch.set_num_threads`` to ``threads`` (default:
    the cores this process may run on, ``os.sched_getaffinity``, which respects ``taskset`` and
    cpusets; PyTorch's own default may count cores the process cannot use) and, once per process,
    :func:`tune_malloc` (opt out with ``SEGLAB_NO_MALLOPT=1``).

    Args:
        model: Any ``nn.Module`` taking an image batch.
        dtype: See :func:`resolve_inference_dtype`; ``torch.float32`` opts out of bf16.
        compile: Wrap the rewritten model in ``torch.compile``; if compiling fails (now or at the
            first call) a ``RuntimeWarning`` is issued and the model runs eagerly.
        channels_last: Force the memory format; ``None`` uses :func:`prefers_channels_last`.
        threads: Intra-op threads on CPU; ``None`` for all usable cores.

    Returns:
        A :class:`FastInferenceModel`; call it like the original model.
    """
    device = _model_device(model)
    amp_dtype = resolve_inference_dtype(dtype, device)
    use_channels_last = prefers_channels_last(device) if channels_last is None else bool(channels_last)
    module = copy.deepcopy(model).eval()
    module.requires_grad_(False)
    fold_batchnorm(module)
    if use_channels_last:
        module = module.to(memory_format=torch.channels_last)
    if device.type == "cpu":
        configure_threads(threads)
        tune_malloc()
    compiled = _try_compile(module) if compile else None
    return FastInferenceModel(module, amp_dtype, use_channels_last, compiled).eval()
