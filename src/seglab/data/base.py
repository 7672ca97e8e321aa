"""The data set core: :class:`DatasetInfo` and the file-backed :class:`SegmentationDataset`.

A data set is a list of ``(image_path, mask_path)`` samples plus a :class:`DatasetInfo`.
Each sample is decoded once, resized to ``image_size`` when set (bilinear image,
nearest mask), validated (mask size, mask values) and cached; ``ds[i]`` then applies the
(random) transform and returns ``(image float32 3xHxW, mask int64 HxW)``.

Example:
    >>> ds = SegmentationDataset([("a.png", "a_mask.png")], info)   # doctest: +SKIP
    >>> img, mask = ds[0]
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from seglab.core.errors import SeglabError
from seglab.data.cache import ArrayCache
from seglab.data.io import (
    describe_bad_values, image_hw, read_image, read_mask, read_rgb_mask, resize_image, resize_mask
)

__all__ = ["DatasetInfo", "SegmentationDataset", "validate_mask_values", "mask_storage_dtype"]

Transform = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class DatasetInfo:
    """What a model and the metrics need to know about a data set.

    Attributes:
        num_classes: Number of real classes (ids ``0 .. num_classes-1``).
        class_names: One name per class.
        palette: One ``(r, g, b)`` colour per class, for visualisation.
        ignore_index: Mask value excluded from the loss and the metrics.
    """

    num_classes: int
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    ignore_index: int


def mask_storage_dtype(num_classes: int, ignore_index: int) -> np.dtype:
    """Smallest dtype holding every valid mask value (cache memory and resize speed)."""
    if num_classes <= 256 and 0 <= ignore_index <= 255:
        return np.dtype(np.uint8)
    return np.dtype(np.int32)


def _is_binary_0_255(values: np.ndarray) -> bool:
    return values.size > 0 and 255 in values and set(values.tolist()) <= {0, 255}


def _present_values(mask: np.ndarray) -> np.ndarray:
    """Distinct values of ``mask`` (bincount is much faster than unique for uint8)."""
    if mask.dtype == np.uint8:
        return np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    return np.unique(mask)


def _looks_like_instance_ids(mask: np.ndarray, values: np.ndarray, num_classes: int) -> bool:
    """A 16- or 32-bit PNG (as :func:`read_mask` gives them), or values 0, 1, ..., N with no gap and N past
    the classes: object ids. Class maps rarely number their values without a gap beyond ``num_classes``;
    id PNGs do (one per object).
    """
    if mask.dtype in (np.uint16, np.int32):
        return True
    nonzero = values[values != 0]
    return nonzero.size >= 3 and nonzero[0] == 1 and nonzero[-1] == nonzero.size and nonzero[-1] >= num_classes


def validate_mask_values(mask: np.ndarray, num_classes: int, ignore_index: int, path: str | Path) -> None:
    """Raise a :class:`SeglabError` when ``mask`` has values outside ``[0, C)`` other than ``ignore_index``."""
    if mask.size == 0 or (mask.min() >= 0 and mask.max() < num_classes):
        return  # the common case, two cheap reductions
    values = _present_values(mask)
    bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_index)]
    if bad.size == 0:
        return
    if _is_binary_0_255(values):
        hint = (
            "It looks like a 0/255 binary mask; map 255 to class 1 (e.g. np.where(mask == 255, 1, 0)) "
            "and use --data.num_classes 2, or set --data.ignore_index 255 if 255 means void."
        )
    elif _looks_like_instance_ids(mask, values, num_classes):
        kind = "a 16-bit PNG" if mask.dtype == np.uint16 else "a 32-bit PNG" if mask.dtype == np.int32 else "ids 1, 2, ..."
        hint = (
            f"It looks like an instance-id PNG ({kind}; {int((values != 0).sum())} nonzero values, one per object), "
            "not class ids. For instance segmentation put it in instances/ and use --data.dataset instance_folder "
            f"with task: instance; if these are real classes set --data.num_classes {int(bad.max()) + 1} (or more)."
        )
    else:
        hint = (
            f"If these are real classes set --data.num_classes {int(bad.max()) + 1} (or more); "
            "if one of them marks void pixels set --data.ignore_index to it."
        )
    raise SeglabError(
        f"Mask {str(path)!r} has value(s) {describe_bad_values(bad)} outside the {num_classes} classes "
        f"[0, {num_classes}) (ignore index {ignore_index}). {hint}"
    )


class SegmentationDataset(Dataset):
    """Image/mask pairs read from files, decoded once and cached.

    Args:
        samples: ``(image_path, mask_path)`` pairs.
        info: Classes, palette and ignore index.
        transform: ``fn(image uint8 HxWx3, mask HxW) -> (float tensor, int64 tensor)``;
            None returns the image scaled to ``[0, 1]`` without normalisation.
        image_size: ``[H, W]`` every sample is resized to at load time, or None.
        kind: Data set kind (``camvid``, ``folder``, ...), for messages and cache keys.
        split: Split name, for messages and cache keys.
        root: Data set root, for cache keys.
        void_value: A mask value that means void in the files; it is mapped to
            ``info.ignore_index`` when the two differ (CamVid's 11).
        rgb_palette: When given, masks are colour-coded and mapped through it.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Any, Any]],
        info: DatasetInfo,
        *,
        transform: Transform | None = None,
        image_size: Sequence[int] | None = None,
        kind: str = "files",
        split: str = "",
        root: str | Path | None = None,
        void_value: int | None = None,
        rgb_palette: Sequence[Sequence[int]] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.info = info
        self.transform = transform
        self.image_size = (int(image_size[0]), int(image_size[1])) if image_size else None
        self.kind = kind
        self.split = split
        self.root = Path(root).resolve() if root is not None else None
        self.void_value = void_value
        self.rgb_palette = [list(c) for c in rgb_palette] if rgb_palette is not None else None
        self._mask_dtype = mask_storage_dtype(info.num_classes, info.ignore_index)
        self._warned_binary = False
        self._init_cache()

    # ------------------------------------------------------------------ cache
    def _init_cache(self) -> None:
        hw = self._expected_hw()
        self._images = ArrayCache(len(self.samples), (*hw, 3) if hw else None, np.uint8)
        self._masks = ArrayCache(len(self.samples), hw, self._mask_dtype)

    def _expected_hw(self) -> tuple[int, int] | None:
        """Shape every cached sample will most likely have (for the shared cache)."""
        if self.image_size is not None:
            return self.image_size
        if not self.samples:
            return None
        try:
            return image_hw(self.samples[0][0])  # header only; a bad file is reported on load
        except SeglabError:
            return None

    # ------------------------------------------------------------------ decoding (overridable)
    def _decode_image(self, i: int) -> np.ndarray:
        return read_image(self.samples[i][0])

    def _decode_mask(self, i: int) -> np.ndarray:
        image_path, mask_path = self.samples[i]
        info = self.info
        if self.rgb_palette is not None:
            mask = read_rgb_mask(mask_path, self.rgb_palette, info.num_classes, info.ignore_index)
        else:
            mask = read_mask(mask_path)
        h, w = image_hw(image_path)
        if mask.shape != (h, w):
            raise SeglabError(
                f"Mask {str(mask_path)!r} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                f"{str(image_path)!r} is {w}x{h}. Masks must have exactly the size of their image: "
                "re-export the mask at the image size (nearest-neighbour resampling) or fix the pairing."
            )
        if self.void_value is not None and self.void_value != info.ignore_index:
            mask = np.where(mask == self.void_value, info.ignore_index, mask.astype(np.int64))
        validate_mask_values(mask, info.num_classes, info.ignore_index, mask_path)
        self._maybe_warn_binary(mask, mask_path)
        return mask

    def _maybe_warn_binary(self, mask: np.ndarray, path: Any) -> None:
        # 0/255 masks pass validation when 255 is the ignore index, but usually mean "255 = foreground".
        if self._warned_binary or self.info.ignore_index != 255 or self.info.num_classes > 255:
            return
        if mask.dtype == np.uint8 and _is_binary_0_255(_present_values(mask)):
            self._warned_binary = True
            warnings.warn(
                f"Mask {str(path)!r} holds only 0 and 255 and 255 is the ignore index, so its foreground "
                "would be ignored. If 255 means class 1, remap the masks (255 -> 1) and set --data.num_classes 2.",
                stacklevel=3,
            )

    # ------------------------------------------------------------------ public access
    def __len__(self) -> int:
        return len(self.samples)

    def _check_index(self, i: int) -> int:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for a data set of {len(self)}")
        return i % len(self)

    def _cached_image(self, i: int) -> np.ndarray:
        arr = self._images.get(i)
        if arr is None:
            arr = self._decode_image(i)
            if self.image_size is not None:
                arr = resize_image(arr, self.image_size)
            arr = self._images.put(i, arr)
        return arr

    def _cached_mask(self, i: int) -> np.ndarray:
        arr = self._masks.get(i)
        if arr is None:
            arr = self._decode_mask(i)
            if self.image_size is not None:
                arr = resize_mask(arr, self.image_size)
            arr = self._masks.put(i, arr.astype(self._mask_dtype, copy=False))
        return arr

    def load_image(self, i: int) -> np.ndarray:
        """Decoded (and resized) image ``i``: ``np.uint8``, ``H x W x 3`` (a copy the caller may modify)."""
        return np.array(self._cached_image(self._check_index(i)))

    def load_mask(self, i: int) -> np.ndarray:
        """Decoded (resized, validated) mask ``i``: ``np.int64``, ``H x W``."""
        return self._cached_mask(self._check_index(i)).astype(np.int64)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self._check_index(i)
        image, mask = self._cached_image(i), self._cached_mask(i)
        if self.transform is not None:
            return self.transform(image, mask)
        img = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div_(255.0)
        return img, torch.from_numpy(mask.astype(np.int64))

    def name_of(self, i: int) -> str:
        """Short name of sample ``i`` (the image file stem), for predictions and logs."""
        return Path(str(self.samples[i][0])).stem

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this data set's content (for cache keys): samples and their mask files' stats."""
        stats = []
        for _, mask_path in self.samples:
            try:
                st = Path(mask_path).stat()
                stats.append([st.st_size, st.st_mtime_ns])
            except OSError:
                stats.append(None)
        return {
            "samples": [[str(a), str(b)] for a, b in self.samples],
            "mask_stats": stats,
            "rgb_palette": self.rgb_palette,
            "void_value": self.void_value,
        }

    def __repr__(self) -> str:
        size = f", image_size={list(self.image_size)}" if self.image_size else ""
        return (
            f"{type(self).__name__}(kind={self.kind!r}, split={self.split!r}, samples={len(self)}, "
            f"num_classes={self.info.num_classes}, ignore_index={self.info.ignore_index}{size})"
        )
