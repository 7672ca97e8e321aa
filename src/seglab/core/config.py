"""Typed configuration: dataclasses filled from YAML recipes and ``--section.key value`` overrides.

The dataclasses are the single source of truth. A recipe (``configs/*.yaml``) sets
some fields; command-line overrides set more; the resolved config is written into
every run folder and every checkpoint, so a checkpoint can rebuild its model alone.

Example:
    >>> cfg = load_config("configs/segnet_basic_camvid.yaml", ["--train.epochs", "2"])
    >>> cfg.train.epochs
    2
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from seglab.core.atomic import atomic_write_text
from seglab.core.errors import SeglabError, did_you_mean

__all__ = [
    "ModelConfig",
    "DataConfig",
    "LossConfig",
    "TrainConfig",
    "Config",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "check_training_config",
]

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class ModelConfig:
    """Which architecture to build and how."""

    name: str = "segnet_basic"
    # Extra keyword arguments for the model builder (e.g. ``{upsample: bilinear}``).
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Whole-model weights loaded after building: a URL or the path of a state dict.
    weights: str | None = None
    # Backbone weights: ``imagenet`` (torchvision's ImageNet weights), a URL or a state-dict path.
    weights_backbone: str | None = None


#: Keys of older recipes and the key that replaced each.
RENAMED_KEYS: dict[str, str] = {
    "model.pretrained_encoder": "model.weights_backbone",
    "model.kwargs.pretrained_encoder": "model.weights_backbone",
    "model.kwargs.pretrained_backbone": "model.weights_backbone",
}


def _check_renamed(key: str, value: Any) -> None:
    """Raise a :class:`SeglabError` naming the new key when ``key`` is one of :data:`RENAMED_KEYS`."""
    if key in RENAMED_KEYS:
        new = RENAMED_KEYS[key]
        section, name = new.split(".", 1)
        shown = "null" if value is None else value
        raise SeglabError(f"Config key {key!r} was renamed to {new!r}: write `{name}: {shown}` under `{section}:` "
                          f"in the recipe, or --{new} {shown} on the command line.")


@dataclass
class DataConfig:
    """Where the data is and how it is augmented."""

    dataset: str = "synthetic"  # camvid | folder | synthetic | isbi2012
    root: str | None = None
    # A split name, optionally with file-name prefixes: "train:0016E5,0006R0" keeps the frames of
    # those CamVid sequences, so a recipe can validate on a sequence it does not train on.
    train_split: str = "train"
    val_split: str = "val"
    # Folder data sets: number of classes, their names, RGB palette and palette-coded masks.
    num_classes: int | None = None
    class_names: list[str] | None = None
    palette: list[list[int]] | None = None
    rgb_masks: bool = False
    ignore_index: int | None = None  # None: the data set's own (CamVid 11, otherwise 255)
    # Geometry. ``image_size`` [H, W] resizes every image first (e.g. half-resolution CamVid).
    image_size: list[int] | None = None
    infer_scale: float = 1.0  # semantic validation and inference run at image_size x this (data.inference_size)
    crop_size: list[int] | None = None
    scale_range: list[float] = field(default_factory=lambda: [1.0, 1.0])
    hflip: bool = True
    # Vertical flips and random quarter turns: for data without an "up" (EM slices), not road scenes.
    vflip: bool = False
    rotate90: bool = False
    color_jitter: float = 0.0  # brightness, contrast and saturation factors in [1 - s, 1 + s]
    hue_jitter: float = 0.0  # hue shift in [-h, h] of a full turn (0 <= h <= 0.5), with the colour jitter
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    num_workers: int = 2
    limit: int | None = None  # keep only the first N samples of each split (smoke runs)
    # The built-in synthetic road scenes.
    synthetic_train: int = 240
    synthetic_val: int = 48
    synthetic_size: list[int] = field(default_factory=lambda: [96, 128])
    synthetic_seed: int = 0
    # isbi2012: positions (in sorted file order) of the labelled slices held out as the val
    # split; the other slices train. None: the last 4 (slices 20..23 of the 24 given).
    val_indices: list[int] | None = None
    # U-Net weight maps (isbi2012): items become (image, mask, weight_map) for loss.name
    # weighted_map_ce. w = w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2)); sigma in pixels.
    weight_maps: bool = False
    weight_map_w0: float = 10.0
    weight_map_sigma: float = 5.0
    weight_map_balance: bool = True  # w_c = f_max / f_class (True) or 1 (False)


#: Named ``loss.class_weights`` methods (computed from the training masks by
#: :mod:`seglab.data.class_weights`); a list of numbers is the other accepted form.
CLASS_WEIGHT_METHODS = ("none", "median_frequency", "median_frequency_sqrt", "inverse_frequency")


@dataclass
class LossConfig:
    """Training loss. ``class_weights``: one of :data:`CLASS_WEIGHT_METHODS` or [w0, w1, ...]."""

    name: str = "cross_entropy"  # cross_entropy | dice | ce_dice | bce_dice | focal | weighted_map_ce
    class_weights: Any = "median_frequency"
    dice_weight: float = 1.0  # weight of the Dice term in ce_dice and bce_dice
    dice_smooth: float = 1.0  # smoothing added to the Dice numerator and denominator
    focal_gamma: float = 2.0  # focusing parameter of focal; 0 gives cross-entropy


@dataclass
class TrainConfig:
    """Optimisation, schedule, precision and bookkeeping."""

    epochs: int = 10
    batch_size: int = 4
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "constant"  # constant | poly | cosine
    warmup_epochs: float = 0.0
    poly_power: float = 0.9
    min_lr_ratio: float = 0.0
    grad_clip: float | None = None
    # Exponential moving average of the weights (BN statistics too), e.g. 0.998; 0 turns it off.
    # When on, validation, best.pt and last.pt's weights are the average (seglab.engine.averaging).
    ema_decay: float = 0.0
    seed: int = 0
    val_every: int = 1
    val_bf: bool = True  # compute boundary F1 during validation (slower)
    # BF rules, in validation and `seglab evaluate`: fast (void masked, distance matching) or paper
    # (the SegNet script's: no void mask, one-to-one matching); see seglab.metrics.boundary.
    bf_protocol: str = "fast"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto | bf16 | fp16 | none
    # Channels-last helps GPUs and AVX-512 CPUs; on an AVX2 CPU it made conv backward 2.3x slower
    # (torch 2.15, SegNet-Basic 180x240), so training defaults to NCHW.
    channels_last: bool = False
    threads: int | None = None
    out_dir: str = "runs"
    run_name: str | None = None
    resume: str | None = None
    # Fine-tuning: start from this checkpoint's model weights (same model and classes), with a
    # fresh optimizer, schedule and epoch count; unlike ``resume``, the config may differ.
    init_from: str | None = None
    max_steps_per_epoch: int | None = None
    select_metric: str = "miou"  # metric picking the best checkpoint
    log_format: str = "jsonl"  # jsonl | csv
    progress: bool = True
    # Distributed training (torchrun; docs/distributed.md). batch_size stays the global batch.
    dist_backend: str = "auto"  # auto (nccl with CUDA, gloo without) | gloo | nccl
    dist_timeout: float = 600.0  # seconds any collective may wait for the other ranks before the job fails
    sync_bn: bool = False  # SyncBatchNorm across ranks (CUDA only)

    #: The choices of ``bf_protocol`` (``seglab.metrics.BF_PROTOCOLS``; core does not import metrics).
    BF_PROTOCOLS: typing.ClassVar[tuple[str, ...]] = ("fast", "paper")

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "bf_protocol" and value not in self.BF_PROTOCOLS:  # recipes, overrides and the constructor
            raise SeglabError(f"Config key 'train.bf_protocol' must be one of: {', '.join(self.BF_PROTOCOLS)}; "
                              f"got {value!r}.{did_you_mean(str(value), self.BF_PROTOCOLS)}")
        super().__setattr__(name, value)


@dataclass
class Config:
    """A whole experiment. ``task`` names what is predicted (``semantic``: a class per pixel)."""

    task: str = "semantic"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------- conversion


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently convert) ``value`` against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except SeglabError:
                pass
        raise SeglabError(f"Config key {key!r} expects {_type_name(tp)}, got {value!r}.")
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise SeglabError(f"Config key {key!r} expects a list, got {value!r} (write it as [a, b]).")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SeglabError(f"Config key {key!r} expects a mapping, got {value!r}.")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise SeglabError(f"Config key {key!r} expects true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise SeglabError(f"Config key {key!r} expects an integer, got {value!r}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot in the mantissa) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise SeglabError(f"Config key {key!r} expects a number, got {value!r}.")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise SeglabError(f"Config key {key!r} expects a string, got {value!r}.")
    return value


def _fill(obj: Any, data: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        full = f"{prefix}{key}"
        _check_renamed(full, value)
        if key not in names:
            all_keys = [f"{prefix}{n}" for n in names]
            raise SeglabError(f"Unknown config key {full!r}.{did_you_mean(full, all_keys)} Valid keys: {', '.join(all_keys)}.")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise SeglabError(f"Config section {full!r} must be a mapping, got {value!r}.")
            _fill(current, value, f"{full}.")
        else:
            value = _coerce(value, hints[key], full)
            if isinstance(value, dict):  # model.kwargs: builder options may have been renamed too
                for name, item in value.items():
                    _check_renamed(f"{full}.{name}", item)
            setattr(obj, key, value)


def config_from_dict(data: dict[str, Any] | None) -> Config:
    """Build a :class:`Config` from a nested dict (unknown keys raise with a suggestion)."""
    cfg = Config()
    _fill(cfg, data or {}, "")
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict of ``cfg`` (YAML- and checkpoint-safe)."""
    return dataclasses.asdict(cfg)


def _all_keys(obj: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys += _all_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``["--train.epochs", "2", "--data.root=path"]`` to ``cfg`` in place and return it.

    Values are parsed as YAML scalars, so ``2`` is an int, ``[1, 2]`` a list and ``null`` None.
    A key under ``model.kwargs.`` sets a model keyword argument.
    """
    items = list(overrides)
    i = 0
    while i < len(items):
        token = items[i]
        if not token.startswith("--"):
            raise SeglabError(f"Unexpected argument {token!r}: overrides look like --section.key value.")
        key = token[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(items):
                raise SeglabError(f"Override {token!r} has no value: write {token} VALUE.")
            raw = items[i + 1]
            i += 2
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_key(cfg, key, value)
    return cfg


def _set_key(cfg: Config, key: str, value: Any) -> None:
    _check_renamed(key, value)
    if key.startswith("model.kwargs."):
        cfg.model.kwargs[key[len("model.kwargs.") :]] = value
        return
    valid = _all_keys(cfg)
    if key not in valid:
        section = key.split(".", 1)[0]
        same = [k for k in valid if k.startswith(f"{section}.")]
        listed = (f"Keys under {section}: {', '.join(same)}." if same else
                  f"Keys start with one of: {', '.join(sorted({k.split('.', 1)[0] for k in valid}))}.")
        raise SeglabError(f"Unknown config key {key!r}.{did_you_mean(key, valid)} {listed}")
    if "." not in key:  # a top-level setting such as ``task``
        _fill(cfg, {key: value}, "")
        return
    section, name = key.split(".", 1)
    sub = getattr(cfg, section)
    _fill(sub, {name: value}, f"{section}.")


def check_training_config(cfg: Config) -> None:
    """Clear errors, before any data is read, for settings that cannot train (else raw tracebacks later)."""
    t, d = cfg.train, cfg.data
    if not t.lr > 0 or t.lr == float("inf"):
        raise SeglabError(f"train.lr must be a positive number, got {t.lr}: e.g. --train.lr 0.01 (SGD) or 1e-3 (AdamW).")
    for key, value in (("batch_size", t.batch_size), ("epochs", t.epochs)):
        if value < 1:
            raise SeglabError(f"train.{key} must be at least 1, got {value}.")
    if not 0.0 <= t.ema_decay < 1.0:
        raise SeglabError(f"train.ema_decay must be in [0, 1) (0 turns the weight average off), got {t.ema_decay}: "
                          "e.g. --train.ema_decay 0.998.")
    if t.max_steps_per_epoch is not None and t.max_steps_per_epoch < 1:
        raise SeglabError(f"train.max_steps_per_epoch must be at least 1 (or null for whole epochs), got {t.max_steps_per_epoch}.")
    if d.crop_size is None and list(d.scale_range) != [1.0, 1.0] and t.batch_size > 1:
        raise SeglabError(f"data.scale_range {d.scale_range} rescales every image to a different size, so a batch "
                          "cannot be stacked without a crop: set --data.crop_size [H,W] (e.g. [144,192]) or "
                          "--data.scale_range [1,1].")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML recipe (or the defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise SeglabError(f"Recipe {str(path)!r} does not exist. Recipes live in configs/, e.g. configs/segnet_basic_camvid.yaml.")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise SeglabError(f"Recipe {str(path)!r} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise SeglabError(f"Recipe {str(path)!r} must be a mapping of sections (model, data, loss, train).")
    try:
        cfg = config_from_dict(data)
    except SeglabError as e:
        raise SeglabError(f"In recipe {str(path)!r}: {e}") from e
    return apply_overrides(cfg, overrides or [])


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
