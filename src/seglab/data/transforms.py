"""Joint image/mask transforms built on ``torchvision.transforms.v2``.

Training: random scale -> random crop (padding the image with 0 and the mask with the
ignore index when it is smaller than the crop) -> horizontal flip -> optional vertical flip
and quarter turns (for data without an "up", e.g. EM slices) -> colour jitter (image
only) -> float + normalise. Evaluation: float + normalise only, at full size.

Masks travel as ``tv_tensors.Mask``, so every geometric step resamples them with
nearest-neighbour interpolation and no new label value can appear. All randomness comes
from ``torch``'s generator, which DataLoader workers (and seglab's per-sample seeding)
control, so augmentation is reproducible.

Example:
    >>> tf = build_transforms(cfg.data, train=True, ignore_index=11)   # doctest: +SKIP
    >>> image, mask = tf(image_uint8_hwc, mask_hw)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from seglab.core.config import DataConfig
from seglab.core.errors import SeglabError

__all__ = ["SegmentationTransform", "build_transforms", "check_colour_jitter", "inference_size"]

ArrayLike = np.ndarray | torch.Tensor


def _as_image(image: ArrayLike) -> tv_tensors.Image:
    """``H x W x 3`` uint8 array (or ``3 x H x W`` tensor) -> ``tv_tensors.Image`` (a copy)."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise SeglabError(f"Expected an H x W x 3 image array, got shape {image.shape}.")
        return tv_tensors.Image(torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1))
    return tv_tensors.Image(image.clone())


def _as_mask(mask: ArrayLike) -> tv_tensors.Mask:
    if isinstance(mask, np.ndarray):
        return tv_tensors.Mask(torch.from_numpy(np.array(mask, copy=True)))
    return tv_tensors.Mask(mask.clone())


class SegmentationTransform:
    """Callable ``(image, mask) -> (float32 3xHxW normalised, int64 HxW)``; ``mask`` may be None.

    Args:
        train: Apply the random augmentation (else normalise only).
        mean: Per-channel mean, for images scaled to ``[0, 1]``.
        std: Per-channel standard deviation.
        ignore_index: Mask fill value for padding.
        crop_size: ``[H, W]`` of the random crop, or None for no crop.
        scale_range: ``[low, high]`` of the random rescale factor.
        hflip: Flip left-right with probability 0.5.
        vflip: Flip upside down with probability 0.5 (off for road scenes, whose sky is up).
        rotate90: Rotate by a random multiple of 90 degrees: any of the four for square
            samples, 0 or 180 otherwise so a batch keeps one shape. Exact: no resampling.
        color_jitter: Strength ``s``: brightness, contrast and saturation vary by factors
            in ``[1 - s, 1 + s]``.
        hue_jitter: Hue shifts by up to ``h`` of a full turn either way (``0 <= h <= 0.5``).
    """

    def __init__(
        self,
        *,
        train: bool,
        mean: Sequence[float],
        std: Sequence[float],
        ignore_index: int,
        crop_size: Sequence[int] | None = None,
        scale_range: Sequence[float] = (1.0, 1.0),
        hflip: bool = True,
        vflip: bool = False,
        rotate90: bool = False,
        color_jitter: float = 0.0,
        hue_jitter: float = 0.0,
    ) -> None:
        self.train = train
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self.ignore_index = int(ignore_index)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.crop_size = (int(crop_size[0]), int(crop_size[1])) if crop_size else None
        self.crop = (
            v2.RandomCrop(
                self.crop_size,
                pad_if_needed=True,
                fill={tv_tensors.Image: 0, tv_tensors.Mask: self.ignore_index},
            )
            if self.crop_size
            else None
        )
        self.flip = v2.RandomHorizontalFlip(p=0.5) if hflip else None
        self.vflip = v2.RandomVerticalFlip(p=0.5) if vflip else None
        self.rotate90 = bool(rotate90)
        s, h = float(color_jitter), float(hue_jitter)
        # Hue goes through HSV and costs about 4 times the other three together (4 ms for a 144x192
        # crop on one core), still small beside a training step; so it is a separate, opt-in setting.
        self.jitter = v2.ColorJitter(brightness=s, contrast=s, saturation=s, hue=h) if s > 0 or h > 0 else None

    def _random_scale(self, image: tv_tensors.Image, mask: tv_tensors.Mask | None):
        low, high = self.scale_range
        if low == high == 1.0:
            return image, mask
        factor = low + (high - low) * float(torch.rand(()))
        h, w = image.shape[-2:]
        size = [max(1, round(h * factor)), max(1, round(w * factor))]
        image = F.resize(image, size, antialias=True)
        # torchvision only ever resamples a Mask with a nearest mode. NEAREST_EXACT samples at pixel
        # centres like the bilinear image resize does; plain NEAREST would shift labels by up to half a pixel.
        mask = F.resize(mask, size, interpolation=v2.InterpolationMode.NEAREST_EXACT) if mask is not None else None
        return image, mask

    def _augment(self, image: tv_tensors.Image, mask: tv_tensors.Mask | None):
        image, mask = self._random_scale(image, mask)
        pair = (image, mask) if mask is not None else (image,)
        for step in (self.crop, self.flip, self.vflip):
            if step is not None:
                out = step(*pair)  # v2 returns a bare tensor for a single input, a tuple otherwise
                pair = out if isinstance(out, tuple) else (out,)
        if self.rotate90:
            square = pair[0].shape[-2] == pair[0].shape[-1]
            turns = int(torch.randint(4, ())) if square else 2 * int(torch.randint(2, ()))
            if turns:
                pair = tuple(tv_tensors.wrap(torch.rot90(t, turns, dims=(-2, -1)), like=t) for t in pair)
        if self.jitter is not None:
            pair = (self.jitter(pair[0]), *pair[1:])  # colour changes never touch labels
        return pair[0], (pair[1] if mask is not None else None)

    def __call__(self, image: ArrayLike, mask: ArrayLike | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Transform one sample.

        Args:
            image: ``uint8`` ``H x W x 3`` array or ``3 x H x W`` tensor.
            mask: ``H x W`` integer class ids, or None (inference).

        Returns:
            ``(image, mask)``: plain tensors, float32 ``3 x H x W`` and int64 ``H x W`` (or None).
        """
        img = _as_image(image)
        msk = _as_mask(mask) if mask is not None else None
        if self.train:
            img, msk = self._augment(img, msk)
        out = F.to_dtype(img, torch.float32, scale=True)
        out = F.normalize(out, mean=self.mean, std=self.std)
        out_mask = msk.as_subclass(torch.Tensor).long() if msk is not None else None
        return out.as_subclass(torch.Tensor).contiguous(), out_mask

    def __repr__(self) -> str:
        return (
            f"SegmentationTransform(train={self.train}, crop_size={self.crop_size}, scale_range={self.scale_range}, "
            f"hflip={self.flip is not None}, vflip={self.vflip is not None}, rotate90={self.rotate90}, "
            f"color_jitter={self.jitter is not None}, ignore_index={self.ignore_index})"
        )


def check_colour_jitter(cfg: DataConfig) -> None:
    """Clear errors for ``color_jitter`` and ``hue_jitter`` (semantic and instance data alike)."""
    if cfg.color_jitter < 0:
        raise SeglabError(f"--data.color_jitter must be >= 0, got {cfg.color_jitter}.")
    if not 0 <= cfg.hue_jitter <= 0.5:
        raise SeglabError(f"--data.hue_jitter is a fraction of a full hue turn in [0, 0.5], got {cfg.hue_jitter}: "
                          "e.g. --data.hue_jitter 0.05.")


def build_transforms(cfg: DataConfig, train: bool, ignore_index: int | None = None) -> SegmentationTransform:
    """Transforms for ``cfg`` (see the module docstring for the steps).

    Args:
        cfg: The data config (``crop_size``, ``scale_range``, ``hflip``, ``color_jitter``, ``mean``, ``std``).
        train: Augment (training) or normalise only (evaluation, inference).
        ignore_index: Mask padding value; defaults to ``cfg.ignore_index`` or 255.

    Raises:
        SeglabError: malformed ``scale_range``, ``crop_size``, ``mean`` or ``std``.
    """
    if len(cfg.scale_range) != 2 or not 0 < cfg.scale_range[0] <= cfg.scale_range[1]:
        raise SeglabError(f"--data.scale_range must be [low, high] with 0 < low <= high, got {cfg.scale_range}.")
    if cfg.crop_size is not None and (len(cfg.crop_size) != 2 or min(cfg.crop_size) < 1):
        raise SeglabError(f"--data.crop_size must be [height, width] of positive integers, got {cfg.crop_size}.")
    if len(cfg.mean) != 3 or len(cfg.std) != 3 or min(cfg.std) <= 0:
        raise SeglabError(f"--data.mean and --data.std need 3 values (std > 0), got {cfg.mean} and {cfg.std}.")
    check_colour_jitter(cfg)
    if ignore_index is None:
        ignore_index = cfg.ignore_index if cfg.ignore_index is not None else 255
    return SegmentationTransform(
        train=train,
        mean=cfg.mean,
        std=cfg.std,
        ignore_index=ignore_index,
        crop_size=cfg.crop_size,
        scale_range=cfg.scale_range,
        hflip=cfg.hflip,
        vflip=cfg.vflip,
        rotate90=cfg.rotate90,
        color_jitter=cfg.color_jitter,
        hue_jitter=cfg.hue_jitter,
    )


def inference_size(cfg: DataConfig) -> list[int] | None:
    """The ``[H, W]`` a model trained on ``cfg`` runs at in validation, evaluation and prediction.

    That is ``image_size`` times ``infer_scale``; None (the input's own size) without ``image_size``.
    Why a scale: random rescaling shows the model objects at ``scale_range`` times their
    ``image_size`` size, so with a range centred above 1 (CamVid's ``[0.6, 1.75]``) inference at
    ``image_size`` sits at the small end of what training saw. Choose it on a held-out split.

    Raises:
        SeglabError: ``infer_scale`` not positive, or set without ``image_size``.
    """
    scale = float(cfg.infer_scale)
    if not 0 < scale < float("inf"):
        raise SeglabError(f"--data.infer_scale must be a positive number, got {cfg.infer_scale}: e.g. 1.25.")
    if cfg.image_size is None:
        if scale != 1.0:
            raise SeglabError(f"--data.infer_scale {scale:g} scales data.image_size, which is not set: "
                              "add --data.image_size [H,W] or drop --data.infer_scale.")
        return None
    return [max(1, round(side * scale)) for side in cfg.image_size]
