"""Tests for the SegNet-protocol confusion-matrix metrics, the table formatter and logits_to_labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seglab.core.errors import SeglabError
from seglab.metrics import (
    SegmentationMetrics, confusion_matrix, format_metrics_table, logits_to_labels, metrics_from_confusion
)

# Hand-worked example: 2 x 3 image, 3 classes, ignore_index 255.
#   target = [[0, 0, 1],      pred = [[0, 1, 1],
#             [1, 2, 255]]             [2, 2, 0]]
# The void pixel (1, 2) is dropped, leaving 5 (gt, pred) pairs: (0,0) (0,1) (1,1) (1,2) (2,2).
# Confusion (rows gt, cols pred): [[1,1,0],[0,1,1],[0,0,1]]; TP = [1,1,1], GT = [2,2,1], Pred = [1,2,2].
#   G     = 3/5                                   = 0.6
#   C     = mean(1/2, 1/2, 1/1)                   = 2/3
#   IoU   = [1/(2+1-1), 1/(2+2-1), 1/(1+2-1)]     = [1/2, 1/3, 1/2];  mIoU = 4/9
#   fwIoU = 2/5 * 1/2 + 2/5 * 1/3 + 1/5 * 1/2     = 13/30
TARGET = torch.tensor([[0, 0, 1], [1, 2, 255]])
PRED = torch.tensor([[0, 1, 1], [2, 2, 0]])


def hand_metrics(**kw) -> dict:
    m = SegmentationMetrics(3, ignore_index=255, compute_bf=False, **kw)
    m.update(PRED, TARGET)
    return m.compute()


def test_hand_worked_example():
    r = hand_metrics()
    assert r["confusion"] == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert r["global_acc"] == pytest.approx(0.6)
    assert r["class_acc"] == pytest.approx(2 / 3)
    assert r["class_acc_per_class"] == pytest.approx([0.5, 0.5, 1.0])
    assert r["iou"] == pytest.approx([1 / 2, 1 / 3, 1 / 2])
    assert r["miou"] == pytest.approx(4 / 9)
    assert r["fwiou"] == pytest.approx(13 / 30)
    assert r["num_pixels"] == 5 and r["num_images"] == 1
    assert r["bf"] is None


def test_absent_classes_are_left_out_of_the_means():
    # 4 classes. Class 2 is in neither map; class 3 only in the prediction.
    # Pairs: (0,0) (0,3) (1,1) (1,1) -> TP = [1,2,0,0], GT = [2,2,0,0], Pred = [1,2,0,1].
    # recall = [1/2, 1, nan, nan] -> C = 3/4 (classes without GT are excluded).
    # IoU = [1/2, 1, nan (union 0), 0] -> mIoU = (1/2 + 1 + 0) / 3 = 1/2; G = 3/4.
    # fwIoU = 1/2 * 1/2 + 1/2 * 1 = 3/4.
    m = SegmentationMetrics(4, compute_bf=False)
    m.update(torch.tensor([[0, 3], [1, 1]]), torch.tensor([[0, 0], [1, 1]]))
    r = m.compute()
    assert r["global_acc"] == pytest.approx(0.75)
    assert r["class_acc"] == pytest.approx(0.75)
    assert math.isnan(r["class_acc_per_class"][2]) and math.isnan(r["class_acc_per_class"][3])
    assert math.isnan(r["iou"][2]) and r["iou"][3] == 0.0
    assert r["miou"] == pytest.approx(0.5)
    assert r["fwiou"] == pytest.approx(0.75)


def test_accepts_numpy_and_hw_and_any_integer_dtype():
    r = hand_metrics()
    m = SegmentationMetrics(3, ignore_index=255, compute_bf=False)
    m.update(PRED.numpy().astype(np.uint8), TARGET.numpy().astype(np.uint8))
    assert m.compute()["confusion"] == r["confusion"]


def random_batch(gen: torch.Generator, n: int = 4, c: int = 5, size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    target = torch.randint(0, c + 1, (n, size, size), generator=gen)  # value c is the ignore label
    pred = torch.where(torch.rand(n, size, size, generator=gen) < 0.6, target.clamp(max=c - 1),
                       torch.randint(0, c, (n, size, size), generator=gen))
    return pred, target


def test_two_updates_equal_one_update_over_the_concatenation():
    gen = torch.Generator().manual_seed(0)
    (p1, t1), (p2, t2) = random_batch(gen), random_batch(gen, n=3)
    split = SegmentationMetrics(5, ignore_index=5)
    split.update(p1, t1)
    split.update(p2, t2)
    whole = SegmentationMetrics(5, ignore_index=5)
    whole.update(torch.cat([p1, p2]), torch.cat([t1, t2]))
    a, b = split.compute(), whole.compute()
    assert a["confusion"] == b["confusion"]
    assert a["num_images"] == b["num_images"] == 7
    assert a["miou"] == b["miou"] and a["bf"] == pytest.approx(b["bf"])
    # merge / + combine independent accumulators the same way
    m1, m2 = SegmentationMetrics(5, ignore_index=5), SegmentationMetrics(5, ignore_index=5)
    m1.update(p1, t1)
    m2.update(p2, t2)
    added = (m1 + m2).compute()
    assert added["confusion"] == a["confusion"] and added["bf"] == pytest.approx(a["bf"])


def test_matches_torchmetrics_on_random_data():
    tm = pytest.importorskip("torchmetrics.classification")
    gen = torch.Generator().manual_seed(1)
    pred, target = random_batch(gen, n=6, c=5, size=32)
    assert torch.unique(target[target != 5]).numel() == 5  # every class present: no absent-class conventions
    m = SegmentationMetrics(5, ignore_index=5, compute_bf=False)
    m.update(pred[:3], target[:3])
    m.update(pred[3:], target[3:])
    r = m.compute()
    kw = dict(num_classes=5, ignore_index=5)
    assert r["global_acc"] == pytest.approx(tm.MulticlassAccuracy(average="micro", **kw)(pred, target).item(), abs=1e-6)
    assert r["class_acc"] == pytest.approx(tm.MulticlassAccuracy(average="macro", **kw)(pred, target).item(), abs=1e-6)
    per_class = tm.MulticlassJaccardIndex(average="none", **kw)(pred, target)
    assert r["iou"] == pytest.approx(per_class.tolist(), abs=1e-6)
    assert r["miou"] == pytest.approx(tm.MulticlassJaccardIndex(average="macro", **kw)(pred, target).item(), abs=1e-6)


def test_reset_and_empty_compute():
    m = SegmentationMetrics(3, ignore_index=255)
    m.update(PRED, TARGET)
    m.reset()
    r = m.compute()
    assert r["num_images"] == 0 and r["num_pixels"] == 0
    assert math.isnan(r["global_acc"]) and math.isnan(r["miou"]) and math.isnan(r["bf"])


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [
        (torch.tensor([[0, 3]]), torch.tensor([[0, 1]]), "Predictions"),
        (torch.tensor([[0, -1]]), torch.tensor([[0, 1]]), "Predictions"),
        (torch.tensor([[0, 1]]), torch.tensor([[0, 7]]), "data.ignore_index"),
        (torch.tensor([[0.0, 1.0]]), torch.tensor([[0, 1]]), "logits_to_labels"),
        (torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1]]), "shape"),
    ],
)
def test_bad_inputs_raise_seglab_error(pred, target, match):
    m = SegmentationMetrics(3, ignore_index=255)
    with pytest.raises(SeglabError, match=match):
        m.update(pred, target)


def test_ignored_target_values_may_be_anything():
    # 255 is out of range but ignored, so no error; only the two labelled pixels count.
    conf = confusion_matrix(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 255, 2]]), 3, ignore_index=255)
    assert conf.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 1]]
    assert conf.dtype == torch.int64


def test_metrics_from_confusion_alone():
    r = metrics_from_confusion(np.array([[1, 1, 0], [0, 1, 1], [0, 0, 1]]))
    assert r["miou"] == pytest.approx(4 / 9) and r["num_pixels"] == 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_confusion_stays_on_the_input_device():
    m = SegmentationMetrics(3, ignore_index=255)
    m.update(PRED.cuda(), TARGET.cuda())
    assert m.confusion.device.type == "cuda"
    assert m.compute()["miou"] == pytest.approx(4 / 9)


def test_logits_to_labels_argmax_and_binary_threshold():
    logits = torch.tensor([[[[0.1, 2.0]], [[1.0, -1.0]]]])  # N=1, C=2, H=1, W=2
    assert logits_to_labels(logits).tolist() == [[[1, 0]]]
    binary = torch.tensor([[[[-2.0, 0.5]]]])  # C=1: sigmoid -> [0.12, 0.62]
    assert logits_to_labels(binary).tolist() == [[[0, 1]]]
    assert logits_to_labels(binary, threshold=0.7).tolist() == [[[0, 0]]]
    with pytest.raises(SeglabError):
        logits_to_labels(torch.zeros(2, 3, 4))


def test_format_metrics_table():
    r = hand_metrics()
    r["bf"] = 0.4684
    text = format_metrics_table(r, ["Sky", "Building", "Pole"])
    lines = text.splitlines()
    assert lines[0].split() == ["class", "acc", "%", "IoU", "%"]
    assert lines[1].split() == ["Sky", "50.0", "50.0"]
    assert lines[2].split() == ["Building", "50.0", "33.3"]
    assert lines[3].split() == ["Pole", "100.0", "50.0"]
    for label, value in [("G (global", "60.0"), ("C (class", "66.7"), ("mIoU", "44.4"), ("fwIoU", "43.3"),
                         ("BF", "46.8")]:
        assert any(line.startswith(label) and line.split()[-1] == value for line in lines), label
    # No BF computed and no names: placeholders instead of errors.
    bare = format_metrics_table(hand_metrics(), []).splitlines()
    assert any(line.startswith("BF") and line.split()[-1] == "-" for line in bare)
    assert bare[3].split() == ["class", "2", "100.0", "50.0"]
