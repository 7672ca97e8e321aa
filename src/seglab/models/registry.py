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
import re
from collections.abc import Callable
from typing import Any

from torch import nn

from seglab.core.errors import SeglabError, did_you_mean
from seglab.models.instance import mask_rcnn
from seglab.models.semantic import (
    bayesian_segnet,
    deconvnet,
    deeplab_v1,
    deeplabv3,
    fcn,
    fcn_basic,
    segnet,
    segnet_lite,
    unet,
)
from seglab.models.weights import load_model_weights
from seglab.models.zoo import resolve_pretrained

__all__ = ["register_model", "create_model", "list_models", "get_model_builder", "model_task"]

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
    "mask_rcnn_resnet50_fpn": mask_rcnn.mask_rcnn_resnet50_fpn,
    "mask_rcnn_resnet50_fpn_v2": mask_rcnn.mask_rcnn_resnet50_fpn_v2,
    "mask_rcnn_resnet18_fpn": mask_rcnn.mask_rcnn_resnet18_fpn,
}

#: Models whose task is not ``semantic`` (logits): instance models return torchvision-style
#: detections (see :mod:`seglab.models.instance.mask_rcnn`).
_MODEL_TASKS: dict[str, str] = {
    "mask_rcnn_resnet50_fpn": "instance",
    "mask_rcnn_resnet50_fpn_v2": "instance",
    "mask_rcnn_resnet18_fpn": "instance",
}


def register_model(name: str, task: str = "semantic") -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a user's builder ``fn(num_classes, **kw) -> nn.Module`` under ``name``
    for ``task`` (``semantic``: logits; ``instance``: torchvision-style detections)."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"A model named {name!r} is already registered.")
        _MODELS[name] = fn
        if task != "semantic":
            _MODEL_TASKS[name] = task
        return fn

    return wrap


def model_task(name: str) -> str:
    """The task a registered model is built for: ``semantic`` or ``instance``."""
    get_model_builder(name)
    return _MODEL_TASKS.get(name, "semantic")


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """Sorted names of the registered models matching a shell-style ``pattern`` (and ``task``, if given)."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern)
                  and (task is None or _MODEL_TASKS.get(n, "semantic") == task))


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name``; a clear error with suggestions otherwise."""
    if name not in _MODELS:
        raise SeglabError(
            f"Unknown model {name!r}.{did_you_mean(name, _MODELS)} "
            f"Available models: {', '.join(sorted(_MODELS))} (see `seglab models`)."
        )
    return _MODELS[name]


#: Option names of older seglab versions, and the option that replaced them.
_RENAMED_OPTIONS: dict[str, str] = {"pretrained_encoder": "weights_backbone", "pretrained_backbone": "weights_backbone"}


def create_model(name: str, num_classes: int, *, weights: str | None = None, weights_backbone: str | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build a registered model: logits ``N x num_classes x H x W`` at input size for semantic models;
    instance models (:func:`model_task`) count the background in ``num_classes`` and return
    torchvision-style detections.

    Args:
        name: A name of :func:`list_models`.
        num_classes: Number of classes.
        weights: Trained weights to load into the built model: the tag of a named entry
            (``"camvid"`` for ``segnet_basic.camvid``, see :mod:`seglab.models.zoo` and ``seglab weights``;
            its training options are used for unset ``kwargs``), or a state dict's URL or file path (any
            :func:`seglab.models.weights.load_state_dict` source), e.g. ``torch.save(model.state_dict(),
            path)`` of a model built with the same options. Keys of older seglab layouts are upgraded.
        weights_backbone: Pretrained backbone weights, passed to the builder (``"imagenet"``, a URL
            or a file; only models with an ImageNet backbone accept it).
        **kwargs: The builder's options. Those set to ``None`` are dropped, so an unset
            command-line option never overrides a model's own default.

    Nothing is downloaded unless ``weights`` or ``weights_backbone`` names a URL or ``"imagenet"``.
    """
    builder = get_model_builder(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise SeglabError(f"num_classes must be a positive integer, got {num_classes!r}.")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    for old, new in _RENAMED_OPTIONS.items():
        if old in kwargs:
            raise SeglabError(f"Model {name!r} does not accept that option: {old!r} was renamed to {new!r}. Write "
                              f"{new}={kwargs[old]!r} (model.{new} in a recipe, not model.kwargs.{old}).")
    trained = resolve_pretrained(name, str(weights), num_classes) if weights is not None else None
    if trained is not None:  # named trained weights: build with the options they were trained with
        kwargs = {**trained[1]["checkpoint"]["model_kwargs"], **kwargs}
    if weights_backbone is not None:
        kwargs["weights_backbone"] = weights_backbone
    try:
        model = builder(num_classes=num_classes, **kwargs)
    except TypeError as e:
        # Only a bad option of this call, not a TypeError from deeper inside the builder.
        bad = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if bad and bad.group(1) in kwargs:
            backbone = bad.group(1) == "weights_backbone"
            note = " (only models with an ImageNet backbone take weights_backbone)" if backbone else ""
            raise SeglabError(f"Model {name!r} does not accept that option: {e}. Check `model.kwargs` in the "
                              f"recipe{note}.") from e
        raise
    if trained is not None:
        model.load_state_dict(trained[0])
    elif weights is not None:
        load_model_weights(model, weights, what=name)
    return model
