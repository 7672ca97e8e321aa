"""What POST /v1/segment answers: the JSON summary and the PNG pictures, at the image's own size."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

from seglab.apps.serve.runner import Prediction
from seglab.apps.visualize import colorize, heatmap, overlay

__all__ = ["png_bytes", "summary", "picture", "page_maps"]


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)  # speed over size: it crosses loopback
    return buf.getvalue()


def summary(seg: Any, prediction: Prediction, model_info: dict[str, Any]) -> dict[str, Any]:
    """Classes present (id, name, colour, pixel fraction), image size, model, timings."""
    labels = prediction.labels
    ids, counts = np.unique(labels, return_counts=True)
    total = float(labels.size)
    classes = [{"id": int(i), "name": seg.class_names[i] if i < len(seg.class_names) else f"class {i}",
                "color": list(seg.palette[i]) if i < len(seg.palette) else [0, 0, 0],
                "fraction": round(float(c) / total, 6)} for i, c in zip(ids, counts)]
    return {"task": "semantic", "image_size": {"height": int(labels.shape[0]), "width": int(labels.shape[1])},
            "model": model_info, "classes": classes,
            "inference_ms": round(prediction.model_ms, 3), "batch_size": prediction.batch_size}


def _labels_array(seg: Any, labels: np.ndarray) -> np.ndarray:
    return labels.astype(np.uint8 if seg.num_classes <= 256 else np.uint16)


def picture(seg: Any, image: np.ndarray, prediction: Prediction, kind: str, alpha: float) -> bytes:
    """The ``labels`` (class ids), ``color`` or ``overlay`` PNG."""
    if kind == "labels":
        return png_bytes(_labels_array(seg, prediction.labels))
    if kind == "color":
        return png_bytes(colorize(prediction.labels, seg.palette))
    return png_bytes(overlay(image, prediction.labels, seg.palette, alpha))


def page_maps(seg: Any, prediction: Prediction) -> dict[str, str]:
    """What the web page draws: the colour mask as a PNG data URL, the class ids as base64 bytes (one
    per pixel, row-major; two little-endian for more than 256 classes), uncertainty heat maps."""
    labels = _labels_array(seg, prediction.labels)
    out = {"color_png": "data:image/png;base64," + base64.b64encode(png_bytes(colorize(prediction.labels,
                                                                                      seg.palette))).decode(),
           "labels_b64": base64.b64encode(labels.astype(labels.dtype.newbyteorder("<")).tobytes()).decode(),
           "labels_dtype": labels.dtype.name}
    log_c = float(np.log(max(2, seg.num_classes)))  # scaled to the maximum, so colours compare across images
    for key, values in prediction.maps.items():
        out[f"{key}_png"] = "data:image/png;base64," + base64.b64encode(png_bytes(heatmap(values, log_c))).decode()
    return out
