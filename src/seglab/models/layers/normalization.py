"""Parameter-free input normalisations: SegNet-Basic's LRN and the paper's local contrast normalisation.

The SegNet paper pre-processes CamVid with local contrast normalisation (LCN) "to correct for
non-uniform scene illumination" and to highlight edges. Here it is a layer inside the model, not
a data transform, so every path that runs the model (predict, serve, tiling, ONNX and OpenVINO
export) applies it the same way and a checkpoint cannot be used without it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab.core.errors import SeglabError

__all__ = ["INPUT_NORMS", "LocalContrastNorm", "make_input_norm"]

#: Names accepted by the ``input_norm`` argument of SegNet-Basic, Bayesian SegNet-Basic and FCN-Basic.
INPUT_NORMS = ("lrn", "lcn", "none")


class LocalContrastNorm(nn.Module):
    """Local contrast normalisation in the style of Jarrett et al. (2009).

    Subtractive step: remove a Gaussian-weighted local mean taken over all channels. Divisive step:
    divide by the Gaussian-weighted local standard deviation, floored at that standard deviation's
    mean over the image so that flat regions (sky, road) are not blown up into noise. Borders use
    replicate padding, which works at any input size and exports to ONNX as an ``edge`` pad.

    Args:
        channels: Input channels; the window spans all of them with equal weight.
        kernel_size: Side of the Gaussian window (odd).
        sigma: Its standard deviation in pixels; by default ``kernel_size / 4``.
        eps: Lower bound of the divisor, for images that are flat everywhere (real images have a
            mean local standard deviation far above it, so it only keeps rounding noise from growing).
    """

    def __init__(self, channels: int = 3, kernel_size: int = 9, sigma: float | None = None, eps: float = 1e-2) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise SeglabError(f"LocalContrastNorm kernel_size must be odd and positive, got {kernel_size}.")
        sigma = kernel_size / 4 if sigma is None else float(sigma)
        offsets = torch.arange(kernel_size, dtype=torch.float32) - (kernel_size - 1) / 2
        line = torch.exp(-(offsets**2) / (2 * sigma**2))
        window = torch.outer(line, line)
        window = window / (window.sum() * channels)  # sums to 1 over the window and the channels
        # Non-persistent: the window is derived from the arguments, so state dicts stay as they were.
        self.register_buffer("window", window.expand(1, channels, -1, -1).contiguous(), persistent=False)
        self.pad = kernel_size // 2
        self.eps = eps
        self.kernel_size = kernel_size
        self.sigma = sigma

    def _local_mean(self, x: Tensor) -> Tensor:
        padded = F.pad(x, (self.pad,) * 4, mode="replicate")
        return F.conv2d(padded, self.window.to(x.dtype))

    def forward(self, x: Tensor) -> Tensor:
        centred = x - self._local_mean(x)
        local_std = self._local_mean(centred * centred).clamp_min(0).sqrt()
        floor = local_std.mean(dim=(2, 3), keepdim=True)
        return centred / torch.maximum(local_std, floor).clamp_min(self.eps)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, sigma={self.sigma:g}"


def make_input_norm(name: str | None, channels: int, *, input_lrn: bool | None = None) -> nn.Module | None:
    """The input normalisation called ``name`` (``lrn``, ``lcn`` or ``none``), or None for ``none``.

    ``input_lrn`` is the older boolean switch, kept for recipes that use it: False means ``none``.
    """
    if input_lrn is not None and not input_lrn:
        name = "none"
    key = "none" if name is None else str(name).lower()
    if key == "lrn":
        # The official segnet_basic_train.prototxt's LRN: across 5 channels, no parameters.
        return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
    if key == "lcn":
        return LocalContrastNorm(channels)
    if key == "none":
        return None
    raise SeglabError(f"input_norm must be one of {', '.join(INPUT_NORMS)}, got {name!r}.")

