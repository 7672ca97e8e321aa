"""Where onnxruntime spends a seglab ONNX file's time: per-op-type kernel time from its profiler.

Used to find why int8 (QDQ) paid little over fp32 on SegNet-Basic (docs/benchmarks.md): each file
runs at one input size with 2 intra-op threads, one warm-up run and ``--runs`` profiled runs; the
table gives the mean time per run of each op type and the node count of the optimised graph.

    seglab export segnet_basic.camvid --out /tmp/p/sb.onnx --int8 --data.root ../shared/data/camvid
    python benchmarks/onnxruntime_profile.py /tmp/p/sb.onnx /tmp/p/sb_int8.onnx --size 360 480
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


def profile(path: str, size: tuple[int, int], runs: int, threads: int) -> tuple[float, dict[str, float], dict[str, int]]:
    """``(ms per run, {op type: ms per run}, {op type: nodes in the optimised graph})``."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.enable_profiling, options.profile_file_prefix = True, str(Path(tmp) / "profile")
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, 3, *size), np.float32)}
        session.run(None, feed)
        start = time.perf_counter()
        for _ in range(runs):
            session.run(None, feed)
        wall = (time.perf_counter() - start) / runs
        events = json.loads(Path(session.end_profiling()).read_text())
        nodes = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    per_op: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    return 1e3 * wall, {op: us / (runs + 1) / 1e3 for op, us in per_op.items()}, dict(nodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help=".onnx files from seglab export")
    parser.add_argument("--size", type=int, nargs=2, default=(360, 480), metavar=("H", "W"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=8, help="op types listed per file")
    args = parser.parse_args()
    for path in args.files:
        wall, per_op, nodes = profile(path, tuple(args.size), args.runs, args.threads)
        print(f"\n{path}: {wall:.1f} ms per run ({sum(nodes.values())} nodes after optimisation)")
        print("| op type | ms per run | share | nodes |\n|---|---|---|---|")
        for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"| {op} | {ms:.1f} | {100 * ms / wall:.0f} % | {nodes.get(op, 0)} |")


if __name__ == "__main__":
    main()
