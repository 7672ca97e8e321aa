"""The default CPU path of trained weights against every other path, in one process run.

What ``seglab predict NAME`` / ``seglab serve NAME`` / ``load_predictor(NAME)`` run by default
(:mod:`seglab.inference.auto`) is timed beside PyTorch's fast path in fp32 and bf16 and OpenVINO's
f32, bf16 and int8 on the same exported graph, all on the network alone at one input size (default
360x480, batch 1), after the same-run fp32 conv peak (``measure_conv_peak``). The effective rate of
a path is the model's fp32 FLOPs over its time; "x peak" is that over the conv peak, so above 1
means faster than fp32 convolution can be on this CPU. Then the whole prediction (read, resize to
the model's size, network, labels back at the image's size) is timed on real frames for the
default and the fp32 path, when ``--images`` is given.

    python benchmarks/default_path.py --weights segnet_basic.camvid --images ../shared/data/camvid/val \\
        --json benchmarks/results/default-path.json
    python benchmarks/default_path.py --model segnet --calibration 8   # a model with no trained weights
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from seglab.apps.benchmark_case import measure_conv_peak
from seglab.export.onnx import export_onnx
from seglab.inference.auto import describe_predictor, load_predictor
from seglab.inference.openvino_backend import OpenVinoSegmenter
from seglab.inference.predictor import Segmenter
from seglab.models import count_gflops


def _median_ms(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _network(seg: object) -> Callable[[torch.Tensor], object]:
    """The network call of a predictor, without pre- and post-processing."""
    if isinstance(seg, Segmenter):
        def run(x: torch.Tensor) -> object:
            with torch.inference_mode(), torch.autocast("cpu", dtype=seg.amp_dtype or torch.float32,
                                                        enabled=seg.amp_dtype is not None):
                return seg.forward_model(x)
        return run
    return seg.run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="trained weights name (segnet_basic.camvid) or checkpoint")
    parser.add_argument("--model", help="instead of --weights: a registry model with random weights and an int8 "
                                        "model calibrated on --calibration synthetic scenes (speed only)")
    parser.add_argument("--size", type=int, nargs=2, default=(360, 480))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--calibration", type=int, default=8)
    parser.add_argument("--images", help="a folder of frames for the whole-prediction timing")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    threads = len(os.sched_getaffinity(0))
    peak = measure_conv_peak(threads)["peak_gflops_per_s"]
    print(f"conv peak (fp32, same run): {peak:.1f} GFLOP/s, {threads} threads, {torch.backends.cpu.get_cpu_capability()}")
    x = torch.randn(1, 3, *args.size)
    with tempfile.TemporaryDirectory() as tmp:
        source = args.weights or _random_checkpoint(args.model, Path(tmp))
        fp32 = Segmenter.from_checkpoint(source, device="cpu", amp="none")
        gflops = count_gflops(fp32.model, args.size)
        onnx_file = Path(tmp) / "model.onnx"
        export_onnx(source, onnx_file, verbose=False)
        if args.model:  # no trained weights: the int8 model a pack would check, calibrated on synthetic scenes
            default = _int8_of(onnx_file, Path(tmp), args.calibration)
            label = "int8 a pack would ship if it passed (openvino, f32 elsewhere)"
        else:
            default = load_predictor(source)
            label = f"default ({describe_predictor(default)})"
        paths: dict[str, object] = {
            label: default,
            "torch fast fp32": fp32,
            "torch fast bf16": Segmenter.from_checkpoint(source, device="cpu", amp="bf16"),
            "openvino f32": OpenVinoSegmenter(onnx_file, precision="f32"),
            "openvino bf16": OpenVinoSegmenter(onnx_file, precision="bf16"),
        }
        rows = []
        for name, seg in paths.items():
            ms = _median_ms(lambda run=_network(seg): run(x), args.warmup, args.repeats)
            rows.append({"path": name, "median_ms": ms, "x_peak": gflops / (ms / 1e3) / peak})
            print(f"{name:55s} {ms:8.1f} ms  {rows[-1]['x_peak']:5.2f}x the fp32 conv peak", flush=True)
        whole = {}
        if args.images:
            frames = sorted(Path(args.images).glob("*.png"))[:20]
            for name in list(paths)[:2]:
                seg = paths[name]
                whole[name] = statistics.median(_median_ms(lambda f=f: seg.predict(f), 1, 1) for f in frames)
                print(f"whole prediction, {name}: {whole[name]:.1f} ms / frame (median of {len(frames)})")
    if args.json:
        Path(args.json).write_text(json.dumps({"source": source if args.weights else args.model, "size": args.size,
                                               "gflops": gflops, "peak_gflops_per_s": peak, "threads": threads,
                                               "rows": rows, "whole_prediction_ms": whole}, indent=1))


def _random_checkpoint(model: str, folder: Path) -> str:
    from seglab.models.registry import create_model
    from seglab.tasks.checkpoint import save_checkpoint

    torch.manual_seed(0)
    net = create_model(model, num_classes=11).eval()
    path = folder / f"{model}.pt"
    save_checkpoint(path, {"model_name": model, "model_kwargs": {}, "num_classes": 11,
                           "class_names": [f"c{i}" for i in range(11)], "palette": [[i * 20, 0, 0] for i in range(11)],
                           "ignore_index": 255, "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": None,
                           "model": net.state_dict()})
    return str(path)


def _int8_of(onnx_file: Path, folder: Path, count: int) -> OpenVinoSegmenter:
    from seglab.data.synthetic import render_scene
    from seglab.export.quantize import quantize_openvino

    rng = np.random.default_rng(0)
    images = [render_scene(rng, 360, 480)[0] for _ in range(count)]
    xml = quantize_openvino(onnx_file, folder / "model_int8.xml", images, verbose=False).path
    return OpenVinoSegmenter(xml, precision="auto")


if __name__ == "__main__":
    main()
