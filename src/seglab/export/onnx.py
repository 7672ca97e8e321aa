"""ONNX export of seglab models: one self-describing ``.onnx`` file, checked against PyTorch.

:func:`export_onnx` turns a checkpoint (or a model) into an ONNX file with dynamic batch, height
and width, embeds everything prediction needs (model name, classes, palette, normalisation, image
size) as JSON in the model's ``metadata_props``, and runs the file in onnxruntime next to the
eager model at the export size and at a second size. The file is only written (atomically) when
the argmax of the two agrees on at least 99.9 % of the pixels.

SegNet-style max-unpooling is exported through its 2-bit window codes
(:mod:`seglab.models.layers.compact_pool`), since ``max_unpool2d`` has no dependable ONNX export; the
outputs are identical to the int64-index model.

Example:
    >>> report = export_onnx("runs/camvid/best.pt", "segnet.onnx")   # doctest: +SKIP
    >>> print(report.format())                                         # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seglab.core.config import IMAGENET_MEAN, IMAGENET_STD
from seglab.data import default_palette
from seglab.tasks.checkpoint import model_from_checkpoint, read_checkpoint
from seglab.core.errors import SeglabError
from seglab.inference.onnx_format import ONNX_FORMAT, METADATA_KEY, Parity, compare_logits, read_onnx_metadata
from seglab.models.layers.blocks import set_index_format

__all__ = ["ONNX_FORMAT", "ExportReport", "Parity", "compare_logits", "export_onnx", "parity_check",
           "read_onnx_metadata"]

INPUT_NAME, OUTPUT_NAME = "image", "logits"


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how well it matches PyTorch."""

    path: Path
    model_name: str
    exporter: str  # "dynamo" or "torchscript"
    opset: int
    dynamic_hw: bool
    parity: list[Parity]
    size_bytes: int
    fallback_reason: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def format(self) -> str:
        """Human-readable summary, one fact per line."""
        axes = "batch, height, width" if self.dynamic_hw else "batch"
        lines = [f"seglab export: {self.model_name} -> {self.path} ({self.size_bytes / 1e6:.1f} MB, "
                 f"{self.exporter} exporter, opset {self.opset}, dynamic {axes})"]
        if self.fallback_reason:
            lines.append(f"  dynamo exporter failed, used TorchScript: {self.fallback_reason}")
        lines += [f"  {p.format()}" for p in self.parity]
        return "\n".join(lines)


def export_onnx(
    source: str | Path | nn.Module,
    out_path: str | Path,
    *,
    opset: int = 18,
    dynamic_hw: bool = True,
    input_size: Sequence[int] | None = None,
    second_size: Sequence[int] | None = None,
    metadata: dict[str, Any] | None = None,
    min_agreement: float = 99.9,
    verbose: bool = True,
) -> ExportReport:
    """Export a checkpoint or model to ONNX, embed its metadata and check parity with PyTorch.

    Args:
        source: A seglab checkpoint path, or a model (then describe it with ``metadata``).
        out_path: The ``.onnx`` file to write (atomically, only if the parity check passes).
        opset: ONNX opset version.
        dynamic_hw: Make height and width dynamic (batch always is).
        input_size: ``(H, W)`` of the example input; default the checkpoint's training image
            size, else 360x480.
        second_size: A second ``(H, W)`` the file must run at; default an odd size near
            ``input_size`` (ignored when ``dynamic_hw`` is false).
        metadata: Overrides for the embedded metadata (``model_name``, ``num_classes``,
            ``class_names``, ``palette``, ``mean``, ``std``, ``image_size``, ``ignore_index``);
            ``model_out_channels`` is always taken from the model's output.
        min_agreement: Least argmax agreement (percent) accepted at every checked size.
        verbose: Print the report.

    Returns:
        An :class:`ExportReport`.

    Raises:
        SeglabError: The model cannot be exported, does not run in onnxruntime, or disagrees.
    """
    model, meta = _load_source(source, metadata)
    size = tuple(input_size or meta.get("image_size") or (360, 480))
    model = set_index_format(copy.deepcopy(model).float().cpu().eval(), "uint8")  # no max_unpool2d
    example = torch.randn(1, len(meta["mean"]), *size)
    meta = _complete_metadata(meta, model, example)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.name}.") as tmp:
        raw = Path(tmp) / "raw.onnx"
        exporter, fallback = _export_any(model, example, raw, opset, dynamic_hw, meta["model_name"])
        meta.update(exporter=exporter, opset=opset, dynamic_hw=dynamic_hw, export_size=list(size))
        final = Path(tmp) / "final.onnx"
        _write_with_metadata(raw, final, meta)
        checks = [(1, size), (2, tuple(second_size or _second_size(size)) if dynamic_hw else size)]
        parity = [parity_check(model, final, batch, hw) for batch, hw in checks]
        report = ExportReport(out_path, meta["model_name"], exporter, opset, dynamic_hw, parity,
                              final.stat().st_size, fallback, meta)
        bad = [p for p in parity if not p.argmax_agreement >= min_agreement]
        if bad:
            raise SeglabError(f"The ONNX export of {meta['model_name']!r} disagrees with PyTorch "
                              f"({bad[0].format()}; at least {min_agreement} % needed); nothing was written.")
        os.replace(final, out_path)
    if verbose:
        print(report.format())
    return report


def parity_check(model: nn.Module, onnx_path: str | Path, batch: int, size: Sequence[int]) -> Parity:
    """Run ``model`` and the ONNX file on the same random input; compare logits and argmax."""
    import onnxruntime as ort

    channels = len(read_onnx_metadata(onnx_path)["mean"])
    x = torch.randn(batch, channels, *size, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        ref = model(x).numpy()
    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    except Exception as e:  # onnxruntime raises its own exception types
        raise SeglabError(f"The exported ONNX model does not run in onnxruntime at {batch}x{size[0]}x{size[1]}: "
                          f"{type(e).__name__}: {e}") from e
    if out.shape != ref.shape:
        raise SeglabError(f"The exported ONNX model returns shape {out.shape} at input {tuple(x.shape)}, "
                          f"PyTorch {ref.shape}: the export fixed a size it should not have.")
    return compare_logits(ref, out)


# ---------------------------------------------------------------------------------------------- helpers


def _load_source(source: str | Path | nn.Module, overrides: dict[str, Any] | None) -> tuple[nn.Module, dict]:
    """The model and its metadata, from a checkpoint or from a model plus ``overrides``."""
    if isinstance(source, nn.Module):
        meta: dict[str, Any] = {"model_name": type(source).__name__, "mean": list(IMAGENET_MEAN),
                                "std": list(IMAGENET_STD), "image_size": None, "ignore_index": None}
        model = source
    else:
        ckpt = read_checkpoint(source)
        model = model_from_checkpoint(ckpt, source)
        m = ckpt.meta
        meta = {"model_name": m.model_name, "num_classes": m.num_classes, "class_names": m.class_names,
                "palette": m.palette, "mean": m.mean, "std": m.std, "image_size": m.image_size,
                "ignore_index": m.ignore_index, "model_out_channels": m.model_num_classes}  # 1: binary sigmoid head
    meta.update(overrides or {})
    return model, meta


def _complete_metadata(meta: dict[str, Any], model: nn.Module, example: torch.Tensor) -> dict[str, Any]:
    """Fill class count, names and palette from a trial forward; reject non-segmentation outputs."""
    name = meta["model_name"]
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as e:
        raise SeglabError(f"Model {name!r} fails on a {tuple(example.shape)} input before export: {e}") from e
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[-2:] != example.shape[-2:]:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SeglabError(f"Model {name!r} cannot be exported: it must return N x K x H x W logits at the input "
                          f"size (valid-convolution models are not supported), got {got} for {tuple(example.shape)}.")
    num_classes = meta.get("num_classes") or int(out.shape[1])
    meta = {"format": ONNX_FORMAT, **meta, "num_classes": num_classes, "model_out_channels": int(out.shape[1])}
    meta["class_names"] = list(meta.get("class_names") or [f"class_{i}" for i in range(num_classes)])
    meta["palette"] = [list(map(int, c)) for c in (meta.get("palette") or default_palette(num_classes))]
    meta["image_size"] = list(meta["image_size"]) if meta.get("image_size") else None
    meta.update(input_name=INPUT_NAME, output_name=OUTPUT_NAME)
    return meta


def _export_any(model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic_hw: bool,
                name: str) -> tuple[str, str | None]:
    """Export with the dynamo exporter, else the TorchScript one; returns (exporter, why dynamo failed)."""
    errors: dict[str, str] = {}
    for exporter in ("dynamo", "torchscript"):
        try:
            _torch_export(model, example, path, opset, dynamic_hw, dynamo=exporter == "dynamo")
            return exporter, errors.get("dynamo")
        except Exception as e:  # each exporter raises its own error types
            errors[exporter] = _first_line(e)
    raise SeglabError(f"Model {name!r} cannot be exported to ONNX. Dynamo exporter: {errors['dynamo']} "
                      f"TorchScript exporter: {errors['torchscript']}")


def _first_line(error: BaseException, limit: int = 300) -> str:
    """``Type: first non-empty line`` of an exception, shortened (exporter messages run to pages)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _torch_export(model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic_hw: bool,
                  dynamo: bool) -> None:
    """One ``torch.onnx.export`` call; the exporters' progress chatter and graph dumps are swallowed."""
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    kwargs: dict[str, Any] = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset)
    if dynamo:
        dim = torch.export.Dim.DYNAMIC
        kwargs.update(dynamo=True, external_data=False, dynamic_shapes=({k: dim for k in axes},))
    else:
        kwargs.update(dynamo=False, dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes})
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), torch.no_grad(), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript fallback is legacy by choice
        torch.onnx.export(model, (example,), str(path), **kwargs)
    if not path.is_file():
        raise RuntimeError("the exporter wrote no file")


def _write_with_metadata(src: Path, dst: Path, meta: dict[str, Any]) -> None:
    """Copy the ONNX model at ``src`` to ``dst`` with ``meta`` as JSON in ``metadata_props``."""
    import onnx

    proto = onnx.load(str(src))
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta))
    onnx.save(proto, str(dst))


def _second_size(size: Sequence[int]) -> tuple[int, int]:
    """An odd size about 3/4 of ``size``, so the check also covers ceil-mode pooling."""
    return tuple(max(9, (s * 3 // 4) | 1) for s in size[-2:])  # type: ignore[return-value]
