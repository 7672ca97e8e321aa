"""Dataset-level confusion matrix and the SegNet accuracy metrics derived from it.

This follows the SegNet evaluation script (``Scripts/compute_test_results.m`` in
SegNet-Tutorial): pixels whose ground truth is the ignore (void) label are removed
from both prediction and ground truth, **one** confusion matrix is accumulated over
the whole split, and every metric is read off that single matrix:

* global accuracy ``G = trace / sum``;
* class-average accuracy ``C`` = mean over classes of recall ``TP / GT``;
* ``IoU_c = TP / (GT + Pred - TP)``, mean IoU and frequency-weighted IoU.

Classes with no ground-truth pixel in the split are left out of ``C`` (their recall
is 0/0), and classes absent from both ground truth and prediction (union 0) are left
out of mIoU; both are NaN-means. On CamVid test every class is present, so this only
matters on small or unusual splits.

Boundary F1 is the mean over images of :func:`seglab.metrics.boundary.boundary_f1` under
``bf_protocol``: ``"fast"`` (default: void masked, distance matching) or ``"paper"`` (the
SegNet script's rules: no void mask, one-to-one matching); ``compute()`` reports which.

Example:
    >>> m = SegmentationMetrics(num_classes=11, ignore_index=11, compute_bf=False)
    >>> m.update(pred, target)  # N x H x W integer tensors, any device
    >>> m.compute()["miou"]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from seglab.core.errors import SeglabError
from seglab.metrics.boundary import BoundaryF1Accumulator, check_bf_protocol

__all__ = [
    "SegmentationMetrics",
    "confusion_matrix",
    "metrics_from_confusion",
    "logits_to_labels",
]


def logits_to_labels(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Turn model logits ``N x C x H x W`` into integer labels ``N x H x W``.

    Args:
        logits: Raw network outputs. With ``C > 1`` the label is the argmax over
            channels; with ``C == 1`` (a binary model trained with a sigmoid) the label
            is ``sigmoid(logit) > threshold``, i.e. 1 for foreground.
        threshold: Probability threshold used only by 1-channel models.

    Returns:
        An ``int64`` label tensor on the device of ``logits``.
    """
    if logits.dim() != 4:
        raise SeglabError(f"Expected logits shaped N x C x H x W, got shape {tuple(logits.shape)}.")
    if logits.shape[1] == 1:
        return (torch.sigmoid(logits[:, 0].float()) > threshold).long()
    return logits.argmax(dim=1)


def _as_label_tensor(x: Any, name: str) -> torch.Tensor:
    """Accept a tensor or array of labels, H x W or N x H x W, and return N x H x W."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.is_floating_point() or x.is_complex():
        raise SeglabError(
            f"{name} must hold integer class labels, got dtype {x.dtype}. "
            "Convert logits with seglab.metrics.logits_to_labels(logits) first."
        )
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3:
        raise SeglabError(f"{name} must be H x W or N x H x W labels, got shape {tuple(x.shape)}.")
    return x


def _check_ranges(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None, num_classes: int,
                  ignore_index: int | None) -> None:
    """Raise a SeglabError for labels outside ``[0, num_classes)`` (one device sync)."""
    if pred.numel() == 0:
        return
    # Ignored target pixels may hold any value; replace them by 0 before taking min/max.
    t = target if valid is None else torch.where(valid, target, 0)
    lo_p, hi_p, lo_t, hi_t = torch.stack([pred.min(), pred.max(), t.min(), t.max()]).tolist()
    if lo_p < 0 or hi_p >= num_classes:
        raise SeglabError(
            f"Predictions hold label(s) in [{lo_p}, {hi_p}] but num_classes is {num_classes}: "
            f"labels must lie in [0, {num_classes - 1}]. Check the model's output channels."
        )
    if lo_t < 0 or hi_t >= num_classes:
        raise SeglabError(
            f"Ground truth holds label(s) in [{lo_t}, {hi_t}] outside [0, {num_classes - 1}] that are not the "
            f"ignore index ({ignore_index}). Set --data.num_classes or --data.ignore_index to match the masks."
        )


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int | None = None) -> torch.Tensor:
    """Confusion matrix of one batch; rows are ground truth, columns predictions.

    Args:
        pred: Integer labels, H x W or N x H x W.
        target: Ground-truth labels of the same shape.
        num_classes: Number of classes ``C``.
        ignore_index: Ground-truth label whose pixels are dropped from both maps.

    Returns:
        ``C x C`` int64 tensor on the device of ``pred``.

    Raises:
        SeglabError: On mismatched shapes or labels outside ``[0, C)``.
    """
    pred = _as_label_tensor(pred, "pred")
    target = _as_label_tensor(target, "target").to(pred.device)
    if pred.shape != target.shape:
        raise SeglabError(f"pred shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}.")
    pred, target = pred.long(), target.long()
    valid = None if ignore_index is None else target != ignore_index
    _check_ranges(pred, target, valid, num_classes, ignore_index)
    index = num_classes * target + pred
    if valid is not None:
        # Send ignored pixels to an extra bin that is dropped: avoids a boolean gather.
        index = torch.where(valid, index, num_classes * num_classes)
    counts = torch.bincount(index.flatten(), minlength=num_classes * num_classes + 1)
    return counts[: num_classes * num_classes].reshape(num_classes, num_classes)


def _nanmean(x: np.ndarray) -> float:
    """Mean of the finite entries, NaN when there are none (no RuntimeWarning)."""
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


def metrics_from_confusion(conf: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """Global, class-average, per-class and (frequency-weighted) mean IoU from a confusion matrix.

    Args:
        conf: ``C x C`` matrix, rows ground truth, columns prediction.

    Returns:
        Dict with ``global_acc``, ``class_acc``, ``miou``, ``fwiou`` (floats in [0, 1],
        NaN when undefined), ``iou`` and ``class_acc_per_class`` (lists, NaN for
        classes where the ratio is 0/0) and ``num_pixels``.
    """
    c = torch.as_tensor(conf).detach().cpu().to(torch.float64).numpy()
    tp = np.diag(c)
    gt = c.sum(axis=1)
    pr = c.sum(axis=0)
    total = c.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / gt  # NaN for classes without ground-truth pixels
        iou = tp / (gt + pr - tp)  # NaN for classes absent from both maps
    freq = gt / total if total > 0 else np.zeros_like(gt)
    present = gt > 0  # union > 0 here, so iou is finite
    return {
        "global_acc": float(tp.sum() / total) if total > 0 else math.nan,
        "class_acc": _nanmean(recall),
        "miou": _nanmean(iou),
        "fwiou": float((freq[present] * iou[present]).sum()) if total > 0 else math.nan,
        "iou": [float(v) for v in iou],
        "class_acc_per_class": [float(v) for v in recall],
        "num_pixels": int(total),
    }


class SegmentationMetrics:
    """Streaming SegNet-protocol metrics over a whole split: G, C, mIoU, fwIoU and boundary F1.

    Args:
        num_classes: Number of classes ``C``; labels lie in ``[0, C)``.
        ignore_index: Ground-truth label to drop (CamVid void is 11), or None.
        compute_bf: Also compute the boundary F1 score (CPU, per image).
        bf_tolerance: BF match distance as a fraction of the image diagonal (0.75%).
        bf_protocol: BF rules, ``"fast"`` (default) or ``"paper"``; see :mod:`seglab.metrics.boundary`.

    ``update`` keeps one int64 confusion matrix on the device of its inputs, so
    accumulation costs one ``bincount`` per batch; only ``compute`` moves it to CPU.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None, compute_bf: bool = True,
                 bf_tolerance: float = 0.0075, bf_protocol: str = "fast") -> None:
        if num_classes < 1:
            raise SeglabError(f"num_classes must be at least 1, got {num_classes}.")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.compute_bf = compute_bf
        self.bf_tolerance = bf_tolerance
        self.bf_protocol = check_bf_protocol(bf_protocol)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.confusion: torch.Tensor | None = None
        self.num_images = 0
        self._bf = BoundaryF1Accumulator(self.num_classes, self.ignore_index, self.bf_tolerance, self.bf_protocol)

    @torch.no_grad()
    def update(self, pred: Any, target: Any) -> None:
        """Add a batch of predictions and ground truth (integer labels, H x W or N x H x W)."""
        pred = _as_label_tensor(pred, "pred")
        target = _as_label_tensor(target, "target")
        conf = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        if self.confusion is None:
            self.confusion = conf
        else:
            self.confusion += conf.to(self.confusion.device)
        self.num_images += pred.shape[0]
        if self.compute_bf:
            self._bf.update(pred.cpu().numpy(), target.cpu().numpy())

    def __getstate__(self) -> dict:
        # Sent between processes (distributed validation): the confusion matrix travels on the CPU,
        # whatever device it was accumulated on.
        state = dict(self.__dict__)
        if state.get("confusion") is not None:
            state["confusion"] = state["confusion"].cpu()
        return state

    def merge(self, other: SegmentationMetrics) -> SegmentationMetrics:
        """Add the state of ``other`` (e.g. another worker's) into this object and return it."""
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise SeglabError("Cannot merge metrics with different num_classes or ignore_index.")
        if other.bf_protocol != self.bf_protocol:
            raise SeglabError(f"Cannot merge BF scores of protocol {other.bf_protocol!r} into {self.bf_protocol!r}.")
        if other.confusion is not None:
            if self.confusion is None:
                self.confusion = other.confusion.clone()
            else:
                self.confusion += other.confusion.to(self.confusion.device)
        self.num_images += other.num_images
        self._bf.merge(other._bf)
        return self

    def __add__(self, other: SegmentationMetrics) -> SegmentationMetrics:
        out = SegmentationMetrics(self.num_classes, self.ignore_index, self.compute_bf, self.bf_tolerance,
                                  self.bf_protocol)
        return out.merge(self).merge(other)

    def compute(self) -> dict[str, Any]:
        """Return the metrics as fractions in [0, 1] (see the module docstring for the rules).

        Keys: ``global_acc``, ``class_acc``, ``miou``, ``fwiou``, ``iou``,
        ``class_acc_per_class``, ``bf`` (None when ``compute_bf`` is False, NaN when no
        image had a class to score), ``bf_protocol`` (``"fast"`` or ``"paper"``; None when
        ``compute_bf`` is False), ``confusion`` (list of int lists),
        ``num_pixels`` (non-ignored pixels) and ``num_images``.
        """
        conf = self.confusion
        if conf is None:
            conf = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        conf = conf.cpu()
        out = metrics_from_confusion(conf)
        out["bf"] = self._bf.compute() if self.compute_bf else None
        out["bf_protocol"] = self.bf_protocol if self.compute_bf else None
        out["confusion"] = conf.tolist()
        out["num_images"] = self.num_images
        return out
