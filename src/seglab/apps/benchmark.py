"""Speed, efficiency and memory benchmarks of seglab models and torchvision peers.

:func:`run_benchmark` first measures the machine's dense-conv peak (best GFLOP/s of a 3x3
128->128 fp32 conv, NCHW and channels-last), then, for every model x size x batch x path, runs the
case in a **fresh Python process** (see :mod:`seglab.apps.benchmark_case` for why and for the memory
method) and reports one row per case with the keys in :data:`ROW_KEYS`:

* ``median_ms`` / ``min_ms``: per-call latency over ``repeats`` timed calls after ``warmup`` calls;
  ``images_per_s`` = batch / median.
* ``gflops``: per-image FLOPs (2 per multiply-add, :func:`seglab.models.count_gflops`; for
  training rows the forward+backward of one step, counted the same way); ``gflops_per_s`` =
  gflops x images/s; ``peak_pct`` = that as a percentage of the conv peak.
* ``peak_mem_mb``: resident-memory growth over the calls (CUDA: allocated-memory peak).
* ``agreement_pct``: pixels whose argmax equals fp32 eager's on the benchmark's input. The weights
  are random, so logits are close and low-precision paths flip many labels: a check that a path
  computes the same network, not its accuracy (``benchmarks/backend_accuracy.py`` scores a trained
  model on CamVid val).
* ``pool_index_int64_mb`` / ``pool_index_uint8_mb`` / ``pool_index_packed_mb``: memory of the
  max-pool indices SegNet-family models keep for the decoder, as PyTorch's int64 flat indices and
  as SegNet's 2-bit window codes one or four per byte (:mod:`seglab.models.layers.compact_pool`);
  ``pool_index_format`` says which one the model actually uses. None without pooling indices.

Inference paths: ``eager`` (``model.eval()`` + ``torch.no_grad``), ``fast``
(:func:`seglab.inference.fastpath.optimize_for_inference` defaults: bf16 on CPUs with native bf16), the
variants ``fast_fp32``, ``fast_nchw``,
``fast_cl``, ``fast_bf16``, ``fast_compile``, ``fast_nomallopt`` (``SEGLAB_NO_MALLOPT=1``), and
``onnxruntime`` / ``quantized`` (static int8) when :mod:`seglab.export`,
:mod:`seglab.inference.onnx_backend` and onnxruntime are available, and ``openvino`` (f32),
``openvino_bf16`` and ``openvino_int8`` (NNCF int8; :mod:`seglab.inference.openvino_backend`) on the
same exported file when OpenVINO (and NNCF) are installed. Training paths (``train_mode=True``):
``train_eager`` (plain fp32 NCHW SGD step), ``train_cl`` (fp32 channels-last), ``train_bf16`` and
``train_bf16_cl`` (bf16 autocast, NCHW / channels-last), ``train_engine`` (the trainer's default
precision and memory format for this device) and ``train_engine_mallopt`` (that plus malloc tuning).

Example:
    >>> rows = run_benchmark(["segnet_basic"], sizes=[(64, 80)], batch_sizes=[1], repeats=1)
    >>> print(format_table(rows))
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from seglab.core.atomic import atomic_write_text
from seglab.apps.benchmark_case import PEER_MODELS, RESULT_MARKER
from seglab.core.errors import SeglabError

__all__ = ["DEFAULT_MODELS", "INFERENCE_PATHS", "ROW_KEYS", "TRAIN_PATHS", "format_table", "run_benchmark",
           "write_json"]

DEFAULT_MODELS: tuple[str, ...] = ("segnet", "segnet_basic", *PEER_MODELS)
INFERENCE_PATHS: tuple[str, ...] = ("eager", "fast", "fast_fp32", "fast_nchw", "fast_cl", "fast_bf16", "fast_compile",
                                    "fast_nomallopt", "onnxruntime", "quantized", "openvino", "openvino_bf16",
                                    "openvino_int8")
TRAIN_PATHS: tuple[str, ...] = ("train_eager", "train_cl", "train_bf16", "train_bf16_cl", "train_engine",
                                 "train_engine_mallopt")
_INDEX_KEYS: tuple[str, ...] = ("pool_index_format", "pool_index_int64_mb", "pool_index_uint8_mb",
                                "pool_index_packed_mb")
ROW_KEYS: tuple[str, ...] = ("model", "mode", "path", "height", "width", "batch", "threads", "device", "status",
                             "median_ms", "min_ms", "images_per_s", "gflops", "gflops_per_s", "peak_pct",
                             "peak_mem_mb", "agreement_pct", *_INDEX_KEYS, "note")
#: What each ONNX path needs: (module, function) pairs, imported lazily (optional dependencies).
_ONNX_PATHS: dict[str, tuple[tuple[str, str], ...]] = {
    "onnxruntime": (("seglab.export.onnx", "export_onnx"),),
    "quantized": (("seglab.export.onnx", "export_onnx"), ("seglab.export.quantize", "quantize_onnx")),
    "openvino": (("seglab.export.onnx", "export_onnx"), ("openvino", "Core")),
    "openvino_bf16": (("seglab.export.onnx", "export_onnx"), ("openvino", "Core")),
    "openvino_int8": (("seglab.export.onnx", "export_onnx"), ("openvino", "Core"), ("nncf", "quantize")),
}


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _onnx_unavailable(path: str) -> str | None:
    """Why ``path`` cannot run (a seglab function or onnxruntime missing), or None if it can."""
    import importlib

    import importlib.util

    for module, function in _ONNX_PATHS[path]:
        if not module.startswith("seglab."):  # a runtime: only whether it is installed (cases import it)
            if importlib.util.find_spec(module) is None:
                return f"skipped: {module} is not installed (pip install seglab[openvino])"
            continue
        try:
            if not hasattr(importlib.import_module(module), function):
                return f"skipped: {module} has no {function}()"
        except ImportError as e:
            return f"skipped: {module} not importable ({e})"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "skipped: onnxruntime is not installed (pip install seglab[export])"
    return None


def _child(case: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one case in a fresh interpreter; raises RuntimeError with its stderr tail on failure."""
    child_env = dict(os.environ, **(env or {}))
    src = str(Path(__file__).resolve().parents[1])  # so an uninstalled checkout works too
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (src, child_env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-m", "seglab.apps.benchmark_case"], input=json.dumps(case), text=True,
                          capture_output=True, env=child_env, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"benchmark process exited with {proc.returncode}: {tail}")


def _row(case: dict[str, Any], result: dict[str, Any] | None, peak: float, note: str = "") -> dict[str, Any]:
    row = {k: case.get(k) for k in ROW_KEYS}
    row.update(status="ok" if result else ("skipped" if note.startswith("skipped") else "error"), note=note)
    if result:
        if result["input_hw"] != [case["height"], case["width"]]:  # e.g. unet_valid takes only some sizes
            row.update(height=result["input_hw"][0], width=result["input_hw"][1], note="nearest valid input size")
        times = result["times_s"]
        median = statistics.median(times)
        ips = case["batch"] / median
        row.update(median_ms=1e3 * median, min_ms=1e3 * min(times), images_per_s=ips, gflops=result["gflops"],
                   gflops_per_s=result["gflops"] * ips, peak_pct=100 * result["gflops"] * ips / peak,
                   peak_mem_mb=result["peak_mem_mb"], agreement_pct=result.get("agreement_pct"),
                   **{k: result[k] or None for k in _INDEX_KEYS})
    return row


def _cases(models: Sequence[str], sizes: Sequence[Sequence[int]], batch_sizes: Sequence[int], paths: Sequence[str],
           train_paths: Sequence[str], base: dict[str, Any]) -> list[dict[str, Any]]:
    cases = []
    for model in models:
        for h, w in sizes:
            for batch in batch_sizes:
                shape = dict(base, model=model, height=int(h), width=int(w), batch=int(batch))
                cases += [dict(shape, mode="inference", path=p) for p in paths]
                cases += [dict(shape, mode="train", path=p) for p in train_paths]
    return cases


def _check_names(models: Sequence[str], paths: Sequence[str], train_paths: Sequence[str]) -> None:
    from seglab.models.registry import list_models

    known = set(list_models()) | set(PEER_MODELS)
    for kind, names, valid in (("model", models, known), ("path", paths, INFERENCE_PATHS),
                               ("training path", train_paths, TRAIN_PATHS)):
        unknown = [n for n in names if n not in valid]
        if unknown:
            raise SeglabError(f"Unknown benchmark {kind} {unknown[0]!r}; choose from: {', '.join(sorted(valid))}.")


def run_benchmark(
    models: Sequence[str] | None = None,
    sizes: Sequence[Sequence[int]] = ((360, 480),),
    batch_sizes: Sequence[int] = (1,),
    paths: Sequence[str] | None = None,
    warmup: int = 2,
    repeats: int = 5,
    threads: int | None = None,
    train_mode: bool = False,
    json_out: str | Path | None = None,
    *,
    device: str = "cpu",
    num_classes: int = 11,
    train_paths: Sequence[str] = ("train_eager", "train_engine"),
    rounds: int = 1,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """Benchmark models; one row per model x size x batch x path (keys: :data:`ROW_KEYS`).

    Args:
        models: Registered model names and/or :data:`PEER_MODELS`; ``None`` for :data:`DEFAULT_MODELS`.
        sizes: Input ``(H, W)`` sizes.
        batch_sizes: Batch sizes.
        paths: Inference paths (:data:`INFERENCE_PATHS`); ``None`` for ``eager`` and ``fast`` plus
            ``onnxruntime`` and ``quantized`` when available. Unavailable ONNX paths give a
            ``skipped`` row; a case that fails gives an ``error`` row, and the run goes on.
        warmup: Untimed calls before timing (the training FLOP count adds one more step).
        repeats: Timed calls per case.
        threads: Intra-op threads in every case; ``None`` for all usable cores.
        train_mode: Also time full training steps (``train_paths``) for every model x size x batch.
        json_out: Write ``{"meta": ..., "rows": ...}`` here, atomically.
        device: ``cpu`` or ``cuda``.
        num_classes: Output classes of every model.
        train_paths: Training paths (:data:`TRAIN_PATHS`).
        rounds: Run all cases this many times round-robin (each run a fresh process) and pool
            their timed calls; more than 1 makes comparisons robust to changing machine load.
        verbose: Print each case's fastest call as it completes.

    Returns:
        The rows, in case order.
    """
    models = list(DEFAULT_MODELS if models is None else models)
    if paths is None:
        paths = ["eager", "fast"] + [p for p in ("onnxruntime", "quantized") if _onnx_unavailable(p) is None]
    train_paths = list(train_paths) if train_mode else []
    _check_names(models, paths, train_paths)
    if repeats < 1 or warmup < 0:
        raise SeglabError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}.")
    if rounds < 1:
        raise SeglabError(f"rounds must be >= 1, got {rounds}.")
    threads = threads or _usable_cores()
    base = dict(threads=threads, device=device, warmup=warmup, repeats=repeats, num_classes=num_classes)
    with tempfile.TemporaryDirectory(prefix="seglab-bench-") as tmp:
        cases = _cases(models, sizes, batch_sizes, paths, train_paths, dict(base, tmp=tmp))
        peaks, results, notes = _run_rounds(cases, base, rounds, verbose)
    conv_peak = max(peaks, key=lambda p: p["peak_gflops_per_s"])
    rows = [_row(case, _merge(res) if note is None else None, conv_peak["peak_gflops_per_s"], note or "")
            for case, res, note in zip(cases, results, notes)]
    if json_out is not None:
        meta = _meta(threads, device, conv_peak, warmup, repeats)
        write_json(json_out, {"meta": dict(meta, rounds=rounds), "rows": rows})
    return rows


def _run_rounds(cases: list[dict[str, Any]], base: dict[str, Any], rounds: int, verbose: bool
                ) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]], list[str | None]]:
    """Run every case ``rounds`` times, round-robin, each run in a fresh process.

    Interleaving spreads slow drifts in machine load (other jobs starting and stopping) over all
    cases instead of penalising whichever case ran during the busy minute. A case that is
    unavailable or fails once is not retried; its note says why.
    """
    notes: list[str | None] = [_onnx_unavailable(c["path"]) if c["path"] in _ONNX_PATHS else None for c in cases]
    results: list[list[dict[str, Any]]] = [[] for _ in cases]
    peaks = []
    for _ in range(rounds):
        peaks.append(_child(dict(base, mode="peak")))
        for i, case in enumerate(cases):
            if notes[i] is not None:
                continue
            env = {"SEGLAB_NO_MALLOPT": "1"} if case["path"] == "fast_nomallopt" else None
            try:
                results[i].append(_child(case, env))
            except RuntimeError as e:
                notes[i] = str(e)
            if verbose:
                times = results[i][-1]["times_s"] if notes[i] is None else []
                print(f"{case['model']} {case['mode']} {case['path']} {case['height']}x{case['width']} "
                      f"b{case['batch']}: " + (f"min {1e3 * min(times):.1f} ms" if times else str(notes[i])),
                      flush=True)
    return peaks, results, notes


def _merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several rounds: all timed calls pooled, the largest memory peak."""
    merged = dict(results[0])
    merged["times_s"] = [t for r in results for t in r["times_s"]]
    merged["peak_mem_mb"] = max(r["peak_mem_mb"] for r in results)
    return merged


def _meta(threads: int, device: str, conv_peak: dict[str, Any], warmup: int, repeats: int) -> dict[str, Any]:
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "usable_cores": _usable_cores(),
            "threads": threads, "device": device, "warmup": warmup, "repeats": repeats, "conv_peak": conv_peak}


def write_json(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as JSON atomically (temporary file in the same folder, then rename)."""
    return atomic_write_text(path, json.dumps(payload, indent=1))


_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("model", "model", "s"), ("mode", "mode", "s"), ("path", "path", "s"), ("size", "size", "s"),
    ("batch", "batch", "d"), ("median_ms", "median ms", ".1f"), ("min_ms", "min ms", ".1f"),
    ("images_per_s", "img/s", ".2f"), ("gflops", "GFLOPs", ".1f"), ("gflops_per_s", "GFLOP/s", ".1f"),
    ("peak_pct", "% peak", ".0f"), ("peak_mem_mb", "mem MB", ".0f"), ("agreement_pct", "agree %", ".2f"),
    ("pool_index_format", "idx fmt", "s"),
    ("pool_index_int64_mb", "idx i64 MB", ".1f"), ("pool_index_uint8_mb", "idx u8 MB", ".2f"),
    ("pool_index_packed_mb", "idx 2b MB", ".2f"), ("note", "note", "s"),
)


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = f"{row['height']}x{row['width']}" if key == "size" else row.get(key)
    if value is None or value == "":
        return "-"
    return format(value, fmt) if fmt != "s" else str(value)


def format_table(rows: Sequence[dict[str, Any]], header: bool = True) -> str:
    """Rows as an aligned text table (text left-aligned, numbers right-aligned; ``-`` for none)."""
    cells = [[_cell(r, key, fmt) for key, _, fmt in _COLUMNS] for r in rows]
    titles = [title for _, title, _ in _COLUMNS]
    widths = [max([len(t)] + [len(c[i]) for c in cells]) for i, t in enumerate(titles)]
    left = [fmt == "s" for _, _, fmt in _COLUMNS]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if lft else v.rjust(w) for v, w, lft in zip(values, widths, left)).rstrip()

    lines = [line(titles), line(["-" * w for w in widths])] if header else []
    return "\n".join(lines + [line(c) for c in cells])
