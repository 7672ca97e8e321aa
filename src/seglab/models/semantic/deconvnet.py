"""DeconvNet (Noh, Hong & Han, "Learning Deconvolution Network for Semantic Segmentation", ICCV 2015).

arXiv:1505.04366. Encoder: VGG16's 13 convs with BatchNorm and 2x2 max-pools that record their
argmax positions (exactly SegNet's encoder, reused from :mod:`seglab.models.semantic.segnet`), then ``fc6``
(7x7 conv, 4096) and ``fc7`` (1x1, 4096). Decoder: ``deconv-fc6`` (7x7 transposed conv back to
512 channels), then per VGG stage, deepest first, max-unpooling with the encoder's indices and
3x3 stride-1 transposed convs mirroring the encoder's convs; every conv and deconv is followed by
BatchNorm and ReLU, as in the paper. A 1x1 conv gives the K class scores.

Any input size: the original's ``fc6`` is an unpadded 7x7 conv on the 7x7 ``pool5`` of a 224x224
crop (giving 1x1) and ``deconv-fc6`` an unpadded 7x7 transposed conv back to 7x7. We keep both
unpadded, which is what the Caffe network itself computes on a larger image (360x480: ``pool5``
12x15 -> ``fc7`` 6x9 -> 12x15), and zero-pad ``pool5`` up to 7 in each dimension when it is
smaller, cropping the same margin after ``deconv-fc6``; 224x224 inputs run exactly the original
network. ('Same'-padding fc6 would also work but changes the layer's meaning on every input and,
on tiny maps, hits a CPU convolution path that is more than 10x slower in the backward pass.)
Pooling rounds odd sizes up (ceil mode) and unpooling is told the pre-pool size, as in SegNet.
Dropout is off by default, since the paper normalises every layer with BatchNorm; ``dropout``
adds it after ``fc6``/``fc7``. As ``fc7`` can be 1x1, training needs batches of 2 or more there
(BatchNorm needs more than one value per channel).

Parameters for K=21: 251,805,653 (the paper: "252M"), of which fc6, fc7 and deconv-fc6 hold 222 M.

Example:
    >>> import torch
    >>> from seglab.models.registry import create_model
    >>> model = create_model("deconvnet", num_classes=21).eval()
    >>> model(torch.zeros(1, 3, 33, 47)).shape
    torch.Size([1, 21, 33, 47])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from seglab.models.backbones.vgg import VGG16_STAGES, load_vgg16_weights, make_fc_layers
from seglab.models.layers.blocks import init_he, max_unpool_2x2
from seglab.models.semantic.segnet import PoolSizes, SegNetEncoder

__all__ = ["DECONVNET_DECODER_STAGES", "DeconvNet", "DeconvNetDecoder", "DeconvNetEncoder", "deconvnet", "fc_padding"]

#: Deconvolution outputs per decoder stage, deepest first (deconv5_1 ... deconv1_2 in the paper).
DECONVNET_DECODER_STAGES: tuple[tuple[int, ...], ...] = (
    (512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64, 64)
)
_FC_WIDTH, _FC_KERNEL = 4096, 7


def deconv_norm_act(in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1) -> nn.Sequential:
    """Stride-1 ``ConvTranspose2d`` -> BatchNorm -> ReLU, DeconvNet's decoder layer."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, kernel_size, padding=padding),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def fc_padding(size: int) -> tuple[int, int]:
    """Zero rows (or columns) added before and after a ``pool5`` dimension of ``size`` so ``fc6`` fits."""
    extra = max(0, _FC_KERNEL - size)
    return extra // 2, extra - extra // 2


class DeconvNetEncoder(SegNetEncoder):
    """SegNet's VGG16-BN encoder (with pooling indices) followed by ``fc6``/``fc7``.

    Args:
        in_channels: Image channels.
        dropout: Dropout after ``fc6`` and ``fc7``.
    """

    def __init__(self, in_channels: int = 3, dropout: float = 0.0) -> None:
        super().__init__(in_channels, VGG16_STAGES)
        self.fc = make_fc_layers(self.out_channels, _FC_WIDTH, _FC_KERNEL, dropout=dropout,
                                 norm_layer=nn.BatchNorm2d)
        self.out_channels = _FC_WIDTH

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor | None], PoolSizes]:
        """``fc7`` features, pooling indices and pre-pool sizes (see :meth:`SegNetEncoder.forward`)."""
        x, indices, sizes = super().forward(x)
        (top, bottom), (left, right) = fc_padding(x.shape[-2]), fc_padding(x.shape[-1])
        return self.fc(F.pad(x, (left, right, top, bottom))), indices, sizes


class DeconvNetDecoder(nn.Module):
    """``deconv-fc6``, then unpooling + deconvolution stages mirroring VGG16.

    Args:
        in_channels: Channels of ``fc7``.
        pool5_channels: Channels ``deconv-fc6`` returns to (those of ``pool5``).
        stages: Deconvolution widths per stage, deepest first.
    """

    def __init__(self, in_channels: int = _FC_WIDTH, pool5_channels: int = 512,
                 stages: Sequence[Sequence[int]] = DECONVNET_DECODER_STAGES) -> None:
        super().__init__()
        self.fc6_deconv = deconv_norm_act(in_channels, pool5_channels, _FC_KERNEL, padding=0)
        self.stages = nn.ModuleList()
        in_channels = pool5_channels
        for widths in stages:
            layers = []
            for width in widths:
                layers.append(deconv_norm_act(in_channels, width))
                in_channels = width
            self.stages.append(nn.Sequential(*layers))
        self.out_channels = in_channels

    def forward(self, x: Tensor, indices: Sequence[Tensor | None], sizes: PoolSizes) -> Tensor:
        """Decode ``fc7`` features; ``indices``/``sizes`` are the encoder's, shallowest first."""
        if len(indices) != len(self.stages) or len(sizes) != len(self.stages):
            raise ValueError(f"Decoder has {len(self.stages)} stages but got {len(indices)} pooling records.")
        if any(idx is None for idx in indices):
            raise RuntimeError("DeconvNet unpools with pooling indices; the encoder must record them.")
        # Back to pool5's size (that of its pooling indices), removing the encoder's fc6 padding.
        height, width = indices[-1].shape[-2:]
        top, left = fc_padding(height)[0], fc_padding(width)[0]
        x = self.fc6_deconv(x)[..., top : top + height, left : left + width]
        for stage, idx, size in zip(self.stages, reversed(indices), reversed(sizes)):
            x = stage(max_unpool_2x2(x, idx, size))
        return x


class DeconvNet(nn.Module):
    """:class:`DeconvNetEncoder` -> :class:`DeconvNetDecoder` -> 1x1 classifier; returns logits.

    Args:
        encoder: VGG16-BN + fc layers, with pooling indices.
        decoder: The mirrored deconvolution network.
        classifier: Maps decoder features to class scores.
    """

    def __init__(self, encoder: DeconvNetEncoder, decoder: DeconvNetDecoder, classifier: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``N x num_classes x H x W`` for images ``N x C x H x W``."""
        return self.classifier(self.decoder(*self.encoder(x)))


def _init_he_transposed(module: nn.Module) -> None:
    """He-initialise every ``ConvTranspose2d`` the way :func:`init_he` treats an ordinary conv.

    A transposed conv stores its weight as ``in x out x k x k``, so PyTorch's ``fan_in`` of it is
    ``out * k * k``: the same quantity as ``init_he``'s ``fan_out`` of a ``Conv2d``.
    """
    for m in module.modules():
        if isinstance(m, nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def deconvnet(
    num_classes: int,
    *,
    in_channels: int = 3,
    weights_backbone: str | None = None,
    dropout: float = 0.0,
) -> nn.Module:
    """DeconvNet with a VGG16-BN encoder and a mirrored deconvolution decoder.

    Args:
        num_classes: Number of output classes K.
        in_channels: Image channels (3 for pretrained weights).
        weights_backbone: ``"imagenet"`` (torchvision ``VGG16_BN_Weights.IMAGENET1K_V1``) or
            the path of a ``torchvision.models.vgg16_bn().state_dict()`` file: the 13 convs and
            their BatchNorms load directly and ``fc6``/``fc7`` from ``classifier.0``/``classifier.3``
            reshaped (their BatchNorms start at identity). ``None``: He init.
        dropout: Dropout after ``fc6`` and ``fc7`` (0: none, the paper's BN-only network).

    Returns:
        A :class:`DeconvNet` returning logits at the input size.
    """
    encoder = DeconvNetEncoder(in_channels, dropout)
    decoder = DeconvNetDecoder(encoder.out_channels, VGG16_STAGES[-1][-1])
    model = DeconvNet(encoder, decoder, nn.Conv2d(decoder.out_channels, num_classes, 1))
    init_he(model)
    _init_he_transposed(model)
    if weights_backbone is not None:
        load_vgg16_weights(model.encoder, weights_backbone, fc=model.encoder.fc)
    return model
