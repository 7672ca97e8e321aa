"""Multi-scale RoI pooling for Mask R-CNN: RoIAlign (torchvision's) or RoIPool with the same FPN levels.

Mask R-CNN replaced Fast/Faster R-CNN's RoIPool by RoIAlign because RoIPool rounds the box and
its bins to the feature grid, misaligning the pooled features with the region. To re-run that
ablation, :class:`MultiScaleRoIPool` is :class:`torchvision.ops.MultiScaleRoIAlign` with
``torchvision.ops.roi_pool`` (max over quantised bins) in place of ``roi_align``: the same feature
maps, the same scale inference and the same level mapping (FPN paper eq. 1, torchvision's
``LevelMapper``: ``k = floor(4 + log2(sqrt(w h) / 224))`` clamped to the available levels).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_pool
from torchvision.ops.poolers import _filter_input, _setup_scales

from seglab.core.errors import SeglabError

__all__ = ["MultiScaleRoIPool", "ROI_POOLERS", "build_roi_pooler"]

#: ``roi_pooler`` option values.
ROI_POOLERS = ("align", "pool")


def _roi_pool(feature: Tensor, rois: Tensor, output_size: tuple[int, int], scale: float) -> Tensor:
    """``roi_pool`` in the feature's dtype, computed in fp32 for half types.

    torchvision's CPU kernel has no bfloat16 (``roi_align`` is cast to fp32 by its autocast rule,
    ``roi_pool`` is not), so bf16 autocast training would stop at the first RoI.
    """
    if feature.dtype in (torch.float16, torch.bfloat16):
        return roi_pool(feature.float(), rois.float(), output_size, spatial_scale=scale).to(feature.dtype)
    return roi_pool(feature, rois.to(feature.dtype), output_size, spatial_scale=scale)


class MultiScaleRoIPool(MultiScaleRoIAlign):
    """``MultiScaleRoIAlign``'s interface and level mapping, pooling with ``roi_pool``.

    ``sampling_ratio`` is kept for the shared interface and unused (RoIPool takes the max over
    every feature cell of a quantised bin).
    """

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(features, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)], dim=0)
        if len(features) == 1:
            return _roi_pool(features[0], rois, self.output_size, self.scales[0])
        levels = self.map_levels(boxes)
        first = features[0]
        # rois.shape[0], not len(rois): an ONNX trace keeps the former dynamic, the latter becomes a constant.
        result = torch.zeros((rois.shape[0], first.shape[1], *self.output_size), dtype=first.dtype,
                             device=first.device)
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            index = torch.where(levels == level)[0]
            pooled = _roi_pool(feature, rois[index], self.output_size, scale)
            # Under autocast the levels may come in different dtypes: match the result's (as torchvision does).
            result[index] = pooled.to(result.dtype)
        return result


def build_roi_pooler(kind: str, output_size: int, sampling_ratio: int = 2,
                     featmap_names: tuple[str, ...] = ("0", "1", "2", "3")) -> MultiScaleRoIAlign:
    """The box (``output_size`` 7) or mask (14) pooler of torchvision's Mask R-CNN, aligned or pooled."""
    if kind not in ROI_POOLERS:
        raise SeglabError(f"roi_pooler must be one of {', '.join(ROI_POOLERS)}, got {kind!r} "
                          "(model.kwargs.roi_pooler in a recipe).")
    cls = MultiScaleRoIAlign if kind == "align" else MultiScaleRoIPool
    return cls(featmap_names=list(featmap_names), output_size=output_size, sampling_ratio=sampling_ratio)

