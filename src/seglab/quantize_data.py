"""Calibration images for int8 quantization: the first N training images of a checkpoint's data set."""

from __future__ import annotations

import numpy as np

from .config import apply_overrides
from .engine.checkpoint import checkpoint_config, load_checkpoint

__all__ = ["calibration_images"]


def calibration_images(checkpoint: str, overrides: list[str], count: int) -> list[np.ndarray]:
    """``count`` raw RGB training images (``--data.root`` etc. may be overridden)."""
    import dataclasses

    from .data import build_dataset

    cfg = apply_overrides(checkpoint_config(load_checkpoint(checkpoint)), overrides)
    data = build_dataset(dataclasses.replace(cfg.data, limit=count, image_size=None), cfg.data.train_split, train=False)
    return [data.load_image(i) for i in range(len(data))]
