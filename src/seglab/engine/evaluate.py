"""Evaluation loop: predictions at the label's own resolution, scored by the SegNet protocol."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from seglab.core.runtime import autocast
from seglab.metrics import SegmentationMetrics, em_metrics, logits_to_labels
from seglab.metrics.uncertainty import CalibrationMeter, uncertainty_maps
from seglab.ops.mc_dropout import mc_dropout, mc_probabilities
from seglab.ops.resize import forward_at_size
from seglab.tasks.semantic import EM_KEYS

__all__ = ["evaluate_model"]


@torch.inference_mode()
def evaluate_model(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    ignore_index: int | None,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    infer_size: list[int] | None = None,
    compute_bf: bool = True,
    channels_last: bool = False,
    mc_samples: int = 0,
    em_foreground: int | None = None,
) -> dict:
    """Score ``model`` on every (image, mask) batch; returns :meth:`SegmentationMetrics.compute`.

    With ``mc_samples > 0`` (Bayesian models) the prediction is the mean of that many
    Monte-Carlo dropout samples, and the result also holds the expected calibration error
    (``ece``) and the accuracy of pixels binned by predictive entropy.

    With ``em_foreground`` (the cell class of binary EM data, see :func:`em_foreground_class`) the
    result also holds :func:`seglab.metrics.em_metrics`: ``pixel_error``, ``foreground_iou`` and
    the adapted ``rand_error`` (with its precision and recall).
    """
    was_training = model.training
    model.eval()
    metrics = SegmentationMetrics(num_classes, ignore_index=ignore_index, compute_bf=compute_bf)
    calibration = CalibrationMeter(num_classes, ignore_index) if mc_samples else None
    slices: tuple[list, list] = ([], [])  # predicted and true label slices for the EM metrics

    def forward(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, amp_dtype):
            return forward_at_size(model, x, infer_size).float()

    for images, masks, *_ in batches:
        images = images.to(device, non_blocking=True)
        masks = masks.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if calibration is None:
            preds = logits_to_labels(forward(images))
        else:
            with mc_dropout(model):
                maps = uncertainty_maps(mc_probabilities(forward, images, mc_samples))
            preds = maps["mean"].argmax(1)
            calibration.update(maps["mean"], maps["entropy"], masks)
        metrics.update(preds, masks)
        if em_foreground is not None:
            slices[0].extend(preds.to(torch.uint8).cpu())
            slices[1].extend(masks.cpu())
    model.train(was_training)
    results = metrics.compute()
    if calibration is not None:
        results.update(calibration.compute(), mc_samples=mc_samples)
    if em_foreground is not None and slices[0]:
        scores = em_metrics(slices[0], slices[1], foreground=em_foreground, ignore_index=ignore_index)
        results.update({k: scores[k] for k in EM_KEYS})
    return results


