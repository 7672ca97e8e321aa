"""Pictures of predictions: colour masks, overlays with a class legend, and safe PNG writing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from seglab.core.atomic import atomic_write

__all__ = ["colorize", "overlay", "add_legend", "save_png", "heatmap"]

# Anchor colours of a perceptually ordered dark-to-bright map (black, purple, orange, pale yellow).
_HEAT_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)


def heatmap(values: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """``H x W`` non-negative values (e.g. entropy) to an ``H x W x 3`` uint8 heat map; 0 is black."""
    top = float(vmax if vmax is not None else max(float(values.max(initial=0.0)), 1e-12))
    t = np.clip(values / top, 0.0, 1.0) * (len(_HEAT_ANCHORS) - 1)
    low = np.floor(t).astype(np.int64).clip(0, len(_HEAT_ANCHORS) - 2)
    frac = (t - low)[..., None]
    return (_HEAT_ANCHORS[low] * (1 - frac) + _HEAT_ANCHORS[low + 1] * frac).round().astype(np.uint8)


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int | None = None) -> np.ndarray:
    """``H x W`` class ids to an ``H x W x 3`` uint8 colour image; unknown and ignored ids are black."""
    lut = np.zeros((max(int(mask.max(initial=0)) + 1, len(palette)), 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    if ignore_index is not None and ignore_index < len(lut):
        lut[ignore_index] = 0
    return lut[mask.astype(np.int64)]


def overlay(image: np.ndarray, mask: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5) -> np.ndarray:
    """Blend the colour mask over an ``H x W x 3`` uint8 image."""
    colour = colorize(mask, palette).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + colour * alpha).round().clip(0, 255).astype(np.uint8)


def add_legend(image: np.ndarray, class_ids: Sequence[int], class_names: Sequence[str],
               palette: Sequence[Sequence[int]]) -> np.ndarray:
    """Append a legend column listing ``class_ids`` (a swatch and a name each) to the right of ``image``."""
    font = ImageFont.load_default()
    row = 14
    names = [class_names[i] if i < len(class_names) else f"class {i}" for i in class_ids]
    width = 28 + max((int(font.getlength(n)) for n in names), default=40)
    height = max(image.shape[0], row * len(names) + 8)
    canvas = Image.new("RGB", (image.shape[1] + width, height), (255, 255, 255))
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = image.shape[1] + 6
    for k, (cid, name) in enumerate(zip(class_ids, names)):
        y = 4 + k * row
        colour = tuple(int(v) for v in palette[cid]) if cid < len(palette) else (0, 0, 0)
        draw.rectangle([x0, y, x0 + 10, y + 10], fill=colour, outline=(0, 0, 0))
        draw.text((x0 + 16, y - 1), name, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def save_png(array: np.ndarray, path: str | Path) -> None:
    """Write ``array`` as PNG atomically (uint8 or uint16 single-channel, or RGB)."""
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
