"""Atrous (dilated) building blocks shared by DeepLabv3, DeepLabv3+ and Xception.

* :func:`atrous_conv` - 3x3 dilated conv + BN + ReLU (torchvision's ``Conv2dNormActivation``).
* :class:`SeparableConv2d` - depthwise 3x3 (dilated) + BN + ReLU, then pointwise 1x1 + BN + ReLU,
  the MobileNet-style separable conv of DeepLabv3+ (Chen et al., ECCV 2018, arXiv:1802.02611,
  Sec. 3.2: "extra batch normalization and ReLU activation are added after each 3x3 depthwise
  convolution"). Xception's blocks, the separable ASPP and the separable decoder all use it.
* :class:`ASPP` - Atrous Spatial Pyramid Pooling of DeepLabv3 (Chen et al. 2017,
  arXiv:1706.05587, Sec. 3.3): a 1x1 branch, three 3x3 atrous branches, an image-pooling branch,
  concatenation, 1x1 projection and dropout.
* :func:`check_output_stride` / :func:`aspp_rates` - the accepted backbone output strides and the
  ASPP rates that go with each.

Padding always equals ``dilation`` for the 3x3 convs, so stride-1 blocks keep the spatial size
and any input size works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab.core.errors import SeglabError
from seglab.models.layers.blocks import conv_norm_act

__all__ = [
    "ASPP",
    "ASPPPooling",
    "BASE_ASPP_RATES",
    "OUTPUT_STRIDES",
    "SeparableConv2d",
    "aspp_rates",
    "atrous_conv",
    "check_output_stride",
    "separable_conv_params",
]


#: Backbone output strides the atrous models accept (32 means no dilation at all).
OUTPUT_STRIDES: tuple[int, ...] = (8, 16, 32)
#: ASPP rates at output stride 16 (DeepLabv3 Sec. 3.3); they scale inversely with the stride.
BASE_ASPP_RATES: tuple[int, ...] = (6, 12, 18)


def check_output_stride(output_stride: int) -> int:
    """Return ``output_stride`` if it is in :data:`OUTPUT_STRIDES`, else raise :class:`SeglabError`."""
    if output_stride not in OUTPUT_STRIDES:
        raise SeglabError(
            f"output_stride must be one of {', '.join(map(str, OUTPUT_STRIDES))}, got {output_stride!r} "
            "(16 is the DeepLab default; 8 is denser and slower; 32 disables dilation)."
        )
    return output_stride


def aspp_rates(output_stride: int) -> tuple[int, ...]:
    """ASPP rates for ``output_stride``: (6, 12, 18) at 16, (12, 24, 36) at 8, (3, 6, 9) at 32.

    The rates are in feature-map pixels, so keeping the same field of view in image pixels means
    doubling them when the features are twice as dense (DeepLabv3 Sec. 3.3).
    """
    check_output_stride(output_stride)
    return tuple(rate * 16 // output_stride for rate in BASE_ASPP_RATES)


def atrous_conv(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Sequential:
    """3x3 conv with ``dilation`` (padding = dilation, so the size is kept) + BN + ReLU."""
    return conv_norm_act(in_channels, out_channels, 3, dilation=dilation)


class SeparableConv2d(nn.Sequential):
    """Depthwise-separable conv: ``dw kxk (dilated) -> BN [-> ReLU] -> pw 1x1 -> BN -> ReLU``.

    Children: ``depthwise`` and ``pointwise`` (both torchvision ``Conv2dNormActivation``). No conv has a bias,
    since each is followed by BN. Parameters (default arguments):
    ``k*k*in + 2*in + in*out + 2*out`` (see :func:`separable_conv_params`).

    Args:
        in_channels: Input channels (also the depthwise conv's channels).
        out_channels: Output channels of the pointwise conv.
        kernel_size: Depthwise kernel size.
        stride: Depthwise stride; Xception replaces max pooling by a stride-2 separable conv.
        dilation: Depthwise dilation (the atrous rate).
        relu_after_depthwise: ReLU between the depthwise BN and the pointwise conv (DeepLabv3+).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        relu_after_depthwise: bool = True,
    ) -> None:
        super().__init__()
        self.depthwise = conv_norm_act(
            in_channels, in_channels, kernel_size, stride=stride, dilation=dilation, groups=in_channels,
            activation_layer=nn.ReLU if relu_after_depthwise else None,
        )
        self.pointwise = conv_norm_act(in_channels, out_channels, 1)
        self.out_channels = out_channels


def separable_conv_params(in_channels: int, out_channels: int, kernel_size: int = 3) -> int:
    """Hand formula for the parameters of a default :class:`SeparableConv2d`.

    Depthwise weights ``k*k*in``, its BN ``2*in``, pointwise weights ``in*out``, its BN ``2*out``.
    """
    return kernel_size * kernel_size * in_channels + 2 * in_channels + in_channels * out_channels + 2 * out_channels


class ASPPPooling(nn.Module):
    """Image-level features: global average pool -> 1x1 conv (with bias) -> ReLU -> upsample.

    Unlike the paper (and torchvision), there is **no BatchNorm** here: after global pooling each
    sample contributes one value per channel, so train-mode BN fails for batch size 1 ("Expected
    more than 1 value per channel") and is very noisy for small batches. In eval mode BN is an
    affine map that the conv bias can absorb, so dropping it loses no expressiveness; it costs
    ``out_channels`` fewer parameters than the BN version (bias ``C`` instead of BN ``2C``).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = conv_norm_act(in_channels, out_channels, 1, norm_layer=None)  # bias, since no norm

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.conv(F.adaptive_avg_pool2d(x, 1))
        # A 1x1 map upsampled bilinearly is a broadcast; expand is the same and allocates nothing.
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling (DeepLabv3, Sec. 3.3).

    Branches: 1x1 conv; three 3x3 convs at ``rates``; image pooling (:class:`ASPPPooling`). Each
    gives ``out_channels`` maps; they are concatenated and projected by 1x1 conv + BN + ReLU, then
    dropout. The default dropout 0.1 follows the official TensorFlow DeepLab code (keep_prob 0.9
    after the projection); torchvision uses 0.5. The output stride of the backbone decides the
    rates: (6, 12, 18) at output stride 16, doubled at 8 (paper Sec. 3.3).

    Args:
        in_channels: Channels of the backbone features.
        out_channels: Channels of every branch and of the output.
        rates: Dilations of the three 3x3 branches.
        separable: Use :class:`SeparableConv2d` for the 3x3 branches (DeepLabv3+ with Xception).
        dropout: Dropout probability after the projection.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        rates: Sequence[int] = (6, 12, 18),
        separable: bool = False,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [conv_norm_act(in_channels, out_channels, 1)]
        for rate in rates:
            if separable:
                branches.append(SeparableConv2d(in_channels, out_channels, dilation=rate))
            else:
                branches.append(atrous_conv(in_channels, out_channels, rate))
        branches.append(ASPPPooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = conv_norm_act(len(branches) * out_channels, out_channels, 1)
        self.dropout = nn.Dropout(dropout)
        self.rates = tuple(rates)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        """``N x in_channels x h x w`` -> ``N x out_channels x h x w``."""
        return self.dropout(self.project(torch.cat([branch(x) for branch in self.branches], dim=1)))
