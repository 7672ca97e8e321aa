"""Instances from an exported Mask R-CNN ``.onnx`` file against its PyTorch checkpoint, image by image.

For each image (at the file's export size, so neither side resizes) it runs
:class:`~seglab.inference.instance_predictor.InstanceSegmenter` (PyTorch) and
:class:`~seglab.inference.instance_onnx.OnnxInstanceSegmenter` (onnxruntime) at the same score
threshold and prints the detections of each, whether the labels agree, the largest box and score
differences over the detections both found, and the share of mask pixels alike. Then the totals
and the seconds per image of both backends, measured in this run (threads as given).

Usage:
    python benchmarks/instance_onnx_parity.py runs/isbi/best.pt isbi.onnx ../shared/data/isbi2012/images/2*.png
    python benchmarks/instance_onnx_parity.py CKPT FILE IMAGES... --score-threshold 0.3 --threads 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from seglab.inference.instance_onnx import OnnxInstanceSegmenter
from seglab.inference.instance_predictor import InstanceSegmenter


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("onnx")
    p.add_argument("images", nargs="+")
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    eager = InstanceSegmenter.from_checkpoint(args.checkpoint, device="cpu", score_threshold=args.score_threshold)
    runner = OnnxInstanceSegmenter(args.onnx, score_threshold=args.score_threshold, threads=args.threads)
    times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
    total = {"torch": 0, "onnxruntime": 0, "same": 0, "pixels": 0}
    worst_box = worst_score = 0.0
    print(f"{'image':<28}{'N torch':>8}{'N onnx':>8}{'labels':>8}{'max|box|':>11}{'max|score|':>12}{'masks alike %':>15}")
    for path in args.images:
        image = runner.load(path)
        if image.shape[:2] != runner.export_size:
            raise SystemExit(f"{path} is {image.shape[0]}x{image.shape[1]}, the file takes {runner.export_size}")
        found = {}
        for name, seg in (("torch", eager), ("onnxruntime", runner)):
            start = time.perf_counter()
            found[name] = seg.predict(image)
            times[name].append(time.perf_counter() - start)
        a, b = found["torch"], found["onnxruntime"]
        n = min(len(a), len(b))
        labels = "equal" if len(a) == len(b) and np.array_equal(a.labels, b.labels) else "DIFFER"
        box = float(np.abs(a.boxes[:n] - b.boxes[:n]).max()) if n else 0.0
        score = float(np.abs(a.scores[:n] - b.scores[:n]).max()) if n else 0.0
        same = int(np.sum(a.masks[:n] == b.masks[:n]))
        alike = same / a.masks[:n].size if n else 1.0
        worst_box, worst_score = max(worst_box, box), max(worst_score, score)
        total["torch"] += len(a)
        total["onnxruntime"] += len(b)
        total["same"] += same
        total["pixels"] += a.masks[:n].size
        print(f"{path[-28:]:<28}{len(a):>8}{len(b):>8}{labels:>8}{box:>11.3g}{score:>12.3g}{100 * alike:>15.3f}")
    alike_all = 100.0 * total["same"] / total["pixels"] if total["pixels"] else 100.0
    print(f"{'all':<28}{total['torch']:>8}{total['onnxruntime']:>8}{'':>8}{worst_box:>11.3g}{worst_score:>12.3g}"
          f"{alike_all:>15.3f}")
    median = {k: float(np.median(v)) for k, v in times.items()}
    print(f"seconds per image ({args.threads} threads, median): torch {median['torch']:.3f}, onnxruntime "
          f"{median['onnxruntime']:.3f} (ratio onnxruntime/torch {median['onnxruntime'] / median['torch']:.2f})")


if __name__ == "__main__":
    main()
