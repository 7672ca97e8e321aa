"""Built-in instance data: ISBI 2012 cells and the synthetic road scenes with instance ids.

**ISBI 2012 cells** (``dataset: isbi2012_cells``): each connected component of the label value
255 (cell interior) is one cell, with **4-connectivity** (pixels joined through an edge, not a
corner), so two cells whose interiors meet only diagonally across a one-pixel membrane stay
apart; components under ``MIN_CELL_AREA`` = 20 pixels (slivers cut by the image border or
membrane gaps, about the 5th percentile of component areas) are not cells. One class, ``cell``
(label 1). Splits as the semantic ISBI set-up: the last 4 labelled slices are val.

**Synthetic instances** (``dataset: synthetic_instances``): the road scenes of
:mod:`seglab.data.synthetic` with every pole and car its own id (classes ``Pole`` 1, ``Car`` 2);
objects occluded to under ``MIN_OBJECT_AREA`` = 8 pixels are dropped. Download-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from seglab.core.errors import SeglabError
from seglab.data.base import DatasetInfo
from seglab.data.instance.base import InstanceDataset
from seglab.data.io import read_image, read_mask
from seglab.data.synthetic import CAR, POLE, SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, render_scene_instances

__all__ = ["ISBI_CELL_CLASSES", "MIN_CELL_AREA", "MIN_OBJECT_AREA", "SYNTHETIC_INSTANCE_CLASSES", "ISBICells",
           "SyntheticInstances", "cell_instances", "isbi_cells_info", "synthetic_instances_info"]

ISBI_CELL_CLASSES = ["background", "cell"]
MIN_CELL_AREA = 20
MIN_OBJECT_AREA = 8
SYNTHETIC_INSTANCE_CLASSES = ["background", SYNTHETIC_CLASSES[POLE], SYNTHETIC_CLASSES[CAR]]
_SYNTHETIC_LABEL = {POLE: 1, CAR: 2}


def isbi_cells_info() -> DatasetInfo:
    return DatasetInfo(2, list(ISBI_CELL_CLASSES), [(0, 0, 0), (255, 255, 255)], 255)


def synthetic_instances_info() -> DatasetInfo:
    return DatasetInfo(3, list(SYNTHETIC_INSTANCE_CLASSES),
                       [(0, 0, 0), tuple(SYNTHETIC_PALETTE[POLE]), tuple(SYNTHETIC_PALETTE[CAR])], 255)


def cell_instances(label: np.ndarray, min_area: int = MIN_CELL_AREA) -> np.ndarray:
    """Boolean ``N x H x W`` masks of the 4-connected components of ``label == 255`` with >= ``min_area`` pixels."""
    components, n = ndimage.label(label == 255)  # scipy's default structure in 2-D: 4-connectivity
    if n == 0:
        return np.zeros((0, *label.shape), bool)
    areas = np.bincount(components.ravel(), minlength=n + 1)
    ids = [k for k in range(1, n + 1) if areas[k] >= min_area]
    return components[None] == np.asarray(ids, dtype=components.dtype).reshape(-1, 1, 1)


class ISBICells(InstanceDataset):
    """ISBI 2012 slices with one instance per cell (see the module docstring)."""

    def __init__(self, samples: Sequence[tuple[Path, Path]], **kwargs) -> None:
        super().__init__([Path(p).stem for p, _ in samples], isbi_cells_info(), kind="isbi2012_cells", **kwargs)
        self.samples = list(samples)

    def _load(self, i: int):
        image_path, label_path = self.samples[i]
        image, label = read_image(image_path), read_mask(label_path)
        if label.shape != image.shape[:2]:
            raise SeglabError(f"ISBI 2012 label {str(label_path)!r} is {label.shape[1]}x{label.shape[0]} but its slice "
                              f"{str(image_path)!r} is {image.shape[1]}x{image.shape[0]}; labels must have their slice's size.")
        values = set(np.unique(label).tolist())
        if not values <= {0, 255}:
            raise SeglabError(f"ISBI 2012 label {str(label_path)!r} holds values {sorted(values)[:6]}; cells as instances "
                              "need the binary labels (255 cell interior, 0 membrane). For an instance-id PNG use "
                              "dataset: instance_folder.")
        masks = cell_instances(label)
        return image, masks, np.ones(len(masks), np.int64), None


class SyntheticInstances(InstanceDataset):
    """``count`` procedural road scenes of ``size`` with pole and car instances; a pure function of (seed, stream, i)."""

    def __init__(self, count: int, *, seed: int = 0, stream: int = 0, size: Sequence[int] = (96, 128), **kwargs) -> None:
        super().__init__([f"{kwargs.get('split', 'train')}_{i:06d}" for i in range(int(count))],
                         synthetic_instances_info(), kind="synthetic_instances", **kwargs)
        self.seed, self.stream, self.size = int(seed), int(stream), (int(size[0]), int(size[1]))

    def _load(self, i: int):
        image, label, ids = render_scene_instances(np.random.default_rng([self.seed, self.stream, i]), *self.size)
        masks, labels = [], []
        for k in range(1, int(ids.max()) + 1):
            mask = ids == k
            if mask.sum() >= MIN_OBJECT_AREA:
                masks.append(mask)
                labels.append(_SYNTHETIC_LABEL[int(label[mask][0])])
        stacked = np.stack(masks) if masks else np.zeros((0, *self.size), bool)
        return image, stacked, np.asarray(labels, np.int64), None
