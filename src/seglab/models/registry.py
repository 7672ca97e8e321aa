"""The model registry: one place where every architecture is named.

The catalogue below names each builder explicitly: importing a model module registers nothing
(no import-time side effects), and this module imports the model modules, never the reverse,
so there is no cycle. :func:`register_model` adds a user's own builder at run time.

Example:
    >>> import seglab
    >>> model = seglab.create_model("segnet_basic", num_classes=11)
    >>> "segnet" in seglab.list_models()
    True
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from torch import nn

from seglab.core.errors import SeglabError, did_you_mean
from seglab.models.semantic import (
    bayesian_segnet, deconvnet, deeplab_v1, deeplabv3, fcn, fcn_basic, segnet, segnet_lite, unet
)

__all__ = ["register_model", "create_model", "list_models", "get_model_builder"]

_MODELS: dict[str, Callable[..., nn.Module]] = {
    "segnet": segnet.segnet,
    "segnet_basic": segnet.segnet_basic,
    "segnet_lite": segnet_lite.segnet_lite,
    "bayesian_segnet": bayesian_segnet.bayesian_segnet,
    "bayesian_segnet_basic": bayesian_segnet.bayesian_segnet_basic,
    "fcn32s": fcn.fcn32s,
    "fcn16s": fcn.fcn16s,
    "fcn8s": fcn.fcn8s,
    "fcn_basic": fcn_basic.fcn_basic,
    "deconvnet": deconvnet.deconvnet,
    "deeplab_largefov": deeplab_v1.deeplab_largefov,
    "deeplabv3_resnet50": deeplabv3.deeplabv3_resnet50,
    "deeplabv3_resnet101": deeplabv3.deeplabv3_resnet101,
    "deeplabv3plus_resnet50": deeplabv3.deeplabv3plus_resnet50,
    "deeplabv3plus_xception65": deeplabv3.deeplabv3plus_xception65,
    "unet": unet.unet,
    "unet_valid": unet.unet_valid,
}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a user's builder ``fn(num_classes, **kw) -> nn.Module`` under ``name``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"A model named {name!r} is already registered.")
        _MODELS[name] = fn
        return fn

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a shell-style ``pattern``."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name``; a clear error with suggestions otherwise."""
    if name not in _MODELS:
        raise SeglabError(
            f"Unknown model {name!r}.{did_you_mean(name, _MODELS)} "
            f"Available models: {', '.join(sorted(_MODELS))} (see `seglab models`)."
        )
    return _MODELS[name]


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a registered model returning logits ``N x num_classes x H x W`` at input size.

    Keyword arguments set to ``None`` are dropped, so an unset command-line option
    never overrides a model's own default.
    """
    builder = get_model_builder(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise SeglabError(f"num_classes must be a positive integer, got {num_classes!r}.")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        return builder(num_classes=num_classes, **kwargs)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise SeglabError(f"Model {name!r} does not accept that option: {e}. Check `model.kwargs` in the recipe.") from e
        raise
