"""Pictures of instance predictions: each instance in its own colour, with its contour, box, class and score."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["draw_instances", "instance_colours", "mask_contour"]


def instance_colours(count: int) -> list[tuple[int, int, int]]:
    """``count`` distinct saturated colours: hues a golden-ratio step apart, so neighbours in score order differ."""
    colours = []
    for i in range(count):
        r, g, b = colorsys.hsv_to_rgb((0.13 + i * 0.618033988749895) % 1.0, 0.85, 1.0 if i % 2 == 0 else 0.8)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return colours


def mask_contour(mask: np.ndarray) -> np.ndarray:
    """The pixels of a bool ``H x W`` mask with a 4-neighbour outside it (the image border counts as outside)."""
    inner = np.pad(mask, 1, constant_values=False)
    interior = inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:]
    return mask & ~interior


def draw_instances(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, masks: np.ndarray,
                   class_names: Sequence[str], alpha: float = 0.5) -> np.ndarray:
    """An ``H x W x 3`` uint8 overlay: each mask blended in its colour (highest score on top), its contour
    in full colour, its box, and ``"<class> <score>"`` on a filled label at the box's top-left corner."""
    colours = instance_colours(len(labels))
    canvas = image.astype(np.float32).copy()
    for i in range(len(labels) - 1, -1, -1):  # lowest score first, so higher scores end on top
        canvas[masks[i]] = canvas[masks[i]] * (1 - alpha) + np.asarray(colours[i], np.float32) * alpha
    out = canvas.round().clip(0, 255).astype(np.uint8)
    for i in range(len(labels) - 1, -1, -1):
        out[mask_contour(masks[i])] = colours[i]
    picture = Image.fromarray(out)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    for i in range(len(labels) - 1, -1, -1):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        draw.rectangle([x1, y1, x2, y2], outline=colours[i], width=1)
        label = int(labels[i])
        text = f"{class_names[label] if 0 <= label < len(class_names) else f'class {label}'} {float(scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        ty = y1 - (bottom - top) - 2 if y1 >= (bottom - top) + 2 else y1  # above the box, or inside at the top
        draw.rectangle([x1, ty, x1 + right - left + 2, ty + bottom - top + 2], fill=colours[i])
        dark = 0.299 * colours[i][0] + 0.587 * colours[i][1] + 0.114 * colours[i][2] < 140
        draw.text((x1 + 1 - left, ty + 1 - top), text, fill=(255, 255, 255) if dark else (0, 0, 0), font=font)
    return np.asarray(picture)
