"""The semantic-segmentation task: one class per pixel."""

from __future__ import annotations

from torch import nn

from seglab.core.errors import SeglabError
from seglab.models.registry import list_models
from seglab.ops.contract import has_dropout

__all__ = ["EM_KEYS", "em_foreground_class", "require_dropout"]

#: Keys :func:`evaluate_model` adds for binary EM data.
EM_KEYS: tuple[str, ...] = ("pixel_error", "foreground_iou", "rand_error", "rand_precision", "rand_recall")


def em_foreground_class(dataset: str) -> int | None:
    """The cell class id of data sets scored with the EM metrics (ISBI 2012), else None."""
    return 1 if dataset == "isbi2012" else None


def require_dropout(model: nn.Module, name: str) -> None:
    """Raise a clear error when Monte-Carlo dropout is asked of a model without dropout."""
    if not has_dropout(model):
        bayesian = [m for m in list_models() if "bayesian" in m]
        raise SeglabError(f"--mc-samples needs dropout layers, and model {name!r} has none. "
                          f"Monte-Carlo dropout works with: {', '.join(bayesian)}; train one of those "
                          "(e.g. --model.name bayesian_segnet_basic) or drop --mc-samples.")
