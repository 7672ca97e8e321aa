"""Instance-segmentation metrics: COCO mask AP, AP50, AP75 and box AP (pycocotools ``COCOeval``) and
the mean mask IoU of matched pairs.

:class:`InstanceMetrics` collects torchvision-style predictions (``boxes``, ``labels``, ``scores``,
``masks`` as ``N x 1 x H x W`` probabilities, binarised at ``mask_threshold``) and targets
(``boxes``, ``labels``, ``masks`` ``N x H x W`` uint8/bool, optionally ``iscrowd``), encodes the
masks as RLE and runs ``COCOeval`` on in-memory COCO objects. AP is COCOeval's: precision
averaged over recall 0:0.01:1, IoU 0.5:0.05:0.95 (AP50, AP75 at one threshold), the classes and
all areas, with up to ``max_detections`` detections per image (COCO's 100; raise it for images with
more objects, e.g. ISBI slices of about 130 cells). ``mask_iou`` is the mean IoU of the prediction /
ground-truth pairs that COCOeval matches at IoU >= 0.5 (the Mask R-CNN seeds' "mask IoU").
All values are fractions in [0, 1]; NaN when there is no ground truth at all.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["InstanceMetrics", "encode_masks"]


def encode_masks(masks: torch.Tensor | np.ndarray) -> list[dict[str, Any]]:
    """COCO compressed RLEs (``counts`` as str, JSON-ready) of boolean ``N x H x W`` masks."""
    arr = np.asfortranarray(np.asarray(masks.cpu() if isinstance(masks, torch.Tensor) else masks, dtype=np.uint8)
                            .transpose(1, 2, 0))
    rles = mask_utils.encode(arr) if arr.shape[2] else []
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return list(rles)


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    b = boxes.detach().cpu().float().reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], 1).tolist()


class InstanceMetrics:
    """Streaming COCO evaluation; ``update(preds, targets)`` per batch, ``compute()`` once."""

    def __init__(self, mask_threshold: float = 0.5, max_detections: int = 100) -> None:
        self.mask_threshold, self.max_detections = float(mask_threshold), int(max_detections)
        self.images: list[dict[str, Any]] = []
        self.gts: list[dict[str, Any]] = []
        self.dts: list[dict[str, Any]] = []
        self.categories: set[int] = set()

    def update(self, preds: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, torch.Tensor]]) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
        for pred, target in zip(preds, targets):
            image_id = len(self.images) + 1
            gt_masks = torch.as_tensor(target["masks"]).bool()
            h, w = gt_masks.shape[-2:]
            self.images.append({"id": image_id, "height": int(h), "width": int(w)})
            crowd = target.get("iscrowd", torch.zeros(len(gt_masks)))
            labels = torch.as_tensor(target["labels"]).tolist()
            self.categories.update(int(c) for c in labels)
            boxes = target.get("boxes")
            boxes = _xywh(boxes) if boxes is not None else [mask_utils.toBbox(r).tolist() for r in encode_masks(gt_masks)]
            for rle, label, box, c in zip(encode_masks(gt_masks), labels, boxes, torch.as_tensor(crowd).tolist()):
                self.gts.append({"id": len(self.gts) + 1, "image_id": image_id, "category_id": int(label),
                                 "segmentation": rle, "area": float(mask_utils.area(rle)), "bbox": box,
                                 "iscrowd": int(c)})
            masks = torch.as_tensor(pred["masks"])
            masks = (masks[:, 0] if masks.ndim == 4 else masks) >= self.mask_threshold
            labels = torch.as_tensor(pred["labels"]).tolist()
            self.categories.update(int(c) for c in labels)
            for rle, label, box, score in zip(encode_masks(masks), labels, _xywh(pred["boxes"]),
                                              torch.as_tensor(pred["scores"]).tolist()):
                self.dts.append({"id": len(self.dts) + 1, "image_id": image_id, "category_id": int(label),
                                 "segmentation": rle, "area": float(mask_utils.area(rle)), "bbox": box,
                                 "score": float(score), "iscrowd": 0})

    def merge(self, other: "InstanceMetrics") -> "InstanceMetrics":
        """Append another shard's images after this one's (another process's, in distributed
        validation); ids are renumbered, so the result equals one pass over both shards in order."""
        if (other.mask_threshold, other.max_detections) != (self.mask_threshold, self.max_detections):
            raise ValueError("Cannot merge instance metrics with different mask_threshold or max_detections.")
        image_offset, gt_offset, dt_offset = len(self.images), len(self.gts), len(self.dts)
        self.images += [{**im, "id": im["id"] + image_offset} for im in other.images]
        self.gts += [{**a, "id": a["id"] + gt_offset, "image_id": a["image_id"] + image_offset} for a in other.gts]
        self.dts += [{**a, "id": a["id"] + dt_offset, "image_id": a["image_id"] + image_offset} for a in other.dts]
        self.categories |= other.categories
        return self

    def _coco(self, annotations: list[dict[str, Any]]) -> COCO:
        coco = COCO()
        coco.dataset = {"images": self.images, "annotations": annotations,
                        "categories": [{"id": c} for c in sorted(self.categories)]}
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    def _evaluate(self, iou_type: str) -> COCOeval:
        evaluator = COCOeval(self._coco(self.gts), self._coco(self.dts), iou_type)
        evaluator.params.maxDets = [1, 10, self.max_detections]
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
        return evaluator

    @staticmethod
    def _ap(evaluator: COCOeval, iou: float | None = None) -> float:
        """COCOeval's summarised AP (area ``all``, the largest maxDets), at one IoU or averaged."""
        precision = evaluator.eval["precision"][..., 0, -1]  # T x R x K
        if iou is not None:
            precision = precision[np.where(np.isclose(evaluator.params.iouThrs, iou))[0]]
        valid = precision[precision > -1]
        return float(valid.mean()) if valid.size else math.nan

    def _matched_iou(self, evaluator: COCOeval) -> float:
        gts = {a["id"]: a["segmentation"] for a in self.gts}
        dts = {a["id"]: a["segmentation"] for a in self.dts}
        ious = []
        for e in evaluator.evalImgs:
            if e is None or e["aRng"] != evaluator.params.areaRng[0]:
                continue
            for dt_id, gt_id in zip(e["dtIds"], e["dtMatches"][0]):  # IoU threshold 0.5
                if gt_id > 0:
                    ious.append(float(mask_utils.iou([dts[dt_id]], [gts[int(gt_id)]], [0])[0, 0]))
        return float(np.mean(ious)) if ious else (0.0 if self.gts else math.nan)

    def compute(self) -> dict[str, Any]:
        """``mask_ap``, ``mask_ap50``, ``mask_ap75``, ``box_ap``, ``box_ap50``, ``mask_iou`` and counts."""
        counts = {"num_images": len(self.images), "num_instances": len(self.gts), "num_detections": len(self.dts)}
        if not self.gts:
            nan = math.nan
            return {"mask_ap": nan, "mask_ap50": nan, "mask_ap75": nan, "box_ap": nan, "box_ap50": nan,
                    "mask_iou": nan, **counts}
        if not self.dts:
            return {"mask_ap": 0.0, "mask_ap50": 0.0, "mask_ap75": 0.0, "box_ap": 0.0, "box_ap50": 0.0,
                    "mask_iou": 0.0, **counts}
        segm, bbox = self._evaluate("segm"), self._evaluate("bbox")
        return {"mask_ap": self._ap(segm), "mask_ap50": self._ap(segm, 0.5), "mask_ap75": self._ap(segm, 0.75),
                "box_ap": self._ap(bbox), "box_ap50": self._ap(bbox, 0.5), "mask_iou": self._matched_iou(segm),
                **counts}
