"""The evaluation loop, task-agnostic: the task turns batches into predictions and scores them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from seglab.core.runtime import autocast
from seglab.tasks.base import Task

__all__ = ["evaluate_model"]


@torch.inference_mode()
def evaluate_model(model: nn.Module, batches: Iterable[Any], task: Task, device: torch.device,
                   amp_dtype: torch.dtype | None = None, channels_last: bool = False,
                   combine: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Score ``model`` on every loader item of ``batches`` with ``task``'s predictions and metrics.

    For :class:`~seglab.tasks.semantic.SemanticTask` this is the SegNet protocol at the labels'
    own resolution (G, C, mIoU, fwIoU, BF), with Monte-Carlo dropout when the task asks for
    samples and the EM metrics on ISBI 2012. The model's train/eval mode is restored afterwards.
    ``combine(meter)`` returns the meter to summarise: in a distributed job, all ranks' shards merged
    (:func:`seglab.engine.distributed.combine_meters`).
    """
    was_training = model.training
    model.eval()
    meter = task.new_metrics()
    try:
        for item in batches:
            batch = task.prepare_batch(item, device, channels_last)
            with autocast(device, amp_dtype):
                predictions = task.predict(model, batch)
            meter.update(predictions, batch)
    finally:
        model.train(was_training)
    return (combine(meter) if combine is not None else meter).compute()
