"""Boundary F1 (BF) score, the contour-accuracy metric of the SegNet paper (Csurka et al., BMVC 2013).

Per image and per class, the boundary pixels of the class region in the prediction
are matched against those in the ground truth within a tolerance of
``d = tolerance * image diagonal`` pixels (0.75% of the diagonal, 4.5 px at 360x480):

* ``P`` = matched predicted boundary pixels / predicted boundary pixels;
* ``R`` = matched ground-truth boundary pixels / ground-truth boundary pixels;
* ``F1 = 2PR / (P + R)``.

The image score is the mean F1 over the counted classes and the data-set score is
the mean over images. Two rule sets are offered (``protocol`` / ``bf_protocol``, one of
:data:`BF_PROTOCOLS`): ``"fast"`` (the default) and ``"paper"``, which follows the SegNet
tutorial's own script (``computeBFmeasure.m`` with BSDS ``seg2bdry`` /
``correspondPixels``). Choices, and how they relate to that MATLAB code:

* **Boundary pixels.** A pixel is on the boundary of class ``c`` when its label is
  ``c`` and one of its 4-neighbours has another label: the one-pixel-thick inner
  contour of the region, close to ``seg2bdry(mask, 'imageSize')``. The image border
  is not a boundary.
* **Void.** ``fast``: only pixel pairs whose ground truth is labelled on both sides can
  form a boundary, in the prediction as well as in the ground truth. So the edge of a void
  region is never a boundary, and predicted contours inside void are not scored.
  ``paper`` (as the script): nothing is masked. Class ``c``'s boundaries come from
  ``gt == c`` and ``pred == c`` over the whole image, void pixels being simply "not c":
  a class region touching void has a ground-truth boundary along that edge, and the
  prediction is scored inside void too.
* **Matching.** ``fast``: a boundary pixel is matched when its Euclidean distance to the nearest
  boundary pixel of the same class in the other map is ``<= d``: the thresholded
  Euclidean distance transform. It is computed as a dilation by the disk of radius
  ``d`` for all classes at once (one bit per class), which gives exactly the same
  result as ``scipy.ndimage.distance_transform_edt(...) <= d`` per class at a tenth
  of the cost (~10 ms for a 360x480, 11-class image). ``paper``: one-to-one, as BSDS
  ``correspondPixels``, so two predicted pixels cannot share one ground-truth pixel: a
  maximum-cardinality bipartite matching of the pairs within ``d`` (KD-tree pairs,
  Hopcroft-Karp; :mod:`seglab.metrics.boundary_paper` says exactly how this relates to
  BSDS's min-cost assignment). On the same contours the distance rule can only score
  higher, where one contour is denser than the other (a doubled contour beside a single one: P = 1 instead
  of 0.5).
* **Counted classes.** A class is scored when it appears in the ground truth *or* the
  prediction, as the official code does; the paper's text says "present in the ground
  truth". "Appears" means on labelled pixels for ``fast``; for ``paper``, as the script
  has no void mask, anywhere in the prediction (so a class that the ground truth lacks
  and the prediction puts on void pixels only is counted, and scores 0). Edge cases, both protocols: a class in only one of the two
  maps, or with boundary pixels in only one, scores 0; a class in both maps with no
  boundary pixels in either (it covers every labelled pixel; for ``paper``, the whole
  image) scores 1. An image with no counted class gives NaN and is left out of the
  data-set mean: for ``fast`` an all-void image; for ``paper`` none (every predicted label
  counts, so an all-void image scores 0).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from seglab.core.errors import SeglabError, did_you_mean
from seglab.metrics.boundary_paper import one_to_one_matches

__all__ = ["BF_PROTOCOLS", "boundary_f1", "boundary_f1_per_class", "boundary_map", "check_bf_protocol",
           "BoundaryF1Accumulator"]

#: BF rule sets: ``fast`` (void masked, distance matching) and ``paper`` (the SegNet script's).
BF_PROTOCOLS: tuple[str, ...] = ("fast", "paper")


def check_bf_protocol(protocol: str) -> str:
    """Return ``protocol`` when it is one of :data:`BF_PROTOCOLS`, else raise a :class:`SeglabError`."""
    if protocol not in BF_PROTOCOLS:
        raise SeglabError(f"Unknown BF protocol {protocol!r}.{did_you_mean(str(protocol), BF_PROTOCOLS)} "
                          f"Choose one of: {', '.join(BF_PROTOCOLS)}.")
    return protocol


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


def _disk_half_widths(max_dist: float) -> list[int]:
    """``half[dy]`` = largest ``dx`` with ``dx^2 + dy^2 <= max_dist^2``, for ``dy = 0 .. floor(max_dist)``."""
    eps = 1e-9  # tolerance * diagonal is a float product; do not lose an offset lying exactly on the circle
    radius = int(math.floor(max_dist + eps))
    return [int(math.floor(math.sqrt(max(max_dist**2 - dy * dy, 0.0)) + eps)) for dy in range(radius + 1)]


def _dilate_disk(bits: np.ndarray, max_dist: float) -> np.ndarray:
    """Bitwise-OR dilation of ``bits`` by the Euclidean disk of radius ``max_dist``.

    A pixel of the result holds bit ``c`` exactly when some pixel within distance
    ``max_dist`` holds it, i.e. when the Euclidean distance transform of class ``c``'s
    map is ``<= max_dist`` there, for all classes at once. The disk is a stack of
    horizontal runs, so the work is about ``3 * max_dist`` shifted ORs instead of one
    distance transform per class.
    """
    half = _disk_half_widths(max_dist)
    runs = [bits]  # runs[k]: OR over horizontal offsets -k..k
    for k in range(1, half[0] + 1):
        run = runs[-1].copy()
        run[:, k:] |= bits[:, :-k]
        run[:, :-k] |= bits[:, k:]
        runs.append(run)
    out = runs[half[0]].copy()
    for dy in range(1, len(half)):
        run = runs[half[dy]]
        out[dy:] |= run[:-dy]
        out[:-dy] |= run[dy:]
    return out


def _bit_dtype(n: int) -> type:
    return np.uint8 if n <= 8 else np.uint16 if n <= 16 else np.uint32 if n <= 32 else np.uint64


def _matched(points: np.ndarray, labels: np.ndarray, ref_points: np.ndarray, ref_labels: np.ndarray,
             shape: tuple[int, int], num_classes: int, max_dist: float) -> np.ndarray:
    """For each boundary pixel, whether a reference boundary pixel of the same class lies within ``max_dist``.

    Points are flat pixel indices. Each boundary pixel belongs to exactly one class (its
    own label), so the reference map stores one bit per class per pixel; classes are
    packed 64 to a word.
    """
    out = np.zeros(len(points), dtype=bool)
    for base in range(0, num_classes, 64):
        n = min(64, num_classes - base)
        dtype = _bit_dtype(n)
        masks = np.ones(n, dtype=dtype) << np.arange(n, dtype=dtype)  # masks[k] = bit of class base + k
        if num_classes <= 64:  # the usual case: one word holds every class, no selection needed
            sel_ref, sel = slice(None), slice(None)
        else:
            sel_ref = (ref_labels >= base) & (ref_labels < base + 64)
            sel = (labels >= base) & (labels < base + 64)
        bits = np.zeros(shape[0] * shape[1], dtype=dtype)
        bits[ref_points[sel_ref]] = masks[ref_labels[sel_ref] - base]
        near = _dilate_disk(bits.reshape(shape), max_dist).ravel()[points[sel]]
        out[sel] = (near & masks[labels[sel] - base]) != 0
    return out


def _boundary_points(labels: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices and classes of all boundary pixels."""
    points = np.flatnonzero(boundary_map(labels, valid))
    return points, labels.ravel()[points]


def _class_f1(n_pr: np.ndarray, hit_pr: np.ndarray, n_gt: np.ndarray, hit_gt: np.ndarray) -> np.ndarray:
    """Per-class F1 from boundary-pixel counts and matched counts, with the documented edge cases."""
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = hit_pr / n_pr
        recall = hit_gt / n_gt
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    f1 = np.where((n_pr == 0) | (n_gt == 0), 0.0, f1)  # boundary in only one map
    return np.where((n_pr == 0) & (n_gt == 0), 1.0, f1)  # in neither: the class covers every labelled pixel


def _check_pair(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.ndim != 2 or pred.shape != target.shape:
        raise SeglabError(
            f"Boundary F1 needs two H x W label maps of the same shape, got {pred.shape} and {target.shape}."
        )
    return pred.astype(np.int64, copy=False), target.astype(np.int64, copy=False)


def boundary_f1_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None = None,
                          tolerance: float = 0.0075, protocol: str = "fast") -> np.ndarray:
    """Per-class boundary F1 of one image.

    Args:
        pred: ``H x W`` predicted labels in ``[0, num_classes)``.
        target: ``H x W`` ground-truth labels; ``ignore_index`` marks void.
        num_classes: Number of classes.
        ignore_index: Void label in ``target``, or None.
        tolerance: Match distance as a fraction of the image diagonal.
        protocol: ``"fast"`` or ``"paper"`` (see the module docstring).

    Returns:
        Float array of length ``num_classes``; NaN for classes not counted.

    Raises:
        SeglabError: On shape mismatch, labels outside ``[0, num_classes)`` or an unknown protocol.
    """
    pred, target = _check_pair(pred, target)
    paper = check_bf_protocol(protocol) == "paper"
    valid = None if ignore_index is None else target != ignore_index
    # Void pixels get label -1 so they never count as presence. fast masks their pairs; paper
    # keeps them (void is "not c") and keeps the whole prediction, as the SegNet script does.
    gt = target if valid is None else np.where(valid, target, -1)
    pr = pred if valid is None or paper else np.where(valid, pred, -1)
    mask = None if paper else valid
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
    gt_pts, gt_lab = _boundary_points(gt, mask)
    pr_pts, pr_lab = _boundary_points(pr, mask)
    if paper:
        keep = gt_lab >= 0  # void pixels beside a class are boundary pixels of no class
        gt_pts, gt_lab = gt_pts[keep], gt_lab[keep]
        hit_pr = hit_gt = one_to_one_matches(pr_pts, pr_lab, gt_pts, gt_lab, gt.shape[1], num_classes, max_dist)
    else:  # boundary pixels always have valid labels (pairs touching void are masked): no -1 here
        hit_pr = np.bincount(pr_lab, _matched(pr_pts, pr_lab, gt_pts, gt_lab, gt.shape, num_classes, max_dist),
                             num_classes)
        hit_gt = np.bincount(gt_lab, _matched(gt_pts, gt_lab, pr_pts, pr_lab, gt.shape, num_classes, max_dist),
                             num_classes)
    scores = _class_f1(np.bincount(pr_lab, minlength=num_classes), hit_pr,
                       np.bincount(gt_lab, minlength=num_classes), hit_gt)
    scores = np.where(gt_present & pr_present, scores, 0.0)  # a class in only one map scores 0
    scores[~(gt_present | pr_present)] = np.nan  # not counted
    return scores


def boundary_f1(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None = None,
                tolerance: float = 0.0075, protocol: str = "fast") -> float:
    """Boundary F1 of one image: the mean over counted classes (NaN when none is counted).

    See :func:`boundary_f1_per_class` for the arguments and the module docstring for the rules.
    """
    scores = boundary_f1_per_class(pred, target, num_classes, ignore_index, tolerance, protocol)
    scores = scores[~np.isnan(scores)]
    return float(scores.mean()) if scores.size else math.nan


class BoundaryF1Accumulator:
    """Collects per-image BF over a split; the data-set BF is the mean over images.

    Args:
        num_classes: Number of classes.
        ignore_index: Void label in the ground truth, or None.
        tolerance: Match distance as a fraction of the image diagonal.
        protocol: ``"fast"`` (default) or ``"paper"`` (see the module docstring).
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None, tolerance: float = 0.0075,
                 protocol: str = "fast") -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.tolerance = tolerance
        self.protocol = check_bf_protocol(protocol)
        self.scores: list[float] = []

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Score a batch: ``N x H x W`` (or ``H x W``) label arrays on the CPU."""
        pred, target = np.asarray(pred), np.asarray(target)
        if pred.ndim == 2:
            pred, target = pred[None], target[None]
        for p, t in zip(pred, target):
            self.scores.append(boundary_f1(p, t, self.num_classes, self.ignore_index, self.tolerance, self.protocol))

    def merge(self, other: BoundaryF1Accumulator) -> None:
        """Append another accumulator's per-image scores (both must use the same protocol)."""
        if other.protocol != self.protocol:
            raise SeglabError(f"Cannot merge BF scores of protocol {other.protocol!r} into {self.protocol!r}.")
        self.scores.extend(other.scores)

    def compute(self) -> float:
        """Mean BF over the images that had a class to score (NaN when none did)."""
        s = np.asarray(self.scores, dtype=float)
        s = s[~np.isnan(s)]
        return float(s.mean()) if s.size else math.nan
