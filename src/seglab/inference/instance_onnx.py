"""Instances from an exported Mask R-CNN ``.onnx`` file alone (onnxruntime), as :class:`InstanceSegmenter` gives.

The file (written by :func:`seglab.export.instance_onnx.export_instance_onnx`) takes one image at
its fixed export size and a score threshold. An image of that size goes in as it is, and the
result matches the PyTorch checkpoint's; another size is resized (bilinear) to the export size
first, and the boxes and mask probabilities are mapped back to the image's own size.

Example:
    >>> seg = OnnxInstanceSegmenter("mask_rcnn.onnx", score_threshold=0.5)   # doctest: +SKIP
    >>> found = seg.predict("slice.png")                                       # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seglab.core.errors import SeglabError
from seglab.inference.base import ImageLike, Predictor
from seglab.inference.instance_predictor import Instances
from seglab.inference.onnx_format import read_onnx_metadata

__all__ = ["OnnxInstanceSegmenter"]


class OnnxInstanceSegmenter(Predictor):
    """An exported Mask R-CNN in an onnxruntime session: an RGB image in, :class:`Instances` out.

    Args:
        path: ``.onnx`` file of an instance checkpoint.
        score_threshold: Detections scoring at or below it are dropped; default the file's (0.5 unless exported otherwise).
        mask_threshold: Mask probability from which a pixel belongs to the instance; default the file's.
        threads: onnxruntime intra-op threads; default all CPUs this process may use.
        providers: onnxruntime execution providers; default CPU.
    """

    backend = "onnxruntime"

    task = "instance"

    def __init__(self, path: str | Path, score_threshold: float | None = None, mask_threshold: float | None = None,
                 threads: int | None = None, providers: Sequence[str] | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        meta = read_onnx_metadata(self.path)
        if meta.get("task") != "instance":
            raise SeglabError(f"{str(self.path)!r} holds a {meta.get('task', 'semantic')} model: load it with "
                              "seglab.inference.onnx_backend.OnnxSegmenter.")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or max(1, len(os.sched_getaffinity(0)))
        options.log_severity_level = 3  # the mask loop's per-step shape notes are not for users
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as e:  # onnxruntime's own exception types
            raise SeglabError(f"onnxruntime cannot load {str(self.path)!r}: {e}") from e
        self.metadata = meta
        self.model_name: str = meta["model_name"]
        self.num_classes = int(meta["num_classes"])
        self.class_names = list(meta["class_names"])
        self.palette = [tuple(int(v) for v in c) for c in meta["palette"]]
        self.export_size = (int(meta["image_size"][0]), int(meta["image_size"][1]))
        self.score_threshold = meta["score_threshold"] if score_threshold is None else score_threshold
        self.mask_threshold = float(meta["mask_threshold"] if mask_threshold is None else mask_threshold)
        if not 0.0 <= self.mask_threshold <= 1.0:
            raise SeglabError(f"mask_threshold must lie in [0, 1], got {self.mask_threshold}.")
        self.mean = torch.zeros(3, 1, 1)  # images go in as [0, 1]: the model normalises itself
        self.std = torch.ones(3, 1, 1)

    @property
    def score_threshold(self) -> float:
        return self._score_threshold

    @score_threshold.setter
    def score_threshold(self, value: float) -> None:
        value = float(value)
        if not value >= 0.0:
            raise SeglabError(f"score_threshold must be >= 0 (scores lie in [0, 1]; above 1 keeps nothing), got {value}.")
        self._score_threshold = value

    def class_name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else f"class {label}"

    def predict(self, image: ImageLike) -> Instances:  # type: ignore[override]  (instances, not a label map)
        """The instances of one RGB image (path, PIL image or uint8 array) scoring above ``score_threshold``."""
        x = self.preprocess(image)  # 1 x 3 x h x w in [0, 1]
        (h, w), (eh, ew) = x.shape[-2:], self.export_size
        resized = (h, w) != (eh, ew)
        if resized:
            x = F.interpolate(x, size=(eh, ew), mode="bilinear", align_corners=False)
        feed = {self.metadata["input_name"]: x[0].numpy(),
                self.metadata["threshold_name"]: np.asarray(self.score_threshold, dtype=np.float32)}
        boxes, labels, scores, masks = self.session.run(list(self.metadata["output_names"]), feed)
        order = np.argsort(-scores, kind="stable")
        boxes, labels, scores, masks = boxes[order], labels[order], scores[order], masks[order, 0]
        if resized:
            boxes = boxes * np.asarray([w / ew, h / eh, w / ew, h / eh], dtype=np.float32)
            masks = (F.interpolate(torch.from_numpy(masks)[:, None], size=(h, w), mode="bilinear",
                                   align_corners=False)[:, 0].numpy() if len(masks) else np.zeros((0, h, w), np.float32))
        return Instances(boxes=boxes.astype(np.float32).reshape(-1, 4), labels=labels.astype(np.int64),
                         scores=scores.astype(np.float32), masks=(masks >= self.mask_threshold).reshape(-1, h, w))

    def predict_logits(self, image: ImageLike) -> torch.Tensor:
        raise SeglabError(f"{self.model_name} is an instance-segmentation model: it has no per-pixel logits. Use "
                          ".predict(image) for its instances, or .predict(image).label_map() for a class map.")
