"""The semantic-segmentation task: one class per pixel, scored by the SegNet protocol.

It owns the per-pixel loss (with class weights and U-Net weight maps), predictions at the labels'
own resolution (the model runs at its training size, :func:`seglab.ops.resize.forward_at_size`),
Monte-Carlo dropout for Bayesian models, and the metrics: G, C, mIoU, fwIoU, BF, plus the EM
metrics on ISBI 2012 and calibration for MC dropout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from seglab.core.config import Config
from seglab.core.errors import SeglabError
from seglab.data.transforms import inference_size
from seglab.losses import BINARY_LOSSES, build_loss, resolve_class_weights
from seglab.metrics import SegmentationMetrics, em_metrics, logits_to_labels
from seglab.metrics.uncertainty import CalibrationMeter, uncertainty_maps
from seglab.models.registry import create_model, list_models, model_task
from seglab.ops.contract import check_input_size, has_dropout
from seglab.ops.mc_dropout import mc_dropout, mc_probabilities
from seglab.ops.resize import forward_at_size
from seglab.ops.tiling import center_crop
from seglab.ops.tta import TTA, tta_forward

__all__ = ["EM_KEYS", "SemanticBatch", "SemanticMetrics", "SemanticTask", "em_foreground_class", "require_dropout"]

#: Keys the semantic metrics add for binary EM data.
EM_KEYS: tuple[str, ...] = ("pixel_error", "foreground_iou", "rand_error", "rand_precision", "rand_recall")


def em_foreground_class(dataset: str) -> int | None:
    """The cell class id of data sets scored with the EM metrics (ISBI 2012), else None."""
    return 1 if dataset == "isbi2012" else None


def require_dropout(model: nn.Module, name: str) -> None:
    """Raise a clear error when Monte-Carlo dropout is asked of a model without dropout."""
    if not has_dropout(model):
        bayesian = [m for m in list_models() if "bayesian" in m]
        raise SeglabError(f"--mc-samples needs dropout layers, and model {name!r} has none. "
                          f"Monte-Carlo dropout works with: {', '.join(bayesian)}; train one of those "
                          "(e.g. --model.name bayesian_segnet_basic) or drop --mc-samples.")


@dataclass
class SemanticBatch:
    """Images ``N x 3 x H x W``, masks ``N x H x W`` and extra per-pixel targets (U-Net weight maps)."""

    images: Tensor
    masks: Tensor
    extras: tuple[Tensor, ...] = ()


@dataclass
class SemanticPrediction:
    """Label maps ``N x H x W``; with MC dropout also the mean probabilities and entropy."""

    labels: Tensor
    mean_probs: Tensor | None = None
    entropy: Tensor | None = None


class SemanticMetrics:
    """The SegNet protocol's metrics, plus the EM metrics (ISBI) and calibration (MC dropout)."""

    def __init__(self, num_classes: int, ignore_index: int | None, compute_bf: bool = True,
                 mc_samples: int = 0, em_foreground: int | None = None, bf_protocol: str = "fast") -> None:
        self.num_classes, self.ignore_index, self.em_foreground = num_classes, ignore_index, em_foreground
        self.mc_samples = mc_samples
        self.metrics = SegmentationMetrics(num_classes, ignore_index=ignore_index, compute_bf=compute_bf,
                                           bf_protocol=bf_protocol)
        self.calibration = CalibrationMeter(num_classes, ignore_index) if mc_samples else None
        self.slices: tuple[list, list] = ([], [])  # predicted and true label slices for the EM metrics

    def update(self, predictions: SemanticPrediction, batch: SemanticBatch) -> None:
        self.metrics.update(predictions.labels, batch.masks)
        if self.calibration is not None and predictions.mean_probs is not None:
            self.calibration.update(predictions.mean_probs, predictions.entropy, batch.masks)
        if self.em_foreground is not None:
            self.slices[0].extend(predictions.labels.to(torch.uint8).cpu())
            self.slices[1].extend(batch.masks.cpu())

    def merge(self, other: "SemanticMetrics") -> "SemanticMetrics":
        """Add another shard's state (another process's, :mod:`seglab.engine.distributed`): confusion
        matrices add exactly, per-image BF scores and EM slices are appended after this one's."""
        self.metrics.merge(other.metrics)
        if self.calibration is not None and other.calibration is not None:
            for name in ("conf_count", "conf_sum", "conf_correct", "unc_count", "unc_correct"):
                getattr(self.calibration, name).add_(getattr(other.calibration, name))
        self.slices[0].extend(other.slices[0])
        self.slices[1].extend(other.slices[1])
        return self

    def compute(self) -> dict[str, Any]:
        results = self.metrics.compute()
        if self.calibration is not None:
            results.update(self.calibration.compute(), mc_samples=self.mc_samples)
        if self.em_foreground is not None and self.slices[0]:
            scores = em_metrics(self.slices[0], self.slices[1], foreground=self.em_foreground,
                                ignore_index=self.ignore_index)
            results.update({k: scores[k] for k in EM_KEYS})
        return results


@dataclass
class SemanticTask:
    """Per-pixel classification into ``num_classes`` classes (``ignore_index`` is void).

    Args:
        infer_size: ``(h, w)`` the model runs at in evaluation (``seglab.data.inference_size``); logits are
            resized back to the labels' size. None: the input size.
        criterion: The training loss (``None`` for evaluation only); see :meth:`from_config`.
        mc_samples: Monte-Carlo dropout samples per prediction (0: a plain forward pass).
        tta: Test-time augmentation (flips and scales, :mod:`seglab.ops.tta`) in ``predict``;
            None: off. Not combined with ``mc_samples``.
        em_foreground: Cell class id for the EM metrics (ISBI 2012), else None.
    """

    num_classes: int
    ignore_index: int | None
    class_names: Sequence[str] = ()
    palette: Sequence[Sequence[int]] = ()
    infer_size: Sequence[int] | None = None
    compute_bf: bool = True
    bf_protocol: str = "fast"  # BF rules: fast or paper (seglab.metrics.boundary); train.bf_protocol
    mc_samples: int = 0
    em_foreground: int | None = None
    criterion: nn.Module | None = None
    model_num_classes: int = 0  # output channels: 1 for binary (sigmoid) heads, else num_classes
    class_weights: Tensor | None = field(default=None, repr=False)
    tta: TTA | None = None

    name = "semantic"
    summary_keys: tuple[str, ...] = ("global_acc", "class_acc", "miou", "fwiou", "bf", *EM_KEYS)

    def __post_init__(self) -> None:
        self.model_num_classes = self.model_num_classes or self.num_classes

    @classmethod
    def from_config(cls, cfg: Config, info: Any, class_weights: Callable[[str], Tensor | None] | None = None,
                    device: torch.device | None = None) -> "SemanticTask":
        """The task a recipe trains: its loss, class weights (``class_weights(method)`` computes
        the named methods from the training split) and validation settings."""
        binary = cfg.loss.name in BINARY_LOSSES  # a binary loss trains a one-channel sigmoid head
        weights = resolve_class_weights(cfg.loss.class_weights, info.num_classes, class_weights or (lambda m: None))
        criterion = build_loss(cfg.loss, info.num_classes, info.ignore_index,
                               weights.to(device) if weights is not None and device is not None else weights)
        return cls(info.num_classes, info.ignore_index, list(info.class_names), [list(c) for c in info.palette],
                   infer_size=inference_size(cfg.data), compute_bf=cfg.train.val_bf, bf_protocol=cfg.train.bf_protocol,
                   em_foreground=em_foreground_class(cfg.data.dataset), criterion=criterion,
                   model_num_classes=1 if binary else info.num_classes, class_weights=weights)

    # ------------------------------------------------------------------ model
    def build_model(self, cfg: Config) -> nn.Module:
        """The recipe's model with this task's output channels; fails early on crops it cannot take."""
        if model_task(cfg.model.name) != "semantic":
            raise SeglabError(f"Model {cfg.model.name!r} is an instance-segmentation model, but the recipe says task: "
                              f"semantic. Set task: instance (with an instance data set) or use a semantic model.")
        model = create_model(cfg.model.name, self.model_num_classes, weights=cfg.model.weights,
                             weights_backbone=cfg.model.weights_backbone, **cfg.model.kwargs)
        check_input_size(model, cfg.data.crop_size, cfg.model.name, "data.crop_size")
        return model

    # ------------------------------------------------------------------ training
    def prepare_batch(self, item: Sequence[Tensor], device: torch.device, channels_last: bool = False) -> SemanticBatch:
        images, masks, *extras = item
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return SemanticBatch(images, masks.to(device, non_blocking=True),
                             tuple(e.to(device, non_blocking=True) for e in extras))

    def batch_size(self, batch: SemanticBatch) -> int:
        return batch.images.shape[0]

    def forward(self, model: nn.Module, batch: SemanticBatch) -> Tensor:
        return model(batch.images)

    def loss(self, output: Tensor, batch: SemanticBatch) -> Tensor:
        if self.criterion is None:
            raise SeglabError("This SemanticTask has no loss: build it with SemanticTask.from_config(cfg, info).")
        masks, extras = batch.masks, batch.extras
        if output.shape[-2:] != masks.shape[-2:]:
            # Valid-convolution models (unet_valid) predict the centre of their input tile:
            # score that centre only, as the U-Net paper trains (572 in, 388 labelled out).
            masks = center_crop(masks, output.shape[-2:])
            extras = tuple(center_crop(e, output.shape[-2:]) for e in extras)
        return self.criterion(output.float(), masks, *extras)

    def epoch_log(self) -> dict[str, float]:
        return {}  # one loss term: the epoch record's train_loss says it all

    # ------------------------------------------------------------------ evaluation
    def predict(self, model: nn.Module, batch: SemanticBatch) -> SemanticPrediction:
        def forward(x: Tensor) -> Tensor:
            return forward_at_size(model, x, self.infer_size).float()

        if self.tta is not None:
            if self.mc_samples:
                raise SeglabError("Test-time augmentation (--tta) and Monte-Carlo dropout (--mc-samples) cannot be "
                                  "combined: choose one.")
            # Scales are relative to infer_size, so the model itself runs at each view's own size.
            logits = tta_forward(lambda x: forward_at_size(model, x, None), batch.images, self.tta.scales,
                                 self.tta.flip, size=self.infer_size)
            return SemanticPrediction(logits_to_labels(logits))
        if not self.mc_samples:
            return SemanticPrediction(logits_to_labels(forward(batch.images)))
        with mc_dropout(model):
            maps = uncertainty_maps(mc_probabilities(forward, batch.images, self.mc_samples))
        return SemanticPrediction(maps["mean"].argmax(1), maps["mean"], maps["entropy"])

    def new_metrics(self) -> SemanticMetrics:
        return SemanticMetrics(self.num_classes, self.ignore_index, self.compute_bf,
                               mc_samples=self.mc_samples, em_foreground=self.em_foreground,
                               bf_protocol=self.bf_protocol)

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {"task": self.name, "num_classes": self.num_classes, "model_num_classes": self.model_num_classes,
                "class_names": list(self.class_names), "palette": [list(c) for c in self.palette],
                "ignore_index": self.ignore_index, "image_size": list(self.infer_size) if self.infer_size else None}
