"""SUN RGB-D with 37 classes (the SegNet paper's indoor benchmark): ``--data.dataset sunrgbd``.

The official release (https://rgbd.cs.princeton.edu/: ``SUNRGBD.zip`` plus ``SUNRGBDtoolbox.zip``)
keeps the 37-class labels of all 10,335 images in one MATLAB v7.3 file,
``SUNRGBDtoolbox/Metadata/SUNRGBD2Dseg.mat`` (about 64 GB of RAM to load). The SegNet
authors' group published those labels as PNGs instead (Ankur Handa,
https://github.com/ankurhanda/sunrgbd-meta-data, README): ``sunrgbd_train_test_labels.tar.gz``
(files 1..5050 are the test images, 5051..10335 the training images) with the RGB images in
``SUNRGBD-train_images.tgz`` (5,285) and ``SUNRGBD-test_images.tgz`` (5,050). That is the
layout read here, as ``seglab data download sunrgbd DIR`` lays it out::

    SUNRGBD-train_images/img-000001.jpg ... img-005285.jpg
    SUNRGBD-test_images/img-000001.jpg  ... img-005050.jpg
    sunrgbd_train_test_labels/img-000001.png ... img-010335.png

Training image ``img-N`` pairs with label ``img-(N + 5050)``, test image ``img-N`` with label
``img-N``. Label PNGs hold 0 for unlabelled (mapped to the ignore index) and 1..37 for the
classes, mapped to class ids 0..36. Splits: ``train`` and ``test``; ``val`` is the test split
(SUN RGB-D has no separate validation split; SegNet reports on the test images).

Class names: the ``seg37list`` of the SUN RGB-D toolbox, as listed in the sunrgbd-meta-data
README (``floor_mat``, ``night_stand`` and ``shower_curtain`` spelled with underscores there).
Palette: ``label_colours[1:38]`` of RedNet (https://github.com/JindongJiang/RedNet,
``utils/utils.py``), the colours most SUN RGB-D 37-class code draws with.

Example:
    >>> cfg = DataConfig(dataset="sunrgbd", root="data/sunrgbd")
    >>> image, mask = build_dataset(cfg, "train", train=True)[0]   # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from seglab.core.config import DataConfig
from seglab.core.errors import SeglabError, did_you_mean
from seglab.data.base import DatasetInfo, SegmentationDataset, Transform
from seglab.data.io import describe_bad_values, read_mask_of_image
from seglab.data.transforms import build_transforms

__all__ = [
    "SUNRGBD_CLASSES",
    "SUNRGBD_DIRS",
    "SUNRGBD_LABEL_DIR",
    "SUNRGBD_PALETTE",
    "SUNRGBD_TEST_COUNT",
    "SUNRGBDDataset",
    "build_sunrgbd",
    "looks_like_sunrgbd",
    "map_sunrgbd_labels",
    "resolve_sunrgbd_root",
    "sunrgbd_samples",
    "sunrgbd_split_pairs",
    "sunrgbd_splits",
]

SUNRGBD_CLASSES = [
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor_mat", "clothes", "ceiling", "books", "fridge", "tv", "paper", "towel", "shower_curtain",
    "box", "whiteboard", "person", "night_stand", "toilet", "sink", "lamp", "bathtub", "bag",
]
SUNRGBD_PALETTE: list[tuple[int, int, int]] = [
    (148, 65, 137), (255, 116, 69), (86, 156, 137), (202, 179, 158), (155, 99, 235), (161, 107, 108),
    (133, 160, 103), (76, 152, 126), (84, 62, 35), (44, 80, 130), (31, 184, 157), (101, 144, 77),
    (23, 197, 62), (141, 168, 145), (142, 151, 136), (115, 201, 77), (100, 216, 255), (57, 156, 36),
    (88, 108, 129), (105, 129, 112), (42, 137, 126), (155, 108, 249), (166, 148, 143), (81, 91, 87),
    (100, 124, 51), (73, 131, 121), (157, 210, 220), (134, 181, 60), (221, 223, 147), (123, 108, 131),
    (161, 66, 179), (163, 221, 160), (31, 146, 98), (99, 121, 30), (49, 89, 240), (116, 108, 9),
    (161, 176, 169),
]
SUNRGBD_DIRS = {"train": "SUNRGBD-train_images", "test": "SUNRGBD-test_images"}
SUNRGBD_LABEL_DIR = "sunrgbd_train_test_labels"
SUNRGBD_TEST_COUNT = 5050  # labels img-000001..img-005050 are the test images'; training labels follow
_LABEL_OFFSET = {"train": SUNRGBD_TEST_COUNT, "test": 0}
_ALIASES = {"val": "test"}
_STEM = re.compile(r"img-(\d+)$")


def looks_like_sunrgbd(root: Path) -> bool:
    """True when ``root`` holds the label folder and at least one image folder."""
    return (root / SUNRGBD_LABEL_DIR).is_dir() and any((root / d).is_dir() for d in SUNRGBD_DIRS.values())


def resolve_sunrgbd_root(root: str | Path | None) -> Path:
    """The SUN RGB-D folder; a parent holding ``sunrgbd/`` works too.

    Raises:
        SeglabError: no root, or no SUN RGB-D layout there.
    """
    if root is None or str(root) == "":
        raise SeglabError("SUN RGB-D needs its folder: set --data.root (e.g. `seglab data download sunrgbd "
                          "data/sunrgbd`, then --data.root data/sunrgbd).")
    path = Path(root).expanduser()
    if not looks_like_sunrgbd(path) and looks_like_sunrgbd(path / "sunrgbd"):
        path = path / "sunrgbd"
    if not looks_like_sunrgbd(path):
        raise SeglabError(
            f"SUN RGB-D root {str(path)!r} does not hold {SUNRGBD_LABEL_DIR}/ with {SUNRGBD_DIRS['train']}/ or "
            f"{SUNRGBD_DIRS['test']}/. Point --data.root at the folder `seglab data download sunrgbd DIR` made."
        )
    return path


def sunrgbd_splits(root: Path) -> list[str]:
    """The splits whose image folder is present (``train``, ``test``)."""
    return [s for s, d in SUNRGBD_DIRS.items() if (Path(root) / d).is_dir()]


def sunrgbd_split_pairs(root: Path, split: str) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """``(pairs, images without a label)`` of ``split`` (``val`` means ``test``), sorted by image number.

    Raises:
        SeglabError: an unknown split, or its image folder is missing.
    """
    name = _ALIASES.get(split, split)
    if name not in SUNRGBD_DIRS:
        raise SeglabError(f"SUN RGB-D has the splits train and test (val = test), not {split!r}."
                          f"{did_you_mean(split, [*SUNRGBD_DIRS, 'val'])}")
    image_dir, label_dir = Path(root) / SUNRGBD_DIRS[name], Path(root) / SUNRGBD_LABEL_DIR
    if not image_dir.is_dir():
        raise SeglabError(f"SUN RGB-D split {split!r}: {str(image_dir)!r} is missing; extract "
                          f"{SUNRGBD_DIRS[name]}.tgz there (or run `seglab data download sunrgbd DIR`).")
    numbered = []
    for p in image_dir.iterdir():
        m = _STEM.match(p.stem)
        if m and p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png"):
            numbered.append((int(m.group(1)), p))
    pairs, missing = [], []
    for n, image in sorted(numbered):
        label = label_dir / f"img-{n + _LABEL_OFFSET[name]:06d}.png"
        if label.is_file():
            pairs.append((image, label))
        else:
            missing.append(image)
    return pairs, missing


def sunrgbd_samples(root: str | Path | None, split: str) -> list[tuple[Path, Path]]:
    """``(image, label)`` pairs of a SUN RGB-D split, every image with its label.

    Raises:
        SeglabError: a missing root, split or label; an empty split.
    """
    path = resolve_sunrgbd_root(root)
    pairs, missing = sunrgbd_split_pairs(path, split)
    if missing:
        name = _ALIASES.get(split, split)
        shown = ", ".join(p.name for p in missing[:5])
        raise SeglabError(
            f"SUN RGB-D split {split!r}: {len(missing)} image(s) have no label in {str(path / SUNRGBD_LABEL_DIR)!r} "
            f"(e.g. {shown}; {name} image img-N pairs with label img-(N+{_LABEL_OFFSET[name]})). "
            "Re-extract sunrgbd_train_test_labels.tar.gz there."
        )
    if not pairs:
        raise SeglabError(f"SUN RGB-D split {split!r} is empty: no img-NNNNNN.jpg in "
                          f"{str(path / SUNRGBD_DIRS[_ALIASES.get(split, split)])!r}.")
    return pairs


def map_sunrgbd_labels(raw: np.ndarray, ignore_index: int, path: str | Path) -> np.ndarray:
    """File values 0 (unlabelled) -> ``ignore_index``, 1..37 -> class ids 0..36.

    Raises:
        SeglabError: naming ``path`` when a value is above 37.
    """
    n = len(SUNRGBD_CLASSES)
    if raw.size and (raw.min() < 0 or raw.max() > n):
        values = np.unique(raw)
        bad = values[(values < 0) | (values > n)]
        raise SeglabError(
            f"SUN RGB-D label {str(path)!r} holds value(s) {describe_bad_values(bad)}; the 37-class labels hold "
            f"0 (unlabelled) and 1..{n}. Is this the 37-class label set (sunrgbd_train_test_labels)?"
        )
    raw = raw.astype(np.int64)
    return np.where(raw == 0, ignore_index, raw - 1)


class SUNRGBDDataset(SegmentationDataset):
    """SUN RGB-D RGB images with their 37-class labels (0 in the files becomes the ignore index)."""

    def __init__(self, samples: Sequence[tuple[Path, Path]], info: DatasetInfo, *, transform: Transform | None = None,
                 image_size: Sequence[int] | None = None, split: str = "", root: str | Path | None = None) -> None:
        super().__init__(samples, info, transform=transform, image_size=image_size, kind="sunrgbd", split=split,
                         root=root)

    def _decode_mask(self, i: int) -> np.ndarray:
        image_path, label_path = self.samples[i]
        raw = read_mask_of_image(image_path, label_path, "SUN RGB-D")
        return map_sunrgbd_labels(raw, self.info.ignore_index, label_path).astype(self._mask_dtype)


def build_sunrgbd(cfg: DataConfig, info: DatasetInfo, split: str, train: bool) -> SUNRGBDDataset:
    """The SUN RGB-D data set of ``split`` from the data config (used by :func:`~seglab.data.build_dataset`)."""
    root = resolve_sunrgbd_root(cfg.root)
    samples = sunrgbd_samples(root, split)
    if cfg.limit is not None:
        samples = samples[: cfg.limit]
    return SUNRGBDDataset(samples, info, transform=build_transforms(cfg, train, info.ignore_index),
                          image_size=cfg.image_size, split=split, root=root)
