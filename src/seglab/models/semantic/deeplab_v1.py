"""DeepLab-LargeFOV, DeepLab v1 without CRF (Chen et al., ICLR 2015, arXiv:1412.7062).

VGG16 (no BatchNorm) made denser with atrous convolution so that the output stride is 8:

* pool1-pool3: 3x3 max-pool, stride 2, padding 1 (DeepLab's pooling);
* pool4, pool5: 3x3 max-pool, stride 1, padding 1 (no subsampling);
* conv5_1-conv5_3: dilation 2 (to keep their receptive field after pool4 lost its stride);
* ``fc6``: 3x3 conv, 1024 channels, dilation 12 (the "large field of view");
* ``fc7``: 1x1 conv, 1024 channels; ReLU and dropout 0.5 after both;
* ``fc8``: 1x1 conv to K classes.

The stride-8 logits are upsampled bilinearly to the input size, so the model returns logits at
input size like every seglab model. Pooling uses floor mode: ``3x3/2, pad 1`` then maps ``H`` to
exactly ``ceil(H / 2)`` (Caffe's ceil mode would give ``H / 2 + 1`` for even ``H``), so feature
``i`` is centred on input pixel ``8 i``. Upsampling therefore uses ``align_corners=True``, which
maps feature ``i`` to pixel ``8 i`` exactly when ``H = 8 h - 7`` (DeepLab's 321 -> 41) and to
within a fraction of a pixel otherwise; Caffe DeepLab's ``Interp`` layer uses the same corner
alignment.

Parameters for K=21: 20,505,429 (paper: "20.5M") = VGG16 convs 14,714,688 + fc6 4,719,616 +
fc7 1,049,600 + fc8 21,525.

``weights_backbone`` loads torchvision VGG16's 13 convs and initialises ``fc6``/``fc7`` by
decimating VGG's fc layers as the paper does (every 4th filter, 7x7 taps subsampled to 3x3 at
0, 3, 6; :func:`seglab.models.backbones.vgg.fc_weights_for`).

Example:
    >>> import torch
    >>> from seglab.models.registry import create_model
    >>> model = create_model("deeplab_largefov", num_classes=21).eval()
    >>> model(torch.zeros(1, 3, 33, 47)).shape
    torch.Size([1, 21, 33, 47])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from seglab.models.backbones.vgg import VGG16_STAGES, VGG16Backbone, load_vgg16_weights, make_fc_layers
from seglab.models.layers.blocks import init_he

__all__ = ["DeepLabLargeFOV", "DeepLabV1Head", "deeplab_largefov", "deeplab_v1_backbone"]

_FC_WIDTH, _FC_DILATION = 1024, 12


def deeplab_v1_backbone(
    in_channels: int = 3,
    dropout: float = 0.5,
    *,
    widths: Sequence[Sequence[int]] = VGG16_STAGES,
    fc_width: int = _FC_WIDTH,
) -> VGG16Backbone:
    """VGG16 with DeepLab's pooling, dilated conv5 and the LargeFOV ``fc6``/``fc7`` (output stride 8).

    ``widths``/``fc_width`` default to DeepLab's; narrower values give a cheap model of the same
    geometry. Not initialised: :func:`deeplab_largefov` He-initialises the whole model.
    """
    pools = [nn.MaxPool2d(3, 2, padding=1) for _ in range(3)] + [nn.MaxPool2d(3, 1, padding=1) for _ in range(2)]
    fc = make_fc_layers(widths[-1][-1], fc_width, 3, padding=_FC_DILATION, dilation=_FC_DILATION, dropout=dropout)
    return VGG16Backbone(in_channels, pools=pools, dilations=(1, 1, 1, 1, 2), fc=fc, widths=widths)


class DeepLabV1Head(nn.Module):
    """``fc8`` (1x1 classifier) and bilinear upsampling of the stride-8 logits to the input size.

    Args:
        in_channels: Channels of ``fc7``.
        num_classes: Number of classes K.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc8 = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, features: Sequence[Tensor], size: Sequence[int]) -> Tensor:
        """Logits of size ``size`` from the backbone outputs (the last one is ``fc7``)."""
        logits = self.fc8(features[-1])
        return F.interpolate(logits, size=list(size[-2:]), mode="bilinear", align_corners=True)


class DeepLabLargeFOV(nn.Module):
    """Dilated VGG16 backbone (``encoder``) and :class:`DeepLabV1Head` (``decoder``); returns logits.

    Args:
        encoder: From :func:`deeplab_v1_backbone`.
        decoder: Classifier and upsampling.
    """

    def __init__(self, encoder: VGG16Backbone, decoder: DeepLabV1Head) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``N x num_classes x H x W`` for images ``N x C x H x W``."""
        return self.decoder(self.encoder(x), x.shape[-2:])


def deeplab_largefov(
    num_classes: int,
    *,
    in_channels: int = 3,
    weights_backbone: str | None = None,
    dropout: float = 0.5,
) -> nn.Module:
    """DeepLab-LargeFOV (v1, no CRF), about 20.5 M parameters for 21 classes.

    Args:
        num_classes: Number of output classes K.
        in_channels: Image channels (3 for pretrained weights).
        weights_backbone: ``"imagenet"`` (torchvision ``VGG16_Weights.IMAGENET1K_V1``), a URL or the
            path of a ``torchvision.models.vgg16().state_dict()`` file; ``None``: He init.
        dropout: Dropout after ``fc6`` and ``fc7``.

    Returns:
        A :class:`DeepLabLargeFOV` returning logits at the input size.
    """
    encoder = deeplab_v1_backbone(in_channels, dropout)
    model = DeepLabLargeFOV(encoder, DeepLabV1Head(encoder.out_channels, num_classes))
    init_he(model)
    if weights_backbone is not None:
        load_vgg16_weights(model.encoder, weights_backbone, fc=model.encoder.fc)
    return model
