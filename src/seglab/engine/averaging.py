"""An exponential moving average (EMA) of the weights, kept beside the trained model.

Averaging the late iterates smooths out the last steps' noise (Polyak averaging; SWA/SWAD for
domain shift); torchvision's reference scripts and timm offer the same option (``--model-ema``).
On CamVid across sequences it steadied the last epoch but added no accuracy (README). The average
is taken over parameters *and* buffers (BN running statistics), so it needs no BN recompute.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["WeightAverage", "ema_decay_at"]


def ema_decay_at(decay: float, updates: int) -> float:
    """How much of the average is kept when the next weights come in, ``updates`` already averaged.

    Bias-corrected like Adam's moments: the average is what an EMA started at zero would be, divided
    by ``1 - decay**n``. Every past step then weighs ``decay**age`` and the random initial weights
    fade like any other step, while the window stays ``1 / (1 - decay)`` steps long. (The
    ``(1 + n) / (10 + n)`` ramp of TensorFlow and timm would cap the window at about a ninth of the
    steps taken, e.g. 150 of a 1400-step run, whatever ``decay`` says.)
    """
    return 1.0 - (1.0 - decay) / (1.0 - decay ** (updates + 1))


class WeightAverage:
    """EMA of ``model``'s floating-point parameters and buffers, updated after every optimiser step.

    ``module`` is the averaged copy: validate, checkpoint and ship it. The trained ``model`` keeps
    its own weights; a resume needs both (the trainer stores the raw ones in the training state).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1), e.g. 0.998; got {decay}.")
        def average(ema: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
            weight = 1.0 - ema_decay_at(decay, int(updates))
            floats = [(e, c) for e, c in zip(ema, current) if e.is_floating_point()]
            if floats:
                torch._foreach_lerp_([e for e, _ in floats], [c for _, c in floats], weight)
            for e, c in zip(ema, current):  # counters (BN's num_batches_tracked) follow the model
                if not e.is_floating_point():
                    e.copy_(c)

        self._averaged = AveragedModel(model, multi_avg_fn=average, use_buffers=True)
        self._averaged.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        return self._averaged.module

    @property
    def updates(self) -> int:
        return int(self._averaged.n_averaged)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self._averaged.update_parameters(model)

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, weights: dict[str, torch.Tensor], updates: int) -> None:
        """Restore the average and how many updates it holds (a resume continues its bias correction)."""
        self.module.load_state_dict(weights)
        self._averaged.n_averaged.fill_(updates)
