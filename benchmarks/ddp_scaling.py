"""Training throughput with 1, 2, ... processes of one torchrun job (images/s of the whole job).

Each point is a real ``python -m torch.distributed.run --nproc-per-node N -m seglab train`` on the
built-in synthetic scenes with the same global batch (so the same optimisation), gloo on CPU and
nccl on GPUs (``train.dist_backend auto``). The figure is the trainer's own ``train_images_per_s``
of the last epoch (the first holds the warm-up), counted over all ranks. On CPU every process gets
``cores / N`` threads, so on one small machine more processes split the same cores: expect no
speed-up there; the point is the overhead of the gradient all-reduce.

Usage:
    python benchmarks/ddp_scaling.py                          # 1 and 2 processes, segnet_basic 96x128
    python benchmarks/ddp_scaling.py --nprocs 1 2 4 8 --model segnet --size 360 480 --batch-size 32

Prints a Markdown table with the command of each row and writes
``benchmarks/results/ddp-scaling-<host>-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_point(nproc: int, args: argparse.Namespace, work: Path) -> dict:
    recipe = {
        "model": {"name": args.model},
        "data": {"dataset": "synthetic", "synthetic_train": args.batch_size * args.steps, "synthetic_val": 2,
                 "synthetic_size": list(args.size), "num_workers": args.num_workers},
        "loss": {"class_weights": "none"},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "optimizer": "sgd", "lr": 0.01,
                  "val_every": 0, "progress": False, "amp": args.amp, "out_dir": str(work), "run_name": f"n{nproc}"},
    }
    path = work / f"n{nproc}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", f"--nproc-per-node={nproc}",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "-m", "seglab", "train", str(path)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    records = [json.loads(line) for line in (work / f"n{nproc}" / "metrics.jsonl").read_text().splitlines()]
    return {"processes": nproc, "images_per_s": records[-1]["train_images_per_s"],
            "epoch_seconds": records[-1]["epoch_seconds"], "job_wall_seconds": wall,
            "command": f"{shlex.join(cmd)}  # recipe: {json.dumps(recipe)}"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--model", default="segnet_basic")
    p.add_argument("--size", type=int, nargs=2, default=[96, 128], metavar=("H", "W"))
    p.add_argument("--batch-size", type=int, default=8, help="global batch (split over the processes)")
    p.add_argument("--steps", type=int, default=6, help="optimisation steps per epoch")
    p.add_argument("--epochs", type=int, default=2, help="the last epoch is timed")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--amp", default="none")
    p.add_argument("--timeout", type=float, default=900)
    args = p.parse_args()
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.nprocs:
            rows.append(run_point(n, args, Path(tmp)))
            print(f"{n} process(es): {rows[-1]['images_per_s']:.1f} images/s", flush=True)
    base = rows[0]["images_per_s"]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    print(f"\n{args.model} {args.size[0]}x{args.size[1]}, global batch {args.batch_size}, {device}, torch {torch.__version__}\n")
    print("| processes | images/s | vs 1 | epoch s |\n|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['processes']} | {r['images_per_s']:.1f} | {r['images_per_s'] / base:.2f}x | {r['epoch_seconds']:.2f} |")
    out = REPO / "benchmarks" / "results" / f"ddp-scaling-{platform.node()}-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "torch": torch.__version__, "args": vars(args), "rows": rows}, indent=2))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
