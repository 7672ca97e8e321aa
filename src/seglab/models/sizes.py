"""Which input sizes a model accepts.

Most seglab models take any ``H x W``. Models with unpadded ("valid") convolutions, such as
``unet_valid``, only accept sizes whose poolings divide evenly; they declare this with two
methods, ``valid_input_size(size) -> bool`` and ``nearest_valid_sizes(n) -> (below, above)``.
Code that needs a size such a model will take (benchmarks, evaluation tiles, ``seglab models``)
asks here.

Example:
    >>> from seglab.registry import create_model
    >>> runnable_size(create_model("unet_valid", num_classes=2), (360, 480))
    (364, 492)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["has_size_rule", "runnable_size"]


def has_size_rule(model: nn.Module) -> bool:
    """True for models that only accept some input sizes (they define ``nearest_valid_sizes``)."""
    return callable(getattr(model, "nearest_valid_sizes", None))


def runnable_size(model: nn.Module, size: Sequence[int]) -> tuple[int, int]:
    """``size`` itself, or for a model with a size rule the nearest accepted size at or above it."""
    height, width = int(size[0]), int(size[1])
    if not has_size_rule(model):
        return height, width
    return model.nearest_valid_sizes(height)[1], model.nearest_valid_sizes(width)[1]
