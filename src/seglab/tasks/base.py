"""The task protocol: what the task-agnostic trainer and evaluator ask of a kind of segmentation.

A task owns everything that depends on what the model predicts: how a loader batch becomes
inputs and targets on the device, how the loss is computed from the model's output, how output
becomes predictions, which metrics score them, and what a checkpoint records about it. The
engine calls only these methods, so a model with another output (Mask R-CNN's loss dict in
training and list of detections in eval) plugs in as another task, not as special cases in the
trainer.

Per step the trainer runs::

    batch = task.prepare_batch(loader_item, device, channels_last)
    with autocast(...):
        output = task.forward(model, batch)
    loss = task.loss(output, batch)

and at the end of each epoch ``record.update(task.epoch_log())``; the evaluator::

    meter = task.new_metrics()
    for item in loader:
        batch = task.prepare_batch(item, device, channels_last)
        with autocast(...):
            meter.update(task.predict(model, batch), batch)
    results = meter.compute()
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

__all__ = ["MetricMeter", "Task"]


class MetricMeter(Protocol):
    """Accumulates predictions over an evaluation and summarises them in a flat dict."""

    def update(self, predictions: Any, batch: Any) -> None: ...

    def compute(self) -> dict[str, Any]: ...


class Task(Protocol):
    """One kind of segmentation (``SemanticTask``, ``InstanceTask``)."""

    #: Name recorded in checkpoints and recipes (``task: semantic``).
    name: str
    #: Metric keys the trainer copies into each epoch's log line and record (``val_<key>``).
    summary_keys: tuple[str, ...]

    def prepare_batch(self, item: Any, device: torch.device, channels_last: bool = False) -> Any:
        """A loader item (tuple of tensors, or lists of images and target dicts for detection, as
        collated by the data set's ``collate_fn``) on ``device``."""

    def batch_size(self, batch: Any) -> int:
        """Number of images in ``batch``."""

    def forward(self, model: nn.Module, batch: Any) -> Any:
        """The model's output on a prepared batch (run inside the engine's autocast)."""

    def loss(self, output: Any, batch: Any) -> torch.Tensor:
        """The scalar training loss from :meth:`forward`'s output and the batch's targets."""

    def epoch_log(self) -> dict[str, float]:
        """Extra values for the epoch's training record (e.g. each term of a summed loss, averaged
        over the epoch's steps), reset by the call; ``{}`` when there are none."""

    def predict(self, model: nn.Module, batch: Any) -> Any:
        """Predictions for evaluation (the model is in eval mode, gradients are off)."""

    def new_metrics(self) -> MetricMeter:
        """A fresh accumulator of this task's metrics."""

    def checkpoint_metadata(self) -> dict[str, Any]:
        """What a checkpoint must record about this task to predict without the data set."""
