"""onnxruntime backend: predict from an exported ``.onnx`` file alone, and int8 quantization.

:class:`OnnxSegmenter` has the interface of :class:`seglab.inference.Segmenter` (``predict``,
``predict_proba``, ``predict_logits``, ``load``, ``class_names``, ``palette``, ``num_classes``)
and reads classes, palette and normalisation from the metadata :func:`seglab.export.export_onnx`
embeds. Pre- and post-processing are the PyTorch backend's own (same normalisation, same resize
to the training image size and back), so both backends give the same label maps.

:func:`quantize_onnx` writes a static int8 model (QDQ format, per-channel weights) calibrated on
a few images prepared exactly as for prediction, and reports its agreement with the fp32 model.

Example:
    >>> seg = OnnxSegmenter("segnet.onnx")                      # doctest: +SKIP
    >>> labels = seg.predict("street.png")                      # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .engine.evaluate import forward_at_size
from .errors import SeglabError
from .export import METADATA_KEY, Parity, compare_logits, read_onnx_metadata
from .inference import ImageLike, Predictor
from .tiling import predict_tiled

__all__ = ["QUANTIZED_OPS", "OnnxSegmenter", "QuantizeReport", "quantize_onnx"]

#: Ops given int8 Q/DQ pairs. Only the weight-carrying ones: quantizing SegNet's pooling-code
#: logic (Pad with -inf, comparisons, Where) gains nothing and would put -inf into a scale.
QUANTIZED_OPS: tuple[str, ...] = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def _session_options(threads: int | None) -> Any:
    """One intra-op pool sized to the machine (or ``threads``), sequential graph, all optimisations.

    A segmentation network is a chain of big convolutions: parallelism inside each op pays,
    running independent ops side by side (inter-op threads) only adds contention.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or max(1, len(os.sched_getaffinity(0)))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OnnxSegmenter(Predictor):
    """An exported model in an onnxruntime session plus what turns images into label maps.

    Args:
        path: ``.onnx`` file written by :func:`seglab.export.export_onnx` (or :func:`quantize_onnx`).
        threads: Intra-op threads; default all CPUs this process may use.
        providers: onnxruntime execution providers; default CPU.
        tile: ``(h, w)`` for overlap-tile inference (as ``Segmenter``); ``None`` for whole images.
        tile_overlap: Pixels shared by neighbouring tiles.
    """

    def __init__(self, path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None,
                 tile: Sequence[int] | None = None, tile_overlap: int = 32) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        meta = read_onnx_metadata(self.path)
        try:
            self.session = ort.InferenceSession(str(self.path), _session_options(threads),
                                                providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as e:  # onnxruntime's own exception types
            raise SeglabError(f"onnxruntime cannot load {str(self.path)!r}: {e}") from e
        self.metadata = meta
        self.model_name: str = meta["model_name"]
        self.num_classes: int = int(meta["num_classes"])
        self.model_out_channels: int = int(meta.get("model_out_channels") or self.num_classes)
        self.class_names = list(meta["class_names"])
        self.palette = [tuple(int(v) for v in c) for c in meta["palette"]]
        self.ignore_index = meta.get("ignore_index")
        self.mean = torch.tensor(meta["mean"], dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(meta["std"], dtype=torch.float32).view(-1, 1, 1)
        # A file with fixed height/width can only run at the size it was exported at.
        size = meta.get("image_size") if meta.get("dynamic_hw", True) else meta.get("export_size")
        self.infer_size = list(size) if size else None
        self.tile = tuple(tile) if tile else None
        if self.tile and not meta.get("dynamic_hw", True) and list(self.tile) != meta.get("export_size"):
            raise SeglabError(f"{str(self.path)!r} was exported for {meta.get('export_size')} inputs only; use that "
                              "tile size or re-export with dynamic height/width.")
        self.tile_overlap = tile_overlap
        self.input_name = self.session.get_inputs()[0].name

    @classmethod
    def from_onnx(cls, path: str | Path, threads: int | None = None, tile: Sequence[int] | None = None,
                  tile_overlap: int = 32) -> "OnnxSegmenter":
        """Same as the constructor; mirrors ``Segmenter.from_checkpoint``."""
        return cls(path, threads=threads, tile=tile, tile_overlap=tile_overlap)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a ``N x 3 x H x W`` batch, straight from onnxruntime."""
        out = self.session.run(None, {self.input_name: x.numpy()})[0]
        return torch.from_numpy(out)

    def predict_logits(self, image: ImageLike) -> torch.Tensor:
        """Logits ``C x H x W`` (float32) at the image's own size."""
        x = self.preprocess(image)
        with torch.inference_mode():
            if self.tile is None:
                logits = forward_at_size(self.run, x, self.infer_size)
            else:
                logits = predict_tiled(self.run, x, self.model_out_channels, self.tile, self.tile_overlap)
        return logits[0].float()

    def predict_mc(self, image: ImageLike, samples: int) -> dict[str, np.ndarray]:
        """Not available: exported graphs run in eval mode, without dropout sampling."""
        raise SeglabError("Monte-Carlo dropout needs the PyTorch backend: predict from the checkpoint, "
                          "not from the ONNX file.")

    def describe(self) -> dict[str, Any]:
        return {"classes": self.class_names, "device": f"onnxruntime:{self.session.get_providers()[0]}",
                "infer_size": self.infer_size, "file": str(self.path)}


# ------------------------------------------------------------------------------------ quantization


@dataclass
class QuantizeReport:
    """What :func:`quantize_onnx` wrote and how it compares with the fp32 model."""

    path: Path
    num_calibration: int
    per_channel: bool
    fp32_bytes: int
    int8_bytes: int
    parity: list[Parity]

    def format(self) -> str:
        agreement = float(np.mean([p.argmax_agreement for p in self.parity]))
        worst = max(p.max_abs_diff for p in self.parity)
        return (f"seglab quantize: {self.path} (int8 QDQ, per-channel weights: {self.per_channel}, "
                f"{self.num_calibration} calibration images, {self.fp32_bytes / 1e6:.1f} MB -> "
                f"{self.int8_bytes / 1e6:.1f} MB)\n  vs fp32 on the calibration images: mean argmax agreement "
                f"{agreement:.2f} %, max |diff| of logits {worst:.3g}")


def _calibration_inputs(seg: OnnxSegmenter, images: Sequence[ImageLike]) -> list[np.ndarray]:
    """Images as the network sees them at prediction time (normalised, resized to infer_size)."""
    inputs = []
    for image in images:
        x = seg.preprocess(image)
        if seg.infer_size is not None and list(x.shape[-2:]) != list(seg.infer_size):
            x = torch.nn.functional.interpolate(x, size=tuple(seg.infer_size), mode="bilinear",
                                                align_corners=False, antialias=True)
        inputs.append(x.numpy())
    return inputs


def quantize_onnx(
    onnx_path: str | Path,
    out_path: str | Path,
    calibration_images: Sequence[ImageLike],
    *,
    per_channel: bool = True,
    min_agreement: float | None = None,
    verbose: bool = True,
) -> QuantizeReport:
    """Static int8 quantization (QDQ, per-channel weights) of a seglab ONNX file.

    Args:
        onnx_path: fp32 file from :func:`seglab.export.export_onnx`.
        out_path: Where to write the int8 file (atomically, metadata kept).
        calibration_images: RGB images (arrays, PIL images or paths) used to pick activation
            ranges; a few dozen representative frames are typical.
        per_channel: One weight scale per output channel (recommended for convolutions).
        min_agreement: If given, raise when the argmax agreement with fp32 falls below it (%).
        verbose: Print the report.

    Returns:
        A :class:`QuantizeReport` with the int8-vs-fp32 agreement on the calibration images.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if not calibration_images:
        raise SeglabError("Static quantization needs at least one calibration image.")
    fp32 = OnnxSegmenter(onnx_path)
    inputs = _calibration_inputs(fp32, calibration_images)

    class Reader(CalibrationDataReader):
        """Feeds the prepared images to the calibrator one at a time."""

        def __init__(self) -> None:
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._items, None)

        def rewind(self) -> None:
            self._items = iter([{fp32.input_name: x} for x in inputs])

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.name}.") as tmp:
        quantized = Path(tmp) / "int8.onnx"
        try:
            quantize_static(str(onnx_path), str(quantized), Reader(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(QUANTIZED_OPS), per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        except Exception as e:  # the quantizer raises plain exceptions from deep inside
            raise SeglabError(f"onnxruntime could not quantize {fp32.model_name!r}: {type(e).__name__}: {e}") from e
        proto = onnx.load(str(quantized))
        meta = {**fp32.metadata, "quantization": {"format": "QDQ", "weights": "int8", "activations": "uint8",
                                                  "per_channel": per_channel, "calibration_images": len(inputs)}}
        del proto.metadata_props[:]
        proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta))
        final = Path(tmp) / "final.onnx"
        onnx.save(proto, str(final))
        parity = _compare(fp32, OnnxSegmenter(final), inputs)
        report = QuantizeReport(out_path, len(inputs), per_channel, Path(onnx_path).stat().st_size,
                                final.stat().st_size, parity)
        if min_agreement is not None and min(p.argmax_agreement for p in parity) < min_agreement:
            raise SeglabError(f"The int8 model of {fp32.model_name!r} agrees with fp32 on only "
                              f"{min(p.argmax_agreement for p in parity):.2f} % of pixels (< {min_agreement} %).")
        os.replace(final, out_path)
    if verbose:
        print(report.format())
    return report


def _compare(reference: OnnxSegmenter, candidate: OnnxSegmenter, inputs: Sequence[np.ndarray]) -> list[Parity]:
    """Per-input logits difference and argmax agreement of two sessions."""
    return [compare_logits(reference.run(torch.from_numpy(x)).numpy(), candidate.run(torch.from_numpy(x)).numpy())
            for x in inputs]
