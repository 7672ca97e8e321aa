"""Mask R-CNN builders on torchvision's detection package (nothing reimplemented).

* ``mask_rcnn_resnet50_fpn`` and ``mask_rcnn_resnet50_fpn_v2``: torchvision's builders, with
  ``weights=None, weights_backbone=None`` (building never downloads); ``weights_backbone``
  ("imagenet", a URL or a file) loads through :mod:`seglab.models.weights`, and whole-model COCO
  weights go through ``create_model(..., weights="COCO_V1" | URL | file)``.
* ``mask_rcnn_resnet18_fpn``: the CPU-sized variant, ``MaskRCNN(backbone, ...)`` with a
  ResNet-18-FPN of 128 channels, a 256-wide box head, a 128-channel mask head, anchors from 16 to
  256 pixels and images resized to 320..512 pixels, so it trains on two CPU cores in minutes.

Every builder takes ``roi_pooler="align"`` (torchvision ``MultiScaleRoIAlign``, the default) or
``"pool"`` (:class:`~seglab.models.instance.poolers.MultiScaleRoIPool`) for both the box and the
mask head, and ``frozen_bn``: the backbone's batch norms as torchvision ``FrozenBatchNorm2d``
(statistics and affine fixed; torchvision's choice with pretrained weights) or trained
(``nn.BatchNorm2d``). ``None`` follows torchvision: frozen exactly when ``weights_backbone`` is set.
With 91 classes and default heads ``mask_rcnn_resnet50_fpn`` has torchvision's 44,401,393
parameters frozen and 44,454,513 trained.

``num_classes`` counts the background (class 0), as torchvision does. In train mode the model
maps ``(images, targets)`` to a loss dict; in eval mode a list of ``3 x H x W`` float images in
[0, 1] to dicts with ``boxes``, ``labels``, ``scores`` and ``masks`` (``N x 1 x H x W``
probabilities). Images are normalised inside the model (torchvision's ``GeneralizedRCNNTransform``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FrozenBatchNorm2d

from seglab.core.errors import SeglabError
from seglab.models.instance.poolers import build_roi_pooler
from seglab.models.weights import check_state_dict, load_state_dict

__all__ = ["freeze_batch_norms", "mask_rcnn_resnet18_fpn", "mask_rcnn_resnet50_fpn", "mask_rcnn_resnet50_fpn_v2"]

_RESNET_LAYERS = ("layer4", "layer3", "layer2", "layer1", "conv1")


def freeze_batch_norms(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` under ``module`` by a ``FrozenBatchNorm2d`` with its values, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_batch_norms(child)
    return module


def _trainable_layers(value: int | None, pretrained: bool) -> int:
    """torchvision's rule: 3 trainable ResNet stages with pretrained weights, all 5 without."""
    if value is None:
        return 3 if pretrained else 5
    if not 0 <= int(value) <= 5:
        raise SeglabError(f"trainable_backbone_layers must be 0..5 (ResNet stages from the last), got {value!r}.")
    return int(value)


def _prepare_body(body: nn.Module, *, arch: str, weights_backbone: str | None, frozen_bn: bool | None,
                  trainable_backbone_layers: int | None) -> None:
    """Load ImageNet weights into a ResNet trunk (``IntermediateLayerGetter``), freeze its early stages and BNs."""
    pretrained = weights_backbone is not None
    if pretrained:
        state = load_state_dict(weights_backbone, what=arch, option="weights_backbone")
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        wanted = {k: tuple(v.shape) for k, v in body.state_dict().items()}
        check_state_dict(state, wanted, source=weights_backbone, what=arch, option="weights_backbone", part="backbone")
        body.load_state_dict({**body.state_dict(), **state})
    trainable = list(_RESNET_LAYERS[:_trainable_layers(trainable_backbone_layers, pretrained)])
    if len(trainable) == 5:
        trainable.append("bn1")
    for name, parameter in body.named_parameters():
        if not any(name.startswith(layer) for layer in trainable):
            parameter.requires_grad_(False)
    if frozen_bn if frozen_bn is not None else pretrained:
        freeze_batch_norms(body)


def _poolers(roi_pooler: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    for key in ("box_roi_pool", "mask_roi_pool"):
        if key in kwargs:
            raise SeglabError(f"Set the RoI poolers with roi_pooler='align'|'pool', not {key}.")
    return {"box_roi_pool": build_roi_pooler(roi_pooler, 7), "mask_roi_pool": build_roi_pooler(roi_pooler, 14)}


def _torchvision_resnet50(builder: Any, num_classes: int, weights_backbone: str | None, roi_pooler: str,
                          frozen_bn: bool | None, trainable_backbone_layers: int | None, kwargs: dict[str, Any]
                          ) -> MaskRCNN:
    """A torchvision ResNet-50-FPN Mask R-CNN builder, never downloading, with seglab's poolers and body."""
    model = builder(weights=None, weights_backbone=None, num_classes=num_classes, **_poolers(roi_pooler, kwargs),
                    **kwargs)
    _prepare_body(model.backbone.body, arch="resnet50", weights_backbone=weights_backbone, frozen_bn=frozen_bn,
                  trainable_backbone_layers=trainable_backbone_layers)
    return model


def mask_rcnn_resnet50_fpn(num_classes: int = 91, *, weights_backbone: str | None = None, roi_pooler: str = "align",
                           frozen_bn: bool | None = None, trainable_backbone_layers: int | None = None,
                           **kwargs: Any) -> MaskRCNN:
    """torchvision ``maskrcnn_resnet50_fpn`` (He et al. 2017); ``kwargs`` go to ``MaskRCNN`` (``min_size``, ...)."""
    return _torchvision_resnet50(maskrcnn_resnet50_fpn, num_classes, weights_backbone, roi_pooler, frozen_bn,
                                 trainable_backbone_layers, kwargs)


def mask_rcnn_resnet50_fpn_v2(num_classes: int = 91, *, weights_backbone: str | None = None, roi_pooler: str = "align",
                              frozen_bn: bool | None = None, trainable_backbone_layers: int | None = None,
                              **kwargs: Any) -> MaskRCNN:
    """torchvision ``maskrcnn_resnet50_fpn_v2`` (Li et al. 2021: BN heads, two-conv RPN)."""
    return _torchvision_resnet50(maskrcnn_resnet50_fpn_v2, num_classes, weights_backbone, roi_pooler, frozen_bn,
                                 trainable_backbone_layers, kwargs)


def mask_rcnn_resnet18_fpn(num_classes: int = 2, *, weights_backbone: str | None = None, roi_pooler: str = "align",
                           frozen_bn: bool | None = None, trainable_backbone_layers: int | None = None,
                           fpn_channels: int = 128, representation_size: int = 256, mask_channels: int = 128,
                           anchor_sizes: Sequence[int] = (16, 32, 64, 128, 256), min_size: int = 320,
                           max_size: int = 512, **kwargs: Any) -> MaskRCNN:
    """The CPU-sized Mask R-CNN: ResNet-18-FPN with narrow heads (see the module docstring)."""
    if len(anchor_sizes) != 5:
        raise SeglabError(f"anchor_sizes needs one size per FPN level (5), got {list(anchor_sizes)}.")
    trunk = resnet18(weights=None)
    backbone = BackboneWithFPN(trunk, return_layers={f"layer{i}": str(i - 1) for i in range(1, 5)},
                               in_channels_list=[64, 128, 256, 512], out_channels=fpn_channels)
    _prepare_body(backbone.body, arch="resnet18", weights_backbone=weights_backbone, frozen_bn=frozen_bn,
                  trainable_backbone_layers=trainable_backbone_layers)
    anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * 5)
    box_head = TwoMLPHead(fpn_channels * 7 * 7, representation_size)
    # Fewer proposals than torchvision's 2000/1000: the RoI heads dominate CPU time on small images.
    defaults = {"box_batch_size_per_image": 128, "box_detections_per_img": 300, "rpn_pre_nms_top_n_train": 1000,
                "rpn_post_nms_top_n_train": 500, "rpn_pre_nms_top_n_test": 500, "rpn_post_nms_top_n_test": 300}
    # torchvision sizes the default predictors for 1024-wide box and 256-channel mask heads: give our own.
    return MaskRCNN(backbone, num_classes=None, rpn_anchor_generator=anchors, box_head=box_head,
                    box_predictor=FastRCNNPredictor(representation_size, num_classes),
                    mask_head=MaskRCNNHeads(fpn_channels, [mask_channels] * 4, 1),
                    mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, num_classes),
                    min_size=min_size, max_size=max_size, **_poolers(roi_pooler, kwargs), **{**defaults, **kwargs})
