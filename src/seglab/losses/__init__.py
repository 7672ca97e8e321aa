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
    >>> loss = criterion(model(images), masks)  # logits N x C x H x W
"""

from __future__ import annotations

from seglab.losses.functional import (
    BINARY_LOSSES, LOSSES, bce_dice_loss, ce_dice_loss, cross_entropy, dice_loss, focal_loss, weighted_map_cross_entropy
)
from seglab.losses.modules import (
    WEIGHT_METHODS, BCEDiceLoss, CEDiceLoss, DiceLoss, FocalLoss, WeightedCrossEntropy, WeightMapCrossEntropy,
    build_loss, resolve_class_weights
)

__all__ = [
    "BINARY_LOSSES", "LOSSES", "WEIGHT_METHODS", "BCEDiceLoss", "CEDiceLoss", "DiceLoss", "FocalLoss",
    "WeightedCrossEntropy", "WeightMapCrossEntropy", "bce_dice_loss", "build_loss", "ce_dice_loss", "cross_entropy",
    "dice_loss", "focal_loss", "resolve_class_weights", "weighted_map_cross_entropy",
]
