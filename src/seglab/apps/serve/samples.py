"""Built-in sample images for the page: synthetic road scenes (seglab.data.synthetic), drawn once."""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image

__all__ = ["sample_names", "sample_png"]

_SAMPLES = {"street-1": 11, "street-2": 23, "street-3": 37}  # name -> seed
_SIZE = (180, 240)


def sample_names() -> list[str]:
    return list(_SAMPLES)


@functools.lru_cache(maxsize=len(_SAMPLES))
def sample_png(name: str) -> bytes:
    from seglab.data.synthetic import render_scene

    image, _ = render_scene(np.random.default_rng(_SAMPLES[name]), *_SIZE)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
