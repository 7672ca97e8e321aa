"""Binary segmentation metrics for EM membrane data (ISBI 2012): pixel error, foreground IoU, Rand error.

:func:`em_metrics` scores a stack of predicted label slices against the true ones
(class ``foreground`` = cell interior, anything else = membrane):

* ``pixel_error``: ``1 - pixel accuracy`` over the labelled pixels of all slices.
* ``foreground_iou``: ``TP / (TP + FP + FN)`` of the cell class, pooled over all slices.
* ``rand_error``: the *adapted Rand error* of :func:`skimage.metrics.adapted_rand_error`
  (``alpha = 0.5``), computed per slice on cell instances and averaged over the slices.
  Instances are the connected components of the cell class (4-connected by default) in
  the prediction and in the truth; ``ignore_index`` pixels belong to neither. Only
  pixels inside true cells count (true membrane is skimage's ignored label 0); predicted
  membrane pixels inside a true cell form one extra predicted segment (label 0), so thick
  predicted membranes cost a little.
  ``rand_precision`` (pixel pairs in one cell in both / pairs in one predicted cell)
  drops when cells merge; ``rand_recall`` (/ pairs in one true cell) drops when they split.

ISBI 2012's official ranking metric is the *foreground-restricted Rand F-score*
``V_Rand = sum p_ij^2 / (alpha sum s_i^2 + (1 - alpha) sum t_j^2)`` over the pixels of true
cells (Arganda-Carreras et al. 2015), reported as the error ``1 - V_Rand``. skimage
computes this quantity from the contingency table, counting pairs of distinct pixels
(``n^2 - n``) instead of squared probabilities. The challenge's own evaluation (a Fiji
script) starts from probability maps and may differ in details such as thresholding and
the handling of predicted boundary pixels, so numbers here compare seglab runs with each
other and approximate, but are not, leaderboard numbers.

Example:
    >>> scores = em_metrics(pred_stack, true_stack)   # N x H x W, 0 membrane / 1 cell
    >>> scores["rand_error"], scores["pixel_error"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from skimage.metrics import adapted_rand_error

from seglab.core.errors import SeglabError

__all__ = ["em_metrics", "cell_instances", "slice_rand_scores"]

ArrayLike = np.ndarray | torch.Tensor


def _as_stack(labels: ArrayLike | Sequence[ArrayLike], name: str) -> np.ndarray:
    """``N x H x W`` integer numpy stack from a tensor, an array or a list of ``H x W`` slices."""
    if isinstance(labels, (np.ndarray, torch.Tensor)):
        slices = [labels]
    else:
        slices = list(labels)
    arrays = [s.detach().cpu().numpy() if isinstance(s, torch.Tensor) else np.asarray(s) for s in slices]
    if isinstance(labels, (np.ndarray, torch.Tensor)) and arrays[0].ndim == 3:
        arrays = list(arrays[0])
    if not arrays or any(a.ndim != 2 for a in arrays):
        raise SeglabError(f"{name} must be an H x W slice, an N x H x W stack or a list of H x W slices.")
    if any(not np.issubdtype(a.dtype, np.integer) and a.dtype != np.bool_ for a in arrays):
        raise SeglabError(f"{name} must hold integer labels (threshold probabilities first, e.g. logits_to_labels).")
    return np.stack(arrays).astype(np.int64)


def cell_instances(labels: np.ndarray, foreground: int = 1, valid: np.ndarray | None = None,
                   connectivity: int = 1) -> np.ndarray:
    """Connected components of the ``foreground`` class: ids ``1..K`` for cells, 0 elsewhere.

    Args:
        labels: ``H x W`` class ids.
        foreground: The cell class.
        valid: Optional ``H x W`` bool; pixels outside it never belong to a cell.
        connectivity: 1 for 4-connected cells, 2 for 8-connected.
    """
    cells = labels == foreground
    if valid is not None:
        cells &= valid
    instances, _ = ndimage.label(cells, structure=ndimage.generate_binary_structure(2, connectivity))
    return instances


def slice_rand_scores(pred: np.ndarray, true: np.ndarray, foreground: int = 1, valid: np.ndarray | None = None,
                      connectivity: int = 1) -> tuple[float, float, float]:
    """``(rand_error, rand_precision, rand_recall)`` of one slice; NaNs when the truth has no cell pixel pair."""
    true_cells = cell_instances(true, foreground, valid, connectivity)
    if np.count_nonzero(true_cells) < 2:
        return float("nan"), float("nan"), float("nan")
    # Ignored pixels count nowhere: they can't link two predicted cells either.
    pred_cells = cell_instances(pred, foreground, valid, connectivity)
    error, by_true_pairs, by_pred_pairs = adapted_rand_error(true_cells, pred_cells, ignore_labels=(0,))
    # skimage 0.26 divides its "precision" by the true image's pairs and its "recall" by the
    # test image's pairs (its table rows are the truth); name them by what they measure.
    return float(error), float(by_pred_pairs), float(by_true_pairs)


def em_metrics(pred_labels: ArrayLike | Sequence[ArrayLike], true_labels: ArrayLike | Sequence[ArrayLike], *,
               foreground: int = 1, ignore_index: int | None = 255, connectivity: int = 1) -> dict[str, Any]:
    """Pixel error, foreground IoU and adapted Rand error of predicted vs true binary label slices.

    Args:
        pred_labels: Predicted class ids: ``H x W``, ``N x H x W`` or a list of ``H x W``
            (numpy or torch).
        true_labels: True class ids, same layout and shapes.
        foreground: The cell class id (1 for seglab's ISBI 2012 data set).
        ignore_index: True label excluded from every metric, or None.
        connectivity: Cell connectivity for the Rand error (1: 4-connected, 2: 8-connected).

    Returns:
        ``pixel_error``, ``foreground_iou``, ``rand_error``, ``rand_precision``,
        ``rand_recall`` (means over slices with true cells), ``rand_error_per_slice``
        and ``num_slices``. NaN where undefined (e.g. no labelled pixel).

    Raises:
        SeglabError: non-integer labels, or mismatched counts or shapes.
    """
    pred, true = _as_stack(pred_labels, "pred_labels"), _as_stack(true_labels, "true_labels")
    if pred.shape != true.shape:
        raise SeglabError(f"Predicted labels {pred.shape} and true labels {true.shape} differ in shape.")
    valid = true != ignore_index if ignore_index is not None else np.ones(true.shape, bool)
    pred_fg, true_fg = (pred == foreground) & valid, (true == foreground) & valid
    labelled = int(valid.sum())
    wrong = int(((pred_fg != true_fg) & valid).sum())
    union = int((pred_fg | true_fg).sum())
    per_slice = np.array([slice_rand_scores(p, t, foreground, v, connectivity) for p, t, v in zip(pred, true, valid)])
    scored = ~np.isnan(per_slice[:, 0])
    means = per_slice[scored].mean(axis=0) if scored.any() else np.full(3, np.nan)
    return {
        "pixel_error": wrong / labelled if labelled else float("nan"),
        "foreground_iou": int((pred_fg & true_fg).sum()) / union if union else float("nan"),
        "rand_error": float(means[0]),
        "rand_precision": float(means[1]),
        "rand_recall": float(means[2]),
        "rand_error_per_slice": per_slice[:, 0].tolist(),
        "num_slices": int(pred.shape[0]),
    }
