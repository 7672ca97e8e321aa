"""Prediction from an instance (Mask R-CNN, ``task: instance``) checkpoint: boxes, classes, scores, masks.

``Segmenter.from_checkpoint`` returns an :class:`InstanceSegmenter` for such checkpoints, so one
call serves both tasks: label maps for semantic checkpoints, :class:`Instances` for instance ones.

Example:
    >>> seg = Segmenter.from_checkpoint("runs/mask_rcnn_isbi/best.pt", score_threshold=0.5)  # doctest: +SKIP
    >>> found = seg.predict("slice.png")        # Instances: boxes N x 4, labels, scores, masks N x H x W
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seglab.core.errors import SeglabError
from seglab.core.runtime import autocast, resolve_amp, select_device
from seglab.inference.base import ImageLike, Predictor
from seglab.tasks.checkpoint import Checkpoint, model_from_checkpoint, read_checkpoint

__all__ = ["InstanceSegmenter", "Instances"]


@dataclass
class Instances:
    """The detections of one image, highest score first (all NumPy arrays on the CPU).

    Attributes:
        boxes: ``N x 4`` float32 ``(x1, y1, x2, y2)`` in pixels of the image.
        labels: ``N`` int64 class ids (``1..K-1``; 0 is the background).
        scores: ``N`` float32 detection scores, descending.
        masks: ``N x H x W`` bool, at the image's own size.
    """

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def above(self, score_threshold: float) -> Instances:
        """The instances scoring at least ``score_threshold``: a prefix, since they are in score order."""
        n = int(np.count_nonzero(self.scores >= score_threshold))
        return Instances(self.boxes[:n], self.labels[:n], self.scores[:n], self.masks[:n])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def id_map(self) -> np.ndarray:
        """``H x W`` uint16 instance ids: 0 background, ``i + 1`` for instance ``i`` (score order); where
        masks overlap the higher-scoring instance (the lower id) is on top."""
        if len(self) >= 2**16:
            raise SeglabError(f"{len(self)} instances do not fit a 16-bit id map; raise score_threshold.")
        ids = np.zeros(self.image_size, dtype=np.uint16)
        for i in range(len(self) - 1, -1, -1):  # lowest score first, so higher scores overwrite
            ids[self.masks[i]] = i + 1
        return ids

    def label_map(self) -> np.ndarray:
        """``H x W`` int64 class ids of the instances (the highest score on top), as semantic models give."""
        labels = np.zeros(self.image_size, dtype=np.int64)
        for i in range(len(self) - 1, -1, -1):
            labels[self.masks[i]] = self.labels[i]
        return labels


class InstanceSegmenter(Predictor):
    """A Mask R-CNN model plus its classes: an RGB image in, :class:`Instances` out.

    The model normalises and resizes images itself (torchvision's ``GeneralizedRCNNTransform``), so
    images go in as floats in [0, 1] at their own size (``mean`` 0, ``std`` 1 here) and masks come
    back at that size.

    Args:
        score_threshold: Detections scoring below it are dropped (0.5 by default).
        mask_threshold: A mask pixel belongs to the instance where its probability is at least this.
    """

    task = "instance"

    def __init__(self, model: nn.Module, num_classes: int, class_names: Sequence[str], palette: Sequence[Sequence[int]],
                 device: str | torch.device = "auto", amp: str = "none", score_threshold: float = 0.5,
                 mask_threshold: float = 0.5, model_name: str = "model") -> None:
        if not 0.0 <= mask_threshold <= 1.0:
            raise SeglabError(f"mask_threshold must lie in [0, 1], got {mask_threshold}.")
        self.device = device if isinstance(device, torch.device) else select_device(device)
        self.model = model.to(self.device).eval()
        self.amp_dtype = resolve_amp(amp, self.device)
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.palette = [tuple(int(v) for v in c) for c in palette]
        self.model_name = model_name
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold
        self.mean = torch.zeros(3, 1, 1)
        self.std = torch.ones(3, 1, 1)

    @property
    def score_threshold(self) -> float:
        return self._score_threshold

    @score_threshold.setter
    def score_threshold(self, value: float) -> None:
        self._score_threshold = _checked_threshold(value)

    @classmethod
    def from_checkpoint(cls, path: str | Path | Checkpoint, device: str = "auto", amp: str = "none",
                        score_threshold: float = 0.5, mask_threshold: float = 0.5) -> InstanceSegmenter:
        """Rebuild the model and its classes from an instance checkpoint (a file, or one already read)."""
        ckpt = path if isinstance(path, Checkpoint) else read_checkpoint(path)
        meta, where = ckpt.meta, "checkpoint" if isinstance(path, Checkpoint) else str(path)
        if meta.task != "instance":
            raise SeglabError(f"Checkpoint {where!r} was trained for task: {meta.task} ({meta.model_name}), not "
                              "instance; load it with Segmenter.from_checkpoint, which predicts label maps.")
        return cls(model_from_checkpoint(ckpt, where), meta.num_classes, meta.class_names, meta.palette, device=device,
                   amp=amp, score_threshold=score_threshold, mask_threshold=mask_threshold, model_name=meta.model_name)

    def class_name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else f"class {label}"

    def predict(self, image: ImageLike) -> Instances:  # type: ignore[override]  (instances, not a label map)
        """The instances of one RGB image (path, PIL image or uint8 array) scoring at least ``score_threshold``."""
        return self.predict_batch([image])[0]

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[ImageLike], score_threshold: float | None = None) -> list[Instances]:
        """The instances of several images in one forward pass (torchvision's list input), in order.

        Each image is resized and normalised on its own, but the model pads the batch to its largest
        resized size, so only images of one size give what :meth:`predict` gives (up to float rounding);
        with other sizes in the batch the extra padding moves anchors and border features.
        ``score_threshold`` overrides the predictor's for this call.
        """
        threshold = self.score_threshold if score_threshold is None else _checked_threshold(score_threshold)
        xs = [self.preprocess(image)[0].to(self.device) for image in images]  # 3 x H x W in [0, 1]
        with autocast(self.device, self.amp_dtype):
            outs = self.model(xs)
        return [self._instances(out, x.shape[-2:], threshold) for out, x in zip(outs, xs)]

    def _instances(self, out: dict[str, torch.Tensor], size: torch.Size, threshold: float) -> Instances:
        h, w = size
        scores = out["scores"].float().cpu()
        keep = torch.nonzero(scores >= threshold).flatten()
        keep = keep[torch.argsort(scores[keep], descending=True, stable=True)]
        masks = out["masks"].float().cpu()[keep]
        masks = masks[:, 0] if masks.ndim == 4 else masks
        return Instances(
            boxes=out["boxes"].float().cpu()[keep].reshape(-1, 4).numpy(),
            labels=out["labels"].cpu()[keep].to(torch.int64).numpy(),
            scores=scores[keep].numpy(),
            masks=(masks >= self.mask_threshold).reshape(-1, h, w).numpy(),
        )

    def predict_logits(self, image: ImageLike) -> torch.Tensor:
        raise SeglabError(f"{self.model_name} is an instance-segmentation model: it has no per-pixel logits. Use "
                          ".predict(image) for its instances, or .predict(image).label_map() for a class map.")


def _checked_threshold(value: float) -> float:
    value = float(value)
    if not value >= 0.0:  # also refuses NaN
        raise SeglabError(f"score_threshold must be >= 0 (scores lie in [0, 1]; above 1 keeps nothing), got {value}.")
    return value
