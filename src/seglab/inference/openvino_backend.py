"""OpenVINO backend: predict from an exported ``.onnx`` file, or the int8 OpenVINO IR of
``seglab export --int8 --quantizer nncf``, with OpenVINO's CPU plugin.

:class:`OpenVinoSegmenter` is :class:`seglab.inference.onnx_backend.OnnxSegmenter` with OpenVINO
instead of onnxruntime underneath: the same file, metadata, pre- and post-processing, tiling and
label maps. OpenVINO reads seglab's ONNX export directly and folds batch norm. Int8 comes as an
OpenVINO IR (``.xml`` + ``.bin``, seglab's metadata in its ``rt_info``) quantized by NNCF, or as
the int8 QDQ ``.onnx`` of onnxruntime's quantizer; both run as int8 convolutions (VNNI where the
CPU has it).

``precision`` picks the CPU plugin's inference precision for the float parts of the graph:
``f32`` (exact to about 1e-5), ``bf16`` (AVX512-BF16/AMX CPUs; elsewhere OpenVINO falls back to
f32), or ``auto``: bf16 where the CPU runs it natively, else f32, and f32 for an int8 model. OpenVINO's own default is bf16 on
such CPUs; seglab never leaves it implicit, so a run says which precision it used.

Each input shape is compiled once (OpenVINO is fastest on static shapes; a whole image at the
model's training size and overlap tiles use one or two shapes).

Example:
    >>> seg = OpenVinoSegmenter("segnet.onnx", precision="bf16")   # doctest: +SKIP
    >>> labels = seg.predict("street.png")                         # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from seglab.core.errors import SeglabError
from seglab.inference.onnx_backend import OnnxSegmenter
from seglab.inference.onnx_format import METADATA_KEY, parse_metadata, read_onnx_metadata

__all__ = ["OPENVINO_PRECISIONS", "OpenVinoSegmenter", "openvino_missing", "read_openvino_metadata",
           "resolve_openvino_precision"]

OPENVINO_PRECISIONS: tuple[str, ...] = ("auto", "f32", "bf16")
#: Compiled shapes kept per segmenter; TTA scales and tiles need a few, arbitrary sizes would grow it.
_MAX_COMPILED = 8


def openvino_missing() -> str | None:
    """Why the OpenVINO backend cannot run here (a sentence with the fix), or None when it can."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "OpenVINO is not installed: pip install 'seglab[openvino]' (or pip install openvino)."
    return None


def read_openvino_metadata(path: str | Path) -> dict[str, Any]:
    """seglab's metadata of an ``.onnx`` file or of an OpenVINO IR ``.xml`` written by seglab."""
    path = Path(path)
    if path.suffix.lower() != ".xml":
        return read_onnx_metadata(path)
    if not path.is_file():
        raise SeglabError(f"OpenVINO IR file {str(path)!r} does not exist.")
    if openvino_missing():
        raise SeglabError(openvino_missing())
    import openvino as ov

    try:
        model = ov.Core().read_model(str(path))
    except Exception as e:  # OpenVINO raises its own exception types
        raise SeglabError(f"OpenVINO cannot read {str(path)!r} (its .bin must lie beside it): {e}") from e
    raw = model.get_rt_info([METADATA_KEY]).astype(str) if model.has_rt_info([METADATA_KEY]) else ""
    return parse_metadata({METADATA_KEY: raw}, path)


def resolve_openvino_precision(precision: str) -> str:
    """``f32`` or ``bf16`` for ``precision`` (``auto``: bf16 where the CPU has native bf16)."""
    if precision not in OPENVINO_PRECISIONS:
        raise SeglabError(f"Unknown OpenVINO precision {precision!r}; choose one of {', '.join(OPENVINO_PRECISIONS)}.")
    if precision != "auto":
        return precision
    import openvino as ov

    return "bf16" if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"


class OpenVinoSegmenter(OnnxSegmenter):
    """An exported model compiled by OpenVINO for the CPU, with :class:`OnnxSegmenter`'s interface.

    Args:
        path: ``.onnx`` file written by ``seglab export`` (fp32, or the int8 file of ``--int8``), or the
            ``.xml`` of ``seglab export --int8 --quantizer nncf``.
        threads: Inference threads; default all CPUs this process may use.
        precision: ``auto``, ``f32`` or ``bf16`` (see the module docstring).
        tile: ``(h, w)`` for overlap-tile inference; ``None`` for whole images.
        tile_overlap: Pixels shared by neighbouring tiles.
    """

    backend = "openvino"

    def __init__(self, path: str | Path, threads: int | None = None, precision: str = "auto",
                 tile: Sequence[int] | None = None, tile_overlap: int = 32) -> None:
        if precision not in OPENVINO_PRECISIONS:
            raise SeglabError(f"Unknown OpenVINO precision {precision!r}; choose one of {', '.join(OPENVINO_PRECISIONS)}.")
        self.precision = precision  # resolved once the file's metadata is read
        super().__init__(path, threads=threads, tile=tile, tile_overlap=tile_overlap)

    def _read_metadata(self) -> dict[str, Any]:
        meta = read_openvino_metadata(self.path)
        # An int8 model's float remainder stays f32 under auto: with bf16 the shipped CamVid model's int8
        # file fell below 99 % agreement with fp32 (docs/benchmarks.md), for no measurable speed.
        if self.precision == "auto" and "quantization" in meta:
            self.precision = "f32"
        return meta

    def _open_runtime(self, threads: int | None, providers: Sequence[str] | None) -> None:
        if openvino_missing():
            raise SeglabError(openvino_missing())
        import openvino as ov

        self.precision = resolve_openvino_precision(self.precision)
        self.core = ov.Core()
        self.config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": int(threads or max(1, len(os.sched_getaffinity(0)))),
        }
        try:
            self.model = self.core.read_model(str(self.path))
        except Exception as e:  # OpenVINO raises its own exception types
            raise SeglabError(f"OpenVINO cannot read {str(self.path)!r}: {e}") from e
        self.input_name = self.model.inputs[0].get_any_name()
        self._compiled: dict[tuple[int, ...], Any] = {}

    def compiled_for(self, shape: Sequence[int]) -> Any:
        """The model compiled for inputs of ``shape`` (``N x C x H x W``), compiling it on first use."""
        key = tuple(int(s) for s in shape)
        if key not in self._compiled:
            if len(self._compiled) >= _MAX_COMPILED:
                self._compiled.pop(next(iter(self._compiled)))
            model = self.model.clone()
            model.reshape({self.input_name: list(key)})
            try:
                self._compiled[key] = self.core.compile_model(model, "CPU", self.config)
            except Exception as e:
                raise SeglabError(f"OpenVINO cannot compile {str(self.path)!r} for a {key} input: {e}") from e
        return self._compiled[key]

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a ``N x 3 x H x W`` batch, from OpenVINO."""
        x = x.float().contiguous()
        out = self.compiled_for(x.shape)(x.numpy())[0]
        return torch.from_numpy(out.copy())  # the request's buffer is reused by the next call
