"""``seglab export``: a checkpoint to ONNX, by its task.

Semantic checkpoints go through :func:`seglab.export.onnx.export_onnx` (dynamic size; ``--int8``
adds a calibrated int8 copy: onnxruntime QDQ ``.onnx``, or with ``--quantizer nncf`` an OpenVINO IR), instance (Mask R-CNN) checkpoints through
:func:`seglab.export.instance_onnx.export_instance_onnx` (one fixed input size, no int8).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from seglab.core.errors import SeglabError
from seglab.tasks.checkpoint import read_checkpoint

__all__ = ["export_checkpoint"]


def export_checkpoint(args: argparse.Namespace, extra: list[str]) -> int:
    """Run ``seglab export`` (``args`` as its parser gives them; ``extra``: config overrides for ``--int8``)."""
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".onnx")
    if read_checkpoint(args.checkpoint).meta.task == "instance":
        if args.int8:
            raise SeglabError(f"--int8 quantizes semantic checkpoints only; {args.checkpoint!r} is an instance (Mask R-CNN) "
                              "checkpoint, and seglab has no int8 path calibrated and checked for its detection graph "
                              "(NMS, RoIAlign, the mask-pasting loop). Export it without --int8.")
        _no_extra(extra)
        from seglab.export.instance_onnx import export_instance_onnx

        export_instance_onnx(args.checkpoint, out, input_size=args.input_size)  # prints its parity report
        return 0
    from seglab.export.onnx import export_onnx

    export_onnx(args.checkpoint, out, input_size=args.input_size)  # prints its parity report
    if args.int8:
        from seglab.export.quantize import calibration_images, quantize_onnx, quantize_openvino

        images = calibration_images(args.checkpoint, extra, args.calibration_images)
        if args.quantizer == "nncf":  # an OpenVINO IR
            quantize_openvino(out, out.with_name(out.stem + "_int8.xml"), images)
        else:
            quantize_onnx(out, out.with_name(out.stem + "_int8.onnx"), images)  # prints its agreement with fp32
    else:
        _no_extra(extra)
    return 0


def _no_extra(extra: list[str]) -> None:
    if extra:
        raise SeglabError(f"Unrecognised arguments: {' '.join(extra)}. See --help.")
