"""Test-time augmentation (TTA): horizontal flips and several scales, averaged at the input size.

:func:`tta_forward` runs a model-agnostic ``forward(x) -> logits at x's size`` on every view of
the images: each scale of :class:`TTA` (the image resized bilinearly, with antialiasing when it
shrinks) and, with ``flip``, its left-right mirror image. Each view's logits are brought back to
the input size (the mirrored ones un-flipped first; bilinearly, as
:func:`seglab.ops.resize.forward_at_size` resizes logits) and turned into probabilities, which
are averaged.

**Probabilities, not logits, are averaged** (softmax; sigmoid for one-channel binary heads, i.e.
the foreground probability): logits of different views are not on a common scale, so in a logit
mean a view the model is over-confident about outweighs the others, while the mean of
probabilities is the usual ensemble (mixture) rule, the one :mod:`seglab.ops.mc_dropout` uses
too. The result is returned *as logits* of that mean, ``log p̄`` (softmax gives back ``p̄``
exactly) or ``logit(p̄)`` for binary heads (sigmoid gives back ``p̄``), so argmax, the 0.5
threshold and ``predict_proba`` downstream all see the averaged probabilities unchanged.

**Batching**: the view of one scale and its mirror image go through ``forward`` as one batch
(``2N`` images), un-flipped afterwards; scales differ in size and cannot share a batch, so there
is one ``forward`` call per scale, ``len(scales)`` calls in all, never one per view.

Example:
    >>> import torch
    >>> conv = torch.nn.Conv2d(3, 4, 1)
    >>> tta_forward(conv, torch.rand(2, 3, 37, 53), scales=(0.75, 1.0, 1.25)).shape
    torch.Size([2, 4, 37, 53])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from seglab.core.errors import SeglabError

__all__ = ["DEFAULT_SCALES", "TTA", "as_tta", "tta_forward"]

#: Scales of ``--tta`` without ``--tta-scales``.
DEFAULT_SCALES: tuple[float, ...] = (0.75, 1.0, 1.25)

_EPS = 1e-6  # probabilities are clamped to [eps, 1 - eps] before taking logs


@dataclass(frozen=True)
class TTA:
    """Which views test-time augmentation averages: every scale, each also mirrored if ``flip``.

    Scales are relative to the size the model runs at (its training size where it has one).
    """

    scales: tuple[float, ...] = DEFAULT_SCALES
    flip: bool = True

    def __post_init__(self) -> None:
        try:
            scales = tuple(float(s) for s in self.scales)
        except (TypeError, ValueError):
            raise SeglabError(f"TTA scales must be numbers, got {self.scales!r}.") from None
        if not scales or not all(math.isfinite(s) and s > 0 for s in scales):
            raise SeglabError(f"TTA needs at least one scale, all positive, got {self.scales!r} "
                              "(e.g. --tta-scales 0.75,1,1.25).")
        object.__setattr__(self, "scales", scales)
        object.__setattr__(self, "flip", bool(self.flip))

    @property
    def views(self) -> int:
        """Views averaged per image."""
        return len(self.scales) * (2 if self.flip else 1)

    @classmethod
    def parse(cls, scales: str | None = None, flip: bool = True) -> TTA:
        """The spec of a comma-separated scale list such as ``"0.75,1,1.25"`` (None or "": the default)."""
        if not scales or not scales.strip():
            return cls(DEFAULT_SCALES, flip)
        try:
            values = tuple(float(s) for s in scales.replace(" ", "").split(",") if s)
        except ValueError:
            raise SeglabError(f"--tta-scales takes comma-separated numbers such as 0.75,1,1.25, got {scales!r}.") from None
        return cls(values, flip)

    @classmethod
    def from_cli(cls, enabled: bool, scales: str | None = None) -> TTA | None:
        """The spec of ``--tta [--tta-scales S]`` (``--tta-scales`` alone switches TTA on too); None without either."""
        return cls.parse(scales) if enabled or scales else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as recorded in evaluation results."""
        return {"scales": list(self.scales), "flip": self.flip}


def as_tta(value: TTA | bool | str | Sequence[float] | dict | None) -> TTA | None:
    """Normalise a user's ``tta=`` argument: None/False (off), True (default spec), a scale string
    ``"0.75,1,1.25"``, a sequence of scales, a dict of :class:`TTA` fields or a :class:`TTA`."""
    if value is None or value is False:
        return None
    if value is True:
        return TTA()
    if isinstance(value, TTA):
        return value
    if isinstance(value, str):
        return TTA.parse(value)
    if isinstance(value, dict):
        return TTA(**value)
    if isinstance(value, Sequence):
        return TTA(tuple(value))
    raise SeglabError(f"tta must be a TTA, True, a scale string like '0.75,1,1.25' or None, got {type(value).__name__}.")


def _scaled(size: Sequence[int], scale: float) -> tuple[int, int]:
    return (max(1, int(size[0] * scale + 0.5)), max(1, int(size[1] * scale + 0.5)))


def _resize_images(images: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def _resize_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(logits.shape[-2:]) == size:
        return logits
    # As forward_at_size does: so that one view gives exactly the plain forward's logits.
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _probabilities(logits: Tensor) -> Tensor:
    return torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(1)


def _logits_of(mean: Tensor) -> Tensor:
    """Logits whose softmax (sigmoid for one channel) is ``mean``."""
    p = mean.clamp(_EPS, 1 - _EPS)
    if mean.shape[1] == 1:
        return torch.log(p) - torch.log1p(-p)
    return torch.log(p)


def tta_forward(forward: Callable[[Tensor], Tensor], images: Tensor, scales: Sequence[float] = (1.0,),
                flip: bool = True, size: Sequence[int] | None = None) -> Tensor:
    """Logits ``N x C x H x W`` at ``images``' size from the mean probabilities of all views.

    Args:
        forward: ``x -> logits`` at ``x``'s size (any batch size), e.g.
            ``lambda x: forward_at_size(model, x, None)``, which also handles valid-convolution
            models. It must not resize ``x`` to a fixed size itself, or the scales change nothing:
            give that size as ``size`` instead.
        images: ``N x 3 x H x W``.
        scales: Sizes of the views, relative to ``size``.
        flip: Also run the left-right mirror image of every view (in the same batch).
        size: ``(h, w)`` the scale-1 view runs at (the model's training size, ``infer_size``);
            None: the input's own size.

    One view (``scales=(1.0,)``, ``flip=False``) returns ``forward``'s logits themselves (at the
    input size); several return ``log`` of the mean probabilities (``logit`` for one channel).
    """
    if images.dim() != 4:
        raise SeglabError(f"tta_forward expects images shaped N x C x H x W, got {tuple(images.shape)}.")
    spec = TTA(tuple(scales), flip)
    n, out_size = images.shape[0], (images.shape[-2], images.shape[-1])
    base = tuple(int(s) for s in size) if size is not None else out_size
    total: Tensor | None = None
    for scale in spec.scales:
        view = _resize_images(images, _scaled(base, scale))
        batch = torch.cat([view, view.flip(-1)]) if spec.flip else view
        logits = forward(batch).float()
        if logits.dim() != 4 or logits.shape[0] != batch.shape[0] or logits.shape[-2:] != batch.shape[-2:]:
            raise SeglabError(f"TTA: forward returned shape {tuple(logits.shape)} for views of shape "
                              f"{tuple(batch.shape)}; it must return logits at its input's size.")
        if spec.flip:
            logits = torch.cat([logits[:n], logits[n:].flip(-1)])
        logits = _resize_logits(logits, out_size)
        if spec.views == 1:
            return logits
        probs = _probabilities(logits)
        probs = probs[:n] + probs[n:] if spec.flip else probs
        total = probs if total is None else total + probs
    assert total is not None
    return _logits_of(total / spec.views)
