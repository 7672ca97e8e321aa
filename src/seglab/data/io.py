"""Reading images and masks from disk, with errors that name the file and the fix.

Images always come back as ``uint8`` RGB arrays (``H x W x 3``). Masks come back as
integer class-id arrays (``H x W``): index PNGs (mode ``L``, ``P``, ``I;16``) are read
as they are, colour-coded masks are mapped through a palette by :func:`read_rgb_mask`.

Example:
    >>> img = read_image("camvid/train/0001TP_006690.png")   # doctest: +SKIP
    >>> img.shape, img.dtype
    ((360, 480, 3), dtype('uint8'))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from seglab.core.errors import SeglabError

__all__ = [
    "RGBMaskError",
    "read_image",
    "read_mask",
    "read_rgb_mask",
    "image_hw",
    "resize_image",
    "resize_mask",
    "describe_bad_values",
]

# Errors PIL raises for missing, truncated or non-image files.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


class RGBMaskError(SeglabError):
    """A colour-coded mask where an index mask (one class id per pixel) is expected."""


def _unreadable(path: Path, kind: str, err: Exception) -> SeglabError:
    if not path.exists():
        return SeglabError(f"{kind} file {str(path)!r} does not exist. Check --data.root and the data set layout.")
    if path.is_file() and path.stat().st_size == 0:
        return SeglabError(f"{kind} file {str(path)!r} is empty (0 bytes): an interrupted copy or download. Copy it "
                           "again or delete it and its partner, then run `seglab data check` on the folder.")
    return SeglabError(
        f"Cannot read {kind.lower()} {str(path)!r}: {err}. The file is unreadable or corrupt "
        "(a truncated download or a non-image file with an image extension); re-extract the data set "
        "or delete this file and its partner, then run `seglab data check` on the folder."
    )


def image_hw(path: str | Path) -> tuple[int, int]:
    """Height and width of an image from its header only (cheap: no pixel decoding)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
    except _PIL_ERRORS as e:
        raise _unreadable(path, "Image", e) from e
    return h, w


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Convert any PIL mode to uint8 RGB; 16-bit and float images are rescaled, not clipped."""
    if im.mode == "RGB":
        return np.asarray(im, dtype=np.uint8)
    if im.mode in _SIXTEEN_BIT or im.mode in ("I", "F"):
        arr = np.asarray(im).astype(np.float64)
        top = arr.max() if arr.size else 0.0
        # Microscopy-style 16-bit data: scale the full range down to 8 bits.
        if top > 255:
            arr = arr * (255.0 / (65535.0 if top <= 65535 else top))
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file into a ``uint8`` array of shape ``H x W x 3``.

    Args:
        path: Any format PIL reads (PNG, JPEG, TIFF, ...); grey and palette images are
            expanded to RGB, 16-bit images are scaled to 8 bits.

    Returns:
        The pixels, ``np.uint8``, ``H x W x 3``.

    Raises:
        SeglabError: naming the file when it is missing, truncated or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()  # force a full decode now so truncation is reported here, not later
            return np.ascontiguousarray(_to_rgb(im))
    except _PIL_ERRORS as e:
        raise _unreadable(path, "Image", e) from e


def _rgb_mask_error(path: Path, arr: np.ndarray) -> RGBMaskError:
    colours = np.unique(arr.reshape(-1, arr.shape[-1])[:, :3], axis=0)
    shown = ", ".join(str(tuple(int(v) for v in c)) for c in colours[:4])
    return RGBMaskError(
        f"Mask {str(path)!r} is an RGB colour image ({len(colours)} colours, e.g. {shown}), but index masks "
        "(one class id per pixel, a single-channel PNG) are expected. If your masks are colour-coded, set "
        "--data.rgb_masks true and --data.palette [[r,g,b], ...] with one colour per class in class order; "
        "otherwise save the masks as 8-bit single-channel PNGs."
    )


def read_mask(path: str | Path) -> np.ndarray:
    """Decode an index mask: one integer class id per pixel.

    Mode ``L`` and ``P`` (palette: the indices are the ids) give ``uint8``; ``I;16`` gives
    ``uint16``; ``I`` gives ``int32``. An RGB file whose three channels are equal (a grey
    mask saved as RGB) is accepted; a truly colour-coded mask is an error.

    Raises:
        SeglabError: unreadable file, or a colour mask where an index mask is expected.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("L", "P"):
                return np.array(im, dtype=np.uint8)
            if mode in _SIXTEEN_BIT:
                return np.array(im, dtype=np.uint16)
            if mode == "I":
                return np.array(im, dtype=np.int32)
            if mode == "1":
                return np.array(im, dtype=np.uint8)
            arr = np.asarray(im)
    except _PIL_ERRORS as e:
        raise _unreadable(path, "Mask", e) from e
    if mode == "LA":
        return np.ascontiguousarray(arr[..., 0]).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] >= 3:
        rgb = arr[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return np.ascontiguousarray(rgb[..., 0]).astype(np.uint8)
        raise _rgb_mask_error(path, arr)
    raise SeglabError(f"Mask {str(path)!r} has an unsupported image mode {mode!r}; save it as an 8-bit PNG.")


def read_mask_of_image(image_path: str | Path, label_path: str | Path, dataset: str, image_word: str = "image"
                       ) -> np.ndarray:
    """The label map of ``label_path``, which must have ``image_path``'s size (a clear error otherwise)."""
    raw = read_mask(label_path)
    h, w = image_hw(image_path)
    if raw.shape != (h, w):
        raise SeglabError(f"{dataset} label {str(label_path)!r} is {raw.shape[1]}x{raw.shape[0]} (WxH) but its "
                          f"{image_word} {str(image_path)!r} is {w}x{h}; labels must have their {image_word}'s size.")
    return raw


def _colour_codes(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def read_rgb_mask(
    path: str | Path, palette: Sequence[Sequence[int]], num_classes: int, ignore_index: int
) -> np.ndarray:
    """Decode a colour-coded mask, mapping ``palette[c]`` to class ``c``.

    Args:
        path: An RGB(A) PNG.
        palette: One ``[r, g, b]`` per class. One extra, final colour (``num_classes + 1``
            entries) is the void colour and maps to ``ignore_index``.
        num_classes: Number of real classes.
        ignore_index: Id given to pixels of the void colour.

    Returns:
        ``int32`` class ids, ``H x W``.

    Raises:
        SeglabError: naming the file and the colours that are not in the palette.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("L", "P", "I", "1") or im.mode in _SIXTEEN_BIT:
                raise SeglabError(
                    f"Mask {str(path)!r} is a single-channel index mask (mode {im.mode}), but --data.rgb_masks is "
                    "true. Set --data.rgb_masks false to read class ids directly."
                )
            rgb = np.asarray(im.convert("RGB"))
    except _PIL_ERRORS as e:
        raise _unreadable(path, "Mask", e) from e
    codes = _colour_codes(rgb)
    pal_codes = _colour_codes(np.asarray(palette, dtype=np.int32).reshape(-1, 3))
    ids = np.arange(len(pal_codes), dtype=np.int32)
    if len(pal_codes) > num_classes:  # the extra final colour is void
        ids[num_classes:] = ignore_index
    order = np.argsort(pal_codes)
    sorted_codes = pal_codes[order]
    pos = np.clip(np.searchsorted(sorted_codes, codes), 0, len(sorted_codes) - 1)
    found = sorted_codes[pos] == codes
    if not found.all():
        unknown = np.unique(codes[~found])
        shown = ", ".join(str(((int(c) >> 16) & 255, (int(c) >> 8) & 255, int(c) & 255)) for c in unknown[:5])
        raise SeglabError(
            f"Mask {str(path)!r} has {len(unknown)} colour(s) not in --data.palette: {shown} "
            f"({int((~found).sum())} pixels). Add them to the palette (one colour per class, in class order; "
            "one extra final colour is treated as void/ignore), or fix the mask."
        )
    return ids[order[pos]]


def resize_image(image: np.ndarray, size_hw: Sequence[int]) -> np.ndarray:
    """Bilinear resize of a ``uint8`` ``H x W x 3`` image to ``size_hw`` (antialiased when shrinking)."""
    h, w = int(size_hw[0]), int(size_hw[1])
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size_hw: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``H x W`` mask: never invents label values."""
    h, w = int(size_hw[0]), int(size_hw[1])
    src_h, src_w = mask.shape
    if (src_h, src_w) == (h, w):
        return mask
    # Sample at output pixel centres, which is what PIL NEAREST does too.
    rows = np.minimum(((np.arange(h) + 0.5) * src_h / h).astype(np.intp), src_h - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * src_w / w).astype(np.intp), src_w - 1)
    return mask[rows[:, None], cols[None, :]]


def describe_bad_values(values: Sequence[int], limit: int = 8) -> str:
    """Short list such as ``12, 13, 255`` (``...`` after ``limit`` values)."""
    vals = [int(v) for v in values]
    text = ", ".join(str(v) for v in vals[:limit])
    return text + (", ..." if len(vals) > limit else "")
