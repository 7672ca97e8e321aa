"""The losses as ``nn.Module`` s built from the config (:func:`build_loss`), and the class weights
they take (:func:`resolve_class_weights`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from seglab.core.config import CLASS_WEIGHT_METHODS as WEIGHT_METHODS
from seglab.core.config import LossConfig
from seglab.core.errors import SeglabError, did_you_mean
from seglab.losses.functional import (
    LOSSES, MULTI_CHANNEL_LOSSES, bce_dice_loss, ce_dice_loss, cross_entropy, dice_loss, focal_loss,
    weighted_map_cross_entropy
)

__all__ = ["BCEDiceLoss", "CEDiceLoss", "DiceLoss", "FocalLoss", "WEIGHT_METHODS", "WeightMapCrossEntropy",
           "WeightedCrossEntropy", "build_loss", "resolve_class_weights"]

class _PixelLoss(nn.Module):
    """Shared state of the loss modules: class weights as a buffer (``.to(device)`` moves them)."""

    weight: torch.Tensor | None

    def __init__(self, weight: torch.Tensor | None = None, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def extra_repr(self) -> str:
        w = "None" if self.weight is None else "[" + ", ".join(f"{v:.4g}" for v in self.weight.tolist()) + "]"
        return f"weight={w}, ignore_index={self.ignore_index}"


class WeightedCrossEntropy(_PixelLoss):
    """Module wrapper of :func:`cross_entropy` (``weight_map`` is accepted and ignored)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                weight_map: torch.Tensor | None = None) -> torch.Tensor:
        return cross_entropy(logits, target, self.weight, self.ignore_index)


class DiceLoss(_PixelLoss):
    """Module wrapper of :func:`dice_loss`."""

    def __init__(self, weight: torch.Tensor | None = None, ignore_index: int = 255, smooth: float = 1.0) -> None:
        super().__init__(weight, ignore_index)
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                weight_map: torch.Tensor | None = None) -> torch.Tensor:
        return dice_loss(logits, target, self.weight, self.ignore_index, self.smooth)


class CEDiceLoss(DiceLoss):
    """Module wrapper of :func:`ce_dice_loss`."""

    def __init__(self, weight: torch.Tensor | None = None, ignore_index: int = 255, smooth: float = 1.0,
                 dice_weight: float = 1.0) -> None:
        super().__init__(weight, ignore_index, smooth)
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                weight_map: torch.Tensor | None = None) -> torch.Tensor:
        return ce_dice_loss(logits, target, self.weight, self.ignore_index, self.smooth, self.dice_weight)


class BCEDiceLoss(CEDiceLoss):
    """Module wrapper of :func:`bce_dice_loss` (1-channel models)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                weight_map: torch.Tensor | None = None) -> torch.Tensor:
        return bce_dice_loss(logits, target, self.weight, self.ignore_index, self.smooth, self.dice_weight)


class FocalLoss(_PixelLoss):
    """Module wrapper of :func:`focal_loss`."""

    def __init__(self, weight: torch.Tensor | None = None, ignore_index: int = 255, gamma: float = 2.0) -> None:
        super().__init__(weight, ignore_index)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                weight_map: torch.Tensor | None = None) -> torch.Tensor:
        return focal_loss(logits, target, self.weight, self.ignore_index, self.gamma)


class WeightMapCrossEntropy(_PixelLoss):
    """Module wrapper of :func:`weighted_map_cross_entropy`; the map is required."""

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__(None, ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                weight_map: torch.Tensor | None = None) -> torch.Tensor:
        return weighted_map_cross_entropy(logits, target, weight_map, self.ignore_index)


def _check_loss_config(cfg: LossConfig, num_classes: int, class_weights: torch.Tensor | None) -> None:
    if cfg.name not in LOSSES:
        raise SeglabError(
            f"Unknown loss {cfg.name!r} (loss.name).{did_you_mean(cfg.name, LOSSES)} Available: {', '.join(LOSSES)}."
        )
    if class_weights is not None and class_weights.numel() != num_classes:
        raise SeglabError(
            f"loss.class_weights has {class_weights.numel()} entries but the data has {num_classes} classes."
        )
    if cfg.focal_gamma < 0 or cfg.dice_weight < 0 or cfg.dice_smooth < 0:
        raise SeglabError(f"loss.focal_gamma, loss.dice_weight and loss.dice_smooth must be >= 0, got "
                          f"{cfg.focal_gamma}, {cfg.dice_weight} and {cfg.dice_smooth}.")
    if cfg.name == "bce_dice" and num_classes != 2:
        raise SeglabError(f"loss.name bce_dice is for binary data (2 classes) and 1-channel models, but the data has "
                          f"{num_classes} classes: use loss.name {MULTI_CHANNEL_LOSSES}.")
    if cfg.name == "weighted_map_ce" and class_weights is not None:
        raise SeglabError("loss.name weighted_map_ce takes its class balance from the weight map "
                          "(data.weight_map_balance): set loss.class_weights none.")


def build_loss(cfg: LossConfig, num_classes: int, ignore_index: int,
               class_weights: torch.Tensor | None = None) -> nn.Module:
    """Build the training loss named by ``cfg.name`` (one of :data:`LOSSES`).

    Args:
        cfg: The ``loss`` config section (``name``, ``dice_weight``, ``dice_smooth``, ``focal_gamma``).
        num_classes: Number of classes ``C`` of the data (2 for ``bce_dice``).
        ignore_index: Void label in the masks.
        class_weights: Resolved weights (see :func:`resolve_class_weights`) or None.

    Raises:
        SeglabError: Unknown loss name, weights of the wrong length, negative parameters,
            ``bce_dice`` on non-binary data, or class weights with ``weighted_map_ce``.
    """
    _check_loss_config(cfg, num_classes, class_weights)
    w, ig = class_weights, ignore_index
    builders: dict[str, Callable[[], nn.Module]] = {
        "cross_entropy": lambda: WeightedCrossEntropy(w, ig),
        "dice": lambda: DiceLoss(w, ig, cfg.dice_smooth),
        "ce_dice": lambda: CEDiceLoss(w, ig, cfg.dice_smooth, cfg.dice_weight),
        "bce_dice": lambda: BCEDiceLoss(w, ig, cfg.dice_smooth, cfg.dice_weight),
        "focal": lambda: FocalLoss(w, ig, cfg.focal_gamma),
        "weighted_map_ce": lambda: WeightMapCrossEntropy(ig),
    }
    return builders[cfg.name]()


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
        spec: ``"none"`` (or None), a named method of ``WEIGHT_METHODS``, or a
            list of ``num_classes`` numbers.
        num_classes: Number of classes ``C``.
        computed: Callback ``computed(method) -> Tensor | None`` that derives the
            weights from the training data (called only for the named methods).
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
