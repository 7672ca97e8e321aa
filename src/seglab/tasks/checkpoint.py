"""Checkpoints that rebuild their model alone, written atomically.

A checkpoint is a dict holding the model's registry name and keyword arguments,
the number of classes, class names, palette, ignore index, normalisation, the
whole resolved config, the weights and (for resuming) optimizer, scheduler,
epoch, step and RNG states. It is written to a temporary file in the same folder
and renamed over the target, so a crash mid-write leaves the previous file intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from seglab.core.atomic import atomic_write
from seglab.core.config import Config, config_from_dict
from seglab.core.errors import SeglabError
from seglab.models.registry import create_model

__all__ = ["save_checkpoint", "load_checkpoint", "model_from_checkpoint", "check_compatible", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "seglab-checkpoint-v1"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically save a checkpoint dict (see module docstring for its keys)."""
    state = {"format": CHECKPOINT_FORMAT, **state}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a seglab checkpoint; clear errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise SeglabError(f"Checkpoint {str(path)!r} does not exist. Training writes best.pt and last.pt in its run folder.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # pickle, zip or truncation errors all mean the same to a user
        raise SeglabError(f"Checkpoint {str(path)!r} could not be read ({type(e).__name__}: {e}). "
                          "It may be truncated or not a PyTorch file; use a best.pt or last.pt written by `seglab train`.") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise SeglabError(f"{str(path)!r} is not a seglab checkpoint (no '{CHECKPOINT_FORMAT}' marker). "
                          "Plain state dicts cannot rebuild a model; use a checkpoint written by `seglab train`.")
    return ckpt


def checkpoint_config(ckpt: dict[str, Any]) -> Config:
    """The resolved :class:`Config` stored in a checkpoint."""
    return config_from_dict(ckpt["config"])


def model_from_checkpoint(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> nn.Module:
    """Rebuild the model recorded in ``ckpt`` and load its weights (no data or recipe needed)."""
    # The encoder's pretrained weights are already in the state dict: don't fetch them again.
    kwargs = {k: v for k, v in ckpt["model_kwargs"].items() if k not in ("pretrained_encoder", "pretrained_backbone")}
    # Binary models have one output channel for two data classes.
    model = create_model(ckpt["model_name"], ckpt.get("model_num_classes", ckpt["num_classes"]), **kwargs)
    _load_weights(model, ckpt["model"], f"{ckpt['model_name']} ({ckpt['num_classes']} classes) from {path}")
    return model


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[1:3]
        raise SeglabError(f"Weights of {what} do not fit the model: {' '.join(s.strip() for s in first)}") from e


def check_compatible(ckpt: dict[str, Any], model_name: str, num_classes: int, path: str | Path) -> None:
    """Raise a clear error when a checkpoint was made for another model or class count."""
    if ckpt["model_name"] != model_name:
        raise SeglabError(
            f"Checkpoint {str(path)!r} holds a {ckpt['model_name']!r} model, but {model_name!r} was asked for. "
            f"Use --model.name {ckpt['model_name']} or a checkpoint of {model_name!r}."
        )
    if ckpt["num_classes"] != num_classes:
        raise SeglabError(
            f"Checkpoint {str(path)!r} predicts {ckpt['num_classes']} classes ({', '.join(ckpt['class_names'])}), "
            f"but the data set has {num_classes}. Evaluate it on data with the same classes, "
            f"or train a new model for these {num_classes} classes."
        )
