"""Inference memory as in SegNet's Table 6 (Badrinarayanan et al., TPAMI 2017), measured on this machine.

For each model (``segnet``, ``deeplab_largefov``, ``fcn8s``, ``deconvnet``, plus SegNet with its
compact pooling indices ``uint8`` and ``packed``), built with ``seglab.create_model(name,
num_classes=11, **kwargs)`` and random weights, one 1 x 3 x 360 x 480 forward pass in
``eval()`` + ``torch.no_grad()`` runs in a **fresh Python process** per case, so no case sees the
allocator state another one left behind.

What is measured, and why it is fair:

* **Baseline**: resident memory after importing torch, building the model and allocating the
  input, *before any forward pass* (no warm-up). The kernel's high-water mark ``VmHWM`` is
  reset to it through ``/proc/self/clear_refs`` (the method of
  :class:`seglab.apps.benchmark_case._PeakMemory`, which this script reuses).
* **Forward (cold)**: ``VmHWM`` during the first forward minus the baseline: every activation,
  kept pooling index, oneDNN workspace and allocator overhead the pass needs, and nothing from
  the interpreter, the libraries or the weights. A warm-up pass first would let glibc keep freed
  blocks resident and hide part of the growth, so the first pass is the one reported.
* **Forward (2nd)**: the peak of a second forward, against the same baseline (what a server
  keeps resident in steady state; includes memory the allocator kept after the first pass).
* **Model + forward**: weights (fp32 parameters and buffers) plus the cold forward growth, the
  closest CPU analogue of the paper's GPU figure (which also counts Caffe's own buffers and
  cuDNN workspaces, so only the ranking between models is comparable, not the MB).
* **CUDA** (when ``--device cuda`` or ``auto`` finds a GPU): ``torch.cuda.max_memory_allocated``
  during one forward, above the memory held before it (weights and input), and in total.
* Model size: parameters x 4 bytes, and the size of ``torch.save(model.state_dict())`` on disk.
  Pooling-index bytes of the pass in each format come from
  :func:`seglab.models.layers.compact_pool.code_bytes` (via ``benchmark_case._static_stats``).

Usage:
    python benchmarks/memory_table.py                        # all rows, markdown table
    python benchmarks/memory_table.py --json benchmarks/results/memory-table.json
    python benchmarks/memory_table.py --rows segnet segnet_uint8 --threads 1

Each row is ``--repeats`` fresh processes (default 3, run round-robin); the table shows the median
and the min-max of the measured figures, since allocator and oneDNN behaviour vary between runs.
Every child runs under ``RLIMIT_AS`` (``--mem-limit-gb``, default 10) so a case that needs more
memory fails with an error row instead of pushing the machine into swap or the OOM killer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MARKER = "SEGLAB_MEMORY_RESULT "
MIB = 2**20

#: row name -> (model name, create_model kwargs)
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "segnet": ("segnet", {"index_format": "int64"}),
    "segnet_uint8": ("segnet", {"index_format": "uint8"}),
    "segnet_packed": ("segnet", {"index_format": "packed"}),
    "deeplab_largefov": ("deeplab_largefov", {}),
    "fcn8s": ("fcn8s", {}),
    "deconvnet": ("deconvnet", {}),
}
#: SegNet paper, Table 6: inference memory (MB) on their GPU, batch 1, 360x480.
PAPER_MB: dict[str, float] = {"segnet": 1052, "deeplab_largefov": 1993, "fcn8s": 1806, "deconvnet": 1872}


# ----------------------------------------------------------------------------------------- child
def _child(case: dict[str, Any]) -> dict[str, Any]:
    import torch

    from seglab.apps.benchmark_case import _PeakMemory, _rss_kib, _static_stats
    from seglab.models import count_parameters
    from seglab.models.registry import create_model
    from seglab.ops.contract import runnable_size

    torch.manual_seed(0)
    torch.set_num_threads(case["threads"])
    device = torch.device(case["device"])
    rss_import = _rss_kib("VmRSS") / 1024
    model = create_model(case["model"], num_classes=case["num_classes"], **case["kwargs"]).to(device).eval()
    h, w = runnable_size(model, (case["height"], case["width"]))
    x = torch.randn(case["batch"], 3, h, w, device=device)
    params = count_parameters(model)
    weight_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    result: dict[str, Any] = {"input_hw": [h, w], "params": params, "param_mb": params * 4 / MIB,
                              "weights_mb": weight_bytes / MIB, "rss_import_mb": rss_import}
    with torch.no_grad():
        with _PeakMemory(device) as cold:
            start = time.perf_counter()
            out = model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            result["forward_s"] = time.perf_counter() - start
        del out
        result.update(method=cold.method, forward_cold_mb=cold.mib, rss_baseline_mb=cold.base / 1024
                      if cold.method == "vmhwm" else None)
        if device.type == "cuda":
            result["cuda_total_mb"] = torch.cuda.max_memory_allocated(device) / MIB
        else:
            result["peak_rss_mb"] = _rss_kib("VmHWM") / 1024 if cold.method == "vmhwm" else None
            with _PeakMemory(device) as warm:
                model(x)
            # Against the same baseline as the cold pass: what the allocator kept plus the new peak.
            result["forward_2nd_mb"] = warm.mib + (warm.base - cold.base) / 1024 if warm.method == "vmhwm" else None
    index_stats, gflops = _static_stats(model, (h, w))  # after the measurement: it runs a forward itself
    result["gflops"] = gflops
    result["pool_index_format"] = index_stats.pop("format")
    result.update({f"pool_index_{k}_mb": case["batch"] * v / MIB for k, v in index_stats.items()})
    with tempfile.TemporaryDirectory(prefix="seglab-memtable-") as tmp:
        path = Path(tmp) / "state_dict.pt"
        torch.save(model.state_dict(), path)
        result["state_dict_mb"] = path.stat().st_size / MIB
    return result


# ---------------------------------------------------------------------------------------- parent
def _run_child(case: dict[str, Any], mem_limit_gb: float) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    limit = int(mem_limit_gb * 1e9)

    def cap() -> None:  # address-space cap: allocations beyond it fail in the child, not the machine
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)], capture_output=True, text=True,
                          env=env, preexec_fn=cap if case["device"] == "cpu" else None, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            return dict(status="ok", **json.loads(line[len(MARKER):]))
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"status": "error", "note": f"exit {proc.returncode}: {tail[-300:]}"}


_SPREAD_KEYS = ("forward_cold_mb", "forward_2nd_mb", "peak_rss_mb", "forward_s", "cuda_total_mb")


def _summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from repeated runs: the last run's static fields, medians (and ranges) of the measured ones."""
    ok = [r for r in results if r["status"] == "ok"]
    if not ok:
        return results[-1]
    row = dict(ok[-1], runs=len(ok), failed_runs=len(results) - len(ok))
    for key in _SPREAD_KEYS:
        values = [r[key] for r in ok if r.get(key) is not None]
        if values:
            row[key] = statistics.median(values)
            row[key + "_range"] = [min(values), max(values)]
    return row


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _range(row: dict[str, Any], key: str) -> str:
    low, high = row.get(key + "_range", (None, None))
    return "" if low is None or row.get("runs", 1) < 2 else f" ({low:.0f}-{high:.0f})"


def format_markdown(rows: list[dict[str, Any]]) -> str:
    cuda = any(r.get("device") == "cuda" for r in rows)
    head = ["row", "index fmt", "params (M)", "params MiB fp32", "state_dict MiB", "idx int64 / u8 / 2-bit MiB",
            "forward cold MiB (min-max)", "forward 2nd MiB (min-max)", "model + forward MiB", "peak RSS MiB",
            "forward s",
            "paper GPU MB"]
    if cuda:
        head[6:8] = ["CUDA forward MiB", "CUDA total MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['row']} | " + " | ".join(["-"] * (len(head) - 2)) + f" | {r.get('note', '')} |")
            continue
        idx = (f"{r['pool_index_int64_mb']:.1f} / {r['pool_index_uint8_mb']:.2f} / {r['pool_index_packed_mb']:.2f}"
               if r.get("pool_index_format") else "-")
        cold = _fmt(r["forward_cold_mb"], ".0f") + _range(r, "forward_cold_mb")
        mem = ([cold, _fmt(r.get("cuda_total_mb"), ".0f")] if cuda else
               [cold, _fmt(r.get("forward_2nd_mb"), ".0f") + _range(r, "forward_2nd_mb")])
        paper = PAPER_MB.get(r["row"])
        cells = [r["row"], r.get("pool_index_format") or "-", f"{r['params'] / 1e6:.2f}", f"{r['param_mb']:.1f}",
                 f"{r['state_dict_mb']:.1f}", idx, *mem, f"{r['weights_mb'] + r['forward_cold_mb']:.0f}",
                 _fmt(r.get("peak_rss_mb"), ".0f"), f"{r['forward_s']:.2f}", _fmt(paper, ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--size", type=int, nargs=2, default=(360, 480), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all usable cores)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: cuda when torch.cuda.is_available() (max allocated), else cpu (RSS)")
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per row (median reported)")
    p.add_argument("--mem-limit-gb", type=float, default=10.0, help="address-space cap of every CPU child")
    p.add_argument("--json", help="also write {meta, rows} here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(MARKER + json.dumps(_child(json.loads(args.child))), flush=True)
        return 0

    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    threads = args.threads or len(os.sched_getaffinity(0))
    cases = {name: dict(model=ROWS[name][0], kwargs=ROWS[name][1], num_classes=11, height=args.size[0],
                        width=args.size[1], batch=args.batch, threads=threads, device=device) for name in args.rows}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.rows}
    for round_ in range(args.repeats):  # round-robin, so a busy minute on the shared cores hits every row
        for name, case in cases.items():
            result = _run_child(case, args.mem_limit_gb)
            runs[name].append(result)
            print(f"round {round_ + 1} {name}: " + (f"cold forward {result['forward_cold_mb']:.0f} MiB in "
                                                     f"{result['forward_s']:.2f} s" if result["status"] == "ok"
                                                     else result["note"]), file=sys.stderr, flush=True)
    rows = [dict(row=name, model=cases[name]["model"], kwargs=cases[name]["kwargs"], device=device,
                 paper_gpu_mb=PAPER_MB.get(name), **_summarise(runs[name])) for name in args.rows]
    print(format_markdown(rows))
    if args.json:
        from seglab.apps.benchmark import write_json

        meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
                "python": platform.python_version(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "usable_cores": len(os.sched_getaffinity(0)), "threads": threads, "device": device,
                "size": list(args.size), "batch": args.batch, "num_classes": 11, "loadavg": os.getloadavg(),
                "mem_limit_gb": args.mem_limit_gb, "paper": "SegNet TPAMI 2017 Table 6, GPU inference memory MB"}
        write_json(args.json, {"meta": meta, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
