"""Class-balancing loss weights from the training masks, cached on disk.

Frequencies follow SegNet (Badrinarayanan et al., after Eigen & Fergus): for class ``c``

    f_c = (pixels of class c) / (total pixels of the training images in which c appears)

where ignore/void pixels count in neither numerator nor denominator. Then

* ``median_frequency``: ``w_c = median(f) / f_c``, the median over the classes present;
* ``median_frequency_sqrt``: ``w_c = sqrt(median(f) / f_c)``, the same balance tempered:
  on CamVid (train, 180x240) the range 0.15-8.8 shrinks to 0.39-3.0, so a short training
  does not give a large class (Building) away to over-predicted rare ones;
* ``inverse_frequency``: ``w_c = 1 / f_c``, rescaled so the mean over present classes is 1.

A class absent from the training masks gets weight 0 (it cannot be learnt, and an
infinite weight would be meaningless). Weights are computed from the *training* split
at ``image_size`` (as the model will see it), and cached as JSON in
``$SEGLAB_CACHE_DIR/class_weights/`` (default ``~/.cache/seglab/class_weights/``) under
a hash of everything that determines them, so a second run starts at once.

Example:
    >>> compute_class_weights(cfg.data, "median_frequency")   # doctest: +SKIP
    tensor([0.2595, 0.1826, 4.5640, ...])
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seglab.core.atomic import atomic_write_text
from seglab.core.config import CLASS_WEIGHT_METHODS as WEIGHT_METHODS
from seglab.core.config import DataConfig
from seglab.core.errors import SeglabError, did_you_mean
from seglab.data.build import build_dataset, dataset_info

__all__ = [
    "WEIGHT_METHODS",
    "class_pixel_stats",
    "frequencies",
    "weights_from_stats",
    "compute_class_weights",
    "cache_dir",
]

_CACHE_VERSION = 1


def class_pixel_stats(
    masks: Iterable[np.ndarray], num_classes: int, ignore_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class pixel counts and per-class "pixels of the images containing the class".

    Returns:
        ``(counts, image_totals)``, both ``int64 [num_classes]``.
    """
    counts = np.zeros(num_classes, np.int64)
    totals = np.zeros(num_classes, np.int64)
    for mask in masks:
        valid = mask[(mask != ignore_index) & (mask >= 0) & (mask < num_classes)]
        hist = np.bincount(valid.ravel().astype(np.int64), minlength=num_classes)[:num_classes]
        counts += hist
        totals[hist > 0] += valid.size  # this image's labelled pixels count for every class it contains
    return counts, totals


def frequencies(counts: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """``f_c = counts_c / totals_c`` (0 for classes never seen)."""
    counts, totals = np.asarray(counts, np.float64), np.asarray(totals, np.float64)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def weights_from_stats(counts: np.ndarray, totals: np.ndarray, method: str) -> np.ndarray:
    """Weights from :func:`class_pixel_stats` output (see the module docstring for the formulas)."""
    freq = frequencies(counts, totals)
    present = freq > 0
    weights = np.zeros_like(freq)
    if not present.any():
        return weights
    if method in ("median_frequency", "median_frequency_sqrt"):
        weights[present] = np.median(freq[present]) / freq[present]
        if method == "median_frequency_sqrt":
            weights[present] = np.sqrt(weights[present])
    elif method == "inverse_frequency":
        weights[present] = 1.0 / freq[present]
        weights[present] /= weights[present].mean()
    else:
        raise SeglabError(f"Unknown class weight method {method!r}.{did_you_mean(method, WEIGHT_METHODS)}")
    return weights


def cache_dir() -> Path:
    """``$SEGLAB_CACHE_DIR/class_weights``, else ``$XDG_CACHE_HOME/seglab/...``, else ``~/.cache/seglab/...``."""
    base = os.environ.get("SEGLAB_CACHE_DIR")
    if base:
        return Path(base).expanduser() / "class_weights"
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return root / "seglab" / "class_weights"


def _cache_key(cfg: DataConfig, dataset: Any, method: str) -> str:
    info = dataset.info
    key = {
        "version": _CACHE_VERSION,
        "dataset": dataset.kind,
        "root": str(dataset.root) if dataset.root is not None else None,
        "split": dataset.split,
        "content": dataset.fingerprint(),
        "image_size": list(dataset.image_size) if dataset.image_size else None,
        "num_classes": info.num_classes,
        "ignore_index": info.ignore_index,
        "method": method,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _read_cache(path: Path, num_classes: int) -> list[float] | None:
    try:
        data = json.loads(path.read_text())
        weights = [float(w) for w in data["weights"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or damaged: recompute
    return weights if len(weights) == num_classes else None


def _write_cache(path: Path, payload: dict[str, Any]) -> None:
    try:
        atomic_write_text(path, json.dumps(payload, indent=1))  # readers never see a half-written file
    except OSError:
        pass  # an unwritable cache only costs recomputation next time


def _explicit(weights: Sequence[Any], num_classes: int) -> torch.Tensor:
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError) as e:
        raise SeglabError(f"--loss.class_weights list must hold numbers, got {list(weights)}.") from e
    if len(values) != num_classes or min(values) < 0:
        raise SeglabError(
            f"--loss.class_weights has {len(values)} values but the data set has {num_classes} classes; "
            "give one non-negative weight per class."
        )
    return torch.tensor(values, dtype=torch.float32)


def compute_class_weights(cfg: DataConfig, method: str | Sequence[float] | None) -> torch.Tensor | None:
    """Loss weights for the configured data set's classes.

    Args:
        cfg: Data config; the weights come from its training split (``cfg.train_split``),
            honouring ``limit`` and ``image_size``.
        method: ``none`` (or None), ``median_frequency``, ``median_frequency_sqrt``,
            ``inverse_frequency``, or an explicit list of one weight per class.

    Returns:
        ``torch.float32 [num_classes]``, or None for ``none``.

    Raises:
        SeglabError: unknown method, a wrong-length list, or any data problem.
    """
    if method is None or (isinstance(method, str) and method.lower() == "none"):
        return None
    if not isinstance(method, str):
        return _explicit(method, dataset_info(cfg).num_classes)
    if method not in WEIGHT_METHODS:
        raise SeglabError(
            f"Unknown class weight method {method!r} (--loss.class_weights).{did_you_mean(method, WEIGHT_METHODS)} "
            f"Use one of {', '.join(WEIGHT_METHODS)} or a list of one weight per class."
        )
    dataset = build_dataset(cfg, cfg.train_split, train=False)
    info = dataset.info
    path = cache_dir() / f"{_cache_key(cfg, dataset, method)}.json"
    cached = _read_cache(path, info.num_classes)
    if cached is not None:
        return torch.tensor(cached, dtype=torch.float32)
    masks = (dataset.load_mask(i) for i in range(len(dataset)))
    counts, totals = class_pixel_stats(masks, info.num_classes, info.ignore_index)
    weights = weights_from_stats(counts, totals, method)
    payload = {
        "method": method,
        "dataset": dataset.kind,
        "root": str(dataset.root) if dataset.root is not None else None,
        "split": dataset.split,
        "class_names": info.class_names,
        "weights": weights.tolist(),
        "pixel_counts": counts.tolist(),
        "image_pixel_totals": totals.tolist(),
    }
    _write_cache(path, payload)
    return torch.tensor(weights, dtype=torch.float32)
