"""Every CPU execution path of one trained model on CamVid val: label agreement with fp32 eager, mIoU, time.

The accuracy rule for a default path (docs/benchmarks.md): argmax agreement with fp32 eager of at
least 99 % over the val pixels, and an mIoU at most 0.5 points below fp32 eager. Every path sees the
same preprocessed images (the model's own normalisation and input size), so the figures differ by
the runtime and precision alone. Latency is the median per image over the val images, in this one
process, after one warm-up image.

    python benchmarks/backend_accuracy.py --weights segnet_basic.camvid --data-root ../shared/data/camvid \\
        --json benchmarks/results/backend-accuracy.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from seglab.core.config import apply_overrides
from seglab.data import build_dataset, dataset_info
from seglab.export.onnx import export_onnx
from seglab.export.quantize import calibration_images, quantize_onnx, quantize_openvino
from seglab.inference.exported import load_exported
from seglab.inference.predictor import Segmenter
from seglab.metrics import SegmentationMetrics
from seglab.tasks.checkpoint import checkpoint_config, read_checkpoint


def _paths(weights: str, tmp: Path, overrides: list[str], calibration: int) -> dict[str, Callable]:
    """name -> predict(image) -> label map, for every path."""
    onnx_file = tmp / "model.onnx"
    export_onnx(weights, onnx_file, verbose=False)
    images = calibration_images(weights, overrides, calibration)
    quantize_onnx(onnx_file, tmp / "model_int8.onnx", images, verbose=False)
    quantize_openvino(onnx_file, tmp / "model_int8.xml", images, verbose=False)
    paths: dict[str, Callable] = {
        # amp "none" explicitly: the default ("auto") is bf16 for weights verified in bf16.
        "torch eager fp32": Segmenter.from_checkpoint(weights, device="cpu", fast=False, amp="none").predict,
        "torch fast fp32": Segmenter.from_checkpoint(weights, device="cpu", amp="none").predict,
        "torch fast bf16": Segmenter.from_checkpoint(weights, device="cpu", amp="bf16").predict,
        "onnxruntime fp32": load_exported(onnx_file).predict,
        "onnxruntime int8 (QDQ)": load_exported(tmp / "model_int8.onnx").predict,
    }
    for precision in ("f32", "bf16"):
        paths[f"openvino {precision}"] = load_exported(onnx_file, "openvino", precision=precision).predict
        paths[f"openvino int8 (NNCF) + {precision}"] = load_exported(tmp / "model_int8.xml", precision=precision).predict
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="segnet_basic.camvid", help="trained weights name or checkpoint")
    parser.add_argument("--data-root", default="../shared/data/camvid")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, help="only the first N images of the split")
    parser.add_argument("--calibration-images", type=int, default=16)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    overrides = [f"--data.root={args.data_root}"]
    cfg = apply_overrides(checkpoint_config(read_checkpoint(args.weights)), overrides)
    data = build_dataset(dataclasses.replace(cfg.data, image_size=None), args.split, train=False)  # scored at full size
    count = min(len(data), args.limit or len(data))
    info = dataset_info(cfg.data)
    num_classes, ignore = info.num_classes, info.ignore_index
    with tempfile.TemporaryDirectory() as tmp:
        paths = _paths(args.weights, Path(tmp), overrides, args.calibration_images)
        reference: list[np.ndarray] = []
        rows = []
        for name, predict in paths.items():
            metrics = SegmentationMetrics(num_classes, ignore, compute_bf=False)
            same = total = 0
            times = []
            predict(data.load_image(0))  # warm-up (compiles the shape)
            for i in range(count):
                image, target = data.load_image(i), data.load_mask(i)
                start = time.perf_counter()
                labels = np.asarray(predict(image))
                times.append(time.perf_counter() - start)
                if len(reference) < count:
                    reference.append(labels)
                same += int((labels == reference[i]).sum())
                total += labels.size
                metrics.update(torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(target.astype(np.int64)))
            result = metrics.compute()
            rows.append({"path": name, "agreement_pct": 100 * same / total, "miou": 100 * result["miou"],
                         "global_acc": 100 * result["global_acc"], "median_ms": 1e3 * statistics.median(times)})
            print(f"{name:34s} agreement {rows[-1]['agreement_pct']:7.3f} %  mIoU {rows[-1]['miou']:6.2f}  "
                  f"G {rows[-1]['global_acc']:6.2f}  {rows[-1]['median_ms']:7.1f} ms/image", flush=True)
    base = rows[0]["miou"]
    print("\n| path | agreement with fp32 eager % | mIoU | vs fp32 eager | G | ms / image | meets the default rule |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ok = r["agreement_pct"] >= 99 and r["miou"] >= base - 0.5
        print(f"| {r['path']} | {r['agreement_pct']:.2f} | {r['miou']:.2f} | {r['miou'] - base:+.2f} | "
              f"{r['global_acc']:.2f} | {r['median_ms']:.1f} | {'yes' if ok else 'no'} |")
    if args.json:
        meta = {"weights": args.weights, "split": args.split, "images": count,
                "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
