"""Prediction from a checkpoint alone: ``Segmenter.from_checkpoint(path).predict(image)``.

Example:
    >>> seg = Segmenter.from_checkpoint("runs/quickstart/best.pt")
    >>> labels = seg.predict("street.png")        # H x W int64 class ids at the image's size
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seglab.core.errors import SeglabError
from seglab.core.runtime import autocast, resolve_amp, resolve_inference_amp, select_device
from seglab.inference.base import ImageLike, Predictor
from seglab.inference.fastpath import optimize_for_inference
from seglab.inference.instance_predictor import InstanceSegmenter
from seglab.metrics.uncertainty import uncertainty_maps
from seglab.models.zoo import get_pretrained
from seglab.ops.contract import valid_output_fn
from seglab.ops.mc_dropout import mc_dropout, mc_probabilities
from seglab.ops.resize import forward_at_size
from seglab.ops.tiling import predict_tiled, predict_tiled_labels
from seglab.ops.tta import TTA, as_tta, tta_forward
from seglab.tasks.checkpoint import Checkpoint, check_compatible, model_from_checkpoint, read_checkpoint
from seglab.tasks.semantic import require_dropout

__all__ = ["ImageLike", "Predictor", "Segmenter"]  # Predictor and ImageLike live in base.py


class Segmenter(Predictor):
    """A model plus everything needed to turn an RGB image into a label map."""

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        class_names: Sequence[str],
        palette: Sequence[Sequence[int]],
        mean: Sequence[float],
        std: Sequence[float],
        infer_size: Sequence[int] | None = None,
        device: str | torch.device = "auto",
        amp: str = "none",
        ignore_index: int | None = None,
        model_name: str = "model",
        tile: Sequence[int] | None = None,
        tile_overlap: int = 32,
        model_out_channels: int | None = None,
        fast: bool = True,
        tta: TTA | bool | str | None = None,
    ) -> None:
        self.device = device if isinstance(device, torch.device) else select_device(device)
        self.model = model.to(self.device).eval()
        # The fast path (folded BN, inference mode, tuned threads/allocator) serves plain
        # predictions; Monte-Carlo dropout keeps using the unfused model, whose dropout can sample.
        self.amp_dtype = resolve_amp(amp, self.device)
        # The fast path runs at the precision asked for (``amp``), not the CPU's fastest: on
        # AVX512-BF16 CPUs its own default is bf16, which flips labels where logits are close.
        self.forward_model = (optimize_for_inference(self.model, dtype=self.amp_dtype or torch.float32)
                              if fast else self.model)
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.palette = [tuple(int(v) for v in c) for c in palette]
        self.ignore_index = ignore_index
        self.model_name = model_name
        self.model_out_channels = model_out_channels or num_classes  # 1 for binary sigmoid heads
        # Overlap-tile inference: always for valid-convolution models (their output is smaller
        # than their input), on request for every other model.
        self.valid_model = valid_output_fn(self.model)
        if tile is None and self.valid_model is not None:
            tile = (572, 572)
        self.tile = tuple(tile) if tile else None
        self.tile_overlap = tile_overlap
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.infer_size = list(infer_size) if infer_size else None
        # Test-time augmentation (seglab.ops.tta) of predict / predict_proba / predict_logits; None: off.
        self.tta = as_tta(tta)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", amp: str = "auto",
                        tile: Sequence[int] | None = None, tile_overlap: int = 32, fast: bool = True,
                        tta: TTA | bool | str | None = None, task: str | None = None,
                        score_threshold: float | None = None) -> Segmenter | InstanceSegmenter:
        """Rebuild model, classes, palette and normalisation from a seglab checkpoint.

        ``tile`` (h, w) switches on overlap-tile inference with mirror padding and Gaussian
        blending of ``tile_overlap`` pixels, for images larger than memory allows. ``tta`` (a
        :class:`seglab.ops.tta.TTA`, True for the default flips and scales, or a scale string like
        ``"0.75,1,1.25"``) averages the probabilities of flipped and rescaled views; with tiling,
        each view is tiled (scales relative to the image's own size).

        An instance checkpoint (``task: instance``, Mask R-CNN) gives an
        :class:`~seglab.inference.instance_predictor.InstanceSegmenter`, whose ``predict`` returns
        instances above ``score_threshold`` (default 0.5); tiling and TTA are for semantic
        checkpoints. ``task`` (``semantic`` / ``instance``), when given, must match the checkpoint's.

        ``amp`` ``auto`` runs bf16 only where the CPU has it natively and the weights record that bf16
        passed the default-path rule on their val split (:func:`seglab.core.runtime.resolve_inference_amp`;
        the shipped CamVid model does), else fp32; ``none`` forces fp32, ``bf16`` forces bf16.
        """
        ckpt = read_checkpoint(path)
        meta = ckpt.meta
        target = device if isinstance(device, torch.device) else select_device(device)
        amp = resolve_inference_amp(amp, target, meta.verified_precisions)
        if task is not None:
            check_compatible(ckpt, meta.model_name, meta.num_classes, path, task=task)
        if meta.task == "instance":
            return _instance_segmenter(ckpt, path, device, amp, tile, tta, score_threshold)
        if score_threshold is not None:
            raise SeglabError(f"score_threshold (--score-threshold) applies to instance checkpoints; {str(path)!r} is a "
                              f"semantic {meta.model_name} checkpoint, which predicts label maps. Drop it.")
        return cls(model_from_checkpoint(ckpt, path), meta.num_classes, meta.class_names, meta.palette, meta.mean,
                   meta.std, infer_size=meta.image_size, device=device, amp=amp, ignore_index=meta.ignore_index,
                   model_name=meta.model_name, tile=tile, tile_overlap=tile_overlap,
                   model_out_channels=meta.model_num_classes, fast=fast, tta=tta)

    @classmethod
    def from_pretrained(cls, name: str, device: str = "auto", amp: str = "auto", tile: Sequence[int] | None = None,
                        tile_overlap: int = 32, fast: bool = True, tta: TTA | bool | str | None = None,
                        score_threshold: float | None = None) -> Segmenter | InstanceSegmenter:
        """The trained weights named ``name`` (``segnet_basic.camvid``; ``seglab weights`` lists them), in
        PyTorch. :func:`seglab.load_predictor` (what ``seglab predict`` runs) gives the default path instead:
        the int8 OpenVINO model shipped with the weights where it was verified and OpenVINO is installed."""
        get_pretrained(name)  # a clear error, with the close names, for a name that does not exist
        return cls.from_checkpoint(name, device=device, amp=amp, tile=tile, tile_overlap=tile_overlap, fast=fast,
                                   tta=tta, score_threshold=score_threshold)

    #: Largest image (pixels) run through the model in one pass at its own size; above it the
    #: activations of even a small network take many GB (8000x8000: 6.9 GB), so ask for tiles.
    max_untiled_pixels: int = 4096 * 4096

    # ------------------------------------------------------------------ prediction
    def predict(self, image: ImageLike) -> np.ndarray:
        """Class ids ``H x W`` (int64) for one RGB image (path, PIL image or uint8 array).

        Tiled (without TTA), the labels are taken band by band and the image's ``K x H x W`` logits
        are never held at once (11 classes at 4000x3000: 528 MB of the 2 GB a tiled 4000x3000
        prediction may use).
        """
        if self.tile is None or self.tta is not None:
            return super().predict(image)
        x = self.preprocess(image).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.amp_dtype):
            labels = predict_tiled_labels(self.forward_model, x, self.model_out_channels, self.tile, self.tile_overlap,
                                          valid_model=self.valid_model)
        return labels[0].cpu().numpy()

    @torch.inference_mode()
    def predict_logits(self, image: ImageLike) -> torch.Tensor:
        """Logits ``C x H x W`` (float32, CPU) at the image's own size."""
        x = self.preprocess(image)
        h, w = x.shape[-2:]
        if self.tile is None and self.infer_size is None and h * w > self.max_untiled_pixels:
            side = int(self.max_untiled_pixels ** 0.5)
            raise SeglabError(f"The image is {w}x{h} ({h * w / 1e6:.0f} megapixels), too large for one pass (at most "
                              f"about {side}x{side}): predict it in tiles with --tile 1024 1024 "
                              "(Segmenter(tile=(1024, 1024))), or downscale it.")
        x = x.to(self.device)
        with autocast(self.device, self.amp_dtype):
            if self.tta is not None:  # scales relative to infer_size; tiles run at the image's own size
                logits = tta_forward(self._view_logits, x, self.tta.scales, self.tta.flip,
                                     size=self.infer_size if self.tile is None else None)
            elif self.tile is None:
                logits = forward_at_size(self.forward_model, x, self.infer_size)
            else:
                logits = predict_tiled(self.forward_model, x, self.model_out_channels, self.tile, self.tile_overlap,
                                       valid_model=self.valid_model)
        return logits[0].float().cpu()

    def _view_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of TTA views at their own size (tiled image by image when tiling)."""
        if self.tile is None:
            return forward_at_size(self.forward_model, x, None)
        return torch.cat([predict_tiled(self.forward_model, x[i : i + 1], self.model_out_channels, self.tile,
                                        self.tile_overlap, valid_model=self.valid_model) for i in range(x.shape[0])])

    def predict_mc(self, image: ImageLike, samples: int) -> dict[str, np.ndarray]:
        """Monte-Carlo dropout prediction (Bayesian models): labels, mean probabilities and
        ``entropy`` / ``mutual_info`` / ``variance`` maps, all at the image's size; the
        ``samples`` passes run batched."""
        require_dropout(self.model, self.model_name)
        if self.tta is not None:
            raise SeglabError("Test-time augmentation (tta) and Monte-Carlo dropout cannot be combined: build the "
                              "Segmenter without tta for predict_mc, or drop --mc-samples.")
        x = self.preprocess(image).to(self.device)

        def forward(batch: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, self.amp_dtype):
                return forward_at_size(self.model, batch, self.infer_size).float()

        with torch.inference_mode(), mc_dropout(self.model):
            maps = uncertainty_maps(mc_probabilities(forward, x, samples))
        out = {k: v[0].cpu().numpy() for k, v in maps.items()}
        out["labels"] = maps["mean"][0].argmax(0).cpu().numpy()
        return out


def _instance_segmenter(ckpt: Checkpoint, path: str | Path, device: str, amp: str, tile: Sequence[int] | None,
                        tta: TTA | bool | str | None, score_threshold: float | None) -> InstanceSegmenter:
    """The instance predictor of an instance checkpoint; the semantic-only options are refused."""
    asked = [name for name, value in (("tile (--tile)", tile), ("tta (--tta)", tta)) if value]
    if asked:
        raise SeglabError(f"{' and '.join(asked)} {'apply' if len(asked) > 1 else 'applies'} to semantic checkpoints; {str(path)!r} is an instance "
                          f"({ckpt.meta.model_name}) checkpoint, which runs on the whole image. Drop "
                          f"{'them' if len(asked) > 1 else 'it'}.")
    meta = ckpt.meta
    return InstanceSegmenter(model_from_checkpoint(ckpt, path), meta.num_classes, meta.class_names, meta.palette,
                             device=device, amp=amp, model_name=meta.model_name,
                             score_threshold=0.5 if score_threshold is None else score_threshold)
