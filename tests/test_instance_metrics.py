"""InstanceMetrics on hand-built cases, and agreement with pycocotools' own COCOeval run on files."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from seglab.metrics import InstanceMetrics
from seglab.metrics.instance import encode_masks


def _masks(h: int, w: int, rects: list[tuple[int, int, int, int]]) -> torch.Tensor:
    out = torch.zeros(len(rects), h, w, dtype=torch.uint8)
    for k, (y0, y1, x0, x1) in enumerate(rects):
        out[k, y0:y1, x0:x1] = 1
    return out


def _boxes(masks: torch.Tensor) -> torch.Tensor:
    from seglab.data.instance import masks_to_boxes

    return masks_to_boxes(masks)


def _target(masks: torch.Tensor, labels: list[int]) -> dict:
    return {"boxes": _boxes(masks), "labels": torch.tensor(labels), "masks": masks}


def _pred(masks: torch.Tensor, labels: list[int], scores: list[float]) -> dict:
    return {"boxes": _boxes(masks), "labels": torch.tensor(labels), "scores": torch.tensor(scores),
            "masks": masks.float()[:, None]}


GT = _masks(64, 64, [(4, 24, 4, 24), (30, 60, 10, 30), (8, 20, 40, 60)])


def test_identical_predictions_score_one() -> None:
    m = InstanceMetrics()
    m.update([_pred(GT, [1, 1, 2], [0.9, 0.8, 0.7])], [_target(GT, [1, 1, 2])])
    r = m.compute()
    for key in ("mask_ap", "mask_ap50", "mask_ap75", "box_ap", "mask_iou"):
        assert r[key] == pytest.approx(1.0), key


def test_no_predictions_score_zero() -> None:
    m = InstanceMetrics()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0),
             "masks": torch.zeros(0, 1, 64, 64)}
    m.update([empty], [_target(GT, [1, 1, 2])])
    r = m.compute()
    assert all(r[k] == 0.0 for k in ("mask_ap", "mask_ap50", "mask_ap75", "box_ap", "mask_iou"))


def test_half_overlap_gives_the_hand_computed_iou() -> None:
    # Ground truth 20 x 20 = 400 px; prediction its left half, 200 px: IoU = 200 / 400 = 0.5, which
    # COCOeval matches at the 0.5 threshold only: AP50 1, AP75 0, AP (10 thresholds) 0.1.
    gt = _masks(40, 40, [(10, 30, 10, 30)])
    pred = _masks(40, 40, [(10, 30, 10, 20)])
    m = InstanceMetrics()
    m.update([_pred(pred, [1], [0.9])], [_target(gt, [1])])
    r = m.compute()
    assert r["mask_iou"] == pytest.approx(0.5)
    assert r["mask_ap50"] == pytest.approx(1.0) and r["mask_ap75"] == 0.0
    assert r["mask_ap"] == pytest.approx(0.1)
    # A third-overlap (IoU 1/3) is no match at all.
    m = InstanceMetrics()
    m.update([_pred(_masks(40, 40, [(10, 30, 20, 40)]), [1], [0.9])], [_target(_masks(40, 40, [(10, 30, 10, 30)]), [1])])
    assert m.compute()["mask_ap50"] == 0.0 and m.compute()["mask_iou"] == 0.0


def test_agrees_with_pycocotools_on_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    preds, targets, images, gts, dts = [], [], [], [], []
    for image_id in range(1, 4):
        rects = [(int(y), int(y) + int(rng.integers(6, 20)), int(x), int(x) + int(rng.integers(6, 20)))
                 for y, x in rng.integers(0, 40, (4, 2))]
        gt = _masks(64, 64, rects)
        jitter = [(y0 + int(rng.integers(-3, 4)), y1, x0, x1 + int(rng.integers(-3, 4))) for y0, y1, x0, x1 in rects[:3]]
        pred = _masks(64, 64, [(max(a, 0), b, c, max(d, c + 1)) for a, b, c, d in jitter])
        labels, scores = [1, 2, 1, 2][:4], rng.uniform(0.3, 1, 3).tolist()
        targets.append(_target(gt, labels))
        preds.append(_pred(pred, labels[:3], scores))
        images.append({"id": image_id, "height": 64, "width": 64})
        for rle, label in zip(encode_masks(gt.bool()), labels):
            from pycocotools import mask as mask_utils

            gts.append({"id": len(gts) + 1, "image_id": image_id, "category_id": label, "segmentation": rle,
                        "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0})
        for rle, label, score in zip(encode_masks(pred.bool()), labels[:3], scores):
            dts.append({"image_id": image_id, "category_id": label, "segmentation": rle, "score": score})
    (tmp_path / "gt.json").write_text(json.dumps({"images": images, "annotations": gts,
                                                  "categories": [{"id": 1}, {"id": 2}]}))
    (tmp_path / "dt.json").write_text(json.dumps(dts))
    stats = {}
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "gt.json"))
        for iou_type in ("segm", "bbox"):  # loadRes derives each detection's bbox from its mask
            evaluator = COCOeval(coco, coco.loadRes(str(tmp_path / "dt.json")), iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            stats[iou_type] = evaluator.stats
    m = InstanceMetrics()
    m.update(preds, targets)
    r = m.compute()
    assert r["mask_ap"] == pytest.approx(stats["segm"][0])
    assert r["mask_ap50"] == pytest.approx(stats["segm"][1])
    assert r["mask_ap75"] == pytest.approx(stats["segm"][2])
    assert r["box_ap"] == pytest.approx(stats["bbox"][0]) and r["box_ap50"] == pytest.approx(stats["bbox"][1])
    assert 0 < r["mask_ap"] < 1 and 0.5 <= r["mask_iou"] <= 1


def test_no_ground_truth_is_undefined() -> None:
    m = InstanceMetrics()
    m.update([_pred(GT, [1, 1, 2], [0.9, 0.8, 0.7])], [_target(GT[:0], [])])
    assert math.isnan(m.compute()["mask_ap"])


def test_merged_shards_equal_one_pass() -> None:
    """Distributed validation merges each process's shard: the figures equal one meter over all images."""
    import pickle

    rng = np.random.default_rng(1)
    pairs = []
    for _ in range(4):
        rects = [(int(y), int(y) + int(rng.integers(6, 20)), int(x), int(x) + int(rng.integers(6, 20)))
                 for y, x in rng.integers(0, 40, (3, 2))]
        shifted = [(y0 + int(rng.integers(-3, 4)) % 5, y1, x0, x1) for y0, y1, x0, x1 in rects[:2]]
        pairs.append((_pred(_masks(64, 64, shifted), [1, 2], rng.uniform(0.3, 1, 2).tolist()),
                      _target(_masks(64, 64, rects), [1, 2, 1])))
    whole, first, second = InstanceMetrics(), InstanceMetrics(), InstanceMetrics()
    whole.update([p for p, _ in pairs], [t for _, t in pairs])
    first.update([p for p, _ in pairs[:1]], [t for _, t in pairs[:1]])
    second.update([p for p, _ in pairs[1:]], [t for _, t in pairs[1:]])
    merged = first.merge(pickle.loads(pickle.dumps(second))).compute()  # shards travel pickled
    expected = whole.compute()
    assert expected["mask_ap50"] > 0
    for key in ("mask_ap", "mask_ap50", "mask_ap75", "box_ap", "mask_iou"):
        assert merged[key] == pytest.approx(expected[key], abs=1e-12), key
