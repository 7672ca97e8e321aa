"""Model calls of the server: one forward pass for a batch of same-size images.

The batch goes through exactly the computation of :meth:`Predictor.predict` (same normalisation,
resize to the training size and back, same autocast), only with ``N`` images stacked, so a request
gets the same labels whether it was batched or not. Predictors that cannot stack (test-time
augmentation, overlap tiling) and Monte-Carlo dropout requests run image by image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from seglab.core.errors import SeglabError
from seglab.core.runtime import autocast
from seglab.ops.resize import forward_at_size

__all__ = ["Prediction", "ModelRunner"]


@dataclass
class Prediction:
    """One image's result: ``labels`` (H x W int64), uncertainty ``maps`` for MC dropout, timing."""

    labels: np.ndarray
    model_ms: float
    batch_size: int
    maps: dict[str, np.ndarray] = field(default_factory=dict)


class ModelRunner:
    """Runs a :class:`Segmenter` or :class:`OnnxSegmenter` on batches; called from the inference thread only."""

    def __init__(self, segmenter: Any) -> None:
        self.segmenter = segmenter
        stackable = getattr(segmenter, "tta", None) is None and getattr(segmenter, "tile", None) is None
        self.stackable = stackable and (hasattr(segmenter, "forward_model") or hasattr(segmenter, "run"))
        self.supports_mc = hasattr(segmenter, "forward_model")  # the ONNX graph has no dropout to sample

    def logits(self, images: list[np.ndarray]) -> torch.Tensor:
        """``N x C x H x W`` float32 CPU logits of same-size images."""
        seg = self.segmenter
        if not self.stackable:
            return torch.stack([seg.predict_logits(im) for im in images])
        x = torch.cat([seg.preprocess(im) for im in images])
        with torch.inference_mode():
            if hasattr(seg, "forward_model"):
                x = x.to(seg.device)
                with autocast(seg.device, seg.amp_dtype):
                    out = forward_at_size(seg.forward_model, x, seg.infer_size)
                return out.float().cpu()
            return forward_at_size(seg.run, x, seg.infer_size).float()

    def run(self, images: list[np.ndarray], mc_samples: int = 0) -> list[Prediction]:
        """Predictions of ``images`` (all the same size), in order."""
        if len({im.shape for im in images}) > 1:
            raise SeglabError("ModelRunner.run batches images of one size only; group them by size first.")
        start = time.perf_counter()
        if mc_samples:
            results = [self.segmenter.predict_mc(im, mc_samples) for im in images]
            ms = (time.perf_counter() - start) * 1000
            return [Prediction(r["labels"], ms, len(images), {k: r[k] for k in ("entropy", "mutual_info")})
                    for r in results]
        logits = self.logits(images)
        labels = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
        ms = (time.perf_counter() - start) * 1000
        return [Prediction(lab.numpy(), ms, len(images)) for lab in labels]

    def warm_up(self) -> None:
        """One prediction at the training size (or 64 x 64), so the first request pays no start-up cost."""
        h, w = getattr(self.segmenter, "infer_size", None) or (64, 64)
        self.run([np.zeros((h, w, 3), dtype=np.uint8)])
