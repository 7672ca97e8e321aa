"""Model calls of the server for an instance (Mask R-CNN) model: one forward pass for a batch of images.

torchvision's Mask R-CNN takes a list of images and resizes, normalises and post-processes each on
its own, but pads the batch to its largest resized size. The batcher only groups images of one
height and width, whose padding is the same alone or together, so a batched request gets the
detections of :meth:`InstanceSegmenter.predict` (up to float rounding of the batched convolutions).
Mixing sizes would move anchors and border features (a check on a tiny random model: scores
shifted in the third decimal, boxes by pixels), which is why the grouping stays by size.

The model runs with score threshold 0 (keeping what its own ``box_score_thresh`` lets through) and
each request keeps the instances at or above its ``score_threshold`` afterwards, so requests with
different thresholds still share a batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from seglab.core.errors import SeglabError
from seglab.inference.instance_predictor import Instances

__all__ = ["InstancePrediction", "InstanceRunner"]


@dataclass
class InstancePrediction:
    """One image's detections (all the model returned, in score order) and timing."""

    instances: Instances
    model_ms: float
    batch_size: int


class InstanceRunner:
    """Runs an :class:`InstanceSegmenter` on batches; called from the inference thread only."""

    supports_mc = False  # Mask R-CNN has no dropout to sample

    def __init__(self, segmenter: Any) -> None:
        self.segmenter = segmenter

    def run(self, images: list[np.ndarray], mc_samples: int = 0) -> list[InstancePrediction]:
        """Predictions of ``images`` (all the same size), in order."""
        if len({im.shape for im in images}) > 1:
            raise SeglabError("InstanceRunner.run batches images of one size only; group them by size first.")
        if mc_samples:
            raise SeglabError("Monte-Carlo dropout does not apply to an instance-segmentation model.")
        start = time.perf_counter()
        found = self.segmenter.predict_batch(images, score_threshold=0.0)
        ms = (time.perf_counter() - start) * 1000
        return [InstancePrediction(instances, ms, len(images)) for instances in found]

    def warm_up(self) -> None:
        """One prediction of a 64 x 64 image, so the first request pays no start-up cost."""
        self.run([np.zeros((64, 64, 3), dtype=np.uint8)])
