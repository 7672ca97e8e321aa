"""ONNX export of instance (Mask R-CNN, ``task: instance``) checkpoints, checked against PyTorch.

:func:`export_instance_onnx` traces torchvision's Mask R-CNN with the legacy TorchScript exporter
(``dynamo=False``; torchvision's detection code has tracing paths for ONNX: the NMS, the RoIAlign,
the per-level merge and a scripted loop that pastes the masks) at one fixed image size. The file
has two inputs and four outputs:

* ``image``: ``3 x H x W`` float32 RGB in [0, 1] at the export size (the model normalises and
  resizes it inside, as in PyTorch); ``score_threshold``: a float32 scalar. torchvision compares
  the class scores with ``roi_heads.score_thresh`` (``box_score_thresh``); the exporter points
  that attribute at the traced threshold input, so the threshold is chosen at run time instead of
  being frozen into the graph.
* ``boxes`` ``N x 4`` float32 (x1, y1, x2, y2 in pixels), ``labels`` ``N`` int64 (1..K-1),
  ``scores`` ``N`` float32 (descending), ``masks`` ``N x 1 x H x W`` float32 probabilities.

The seglab metadata (task, classes, palette, sizes, default thresholds) is embedded as in the
semantic export. Before the file is written (atomically), onnxruntime runs it next to the eager
model on an image with detections (the threshold set so that at most :data:`PARITY_DETECTIONS`
pass, N > 0 required) and on a flat grey image at threshold 1 (no detection: every output must
come back with N = 0 and its other dimensions intact, the case exports of torchvision models are
known to break on). Labels must agree exactly, boxes and scores within a tolerance, masks
binarised at the mask threshold on at least ``min_mask_agreement`` percent of their pixels.

Example:
    >>> report = export_instance_onnx("runs/mask_rcnn/best.pt", "mask_rcnn.onnx", input_size=(512, 512))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import MaskRCNN

from seglab.core.errors import SeglabError
from seglab.core.version import __version__
from seglab.inference.onnx_format import METADATA_KEY, ONNX_FORMAT
from seglab.tasks.checkpoint import Checkpoint, checkpoint_config, model_from_checkpoint, read_checkpoint

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "PARITY_DETECTIONS", "THRESHOLD_NAME", "InstanceExportReport",
           "InstanceParity", "ThresholdedMaskRCNN", "compare_detections", "export_instance_onnx",
           "instance_input_size"]

INPUT_NAME, THRESHOLD_NAME = "image", "score_threshold"
OUTPUT_NAMES = ("boxes", "labels", "scores", "masks")
#: Most detections the "with detections" parity case compares: torchvision pastes the masks in an
#: ONNX loop that concatenates one full-size mask per step, so its cost grows with N squared.
PARITY_DETECTIONS = 10
_CHANNELS = 3


class ThresholdedMaskRCNN(nn.Module):
    """One ``3 x H x W`` image and a score threshold in, torchvision's detections as four tensors out.

    Setting ``roi_heads.score_thresh`` to the threshold tensor makes torchvision's
    ``scores > score_thresh`` a comparison with the input when traced (an ONNX input) and is the
    same comparison in eager mode.
    """

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, score_threshold: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.model.roi_heads.score_thresh = score_threshold
        out = self.model([image])[0]
        return tuple(out[name] for name in OUTPUT_NAMES)


@dataclass
class InstanceParity:
    """onnxruntime against eager PyTorch on one image at one score threshold."""

    case: str
    score_threshold: float
    detections: int  # PyTorch's N
    onnx_shapes: dict[str, tuple[int, ...]]
    box_max_diff: float | None = None  # pixels
    score_max_diff: float | None = None
    labels_equal: bool = True
    mask_agreement: float | None = None  # percent of mask pixels on the same side of the mask threshold
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        shapes = ", ".join(f"{k} {'x'.join(map(str, v)) or 'scalar'}" for k, v in self.onnx_shapes.items())
        text = f"parity {self.case} (score > {self.score_threshold:.4g}): {self.detections} detections; ONNX {shapes}"
        if self.detections and self.box_max_diff is not None:
            text += (f"; max |box diff| {self.box_max_diff:.3g} px, max |score diff| {self.score_max_diff:.3g}, "
                     f"labels {'equal' if self.labels_equal else 'DIFFER'}, mask agreement {self.mask_agreement:.3f} %")
        return text + ("" if self.ok else f"; FAILED: {'; '.join(self.problems)}")


@dataclass
class InstanceExportReport:
    """What :func:`export_instance_onnx` wrote and how well it matches PyTorch."""

    path: Path
    model_name: str
    opset: int
    input_size: tuple[int, int, int]
    parity: list[InstanceParity]
    size_bytes: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def format(self) -> str:
        c, h, w = self.input_size
        head = (f"seglab export: {self.model_name} (instance) -> {self.path} ({self.size_bytes / 1e6:.1f} MB, "
                f"torchscript exporter, opset {self.opset}, fixed input {c}x{h}x{w}, score threshold an input, "
                f"default {self.metadata.get('score_threshold')})")
        return "\n".join([head] + [f"  {p.format()}" for p in self.parity])


def export_instance_onnx(
    checkpoint: str | Path | Checkpoint,
    out_path: str | Path,
    *,
    input_size: Sequence[int] | None = None,
    opset: int = 17,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    box_atol: float = 0.05,
    score_atol: float = 1e-3,
    min_mask_agreement: float = 99.9,
    verbose: bool = True,
) -> InstanceExportReport:
    """Export an instance checkpoint to ONNX at a fixed size, embed its metadata, check parity.

    Args:
        checkpoint: A ``task: instance`` checkpoint (path, weights name, or one already read).
        out_path: The ``.onnx`` file to write (atomically, only if every parity check passes).
        input_size: ``(H, W)`` (or ``(3, H, W)``) of the file's input; default the recipe's
            ``data.image_size``, ``data.crop_size`` or synthetic scene size.
        opset: ONNX opset (11 or newer: torchvision's detection ops need it).
        score_threshold: Default threshold recorded in the metadata (runners pass it to the file).
        mask_threshold: Mask probability at which a pixel belongs to an instance (metadata; parity).
        box_atol: Largest box coordinate difference (pixels) accepted.
        score_atol: Largest score difference accepted.
        min_mask_agreement: Least percent of mask pixels binarised alike.
        verbose: Print the report.

    Raises:
        SeglabError: Not an instance checkpoint, a bad size, an export or onnxruntime failure, or disagreement.
    """
    where = "checkpoint" if isinstance(checkpoint, Checkpoint) else str(checkpoint)
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else read_checkpoint(checkpoint)
    if ckpt.meta.task != "instance":
        raise SeglabError(f"Checkpoint {where!r} was trained for task: {ckpt.meta.task}; export_instance_onnx "
                          "exports Mask R-CNN (task: instance) checkpoints. Use seglab.export.onnx.export_onnx.")
    if opset < 11:
        raise SeglabError(f"opset {opset} is too old for Mask R-CNN (torchvision's NMS and RoIAlign need 11 or newer).")
    model = model_from_checkpoint(ckpt, where).float().cpu().eval()
    if not isinstance(model, MaskRCNN) or not model.roi_heads.has_mask():
        raise SeglabError(f"{ckpt.meta.model_name} is not a torchvision Mask R-CNN; only those export as instances.")
    size = instance_input_size(ckpt, input_size, where)
    graph = ThresholdedMaskRCNN(model).eval()
    meta = _metadata(ckpt, model, size, opset, score_threshold, mask_threshold)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.name}.") as tmp:
        raw, final = Path(tmp) / "raw.onnx", Path(tmp) / "final.onnx"
        _trace_export(graph, size, raw, opset, ckpt.meta.model_name)
        _finish(raw, final, meta)
        parity = _parity_checks(graph, final, size, mask_threshold, box_atol, score_atol, min_mask_agreement)
        report = InstanceExportReport(out_path, ckpt.meta.model_name, opset, (_CHANNELS, *size), parity,
                                      final.stat().st_size, meta)
        bad = [p for p in parity if not p.ok]
        if bad:
            raise SeglabError(f"The ONNX export of {ckpt.meta.model_name!r} disagrees with PyTorch ({bad[0].format()}); "
                              "nothing was written.")
        os.replace(final, out_path)
    if verbose:
        print(report.format())
    return report


def instance_input_size(ckpt: Checkpoint, input_size: Sequence[int] | None, where: str = "checkpoint") -> tuple[int, int]:
    """``(H, W)`` of the file: ``input_size`` (``H W`` or ``C H W``), else the recipe's image, crop or synthetic size."""
    if input_size is None:
        candidates = [ckpt.meta.image_size]
        try:
            data = checkpoint_config(ckpt).data if ckpt.meta.config else None
        except SeglabError:  # a config this seglab cannot read: only --input-size can say
            data = None
        if data is not None:
            synthetic = data.synthetic_size if str(data.dataset).startswith("synthetic") else None
            candidates += [data.image_size, data.crop_size, synthetic]
        input_size = next((list(c) for c in candidates if c), None)
        if input_size is None:
            raise SeglabError(f"The recipe of {where!r} fixes no image size (data.image_size, data.crop_size): give the "
                              "size of the images the file will take, e.g. --input-size 512 512.")
    dims = [int(v) for v in input_size]
    if len(dims) == 3 and dims[0] == _CHANNELS:
        dims = dims[1:]
    if len(dims) != 2 or min(dims) < 32:
        raise SeglabError(f"--input-size takes H W (or {_CHANNELS} H W) of at least 32 pixels each, got {list(input_size)}.")
    return dims[0], dims[1]


def compare_detections(case: str, threshold: float, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray],
                       size: Sequence[int], mask_threshold: float = 0.5, box_atol: float = 0.05,
                       score_atol: float = 1e-3, min_mask_agreement: float = 99.9) -> InstanceParity:
    """Compare ``(boxes, labels, scores, masks)`` of onnxruntime (``candidate``) with PyTorch's."""
    n = int(reference[0].shape[0])
    expected = {"boxes": ((n, 4), np.float32), "labels": ((n,), np.int64), "scores": ((n,), np.float32),
                "masks": ((n, 1, *size), np.float32)}
    shapes = {name: tuple(int(d) for d in out.shape) for name, out in zip(OUTPUT_NAMES, candidate)}
    parity = InstanceParity(case, threshold, n, shapes)
    for name, out in zip(OUTPUT_NAMES, candidate):
        shape, dtype = expected[name]
        if tuple(out.shape) != shape or out.dtype != dtype:
            parity.problems.append(f"{name} is {out.dtype} {tuple(out.shape)}, PyTorch's {np.dtype(dtype)} {shape}")
    if parity.problems or n == 0:
        return parity
    boxes, labels, scores, masks = candidate
    parity.box_max_diff = float(np.abs(boxes - reference[0]).max())
    parity.score_max_diff = float(np.abs(scores - reference[2]).max())
    parity.labels_equal = bool(np.array_equal(labels, reference[1]))
    parity.mask_agreement = 100.0 * float(np.mean((masks >= mask_threshold) == (reference[3] >= mask_threshold)))
    if not parity.labels_equal:
        parity.problems.append("labels differ")
    if not parity.box_max_diff <= box_atol:
        parity.problems.append(f"boxes differ by up to {parity.box_max_diff:.3g} px (at most {box_atol} allowed)")
    if not parity.score_max_diff <= score_atol:
        parity.problems.append(f"scores differ by up to {parity.score_max_diff:.3g} (at most {score_atol} allowed)")
    if not parity.mask_agreement >= min_mask_agreement:
        parity.problems.append(f"masks agree on {parity.mask_agreement:.3f} % of pixels (at least {min_mask_agreement} %)")
    return parity


# ---------------------------------------------------------------------------------------------- helpers


def _metadata(ckpt: Checkpoint, model: MaskRCNN, size: tuple[int, int], opset: int, score_threshold: float,
              mask_threshold: float) -> dict[str, Any]:
    m = ckpt.meta
    if not 0.0 <= mask_threshold <= 1.0 or not score_threshold >= 0.0:
        raise SeglabError(f"score_threshold must be >= 0 and mask_threshold in [0, 1], got {score_threshold} and "
                          f"{mask_threshold}.")
    return {"format": ONNX_FORMAT, "task": "instance", "model_name": m.model_name,
            "roi_pooler": m.model_kwargs.get("roi_pooler", "align"), "num_classes": m.num_classes,
            "class_names": list(m.class_names), "palette": [list(map(int, c)) for c in m.palette],
            "input_name": INPUT_NAME, "threshold_name": THRESHOLD_NAME, "output_names": list(OUTPUT_NAMES),
            "input_size": [_CHANNELS, *size], "image_size": list(size), "export_size": list(size),
            "input_range": [0.0, 1.0], "score_threshold": float(score_threshold), "mask_threshold": float(mask_threshold),
            "model_score_thresh": float(model.roi_heads.score_thresh),  # what the threshold input replaces
            "detections_per_img": int(model.roi_heads.detections_per_img), "exporter": "torchscript",
            "opset": opset, "dynamic_hw": False, "seglab_version": __version__}


def _trace_export(graph: ThresholdedMaskRCNN, size: tuple[int, int], path: Path, opset: int, name: str) -> None:
    """One legacy (TorchScript) ``torch.onnx.export``; its warnings and chatter are swallowed, its errors explained."""
    example = (torch.rand(_CHANNELS, *size, generator=torch.Generator().manual_seed(0)), torch.tensor(0.0))
    axes = {out: {0: "detections"} for out in OUTPUT_NAMES}
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), torch.no_grad(), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings on torchvision's shape arithmetic, the legacy exporter's
            torch.onnx.export(graph, example, str(path), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME, THRESHOLD_NAME], output_names=list(OUTPUT_NAMES),
                              dynamic_axes=axes)
    except Exception as e:  # the exporter raises its own error types
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise SeglabError(f"{name} cannot be exported to ONNX at {size[0]}x{size[1]}: {type(e).__name__}: "
                          f"{lines[0] if lines else ''}") from e
    if not path.is_file():
        raise SeglabError(f"The ONNX exporter wrote no file for {name}.")


def _finish(src: Path, dst: Path, meta: dict[str, Any]) -> None:
    """``src`` with output shapes named, the mask loop's carried shape freed, and ``meta`` embedded, saved to ``dst``."""
    import onnx

    proto = onnx.load(str(src))
    h, w = meta["image_size"]
    dims = {"boxes": ["detections", 4], "labels": ["detections"], "scores": ["detections"],
            "masks": ["detections", 1, h, w]}
    for output in proto.graph.output:
        shape = output.type.tensor_type.shape
        del shape.dim[:]
        for d in dims[output.name]:
            shape.dim.add(**({"dim_param": d} if isinstance(d, str) else {"dim_value": d}))
    for node in proto.graph.node:
        # The mask-pasting loop starts from a 0 x H x W tensor and grows by one mask a step; its body
        # declares that 0, which onnxruntime then reports as a shape mismatch on every step.
        if node.op_type == "Loop":
            for carried in node.attribute[0].g.input[2:]:
                for d in carried.type.tensor_type.shape.dim:
                    if d.HasField("dim_value") and d.dim_value == 0:
                        d.dim_param = "detections"
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta))
    onnx.save(proto, str(dst))


def _parity_checks(graph: ThresholdedMaskRCNN, path: Path, size: tuple[int, int], mask_threshold: float,
                   box_atol: float, score_atol: float, min_mask_agreement: float) -> list[InstanceParity]:
    """The two cases of the module docstring: at most PARITY_DETECTIONS detections (N > 0), and none."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types
        raise SeglabError(f"onnxruntime cannot load the exported Mask R-CNN: {type(e).__name__}: {e}") from e

    def both(image: torch.Tensor, threshold: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
        t = torch.tensor(threshold, dtype=torch.float32)
        with torch.no_grad():
            ref = [out.numpy() for out in graph(image, t)]
        try:
            out = session.run(list(OUTPUT_NAMES), {INPUT_NAME: image.numpy(), THRESHOLD_NAME: t.numpy()})
        except Exception as e:
            raise SeglabError(f"The exported Mask R-CNN fails in onnxruntime at score threshold {threshold:g} "
                              f"({len(ref[0])} detections in PyTorch): {type(e).__name__}: {e}") from e
        return ref, out

    image = torch.rand(_CHANNELS, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        scores = np.sort(graph(image, torch.tensor(0.0))[2].numpy())[::-1]
    if scores.size == 0:
        raise SeglabError("The model finds no detection even at score threshold 0 on the parity image, so the "
                          "export cannot be checked with detections.")
    threshold = 0.0 if scores.size <= PARITY_DETECTIONS else float(scores[PARITY_DETECTIONS - 1]
                                                                    + scores[PARITY_DETECTIONS]) / 2
    kw = {"size": size, "mask_threshold": mask_threshold, "box_atol": box_atol, "score_atol": score_atol,
          "min_mask_agreement": min_mask_agreement}
    detections = compare_detections("with detections", threshold, *both(image, threshold), **kw)
    if detections.detections == 0:
        detections.problems.append("PyTorch found no detection, so nothing was compared")
    grey = torch.full((_CHANNELS, *size), 0.5)
    none = compare_detections("no detection (grey image)", 1.0, *both(grey, 1.0), **kw)
    return [detections, none]
