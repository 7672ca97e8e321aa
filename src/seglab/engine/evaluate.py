"""Evaluation loop: predictions at the label's own resolution, scored by the SegNet protocol."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import SegmentationMetrics, logits_to_labels
from .runtime import autocast

__all__ = ["evaluate_model", "forward_at_size"]


def forward_at_size(model: nn.Module, images: torch.Tensor, infer_size: list[int] | tuple[int, int] | None) -> torch.Tensor:
    """Run ``model`` on ``images`` resized to ``infer_size`` (if given); logits come back at input size.

    A model trained at reduced resolution is thus scored against full-resolution labels,
    as the SegNet protocol asks, instead of against down-sampled ones.
    """
    height, width = images.shape[-2:]
    x = images
    if infer_size is not None and tuple(infer_size) != (height, width):
        x = F.interpolate(images, size=tuple(infer_size), mode="bilinear", align_corners=False, antialias=True)
    logits = model(x)
    if logits.shape[-2:] != (height, width):
        logits = F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False)
    return logits


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
) -> dict:
    """Score ``model`` on every (image, mask) batch; returns :meth:`SegmentationMetrics.compute`.

    With ``mc_samples > 0`` (Bayesian models) the prediction is the mean of that many
    Monte-Carlo dropout samples, and the result also holds the expected calibration error
    (``ece``) and the accuracy of pixels binned by predictive entropy.
    """
    from ..uncertainty import CalibrationMeter, mc_dropout, mc_probabilities, uncertainty_maps

    was_training = model.training
    model.eval()
    metrics = SegmentationMetrics(num_classes, ignore_index=ignore_index, compute_bf=compute_bf)
    calibration = CalibrationMeter(num_classes, ignore_index) if mc_samples else None

    def forward(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, amp_dtype):
            return forward_at_size(model, x, infer_size).float()

    for images, masks, *_ in batches:
        images = images.to(device, non_blocking=True)
        masks = masks.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if calibration is None:
            metrics.update(logits_to_labels(forward(images)), masks)
            continue
        with mc_dropout(model):
            maps = uncertainty_maps(mc_probabilities(forward, images, mc_samples))
        metrics.update(maps["mean"].argmax(1), masks)
        calibration.update(maps["mean"], maps["entropy"], masks)
    model.train(was_training)
    results = metrics.compute()
    if calibration is not None:
        results.update(calibration.compute(), mc_samples=mc_samples)
    return results


def evaluate_checkpoint(path: str, overrides: list[str] | None = None, split: str = "val", batch_size: int = 2,
                        compute_bf: bool = True, device: str = "auto", mc_samples: int = 0) -> dict:
    """Score a checkpoint on a split of its own data set (``overrides`` may point ``--data.root`` elsewhere).

    Returns the metrics dict plus ``class_names``, ``split`` and ``checkpoint``.
    """
    import dataclasses

    from ..config import apply_overrides
    from ..data import build_dataset, dataset_info
    from .checkpoint import check_compatible, checkpoint_config, load_checkpoint, model_from_checkpoint
    from .loader import build_eval_loader
    from .runtime import resolve_amp, select_device

    ckpt = load_checkpoint(path)
    cfg = apply_overrides(checkpoint_config(ckpt), overrides or [])
    info = dataset_info(cfg.data)
    check_compatible(ckpt, ckpt["model_name"], info.num_classes, path)
    dev = select_device(device)
    model = model_from_checkpoint(ckpt, path).to(dev)
    if mc_samples:
        from ..uncertainty import require_dropout

        require_dropout(model, ckpt["model_name"])
    data_cfg = dataclasses.replace(cfg.data, image_size=None, limit=cfg.data.limit)
    dataset = build_dataset(data_cfg, split, train=False)
    loader = build_eval_loader(dataset, batch_size, cfg.data.num_workers, dev.type == "cuda")
    results = evaluate_model(model, loader, info.num_classes, info.ignore_index, dev, resolve_amp(cfg.train.amp, dev),
                             infer_size=ckpt.get("image_size"), compute_bf=compute_bf, mc_samples=mc_samples)
    return {"checkpoint": str(path), "split": split, "class_names": list(info.class_names), **results}
