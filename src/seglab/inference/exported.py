"""Open an exported model (``seglab export``) in the runtime a user picks: onnxruntime or OpenVINO."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from seglab.core.errors import SeglabError
from seglab.inference.onnx_backend import OnnxSegmenter

__all__ = ["EXPORTED_BACKENDS", "is_exported_file", "load_exported"]

#: Runtimes for exported files; an OpenVINO IR (``.xml``) runs in OpenVINO only.
EXPORTED_BACKENDS: tuple[str, ...] = ("onnxruntime", "openvino")


def is_exported_file(path: str | Path) -> bool:
    """Whether ``path`` names an exported model (``.onnx``, or an OpenVINO IR ``.xml``) rather than a checkpoint."""
    return Path(path).suffix.lower() in (".onnx", ".xml")


def load_exported(path: str | Path, backend: str | None = None, *, threads: int | None = None,
                  precision: str = "auto", tile: Sequence[int] | None = None,
                  tile_overlap: int = 32) -> OnnxSegmenter:
    """An :class:`OnnxSegmenter` or :class:`OpenVinoSegmenter` for ``path``.

    Args:
        path: ``.onnx`` (either runtime) or ``.xml`` (OpenVINO) file from ``seglab export``.
        backend: ``onnxruntime`` or ``openvino``; None: OpenVINO for ``.xml``, else onnxruntime.
        threads: Inference threads; default all CPUs this process may use.
        precision: OpenVINO's float precision (``auto``, ``f32``, ``bf16``); onnxruntime runs f32.
        tile, tile_overlap: Overlap-tile inference, as for ``Segmenter``.
    """
    is_ir = Path(path).suffix.lower() == ".xml"
    backend = backend or ("openvino" if is_ir else "onnxruntime")
    if backend not in EXPORTED_BACKENDS:
        raise SeglabError(f"Unknown backend {backend!r} for an exported model; choose one of {', '.join(EXPORTED_BACKENDS)}.")
    if backend == "onnxruntime":
        if is_ir:
            raise SeglabError(f"{str(path)!r} is an OpenVINO IR: run it with --backend openvino, or pass the .onnx file.")
        if precision not in ("auto", "f32"):
            raise SeglabError(f"--precision {precision} applies to the OpenVINO backend; onnxruntime runs the file as written.")
        return OnnxSegmenter(path, threads=threads, tile=tile, tile_overlap=tile_overlap)
    from seglab.inference.openvino_backend import OpenVinoSegmenter

    return OpenVinoSegmenter(path, threads=threads, precision=precision, tile=tile, tile_overlap=tile_overlap)
