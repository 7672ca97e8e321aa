"""Aligned Xception-65, the DeepLabv3+ backbone (Chen et al., ECCV 2018, arXiv:1802.02611, Sec. 3.2).

Xception (Chollet, CVPR 2017) as modified for segmentation by DeepLabv3+: a deeper middle flow
(16 blocks instead of 8), every max pooling replaced by a stride-2 separable conv (so atrous
separable convs can take over at any output stride), and BN + ReLU after every depthwise conv.

Layout (``widths`` of the three separable convs per block; the third conv carries the stride)::

    stem    conv3x3 32 s2, conv3x3 64                               stride 2
    entry   [128,128,128] s2   [256,256,256] s2   [728,728,728] s2  stride 16  (1x1 conv shortcuts)
    middle  16 x [728,728,728]                                       identity shortcuts
    exit    [728,1024,1024] s2 (1x1 conv shortcut), [1536,1536,2048] (no shortcut)   stride 32

Output stride 16 or 8 follows the official TensorFlow code: once the requested stride is
reached, later strides become 1 and the dilation rate grows by the skipped factor instead
(OS 16: exit block 2 at rate 2; OS 8: middle flow and exit block 1 at rate 2, exit block 2 at 4).
Low-level features for the DeepLabv3+ decoder are taken where the TF code takes them: after the
second separable conv of entry block 2 (256 channels, stride 4).

The separable convs are post-activation (``dw -> BN -> ReLU -> pw -> BN -> ReLU``), the paper's
description, whereas the TF code applies ReLU before each separable conv in most blocks; both have
the same parameters. No ImageNet weights exist in torchvision for this network.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from seglab.core.errors import SeglabError
from seglab.models.layers.atrous import SeparableConv2d, check_output_stride
from seglab.models.layers.blocks import conv_norm_act, init_he

__all__ = ["XCEPTION65_BLOCKS", "Xception65", "XceptionBlock"]

#: ``(name, widths, stride, shortcut)`` per block; shortcut is ``conv``, ``sum`` or ``none``.
XCEPTION65_BLOCKS: tuple[tuple[str, tuple[int, int, int], int, str], ...] = (
    ("entry1", (128, 128, 128), 2, "conv"),
    ("entry2", (256, 256, 256), 2, "conv"),
    ("entry3", (728, 728, 728), 2, "conv"),
    *((f"middle{i}", (728, 728, 728), 1, "sum") for i in range(1, 17)),
    ("exit1", (728, 1024, 1024), 2, "conv"),
    ("exit2", (1536, 1536, 2048), 1, "none"),
)
_SHORTCUTS = ("conv", "sum", "none")


class XceptionBlock(nn.Module):
    """Three separable convs (the last one strided) plus a residual shortcut.

    Args:
        in_channels: Input channels.
        widths: Output channels of the three separable convs.
        stride: Stride of the third separable conv.
        dilation: Dilation of all three depthwise convs.
        shortcut: ``conv`` (1x1 conv + BN with the block's stride), ``sum`` (identity; needs
            ``stride == 1`` and ``in_channels == widths[-1]``) or ``none``.
    """

    def __init__(self, in_channels: int, widths: Sequence[int], stride: int = 1, dilation: int = 1,
                 shortcut: str = "conv") -> None:
        super().__init__()
        if shortcut not in _SHORTCUTS:
            raise SeglabError(f"Unknown Xception shortcut {shortcut!r}; choose one of {', '.join(_SHORTCUTS)}.")
        if shortcut == "sum" and (stride != 1 or in_channels != widths[-1]):
            raise SeglabError("An identity ('sum') shortcut needs stride 1 and equal input and output channels.")
        convs, channels = [], in_channels
        for i, width in enumerate(widths):
            convs.append(SeparableConv2d(channels, width, stride=stride if i == len(widths) - 1 else 1,
                                         dilation=dilation))
            channels = width
        self.convs = nn.ModuleList(convs)
        self.shortcut_type = shortcut
        self.shortcut = (
            conv_norm_act(in_channels, widths[-1], 1, stride=stride, activation_layer=None)
            if shortcut == "conv" else None
        )
        self.out_channels = widths[-1]

    def forward_with_hidden(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Block output and the output of the second-to-last separable conv (before the stride)."""
        out, hidden = x, x
        for conv in self.convs:
            hidden, out = out, conv(out)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        elif self.shortcut_type == "sum":
            out = out + x
        return out, hidden

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_hidden(x)[0]


def _block_strides(output_stride: int, stem_stride: int = 2) -> list[tuple[int, int]]:
    """``(stride, dilation)`` per block of :data:`XCEPTION65_BLOCKS` for ``output_stride``.

    Mirrors the TF ``stack_blocks_dense`` rule: a block whose stride would push the running
    stride past ``output_stride`` runs with stride 1 at the current rate, and multiplies the rate
    by its stride for the blocks after it.
    """
    current, rate, plan = stem_stride, 1, []
    for _, _, stride, _ in XCEPTION65_BLOCKS:
        if current == output_stride:
            plan.append((1, rate))
            rate *= stride
        else:
            plan.append((stride, 1))
            current *= stride
    return plan


class Xception65(nn.Module):
    """Aligned Xception-65 feature extractor returning ``{"low": stride-4, "out": deepest}`` features.

    Args:
        in_channels: Image channels.
        output_stride: 8, 16 or 32; the stride of ``out`` relative to the input.

    Attributes:
        low_channels: Channels of ``low`` (256).
        out_channels: Channels of ``out`` (2048).
        feature_channels: ``[low_channels, out_channels]``, the returned maps in order.
        feature_strides: ``[4, output_stride]``.
    """

    def __init__(self, in_channels: int = 3, output_stride: int = 16) -> None:
        super().__init__()
        self.output_stride = check_output_stride(output_stride)
        self.stem = nn.Sequential(conv_norm_act(in_channels, 32, 3, stride=2), conv_norm_act(32, 64, 3))
        blocks, channels = [], 64
        for (_, widths, _, shortcut), (stride, dilation) in zip(XCEPTION65_BLOCKS, _block_strides(output_stride)):
            blocks.append(XceptionBlock(channels, widths, stride, dilation, shortcut))
            channels = widths[-1]
        # Named flows so a fine-tuning recipe can freeze e.g. ``encoder.entry_flow``.
        self.entry_flow = nn.ModuleList(blocks[:3])
        self.middle_flow = nn.Sequential(*blocks[3:-2])
        self.exit_flow = nn.Sequential(*blocks[-2:])
        self.low_channels = XCEPTION65_BLOCKS[1][1][1]
        self.out_channels = channels
        # The FeatureBackbone protocol (seglab.ops.contract), in the order of the returned dict.
        self.feature_channels = [self.low_channels, self.out_channels]
        self.feature_strides = [4, self.output_stride]
        init_he(self)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Features ``{"low": N x 256 x H/4 x W/4, "out": N x 2048 x H/os x W/os}`` (sizes rounded up)."""
        x = self.entry_flow[0](self.stem(x))
        x, low = self.entry_flow[1].forward_with_hidden(x)
        x = self.entry_flow[2](x)
        return {"low": low, "out": self.exit_flow(self.middle_flow(x))}
