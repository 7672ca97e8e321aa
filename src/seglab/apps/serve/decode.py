"""Reading an uploaded body into an RGB array, with each way it can fail told apart.

Not an image at all (no known image header) is 415; a known header whose pixels cannot be decoded
(truncated, damaged) or an empty body is 400; more pixels than allowed is 413, checked from the
header before the pixels are decoded, so a decompression bomb is never expanded.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from seglab.apps.serve.errors import ACCEPTED_IMAGES, ApiError

__all__ = ["decode_image"]

_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "PPM")


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """``H x W x 3`` uint8 array of the image in ``data``; :class:`ApiError` (400/413/415) otherwise."""
    if not data:
        raise ApiError(400, "empty_body", "The request carried no image bytes (empty body or empty file).",
                       ACCEPTED_IMAGES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own max_pixels decides
        try:
            image = Image.open(io.BytesIO(data), formats=_FORMATS)
        except (UnidentifiedImageError, Image.DecompressionBombError):
            raise ApiError(415, "not_an_image", "The body is not an image seglab can read (no PNG, JPEG, BMP, TIFF, "
                           "WebP or GIF header found).", ACCEPTED_IMAGES) from None
        except Exception as e:  # a header that breaks the decoder while being identified
            raise ApiError(400, "corrupt_image", f"The image header could not be read ({type(e).__name__}).",
                           ACCEPTED_IMAGES) from None
        width, height = image.size
        if width * height > max_pixels:
            raise ApiError(413, "too_many_pixels", f"The image is {width} x {height} = {width * height} pixels, more "
                           f"than this server's limit of {max_pixels} (--max-pixels).",
                           f"images of at most {max_pixels} pixels; downscale it first")
        if width == 0 or height == 0:
            raise ApiError(400, "corrupt_image", "The image has no pixels (zero width or height).", ACCEPTED_IMAGES)
        try:
            image.load()
            rgb = np.asarray(image.convert("RGB"))
        except Exception as e:  # truncated or damaged pixel data; PIL raises OSError, ValueError, SyntaxError...
            raise ApiError(400, "corrupt_image", f"The {image.format} image is damaged or truncated and could not be "
                           f"decoded ({type(e).__name__}: {e}).", ACCEPTED_IMAGES) from None
    return np.ascontiguousarray(rgb)
