"""Heads shared by the FCN family: bilinear-initialised "deconvolution" and centre cropping.

FCN (Long, Shelhamer & Darrell, CVPR 2015, arXiv:1411.4038, Sec. 3.3) upsamples class scores with
transposed convolutions ("deconvolution") initialised to bilinear interpolation and lets them
learn; FCN-Basic (SegNet TPAMI 2017, Sec. 3.1) does the same with 8x8 kernels. Unlike the
depthwise :class:`seglab.models.layers.blocks.BilinearConvTranspose2d` (padding 1, crop at the end), the
FCN layers here are full ``channels -> channels`` filters, as in the Caffe models: the bilinear
kernel sits on the channel diagonal and the off-diagonal weights start at zero, so classes do not
mix at initialisation but may learn to.

Example:
    >>> import torch
    >>> up = bilinear_conv_transpose(3, factor=2)
    >>> up(torch.ones(1, 3, 4, 4)).shape
    torch.Size([1, 3, 10, 10])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from seglab.models.layers.blocks import bilinear_kernel

__all__ = ["bilinear_conv_transpose", "crop_to", "zero_init_"]


def bilinear_conv_transpose(
    channels: int,
    factor: int,
    *,
    kernel_size: int | None = None,
    padding: int = 0,
    learnable: bool = True,
) -> nn.ConvTranspose2d:
    """A ``channels -> channels`` transposed conv with stride ``factor`` that starts as bilinear upsampling.

    The ``2 * factor`` bilinear kernel of :func:`~seglab.models.layers.blocks.bilinear_kernel` is placed
    at the centre of a ``kernel_size`` kernel (zeros around it), on the channel diagonal. With
    ``kernel_size = 2 * factor`` and ``padding = 0`` this is Caffe FCN's ``upscore`` layer, whose
    output is ``factor * (n + 1)`` long and shifted by ``factor / 2`` pixels against
    ``F.interpolate(..., align_corners=False)``; callers crop it.

    Args:
        channels: Input (= output) channels, e.g. the number of classes.
        factor: Upsampling factor (the stride).
        kernel_size: Kernel size, at least ``2 * factor`` and of the same parity; ``None`` for
            ``2 * factor``. A larger kernel leaves its outer taps at zero, free to learn.
        padding: Transposed-conv padding.
        learnable: ``False`` freezes the weights at bilinear (FCN's "fixed bilinear" variant).

    Returns:
        The initialised ``nn.ConvTranspose2d`` (no bias, as in FCN).
    """
    base = 2 * factor
    kernel_size = base if kernel_size is None else kernel_size
    if kernel_size < base or (kernel_size - base) % 2:
        raise ValueError(f"kernel_size must be >= {base} and differ from it by an even number, got {kernel_size}.")
    up = nn.ConvTranspose2d(channels, channels, kernel_size, stride=factor, padding=padding, bias=False)
    margin = (kernel_size - base) // 2
    with torch.no_grad():
        up.weight.zero_()
        diagonal = torch.arange(channels)
        up.weight[diagonal, diagonal, margin : margin + base, margin : margin + base] = bilinear_kernel(base)
    up.weight.requires_grad_(learnable)
    return up


def crop_to(x: Tensor, offset: int, size: Sequence[int]) -> Tensor:
    """``x[..., offset:offset + H, offset:offset + W]`` for ``size = (H, W)``, checking it fits.

    Args:
        x: ``N x C x h x w`` tensor.
        offset: Rows and columns dropped at the top and left (Caffe ``Crop`` layer ``offset``).
        size: Target ``(H, W)`` (only the last two entries are used).

    Raises:
        RuntimeError: ``x`` is too small, which would mean a wrong offset for the architecture.
    """
    height, width = int(size[-2]), int(size[-1])
    if x.shape[-2] < offset + height or x.shape[-1] < offset + width:
        raise RuntimeError(
            f"Cannot crop {height}x{width} at offset {offset} from a {x.shape[-2]}x{x.shape[-1]} map."
        )
    return x[..., offset : offset + height, offset : offset + width]


def zero_init_(layer: nn.Conv2d) -> nn.Conv2d:
    """Zero a conv's weight and bias in place and return it.

    FCN zero-initialises the score layers it adds for skip connections, so a new skip starts as a
    no-op and the coarser net's predictions are unchanged at the start of training.
    """
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer
