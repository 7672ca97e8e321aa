"""Run seglab's standard benchmark set and write ``benchmarks/results/<name>.json``.

The standard set: SegNet and SegNet-Basic at CamVid's 360x480, batch 1, 2 intra-op threads,
against torchvision's FCN-ResNet50 and DeepLabv3-ResNet50 (random weights, 11 classes), on the
``eager`` and ``fast`` paths (plus ONNX Runtime paths when :mod:`seglab.export.onnx` provides them),
then full training steps of SegNet and SegNet-Basic (plain eager loop vs the trainer's
settings). Results are small JSON files (no model files, no images).

Usage:
    python benchmarks/run_benchmarks.py                      # the standard set
    python benchmarks/run_benchmarks.py --quick              # 1 warm-up, 3 repeats
    python benchmarks/run_benchmarks.py --fastpath-study     # NCHW vs channels-last, malloc tuning
    python benchmarks/run_benchmarks.py --quick --rounds 3   # a busy machine: interleave 3 rounds
    python benchmarks/run_benchmarks.py --format-ab 8        # NCHW vs channels-last, paired calls
    python benchmarks/run_benchmarks.py --malloc-ab 4        # malloc tuning on/off, paired processes
"""

from __future__ import annotations

import argparse
import platform
from datetime import datetime
from pathlib import Path

from seglab.apps.benchmark import format_table, run_benchmark, write_json
from seglab.apps.benchmark_case import PEER_MODELS

RESULTS = Path(__file__).resolve().parent / "results"
SEGNETS = ["segnet", "segnet_basic"]
SIZE = (360, 480)


def _out(name: str) -> Path:
    return RESULTS / f"{name}-{platform.node() or 'host'}-{datetime.now():%Y%m%d-%H%M%S}.json"


def standard(warmup: int, repeats: int, threads: int, rounds: int) -> list[dict]:
    """SegNets and peers at 360x480 batch 1 (inference), then SegNet training steps."""
    rows = run_benchmark([*SEGNETS, *PEER_MODELS], [SIZE], [1], None, warmup, repeats, threads,
                         json_out=_out("inference"), rounds=rounds, verbose=True)
    rows += run_benchmark(SEGNETS, [SIZE], [1], [], warmup, repeats, threads, train_mode=True,
                          json_out=_out("training"), train_paths=["train_eager", "train_engine"], rounds=rounds,
                          verbose=True)
    return rows


def fastpath_study(warmup: int, repeats: int, threads: int, rounds: int) -> list[dict]:
    """The measurements behind the fast path's defaults: memory format and malloc tuning.

    ``fast_nchw`` and ``fast_cl`` differ only in memory format (both tune malloc);
    ``fast_nomallopt`` is ``fast`` without malloc tuning; all run round-robin ``rounds`` times.
    """
    paths = ["eager", "fast_nchw", "fast_cl", "fast_nomallopt", "fast"]
    return run_benchmark(SEGNETS, [SIZE], [1], paths, warmup, repeats, threads,
                         json_out=_out("fastpath-study"), rounds=rounds, verbose=True)


def memory_format_ab(pairs: int, threads: int) -> list[dict]:
    """NCHW vs channels-last fast path, alternating calls in one process (paired A/B).

    On a busy machine, separate runs of A and B see different load; alternating single calls and
    taking the median of the per-pair time ratios cancels load that changes slower than a call.
    """
    import statistics
    import time

    import torch

    from seglab.apps.benchmark_case import build_model
    from seglab.inference.fastpath import optimize_for_inference

    rows = []
    for name in SEGNETS:
        model = build_model(name, 11)
        variants = {fmt: optimize_for_inference(model, dtype=torch.float32, channels_last=fmt == "channels_last",
                                                threads=threads) for fmt in ("nchw", "channels_last")}
        x = torch.randn(1, 3, *SIZE)
        times: dict[str, list[float]] = {fmt: [] for fmt in variants}
        for i in range(pairs + 1):  # pair 0 is the warm-up
            order = list(variants) if i % 2 else list(variants)[::-1]  # alternate who goes first
            for fmt in order:
                start = time.perf_counter()
                variants[fmt](x)
                if i:
                    times[fmt].append(time.perf_counter() - start)
        ratio = statistics.median(c / n for c, n in zip(times["channels_last"], times["nchw"]))
        row = {"model": name, "pairs": pairs, "threads": threads, "median_ratio_cl_over_nchw": ratio}
        for fmt, ts in times.items():
            row.update({f"{fmt}_min_ms": 1e3 * min(ts), f"{fmt}_median_ms": 1e3 * statistics.median(ts)})
        print(row, flush=True)
        rows.append(row)
    write_json(_out("memory-format-ab"), {"rows": rows})
    return rows


def malloc_ab(pairs: int, threads: int) -> list[dict]:
    """The fast path with and without malloc tuning, each call pair in two fresh processes.

    Malloc tuning is process-wide, so A and B cannot share a process; alternating the order of
    the two processes in each pair and taking the median per-pair ratio cancels slow load drift.
    """
    import statistics
    import tempfile

    from seglab.apps.benchmark import _child  # runs one case in a fresh process

    rows = []
    for name in SEGNETS:
        ratios, medians = [], {"fast": [], "fast_nomallopt": []}
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(pairs):
                order = ["fast", "fast_nomallopt"] if i % 2 == 0 else ["fast_nomallopt", "fast"]
                for path in order:
                    case = dict(mode="inference", model=name, path=path, height=SIZE[0], width=SIZE[1], batch=1,
                                threads=threads, device="cpu", warmup=1, repeats=3, num_classes=11, tmp=tmp)
                    env = {"SEGLAB_NO_MALLOPT": "1"} if path == "fast_nomallopt" else {"SEGLAB_NO_MALLOPT": "0"}
                    medians[path].append(statistics.median(_child(case, env)["times_s"]))
                ratios.append(medians["fast"][-1] / medians["fast_nomallopt"][-1])
        row = {"model": name, "pairs": pairs, "threads": threads,
               "median_ratio_tuned_over_default": statistics.median(ratios),
               **{f"{path}_median_ms": 1e3 * statistics.median(m) for path, m in medians.items()},
               **{f"{path}_best_median_ms": 1e3 * min(m) for path, m in medians.items()}}
        print(row, flush=True)
        rows.append(row)
    write_json(_out("malloc-ab"), {"rows": rows})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 warm-up call and 3 timed calls per case")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every case this many times round-robin, pooling the timings (for a busy machine)")
    parser.add_argument("--fastpath-study", action="store_true", help="run the fast-path design study instead")
    parser.add_argument("--format-ab", type=int, metavar="PAIRS",
                        help="instead: NCHW vs channels-last, PAIRS alternating call pairs in one process")
    parser.add_argument("--malloc-ab", type=int, metavar="PAIRS",
                        help="instead: fast path with vs without malloc tuning, PAIRS pairs of fresh processes")
    args = parser.parse_args()
    if args.format_ab or args.malloc_ab:
        if args.format_ab:
            memory_format_ab(args.format_ab, args.threads)
        if args.malloc_ab:
            malloc_ab(args.malloc_ab, args.threads)
        return
    warmup, repeats = (1, 3) if args.quick else (2, 10)
    run = fastpath_study if args.fastpath_study else standard
    print(format_table(run(warmup, repeats, args.threads, args.rounds)))


if __name__ == "__main__":
    main()
