"""SegNet's compact pooling indices: 2 bits per 2x2 window instead of an int64 flat index.

The SegNet paper (Sec. 3) notes that a 2x2 max-pool only needs to remember *which of the four*
window pixels won, i.e. 2 bits. Here that choice is the code ``dy * 2 + dx`` (0..3), stored

* one code per ``uint8`` (8x smaller than PyTorch's int64 flat indices), or
* packed four codes per byte along the width (``packed=True``, 32x smaller when the pooled
  width is a multiple of 4; each row is padded to one).

:func:`pool_with_codes` / :func:`unpool_from_codes` give results identical to
``nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True)`` followed by ``F.max_unpool2d``,
values, tie-breaking (first maximum in scan order), NaN propagation and gradients included.
They are written with plain tensor ops (strided views, comparisons, ``where``, reshapes), so they
export to ONNX, unlike ``max_unpool2d``, whose ONNX export has a long failure history.

The price is speed in eager mode: several elementwise passes instead of PyTorch's fused kernels.
On 2 CPU cores pool + unpool of a 64x360x480 map took ~2.2x as long (323 vs 152 ms); a whole
SegNet 360x480 forward 1-15 % longer (the convolutions dominate), which is why SegNet keeps int64
indices by default.

Example:
    >>> x = torch.tensor([[[[1., 2.], [4., 3.]]]])
    >>> pooled, codes = pool_with_codes(x)
    >>> pooled.item(), codes.item()          # the 4 sits at dy=1, dx=0
    (4.0, 2)
    >>> unpool_from_codes(pooled, codes, (2, 2)).tolist()
    [[[[0.0, 0.0], [4.0, 0.0]]]]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CodeMaxPool2d",
    "code_bytes",
    "pack_codes",
    "pool_with_codes",
    "unpack_codes",
    "unpool_from_codes",
]

#: Bit offsets of the four codes sharing one packed byte (first code in the lowest bits).
_SHIFTS = (0, 2, 4, 6)


def _wins(challenger: Tensor, incumbent: Tensor) -> Tensor:
    """Whether ``challenger`` (later in scan order) replaces ``incumbent`` as the running max.

    This is MaxPool2d's own update rule ``val > maxval || isnan(val)``: a tie keeps the earlier
    pixel, and the last NaN wins, so NaNs propagate at the same position.
    """
    return (challenger > incumbent) | torch.isnan(challenger)


def _shapes_symbolic() -> bool:
    """Whether we are being traced or exported, where sizes must not steer Python branches.

    In eager mode a size test is free and lets even-sized inputs skip a copy; while exporting it
    would bake the traced size's parity into the graph and break dynamic height/width.
    """
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


def pool_with_codes(x: Tensor) -> tuple[Tensor, Tensor]:
    """2x2, stride-2, ceil-mode max pooling that returns 2-bit window codes.

    Args:
        x: Features ``... x H x W`` (any float dtype, any leading dims).

    Returns:
        ``(pooled, codes)``, both ``... x ceil(H/2) x ceil(W/2)``; ``codes`` is ``uint8`` holding
        ``dy * 2 + dx`` of each window's maximum. Gradients flow to the winning pixel only, as
        with ``max_pool2d``.
    """
    if x.dim() == 4 and _shapes_symbolic():
        return _pool_with_codes_4d(x)
    height, width = x.shape[-2], x.shape[-1]
    rows, cols = (height + 1) // 2, (width + 1) // 2
    # -inf padding makes odd sizes even without ever winning: a window's top-left pixel is always
    # inside the image and is checked first, so a padded pixel can only tie, and ties keep it out.
    if _shapes_symbolic() or height % 2 or width % 2:
        x = F.pad(x, (0, 2 * cols - width, 0, 2 * rows - height), value=float("-inf"))
    # (..., 2h, 2w) -> (..., h, dy, w, dx): exact window views whose sizes stay simple symbols
    # under export (strided slicing of a padded size would need parity reasoning).
    windows = x.unflatten(-1, (cols, 2)).unflatten(-3, (rows, 2))
    a, b = windows[..., 0, :, 0], windows[..., 0, :, 1]
    c, d = windows[..., 1, :, 0], windows[..., 1, :, 1]
    # Pairwise decisions in scan order: within each row, then top row against bottom row.
    # `where` (not `maximum`, which splits tied gradients) sends the gradient to the winner only.
    right_top, right_bottom = _wins(b, a), _wins(d, c)
    top = torch.where(right_top, b, a)
    bottom = torch.where(right_bottom, d, c)
    lower = _wins(bottom, top)
    pooled = torch.where(lower, bottom, top)
    codes = torch.where(lower, right_bottom.to(torch.uint8) + 2, right_top.to(torch.uint8))
    return pooled, codes


def unpool_from_codes(y: Tensor, codes: Tensor, output_size: Sequence[int], packed: bool = False) -> Tensor:
    """Put each value of ``y`` at its window position recorded in ``codes``; zeros elsewhere.

    Args:
        y: Pooled (or decoded) features ``... x h x w``.
        codes: ``uint8`` codes from :func:`pool_with_codes` (``... x h x w``), or their packed
            form from :func:`pack_codes` when ``packed`` is true.
        output_size: Pre-pool ``(H, W)`` (trailing two entries used); ``H`` is ``2h`` or ``2h - 1``.
        packed: Whether ``codes`` holds four codes per byte.

    Returns:
        ``... x H x W``, equal to ``F.max_unpool2d`` with the matching flat indices; the backward
        pass picks each window's gradient at the recorded position, as ``max_unpool2d`` does.
    """
    if packed:
        codes = unpack_codes(codes, y.shape[-1])
    if y.dim() == 4 and _shapes_symbolic():
        return _unpool_from_codes_4d(y, codes, output_size)
    # One plane per window position, laid out (..., h, dy, dx, w) so that the comparison and the
    # `where` run along contiguous rows (an innermost dx axis of length 2 measured ~20 % slower);
    # a single transposing copy then interleaves the planes into (..., h, dy, w, dx) = (2h, 2w).
    layout = torch.arange(4, dtype=codes.dtype, device=codes.device).view(2, 2, 1)
    hit = codes[..., :, None, None, :] == layout
    planes = torch.where(hit, y[..., :, None, None, :], 0.0)
    out = planes.transpose(-1, -2).flatten(-4, -3).flatten(-2, -1)
    return out[..., : output_size[-2], : output_size[-1]]


# The exported graph: the same results from 4-D ops that runtimes run fast. The window views above
# go through 5-D and 6-D reshapes, which OpenVINO's CPU plugin mis-infers once NNCF has inserted int8
# FakeQuantize nodes (its Reshape shape inference failed at the unpooling), and their chains of
# float `where`s were a fifth of onnxruntime's SegNet-Basic time. Here one MaxPool gives the values,
# comparisons of the window's pixels on strided slices give the code (one uint8 select), and the
# unpooling is a nearest spread times a mask (docs/benchmarks.md has the profiles). NaNs are not propagated bitwise as in eager mode (MaxPool and
# the mask treat them differently); a trained network produces none. In eager mode the views are faster.


def _pool_with_codes_4d(x: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`pool_with_codes` for ``N x C x H x W`` (NaN-free), written for the exported graph."""
    height, width = x.shape[-2], x.shape[-1]
    rows, cols = (height + 1) // 2, (width + 1) // 2
    # MaxPool reads the unpadded input (ceil mode covers odd sizes): a quantizer calibrating the
    # pool's input must never see the -inf padding, which would give it an infinite range.
    pooled = F.max_pool2d(x, 2, 2, ceil_mode=True)
    x = F.pad(x, (0, 2 * cols - width, 0, 2 * rows - height), value=float("-inf"))
    # The codes compare the window's own pixels, never `pooled`: an int8 graph quantizes `pooled`
    # (the next convolution's input), and equality with a quantized value would move the switches.
    a, b, c, d = x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    right_top, right_bottom = b > a, d > c  # strict: a tie keeps the earlier pixel
    lower = torch.maximum(c, d) > torch.maximum(a, b)
    codes = torch.where(lower, right_bottom.to(torch.uint8) + 2, right_top.to(torch.uint8))
    return pooled, codes


def _unpool_from_codes_4d(y: Tensor, codes: Tensor, output_size: Sequence[int]) -> Tensor:
    """:func:`unpool_from_codes` for ``N x C x h x w`` (unpacked codes, NaN-free), for the exported
    graph: each value and its code spread over its 2x2 window, kept where the code names the pixel."""
    rows, cols = y.shape[-2], y.shape[-1]
    spread = F.interpolate(y, scale_factor=2.0, mode="nearest")
    spread_codes = F.interpolate(codes.to(y.dtype), scale_factor=2.0, mode="nearest")
    dy = torch.arange(2 * rows, device=y.device) % 2
    dx = torch.arange(2 * cols, device=y.device) % 2
    position = (dy[:, None] * 2 + dx[None, :]).to(y.dtype)  # each pixel's own code
    out = spread * (spread_codes == position).to(y.dtype)
    return out[..., : output_size[-2], : output_size[-1]]


def pack_codes(codes: Tensor) -> Tensor:
    """Pack ``uint8`` codes four per byte along the last dim (width ``w`` -> ``ceil(w/4)``).

    The first code of each group sits in the lowest two bits, so a single code (``w == 1``) packs
    to itself.
    """
    width = codes.shape[-1]
    codes = F.pad(codes, (0, (-width) % 4))
    # Strided slices keep every op on long rows; a trailing axis of 4 would vectorise poorly.
    packed = codes[..., 0::4]
    for k, shift in enumerate(_SHIFTS[1:], start=1):
        packed = packed | (codes[..., k::4] << shift)
    return packed


def unpack_codes(packed: Tensor, width: int) -> Tensor:
    """Inverse of :func:`pack_codes`; ``width`` is the unpacked last-dim size."""
    quads = torch.stack([(packed >> shift) & 3 for shift in _SHIFTS], dim=-1)
    return quads.flatten(-2)[..., :width]


def code_bytes(pooled_shape: Sequence[int], index_format: str) -> int:
    """Bytes needed to store the indices of one pooling output of ``pooled_shape``.

    Args:
        pooled_shape: Shape of the pooled tensor (``... x h x w``).
        index_format: ``int64`` (flat indices), ``uint8`` or ``packed``.
    """
    *lead, width = (int(s) for s in pooled_shape)
    count = 1
    for s in lead:
        count *= s
    if index_format == "int64":
        return count * width * 8
    if index_format == "uint8":
        return count * width
    if index_format == "packed":
        return count * -(-width // 4)
    raise ValueError(f"Unknown index format {index_format!r}.")


class CodeMaxPool2d(nn.Module):
    """SegNet pooling returning ``(pooled, codes)``; a drop-in for ``max_pool_2x2()``.

    Args:
        packed: Pack four codes per byte (32x smaller than int64 indices instead of 8x).
    """

    def __init__(self, packed: bool = False) -> None:
        super().__init__()
        self.packed = packed

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled, codes = pool_with_codes(x)
        return pooled, pack_codes(codes) if self.packed else codes

    def extra_repr(self) -> str:
        return f"kernel_size=2, stride=2, ceil_mode=True, codes={'packed' if self.packed else 'uint8'}"
