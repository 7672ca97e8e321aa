"""DeepLabv3 and DeepLabv3+ (Chen et al., arXiv:1706.05587 and ECCV 2018, arXiv:1802.02611).

* DeepLabv3: an atrous ResNet (torchvision ``resnet50/101`` with ``replace_stride_with_dilation``)
  -> :class:`~seglab.models.layers.atrous.ASPP` -> 3x3 conv + BN + ReLU -> 1x1 classifier, bilinearly
  upsampled to the input size (the torchvision ``DeepLabHead`` layout).
* DeepLabv3+: the same ASPP on the deepest features, plus a decoder that reduces the stride-4
  features to 48 channels, concatenates them with the upsampled ASPP output, refines with two 3x3
  convs of 256 (separable for Xception) and classifies; the logits are upsampled to input size.

Every model is a :class:`DeepLab` whose ``encoder`` returns a dict of features (``out``, and
``low`` for v3+) and whose ``decoder`` turns it into logits at the feature resolution.

Example:
    >>> import torch
    >>> from seglab.models.registry import create_model
    >>> model = create_model("deeplabv3_resnet50", num_classes=11, output_stride=8).eval()
    >>> model(torch.zeros(1, 3, 33, 47)).shape
    torch.Size([1, 11, 33, 47])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab.models.backbones.xception import Xception65
from seglab.models.layers.atrous import ASPP, SeparableConv2d, aspp_rates, atrous_conv, check_output_stride
from seglab.models.layers.blocks import conv_norm_act, init_he
from seglab.models.weights import check_state_dict, load_state_dict, strip_prefix

__all__ = [
    "DeepLab",
    "DeepLabV3Head",
    "DeepLabV3PlusHead",
    "deeplabv3_resnet101",
    "deeplabv3_resnet50",
    "deeplabv3plus_resnet50",
    "deeplabv3plus_xception65",
    "load_resnet_weights",
    "resnet_backbone",
]

Features = Mapping[str, Tensor]
#: ``replace_stride_with_dilation`` for torchvision ResNets (layer2, layer3, layer4) per output stride.
_RESNET_DILATION = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}


class DeepLab(nn.Module):
    """``encoder`` (image -> feature dict) -> ``decoder`` (features -> logits) -> bilinear upsampling.

    Args:
        encoder: Returns ``{"out": ..., ["low": ...]}``.
        decoder: Maps that dict to ``N x K x h x w`` logits.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``N x K x H x W`` for images ``N x C x H x W``."""
        logits = self.decoder(self.encoder(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class DeepLabV3Head(nn.Module):
    """ASPP -> 3x3 conv 256 + BN + ReLU -> 1x1 conv to ``num_classes`` (torchvision's ``DeepLabHead``).

    Args:
        in_channels: Channels of ``features["out"]``.
        num_classes: Number of classes K.
        rates: ASPP rates.
        dropout: ASPP dropout.
    """

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...], dropout: float = 0.1) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, 256, rates, dropout=dropout)
        self.conv = conv_norm_act(256, 256, 3)
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, features: Features) -> Tensor:
        return self.classifier(self.conv(self.aspp(features["out"])))


class DeepLabV3PlusHead(nn.Module):
    """ASPP on ``out`` + decoder fusing ``low`` (stride 4) features (DeepLabv3+ Fig. 2).

    Args:
        in_channels: Channels of ``features["out"]``.
        low_channels: Channels of ``features["low"]``.
        num_classes: Number of classes K.
        rates: ASPP rates.
        separable: Separable ASPP branches and decoder convs (the Xception variant).
        dropout: ASPP dropout.
    """

    def __init__(self, in_channels: int, low_channels: int, num_classes: int, rates: tuple[int, ...],
                 separable: bool = False, dropout: float = 0.1) -> None:
        super().__init__()
        conv3x3: Callable[[int, int], nn.Module] = SeparableConv2d if separable else atrous_conv
        self.aspp = ASPP(in_channels, 256, rates, separable=separable, dropout=dropout)
        # 48 channels keep the low-level features from outweighing the 256 ASPP ones (paper Table 1).
        self.reduce = conv_norm_act(low_channels, 48, 1)
        self.fuse = nn.Sequential(conv3x3(256 + 48, 256), conv3x3(256, 256))
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, features: Features) -> Tensor:
        low = self.reduce(features["low"])
        # "Upsampled by 4": to the exact low-level size, which ceil-rounding makes not always 4x.
        high = F.interpolate(self.aspp(features["out"]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([high, low], dim=1)))


def resnet_backbone(depth: int, output_stride: int, in_channels: int = 3, low_level: bool = False) -> nn.Module:
    """An atrous torchvision ResNet returning ``{["low": layer1, ]"out": layer4}``.

    Its ``feature_channels`` / ``feature_strides`` describe the returned maps in order.

    Args:
        depth: 50 or 101.
        output_stride: 8, 16 or 32 (dilating layer3+layer4, layer4, or nothing).
        in_channels: Image channels; other than 3 replaces ``conv1`` (ImageNet weights then fail).
        low_level: Also return ``layer1`` (256 channels, stride 4) as ``low``.
    """
    import torchvision  # lazy: importing torchvision costs about a second at every CLI start
    from torchvision.models._utils import IntermediateLayerGetter

    builders = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101}
    resnet = builders[depth](weights=None, replace_stride_with_dilation=_RESNET_DILATION[check_output_stride(
        output_stride)])
    if in_channels != 3:
        resnet.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(resnet.conv1.weight, mode="fan_out", nonlinearity="relu")
    return_layers = {"layer1": "low", "layer4": "out"} if low_level else {"layer4": "out"}
    backbone = IntermediateLayerGetter(resnet, return_layers=return_layers)
    # The FeatureBackbone protocol (seglab.ops.contract), in the order of the returned dict.
    backbone.feature_channels = [256, 2048] if low_level else [2048]
    backbone.feature_strides = [4, output_stride] if low_level else [output_stride]
    return backbone


def load_resnet_weights(encoder: nn.Module, source: str | Path, depth: int) -> None:
    """Copy torchvision ResNet weights into a :func:`resnet_backbone`, in place.

    Dilation does not change any weight shape, so ImageNet weights load at every output stride.

    Args:
        encoder: The backbone to fill.
        source: ``"imagenet"`` (torchvision ``ResNet{depth}_Weights.IMAGENET1K_V1``), another
            member name of that enum, a URL or the path of a ``resnet{depth}`` state dict (a
            torchvision segmentation model's ``backbone.*`` keys work too); ``fc.*`` is ignored.
        depth: 50 or 101, to pick the ImageNet weights and phrase errors.

    Raises:
        SeglabError: Weights unavailable (offline), unreadable file, or a state dict of another network.
    """
    what = f"resnet{depth}"
    state = load_state_dict(source, what=what, option="weights_backbone")
    # DataParallel checkpoints prefix "module."; torchvision segmentation models prefix "backbone.".
    state = strip_prefix(strip_prefix(state, "module."), "backbone.")
    target = encoder.state_dict()
    check_state_dict(state, {k: tuple(v.shape) for k, v in target.items()}, source=source, what=what,
                     option="weights_backbone", part="encoder", ignore=("fc.",),
                     hints={"conv1.weight": f"{what} weights need in_channels=3."})
    encoder.load_state_dict({k: state.get(k, v) for k, v in target.items()})


def _deeplab_resnet(depth: int, num_classes: int, plus: bool, in_channels: int, output_stride: int,
                    weights_backbone: str | None, dropout: float) -> DeepLab:
    """Assemble a ResNet DeepLabv3 (``plus=False``) or DeepLabv3+ model."""
    encoder = resnet_backbone(depth, output_stride, in_channels, low_level=plus)
    rates = aspp_rates(output_stride)
    if plus:
        decoder: nn.Module = DeepLabV3PlusHead(2048, 256, num_classes, rates, dropout=dropout)
    else:
        decoder = DeepLabV3Head(2048, num_classes, rates, dropout)
    init_he(decoder)
    if weights_backbone is not None:
        load_resnet_weights(encoder, weights_backbone, depth)
    return DeepLab(encoder, decoder)


def deeplabv3_resnet50(num_classes: int, *, in_channels: int = 3, output_stride: int = 16,
                       weights_backbone: str | None = None, dropout: float = 0.1) -> nn.Module:
    """DeepLabv3 with an atrous ResNet-50.

    Parameters for K=21: 39,638,613 = torchvision ``deeplabv3_resnet50(aux_loss=False)``'s
    39,638,869 minus 256, because our image-pooling branch has a conv bias (256) instead of a BN
    (512). torchvision's advertised 42.0 M includes its FCN auxiliary head (2,365,461).

    Args:
        num_classes: Number of classes K.
        in_channels: Image channels.
        output_stride: 8, 16 (default) or 32; ASPP rates follow (12/24/36, 6/12/18, 3/6/9).
        weights_backbone: ``"imagenet"`` (torchvision ``ResNet50_Weights.IMAGENET1K_V1``), a URL or
            the path of a ``torchvision.models.resnet50`` state dict (see :func:`load_resnet_weights`);
            ``None`` keeps torchvision's random initialisation, without any download.
        dropout: ASPP dropout (0.1 as in the TF code; torchvision uses 0.5).
    """
    return _deeplab_resnet(50, num_classes, False, in_channels, output_stride, weights_backbone, dropout)


def deeplabv3_resnet101(num_classes: int, *, in_channels: int = 3, output_stride: int = 16,
                        weights_backbone: str | None = None, dropout: float = 0.1) -> nn.Module:
    """DeepLabv3 with an atrous ResNet-101 (the paper's network).

    Parameters for K=21: 58,630,741 (torchvision without aux 58,630,997, minus 256; see
    :func:`deeplabv3_resnet50`). Options as for :func:`deeplabv3_resnet50`, with ``resnet101`` weights.
    """
    return _deeplab_resnet(101, num_classes, False, in_channels, output_stride, weights_backbone, dropout)


def deeplabv3plus_resnet50(num_classes: int, *, in_channels: int = 3, output_stride: int = 16,
                           weights_backbone: str | None = None, dropout: float = 0.1) -> nn.Module:
    """DeepLabv3+ with an atrous ResNet-50; low-level features from ``layer1`` (256 ch, stride 4).

    The 3x3 head conv of DeepLabv3 is replaced by the decoder. Options as for
    :func:`deeplabv3_resnet50`. Parameters for K=21: 40,351,925 (backbone 23,508,032, ASPP +
    decoder + classifier 16,843,893).
    """
    return _deeplab_resnet(50, num_classes, True, in_channels, output_stride, weights_backbone, dropout)


def deeplabv3plus_xception65(num_classes: int, *, in_channels: int = 3, output_stride: int = 16,
                             dropout: float = 0.1) -> nn.Module:
    """DeepLabv3+ with aligned Xception-65, separable ASPP and separable decoder (the paper's best).

    No pretrained backbone option: torchvision has no Xception weights. He initialisation.

    Parameters for K=21: 41,055,157 (Xception-65 37,867,312, head 3,187,845), the ~41 M quoted
    for DeepLabv3+ X-65; the TF model's BN in the image-pooling branch would add 256.

    Args:
        num_classes: Number of classes K.
        in_channels: Image channels.
        output_stride: 8, 16 (default) or 32.
        dropout: ASPP dropout.
    """
    encoder = Xception65(in_channels, output_stride)
    decoder = DeepLabV3PlusHead(encoder.out_channels, encoder.low_channels, num_classes, aspp_rates(output_stride),
                                separable=True, dropout=dropout)
    init_he(decoder)
    return DeepLab(encoder, decoder)
