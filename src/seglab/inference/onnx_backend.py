"""onnxruntime backend: predict from an exported ``.onnx`` file alone, and int8 quantization.

:class:`OnnxSegmenter` has the interface of :class:`seglab.inference.predictor.Segmenter` (``predict``,
``predict_proba``, ``predict_logits``, ``load``, ``class_names``, ``palette``, ``num_classes``)
and reads classes, palette and normalisation from the metadata :func:`seglab.export.onnx.export_onnx`
embeds. Pre- and post-processing are the PyTorch backend's own (same normalisation, same resize
to the training image size and back), so both backends give the same label maps.

:func:`quantize_onnx` writes a static int8 model (QDQ format, per-channel weights) calibrated on
a few images prepared exactly as for prediction, and reports its agreement with the fp32 model.

Example:
    >>> seg = OnnxSegmenter("segnet.onnx")                      # doctest: +SKIP
    >>> labels = seg.predict("street.png")                      # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seglab.ops.resize import forward_at_size
from seglab.core.errors import SeglabError
from seglab.inference.onnx_format import read_onnx_metadata
from seglab.inference.predictor import ImageLike, Predictor
from seglab.ops.tiling import predict_tiled

__all__ = ["OnnxSegmenter"]

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
        path: ``.onnx`` file written by :func:`seglab.export.onnx.export_onnx` (or :func:`quantize_onnx`).
        threads: Intra-op threads; default all CPUs this process may use.
        providers: onnxruntime execution providers; default CPU.
        tile: ``(h, w)`` for overlap-tile inference (as ``Segmenter``); ``None`` for whole images.
        tile_overlap: Pixels shared by neighbouring tiles.
    """

    backend = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None,
                 tile: Sequence[int] | None = None, tile_overlap: int = 32) -> None:
        self.path = Path(path)
        meta = self._read_metadata()
        if meta.get("task", "semantic") != "semantic":
            raise SeglabError(f"{str(self.path)!r} holds an instance (Mask R-CNN) model, not label maps: load it with "
                              "seglab.inference.instance_onnx.OnnxInstanceSegmenter.")
        self._open_runtime(threads, providers)
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

    def _read_metadata(self) -> dict[str, Any]:
        """The seglab metadata of :attr:`path` (classes, palette, normalisation, sizes)."""
        return read_onnx_metadata(self.path)

    def _open_runtime(self, threads: int | None, providers: Sequence[str] | None) -> None:
        """Load :attr:`path` into the runtime that :meth:`run` uses (an onnxruntime session here)."""
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(self.path), _session_options(threads),
                                                providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as e:  # onnxruntime's own exception types
            raise SeglabError(f"onnxruntime cannot load {str(self.path)!r}: {e}") from e
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
