"""The base of every prediction backend: reading images, normalising them, logits to label maps.

:class:`Predictor` is shared by :class:`seglab.inference.predictor.Segmenter` (PyTorch),
:class:`seglab.inference.onnx_backend.OnnxSegmenter` (onnxruntime) and
:class:`seglab.inference.instance_predictor.InstanceSegmenter` (Mask R-CNN checkpoints).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seglab.core.errors import SeglabError
from seglab.data import read_image

__all__ = ["ImageLike", "Predictor"]

ImageLike = np.ndarray | Image.Image | str | Path


class Predictor:
    """What every prediction backend shares: reading images, normalising them, and turning
    logits into probabilities and label maps. Subclasses set ``mean`` / ``std`` (``3 x 1 x 1``
    tensors) and implement :meth:`predict_logits` (:class:`Segmenter` for PyTorch,
    :class:`seglab.inference.onnx_backend.OnnxSegmenter` for onnxruntime)."""

    mean: torch.Tensor
    std: torch.Tensor
    task: str = "semantic"  # what ``predict`` returns: label maps (instance predictors: instances)

    @staticmethod
    def load(image: ImageLike) -> np.ndarray:
        """Any supported image input as an ``H x W x 3`` uint8 array."""
        if isinstance(image, (str, Path)):
            return read_image(image)
        if isinstance(image, Image.Image):
            return np.asarray(image.convert("RGB"))
        if isinstance(image, np.ndarray):
            if image.ndim == 2:
                image = np.repeat(image[..., None], 3, axis=2)
            if image.ndim != 3 or image.shape[2] not in (3, 4):
                raise SeglabError(f"Expected an H x W x 3 RGB array, got shape {image.shape}.")
            if image.dtype != np.uint8:
                raise SeglabError(f"Expected a uint8 RGB array (0-255), got dtype {image.dtype}; convert with .astype(np.uint8).")
            return image[..., :3]
        raise SeglabError(f"Cannot read an image from {type(image).__name__}: pass a path, a PIL image or a uint8 array.")

    def preprocess(self, image: ImageLike) -> torch.Tensor:
        """``1 x 3 x H x W`` normalised float32 tensor (CPU) at the image's own size."""
        array = self.load(image)
        x = torch.from_numpy(np.require(array, requirements=["C", "W"])).permute(2, 0, 1).float().div_(255)
        # In place: x is already a fresh float copy, and a 4000x3000 image's temporaries are 144 MB each.
        return x.sub_(self.mean).div_(self.std).unsqueeze(0)

    def predict_logits(self, image: ImageLike) -> torch.Tensor:
        """Logits ``C x H x W`` (float32, CPU) at the image's own size."""
        raise NotImplementedError

    def predict_proba(self, image: ImageLike) -> np.ndarray:
        """Class probabilities ``C x H x W`` (softmax; sigmoid for one-channel binary models)."""
        logits = self.predict_logits(image)
        probs = torch.sigmoid(logits) if logits.shape[0] == 1 else logits.softmax(0)
        return probs.numpy()

    def predict(self, image: ImageLike) -> np.ndarray:
        """Class ids ``H x W`` (int64) for one RGB image (path, PIL image or uint8 array)."""
        logits = self.predict_logits(image)
        if logits.shape[0] == 1:
            return (logits[0] > 0).long().numpy()
        return logits.argmax(0).numpy()
