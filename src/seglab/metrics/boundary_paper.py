"""One-to-one boundary matching for ``bf_protocol="paper"`` (see :mod:`seglab.metrics.boundary`).

The SegNet paper's BF script (``computeBFmeasure.m``) matches the boundary pixels of one
class in the prediction and in the ground truth with BSDS ``correspondPixels``: a pixel may
be matched to at most one pixel of the other map, and only to one within the tolerance
distance. This module computes that matching's size exactly as follows:

1. **Pairs.** The boundary pixels of all classes are placed in one plane, class ``c``
   shifted by ``c * (W + ceil(d) + 1)`` columns so that pixels of different classes are
   always more than ``d`` apart. One ``scipy.spatial.cKDTree`` per map and
   ``sparse_distance_matrix(..., max_distance=d)`` give every (predicted, ground-truth)
   pair of the same class at Euclidean distance ``<= d`` (the same closed disk as the
   ``fast`` protocol, with the same ``1e-9`` slack for offsets lying exactly on the circle).
2. **Matching.** Those pairs are the edges of a bipartite graph, and
   ``scipy.sparse.csgraph.maximum_bipartite_matching`` (Hopcroft-Karp) finds a
   *maximum-cardinality* matching of it. The graph is a disjoint union over classes, so this
   is a maximum matching of every class at once; the matched pixels of class ``c`` are the
   matched rows whose label is ``c``. A matching has as many matched predicted pixels as
   matched ground-truth pixels, so ``P = m_c / |pred_c|`` and ``R = m_c / |gt_c|`` with the
   same ``m_c``.

How this differs from BSDS ``correspondPixels`` (``matchEdgeMaps`` in BSDS ``match.cc``,
read for this note): BSDS keeps only the pixels that have a partner within ``d``, joins
them by the same within-``d`` edges weighted by length (integer CSA weights,
``rint(100 * length)``), gives each side one outlier node per pixel of the other side (each
pixel joined to 6 outliers drawn at random, outliers to 6 random outliers, all at the
outlier cost ``oc = 100 * d``), adds a far costlier diagonal overlay so that a perfect
matching always exists, and solves that *minimum-cost perfect* assignment with Goldberg's
CSA. With ``k`` real pairs its cost is ``sum(pair lengths) + oc * (n1 + n2 - k)``: each
extra pair saves ``oc = 100 d`` and costs at most ``d``, so it matches as many pixels as it
can, unless one more pair would need over ``100 d`` more total length (only when more than
~100 pairs are rearranged) or the random outlier edges get in the way. P and R depend only
on *how many* pixels are matched, never on which pairs, so this module ignores pair lengths
and asks directly for the largest matching. A maximum-cardinality matching bounds the size
of every one-to-one matching, so this count is ``>=`` BSDS's on the same boundary maps and
equal whenever BSDS's assignment is a maximum matching (the usual case); unlike BSDS it
is deterministic (no random outlier edges).
The boundary maps themselves are seglab's (see
:func:`seglab.metrics.boundary.boundary_map`), close to but not bit-identical with
``seg2bdry(mask, 'imageSize')``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching
from scipy.spatial import cKDTree

__all__ = ["one_to_one_matches"]

_EPS = 1e-9  # as in the fast protocol's disk: keep offsets lying exactly on the circle of radius d


def _plane(points: np.ndarray, labels: np.ndarray, width: int, stride: int) -> np.ndarray:
    """``(row, column + label * stride)`` of flat pixel indices, as float coordinates."""
    rows, cols = np.divmod(points, width)
    return np.column_stack([rows, cols + labels * stride]).astype(np.float64)


def one_to_one_matches(pr_points: np.ndarray, pr_labels: np.ndarray, gt_points: np.ndarray,
                       gt_labels: np.ndarray, width: int, num_classes: int, max_dist: float) -> np.ndarray:
    """Per class, the size of a maximum one-to-one matching of predicted to ground-truth boundary pixels.

    Args:
        pr_points, gt_points: Flat pixel indices (row-major, image ``width`` columns) of the
            predicted and ground-truth boundary pixels.
        pr_labels, gt_labels: The class of each of those pixels, in ``[0, num_classes)``.
        width: Image width in pixels.
        num_classes: Number of classes.
        max_dist: Match distance in pixels; a pair is an edge when its Euclidean distance is ``<= max_dist``.

    Returns:
        ``int64`` array of length ``num_classes``: matched pairs of each class (each one a
        matched predicted pixel and a matched ground-truth pixel).
    """
    counts = np.zeros(num_classes, dtype=np.int64)
    if len(pr_points) == 0 or len(gt_points) == 0:
        return counts
    stride = width + math.ceil(max_dist) + 1  # classes farther apart than max_dist
    pr_tree = cKDTree(_plane(pr_points, pr_labels, width, stride))
    gt_tree = cKDTree(_plane(gt_points, gt_labels, width, stride))
    pairs = pr_tree.sparse_distance_matrix(gt_tree, max_dist + _EPS, output_type="ndarray")
    if len(pairs) == 0:
        return counts
    graph = csr_matrix((np.ones(len(pairs), dtype=np.int8), (pairs["i"], pairs["j"])),
                       shape=(len(pr_points), len(gt_points)))
    match = maximum_bipartite_matching(graph, perm_type="column")  # ground-truth pixel of each predicted one, or -1
    return np.bincount(pr_labels[match >= 0], minlength=num_classes).astype(np.int64)
