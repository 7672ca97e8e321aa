"""The model registry: one place where every architecture is named.

Models register with :func:`register_model` in the module that defines them;
:mod:`seglab.models` imports those modules explicitly, so registration does not
depend on what the user happened to import.

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

from .errors import SeglabError, did_you_mean

__all__ = ["register_model", "create_model", "list_models", "get_model_builder"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder ``fn(num_classes, **kw) -> nn.Module`` under ``name``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"A model named {name!r} is already registered.")
        _MODELS[name] = fn
        return fn

    return wrap


def _ensure_loaded() -> None:
    from . import models  # noqa: F401  (imports every model module, which registers them)


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a shell-style ``pattern``."""
    _ensure_loaded()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name``; a clear error with suggestions otherwise."""
    _ensure_loaded()
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
