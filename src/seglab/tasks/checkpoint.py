"""Checkpoints that rebuild their model alone, written atomically; their layout defined once.

On disk a checkpoint is one flat dict (``torch.save``) marked ``format: seglab-checkpoint-v1``.
:class:`CheckpointMeta` (what predicting needs: model, classes, palette, normalisation, training
size, task, config), :class:`TrainingState` (what resuming needs) and the weights make up a
:class:`Checkpoint`; the trainer writes one, and the predictor, evaluation and export read one
with :func:`read_checkpoint`, so no other module spells the dict's keys. Files written before
``task`` and ``model_num_classes`` were recorded (seglab 0.1.0 main) read with their defaults.
A checkpoint is written to a temporary file in the same folder and renamed over the target, so a
crash mid-write leaves the previous file intact. Loading never runs code from the file
(``torch.load(weights_only=True)``): a checkpoint holds tensors, numbers, strings, lists and dicts.
Weights with NaN or inf are never written (:class:`NonFiniteWeights`) and never loaded without an error.
"""

from __future__ import annotations

import dataclasses
import importlib
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seglab.core.atomic import atomic_write
from seglab.core.config import Config, config_from_dict
from seglab.core.errors import SeglabError, did_you_mean
from seglab.core.version import __version__
from seglab.models.registry import create_model
from seglab.models.zoo import is_pretrained_name, list_pretrained, read_pretrained, read_weights_file

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "CheckpointMeta", "NonFiniteWeights", "TrainingState", "check_compatible",
           "checkpoint_config", "load_checkpoint", "model_from_checkpoint", "read_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "seglab-checkpoint-v1"

#: Builder options that fetch pretrained weights: never again when rebuilding from a checkpoint,
#: whose state dict already holds them (the first two are the names main used before ``weights_backbone``).
_FETCHING_KWARGS = ("pretrained_encoder", "pretrained_backbone", "weights_backbone", "weights")


@dataclass
class CheckpointMeta:
    """Everything needed to rebuild and run the model without its data set or recipe."""

    model_name: str
    num_classes: int
    class_names: list[str]
    palette: list[list[int]]
    mean: list[float]
    std: list[float]
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    model_num_classes: int = 0  # output channels: 1 for binary sigmoid heads; 0 means num_classes
    ignore_index: int | None = None
    image_size: list[int] | None = None  # what inference resizes to: data.image_size x data.infer_scale
    task: str = "semantic"
    seglab_version: str = "unknown"
    config: dict[str, Any] = field(default_factory=dict)
    # Reduced precisions ("bf16") that passed the default-path rule against fp32 on the val split
    # (seglab.core.runtime.passes_default_rule); `seglab weights pack` checks and records them.
    verified_precisions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.model_num_classes = self.model_num_classes or self.num_classes


@dataclass
class TrainingState:
    """What resuming a run needs besides the weights."""

    epoch: int
    step_in_epoch: int
    global_step: int
    best_score: float
    best_metrics: dict[str, Any] | None
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    epoch_loss_sum: float | None = None  # sum of the epoch's step losses so far (its logged mean spans a resume)
    # With train.ema_decay the checkpoint's weights are the average; the trained ones resume from here.
    raw_model: dict[str, Any] | None = None
    ema_updates: int | None = None

    @property
    def resumable(self) -> bool:
        return self.optimizer is not None


@dataclass
class Checkpoint:
    meta: CheckpointMeta
    model: dict[str, torch.Tensor]
    training: TrainingState | None = None

    def to_dict(self) -> dict[str, Any]:
        """The on-disk layout: one flat dict."""
        state = {"format": CHECKPOINT_FORMAT, **dataclasses.asdict(self.meta), "model": self.model}
        if self.training is not None:
            training = dataclasses.asdict(self.training)
            state.update({k: v for k, v in training.items() if v is not None or k == "best_metrics"})
        return state

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "Checkpoint":
        meta = CheckpointMeta(**{f.name: state[f.name] for f in dataclasses.fields(CheckpointMeta) if f.name in state})
        training = None
        if "epoch" in state:
            training = TrainingState(**{f.name: state.get(f.name) for f in dataclasses.fields(TrainingState)})
        return cls(meta, state["model"], training)


#: What checkpoints written by seglab 0.1.0 hold besides tensors and plain containers: the numpy
#: RNG state (an ``ndarray`` of uint32 and its dtype). Only these are let through ``weights_only``
#: loading, and only for files that need them; nothing in a checkpoint can run code.
_LEGACY_NUMPY_GLOBALS = ("numpy.dtype", "numpy.ndarray", "numpy.core.multiarray._reconstruct",
                         "numpy._core.multiarray._reconstruct", "numpy.dtypes.UInt32DType")


def _legacy_globals(names: list[str]) -> list[Any] | None:
    """The allowed legacy numpy globals (all of them: a dtype's class is only met while unpickling)
    if every one of ``names`` is among them, else None."""
    if not set(names) <= set(_LEGACY_NUMPY_GLOBALS):
        return None
    found = []
    for name in _LEGACY_NUMPY_GLOBALS:
        module, _, attr = name.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):  # numpy 1 has no numpy._core, numpy 2 warns on numpy.core
            continue
    return found


def _torch_load(path: Path, map_location: str | torch.device) -> Any:
    """``torch.load(weights_only=True)``; files from seglab 0.1.0 may also hold numpy RNG arrays."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001  (not a torch zip file at all)
            names = []
        if not names:  # no objects behind the failure: the file is broken, not dangerous
            raise
        allowed = _legacy_globals(names)
        if allowed is None:
            raise SeglabError(
                f"Checkpoint {str(path)!r} was refused: it holds Python objects that could run code when loaded "
                f"({', '.join(names[:4])}), and seglab loads only tensors, numbers, strings, lists and dicts. "
                "Use a checkpoint written by `seglab train`; never load files from untrusted sources.") from e
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)


class CheckpointWriteError(SeglabError, OSError):
    """Writing a checkpoint failed (disk full, no permission): a user-facing OSError."""


class NonFiniteWeights(SeglabError):
    """A checkpoint's weights hold NaN or inf (training diverged)."""


def nonfinite_tensors(weights: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``weights`` holding a NaN or inf."""
    return [k for k, v in weights.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def save_checkpoint(path: str | Path, state: Checkpoint | dict[str, Any]) -> None:
    """Atomically save a :class:`Checkpoint` (or an already flat checkpoint dict).

    Refuses weights with NaN/inf (:class:`NonFiniteWeights`); a failed write (disk full, no
    permission) leaves the previous file at ``path`` as it was and names the path.
    """
    state = state.to_dict() if isinstance(state, Checkpoint) else {"format": CHECKPOINT_FORMAT, **state}
    bad = nonfinite_tensors(state.get("model") or {})
    if bad:
        raise NonFiniteWeights(f"Not writing {str(path)!r}: its weights hold NaN or inf ({', '.join(bad[:3])}"
                               f"{', ...' if len(bad) > 3 else ''}); training diverged.")
    try:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    except OSError as e:
        raise CheckpointWriteError(f"Could not write checkpoint {str(path)!r} ({e.strerror or e}); the previous file there, if "
                          f"any, is unchanged. Free disk space or make {str(Path(path).parent)!r} writable, then "
                          "resume from the last checkpoint.") from e


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The flat checkpoint dict of ``path``, validated; clear errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        # A bare word like "segnet_basic.camvd" is a misspelt weights name more often than a file.
        close = did_you_mean(str(path), list_pretrained()) if len(path.parts) == 1 else ""
        raise SeglabError(f"Checkpoint {str(path)!r} does not exist.{close} Training writes best.pt and last.pt in its "
                          "run folder; trained weights that ship with seglab go by name (`seglab weights` lists them).")
    try:
        ckpt = _torch_load(path, map_location)
    except SeglabError:
        raise
    except Exception as e:  # pickle, zip or truncation errors all mean the same to a user
        raise SeglabError(f"Checkpoint {str(path)!r} could not be read ({type(e).__name__}: {e}). "
                          "It may be truncated or not a PyTorch file; use a best.pt or last.pt written by `seglab train`.") from e
    newer = isinstance(ckpt, dict) and re.fullmatch(r"seglab-checkpoint-v(\d+)", str(ckpt.get("format", "")))
    if newer and int(newer.group(1)) > int(CHECKPOINT_FORMAT.rsplit("v", 1)[1]):
        raise SeglabError(f"Checkpoint {str(path)!r} was written by a newer seglab ({ckpt.get('seglab_version', 'unknown')}, "
                          f"format {ckpt['format']}); this is seglab {__version__}, which reads {CHECKPOINT_FORMAT}. "
                          "Upgrade seglab (pip install -U seglab) to use it.")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise SeglabError(f"{str(path)!r} is not a seglab checkpoint (no '{CHECKPOINT_FORMAT}' marker). "
                          "Plain state dicts cannot rebuild a model; use a checkpoint written by `seglab train`.")
    return ckpt


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """A typed :class:`Checkpoint` from a checkpoint file (:func:`load_checkpoint`), a seglab weights
    file (``.safetensors``, see :mod:`seglab.models.zoo`) or the name of trained weights
    (``unet.isbi2012``; weights-only, so it predicts, evaluates, exports and fine-tunes but cannot resume)."""
    text = str(path)
    if not Path(text).exists() and is_pretrained_name(text):
        return _from_weights(*read_pretrained(text))
    if text.endswith(".safetensors") and Path(text).is_file():
        return _from_weights(*read_weights_file(text))
    state = load_checkpoint(path, map_location)
    bad = nonfinite_tensors(state.get("model") or {}) if isinstance(state.get("model"), dict) else []
    if bad:
        raise NonFiniteWeights(f"Checkpoint {str(path)!r} holds NaN or inf weights ({', '.join(bad[:3])}): the run it "
                               "came from diverged. Use an earlier checkpoint, or retrain with a lower --train.lr.")
    try:
        return Checkpoint.from_dict(state)
    except (KeyError, TypeError) as e:
        raise SeglabError(f"Checkpoint {str(path)!r} lacks what seglab needs to rebuild its model ({e}); "
                          "use a best.pt or last.pt written by `seglab train`.") from e


def _from_weights(state: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Checkpoint:
    return Checkpoint(CheckpointMeta(**metadata["checkpoint"]), state, None)


def checkpoint_config(ckpt: Checkpoint | dict[str, Any]) -> Config:
    """The resolved :class:`Config` stored in a checkpoint (older key names upgraded)."""
    return config_from_dict(_upgrade_config(ckpt.meta.config if isinstance(ckpt, Checkpoint) else ckpt["config"]))


def _upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config with the keys main wrote before ``model.weights_backbone`` renamed
    ``model.pretrained_encoder`` (a recipe with the old key is an error; a checkpoint is not)."""
    model = dict(config.get("model") or {})
    if "pretrained_encoder" not in model:
        return config
    old = model.pop("pretrained_encoder")
    if old is not None:
        model.setdefault("weights_backbone", old)
    return {**config, "model": model}


def model_from_checkpoint(ckpt: Checkpoint | dict[str, Any], path: str | Path = "checkpoint") -> nn.Module:
    """Rebuild the model recorded in ``ckpt`` and load its weights (no data or recipe needed)."""
    ckpt = ckpt if isinstance(ckpt, Checkpoint) else Checkpoint.from_dict(ckpt)
    meta = ckpt.meta
    kwargs = {k: v for k, v in meta.model_kwargs.items() if k not in _FETCHING_KWARGS}
    model = create_model(meta.model_name, meta.model_num_classes, **kwargs)
    try:
        model.load_state_dict(ckpt.model)
    except RuntimeError as e:
        first = str(e).splitlines()[1:3]
        raise SeglabError(f"Weights of {meta.model_name} ({meta.num_classes} classes) from {path} do not fit the "
                          f"model: {' '.join(s.strip() for s in first)}") from e
    return model


def check_compatible(ckpt: Checkpoint | dict[str, Any], model_name: str, num_classes: int, path: str | Path,
                     task: str | None = None) -> None:
    """Raise a clear error when a checkpoint was made for another task, model or class count."""
    meta = ckpt.meta if isinstance(ckpt, Checkpoint) else Checkpoint.from_dict(ckpt).meta
    if task is not None and meta.task != task:
        raise SeglabError(
            f"Checkpoint {str(path)!r} was trained for task: {meta.task} ({meta.model_name}), but task: {task} was asked "
            f"for (--task / the recipe's task:). Use --task {meta.task}, or a checkpoint trained with task: {task}."
        )
    if meta.model_name != model_name:
        raise SeglabError(
            f"Checkpoint {str(path)!r} holds a {meta.model_name!r} model, but {model_name!r} was asked for. "
            f"Use --model.name {meta.model_name} or a checkpoint of {model_name!r}."
        )
    if meta.num_classes != num_classes:
        raise SeglabError(
            f"Checkpoint {str(path)!r} predicts {meta.num_classes} classes ({', '.join(meta.class_names)}), "
            f"but the data set has {num_classes}. Evaluate it on data with the same classes, "
            f"or train a new model for these {num_classes} classes."
        )
