"""FCN-Basic, the FCN-style decoder on SegNet-Basic's encoder (SegNet TPAMI 2017, Sec. 3.1, Table 1).

Badrinarayanan, Kendall & Cipolla, arXiv:1511.00561. The encoder is SegNet-Basic's: four stages of
conv 7x7 (64 channels, no bias) + BN + ReLU + 2x2 max-pool, with the same LRN on the input. Each
pooled encoder output is reduced to K channels by a 1x1 conv ("dimensionality reduction"). The
decoder starts from the deepest reduced map and, four times, upsamples it 2x with an 8x8
transposed conv initialised to bilinear weights and adds the reduced encoder map of that
resolution; the last step reaches the input resolution, where there is no encoder map to add.
There are no decoder convolutions: the K-channel result is the logits.

Upsampling kernels: the paper sets "the kernel size to 8x8" and initialises them with bilinear
weights. Caffe's ``bilinear`` filler on an 8x8 kernel would give the factor-4 filter, which at
stride 2 has a DC gain of 4 and blurs; we instead put the 2x bilinear kernel (4x4) at the centre
of the 8x8 kernel (padding 3), so each step starts as exact 2x bilinear interpolation
(``align_corners=False``) and the outer taps are free to learn. Odd sizes are handled like
SegNet: pooling rounds up and each upsampled map is cropped to the size it is added to.

Parameters for K=11: 645,868 (paper: 0.65 M) = encoder 612,032 (convs 611,520, BN 512) +
four 1x1 reductions 2,860 + four 11x11x8x8 deconvolutions 30,976.

Example:
    >>> import torch
    >>> from seglab.models.registry import create_model
    >>> model = create_model("fcn_basic", num_classes=11).eval()
    >>> model(torch.zeros(1, 3, 45, 61)).shape
    torch.Size([1, 11, 45, 61])
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from seglab.models.layers.blocks import init_he
from seglab.models.layers.normalization import make_input_norm
from seglab.models.layers.heads import bilinear_conv_transpose, crop_to
from seglab.models.semantic.segnet import SEGNET_BASIC_STAGES, PoolSizes, SegNetEncoder

__all__ = ["FCNBasic", "FCNBasicDecoder", "PyramidSegNetEncoder", "fcn_basic"]

#: FCN-Basic's deconvolution kernel (paper: 8x8) and the padding that makes it exactly 2x.
_KERNEL, _PADDING = 8, 3


class PyramidSegNetEncoder(SegNetEncoder):
    """A :class:`SegNetEncoder` that returns every stage's pooled output, as FCN decoders need."""

    def forward(self, x: Tensor) -> tuple[list[Tensor], PoolSizes]:  # type: ignore[override]
        """Encode ``x``.

        Returns:
            The pooled output of each stage and the pre-pool ``(H, W)`` of each stage,
            shallowest first.
        """
        features: list[Tensor] = []
        sizes: PoolSizes = []
        # Same steps as SegNetEncoder.forward (conv stage, pool, the stage's optional dropout).
        for s, dropout in enumerate(self.dropouts):
            x = self.features.run_stage(x, s)
            sizes.append((x.shape[-2], x.shape[-1]))
            x = dropout(self.pool(x)[0] if self.return_indices else self.pool(x))
            features.append(x)
        return features, sizes


class FCNBasicDecoder(nn.Module):
    """Dimensionality reduction of each encoder output, then 2x deconvolution + addition per stage.

    Args:
        in_channels: Channels of every encoder output (64 in SegNet-Basic).
        num_classes: Number of classes K (the decoder's width).
        num_stages: Number of encoder stages.
        learnable_upsampling: Learn the deconvolutions (``False``: fixed bilinear).
    """

    def __init__(self, in_channels: int, num_classes: int, num_stages: int, learnable_upsampling: bool = True) -> None:
        super().__init__()
        self.reductions = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 1) for _ in range(num_stages))
        self.upsamples = nn.ModuleList(
            bilinear_conv_transpose(num_classes, 2, kernel_size=_KERNEL, padding=_PADDING,
                                    learnable=learnable_upsampling)
            for _ in range(num_stages)
        )

    def forward(self, features: Sequence[Tensor], sizes: PoolSizes) -> Tensor:
        """K-channel logits at ``sizes[0]`` from the pooled encoder outputs (shallowest first)."""
        if len(features) != len(self.upsamples) or len(sizes) != len(self.upsamples):
            raise ValueError(f"Decoder has {len(self.upsamples)} stages but got {len(features)} encoder outputs.")
        x = self.reductions[-1](features[-1])
        for stage in reversed(range(len(self.upsamples))):
            x = crop_to(self.upsamples[stage](x), 0, sizes[stage])
            if stage > 0:
                # The pre-pool size of stage s is the pooled size of stage s - 1: the shapes match.
                x = x + self.reductions[stage - 1](features[stage - 1])
        return x


class FCNBasic(nn.Module):
    """Input normalisation -> :class:`PyramidSegNetEncoder` -> :class:`FCNBasicDecoder`; returns logits.

    Args:
        encoder: Returns pooled features and pre-pool sizes per stage.
        decoder: Turns them into logits.
        input_norm: Optional parameter-free input normalisation (SegNet-Basic's LRN).
    """

    def __init__(self, encoder: PyramidSegNetEncoder, decoder: FCNBasicDecoder,
                 input_norm: nn.Module | None = None) -> None:
        super().__init__()
        self.input_norm = input_norm if input_norm is not None else nn.Identity()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``N x num_classes x H x W`` for images ``N x C x H x W``."""
        features, sizes = self.encoder(self.input_norm(x))
        return self.decoder(features, sizes)


def fcn_basic(
    num_classes: int,
    *,
    in_channels: int = 3,
    input_norm: str = "lrn",
    input_lrn: bool | None = None,
    conv_bias: bool = False,
    learnable_upsampling: bool = True,
) -> nn.Module:
    """FCN-Basic: SegNet-Basic's encoder with an FCN decoder (0.65 M parameters for K=11 in the paper).

    Args:
        num_classes: Number of output classes K.
        in_channels: Image channels.
        input_norm: Input normalisation, as SegNet-Basic's (``lrn``, ``lcn`` or ``none``).
        input_lrn: The older switch: False means ``input_norm="none"``.
        conv_bias: Give the 7x7 encoder convs biases (see ``segnet_basic``).
        learnable_upsampling: ``False`` fixes the deconvolutions at bilinear weights.

    Returns:
        An :class:`FCNBasic` module returning logits at the input size.
    """
    encoder = PyramidSegNetEncoder(in_channels, SEGNET_BASIC_STAGES, kernel_size=7, bias=conv_bias,
                                   return_indices=False)
    decoder = FCNBasicDecoder(encoder.out_channels, num_classes, len(SEGNET_BASIC_STAGES), learnable_upsampling)
    model = FCNBasic(encoder, decoder, make_input_norm(input_norm, in_channels, input_lrn=input_lrn))
    init_he(model)  # leaves the bilinear transposed convs alone
    return model
