"""Boundary F1 (BF) score, the contour-accuracy metric of the SegNet paper (Csurka et al., BMVC 2013).

Per image and per class, the boundary pixels of the class region in the prediction
are matched against those in the ground truth within a tolerance of
``d = tolerance * image diagonal`` pixels (0.75% of the diagonal, 4.5 px at 360x480):

* ``P`` = matched predicted boundary pixels / predicted boundary pixels;
* ``R`` = matched ground-truth boundary pixels / ground-truth boundary pixels;
* ``F1 = 2PR / (P + R)``.

The image score is the mean F1 over the counted classes and the data-set score is
the mean over images. Choices, and how they relate to the official MATLAB code
(``computeBFmeasure.m`` with BSDS ``seg2bdry`` / ``correspondPixels``):

* **Boundary pixels.** A pixel is on the boundary of class ``c`` when its label is
  ``c`` and one of its 4-neighbours has another label: the one-pixel-thick inner
  contour of the region, close to ``seg2bdry(mask, 'imageSize')``. The image border
  is not a boundary.
* **Void.** Only pixel pairs whose ground truth is labelled on both sides can form a
  boundary, in the prediction as well as in the ground truth. So the edge of a void
  region is never a boundary, and predicted contours inside void are not scored.
* **Matching.** A boundary pixel is matched when its Euclidean distance to the nearest
  boundary pixel of the same class in the other map is ``<= d`` (a distance
  transform). BSDS ``correspondPixels`` instead solves a one-to-one bipartite
  matching, so two predicted pixels cannot share one ground-truth pixel; the
  distance-transform version is the usual fast approximation and can only score
  higher, slightly, where one contour is denser than the other.
* **Counted classes.** A class is scored when it appears (on labelled pixels) in the
  ground truth *or* the prediction, as the official code does; the paper's text says
  "present in the ground truth". Edge cases: a class in only one of the two maps, or
  with boundary pixels in only one, scores 0; a class in both maps with no boundary
  pixels in either (it covers every labelled pixel) scores 1. An image with no
  counted class (all void) gives NaN and is left out of the data-set mean.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.ndimage import distance_transform_edt

from ..errors import SeglabError

__all__ = ["boundary_f1", "boundary_f1_per_class", "boundary_map", "BoundaryF1Accumulator"]


def boundary_map(labels: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Pixels that have a 4-neighbour with a different label (each marks its own class's boundary).

    Args:
        labels: ``H x W`` integer label map.
        valid: Optional ``H x W`` bool map; a pair of neighbours forms a boundary only
            when both are valid.

    Returns:
        ``H x W`` bool map. ``boundary_map(labels) & (labels == c)`` is class ``c``'s boundary.
    """
    out = np.zeros(labels.shape, dtype=bool)
    for axis in (0, 1):
        a = [slice(None), slice(None)]
        b = [slice(None), slice(None)]
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        a, b = tuple(a), tuple(b)
        diff = labels[a] != labels[b]
        if valid is not None:
            diff &= valid[a] & valid[b]
        out[a] |= diff
        out[b] |= diff
    return out


def _points_by_class(labels: np.ndarray, boundary: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """Group the boundary pixels' (row, col) coordinates by their class (one pass, no per-class scan)."""
    ys, xs = np.nonzero(boundary)
    cls = labels[ys, xs]
    order = np.argsort(cls, kind="stable")
    counts = np.bincount(cls, minlength=num_classes)[:num_classes]
    pts = np.stack([ys[order], xs[order]], axis=1)
    return np.split(pts, np.cumsum(counts)[:-1])


def _count_matched(src: np.ndarray, dst: np.ndarray, max_dist: float) -> tuple[int, int]:
    """Count ``src`` points within ``max_dist`` of some ``dst`` point, and vice versa.

    Distance transforms run on the bounding box of both point sets only: every
    point of either set lies inside it, so distances within the box are exact.
    """
    lo = np.minimum(src.min(axis=0), dst.min(axis=0))
    hi = np.maximum(src.max(axis=0), dst.max(axis=0)) + 1
    shape = tuple(int(v) for v in hi - lo)
    src, dst = src - lo, dst - lo

    def within(points: np.ndarray, features: np.ndarray) -> int:
        grid = np.ones(shape, dtype=bool)
        grid[features[:, 0], features[:, 1]] = False  # EDT measures distance to the zeros
        dist = distance_transform_edt(grid)
        return int(np.count_nonzero(dist[points[:, 0], points[:, 1]] <= max_dist))

    return within(src, dst), within(dst, src)


def _f1(pred_pts: np.ndarray, gt_pts: np.ndarray, max_dist: float) -> float:
    """Boundary F1 of one class present in both maps."""
    if len(pred_pts) == 0 and len(gt_pts) == 0:
        return 1.0  # the class covers every labelled pixel in both maps
    if len(pred_pts) == 0 or len(gt_pts) == 0:
        return 0.0
    matched_pred, matched_gt = _count_matched(pred_pts, gt_pts, max_dist)
    precision = matched_pred / len(pred_pts)
    recall = matched_gt / len(gt_pts)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _check_pair(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.ndim != 2 or pred.shape != target.shape:
        raise SeglabError(
            f"Boundary F1 needs two H x W label maps of the same shape, got {pred.shape} and {target.shape}."
        )
    return pred.astype(np.int64, copy=False), target.astype(np.int64, copy=False)


def boundary_f1_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None = None,
                          tolerance: float = 0.0075) -> np.ndarray:
    """Per-class boundary F1 of one image.

    Args:
        pred: ``H x W`` predicted labels in ``[0, num_classes)``.
        target: ``H x W`` ground-truth labels; ``ignore_index`` marks void.
        num_classes: Number of classes.
        ignore_index: Void label in ``target``, or None.
        tolerance: Match distance as a fraction of the image diagonal.

    Returns:
        Float array of length ``num_classes``; NaN for classes not counted.

    Raises:
        SeglabError: On shape mismatch or labels outside ``[0, num_classes)``.
    """
    pred, target = _check_pair(pred, target)
    valid = None if ignore_index is None else target != ignore_index
    # Void pixels get label -1 so they never count as presence; their pairs are masked anyway.
    gt = target if valid is None else np.where(valid, target, -1)
    pr = pred if valid is None else np.where(valid, pred, -1)
    tv = target if valid is None else target[valid]
    for name, lab in (("Predictions", pred), ("Ground truth", tv)):
        if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
            raise SeglabError(
                f"{name} hold labels in [{lab.min()}, {lab.max()}], outside [0, {num_classes - 1}] "
                f"(ignore_index={ignore_index}). Set --data.num_classes or --data.ignore_index to match the masks."
            )
    gt_present = np.bincount(gt[gt >= 0], minlength=num_classes) > 0
    pr_present = np.bincount(pr[pr >= 0], minlength=num_classes) > 0
    max_dist = tolerance * math.hypot(*target.shape)
    # Boundary pixels always have valid labels (pairs touching void are masked), so -1 never appears here.
    gt_pts = _points_by_class(gt, boundary_map(gt, valid), num_classes)
    pr_pts = _points_by_class(pr, boundary_map(pr, valid), num_classes)
    scores = np.full(num_classes, np.nan)
    for c in np.flatnonzero(gt_present | pr_present):
        scores[c] = _f1(pr_pts[c], gt_pts[c], max_dist) if gt_present[c] and pr_present[c] else 0.0
    return scores


def boundary_f1(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None = None,
                tolerance: float = 0.0075) -> float:
    """Boundary F1 of one image: the mean over counted classes (NaN when none is counted).

    See :func:`boundary_f1_per_class` for the arguments and the module docstring for the rules.
    """
    scores = boundary_f1_per_class(pred, target, num_classes, ignore_index, tolerance)
    scores = scores[~np.isnan(scores)]
    return float(scores.mean()) if scores.size else math.nan


class BoundaryF1Accumulator:
    """Collects per-image BF over a split; the data-set BF is the mean over images.

    Args:
        num_classes: Number of classes.
        ignore_index: Void label in the ground truth, or None.
        tolerance: Match distance as a fraction of the image diagonal.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None, tolerance: float = 0.0075) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.tolerance = tolerance
        self.scores: list[float] = []

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Score a batch: ``N x H x W`` (or ``H x W``) label arrays on the CPU."""
        pred, target = np.asarray(pred), np.asarray(target)
        if pred.ndim == 2:
            pred, target = pred[None], target[None]
        for p, t in zip(pred, target):
            self.scores.append(boundary_f1(p, t, self.num_classes, self.ignore_index, self.tolerance))

    def merge(self, other: BoundaryF1Accumulator) -> None:
        """Append another accumulator's per-image scores."""
        self.scores.extend(other.scores)

    def compute(self) -> float:
        """Mean BF over the images that had a class to score (NaN when none did)."""
        s = np.asarray(self.scores, dtype=float)
        s = s[~np.isnan(s)]
        return float(s.mean()) if s.size else math.nan
