"""Overlap-tile inference: predict an image of any size with a model run on fixed-size tiles.

Two strategies, one function (:func:`predict_tiled`):

* **Padded models** (output size = input size): the image is mirror-padded so that overlapping
  tiles of ``tile`` pixels, ``overlap`` apart at their edges, cover it with half an overlap of
  extra context at the image border. Tile logits are blended with a window (Gaussian, sigma =
  tile / 8, as in nnU-Net, or flat "mean") normalised by the summed weights, so predictions near a
  tile's edge, which lack context, count less than those near its centre.
* **Valid models** (output smaller than input, e.g. ``unet_valid``): the overlap-tile strategy of
  U-Net (Ronneberger et al., MICCAI 2015, Fig. 2). The *output* grid is cut into abutting tiles
  of the model's output size; each is computed from the input tile around it, whose missing
  context at the image border comes from mirroring. No blending is needed: every output pixel
  is computed once, from its full receptive field. The stitched map equals one pass over the
  whole mirror-padded image when the output tile size is a multiple of the model's total
  pooling factor (e.g. ``unet_valid`` with depth <= 2); otherwise tiles see different pooling
  phases, which is still seamless in the paper's sense but not bit-identical to a whole pass.

The function is pure: it takes any ``forward`` callable and does not switch the model's mode or
gradient tracking; call it under ``torch.inference_mode()`` with the model in eval mode.

Example:
    >>> import torch
    >>> conv = torch.nn.Conv2d(3, 4, 1)
    >>> predict_tiled(conv, torch.rand(1, 3, 100, 77), 4, tile=(32, 32), overlap=8).shape
    torch.Size([1, 4, 100, 77])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from seglab.core.errors import SeglabError

__all__ = ["BLEND_MODES", "PAD_MODES", "blend_window", "center_crop", "mirror_pad", "predict_tiled"]

#: Window shapes for blending overlapping tiles of padded models.
BLEND_MODES: tuple[str, ...] = ("gaussian", "mean")
#: ``torch.nn.functional.pad`` modes for extending the image beyond its border.
PAD_MODES: tuple[str, ...] = ("reflect", "replicate", "constant")

Pads = tuple[int, int, int, int]  # (top, bottom, left, right)


def center_crop(x: Tensor, size: Sequence[int]) -> Tensor:
    """The central ``size`` ``(h, w)`` of ``x``'s last two dimensions (U-Net's crop-and-copy).

    Raises:
        SeglabError: ``size`` is larger than ``x`` or the margin is odd (no single centre).
    """
    height, width = (int(s) for s in size)
    margin_h, margin_w = x.shape[-2] - height, x.shape[-1] - width
    if margin_h < 0 or margin_w < 0 or margin_h % 2 or margin_w % 2:
        raise SeglabError(f"Cannot centre-crop a {x.shape[-2]}x{x.shape[-1]} map to {height}x{width}: the target "
                          "must be smaller by an even number of pixels in each dimension.")
    return x[..., margin_h // 2 : margin_h // 2 + height, margin_w // 2 : margin_w // 2 + width]


def _reflect_indices(start: int, stop: int, size: int, device: torch.device) -> Tensor:
    """Source index of each coordinate in ``[start, stop)`` under endless mirroring of ``size`` pixels."""
    coords = torch.arange(start, stop, device=device)
    if size == 1:
        return torch.zeros_like(coords)
    period = 2 * (size - 1)  # reflect mode does not repeat the edge pixel: 0 1 2 1 0 1 2 ...
    folded = coords.remainder(period)
    return torch.where(folded < size, folded, period - folded)


def mirror_pad(image: Tensor, pads: Pads, mode: str = "reflect") -> Tensor:
    """Pad ``N x C x H x W`` by ``(top, bottom, left, right)`` pixels.

    ``"reflect"`` equals ``F.pad(..., mode="reflect")`` where that works, and also allows pads of
    any size (``F.pad`` stops at ``size - 1``) by mirroring endlessly, which a tile larger than the
    image needs. The extension is canonical: the same pixel gets the same value whatever the pads.
    """
    top, bottom, left, right = pads
    if mode != "reflect":
        return F.pad(image, (left, right, top, bottom), mode=mode)
    height, width = image.shape[-2:]
    rows = _reflect_indices(-top, height + bottom, height, image.device)
    cols = _reflect_indices(-left, width + right, width, image.device)
    return image.index_select(-2, rows).index_select(-1, cols)


def blend_window(size: Sequence[int], mode: str = "gaussian", device: torch.device | None = None) -> Tensor:
    """``h x w`` blending weights: a separable Gaussian (sigma = size / 8, peak 1) or all ones."""
    if mode not in BLEND_MODES:
        raise SeglabError(f"Unknown blend {mode!r}; choose one of {', '.join(BLEND_MODES)}.")
    if mode == "mean":
        return torch.ones(*size, device=device)
    axes = []
    for n in size:
        offsets = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2
        axes.append(torch.exp(-0.5 * (offsets / max(n / 8, 1e-3)) ** 2))
    # Edge weights are ~exp(-8); the floor keeps the normalisation well defined in float32.
    return (axes[0][:, None] * axes[1][None, :]).clamp_min(1e-6)


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile origins along one axis of a canvas of ``length`` (already padded to fit exactly)."""
    return list(range(0, length - tile + 1, stride))


def _run_batched(forward: Callable[[Tensor], Tensor], canvas: Tensor, origins: list[tuple[int, int]],
                 tile: tuple[int, int], batch_size: int) -> Iterator[tuple[list[tuple[int, int]], Tensor]]:
    """Yield ``(origins, logits)`` for consecutive batches of input tiles cut from ``canvas``."""
    for i in range(0, len(origins), batch_size):
        chunk = origins[i : i + batch_size]
        tiles = torch.cat([canvas[..., y : y + tile[0], x : x + tile[1]] for y, x in chunk])
        yield chunk, forward(tiles)


def _check_logits(logits: Tensor, count: int, num_classes: int, size: tuple[int, int]) -> None:
    expected = (count, num_classes, *size)
    if tuple(logits.shape) != expected:
        raise SeglabError(f"forward returned logits of shape {tuple(logits.shape)} for a batch of tiles; expected "
                          f"{expected}. Check num_classes, and pass valid_model for models with smaller outputs.")


def _predict_padded(forward: Callable[[Tensor], Tensor], image: Tensor, num_classes: int, tile: tuple[int, int],
                    overlap: int, blend: str, pad_mode: str, batch_size: int) -> Tensor:
    height, width = image.shape[-2:]
    margin = overlap // 2  # border context, so image-border pixels are not at a tile's edge
    pads = []
    for length, size in ((height, tile[0]), (width, tile[1])):
        stride = size - overlap
        count = max(1, math.ceil((length + 2 * margin - size) / stride) + 1)
        extra = (count - 1) * stride + size - length - 2 * margin  # leftover, to the bottom/right
        pads += [margin, margin + extra]
    canvas = mirror_pad(image, (pads[0], pads[1], pads[2], pads[3]), pad_mode)
    origins = [(y, x) for y in _starts(canvas.shape[-2], tile[0], tile[0] - overlap)
               for x in _starts(canvas.shape[-1], tile[1], tile[1] - overlap)]
    window = blend_window(tile, blend, image.device)
    total = torch.zeros(1, num_classes, *canvas.shape[-2:], device=image.device)
    weight = torch.zeros(1, 1, *canvas.shape[-2:], device=image.device)
    for chunk, logits in _run_batched(forward, canvas, origins, tile, batch_size):
        _check_logits(logits, len(chunk), num_classes, tile)
        for (y, x), tile_logits in zip(chunk, logits.float()):
            total[0, :, y : y + tile[0], x : x + tile[1]] += tile_logits * window
            weight[0, :, y : y + tile[0], x : x + tile[1]] += window
    return (total / weight)[..., pads[0] : pads[0] + height, pads[2] : pads[2] + width]


def _predict_valid(forward: Callable[[Tensor], Tensor], image: Tensor, num_classes: int, tile: tuple[int, int],
                   valid_model: Callable[[tuple[int, int]], tuple[int, int]], pad_mode: str, batch_size: int) -> Tensor:
    height, width = image.shape[-2:]
    out_tile = tuple(int(s) for s in valid_model(tile))
    context = [tile[i] - out_tile[i] for i in range(2)]
    if any(c < 0 or c % 2 for c in context):
        raise SeglabError(f"valid_model maps {tile} to {out_tile}; the lost border must be even and non-negative.")
    counts = [math.ceil(length / out) for length, out in ((height, out_tile[0]), (width, out_tile[1]))]
    # Context of context/2 on every side, plus enough at the bottom/right to fill the last tile.
    pads = (context[0] // 2, context[0] // 2 + counts[0] * out_tile[0] - height,
            context[1] // 2, context[1] // 2 + counts[1] * out_tile[1] - width)
    canvas = mirror_pad(image, pads, pad_mode)
    origins = [(i * out_tile[0], j * out_tile[1]) for i in range(counts[0]) for j in range(counts[1])]
    output = torch.zeros(1, num_classes, counts[0] * out_tile[0], counts[1] * out_tile[1], device=image.device)
    for chunk, logits in _run_batched(forward, canvas, origins, tile, batch_size):
        _check_logits(logits, len(chunk), num_classes, out_tile)
        # An input tile at canvas offset (y, x) predicts the output pixels at image offset (y, x).
        for (y, x), tile_logits in zip(chunk, logits.float()):
            output[0, :, y : y + out_tile[0], x : x + out_tile[1]] = tile_logits
    return output[..., :height, :width]


def predict_tiled(
    forward: Callable[[Tensor], Tensor],
    image: Tensor,
    num_classes: int,
    tile: Sequence[int],
    overlap: int = 0,
    blend: str = "gaussian",
    pad_mode: str = "reflect",
    valid_model: Callable[[tuple[int, int]], tuple[int, int]] | None = None,
    batch_size: int = 4,
) -> Tensor:
    """Logits ``1 x K x H x W`` for a ``1 x C x H x W`` image, computed tile by tile.

    Args:
        forward: Maps ``B x C x th x tw`` tiles to ``B x K x oh x ow`` logits (a model in eval mode).
        image: The (normalised) image.
        num_classes: K.
        tile: Input tile ``(th, tw)``; it may exceed the image (the image is mirror-padded).
        overlap: Pixels shared by neighbouring tiles of padded models; ``< min(tile)``. Ignored for
            valid models, whose output tiles abut by construction.
        blend: ``"gaussian"`` or ``"mean"`` weighting of overlapping padded-model tiles.
        pad_mode: ``"reflect"`` (the paper's mirroring), ``"replicate"`` or ``"constant"`` (zeros).
        valid_model: For models with smaller outputs, the map ``(th, tw) -> (oh, ow)``, e.g.
            ``model.output_size`` of ``unet_valid``; ``None`` for output size = input size.
        batch_size: Tiles per ``forward`` call.

    Returns:
        Float32 logits at the image's size.
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise SeglabError(f"predict_tiled expects a 1 x C x H x W image, got shape {tuple(image.shape)}.")
    if len(tile) != 2 or min(tile) < 1:
        raise SeglabError(f"tile must be two positive integers (h, w), got {tile!r}.")
    if pad_mode not in PAD_MODES:
        raise SeglabError(f"Unknown pad_mode {pad_mode!r}; choose one of {', '.join(PAD_MODES)}.")
    if batch_size < 1:
        raise SeglabError(f"batch_size must be >= 1, got {batch_size}.")
    tile_hw = (int(tile[0]), int(tile[1]))
    if valid_model is not None:
        return _predict_valid(forward, image, num_classes, tile_hw, valid_model, pad_mode, batch_size)
    if not 0 <= overlap < min(tile_hw):
        raise SeglabError(f"overlap must be in [0, {min(tile_hw)}) for tile {tile_hw}, got {overlap}.")
    blend_window((1, 1), blend)  # validate blend before running any tile
    return _predict_padded(forward, image, num_classes, tile_hw, overlap, blend, pad_mode, batch_size)
