"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015, arXiv:1505.04597), padded and valid.

* ``unet_valid`` is the paper's network: unpadded 3x3 convs + ReLU (two per level), 2x2 max
  pooling, 2x2 up-convolutions halving the channels, crop-and-concat of the encoder map, 1x1
  classifier; 572x572 in -> 388x388 out. Only some input sizes work, see
  :func:`valid_input_size`; predict whole images with :func:`seglab.ops.tiling.predict_tiled`.
* ``unet`` is the common padded variant (3x3 convs with padding 1, BN by default) returning
  logits at the input size for **any** input size. Odd sizes are handled exactly, without
  interpolation: pooling rounds up (``ceil_mode``), and each up-convolution output (``2 *
  ceil(h / 2)``) is cropped at the bottom/right to its skip's size. That crop is aligned, since
  up-convolved row ``2i`` and ``2i + 1`` both come from pooled row ``i`` = rows ``2i, 2i + 1``.

Size rule of ``unet_valid`` with ``d = depth`` poolings: every level loses 4 pixels to its two
convs and each conv output before a pooling must be even. With ``b`` the bottleneck size, the
valid inputs are ``s = 2**d * (b + 8) - 4`` and give ``2**d * (b - 4) + 4`` outputs, for
``b >= 4`` (``b >= 3`` when ``d = 1``; smaller ``b`` leave no pixel after an up-convolution).
For ``d = 4``: 188, 204, ..., 572 (b = 28) -> 388, each step of 16 adding 16 output pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from seglab.core.errors import SeglabError
from seglab.models.layers.blocks import conv_norm_act, init_he
from seglab.ops.tiling import center_crop

__all__ = [
    "UNet",
    "UNetDecoder",
    "UNetEncoder",
    "ValidUNet",
    "nearest_valid_sizes",
    "output_size",
    "unet",
    "unet_valid",
    "valid_input_size",
]


def _trace_valid(size: int, depth: int) -> int | None:
    """Output size of ``unet_valid`` for one input dimension, or ``None`` if it is not valid."""
    for _ in range(depth):
        size -= 4  # two unpadded 3x3 convs
        if size < 2 or size % 2:  # 2x2 pooling needs an even size, and at least one output pixel
            return None
        size //= 2
    size -= 4  # bottleneck convs
    if size < 1:
        return None
    for _ in range(depth):
        size = 2 * size - 4  # 2x2 up-convolution, then two unpadded 3x3 convs
        if size < 1:
            return None
    return size


def valid_input_size(size: int | Sequence[int], depth: int = 4) -> bool:
    """Whether ``unet_valid`` with ``depth`` poolings accepts ``size`` (an int or an ``(h, w)``)."""
    sizes = [size] if isinstance(size, int) else list(size)
    return all(_trace_valid(int(s), depth) is not None for s in sizes)


def nearest_valid_sizes(size: int, depth: int = 4) -> tuple[int | None, int]:
    """The largest valid input size ``<= size`` (``None`` if none) and the smallest ``>= size``."""
    below = next((s for s in range(size, 0, -1) if _trace_valid(s, depth) is not None), None)
    above = next(s for s in range(max(size, 1), size + 2**depth * 16) if _trace_valid(s, depth) is not None)
    return below, above


def output_size(input_size: Sequence[int], depth: int = 4) -> tuple[int, int]:
    """Output ``(h, w)`` of ``unet_valid`` for ``input_size`` ``(h, w)``.

    Raises:
        SeglabError: A dimension is not valid; the message names the nearest valid sizes.
    """
    height, width = (int(s) for s in input_size[-2:])
    out = (_trace_valid(height, depth), _trace_valid(width, depth))
    if out[0] is not None and out[1] is not None:
        return out[0], out[1]
    problems = []
    for name, value, result in (("height", height, out[0]), ("width", width, out[1])):
        if result is None:
            below, above = nearest_valid_sizes(value, depth)
            nearest = f"nearest valid {below} or {above}" if below else f"no valid size below, smallest valid {above}"
            problems.append(f"{name} {value}: {nearest}")
    raise SeglabError(
        f"unet_valid (depth={depth}) cannot take a {height}x{width} input: a 2x2 max-pool would see an odd "
        f"size, so the crops would be non-integer ({'; '.join(problems)}). Valid sizes are "
        f"{2**depth}*(b+8)-4 for bottleneck size b >= {4 if depth > 1 else 3}; or use seglab.ops.tiling.predict_tiled."
    )


def _double_conv(in_channels: int, out_channels: int, padding: int, batch_norm: bool) -> nn.Sequential:
    norm = nn.BatchNorm2d if batch_norm else None
    return nn.Sequential(conv_norm_act(in_channels, out_channels, 3, padding=padding, norm_layer=norm),
                         conv_norm_act(out_channels, out_channels, 3, padding=padding, norm_layer=norm))


class UNetEncoder(nn.Module):
    """Contracting path: ``depth + 1`` double convs of ``base * 2**i`` channels with 2x2 pooling between.

    Args:
        in_channels: Image channels.
        depth: Number of poolings.
        base_channels: Channels of the first level.
        padding: 1 (``unet``) or 0 (``unet_valid``).
        batch_norm: BN after every conv.
        dropout: Dropout on the bottleneck output ("the end of the contracting path").
    """

    def __init__(self, in_channels: int, depth: int, base_channels: int, padding: int, batch_norm: bool,
                 dropout: float) -> None:
        super().__init__()
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.levels = nn.ModuleList()
        for width in widths:
            self.levels.append(_double_conv(in_channels, width, padding, batch_norm))
            in_channels = width
        # Rounding up keeps every pixel of an odd-sized map; valid inputs are always even here.
        self.pool = nn.MaxPool2d(2, ceil_mode=padding > 0)
        self.dropout = nn.Dropout(dropout)
        self.widths = widths

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The bottleneck features and the pre-pool map of each level, shallowest first."""
        skips = []
        for level in self.levels[:-1]:
            x = level(x)
            skips.append(x)
            x = self.pool(x)
        return self.dropout(self.levels[-1](x)), skips


class UNetDecoder(nn.Module):
    """Expanding path: per level a 2x2 up-convolution (halving channels), skip merge, double conv.

    Args:
        widths: Encoder widths, shallowest first.
        padding: 1 (``unet``) or 0 (``unet_valid``).
        batch_norm: BN after every conv.
    """

    def __init__(self, widths: Sequence[int], padding: int, batch_norm: bool) -> None:
        super().__init__()
        pairs = list(zip(widths[1:], widths[:-1]))[::-1]  # (deeper, shallower), deepest first
        self.ups = nn.ModuleList(nn.ConvTranspose2d(deep, shallow, 2, stride=2) for deep, shallow in pairs)
        self.levels = nn.ModuleList(_double_conv(2 * shallow, shallow, padding, batch_norm) for _, shallow in pairs)
        self.center_crop_skips = padding == 0

    def _merge(self, up: Tensor, skip: Tensor) -> Tensor:
        if self.center_crop_skips:
            # Valid convs: the skip is larger; keep its centre (the paper's crop-and-copy).
            skip = center_crop(skip, up.shape[-2:])
        else:
            # Padded convs: ceil-mode pooling made ``up`` at most one pixel larger; drop it.
            up = up[..., : skip.shape[-2], : skip.shape[-1]]
        return torch.cat([skip, up], dim=1)

    def forward(self, x: Tensor, skips: Sequence[Tensor]) -> Tensor:
        """Decode the bottleneck ``x`` with the encoder ``skips`` (shallowest first)."""
        for up, level, skip in zip(self.ups, self.levels, reversed(skips)):
            x = level(self._merge(up(x), skip))
        return x


class UNet(nn.Module):
    """``encoder`` -> ``decoder`` -> 1x1 ``classifier``; see :func:`unet` and :func:`unet_valid`."""

    def __init__(self, encoder: UNetEncoder, decoder: UNetDecoder, classifier: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.classifier = classifier
        self.depth = len(decoder.levels)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``N x K x h x w``: at input size for ``unet``, :meth:`ValidUNet.output_size` otherwise."""
        return self.classifier(self.decoder(*self.encoder(x)))


class ValidUNet(UNet):
    """The unpadded U-Net; checks the input size and exposes the size rule as methods."""

    def valid_input_size(self, size: int | Sequence[int]) -> bool:
        """See :func:`valid_input_size`."""
        return valid_input_size(size, self.depth)

    def nearest_valid_sizes(self, size: int) -> tuple[int | None, int]:
        """See :func:`nearest_valid_sizes`."""
        return nearest_valid_sizes(size, self.depth)

    def output_size(self, input_size: Sequence[int]) -> tuple[int, int]:
        """See :func:`output_size`."""
        return output_size(input_size, self.depth)

    def forward(self, x: Tensor) -> Tensor:
        self.output_size(x.shape[-2:])  # a clear SeglabError instead of a shape error deep inside
        return super().forward(x)


def _build(cls: type[UNet], num_classes: int, in_channels: int, depth: int, base_channels: int, padding: int,
           batch_norm: bool, dropout: float) -> UNet:
    if depth < 1 or base_channels < 1:
        raise SeglabError(f"U-Net needs depth >= 1 and base_channels >= 1, got {depth} and {base_channels}.")
    encoder = UNetEncoder(in_channels, depth, base_channels, padding, batch_norm, dropout)
    decoder = UNetDecoder(encoder.widths, padding, batch_norm)
    model = cls(encoder, decoder, nn.Conv2d(base_channels, num_classes, 1))
    init_he(model)
    return model


def unet(num_classes: int, *, in_channels: int = 3, depth: int = 4, base_channels: int = 64,
         batch_norm: bool = True, dropout: float = 0.0) -> nn.Module:
    """Padded U-Net: logits at the input size for any input size (see the module docstring).

    Parameters for K=2 with the defaults: 31,037,698, the valid network's 31,031,810 plus 5,888:
    each of the 18 convs before the classifier trades its bias (1 per channel) for BN (2 per channel).

    Args:
        num_classes: Number of classes K.
        in_channels: Image channels.
        depth: Number of poolings (4 in the paper).
        base_channels: Channels of the first level, doubled per level (64 in the paper).
        batch_norm: BN after every 3x3 conv (the paper predates BN; it makes training robust).
        dropout: Dropout on the bottleneck features.
    """
    return _build(UNet, num_classes, in_channels, depth, base_channels, 1, batch_norm, dropout)


def unet_valid(num_classes: int, *, in_channels: int = 3, depth: int = 4, base_channels: int = 64,
               batch_norm: bool = False, dropout: float = 0.5) -> nn.Module:
    """The original U-Net with unpadded convs: 572x572 -> 388x388 at the defaults.

    Parameters for K=2, 3 input channels: 31,031,810 (31,030,658 for the paper's grayscale input),
    the ~31.0 M usually quoted. The output is smaller than the input (see :func:`output_size`),
    centred on it, so the model only fits a pipeline that crops targets or tiles
    (:func:`seglab.ops.tiling.predict_tiled` with ``valid_model=model.output_size``).

    Args:
        num_classes: Number of classes K.
        in_channels: Image channels (the paper's EM images are grayscale; the pipeline feeds RGB).
        depth: Number of poolings.
        base_channels: Channels of the first level.
        batch_norm: BN after every 3x3 conv (off in the paper).
        dropout: Dropout at the end of the contracting path (the paper has one but gives no rate; 0.5).
    """
    return _build(ValidUNet, num_classes, in_channels, depth, base_channels, 0, batch_norm, dropout)
