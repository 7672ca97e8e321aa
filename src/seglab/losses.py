"""Training losses: class-weighted pixel-wise cross-entropy, as in SegNet, and its class weights.

Functional core (:func:`cross_entropy`) plus a thin module (:class:`WeightedCrossEntropy`)
built from the config by :func:`build_loss`. Class weights come from
:func:`resolve_class_weights`: ``none``, ``median_frequency`` (SegNet's MFB,
``median(freq) / freq(c)``), ``inverse_frequency`` or an explicit list.

Normalisation: SegNet's Caffe loss **sums** the weighted per-pixel losses. Here, as in
``torch.nn.functional.cross_entropy``, the loss is the weighted **mean**
``sum_i w[y_i] * nll_i / sum_i w[y_i]`` over non-ignored pixels, so its scale (and a
good learning rate) does not depend on image size, batch size or the weights' scale.

Example:
    >>> weights = resolve_class_weights(cfg.loss.class_weights, 11, data_weights)
    >>> criterion = build_loss(cfg.loss, num_classes=11, ignore_index=11, class_weights=weights)
    >>> loss = criterion(model(images)["out"], masks)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import LossConfig
from .errors import SeglabError, did_you_mean

__all__ = [
    "cross_entropy",
    "WeightedCrossEntropy",
    "build_loss",
    "resolve_class_weights",
    "weights_from_frequencies",
    "LOSSES",
    "WEIGHT_METHODS",
]

LOSSES = ("cross_entropy",)
WEIGHT_METHODS = ("none", "median_frequency", "inverse_frequency")


def _check_inputs(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> int:
    """Validate shapes and target labels; return the number of non-ignored pixels.

    One min/max reduction (a single device sync) replaces the device-side assert or
    out-of-bounds error torch would otherwise raise deep inside the kernel.
    """
    if not isinstance(logits, torch.Tensor):
        raise SeglabError(f"The loss expects a logits tensor, got {type(logits).__name__} (pass output['out']).")
    if logits.dim() != target.dim() + 1 or logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise SeglabError(
            f"Logits of shape {tuple(logits.shape)} do not match targets of shape {tuple(target.shape)}: "
            "expected N x C x H x W logits for N x H x W targets."
        )
    num_classes = logits.shape[1]
    if num_classes < 2:
        raise SeglabError(
            "Cross-entropy needs at least 2 output channels; 1-channel (sigmoid) models need a binary loss."
        )
    valid = target != ignore_index
    t = torch.where(valid, target, 0)
    lo, hi, count = torch.stack([t.min(), t.max(), valid.sum()]).tolist() if t.numel() else (0, 0, 0)
    if lo < 0 or hi >= num_classes:
        bad = torch.unique(target[valid & ((target < 0) | (target >= num_classes))])[:10].tolist()
        raise SeglabError(
            f"Target masks hold label(s) {bad} outside [0, {num_classes - 1}] for a model with {num_classes} classes "
            f"(ignore_index={ignore_index}). Set --data.num_classes to the number of classes, or "
            f"--data.ignore_index to the void label."
        )
    return int(count)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  ignore_index: int = 255) -> torch.Tensor:
    """Pixel-wise (optionally class-weighted) cross-entropy, weighted mean over labelled pixels.

    Args:
        logits: ``N x C x H x W`` raw scores (any float dtype; computed in float32).
        target: ``N x H x W`` integer labels in ``[0, C)`` or ``ignore_index``.
        weight: Optional length-``C`` class weights.
        ignore_index: Label whose pixels contribute nothing.

    Returns:
        Scalar loss; 0 (still connected to the graph) when every pixel is ignored.

    Raises:
        SeglabError: On shape mismatch or target labels outside ``[0, C)``.
    """
    target = target.long()
    if _check_inputs(logits, target, ignore_index) == 0:
        return logits.sum() * 0.0  # torch would return NaN (0 / 0)
    if weight is not None:
        if weight.numel() != logits.shape[1]:
            raise SeglabError(f"{weight.numel()} class weights given for a model with {logits.shape[1]} classes.")
        weight = weight.to(device=logits.device, dtype=torch.float32)
    # float32 keeps log-softmax accurate and matches the weight dtype under bf16/fp16 logits.
    return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index)


class WeightedCrossEntropy(nn.Module):
    """Module wrapper of :func:`cross_entropy`; the weights are a buffer, so ``.to(device)`` moves them.

    Args:
        weight: Optional length-``C`` class weights.
        ignore_index: Label whose pixels contribute nothing.
    """

    weight: torch.Tensor | None

    def __init__(self, weight: torch.Tensor | None = None, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target, self.weight, self.ignore_index)

    def extra_repr(self) -> str:
        w = "None" if self.weight is None else "[" + ", ".join(f"{v:.4g}" for v in self.weight.tolist()) + "]"
        return f"weight={w}, ignore_index={self.ignore_index}"


def build_loss(cfg: LossConfig, num_classes: int, ignore_index: int,
               class_weights: torch.Tensor | None = None) -> nn.Module:
    """Build the training loss named by ``cfg.name``.

    Args:
        cfg: The ``loss`` config section.
        num_classes: Number of classes ``C``.
        ignore_index: Void label in the masks.
        class_weights: Resolved weights (see :func:`resolve_class_weights`) or None.

    Raises:
        SeglabError: For an unknown loss name or weights of the wrong length.
    """
    if cfg.name not in LOSSES:
        raise SeglabError(
            f"Unknown loss {cfg.name!r} (loss.name).{did_you_mean(cfg.name, LOSSES)} Available: {', '.join(LOSSES)}."
        )
    if class_weights is not None and class_weights.numel() != num_classes:
        raise SeglabError(
            f"loss.class_weights has {class_weights.numel()} entries but the data has {num_classes} classes."
        )
    return WeightedCrossEntropy(class_weights, ignore_index)


def _check_weights(w: torch.Tensor, num_classes: int, source: str) -> torch.Tensor:
    if w.dim() != 1 or w.numel() != num_classes:
        raise SeglabError(
            f"loss.class_weights ({source}) has {w.numel()} entries but there are {num_classes} classes: "
            f"give one weight per class, e.g. --loss.class_weights '[{', '.join(['1.0'] * min(num_classes, 3))}, ...]'."
        )
    if not torch.isfinite(w).all() or (w < 0).any() or not (w > 0).any():
        raise SeglabError(
            f"loss.class_weights ({source}) must be finite, non-negative and not all zero, got {w.tolist()}."
        )
    return w


def resolve_class_weights(spec: Any, num_classes: int,
                          computed: Callable[[str], torch.Tensor | None]) -> torch.Tensor | None:
    """Turn the ``loss.class_weights`` setting into a weight tensor.

    Args:
        spec: ``"none"`` (or None), ``"median_frequency"``, ``"inverse_frequency"``, or a
            list of ``num_classes`` numbers.
        num_classes: Number of classes ``C``.
        computed: Callback ``computed(method) -> Tensor | None`` that derives the
            weights from the training data (called only for the two named methods).
            A None result means the data cannot provide them; the loss is then unweighted.

    Returns:
        A float32 tensor of length ``C``, or None for an unweighted loss.

    Raises:
        SeglabError: Unknown method, wrong length, or negative/non-finite weights.
    """
    if spec is None or (isinstance(spec, str) and spec.lower() == "none"):
        return None
    if isinstance(spec, str):
        if spec not in WEIGHT_METHODS:
            raise SeglabError(
                f"Unknown loss.class_weights {spec!r}.{did_you_mean(spec, WEIGHT_METHODS)} "
                f"Use one of {', '.join(WEIGHT_METHODS)} or a list of {num_classes} numbers."
            )
        w = computed(spec)
        if w is None:
            return None
        return _check_weights(torch.as_tensor(w, dtype=torch.float32).flatten(), num_classes, spec)
    if isinstance(spec, (Sequence, np.ndarray, torch.Tensor)):
        try:
            w = torch.as_tensor(np.asarray(spec, dtype=np.float64), dtype=torch.float32).flatten()
        except (TypeError, ValueError) as e:
            raise SeglabError(f"loss.class_weights must be a list of numbers, got {spec!r}.") from e
        return _check_weights(w, num_classes, "list")
    raise SeglabError(
        f"loss.class_weights must be one of {', '.join(WEIGHT_METHODS)} or a list of numbers, got {spec!r}."
    )


def weights_from_frequencies(class_pixels: Sequence[float], present_pixels: Sequence[float] | None = None,
                             method: str = "median_frequency") -> torch.Tensor:
    """Class weights from training-set pixel counts (a helper for the ``computed`` callback).

    Args:
        class_pixels: Labelled pixels of each class over the training set.
        present_pixels: For each class, the total pixels of the images that contain
            it (Eigen & Fergus's frequency, used by SegNet's MFB). Defaults to the total
            labelled pixels for every class.
        method: ``median_frequency``: ``median(freq) / freq(c)``;
            ``inverse_frequency``: ``1 / (C * freq(c))`` (1 for every class when balanced).

    Returns:
        Float32 weights; classes with no pixels get weight 0 (they never occur in a target).
    """
    counts = np.asarray(class_pixels, dtype=np.float64)
    denom = np.full_like(counts, counts.sum()) if present_pixels is None else np.asarray(present_pixels, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        freq = np.where(denom > 0, counts / denom, 0.0)
    seen = freq > 0
    if not seen.any():
        raise SeglabError("Cannot compute class weights: the training masks contain no labelled pixel.")
    if method == "median_frequency":
        w = np.where(seen, np.median(freq[seen]) / np.where(seen, freq, 1.0), 0.0)
    elif method == "inverse_frequency":
        w = np.where(seen, 1.0 / (len(freq) * np.where(seen, freq, 1.0)), 0.0)
    else:
        raise SeglabError(f"Unknown class-weight method {method!r}.{did_you_mean(method, WEIGHT_METHODS[1:])}")
    return torch.as_tensor(w, dtype=torch.float32)
