"""Training losses: SegNet's class-weighted cross-entropy, Dice, focal, BCE + Dice and U-Net's weight maps.

One functional core (plain functions on ``logits, target``) and thin ``nn.Module``
wrappers, all built from the config by :func:`build_loss` (``loss.name``):

* ``cross_entropy``: (class-weighted) pixel-wise cross-entropy, as in SegNet.
* ``dice``: soft Dice on softmax probabilities vs one-hot targets, ``1 - mean_c dice_c``
  over the classes present in the batch's targets (whole batch pooled).
* ``ce_dice``: ``cross_entropy + dice_weight * dice``.
* ``bce_dice``: 1-channel (sigmoid) models on binary 0/1 targets: BCE-with-logits +
  ``dice_weight`` * (1 - soft Dice of the foreground).
* ``focal``: ``-(1 - p_t)^gamma log p_t`` (Lin et al. 2017); class weights act as alpha.
* ``weighted_map_ce``: U-Net's ``mean(w(x) * CE(x))`` with a per-pixel weight map passed as
  the loss's 3rd argument (``--data.weight_maps true``).

Every module's forward is ``forward(logits, target, weight_map=None)``; only
``weighted_map_ce`` uses (and requires) the map. Pixels labelled ``ignore_index`` count
nowhere. A loss for multi-channel logits given a 1-channel model, or ``bce_dice`` given a
multi-channel model, raises a :class:`SeglabError` naming the loss to use.

Normalisation: SegNet's Caffe loss **sums** the weighted per-pixel losses. Here, as in
``torch.nn.functional.cross_entropy``, class-weighted losses (cross-entropy, focal, BCE)
take the weighted **mean** ``sum_i w[y_i] * l_i / sum_i w[y_i]`` over non-ignored pixels, so
their scale does not depend on image size, batch size or the weights' scale; focal with
``gamma = 0`` is then exactly cross-entropy. ``weighted_map_ce`` divides by the number of
labelled pixels, as U-Net's energy is a plain sum of ``w * log p``. Dice takes class
weights as weights of its mean over classes. Class weights come from
:func:`resolve_class_weights`: ``none``, ``median_frequency`` (SegNet's MFB,
``median(freq) / freq(c)``), ``median_frequency_sqrt`` (its square root),
``inverse_frequency`` or an explicit list.

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

from seglab.core.config import CLASS_WEIGHT_METHODS as WEIGHT_METHODS
from seglab.core.config import LossConfig
from seglab.core.errors import SeglabError, did_you_mean

__all__ = [
    "BINARY_LOSSES",
    "cross_entropy",
    "dice_loss",
    "ce_dice_loss",
    "bce_dice_loss",
    "focal_loss",
    "weighted_map_cross_entropy",
    "WeightedCrossEntropy",
    "DiceLoss",
    "CEDiceLoss",
    "BCEDiceLoss",
    "FocalLoss",
    "WeightMapCrossEntropy",
    "build_loss",
    "resolve_class_weights",
    "LOSSES",
    "WEIGHT_METHODS",
]

LOSSES = ("cross_entropy", "dice", "ce_dice", "bce_dice", "focal", "weighted_map_ce")
#: Losses for one-channel (sigmoid) models on two-class data; the trainer builds such models with 1 output.
BINARY_LOSSES = ("bce_dice",)
_MULTI_CHANNEL = "cross_entropy, dice, ce_dice, focal or weighted_map_ce"

# --------------------------------------------------------------------------- validation


def _check_inputs(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, loss: str = "cross_entropy",
                  binary: bool = False) -> int:
    """Validate shapes, channel count and target labels; return the number of non-ignored pixels.

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
    channels = logits.shape[1]
    if binary and channels != 1:
        raise SeglabError(
            f"Loss {loss!r} is for 1-channel (sigmoid) models, but the model outputs {channels} channels: "
            f"use loss.name {_MULTI_CHANNEL}, or build the model with 1 output channel."
        )
    if not binary and channels < 2:
        raise SeglabError(
            f"Loss {loss!r} needs at least 2 output channels; 1-channel (sigmoid) models need a binary loss: "
            "use loss.name bce_dice."
        )
    num_classes = 2 if binary else channels
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


def _class_weight(weight: torch.Tensor | None, num_classes: int, device: torch.device) -> torch.Tensor | None:
    if weight is None:
        return None
    if weight.numel() != num_classes:
        raise SeglabError(f"{weight.numel()} class weights given for a model with {num_classes} classes.")
    return weight.to(device=device, dtype=torch.float32)


def _split_target(target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(valid, safe)``: the labelled pixels, and the target with ignored pixels set to class 0."""
    valid = target != ignore_index
    return valid, torch.where(valid, target, 0)


def _pixel_weights(weight: torch.Tensor | None, safe: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-pixel weight ``w[y]`` (1 when unweighted), 0 on ignored pixels."""
    w = valid.float()
    return w * weight[safe] if weight is not None else w


def _zero(logits: torch.Tensor) -> torch.Tensor:
    return logits.sum() * 0.0  # still connected to the graph; torch would give NaN (0 / 0)


# --------------------------------------------------------------------------- functional core


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
        SeglabError: On shape mismatch, a 1-channel model, or target labels outside ``[0, C)``.
    """
    target = target.long()
    if _check_inputs(logits, target, ignore_index, "cross_entropy") == 0:
        return _zero(logits)
    weight = _class_weight(weight, logits.shape[1], logits.device)
    # float32 keeps log-softmax accurate and matches the weight dtype under bf16/fp16 logits.
    return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index)


def _soft_dice(probs: torch.Tensor, onehot: torch.Tensor, smooth: float, dims: tuple[int, ...]) -> torch.Tensor:
    inter = (probs * onehot).sum(dims)
    cardinality = probs.sum(dims) + onehot.sum(dims)
    return (2.0 * inter + smooth) / (cardinality + smooth)


def _dice(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int,
          smooth: float) -> torch.Tensor:
    """Soft multi-class Dice loss on validated inputs with at least one labelled pixel."""
    valid, safe = _split_target(target, ignore_index)
    num_classes = logits.shape[1]
    keep = valid.unsqueeze(1).float()
    probs = torch.softmax(logits.float(), dim=1) * keep  # ignored pixels drop out of every sum
    onehot = F.one_hot(safe, num_classes).movedim(-1, 1).float() * keep
    dims = (0, *range(2, logits.dim()))
    dice = _soft_dice(probs, onehot, smooth, dims)
    # Mean over the classes present: an absent class's Dice is 0/0-like and would only add noise.
    w = (onehot.sum(dims) > 0).float()
    if weight is not None:
        w = w * weight
    return ((1.0 - dice) * w).sum() / w.sum().clamp_min(1e-12)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
              ignore_index: int = 255, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss ``1 - mean_c (2 |P_c G_c| + s) / (|P_c| + |G_c| + s)`` over the classes present.

    Args:
        logits: ``N x C x H x W`` raw scores; probabilities are their softmax.
        target: ``N x H x W`` labels in ``[0, C)`` or ``ignore_index``.
        weight: Optional class weights of the mean over classes.
        ignore_index: Label whose pixels are left out of every sum.
        smooth: ``s``, added to numerator and denominator (stabilises small classes).

    Returns:
        Scalar in ``[0, 1]``, about 0 for a confident perfect prediction.
    """
    target = target.long()
    if _check_inputs(logits, target, ignore_index, "dice") == 0:
        return _zero(logits)
    return _dice(logits, target, _class_weight(weight, logits.shape[1], logits.device), ignore_index, smooth)


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                 ignore_index: int = 255, smooth: float = 1.0, dice_weight: float = 1.0) -> torch.Tensor:
    """``cross_entropy + dice_weight * dice_loss``; class weights weigh both terms as they do alone."""
    target = target.long()
    if _check_inputs(logits, target, ignore_index, "ce_dice") == 0:
        return _zero(logits)
    weight = _class_weight(weight, logits.shape[1], logits.device)
    ce = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index)
    return ce + dice_weight * _dice(logits, target, weight, ignore_index, smooth)


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  ignore_index: int = 255, smooth: float = 1.0, dice_weight: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy with logits + ``dice_weight`` * foreground soft Dice loss, for 1-channel models.

    Args:
        logits: ``N x 1 x H x W`` raw scores; ``sigmoid`` gives the foreground probability.
        target: ``N x H x W`` labels 0 (background) / 1 (foreground) or ``ignore_index``.
        weight: Optional ``[w_background, w_foreground]`` for the BCE term (weighted mean).
        ignore_index: Label whose pixels contribute nothing.
        smooth: Dice smoothing term.
        dice_weight: Weight of the Dice term.
    """
    target = target.long()
    if _check_inputs(logits, target, ignore_index, "bce_dice", binary=True) == 0:
        return _zero(logits)
    weight = _class_weight(weight, 2, logits.device)
    valid, safe = _split_target(target, ignore_index)
    x, t = logits[:, 0].float(), safe.float()
    pixel_w = _pixel_weights(weight, safe, valid)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    bce = (bce * pixel_w).sum() / pixel_w.sum()
    keep = valid.float()
    dice = _soft_dice(torch.sigmoid(x) * keep, t * keep, smooth, tuple(range(x.dim())))
    return bce + dice_weight * (1.0 - dice)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
               ignore_index: int = 255, gamma: float = 2.0) -> torch.Tensor:
    """Multi-class focal loss ``-alpha_t (1 - p_t)^gamma log p_t``, weighted mean over labelled pixels.

    Args:
        logits: ``N x C x H x W`` raw scores.
        target: ``N x H x W`` labels in ``[0, C)`` or ``ignore_index``.
        weight: Optional per-class ``alpha``; normalised like cross-entropy's class weights.
        ignore_index: Label whose pixels contribute nothing.
        gamma: Focusing parameter (``>= 0``); 0 gives exactly :func:`cross_entropy`.
    """
    target = target.long()
    if _check_inputs(logits, target, ignore_index, "focal") == 0:
        return _zero(logits)
    weight = _class_weight(weight, logits.shape[1], logits.device)
    valid, safe = _split_target(target, ignore_index)
    log_pt = torch.log_softmax(logits.float(), dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
    loss = -log_pt
    if gamma != 0:
        # The clamp keeps the gradient of (1 - p_t)^gamma finite at p_t = 1 for gamma < 1.
        loss = loss * (1.0 - log_pt.exp()).clamp_min(1e-12) ** gamma
    pixel_w = _pixel_weights(weight, safe, valid)
    return (loss * pixel_w).sum() / pixel_w.sum()


def weighted_map_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None,
                               ignore_index: int = 255) -> torch.Tensor:
    """U-Net's loss: ``sum_x w(x) * CE(x) / #labelled pixels`` with a per-pixel weight map.

    Args:
        logits: ``N x C x H x W`` raw scores.
        target: ``N x H x W`` labels in ``[0, C)`` or ``ignore_index``.
        weight_map: ``N x H x W`` non-negative weights (the data set's 3rd item).
        ignore_index: Label whose pixels contribute nothing.

    Raises:
        SeglabError: no weight map, or one whose shape differs from the target's.
    """
    if weight_map is None:
        raise SeglabError(
            "Loss 'weighted_map_ce' needs a per-pixel weight map as its 3rd argument, but the data gave none: "
            "set data.weight_maps true (isbi2012), or choose another loss.name."
        )
    if weight_map.shape != target.shape:
        raise SeglabError(f"Weight map of shape {tuple(weight_map.shape)} does not match targets of shape "
                          f"{tuple(target.shape)}.")
    target = target.long()
    count = _check_inputs(logits, target, ignore_index, "weighted_map_ce")
    if count == 0:
        return _zero(logits)
    valid, safe = _split_target(target, ignore_index)
    nll = F.cross_entropy(logits.float(), safe, reduction="none")
    return (nll * weight_map.float() * valid).sum() / count


# --------------------------------------------------------------------------- modules


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
                          f"{num_classes} classes: use loss.name {_MULTI_CHANNEL}.")
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
