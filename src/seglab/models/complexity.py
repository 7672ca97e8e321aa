"""Model size and compute: parameter counts and forward-pass GFLOPs.

GFLOPs follow :class:`torch.utils.flop_counter.FlopCounterMode`, which counts **2 FLOPs per
multiply-accumulate** and only counts matmul/convolution-type ops (conv, transposed conv, linear,
bmm, attention). BatchNorm, activations, pooling, max-unpooling and interpolation count as 0, as
do conv biases. Many papers quote multiply-adds ("GMACs") instead: divide our number by 2 to
compare with those.

Example:
    >>> from seglab.models.registry import create_model
    >>> model = create_model("segnet_basic", num_classes=11)
    >>> count_parameters(model)
    1416075
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from seglab.core.errors import SeglabError

__all__ = ["count_gflops", "count_parameters"]


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers such as BN running statistics are not counted).

    Args:
        model: Any module.
        trainable_only: Count only parameters with ``requires_grad``.

    Returns:
        The total number of scalars.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_gflops(model: nn.Module, size: Sequence[int] = (360, 480), in_channels: int = 3) -> float:
    """GFLOPs (1e9 FLOPs, 2 per multiply-add) of one forward pass on a ``1 x C x H x W`` input.

    The model runs once in eval mode under ``torch.no_grad`` on the device and dtype of its
    parameters; its train/eval mode is restored afterwards.

    Args:
        model: A model taking ``N x in_channels x H x W`` images.
        size: Input ``(H, W)``; the default is CamVid's 360x480.
        in_channels: Input channels.

    Returns:
        Forward-pass FLOPs divided by 1e9, as counted by ``FlopCounterMode``.
    """
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise SeglabError(f"size must be two positive integers (H, W), got {size!r}.")
    reference = next(model.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    x = torch.zeros(1, in_channels, *size, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9
