"""ISBI 2012 EM membrane segmentation (the U-Net paper's data set): ``--data.dataset isbi2012``.

Layout under the root (a parent folder holding ``isbi2012/`` is accepted too)::

    images/00.png ... images/23.png      grayscale 512x512 serial-section EM slices
    labels/00.png ... labels/23.png      255 = cell interior, 0 = membrane
    test/images/*.png, test/labels/*.png (or test.txt)   an optional held-out split

Classes are mapped explicitly: file value 0 -> class 0 ``membrane``, 255 -> class 1
``cell``. Any other value is an error naming the file; nothing is silently ignored.
Images are read as RGB (the gray value repeated in 3 channels), so every model works.

Splits: only the labelled slices of ``images/`` are given, so ``train`` and ``val`` are
carved from them by position in sorted file order: ``val`` is ``--data.val_indices``
(default: the last 4, i.e. slices 20..23) and ``train`` is every other slice. Any other
split name (``test``) is a held-out folder ``<split>/images`` + ``<split>/labels``, or a
list file ``<split>.txt`` of ``image_path label_path`` lines relative to the root.

With ``--data.weight_maps true`` an item is ``(image, mask, weight_map)``: U-Net's
weight map (:mod:`.weight_map`), computed once per slice (at ``image_size``), cached,
and carried through the same random scale, crop and flip as the mask.

Example:
    >>> cfg = DataConfig(dataset="isbi2012", root="../shared/data/isbi2012", weight_maps=True)
    >>> image, mask, weights = build_dataset(cfg, "train", train=True)[0]   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from seglab.core.config import DataConfig
from seglab.core.errors import SeglabError
from seglab.data.base import DatasetInfo, SegmentationDataset, Transform
from seglab.data.cache import ArrayCache
from seglab.data.camvid import parse_list_file
from seglab.data.folder import pair_by_stem
from seglab.data.io import describe_bad_values, read_mask_of_image
from seglab.data.transforms import build_transforms
from seglab.data.weight_map import transform_with_weight_map, unet_weight_map

__all__ = [
    "ISBI_CLASSES",
    "ISBI_PALETTE",
    "ISBI_LABEL_VALUES",
    "ISBI2012Dataset",
    "map_isbi_labels",
    "resolve_isbi_root",
    "isbi_samples",
    "build_isbi",
]

ISBI_CLASSES = ["membrane", "cell"]
ISBI_PALETTE: list[tuple[int, int, int]] = [(0, 0, 0), (255, 255, 255)]
ISBI_LABEL_VALUES = {0: 0, 255: 1}  # value in the label PNGs -> class id
_DEFAULT_VAL_COUNT = 4
ISBI_FILE_EXTS = (".png", ".tif", ".tiff")  # slices and labels alike


def map_isbi_labels(raw: np.ndarray, path: str | Path) -> np.ndarray:
    """Map an ISBI label image (0 membrane, 255 cell) to class ids (0, 1), as ``uint8``.

    Raises:
        SeglabError: naming ``path`` and the offending values when the file holds anything else.
    """
    values = np.unique(raw)
    bad = values[~np.isin(values, list(ISBI_LABEL_VALUES))]
    if bad.size:
        raise SeglabError(
            f"ISBI 2012 label {str(path)!r} holds value(s) {describe_bad_values(bad)}, but ISBI labels may only be "
            "0 (membrane) or 255 (cell interior). Re-export the label as a binary 8-bit PNG, or use "
            "--data.dataset folder with --data.num_classes for other label sets."
        )
    return (raw == 255).astype(np.uint8)


def resolve_isbi_root(root: str | Path | None) -> Path:
    """The ISBI folder (holding ``images/`` and ``labels/``); a parent holding ``isbi2012/`` works too."""
    if root is None or str(root) == "":
        raise SeglabError("ISBI 2012 needs its folder: set --data.root (e.g. --data.root ../shared/data/isbi2012).")
    path = Path(root).expanduser()
    if not (path / "images").is_dir() and (path / "isbi2012" / "images").is_dir():
        path = path / "isbi2012"
    if not (path / "images").is_dir():
        raise SeglabError(
            f"ISBI 2012 root {str(path)!r} has no images/ folder. Point --data.root at the folder holding "
            "images/NN.png and labels/NN.png."
        )
    return path


def _labelled_pairs(image_dir: Path, label_dir: Path) -> list[tuple[Path, Path]]:
    if not label_dir.is_dir():
        raise SeglabError(f"ISBI 2012: {str(label_dir)!r} is missing; put one label PNG per slice of "
                          f"{str(image_dir)!r} there.")
    pairing = pair_by_stem(image_dir, label_dir, ISBI_FILE_EXTS, ISBI_FILE_EXTS)
    if pairing.duplicate_stems:
        shown = ", ".join(sorted(set(pairing.duplicate_stems))[:5])
        raise SeglabError(f"ISBI 2012: several files share the stem(s) {shown} in {str(image_dir)!r} or "
                          f"{str(label_dir)!r}; pairing by name is ambiguous.")
    if pairing.images_without_masks:
        names = ", ".join(p.name for p in pairing.images_without_masks[:5])
        raise SeglabError(f"ISBI 2012: {len(pairing.images_without_masks)} slice(s) in {str(image_dir)!r} have no "
                          f"label in {str(label_dir)!r} (e.g. {names}); each slice needs a label with the same name.")
    if not pairing.pairs:
        raise SeglabError(f"ISBI 2012: no image/label pairs in {str(image_dir)!r} and {str(label_dir)!r}.")
    return pairing.pairs


def _val_positions(n: int, val_indices: Sequence[int] | None) -> set[int]:
    if val_indices is None:
        if n <= _DEFAULT_VAL_COUNT:
            raise SeglabError(f"ISBI 2012: only {n} labelled slice(s), too few to hold out the last "
                              f"{_DEFAULT_VAL_COUNT} for validation; set --data.val_indices (e.g. [0]) explicitly.")
        return set(range(n - _DEFAULT_VAL_COUNT, n))
    chosen = [int(k) for k in val_indices]
    bad = [k for k in chosen if not 0 <= k < n]
    if bad or len(set(chosen)) != len(chosen):
        raise SeglabError(f"--data.val_indices {list(val_indices)} must be distinct slice positions in [0, {n - 1}] "
                          f"(there are {n} labelled slices, in sorted file order).")
    return set(chosen)


def _held_out_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    if (root / split / "images").is_dir():
        return _labelled_pairs(root / split / "images", root / split / "labels")
    list_path = root / f"{split}.txt"
    if list_path.is_file():
        pairs, missing = parse_list_file(list_path, root)
        if missing:
            shown = "; ".join(f"line {n}: {p}" for n, p in missing[:5])
            raise SeglabError(f"ISBI 2012: files listed in {str(list_path)!r} do not exist under {str(root)!r}: "
                              f"{shown}.")
        if pairs:
            return pairs
    raise SeglabError(
        f"ISBI 2012 has no split {split!r} under {str(root)!r}: the labelled slices of images/ give the train and val "
        f"splits; a held-out split needs {split}/images/ + {split}/labels/ or a list file {split}.txt."
    )


def isbi_samples(root: str | Path, split: str, *, train_split: str = "train", val_split: str = "val",
                 val_indices: Sequence[int] | None = None) -> list[tuple[Path, Path]]:
    """``(image, label)`` pairs of ``split`` (see the module docstring for how splits are formed).

    Raises:
        SeglabError: missing folders or labels, bad ``val_indices``, an unknown or empty split.
    """
    root = Path(root)
    if split not in (train_split, val_split):
        return _held_out_pairs(root, split)
    labelled = _labelled_pairs(root / "images", root / "labels")
    val = _val_positions(len(labelled), val_indices)
    want_val = split == val_split and split != train_split
    pairs = [pair for k, pair in enumerate(labelled) if (k in val) == want_val]
    if not pairs:
        raise SeglabError(f"ISBI 2012 split {split!r} is empty with --data.val_indices {val_indices}: "
                          "leave at least one labelled slice for each of train and val.")
    return pairs


class ISBI2012Dataset(SegmentationDataset):
    """ISBI 2012 slices; items are ``(image, mask)`` or, with ``weight_maps``, ``(image, mask, weight_map)``.

    Args:
        samples: ``(image_path, label_path)`` pairs.
        info: Two classes (membrane, cell) and the ignore index (padding only).
        transform: A :class:`~seglab.data.transforms.SegmentationTransform` (or None).
        image_size: Optional ``[H, W]`` resize at load time.
        split: Split name.
        root: Data set root.
        weight_maps: Also return U-Net's weight map, transformed jointly with the mask.
        w0: Border weight of the weight map.
        sigma: Border width of the weight map, in pixels at ``image_size``.
        balance: Class-balancing term ``w_c`` (True) or ``w_c = 1`` (False).
    """

    def __init__(self, samples: Sequence[tuple[Path, Path]], info: DatasetInfo, *, transform: Transform | None = None,
                 image_size: Sequence[int] | None = None, split: str = "", root: str | Path | None = None,
                 weight_maps: bool = False, w0: float = 10.0, sigma: float = 5.0, balance: bool = True) -> None:
        super().__init__(samples, info, transform=transform, image_size=image_size, kind="isbi2012", split=split,
                         root=root)
        self.weight_maps = bool(weight_maps)
        self.w0, self.sigma, self.balance = float(w0), float(sigma), bool(balance)
        self._weights = ArrayCache(len(self.samples), self._expected_hw(), np.float32)

    def _decode_mask(self, i: int) -> np.ndarray:
        image_path, label_path = self.samples[i]
        raw = read_mask_of_image(image_path, label_path, "ISBI 2012", "slice")
        return map_isbi_labels(raw, label_path)

    def _cached_weight_map(self, i: int) -> np.ndarray:
        arr = self._weights.get(i)
        if arr is None:
            arr = unet_weight_map(self._cached_mask(i), foreground=1, w0=self.w0, sigma=self.sigma,
                                  balance=self.balance, ignore_index=self.info.ignore_index)
            arr = self._weights.put(i, arr)
        return arr

    def load_weight_map(self, i: int) -> np.ndarray:
        """U-Net weight map of slice ``i`` at ``image_size``: ``float32 H x W`` (a copy)."""
        return np.array(self._cached_weight_map(self._check_index(i)))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        if not self.weight_maps:
            return super().__getitem__(i)
        i = self._check_index(i)
        image, mask, weights = self._cached_image(i), self._cached_mask(i), self._cached_weight_map(i)
        if self.transform is None:
            img = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div_(255.0)
            return img, torch.from_numpy(mask.astype(np.int64)), torch.from_numpy(np.array(weights))
        return transform_with_weight_map(self.transform, image, mask, weights, self.info.ignore_index)


def build_isbi(cfg: DataConfig, info: DatasetInfo, split: str, train: bool) -> ISBI2012Dataset:
    """The ISBI 2012 data set of ``split`` from the data config (used by :func:`~seglab.data.build_dataset`)."""
    if cfg.weight_map_sigma <= 0 or cfg.weight_map_w0 < 0:
        raise SeglabError(f"--data.weight_map_sigma must be > 0 and --data.weight_map_w0 >= 0, got "
                          f"{cfg.weight_map_sigma} and {cfg.weight_map_w0}.")
    root = resolve_isbi_root(cfg.root)
    samples = isbi_samples(root, split, train_split=cfg.train_split, val_split=cfg.val_split,
                           val_indices=cfg.val_indices)
    if cfg.limit is not None:
        samples = samples[: cfg.limit]
    return ISBI2012Dataset(samples, info, transform=build_transforms(cfg, train, info.ignore_index),
                           image_size=cfg.image_size, split=split, root=root, weight_maps=cfg.weight_maps,
                           w0=cfg.weight_map_w0, sigma=cfg.weight_map_sigma, balance=cfg.weight_map_balance)
