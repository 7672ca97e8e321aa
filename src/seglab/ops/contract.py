"""What the rest of seglab asks of a model, declared in one place.

Most seglab models take any ``H x W`` and return logits of the same size; nothing more is asked
of them. Two optional capabilities are declared here as protocols, and every caller (trainer,
evaluation, tiling, the predictor, benchmarks, ``seglab models``) asks through the helpers below
instead of probing attributes on its own:

* :class:`ValidSizeModel`: unpadded ("valid") convolutions, as in ``unet_valid``: only some
  input sizes are accepted and the output is smaller than the input.
* :class:`FeatureBackbone`: an encoder returning a list of feature maps with known channels and
  strides (VGG16, ResNet, Xception-65), for heads that pick levels (FCN skips, DeepLab's ASPP).

Monte-Carlo dropout needs dropout layers (:func:`has_dropout`). Wrappers seglab puts around a
model (the fast path's ``FastInferenceModel.module``, ``torch.compile``'s ``_orig_mod``,
DistributedDataParallel's ``module``) are looked through by :func:`unwrap`.

Example:
    >>> from seglab.models import create_model
    >>> runnable_size(create_model("unet_valid", num_classes=2), (360, 480))
    (364, 492)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from torch import nn

from seglab.core.errors import SeglabError

__all__ = ["FeatureBackbone", "ValidSizeModel", "check_input_size", "has_dropout", "has_size_rule", "runnable_size",
           "size_rule", "unwrap", "valid_output_fn"]

#: Attributes under which wrappers keep the model they wrap.
_WRAPPED = ("_orig_mod", "module")


@runtime_checkable
class ValidSizeModel(Protocol):
    """A model with unpadded convolutions: some input sizes only, output smaller than input."""

    def valid_input_size(self, size: int | Sequence[int]) -> bool:
        """Whether ``size`` (one side, or ``(h, w)``) pools evenly through the network."""

    def nearest_valid_sizes(self, size: int) -> tuple[int | None, int]:
        """The nearest accepted side lengths below (None if there is none) and at or above ``size``."""

    def output_size(self, input_size: Sequence[int]) -> tuple[int, int]:
        """``(h, w)`` of the logits for an accepted ``(h, w)`` input."""


@runtime_checkable
class FeatureBackbone(Protocol):
    """An encoder whose ``forward`` returns feature maps, ``feature_channels[i]`` channels at
    ``feature_strides[i]`` (input pixels per feature pixel), shallowest first."""

    feature_channels: Sequence[int]
    feature_strides: Sequence[int]


def unwrap(model: object) -> object:
    """The model inside seglab's and PyTorch's wrappers (fast path, ``torch.compile``, DDP)."""
    for _ in range(8):
        inner = next((getattr(model, a) for a in _WRAPPED if isinstance(getattr(model, a, None), nn.Module)), None)
        if inner is None:
            return model
        model = inner
    return model


def size_rule(model: object) -> ValidSizeModel | None:
    """The (unwrapped) model if it is a :class:`ValidSizeModel`, else None."""
    inner = unwrap(model)
    return inner if isinstance(inner, ValidSizeModel) else None


def has_size_rule(model: object) -> bool:
    """True for models that only accept some input sizes."""
    return size_rule(model) is not None


def valid_output_fn(model: object) -> Callable[[Sequence[int]], tuple[int, int]] | None:
    """``output_size`` of a valid-convolution model (output smaller than input), else None."""
    rule = size_rule(model)
    return rule.output_size if rule is not None else None


def runnable_size(model: object, size: Sequence[int]) -> tuple[int, int]:
    """``size`` itself, or for a model with a size rule the nearest accepted size at or above it."""
    height, width = int(size[0]), int(size[1])
    rule = size_rule(model)
    if rule is None:
        return height, width
    return rule.nearest_valid_sizes(height)[1], rule.nearest_valid_sizes(width)[1]


def check_input_size(model: object, size: Sequence[int] | None, model_name: str, option: str) -> None:
    """Raise a clear error, naming ``option``, if ``model`` cannot take ``size`` ``(h, w)``."""
    rule = size_rule(model)
    if rule is None or size is None or rule.valid_input_size(tuple(size)):
        return
    nearest = [rule.nearest_valid_sizes(int(s)) for s in size]
    hints = "; ".join(f"{s} -> {below} or {above}" for s, (below, above) in zip(size, nearest)
                      if not rule.valid_input_size(int(s)))
    raise SeglabError(f"{model_name} cannot train on {size[0]}x{size[1]} crops ({option}): its unpadded "
                      f"convolutions need sizes that pool evenly (nearest valid: {hints}). Set e.g. "
                      f"--{option} {' '.join(str(above) for _, above in nearest)}.")


def has_dropout(model: nn.Module) -> bool:
    """Whether ``model`` has dropout layers, i.e. supports Monte-Carlo dropout."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())
