"""Running a model at the size it was trained for, with logits back at the input's own size.

A model trained at reduced resolution is scored against full-resolution labels, as the SegNet
protocol asks, instead of against down-sampled ones; valid-convolution models (``unet_valid``) go
through overlap-tile inference (:func:`seglab.ops.tiling.predict_tiled`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seglab.ops.contract import runnable_size, size_rule, unwrap
from seglab.ops.tiling import predict_tiled

__all__ = ["forward_at_size"]

#: Largest input tile of valid-convolution models at evaluation: the paper's 572x572 (388x388 out
#: at depth 4), or the nearest valid size above it for other depths; smaller images get smaller tiles.
_VALID_TILE = (572, 572)


def forward_at_size(model: nn.Module, images: torch.Tensor, infer_size: list[int] | tuple[int, int] | None) -> torch.Tensor:
    """Run ``model`` on ``images`` resized to ``infer_size`` (if given); logits come back at input size.

    A model trained at reduced resolution is thus scored against full-resolution labels,
    as the SegNet protocol asks, instead of against down-sampled ones. Valid-convolution models
    (``unet_valid``) run overlap-tile inference with mirror padding (:func:`seglab.ops.tiling.predict_tiled`),
    so every pixel is predicted from its full context instead of the shrunken map being stretched.
    """
    height, width = images.shape[-2:]
    x = images
    if infer_size is not None and tuple(infer_size) != (height, width):
        x = F.interpolate(images, size=tuple(infer_size), mode="bilinear", align_corners=False, antialias=True)
    rule = size_rule(model)
    if rule is not None:
        logits = _forward_valid(model, x, rule)
    else:
        logits = model(x)
    if logits.shape[-2:] != (height, width):
        logits = F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False)
    return logits


def _forward_valid(model: nn.Module, x: torch.Tensor, rule) -> torch.Tensor:
    """Tiled logits of a valid-convolution model (``rule``, unwrapped from ``model``), image by image."""
    num_classes = unwrap(model).classifier.out_channels
    tile = runnable_size(rule, _VALID_TILE)
    out_h, out_w = rule.output_size(tile)
    # An image smaller than one tile's output needs only the smallest tile that covers it plus
    # the border the convolutions eat: at half-resolution CamVid, 268x332 instead of 572x572.
    covering = (x.shape[-2] + tile[0] - out_h, x.shape[-1] + tile[1] - out_w)
    tile = runnable_size(rule, (min(tile[0], covering[0]), min(tile[1], covering[1])))
    return torch.cat([predict_tiled(model, x[i : i + 1], num_classes, tile, valid_model=rule.output_size)
                      for i in range(x.shape[0])])


