"""The instance-segmentation task (``task: instance``): Mask R-CNN through the same engine.

Batches are ``(images, targets)`` lists in torchvision's detection schema
(:mod:`seglab.data.instance`). In training the model returns torchvision's loss dict; the task sums
it (the training loss) and keeps each term's mean for the epoch record (``train_loss_classifier``,
``train_loss_box_reg``, ``train_loss_mask``, ``train_loss_objectness``, ``train_loss_rpn_box_reg``).
In evaluation the model returns detections, scored by :class:`~seglab.metrics.InstanceMetrics`
(COCO mask AP, AP50, AP75, box AP, matched mask IoU) and, with the instances rendered to a label
map (highest score on top, ``score_threshold``), by :class:`~seglab.metrics.SegmentationMetrics`
(G, C, mIoU, without BF). Recipes select the best checkpoint by ``train.select_metric: mask_ap``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from seglab.core.config import Config
from seglab.core.errors import SeglabError
from seglab.metrics import SegmentationMetrics
from seglab.metrics.instance import InstanceMetrics
from seglab.models.registry import create_model, list_models, model_task

__all__ = ["InstanceBatch", "InstanceMeter", "InstanceTask", "render_label_map"]


@dataclass
class InstanceBatch:
    """Images (``3 x H x W`` floats in [0, 1], sizes may differ) and their target dicts, on the device."""

    images: list[Tensor]
    targets: list[dict[str, Tensor]]


def render_label_map(pred: dict[str, Tensor], size: Sequence[int], score_threshold: float = 0.5,
                     mask_threshold: float = 0.5) -> Tensor:
    """``H x W`` class map of detections above ``score_threshold``, the highest score painted last (on top)."""
    labels = torch.zeros(tuple(size), dtype=torch.int64)
    keep = pred["scores"] >= score_threshold
    order = torch.argsort(pred["scores"][keep])  # ascending: higher scores overwrite
    masks, classes = pred["masks"][keep][order], pred["labels"][keep][order]
    for mask, cls in zip(masks, classes):
        labels[(mask[0] if mask.ndim == 3 else mask) >= mask_threshold] = int(cls)
    return labels


def _target_label_map(target: dict[str, Tensor]) -> Tensor:
    masks = target["masks"].bool()
    labels = torch.zeros(masks.shape[-2:], dtype=torch.int64)
    for mask, cls in zip(masks, target["labels"]):
        labels[mask] = int(cls)
    return labels


class InstanceMeter:
    """COCO instance metrics plus the semantic metrics of the rendered label maps."""

    def __init__(self, num_classes: int, score_threshold: float = 0.5, max_detections: int = 100) -> None:
        self.instances = InstanceMetrics(max_detections=max_detections)
        self.semantic = SegmentationMetrics(num_classes, ignore_index=None, compute_bf=False)
        self.score_threshold = score_threshold

    def update(self, predictions: list[dict[str, Tensor]], batch: InstanceBatch) -> None:
        targets = [{k: v.cpu() for k, v in t.items()} for t in batch.targets]
        self.instances.update(predictions, targets)
        for pred, target in zip(predictions, targets):
            rendered = render_label_map(pred, target["masks"].shape[-2:], self.score_threshold)
            self.semantic.update(rendered[None], _target_label_map(target)[None])

    def merge(self, other: "InstanceMeter") -> "InstanceMeter":
        """Add another process's shard (:func:`seglab.engine.distributed.combine_meters`)."""
        self.instances.merge(other.instances)
        self.semantic.merge(other.semantic)
        return self

    def compute(self) -> dict[str, Any]:
        return {**self.semantic.compute(), **self.instances.compute()}


def check_instance_model(name: str) -> None:
    """A clear error when a recipe with ``task: instance`` names a semantic model."""
    if model_task(name) != "instance":
        raise SeglabError(f"Model {name!r} is a semantic-segmentation model, but the recipe says task: instance. "
                          f"Use an instance model ({', '.join(list_models(task='instance'))}) or task: semantic.")


@dataclass
class InstanceTask:
    """Detect and segment each object of ``num_classes - 1`` classes (label 0 is the background).

    Args:
        score_threshold: Minimum detection score of the rendered label maps (semantic metrics).
        max_detections: Detections per image COCOeval scores (COCO's 100; more for crowded images).
    """

    num_classes: int
    class_names: Sequence[str] = ()
    palette: Sequence[Sequence[int]] = ()
    score_threshold: float = 0.5
    max_detections: int = 100
    _terms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list), repr=False)

    name = "instance"
    summary_keys: tuple[str, ...] = ("mask_ap", "mask_ap50", "mask_ap75", "box_ap", "mask_iou", "global_acc", "class_acc", "miou")

    @classmethod
    def from_config(cls, cfg: Config, info: Any, class_weights: Callable[[str], Tensor | None] | None = None,
                    device: torch.device | None = None) -> "InstanceTask":
        detections = int(cfg.model.kwargs.get("box_detections_per_img") or 100)
        return cls(info.num_classes, list(info.class_names), [list(c) for c in info.palette],
                   max_detections=max(100, detections))

    def build_model(self, cfg: Config) -> nn.Module:
        check_instance_model(cfg.model.name)
        return create_model(cfg.model.name, self.num_classes, weights=cfg.model.weights,
                            weights_backbone=cfg.model.weights_backbone, **cfg.model.kwargs)

    # ------------------------------------------------------------------ training
    def prepare_batch(self, item: Any, device: torch.device, channels_last: bool = False) -> InstanceBatch:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], (list, tuple))
                and all(isinstance(t, dict) for t in item[1])):
            raise SeglabError("task: instance needs an instance data set (isbi2012_cells, synthetic_instances, coco, "
                              "instance_folder) whose batches are (images, target dicts); this data set gives label "
                              "maps. Set --data.dataset to an instance data set, or use task: semantic.")
        images, targets = item
        return InstanceBatch([im.to(device, non_blocking=True) for im in images],
                             [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets])

    def batch_size(self, batch: InstanceBatch) -> int:
        return len(batch.images)

    def forward(self, model: nn.Module, batch: InstanceBatch) -> Any:
        if model.training:
            return model(batch.images, batch.targets)
        return model(batch.images)

    def loss(self, output: dict[str, Tensor], batch: InstanceBatch) -> Tensor:
        if not isinstance(output, dict):
            raise SeglabError("An instance model in train mode must return torchvision's loss dict.")
        for key, value in output.items():
            self._terms[key].append(float(value.detach()))
        return sum(v.float() for v in output.values())

    def epoch_log(self) -> dict[str, float]:
        terms = {f"train_{k}": sum(v) / len(v) for k, v in self._terms.items() if v}
        self._terms.clear()
        return terms

    # ------------------------------------------------------------------ evaluation
    def predict(self, model: nn.Module, batch: InstanceBatch) -> list[dict[str, Tensor]]:
        return [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in out.items()}
                for out in model(batch.images)]

    def new_metrics(self) -> InstanceMeter:
        return InstanceMeter(self.num_classes, self.score_threshold, self.max_detections)

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {"task": self.name, "num_classes": self.num_classes, "model_num_classes": self.num_classes,
                "class_names": list(self.class_names), "palette": [list(c) for c in self.palette],
                "ignore_index": None, "image_size": None}
