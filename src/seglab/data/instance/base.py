"""Instance-segmentation samples in torchvision's detection schema, augmented with transforms v2.

An item is ``(image, target)``: ``image`` float ``3 x H x W`` in [0, 1] (Mask R-CNN normalises
inside the model) and ``target`` a dict with ``boxes`` float ``N x 4`` (x1, y1, x2, y2 in pixels,
x2/y2 exclusive), ``labels`` int64 ``N`` (>= 1; 0 is the background), ``masks`` uint8
``N x H x W``, ``image_id`` int64, ``area`` float ``N`` (mask pixels) and ``iscrowd`` int64 ``N``.
An image without instances has ``boxes`` of shape ``0 x 4``. A batch is a pair of lists
(:func:`collate_instances`), exposed as the data set's ``collate_fn`` for the loaders.

Boxes are the tight boxes of the masks after augmentation; instances whose mask is empty (or
whose box has no width or height) are dropped and counted in :attr:`InstanceDataset.degenerate`,
with a line in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from seglab.core.config import DataConfig
from seglab.data.base import DatasetInfo
from seglab.data.transforms import check_colour_jitter

__all__ = ["InstanceDataset", "build_instance_transforms", "collate_instances", "make_target"]

log = logging.getLogger("seglab.data.instance")


def collate_instances(batch: Sequence[tuple[Tensor, dict[str, Tensor]]]) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """A batch of detection samples as ``(images, targets)`` lists (images may differ in size)."""
    return [item[0] for item in batch], [item[1] for item in batch]


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight ``x1, y1, x2, y2`` boxes (x2, y2 exclusive) of non-empty ``N x H x W`` masks (uint8 or bool)."""
    if masks.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    rows, cols = masks.amax(2).bool(), masks.amax(1).bool()  # amax over uint8 beats any() over bool
    h, w = masks.shape[-2:]
    y = torch.arange(h, device=masks.device)[None].expand(len(masks), h)
    x = torch.arange(w, device=masks.device)[None].expand(len(masks), w)
    y1 = torch.where(rows, y, h).amin(1)
    y2 = torch.where(rows, y, -1).amax(1) + 1
    x1 = torch.where(cols, x, w).amin(1)
    x2 = torch.where(cols, x, -1).amax(1) + 1
    return torch.stack([x1, y1, x2, y2], 1).float()


def make_target(masks: Tensor, labels: Tensor, image_id: int, iscrowd: Tensor | None = None) -> tuple[dict[str, Tensor], int]:
    """The target dict of ``masks`` (``N x H x W``) and ``labels``, and how many degenerate instances it dropped."""
    masks = masks.to(torch.uint8)
    labels = labels.to(torch.int64)
    iscrowd = torch.zeros_like(labels) if iscrowd is None else iscrowd.to(torch.int64)
    boxes = masks_to_boxes(masks)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) if len(boxes) else torch.zeros(0, dtype=torch.bool)
    dropped = int((~keep).sum())
    masks, labels, iscrowd, boxes = masks[keep], labels[keep], iscrowd[keep], boxes[keep]
    area = torch.count_nonzero(masks.flatten(1), dim=1).float() if len(masks) else torch.zeros(0)
    return {"boxes": boxes, "labels": labels, "masks": masks, "image_id": torch.tensor(int(image_id)),
            "area": area, "iscrowd": iscrowd}, dropped


def build_instance_transforms(cfg: DataConfig, train: bool) -> v2.Compose:
    """Joint image/box/mask augmentation (transforms v2) from the data config.

    Training: random resize of the shorter side by ``scale_range``, ``crop_size`` random crops (padded
    when the image is smaller), flips (``hflip``, ``vflip``), quarter turns (``rotate90``) and
    ``color_jitter`` with ``hue_jitter``; ``image_size`` resizes first in both modes.
    """
    steps: list[Any] = []
    if cfg.image_size is not None:
        steps.append(v2.Resize(list(cfg.image_size), antialias=True))
    if train:
        lo, hi = cfg.scale_range
        if (lo, hi) != (1.0, 1.0):
            steps.append(v2.RandomAffine(degrees=0, scale=(lo, hi)))
        if cfg.crop_size is not None:
            steps.append(v2.RandomCrop(list(cfg.crop_size), pad_if_needed=True))
        if cfg.hflip:
            steps.append(v2.RandomHorizontalFlip())
        if cfg.vflip:
            steps.append(v2.RandomVerticalFlip())
        if cfg.rotate90:
            steps.append(v2.RandomChoice([v2.RandomRotation((a, a), expand=True) for a in (0, 90, 180, 270)]))
        check_colour_jitter(cfg)
        if cfg.color_jitter or cfg.hue_jitter:
            j = float(cfg.color_jitter)
            steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=float(cfg.hue_jitter)))
    steps.append(v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True))
    return v2.Compose(steps)


class InstanceDataset(Dataset):
    """Base of the instance data sets: subclasses give ``_load(i) -> (image uint8 HxWx3, masks NxHxW, labels N)``.

    Args:
        names: One name per sample (file stem), for logs and predictions.
        info: Classes including the background at 0.
        transform: From :func:`build_instance_transforms` (None: tensors only).
        split: Split name.
        kind: Data set name (``isbi2012_cells``, ``synthetic_instances``, ``coco``, ``instance_folder``).
    """

    collate_fn = staticmethod(collate_instances)

    def __init__(self, names: Sequence[str], info: DatasetInfo, *, transform: v2.Compose | None = None,
                 split: str = "", kind: str = "") -> None:
        self.names, self.info, self.transform, self.split, self.kind = list(names), info, transform, split, kind
        self.degenerate = 0

    def __len__(self) -> int:
        return len(self.names)

    def name_of(self, i: int) -> str:
        return self.names[i]

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """``(image uint8 H x W x 3, masks bool N x H x W, labels N, iscrowd N or None)`` of sample ``i``."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} of a {len(self)}-sample data set")
        image, masks, labels, crowd = self._load(i)
        h, w = image.shape[:2]
        masks = np.asarray(masks, dtype=bool).reshape(-1, h, w)
        present = masks.reshape(len(masks), h * w).any(1)  # a degenerate source instance: its mask is empty
        if not present.all():
            self.degenerate += int((~present).sum())
            log.warning("seglab: %s %s: dropped %d degenerate instance(s) (empty mask, zero-size box); %d so far",
                        self.kind, self.name_of(i), int((~present).sum()), self.degenerate)
            masks, labels = masks[present], np.asarray(labels)[present]
            crowd = None if crowd is None else np.asarray(crowd)[present]
        img = tv_tensors.Image(torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8)).reshape(-1, h, w))
        boxes = tv_tensors.BoundingBoxes(masks_to_boxes(mask.as_subclass(Tensor)), format="XYXY", canvas_size=(h, w))
        sample = {"image": img, "boxes": boxes, "masks": mask, "labels": torch.as_tensor(labels, dtype=torch.int64),
                  "iscrowd": torch.as_tensor(crowd if crowd is not None else np.zeros(len(labels)), dtype=torch.int64)}
        if self.transform is not None:
            sample = self.transform(sample)
        image_t = sample["image"]
        if image_t.dtype == torch.uint8:
            image_t = image_t.float().div_(255.0)
        # Instances that augmentation cut off entirely (crops) are dropped here, by design and silently.
        target, _ = make_target(sample["masks"].as_subclass(Tensor), sample["labels"], i, sample["iscrowd"])
        return image_t.as_subclass(Tensor), target
