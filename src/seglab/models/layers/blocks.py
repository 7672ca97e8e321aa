"""Reusable building blocks for encoder-decoder segmentation models.

What lives here:

* :func:`conv_norm_act` - conv, optional norm, optional activation: torchvision's
  ``Conv2dNormActivation``, imported lazily.
* :func:`max_pool_2x2` / :func:`max_unpool_2x2` - SegNet's pooling pair. All index-based unpooling
  goes through :func:`max_unpool_2x2`. Indices come in one of :data:`INDEX_FORMATS`: PyTorch's
  int64 flat indices, or SegNet's 2-bit window codes (``uint8``, or ``packed`` four per byte,
  see :mod:`seglab.models.layers.compact_pool`); the unpooling tells them apart by dtype, so decoders
  do not care which one the encoder recorded. :func:`set_index_format` converts a built model.
* Upsampling modules sharing one call signature ``up(x, indices, output_size)`` so a decoder can
  swap max-unpooling for interpolation or a learnt transposed conv without changing its code;
  build them with :func:`make_upsample`.
* :func:`init_he` - He initialisation used by the SegNet paper.

Every upsampling module returns a tensor of exactly ``output_size`` (the pre-pool size), which is
what lets models work at any input size, e.g. 360x480, which is not a multiple of 32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab.core.errors import SeglabError, did_you_mean
from seglab.models.layers.compact_pool import CodeMaxPool2d, unpool_from_codes

__all__ = [
    "INDEX_FORMATS",
    "UPSAMPLE_MODES",
    "BilinearConvTranspose2d",
    "BilinearUp2d",
    "MaxUnpool2d",
    "NearestUp2d",
    "bilinear_kernel",
    "check_index_format",
    "conv_norm_act",
    "check_upsample_mode",
    "init_he",
    "make_upsample",
    "max_pool_2x2",
    "max_unpool_2x2",
    "set_index_format",
    "upsample_uses_indices",
]

#: Decoder upsampling modes accepted by :func:`make_upsample` (``indices`` is SegNet's own).
UPSAMPLE_MODES: tuple[str, ...] = ("indices", "nearest", "bilinear", "transposed")
#: How max-pool indices are stored: int64 flat indices (PyTorch's), one 2-bit window code per
#: uint8 (8x smaller) or four codes per byte (32x smaller). All three unpool identically.
INDEX_FORMATS: tuple[str, ...] = ("int64", "uint8", "packed")


def conv_norm_act(in_channels: int, out_channels: int, kernel_size: int = 3, **kwargs: Any) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation``: ``Conv2d -> norm -> activation``, children ``0``, ``1``, ``2``.

    Keyword arguments are torchvision's (``stride``, ``padding`` (``None``: "same" for odd kernels),
    ``dilation``, ``groups``, ``bias`` (``None``: only without a norm layer), ``norm_layer``
    (default ``BatchNorm2d``; ``None`` for none), ``activation_layer`` (default ``ReLU``),
    ``inplace``). torchvision is imported on the first call, not when seglab's models are
    imported: importing it costs more than a second at every command-line start.
    """
    from torchvision.ops.misc import Conv2dNormActivation

    return Conv2dNormActivation(in_channels, out_channels, kernel_size, **kwargs)


def check_index_format(index_format: str) -> str:
    """Return ``index_format`` if it is one of :data:`INDEX_FORMATS`, else raise :class:`SeglabError`."""
    if index_format not in INDEX_FORMATS:
        raise SeglabError(
            f"Unknown index format {index_format!r}.{did_you_mean(str(index_format), INDEX_FORMATS)} "
            f"Choose one of: {', '.join(INDEX_FORMATS)}."
        )
    return index_format


def max_pool_2x2(return_indices: bool = True, index_format: str = "int64") -> nn.Module:
    """SegNet's 2x2, stride-2 max pooling.

    ``ceil_mode=True`` rounds odd sizes up as Caffe does (45 -> 23), so no input pixel is dropped
    and every pixel has a window whose index can carry it back.

    Args:
        return_indices: Return ``(pooled, indices)`` instead of ``pooled``.
        index_format: Encoding of the indices, one of :data:`INDEX_FORMATS` (ignored without
            ``return_indices``). Pooled values are identical for every format.
    """
    check_index_format(index_format)
    if return_indices and index_format != "int64":
        return CodeMaxPool2d(packed=index_format == "packed")
    return nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True, return_indices=return_indices)


def max_unpool_2x2(x: Tensor, indices: Tensor, output_size: Sequence[int], packed: bool = False) -> Tensor:
    """Place each value of ``x`` at the position its 2x2 max-pool ``indices`` recorded.

    Args:
        x: Pooled (or decoded) features ``N x C x h x w``.
        indices: As returned by :func:`max_pool_2x2`: int64 flat indices into the ``H x W`` plane,
            or ``uint8`` 2-bit window codes (told apart by dtype).
        output_size: The exact pre-pool ``(H, W)``; needed because ``h = ceil(H / 2)`` loses
            whether ``H`` was odd.
        packed: Whether ``uint8`` codes are packed four per byte (``index_format="packed"``).

    Returns:
        ``N x C x H x W`` tensor, zero everywhere except at the recorded maxima.
    """
    if indices.dtype == torch.uint8:
        return unpool_from_codes(x, indices, output_size, packed=packed)
    return F.max_unpool2d(x, indices, kernel_size=2, stride=2, output_size=list(output_size[-2:]))


class MaxUnpool2d(nn.Module):
    """SegNet upsampling: max-unpooling with the encoder's pooling indices (no parameters).

    Args:
        index_format: Format the encoder records (:data:`INDEX_FORMATS`). Only ``packed`` changes
            anything: int64 indices and uint8 codes are recognised by dtype.
    """

    def __init__(self, index_format: str = "int64") -> None:
        super().__init__()
        self.index_format = check_index_format(index_format)

    def forward(self, x: Tensor, indices: Tensor | None, output_size: Sequence[int]) -> Tensor:
        if indices is None:
            raise RuntimeError("MaxUnpool2d needs pooling indices; build the encoder with return_indices=True.")
        return max_unpool_2x2(x, indices, output_size, packed=self.index_format == "packed")

    def extra_repr(self) -> str:
        return f"index_format={self.index_format!r}"


def _is_segnet_pool(module: nn.Module) -> bool:
    """Whether ``module`` is a pooling layer built by :func:`max_pool_2x2` that records indices."""
    if isinstance(module, CodeMaxPool2d):
        return True
    return (isinstance(module, nn.MaxPool2d) and module.return_indices and module.ceil_mode
            and module.kernel_size in (2, (2, 2)) and module.stride in (2, (2, 2))
            and module.padding in (0, (0, 0)) and module.dilation in (1, (1, 1)))


def set_index_format(model: nn.Module, index_format: str) -> nn.Module:
    """Switch every SegNet-style pool/unpool pair in ``model`` to ``index_format``, in place.

    Outputs do not change (all formats unpool identically); only the memory the indices take
    and the ops used do, e.g. ``uint8`` codes avoid ``max_unpool2d`` for ONNX export. Pools are
    replaced wherever they sit (found by attribute name), so models reusing these blocks work.

    Returns:
        ``model``, for chaining.
    """
    check_index_format(index_format)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _is_segnet_pool(child):
                setattr(parent, name, max_pool_2x2(True, index_format))
            elif isinstance(child, MaxUnpool2d):
                child.index_format = index_format
    return model


class NearestUp2d(nn.Module):
    """Nearest-neighbour upsampling to ``output_size``; ignores ``indices``."""

    def forward(self, x: Tensor, indices: Tensor | None, output_size: Sequence[int]) -> Tensor:
        return F.interpolate(x, size=list(output_size[-2:]), mode="nearest")


class BilinearUp2d(nn.Module):
    """Bilinear upsampling (``align_corners=False``) to ``output_size``; ignores ``indices``."""

    def forward(self, x: Tensor, indices: Tensor | None, output_size: Sequence[int]) -> Tensor:
        return F.interpolate(x, size=list(output_size[-2:]), mode="bilinear", align_corners=False)


def bilinear_kernel(kernel_size: int) -> Tensor:
    """2-D bilinear interpolation kernel (the FCN "deconvolution" initialiser).

    For ``kernel_size=4`` this is the outer product of ``[0.25, 0.75, 0.75, 0.25]`` with itself,
    which with stride 2 and padding 1 reproduces bilinear ``align_corners=False`` upsampling
    away from the border.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    taps = 1 - (torch.arange(kernel_size, dtype=torch.float32) - center).abs() / factor
    return taps[:, None] * taps[None, :]


class BilinearConvTranspose2d(nn.Module):
    """Learnt 2x upsampling: depthwise ``ConvTranspose2d(k=4, s=2, p=1)`` initialised to bilinear.

    Depthwise (``groups=channels``) keeps it at 16 weights per channel. The transposed conv
    yields exactly ``2h x 2w``; when the pre-pool size was odd (ceil-mode pooling) the last row or
    column has no source pixel, so it is cropped to ``output_size``.

    Args:
        channels: Number of input (= output) channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1, groups=channels, bias=False)
        with torch.no_grad():
            self.up.weight.copy_(bilinear_kernel(4).expand_as(self.up.weight))

    def forward(self, x: Tensor, indices: Tensor | None, output_size: Sequence[int]) -> Tensor:
        height, width = output_size[-2], output_size[-1]
        return self.up(x)[..., :height, :width]


def upsample_uses_indices(mode: str) -> bool:
    """Whether upsampling ``mode`` needs max-pool indices from the encoder."""
    return check_upsample_mode(mode) == "indices"


def check_upsample_mode(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`UPSAMPLE_MODES`, else raise :class:`SeglabError`."""
    if mode not in UPSAMPLE_MODES:
        raise SeglabError(
            f"Unknown upsample mode {mode!r}.{did_you_mean(str(mode), UPSAMPLE_MODES)} "
            f"Choose one of: {', '.join(UPSAMPLE_MODES)}."
        )
    return mode


def make_upsample(mode: str, channels: int, index_format: str = "int64") -> nn.Module:
    """Build the upsampling module for ``mode`` (see :data:`UPSAMPLE_MODES`).

    Args:
        mode: ``indices`` (max-unpooling), ``nearest``, ``bilinear`` or ``transposed``.
        channels: Channels of the tensor being upsampled (only ``transposed`` uses it).
        index_format: Index format of the encoder's pools (only ``indices`` uses it).

    Returns:
        A module called as ``up(x, indices, output_size)``.
    """
    mode = check_upsample_mode(mode)
    if mode == "indices":
        return MaxUnpool2d(index_format)
    if mode == "nearest":
        return NearestUp2d()
    if mode == "bilinear":
        return BilinearUp2d()
    return BilinearConvTranspose2d(channels)


def init_he(module: nn.Module) -> None:
    """He-initialise every ``Conv2d`` (normal, fan_out, ReLU gain) and reset norm layers.

    Conv biases become 0; BatchNorm/GroupNorm weights 1 and biases 0. Transposed convs are left
    alone because they carry their own (bilinear) initialisation.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
