"""Tasks: what a model predicts, how it learns it and how it is scored (see :mod:`seglab.tasks.base`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from seglab.core.config import Config
from seglab.core.errors import SeglabError, did_you_mean
from seglab.tasks.base import MetricMeter, Task
from seglab.tasks.instance import InstanceTask
from seglab.tasks.semantic import SemanticTask

__all__ = ["TASKS", "InstanceTask", "MetricMeter", "SemanticTask", "Task", "build_task"]

#: Task name (the recipe's ``task:``) -> its class.
TASKS: dict[str, type] = {"semantic": SemanticTask, "instance": InstanceTask}


def build_task(cfg: Config, info: Any, class_weights: Callable[[str], torch.Tensor | None] | None = None,
               device: torch.device | None = None) -> Task:
    """The task of a recipe, with its loss, for a data set described by ``info``."""
    if cfg.task not in TASKS:
        raise SeglabError(f"Unknown task {cfg.task!r}.{did_you_mean(cfg.task, TASKS)} Tasks: {', '.join(TASKS)}.")
    return TASKS[cfg.task].from_config(cfg, info, class_weights, device)
