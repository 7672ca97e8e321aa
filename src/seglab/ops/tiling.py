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

Memory: tiles are cut from the image as they are needed (no padded copy of the whole image),
run a few at a time (:data:`TILE_BATCH_PIXELS`), and their logits are accumulated in one band of
rows at a time; :func:`predict_tiled` copies each finished band into the ``K x H x W`` output,
:func:`predict_tiled_labels` keeps only its class ids, so a 4000x3000 image with 11 classes never
holds the 528 MB of float logits (``seglab predict --tile`` uses the latter).

The functions are pure: they take any ``forward`` callable and do not switch the model's mode or
gradient tracking; call them under ``torch.inference_mode()`` with the model in eval mode.

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

__all__ = ["BLEND_MODES", "PAD_MODES", "TILE_BATCH_PIXELS", "blend_window", "center_crop", "mirror_pad",
           "predict_tiled", "predict_tiled_labels"]

#: Window shapes for blending overlapping tiles of padded models.
BLEND_MODES: tuple[str, ...] = ("gaussian", "mean")
#: ``torch.nn.functional.pad`` modes for extending the image beyond its border.
PAD_MODES: tuple[str, ...] = ("reflect", "replicate", "constant")

Pads = tuple[int, int, int, int]  # (top, bottom, left, right)

#: Input pixels per ``forward`` call when ``batch_size`` is not given: 4 tiles of 256x256, 1 of 512x512.
#: Activations grow with the batch (SegNet-Basic, 2 CPU cores: 271 MiB for one 512x512 tile, 1041 MiB
#: for four), while batching tiles gained <10 % in speed on CPU; for large images memory is the point.
TILE_BATCH_PIXELS: int = 512 * 512


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


def _cut(image: Tensor, top: int, left: int, size: tuple[int, int], pad_mode: str) -> Tensor:
    """The ``size`` window at image coordinates ``(top, left)`` of the image extended by ``pad_mode``.

    Equals the same window of ``mirror_pad(image, pads, pad_mode)`` (offset by the pads), for any
    pads, without building that padded copy of the whole image: only the tile is materialised.
    Windows inside the image are returned as views.
    """
    height, width = image.shape[-2:]
    bottom, right = top + size[0], left + size[1]
    if top >= 0 and left >= 0 and bottom <= height and right <= width:
        return image[..., top:bottom, left:right]
    if pad_mode == "constant":
        y0, x0 = min(max(top, 0), height), min(max(left, 0), width)
        y1, x1 = max(min(bottom, height), y0), max(min(right, width), x0)
        return F.pad(image[..., y0:y1, x0:x1], (x0 - left, right - x1, y0 - top, bottom - y1))
    axes = []
    for start, stop, length in ((top, bottom, height), (left, right, width)):
        if pad_mode == "reflect":
            axes.append(_reflect_indices(start, stop, length, image.device))
        else:  # replicate
            axes.append(torch.arange(start, stop, device=image.device).clamp_(0, length - 1))
    rows, cols = axes
    r0, c0 = int(rows.min()), int(cols.min())
    # Gather from the smallest slice of the image that holds every source pixel of the tile.
    source = image[..., r0 : int(rows.max()) + 1, c0 : int(cols.max()) + 1]
    return source.index_select(-2, rows - r0).index_select(-1, cols - c0)


def _run_batched(forward: Callable[[Tensor], Tensor], image: Tensor, origins: list[tuple[int, int]],
                 tile: tuple[int, int], batch_size: int, pad_mode: str
                 ) -> Iterator[tuple[list[tuple[int, int]], Tensor]]:
    """Yield ``(origins, logits)`` for consecutive batches of input tiles; ``origins`` are image
    coordinates of the tiles' top-left pixels (negative or past the edge in the padding)."""
    for i in range(0, len(origins), batch_size):
        chunk = origins[i : i + batch_size]
        tiles = torch.cat([_cut(image, y, x, tile, pad_mode) for y, x in chunk])
        yield chunk, forward(tiles)


def _clip(origin: int, size: int, length: int) -> tuple[slice, slice]:
    """The part of ``[origin, origin + size)`` inside ``[0, length)``: as an image slice, and as
    a slice of the tile."""
    start, stop = max(origin, 0), min(origin + size, length)
    return slice(start, stop), slice(start - origin, stop - origin)


def _check_logits(logits: Tensor, count: int, num_classes: int, size: tuple[int, int]) -> None:
    expected = (count, num_classes, *size)
    if tuple(logits.shape) != expected:
        raise SeglabError(f"forward returned logits of shape {tuple(logits.shape)} for a batch of tiles; expected "
                          f"{expected}. Check num_classes, and pass valid_model for models with smaller outputs.")


Band = tuple[int, Tensor]  # (first image row, 1 x K x rows x W finished logits)


def _padded_bands(forward: Callable[[Tensor], Tensor], image: Tensor, num_classes: int, tile: tuple[int, int],
                  overlap: int, blend: str, pad_mode: str, batch_size: int) -> Iterator[Band]:
    """Blended logits of a padded model, yielded top to bottom in bands of finished rows.

    Tiles run row by row; once a row of tiles is done, the image rows above the next row of
    tiles can receive nothing more, so they are normalised and yielded, and only the rows the
    next tiles overlap are carried on. Memory: the model's activations for one batch of tiles
    plus one band (at most ``tile[0]`` rows) of summed logits and weights; tiles are cut from the
    image as needed instead of from a padded copy of the whole image. Every pixel sums the same
    products in the same order as one whole-canvas accumulation would, so the values are the same.
    """
    height, width = image.shape[-2:]
    margin = overlap // 2  # border context, so image-border pixels are not at a tile's edge
    starts = []
    for length, size in ((height, tile[0]), (width, tile[1])):
        stride = size - overlap
        count = max(1, math.ceil((length + 2 * margin - size) / stride) + 1)
        extra = (count - 1) * stride + size - length - 2 * margin  # leftover, to the bottom/right
        # Origins on the mirror-padded canvas (margin on top/left, margin + extra at bottom/right),
        # shifted to image coordinates.
        starts.append([s - margin for s in _starts(length + 2 * margin + extra, size, stride)])
    row_starts = starts[0]
    origins = [(y, x) for y in row_starts for x in starts[1]]
    window = blend_window(tile, blend, image.device)
    # One band buffer, reused: no tile row reaches more than tile[0] rows below the first unfinished row.
    total = torch.zeros(1, num_classes, min(tile[0], height), width, device=image.device)
    weight = torch.zeros(1, 1, min(tile[0], height), width, device=image.device)
    done, rows, row = 0, 0, -1  # image rows [0, done) are yielded; the band holds rows [done, done + rows)
    for chunk, logits in _run_batched(forward, image, origins, tile, batch_size, pad_mode):
        _check_logits(logits, len(chunk), num_classes, tile)
        for (y, x), tile_logits in zip(chunk, logits.float()):
            if row < 0 or y != row_starts[row]:  # the first tile of the next row of tiles
                finished = 0
                if row >= 0:
                    finished = max(min(y, height) - done, 0)  # rows above this tile row are final
                    yield done, total[..., :finished, :].div_(weight[..., :finished, :])
                    done += finished
                row += 1
                carried, rows = rows - finished, min(y + tile[0], height) - done
                for buffer in (total, weight):  # carry the unfinished rows to the top, zero the rest
                    if carried and finished:
                        buffer[..., :carried, :] = buffer[..., finished : finished + carried, :].clone()
                    buffer[..., carried:rows, :] = 0
            (band_rows, tile_rows), (cols, tile_cols) = _clip(y - done, tile[0], rows), _clip(x, tile[1], width)
            part = window[tile_rows, tile_cols]
            total[0, :, band_rows, cols] += tile_logits[:, tile_rows, tile_cols] * part
            weight[0, :, band_rows, cols] += part
        logits = tile_logits = None  # free this batch's logits before the next forward allocates its own
    yield done, total[..., :rows, :].div_(weight[..., :rows, :])


def _valid_bands(forward: Callable[[Tensor], Tensor], image: Tensor, num_classes: int, tile: tuple[int, int],
                 valid_model: Callable[[tuple[int, int]], tuple[int, int]], pad_mode: str,
                 batch_size: int) -> Iterator[Band]:
    """Logits of a valid model, yielded top to bottom one row of output tiles at a time."""
    height, width = image.shape[-2:]
    out_tile = tuple(int(s) for s in valid_model(tile))
    context = [tile[i] - out_tile[i] for i in range(2)]
    if any(c < 0 or c % 2 for c in context):
        raise SeglabError(f"valid_model maps {tile} to {out_tile}; the lost border must be even and non-negative.")
    counts = [math.ceil(length / out) for length, out in ((height, out_tile[0]), (width, out_tile[1]))]
    # Output tile (i, j) covers image pixels from (i * oh, j * ow); its input tile starts context/2
    # earlier (mirrored context at the image border, and past the bottom/right to fill the last tile).
    origins = [(i * out_tile[0] - context[0] // 2, j * out_tile[1] - context[1] // 2)
               for i in range(counts[0]) for j in range(counts[1])]
    band, top = None, -1
    for chunk, logits in _run_batched(forward, image, origins, tile, batch_size, pad_mode):
        _check_logits(logits, len(chunk), num_classes, out_tile)
        # An input tile at image offset (y, x) - context/2 predicts the output pixels at (y, x).
        for (y, x), tile_logits in zip(chunk, logits.float()):
            y, x = y + context[0] // 2, x + context[1] // 2
            if y != top:
                if band is not None:
                    yield top, band
                top = y
                band = torch.zeros(1, num_classes, min(out_tile[0], height - y), width, device=image.device)
            (_, tile_rows), (cols, tile_cols) = _clip(0, out_tile[0], band.shape[-2]), _clip(x, out_tile[1], width)
            band[0, :, :, cols] = tile_logits[:, tile_rows, tile_cols]
        logits = tile_logits = None
    yield top, band


def predict_tiled(
    forward: Callable[[Tensor], Tensor],
    image: Tensor,
    num_classes: int,
    tile: Sequence[int],
    overlap: int = 0,
    blend: str = "gaussian",
    pad_mode: str = "reflect",
    valid_model: Callable[[tuple[int, int]], tuple[int, int]] | None = None,
    batch_size: int | None = None,
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
        batch_size: Tiles per ``forward`` call; ``None`` for as many as fit in
            :data:`TILE_BATCH_PIXELS` input pixels (at least 1, at most 4).

    Returns:
        Float32 logits at the image's size.
    """
    output = None
    for top, band in _bands(forward, image, num_classes, tile, overlap, blend, pad_mode, valid_model, batch_size):
        if output is None:
            output = band.new_empty(1, num_classes, *image.shape[-2:])
        output[..., top : top + band.shape[-2], :] = band
    return output


def predict_tiled_labels(
    forward: Callable[[Tensor], Tensor],
    image: Tensor,
    num_classes: int,
    tile: Sequence[int],
    overlap: int = 0,
    blend: str = "gaussian",
    pad_mode: str = "reflect",
    valid_model: Callable[[tuple[int, int]], tuple[int, int]] | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """Class ids ``1 x H x W`` (int64) of :func:`predict_tiled`'s logits, without holding them all.

    The same labels as ``predict_tiled(...)[0].argmax(0)`` (``> 0`` for one-channel binary
    logits), computed band by band: only one band of logits (at most a tile's height of rows) is
    held at a time instead of ``K x H x W`` float32 logits (11 classes at 4000x3000: 528 MB).
    Arguments as for :func:`predict_tiled`.
    """
    labels = None
    for top, band in _bands(forward, image, num_classes, tile, overlap, blend, pad_mode, valid_model, batch_size):
        if labels is None:
            labels = torch.empty(1, *image.shape[-2:], dtype=torch.long, device=band.device)
        labels[:, top : top + band.shape[-2], :] = (band[:, 0] > 0).long() if num_classes == 1 else band.argmax(1)
    return labels


def _bands(forward: Callable[[Tensor], Tensor], image: Tensor, num_classes: int, tile: Sequence[int], overlap: int,
           blend: str, pad_mode: str, valid_model: Callable[[tuple[int, int]], tuple[int, int]] | None,
           batch_size: int | None) -> Iterator[Band]:
    """Check the arguments, then the finished bands of logits, top to bottom."""
    if image.dim() != 4 or image.shape[0] != 1:
        raise SeglabError(f"predict_tiled expects a 1 x C x H x W image, got shape {tuple(image.shape)}.")
    if len(tile) != 2 or min(tile) < 1:
        raise SeglabError(f"tile must be two positive integers (h, w), got {tile!r}.")
    if pad_mode not in PAD_MODES:
        raise SeglabError(f"Unknown pad_mode {pad_mode!r}; choose one of {', '.join(PAD_MODES)}.")
    tile_hw = (int(tile[0]), int(tile[1]))
    if batch_size is None:
        batch_size = max(1, min(4, TILE_BATCH_PIXELS // (tile_hw[0] * tile_hw[1])))
    if batch_size < 1:
        raise SeglabError(f"batch_size must be >= 1, got {batch_size}.")
    if valid_model is not None:
        return _valid_bands(forward, image, num_classes, tile_hw, valid_model, pad_mode, batch_size)
    if not 0 <= overlap < min(tile_hw):
        raise SeglabError(f"overlap must be in [0, {min(tile_hw)}) for tile {tile_hw}, got {overlap}.")
    blend_window((1, 1), blend)  # validate blend before running any tile
    return _padded_bands(forward, image, num_classes, tile_hw, overlap, blend, pad_mode, batch_size)
