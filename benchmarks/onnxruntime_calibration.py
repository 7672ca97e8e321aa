"""onnxruntime's int8 calibration methods on a trained model: argmax agreement of each int8 file with fp32.

Quantizes the ``seglab export`` of ``--weights`` as ``seglab export --int8`` does (static QDQ,
per-channel int8 weights on the convolutions, 16 training images), once per calibration method,
and scores every fifth val frame against the fp32 file (docs/benchmarks.md).

    python benchmarks/onnxruntime_calibration.py --weights segnet_basic.camvid --data-root ../shared/data/camvid
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from seglab.export.onnx import export_onnx
from seglab.export.quantize import QUANTIZED_OPS, _calibration_inputs, calibration_images
from seglab.inference.onnx_backend import OnnxSegmenter

METHODS = {"MinMax": (CalibrationMethod.MinMax, {}),
           "Percentile 99.99": (CalibrationMethod.Percentile, {"CalibPercentile": 99.99}),
           "Entropy": (CalibrationMethod.Entropy, {})}


class _Reader(CalibrationDataReader):
    def __init__(self, name: str, inputs: list[np.ndarray]) -> None:
        self.feeds = [{name: x} for x in inputs]
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)

    def rewind(self) -> None:
        self.items = iter(self.feeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="segnet_basic.camvid")
    parser.add_argument("--data-root", default="../shared/data/camvid")
    parser.add_argument("--calibration-images", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fp32_file = Path(tmp) / "fp32.onnx"
        export_onnx(args.weights, fp32_file, verbose=False)
        fp32 = OnnxSegmenter(fp32_file)
        overrides = [f"--data.root={args.data_root}"]
        calibration = _calibration_inputs(fp32, calibration_images(args.weights, overrides, args.calibration_images))
        frames = sorted((Path(args.data_root) / "val").glob("*.png"))[::5]
        inputs = _calibration_inputs(fp32, [str(f) for f in frames])
        references = [fp32.run(torch.from_numpy(x)).numpy().argmax(1) for x in inputs]
        for name, (method, extra) in METHODS.items():
            out = Path(tmp) / f"int8_{method.name}.onnx"
            quantize_static(str(fp32_file), str(out), _Reader(fp32.input_name, calibration), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                            extra_options=extra)
            session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            agreement = np.mean([np.mean(session.run(None, {fp32.input_name: x})[0].argmax(1) == ref)
                                 for x, ref in zip(inputs, references)])
            print(f"{name}: argmax agreement with fp32 {100 * agreement:.2f} % on {len(frames)} val frames", flush=True)


if __name__ == "__main__":
    main()
