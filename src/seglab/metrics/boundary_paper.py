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
2. **Matching.** Those pairs are the edges of a bipartite graph, and Hopcroft-Karp, started
   from a greedy nearest-first matching (:func:`_maximum_matching`), finds a
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
from scipy.spatial import cKDTree

__all__ = ["one_to_one_matches"]

_EPS = 1e-9  # as in the fast protocol's disk: keep offsets lying exactly on the circle of radius d


def _plane(points: np.ndarray, labels: np.ndarray, width: int, stride: int) -> np.ndarray:
    """``(row, column + label * stride)`` of flat pixel indices, as float coordinates."""
    rows, cols = np.divmod(points, width)
    return np.column_stack([rows, cols + labels * stride]).astype(np.float64)


def _maximum_matching(pr_index: np.ndarray, gt_index: np.ndarray, n_left: int, n_right: int) -> list[int]:
    """A maximum matching (the partner of each predicted pixel, or -1) of the bipartite graph whose edges are ``(pr_index[k], gt_index[k])``,
    listed nearest first per predicted pixel: Hopcroft-Karp from a greedy nearest-first matching.

    scipy's ``maximum_bipartite_matching`` gives the same size but took 523 s on one 512x512 ISBI
    slice (308k edges); a greedy start leaves few pixels for the augmenting phases, which here
    take seconds.
    """
    starts = np.searchsorted(pr_index, np.arange(n_left + 1))
    neighbours = gt_index.tolist()
    adj = [neighbours[starts[u]:starts[u + 1]] for u in range(n_left)]
    match_l, match_r = [-1] * n_left, [-1] * n_right
    for u, vs in enumerate(adj):  # greedy: each pixel takes its nearest free partner
        for v in vs:
            if match_r[v] == -1:
                match_l[u], match_r[v] = v, u
                break
    infinite = n_left + 1
    while True:
        free = [u for u in range(n_left) if match_l[u] == -1 and adj[u]]
        dist = [infinite] * n_left
        for u in free:
            dist[u] = 0
        queue, head, found = list(free), 0, False
        while head < len(queue):  # BFS: layers of alternating paths from the free pixels
            u = queue[head]
            head += 1
            for v in adj[u]:
                w = match_r[v]
                if w == -1:
                    found = True
                elif dist[w] == infinite:
                    dist[w] = dist[u] + 1
                    queue.append(w)
        if not found:
            break
        edge = [0] * n_left
        for root in free:  # DFS along the layers, iteratively (paths can be long)
            stack, via = [root], []
            while stack:
                u = stack[-1]
                if edge[u] == len(adj[u]):
                    dist[u] = infinite  # a dead end for the rest of this phase
                    stack.pop()
                    if via:
                        via.pop()
                    continue
                v = adj[u][edge[u]]
                edge[u] += 1
                w = match_r[v]
                if w == -1:  # a free partner: flip the path
                    for x, y in zip(stack, [*via, v]):
                        match_l[x], match_r[y] = y, x
                    break
                if dist[w] == dist[u] + 1:
                    stack.append(w)
                    via.append(v)
    return match_l


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
    order = np.lexsort((pairs["v"], pairs["i"]))  # by predicted pixel, nearest partner first
    match = np.asarray(_maximum_matching(pairs["i"][order], pairs["j"][order], len(pr_points), len(gt_points)))
    return np.bincount(pr_labels[match >= 0], minlength=num_classes).astype(np.int64)
