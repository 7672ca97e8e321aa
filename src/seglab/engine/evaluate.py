"""Evaluation loop: predictions at the label's own resolution, scored by the SegNet protocol."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SeglabError
from ..models.sizes import runnable_size
from ..metrics import SegmentationMetrics, em_metrics, logits_to_labels
from ..tiling import predict_tiled, valid_output_fn
from .runtime import autocast

__all__ = ["EM_KEYS", "em_foreground_class", "evaluate_model", "forward_at_size"]

#: Largest input tile of valid-convolution models at evaluation: the paper's 572x572 (388x388 out
#: at depth 4), or the nearest valid size above it for other depths; smaller images get smaller tiles.
_VALID_TILE = (572, 572)


def forward_at_size(model: nn.Module, images: torch.Tensor, infer_size: list[int] | tuple[int, int] | None) -> torch.Tensor:
    """Run ``model`` on ``images`` resized to ``infer_size`` (if given); logits come back at input size.

    A model trained at reduced resolution is thus scored against full-resolution labels,
    as the SegNet protocol asks, instead of against down-sampled ones. Valid-convolution models
    (``unet_valid``) run overlap-tile inference with mirror padding (:func:`seglab.tiling.predict_tiled`),
    so every pixel is predicted from its full context instead of the shrunken map being stretched.
    """
    height, width = images.shape[-2:]
    x = images
    if infer_size is not None and tuple(infer_size) != (height, width):
        x = F.interpolate(images, size=tuple(infer_size), mode="bilinear", align_corners=False, antialias=True)
    valid_model = valid_output_fn(model)
    if valid_model is not None:
        logits = _forward_valid(model, x, valid_model)
    else:
        logits = model(x)
    if logits.shape[-2:] != (height, width):
        logits = F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False)
    return logits


def _forward_valid(model: nn.Module, x: torch.Tensor, valid_model) -> torch.Tensor:
    """Tiled logits of a valid-convolution model, image by image, at ``x``'s size."""
    owner = getattr(valid_model, "__self__", model)
    num_classes = owner.classifier.out_channels
    tile = runnable_size(owner, _VALID_TILE)
    out_h, out_w = owner.output_size(tile)
    # An image smaller than one tile's output needs only the smallest tile that covers it plus
    # the border the convolutions eat: at half-resolution CamVid, 268x332 instead of 572x572.
    covering = (x.shape[-2] + tile[0] - out_h, x.shape[-1] + tile[1] - out_w)
    tile = runnable_size(owner, (min(tile[0], covering[0]), min(tile[1], covering[1])))
    return torch.cat([predict_tiled(model, x[i : i + 1], num_classes, tile, valid_model=valid_model)
                      for i in range(x.shape[0])])


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
    from ..uncertainty import CalibrationMeter, mc_dropout, mc_probabilities, uncertainty_maps

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


#: Keys :func:`evaluate_model` adds for binary EM data.
EM_KEYS: tuple[str, ...] = ("pixel_error", "foreground_iou", "rand_error", "rand_precision", "rand_recall")


def em_foreground_class(dataset: str) -> int | None:
    """The cell class id of data sets scored with the EM metrics (ISBI 2012), else None."""
    return 1 if dataset == "isbi2012" else None


def evaluate_checkpoint(path: str, overrides: list[str] | None = None, split: str = "val", batch_size: int = 2,
                        compute_bf: bool = True, device: str = "auto", mc_samples: int = 0,
                        onnx: str | None = None) -> dict:
    """Score a checkpoint on a split of its own data set (``overrides`` may point ``--data.root`` elsewhere).

    With ``onnx`` (a file exported from this checkpoint, fp32 or int8) onnxruntime computes the
    logits instead of PyTorch, through the same resizing and scoring, so the two are comparable.

    Returns the metrics dict plus ``class_names``, ``split``, ``checkpoint`` (and ``onnx``).
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
    if onnx is not None:
        if mc_samples:
            raise SeglabError("--mc-samples needs the PyTorch model: an exported ONNX graph has no dropout sampling.")
        model, dev = _OnnxModule(onnx, ckpt["model_name"], info.num_classes), torch.device("cpu")
    else:
        model = model_from_checkpoint(ckpt, path).to(dev)
    if mc_samples:
        from ..uncertainty import require_dropout

        require_dropout(model, ckpt["model_name"])
    data_cfg = dataclasses.replace(cfg.data, image_size=None, limit=cfg.data.limit)
    dataset = build_dataset(data_cfg, split, train=False)
    loader = build_eval_loader(dataset, batch_size, cfg.data.num_workers, dev.type == "cuda")
    results = evaluate_model(model, loader, info.num_classes, info.ignore_index, dev, resolve_amp(cfg.train.amp, dev),
                             infer_size=model.segmenter.infer_size if onnx is not None else ckpt.get("image_size"),
                             compute_bf=compute_bf, mc_samples=mc_samples,
                             em_foreground=em_foreground_class(cfg.data.dataset))
    extra = {"onnx": str(onnx)} if onnx is not None else {}
    return {"checkpoint": str(path), **extra, "split": split, "class_names": list(info.class_names), **results}


class _OnnxModule(nn.Module):
    """An onnxruntime session behind the ``nn.Module`` call that :func:`evaluate_model` makes."""

    def __init__(self, path: str, model_name: str, num_classes: int) -> None:
        super().__init__()
        from ..onnx_backend import OnnxSegmenter

        self.segmenter = OnnxSegmenter(path)
        if (self.segmenter.model_name, self.segmenter.num_classes) != (model_name, num_classes):
            raise SeglabError(f"{path!r} holds {self.segmenter.model_name!r} with {self.segmenter.num_classes} classes, "
                              f"but the checkpoint is {model_name!r} with {num_classes}: export this checkpoint with "
                              "`seglab export` and pass that file.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmenter.run(x.float().contiguous())
