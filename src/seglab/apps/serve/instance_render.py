"""What POST /v1/segment answers for an instance model: JSON instances with COCO RLE masks, and PNGs.

Instance ``i`` of the JSON (score order) is id ``i + 1`` in the 16-bit id PNG and has colour
``instance_colours(n)[i]`` in the overlay, as ``seglab predict`` writes them.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from seglab.apps.instance_predict import coco_bbox, encode_masks
from seglab.apps.instance_visualize import draw_instances, instance_colours
from seglab.apps.serve.render import png_bytes
from seglab.apps.visualize import colorize
from seglab.inference.instance_predictor import Instances

__all__ = ["INSTANCE_FORMATS", "instance_page_maps", "instance_picture", "instance_records", "instance_summary"]

#: The PNG formats an instance model answers with.
INSTANCE_FORMATS = ("overlay", "ids", "labels", "color")


def instance_records(seg: Any, instances: Instances) -> list[dict[str, Any]]:
    """One record per instance: id (as in the id PNG), class, score, boxes, pixel area, colour, RLE mask."""
    colours = instance_colours(len(instances))
    return [{"id": i + 1, "label": int(label), "class_name": seg.class_name(int(label)),
             "score": round(float(score), 5), "box": [round(float(v), 2) for v in box], "bbox": coco_bbox(box),
             "area": int(mask.sum()), "color": list(colours[i]), "segmentation": rle}
            for i, (box, label, score, mask, rle) in enumerate(zip(instances.boxes, instances.labels, instances.scores,
                                                                   instances.masks, encode_masks(instances.masks)))]


def instance_summary(seg: Any, instances: Instances, prediction: Any, model_info: dict[str, Any],
                     score_threshold: float) -> dict[str, Any]:
    """The JSON body: image size, model, the threshold applied, the instances, timings."""
    h, w = instances.image_size
    return {"task": "instance", "image_size": {"height": h, "width": w}, "model": model_info,
            "score_threshold": score_threshold, "count": len(instances), "instances": instance_records(seg, instances),
            "inference_ms": round(prediction.model_ms, 3), "batch_size": prediction.batch_size}


def _overlay(seg: Any, image: np.ndarray, instances: Instances, alpha: float) -> np.ndarray:
    return draw_instances(image, instances.boxes, instances.labels, instances.scores, instances.masks,
                          seg.class_names, alpha)


def instance_picture(seg: Any, image: np.ndarray, instances: Instances, kind: str, alpha: float) -> bytes:
    """The ``overlay`` (colour, contour, box, class and score per instance), ``ids`` (16-bit instance ids, 0
    background), ``labels`` (class ids, the higher score on top) or ``color`` (class colours) PNG."""
    if kind == "overlay":
        return png_bytes(_overlay(seg, image, instances, alpha))
    if kind == "ids":
        return png_bytes(instances.id_map())
    labels = instances.label_map()
    if kind == "labels":
        return png_bytes(labels.astype(np.uint8 if seg.num_classes <= 256 else np.uint16))
    return png_bytes(colorize(labels, seg.palette))


def instance_page_maps(seg: Any, image: np.ndarray, instances: Instances) -> dict[str, str]:
    """What the web page draws: the overlay at full opacity (the page's slider blends it with the
    original) as a PNG data URL, and the instance ids as base64 little-endian uint16, row-major."""
    ids = instances.id_map()
    return {"overlay_png": "data:image/png;base64," + base64.b64encode(png_bytes(_overlay(seg, image, instances,
                                                                                        1.0))).decode(),
            "ids_b64": base64.b64encode(ids.astype("<u2").tobytes()).decode(), "ids_dtype": "uint16"}
