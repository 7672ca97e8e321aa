"""One benchmark case, run in a fresh Python process by :mod:`seglab.apps.benchmark`.

A fresh process per case keeps the cases independent: each starts with an empty allocator
(so peak memory is not hidden by memory an earlier case left cached), its own thread pool and its
own process-wide malloc settings (the ``fast`` path tunes malloc, ``eager`` must not inherit it).

The parent sends a JSON case on stdin; the child prints one ``RESULT_MARKER`` line of JSON.

Peak memory on CPU is the growth of resident memory over the warm-up and timed calls: the kernel's
high-water mark ``VmHWM`` is reset through ``/proc/self/clear_refs`` just before the first call
and read after the last, minus ``VmRSS`` at the reset. It therefore includes every activation,
workspace and allocator cache the calls needed, and nothing from building the model. Where
``clear_refs`` is unavailable, ``ru_maxrss`` growth is used instead (a lower bound, 0 when the
model build peaked higher). On CUDA it is ``torch.cuda.max_memory_allocated`` above the memory
held before the first call.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from seglab.ops.contract import runnable_size

__all__ = ["PEER_MODELS", "RESULT_MARKER", "build_model", "main", "measure_conv_peak", "run_case"]

RESULT_MARKER = "SEGLAB_BENCHMARK_RESULT "
#: torchvision models benchmarked as peers (random weights, no auxiliary head; the ``out`` tensor).
#: Prefixed ``tv_`` because seglab registers its own ``deeplabv3_resnet50``.
PEER_MODELS: tuple[str, ...] = ("tv_fcn_resnet50", "tv_deeplabv3_resnet50")


class _OutOnly(nn.Module):
    """Return only the ``out`` tensor of a torchvision segmentation model's dict output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def build_model(name: str, num_classes: int) -> nn.Module:
    """A registered seglab model, or a torchvision peer from :data:`PEER_MODELS`, with random weights."""
    if name in PEER_MODELS:
        import torchvision.models.segmentation as tvseg

        builder = getattr(tvseg, name.removeprefix("tv_"))
        return _OutOnly(builder(weights=None, weights_backbone=None, num_classes=num_classes))
    from seglab.models.registry import create_model

    return create_model(name, num_classes=num_classes)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


class _PeakMemory:
    """Peak memory growth (MiB) over a block; see the module docstring for the method."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = "cuda_max_allocated" if device.type == "cuda" else "vmhwm"

    def __enter__(self) -> "_PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current VmRSS
            self.base = _rss_kib("VmRSS")
        except OSError:
            self.method = "ru_maxrss"
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        elif self.method == "vmhwm":
            # The kernel's RSS counters are per-CPU approximations, so a call that needed no new
            # memory can read a few hundred KiB below the base (CI saw -0.15 MiB): growth is >= 0.
            self.mib = max(0.0, (_rss_kib("VmHWM") - self.base) / 1024)
        else:
            scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
            self.mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.base) * scale / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_calls(fn: Callable[[], Any], warmup: int, repeats: int, device: torch.device) -> tuple[list[float], float]:
    """Per-call seconds of ``repeats`` calls after ``warmup`` calls, and the peak memory (MiB)."""
    times = []
    with _PeakMemory(device) as mem:
        for _ in range(warmup):
            fn()
        _sync(device)
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - start)
    return times, mem.mib


def _static_stats(model: nn.Module, size: tuple[int, int]) -> tuple[dict[str, Any], float]:
    """Max-pool index memory of a 1-image forward, and its GFLOPs.

    Runs :func:`count_gflops` (one forward) with hooks on every index-returning pool. Returns
    ``{"format": how the model stores indices (int64 | uint8 | packed, None without indices),
    "int64" / "uint8" / "packed": bytes in each format}`` (:func:`code_bytes`).
    """
    from seglab.models import count_gflops
    from seglab.models.layers.compact_pool import CodeMaxPool2d, code_bytes

    stats: dict[str, Any] = {"format": None, "int64": 0, "uint8": 0, "packed": 0}

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        pooled, _ = output
        stats["format"] = "int64" if not isinstance(module, CodeMaxPool2d) else "packed" if module.packed else "uint8"
        for fmt in ("int64", "uint8", "packed"):
            stats[fmt] += code_bytes(pooled.shape, fmt)

    pools = [m for m in model.modules()
             if isinstance(m, CodeMaxPool2d) or (isinstance(m, nn.MaxPool2d) and m.return_indices)]
    handles = [m.register_forward_hook(hook) for m in pools]
    try:
        gflops = count_gflops(model, size)
    finally:
        for h in handles:
            h.remove()
    return stats, gflops


def _exported(case: dict[str, Any], model: nn.Module, x: torch.Tensor) -> Path:
    """The case's ``seglab export`` file at ``x``'s size, written once per run (shared by the
    onnxruntime, int8 and OpenVINO paths of a model)."""
    from seglab.export.onnx import export_onnx

    height, width = x.shape[-2:]
    path = Path(case["tmp"]) / f"{case['model']}_{height}x{width}.onnx"
    if not path.exists():
        export_onnx(model.cpu(), path, input_size=(height, width), metadata={"model_name": case["model"]},
                    verbose=False)
    return path


def _calibration_scenes(x: torch.Tensor) -> list[Any]:
    """4 synthetic road scenes at ``x``'s size: the int8 paths' calibration images."""
    import numpy as np

    from seglab.data.synthetic import render_scene

    rng = np.random.default_rng(0)
    return [render_scene(rng, *x.shape[-2:])[0] for _ in range(4)]


def _onnx_fn(case: dict[str, Any], model: nn.Module, x: torch.Tensor, quantized: bool) -> Callable[[], Any]:
    """Export with :func:`seglab.export.onnx.export_onnx` (int8: ``seglab.export.quantize.quantize_onnx``
    calibrated on 4 synthetic road scenes), then time an onnxruntime session on ``x``."""
    import onnxruntime as ort

    onnx_path = _exported(case, model, x)
    if quantized:
        from seglab.export.quantize import quantize_onnx

        onnx_path = quantize_onnx(onnx_path, onnx_path.with_suffix(".int8.onnx"), _calibration_scenes(x),
                                  verbose=False).path
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = case["threads"], 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.cpu().numpy()}
    return lambda: session.run(None, feed)


def _openvino_fn(case: dict[str, Any], model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    """OpenVINO on the ``seglab export`` file: ``openvino`` (f32), ``openvino_bf16``, and
    ``openvino_int8`` (NNCF post-training int8, calibrated on 4 synthetic road scenes; its float
    remainder in bf16 where the CPU has it natively, as measured in docs/benchmarks.md, although
    ``OpenVinoSegmenter``'s own ``auto`` keeps it in f32: on CamVid the two ran at the same speed)."""
    from seglab.inference.openvino_backend import OpenVinoSegmenter

    onnx_path = _exported(case, model, x)
    precision = {"openvino": "f32", "openvino_bf16": "bf16", "openvino_int8": "bf16"}[case["path"]]
    if case["path"] == "openvino_int8":
        from seglab.export.quantize import quantize_openvino

        onnx_path = quantize_openvino(onnx_path, onnx_path.with_name(onnx_path.stem + "_int8.xml"),
                                      _calibration_scenes(x), verbose=False).path
    seg = OpenVinoSegmenter(onnx_path, threads=case["threads"], precision=precision)
    compiled, feed = seg.compiled_for(x.shape), x.cpu().numpy()
    return lambda: compiled(feed)[0]


def _logits(output: Any) -> Any:
    """A path's output as an ``N x K x H x W`` numpy array (onnxruntime returns a list of outputs)."""
    if isinstance(output, (list, tuple)):
        output = output[0]
    return output.float().cpu().numpy() if isinstance(output, torch.Tensor) else output


def _inference_fn(case: dict[str, Any], model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    path, threads = case["path"], case["threads"]
    if path == "eager":
        model.eval()

        def eager() -> Any:
            with torch.no_grad():
                return model(x)

        return eager
    if path in ("onnxruntime", "quantized"):
        return _onnx_fn(case, model, x, quantized=path == "quantized")
    if path.startswith("openvino"):
        return _openvino_fn(case, model, x)
    from seglab.inference.fastpath import optimize_for_inference

    options = {"fast": {}, "fast_nomallopt": {}, "fast_nchw": {"channels_last": False},
               "fast_cl": {"channels_last": True}, "fast_bf16": {"dtype": torch.bfloat16},
               "fast_fp32": {"dtype": torch.float32},
               "fast_compile": {"compile": True}}[path]
    fast = optimize_for_inference(model, threads=threads, **options)
    return lambda: fast(x)


def _train_fn(case: dict[str, Any], model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    """One SGD step; ``train_engine`` uses the trainer's default settings (TrainConfig)."""
    from seglab.core.config import TrainConfig
    from seglab.core.runtime import autocast, resolve_amp

    device, path = x.device, case["path"]
    amp_dtype = torch.bfloat16 if path.startswith("train_bf16") else None
    channels_last = path.endswith("_cl")
    if path.startswith("train_engine"):
        defaults = TrainConfig()
        amp_dtype = resolve_amp(defaults.amp, device)
        channels_last = defaults.channels_last
        if path == "train_engine_mallopt":
            from seglab.inference.fastpath import tune_malloc

            tune_malloc()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    target = torch.randint(0, case["num_classes"], (x.shape[0], *x.shape[-2:]), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        with autocast(device, amp_dtype):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _train_gflops(step: Callable[[], Any]) -> float:
    """FLOPs of one whole training step (forward + backward), counted like count_gflops."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Measure one model x size x batch x path; returns the raw numbers for :mod:`seglab.apps.benchmark`."""
    torch.manual_seed(0)
    torch.set_num_threads(case["threads"])
    device = torch.device(case["device"])
    batch = case["batch"]
    model = build_model(case["model"], case["num_classes"]).to(device)
    h, w = runnable_size(model, (case["height"], case["width"]))
    index_stats, gflops = _static_stats(model, (h, w))
    x = torch.randn(batch, 3, h, w, device=device)
    agreement = None
    if case["mode"] == "train":
        fn = _train_fn(case, model, x)
        gflops = _train_gflops(fn) / batch  # also the first warm-up step
    else:
        with torch.no_grad():
            reference = model.eval()(x).float().cpu().numpy()  # before any path changes the model in place
        fn = _inference_fn(case, model, x)
    times, peak_mib = _time_calls(fn, case["warmup"], case["repeats"], device)
    if case["mode"] != "train":  # after the timed calls, so their memory peak is the path's alone
        from seglab.inference.onnx_format import compare_logits

        agreement = compare_logits(reference, _logits(fn())).argmax_agreement
    return {"times_s": times, "peak_mem_mb": peak_mib, "gflops": gflops, "input_hw": [h, w], "agreement_pct": agreement,
            "pool_index_format": index_stats.pop("format"),
            **{f"pool_index_{k}_mb": batch * v / 2**20 for k, v in index_stats.items()}}


def measure_conv_peak(threads: int, repeats: int = 5, device: str = "cpu") -> dict[str, Any]:
    """Best GFLOP/s of a dense fp32 3x3 conv (128->128 channels, 1x128x96x128), NCHW and channels-last.

    Malloc is tuned first so the output buffer is not page-faulted in on every call.
    """
    from seglab.inference.fastpath import tune_malloc

    tune_malloc()
    torch.set_num_threads(threads)
    dev = torch.device(device)
    conv = nn.Conv2d(128, 128, 3, padding=1, bias=False).to(dev).eval()
    x = torch.randn(1, 128, 96, 128, device=dev)
    flops = 2 * 128 * 128 * 9 * 96 * 128
    result: dict[str, Any] = {"conv_flops": flops}
    for fmt, memory_format in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        c, xx = conv.to(memory_format=memory_format), x.contiguous(memory_format=memory_format)
        with torch.inference_mode():
            times, _ = _time_calls(lambda: c(xx), 2, repeats, dev)
        result[f"{fmt}_gflops_per_s"] = flops / min(times) / 1e9
    result["peak_gflops_per_s"] = max(result["nchw_gflops_per_s"], result["channels_last_gflops_per_s"])
    return result


def main() -> None:
    """Entry point of the child process: read a case from stdin, print the result line."""
    case = json.loads(sys.stdin.read())
    result = measure_conv_peak(case["threads"], device=case["device"]) if case["mode"] == "peak" else run_case(case)
    print(RESULT_MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
