"""Training-step cost of the instance quickstart's Mask R-CNN with 1 and 2 CPU threads, in one run.

Why the quickstart trains with ``train.threads 1``: on a small machine whose cores other jobs
share, intra-op threads wait on each other and a step can cost many times the CPU (and wall
time) of the one-thread step. Each point is ``--steps`` training steps (batch 4, the quickstart's
model kwargs, bf16 autocast where the CPU has bf16, as ``train.amp auto`` does) after one warm-up
step; threads are set with ``torch.set_num_threads`` in a fresh process per point.

Usage:
    python benchmarks/instance_threads.py                # threads 1 and 2, 3 steps each
    python benchmarks/instance_threads.py --threads 1 2 4 --steps 5

Prints one line per point (CPU seconds and wall seconds per step) and the 2-vs-1 ratios, with
the load average at the start, since the ratio depends on what else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _point(threads: int, steps: int) -> dict:
    import torch

    from seglab.apps.instance_quickstart import QUICKSTART_MODEL_KWARGS
    from seglab.core.config import DataConfig
    from seglab.core.runtime import cpu_supports_bf16
    from seglab.data import build_dataset
    from seglab.models.registry import create_model

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    data = build_dataset(DataConfig(dataset="synthetic_instances", synthetic_size=[96, 128],
                                    synthetic_train=4 * (steps + 1)), "train", train=True)
    items = [data[i] for i in range(len(data))]
    model = create_model("mask_rcnn_resnet18_fpn", 3, **QUICKSTART_MODEL_KWARGS).train()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    bf16 = cpu_supports_bf16()
    cpu = wall = 0.0
    for s in range(steps + 1):
        batch = items[4 * s: 4 * s + 4]
        c0, w0 = time.process_time(), time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = sum(model([x for x, _ in batch], [t for _, t in batch]).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if s:  # the first step is the warm-up
            cpu += time.process_time() - c0
            wall += time.perf_counter() - w0
    return {"threads": threads, "bf16": bf16, "cpu_s_per_step": cpu / steps, "wall_s_per_step": wall / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--point", type=int, help=argparse.SUPPRESS)  # internal: run one point in this process
    args = parser.parse_args()
    if args.point is not None:
        print(json.dumps(_point(args.point, args.steps)))
        return
    print(f"load average at start: {' '.join(f'{v:.1f}' for v in os.getloadavg())}, {os.cpu_count()} CPUs")
    rows = []
    for threads in args.threads:
        out = subprocess.run([sys.executable, __file__, "--point", str(threads), "--steps", str(args.steps)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"threads {threads}: {r['cpu_s_per_step']:.2f} s CPU, {r['wall_s_per_step']:.2f} s wall per step "
              f"(batch 4, bf16 {r['bf16']})")
    base = rows[0]
    for r in rows[1:]:
        print(f"threads {r['threads']} / threads {base['threads']}: CPU x{r['cpu_s_per_step'] / base['cpu_s_per_step']:.1f}, "
              f"wall x{r['wall_s_per_step'] / base['wall_s_per_step']:.1f}")


if __name__ == "__main__":
    main()
