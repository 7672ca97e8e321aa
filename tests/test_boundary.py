"""Tests for the boundary F1 (BF) score: hand-worked cases, edge cases, and a per-class EDT reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt, gaussian_filter

from seglab.core.errors import SeglabError
from seglab.metrics import SegmentationMetrics, boundary_f1, boundary_f1_per_class
from seglab.metrics.boundary import _dilate_disk, _disk_half_widths

DIAG20 = math.hypot(20, 20)  # 28.28 px: the diagonal of the 20 x 20 test images


def split_image(col: int, size: int = 20) -> np.ndarray:
    """Class 0 on columns < col, class 1 from col on."""
    img = np.ones((size, size), dtype=np.int64)
    img[:, :col] = 0
    return img


def smooth_labels(seed: int, num_classes: int = 11, shape: tuple[int, int] = (90, 120), sigma: float = 4.0):
    """Blobby random label map: argmax over smoothed noise, one channel per class."""
    noise = np.random.default_rng(seed).standard_normal((num_classes, *shape))
    return gaussian_filter(noise, sigma=(0, sigma, sigma)).argmax(0)


def reference_f1(pred, target, num_classes, ignore_index, tolerance):
    """Straightforward per-class implementation of the documented rules with one EDT per class and map."""
    valid = np.ones(target.shape, bool) if ignore_index is None else target != ignore_index
    max_dist = tolerance * math.hypot(*target.shape)

    def contour(mask):  # mask pixels with a valid 4-neighbour outside the mask (image border excluded)
        out = np.zeros_like(mask)
        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            m = np.pad(mask, 1, constant_values=False)[1 + dy:1 + dy + mask.shape[0], 1 + dx:1 + dx + mask.shape[1]]
            v = np.pad(valid, 1, constant_values=False)[1 + dy:1 + dy + mask.shape[0], 1 + dx:1 + dx + mask.shape[1]]
            out |= mask & v & ~m
        return out

    scores = []
    for c in range(num_classes):
        g, p = (target == c) & valid, (pred == c) & valid
        if not g.any() and not p.any():
            continue
        gb, pb = contour(g), contour(p)
        if not (g.any() and p.any()) or gb.any() != pb.any():
            scores.append(0.0)
            continue
        if not gb.any():
            scores.append(1.0)
            continue
        prec = (distance_transform_edt(~gb)[pb] <= max_dist).mean()
        rec = (distance_transform_edt(~pb)[gb] <= max_dist).mean()
        scores.append(0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec))
    return float(np.mean(scores)) if scores else math.nan


@pytest.mark.parametrize(("d", "expected"), [(1.9, 0.0), (2.1, 1.0)])
def test_vertical_boundary_shifted_by_two_pixels(d, expected):
    # GT boundary between columns 9|10, prediction between 11|12. Contours (inner, per class):
    # class 0: GT column 9, pred column 11; class 1: GT column 10, pred column 12 -> every distance is 2 px.
    # So nothing matches for d < 2 (P = R = 0, F1 = 0) and everything for d >= 2 (F1 = 1), for both classes.
    assert boundary_f1(split_image(12), split_image(10), 2, tolerance=d / DIAG20) == pytest.approx(expected)


def test_square_shifted_by_three_pixels_partial_match():
    # Class 1: GT square rows 5..14 x cols 5..14, prediction the same square 3 px to the right; d = 1.5 px.
    # Class 1 contours: 36 px each. Pred top/bottom rows: cols 8..14 lie on the GT rows, col 15 is 1 px from
    #   GT corner (5,14) -> 8 matched each; pred left column (col 8, rows 6..13): only rows 6 and 13 are
    #   within 1 px of a GT row; right column (col 17): >= 3 px away. 8 + 8 + 2 = 18 -> P = 1/2.
    # Class 0 contours (the ring just outside each square, no corners): 40 px each. Pred row 4: cols 8..14
    #   on the GT ring, col 15 at 1 px and col 16 at sqrt(2) px from GT (5,15) -> 9; row 15 likewise 9;
    #   col 7: rows 5 and 14 are 1 px from the GT ring rows; col 18: none -> 20 / 40 -> P = 1/2.
    # The set-up is mirror-symmetric (swap pred and GT), so R = P, F1 = 1/2 for both classes, BF = 1/2.
    gt = np.zeros((20, 20), dtype=np.int64)
    gt[5:15, 5:15] = 1
    pred = np.roll(gt, 3, axis=1)
    scores = boundary_f1_per_class(pred, gt, 2, tolerance=1.5 / DIAG20)
    assert scores == pytest.approx([0.5, 0.5])


def test_class_only_in_prediction_scores_zero():
    # GT: columns < 10 class 0, else class 1. Prediction adds a 3x3 blob of class 2 at rows 4..6, cols 2..4.
    # d = 0.0075 * 28.3 = 0.21 px: only exact matches count.
    # Class 0: pred contour = column 9 (20 px, all matched) + the 12-px ring around the blob (unmatched);
    #   GT contour = column 9 (all matched). P = 20/32, R = 1 -> F1 = 40/52 = 10/13.
    # Class 1: identical contours -> 1. Class 2: only in the prediction -> 0. BF = (10/13 + 1 + 0) / 3 = 23/39.
    gt = split_image(10)
    pred = gt.copy()
    pred[4:7, 2:5] = 2
    assert boundary_f1_per_class(pred, gt, 3) == pytest.approx([10 / 13, 1.0, 0.0])
    assert boundary_f1(pred, gt, 3) == pytest.approx(23 / 39)


def test_identical_maps_score_one_and_absent_classes_are_not_counted():
    gt = smooth_labels(0, num_classes=6)
    pred = gt.copy()
    gt[:10] = 255  # whatever is predicted under void does not matter
    scores = boundary_f1_per_class(pred, gt, 8, ignore_index=255)
    assert scores[:6] == pytest.approx(np.ones(6))
    assert np.isnan(scores[6:]).all()  # classes 6, 7 appear nowhere
    assert boundary_f1(pred, gt, 8, ignore_index=255) == 1.0


def test_class_covering_the_image_in_both_maps_scores_one():
    full = np.zeros((8, 8), dtype=np.int64)
    assert boundary_f1(full, full, 3) == 1.0
    # ... but a spurious predicted region breaks it: class 0 now has a predicted contour and no GT one.
    pred = full.copy()
    pred[3:5, 3:5] = 1
    assert boundary_f1_per_class(pred, full, 3).tolist()[:2] == [0.0, 0.0]


def test_void_is_not_a_boundary_and_hides_predicted_contours():
    # GT: class 0 | void (cols 8..11) | class 1. The prediction puts its boundary at 9|10, inside void.
    # Pairs touching void never form boundaries, so neither map has a contour: both classes score 1.
    gt = split_image(12)
    gt[:, :8] = 0
    gt[:, 8:12] = 255
    pred = split_image(10)
    assert boundary_f1(pred, gt, 2, ignore_index=255) == 1.0
    # A class predicted only inside void is not counted at all.
    pred[:, 9] = 2
    assert np.isnan(boundary_f1_per_class(pred, gt, 3, ignore_index=255)[2])


def test_all_void_image_is_nan_and_skipped_in_the_dataset_mean():
    void = np.full((6, 6), 255)
    assert math.isnan(boundary_f1(np.zeros((6, 6), dtype=int), void, 2, ignore_index=255))
    m = SegmentationMetrics(2, ignore_index=255)
    m.update(torch.zeros(2, 6, 6, dtype=torch.long), torch.stack([torch.full((6, 6), 255), torch.zeros(6, 6).long()]))
    assert m.compute()["bf"] == 1.0  # only the second image counts


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tolerance", [0.0075, 0.02, 0.05])
def test_matches_the_per_class_distance_transform_reference(seed, tolerance):
    gt = smooth_labels(seed, num_classes=7)
    gt[gaussian_filter(np.random.default_rng(seed + 10).standard_normal(gt.shape), 5) > 0.05] = 7  # void blobs
    pred = np.roll(smooth_labels(seed, num_classes=7), (1, 2), axis=(0, 1))
    pred[20:40, 30:60] = smooth_labels(seed + 5, num_classes=7)[20:40, 30:60]
    got = boundary_f1(pred, gt, 7, ignore_index=7, tolerance=tolerance)
    assert 0.0 < got < 1.0
    assert got == pytest.approx(reference_f1(pred, gt, 7, 7, tolerance), abs=1e-12)


def test_more_than_64_classes_use_several_bit_words():
    gt = smooth_labels(3, num_classes=70, sigma=2.0)
    pred = np.roll(gt, 1, axis=1)
    assert boundary_f1(pred, gt, 70, tolerance=0.01) == pytest.approx(reference_f1(pred, gt, 70, None, 0.01))


@pytest.mark.parametrize("d", [0.5, 1.0, 2.0, math.sqrt(5), 4.5])
def test_disk_dilation_equals_thresholded_edt(d):
    bits = (np.random.default_rng(0).random((30, 40)) < 0.02).astype(np.uint8)
    expected = distance_transform_edt(bits == 0) <= d
    assert np.array_equal(_dilate_disk(bits, d) == 1, expected)


def test_disk_half_widths_at_the_paper_tolerance():
    assert _disk_half_widths(0.0075 * math.hypot(360, 480)) == [4, 4, 4, 3, 2]  # d = 4.5 px


def test_bad_inputs_raise_seglab_error():
    with pytest.raises(SeglabError, match="same shape"):
        boundary_f1(np.zeros((4, 4), int), np.zeros((4, 5), int), 2)
    with pytest.raises(SeglabError, match="outside"):
        boundary_f1(np.full((4, 4), 2), np.zeros((4, 4), int), 2)
    with pytest.raises(SeglabError, match="data.ignore_index"):
        boundary_f1(np.zeros((4, 4), int), np.full((4, 4), 9), 2, ignore_index=255)
