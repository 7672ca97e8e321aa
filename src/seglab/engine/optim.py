"""Optimizers and per-step learning-rate schedules (constant, poly, cosine; linear warm-up)."""

from __future__ import annotations

import math

import torch
from torch import nn

from seglab.core.config import TrainConfig
from seglab.core.errors import SeglabError, did_you_mean

__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "poly", "cosine")


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # No weight decay on BN/bias parameters: decaying them only fights normalisation.
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW, per ``cfg.optimizer``."""
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise SeglabError(f"Unknown optimizer {cfg.optimizer!r} (train.optimizer).{did_you_mean(cfg.optimizer, OPTIMIZERS)} "
                      f"Choose one of: {', '.join(OPTIMIZERS)}.")


def lr_factor(step: int, total_steps: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at optimisation ``step`` (0-based)."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    floor = cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "poly":
        return floor + (1 - floor) * (1 - progress) ** cfg.poly_power
    if cfg.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    raise SeglabError(f"Unknown schedule {cfg.schedule!r} (train.schedule).{did_you_mean(cfg.schedule, SCHEDULES)} "
                      f"Choose one of: {', '.join(SCHEDULES)}.")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimisation step."""
    total = cfg.epochs * steps_per_epoch
    lr_factor(0, total, cfg, steps_per_epoch)  # validate the schedule name before training starts
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, cfg, steps_per_epoch))
