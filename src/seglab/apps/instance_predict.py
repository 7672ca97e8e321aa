"""``seglab predict`` with an instance checkpoint: an overlay and an id PNG per image, one COCO results JSON.

Per image ``<stem>_instances.png`` (each instance in its colour with contour, box, class and
score) and ``<stem>_ids.png`` (16-bit: 0 background, ids 1..N in score order, the higher score on
top where masks overlap); for the run ``instances.json``, COCO's results format (a list of
``{image_id, file_name, category_id, bbox [x, y, w, h], score, segmentation}`` with the mask as
RLE), which ``COCO.loadRes`` reads. ``image_id`` counts the inputs from 1 in the order predicted;
``category_id`` is the model's label (1..K-1; a COCO set whose ids were not 1..K was mapped in id
order when training). Every file is written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from seglab.apps.instance_visualize import draw_instances
from seglab.apps.predict import expand_inputs
from seglab.apps.visualize import save_png
from seglab.core.atomic import atomic_write_text
from seglab.core.errors import SeglabError
from seglab.inference.instance_predictor import Instances, InstanceSegmenter

__all__ = ["RESULTS_FILE", "coco_bbox", "coco_results", "encode_masks", "predict_instances_to_files",
           "write_instances"]

RESULTS_FILE = "instances.json"


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO RLE of each ``N x H x W`` bool mask: ``{"size": [H, W], "counts": str}`` (``counts`` as text so
    JSON can hold it; ``pycocotools.mask.decode`` takes it back after ``.encode()``)."""
    if not len(masks):
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")} for rle in rles]


def coco_bbox(box: np.ndarray) -> list[float]:
    """``(x1, y1, x2, y2)`` as COCO's ``[x, y, width, height]``, rounded to 0.01 px."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]


def coco_results(instances: Instances, image_id: int, file_name: str) -> list[dict[str, Any]]:
    """COCO result records of one image's instances (RLE masks)."""
    return [{"image_id": image_id, "file_name": file_name, "category_id": int(label), "bbox": coco_bbox(box),
             "score": round(float(score), 5), "segmentation": rle}
            for box, label, score, rle in zip(instances.boxes, instances.labels, instances.scores,
                                              encode_masks(instances.masks))]


def write_instances(segmenter: InstanceSegmenter, image: np.ndarray, instances: Instances, out_dir: Path, stem: str,
                    alpha: float = 0.5) -> list[Path]:
    """Write ``<stem>_instances.png`` (the overlay) and ``<stem>_ids.png`` (uint16 instance ids)."""
    files = [out_dir / f"{stem}_instances.png", out_dir / f"{stem}_ids.png"]
    save_png(draw_instances(image, instances.boxes, instances.labels, instances.scores, instances.masks,
                            segmenter.class_names, alpha), files[0])
    save_png(instances.id_map(), files[1])
    return files


def predict_instances_to_files(segmenter: InstanceSegmenter, inputs: list[str], out_dir: str | Path,
                               alpha: float = 0.5) -> list[Path]:
    """Predict every input, write its two PNGs and, for the run, ``instances.json``; returns the files written.

    A bad image does not stop the others: the results JSON holds every image that was predicted,
    then the failures are raised together.
    """
    out = Path(out_dir)
    written: list[Path] = []
    results: list[dict[str, Any]] = []
    failed: list[tuple[Path, str]] = []
    paths = expand_inputs(inputs)
    for image_id, path in enumerate(paths, start=1):
        try:
            image = segmenter.load(path)
            instances = segmenter.predict(image)
            written += write_instances(segmenter, image, instances, out, path.stem, alpha)
            results += coco_results(instances, image_id, path.name)
        except SeglabError as e:
            failed.append((path, str(e)))
    written.append(atomic_write_text(out / RESULTS_FILE, json.dumps(results)))
    if failed:
        listed = "; ".join(f"{p}: {why}" for p, why in failed[:10]) + ("; ..." if len(failed) > 10 else "")
        raise SeglabError(f"{len(failed)} of {len(paths)} images could not be predicted (the other "
                          f"{len(paths) - len(failed)} were written to {out}, {len(written)} files): {listed}")
    return written
