"""Tests for the EM metrics: pixel error, foreground IoU and adapted Rand error on hand-made slices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seglab.core.errors import SeglabError
from seglab.metrics import em_metrics
from seglab.metrics.em import cell_instances, slice_rand_scores


def two_cells() -> np.ndarray:
    """6 x 13 slice: cell A in columns 0..5, a membrane (0) in column 6, cell B in columns 7..12."""
    labels = np.ones((6, 13), np.int64)
    labels[:, 6] = 0
    return labels


def test_perfect_prediction_has_no_error():
    truth = np.stack([two_cells(), np.roll(two_cells(), 3, axis=1)])
    scores = em_metrics(truth, truth)
    assert scores["pixel_error"] == 0.0 and scores["foreground_iou"] == 1.0
    assert scores["rand_error"] == pytest.approx(0.0, abs=1e-12)
    assert scores["rand_precision"] == pytest.approx(1.0) and scores["rand_recall"] == pytest.approx(1.0)
    assert scores["num_slices"] == 2 and len(scores["rand_error_per_slice"]) == 2


def test_merged_cells_raise_the_rand_error_by_the_hand_computed_amount():
    truth = two_cells()
    merged = np.ones_like(truth)  # the membrane is missed: A and B become one cell
    scores = em_metrics(merged, truth)
    n = 36  # pixels per true cell; pairs of distinct pixels: n^2 - n per segment
    joint, true_pairs, pred_pairs = 2 * (n * n - n), 2 * (n * n - n), (2 * n) ** 2 - 2 * n
    assert scores["rand_error"] == pytest.approx(1 - joint / (0.5 * true_pairs + 0.5 * pred_pairs))
    assert scores["rand_error"] == pytest.approx(1 - 2520 / 3816)
    assert scores["rand_precision"] == pytest.approx(joint / pred_pairs) and scores["rand_recall"] == pytest.approx(1.0)
    assert scores["pixel_error"] == pytest.approx(6 / 78)  # the 6 membrane pixels
    assert scores["foreground_iou"] == pytest.approx(72 / 78)


def test_a_split_cell_lowers_recall_not_precision():
    truth = np.ones((6, 12), np.int64)
    split = truth.copy()
    split[:, 6] = 0  # a false membrane cuts the cell in two
    error, precision, recall = slice_rand_scores(split, truth)
    assert error > 0 and precision == pytest.approx(1.0) and recall < 1.0


def test_ignored_pixels_and_input_forms():
    truth = two_cells()
    truth[0, :] = 255
    pred = np.ones_like(truth)
    pred[1:, 6] = 0  # correct wherever labelled; row 0 (ignored) is wrong
    scores = em_metrics(pred, truth)
    assert scores["pixel_error"] == 0.0 and scores["foreground_iou"] == 1.0 and scores["rand_error"] == pytest.approx(0)
    stack = np.stack([pred, pred])
    as_list = em_metrics([pred, pred], [truth, truth])
    as_tensor = em_metrics(torch.from_numpy(stack), torch.from_numpy(np.stack([truth, truth])))
    assert as_list == as_tensor and as_list["num_slices"] == 2


def test_mean_over_slices_leaves_out_slices_without_cells():
    truth = np.stack([two_cells(), two_cells(), np.zeros((6, 13), np.int64)])
    pred = np.stack([two_cells(), np.ones((6, 13), np.int64), np.zeros((6, 13), np.int64)])
    scores = em_metrics(pred, truth)
    per_slice = scores["rand_error_per_slice"]
    assert per_slice[0] == pytest.approx(0) and per_slice[1] > 0 and math.isnan(per_slice[2])
    assert scores["rand_error"] == pytest.approx(per_slice[1] / 2)


def test_cells_are_four_connected_by_default():
    diagonal = np.array([[1, 0], [0, 1]])
    assert cell_instances(diagonal).max() == 2 and cell_instances(diagonal, connectivity=2).max() == 1


def test_bad_inputs_raise():
    with pytest.raises(SeglabError, match="integer labels"):
        em_metrics(np.zeros((4, 4), np.float32), np.zeros((4, 4), np.int64))
    with pytest.raises(SeglabError, match="differ in shape"):
        em_metrics(np.zeros((4, 4), np.int64), np.zeros((4, 5), np.int64))
    with pytest.raises(SeglabError, match="N x H x W"):
        em_metrics(np.zeros((1, 2, 4, 4), np.int64), np.zeros((1, 2, 4, 4), np.int64))
