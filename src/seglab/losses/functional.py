"""The losses as plain functions of ``logits, target``, with the input checks they share.

See :mod:`seglab.losses` for what each loss is and how it is normalised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seglab.core.errors import SeglabError

__all__ = ["BINARY_LOSSES", "LOSSES", "bce_dice_loss", "ce_dice_loss", "cross_entropy", "dice_loss", "focal_loss",
           "weighted_map_cross_entropy"]

LOSSES = ("cross_entropy", "dice", "ce_dice", "bce_dice", "focal", "weighted_map_ce")
#: Losses for one-channel (sigmoid) models on two-class data; the trainer builds such models with 1 output.
BINARY_LOSSES = ("bce_dice",)
#: The losses for multi-channel (softmax) models, as error messages name them.
MULTI_CHANNEL_LOSSES = "cross_entropy, dice, ce_dice, focal or weighted_map_ce"

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
            f"use loss.name {MULTI_CHANNEL_LOSSES}, or build the model with 1 output channel."
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
