"""BatchNorm folding: merge an eval-mode BatchNorm into the convolution that feeds it.

In eval mode BatchNorm is a fixed per-channel affine map ``y = s * (x - mean) + beta`` with
``s = gamma / sqrt(running_var + eps)``, so a conv followed by it equals one conv with its weight
scaled by ``s`` along the output-channel axis and bias ``(b - mean) * s + beta``. Folding removes
one full read and write of every activation per layer. Used by :mod:`seglab.inference.fastpath`.

Example:
    >>> block = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).eval()
    >>> fold_batchnorm(block), type(block[1]).__name__
    (1, 'Identity')
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from seglab.core.errors import SeglabError

__all__ = ["fold_batchnorm", "fuse_conv_bn"]

# Exact types only: a Conv2d subclass may transform its weight in forward (weight
# standardisation, ...), and folding a scale into such a weight would change its output.
_FOLDABLE_CONVS: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.ConvTranspose2d)
_FOLDABLE_NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm2d, nn.SyncBatchNorm)


def fuse_conv_bn(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> nn.Module:
    """A copy of ``conv`` whose output equals ``bn(conv(x))`` with ``bn`` in eval mode.

    With ``s = gamma / sqrt(running_var + eps)`` per output channel, the fused conv has weight
    ``w * s`` (scaled along its output-channel axis) and bias ``(b - running_mean) * s + beta``
    (``b = 0`` when the conv had no bias). The arithmetic is done in float64 and cast back.

    Args:
        conv: A ``Conv2d`` or ``ConvTranspose2d`` (any groups, with or without bias).
        bn: The ``BatchNorm2d`` applied to its output; must track running statistics.

    Returns:
        A new conv module (``conv`` and ``bn`` are unchanged).
    """
    if bn.running_mean is None or bn.running_var is None:
        raise SeglabError("Cannot fold a BatchNorm without running statistics (track_running_stats=False).")
    out_channels = conv.out_channels
    if bn.num_features != out_channels:
        raise SeglabError(f"BatchNorm has {bn.num_features} features but the conv outputs {out_channels} channels.")
    w = conv.weight.detach().double()
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(mean)
    if isinstance(conv, nn.ConvTranspose2d):
        # Weight is (in, out/groups, kh, kw): output channel g*(out/groups)+j lives at [g-th block, j].
        g = conv.groups
        blocks = w.reshape(g, w.shape[0] // g, w.shape[1], *w.shape[2:])
        w = (blocks * scale.reshape(g, 1, -1, 1, 1)).reshape(w.shape)
    else:
        w = w * scale.reshape(-1, 1, 1, 1)
    fused = copy.deepcopy(conv)
    dtype = conv.weight.dtype
    fused.weight = nn.Parameter(w.to(dtype), requires_grad=conv.weight.requires_grad)
    fused.bias = nn.Parameter(((bias - mean) * scale + beta).to(dtype), requires_grad=conv.weight.requires_grad)
    return fused


def _can_fold(conv: nn.Module, bn: nn.Module, refcount: dict[int, int]) -> bool:
    """Whether ``bn`` directly after ``conv`` can be folded without changing any output."""
    return (
        type(conv) in _FOLDABLE_CONVS
        and type(bn) in _FOLDABLE_NORMS
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.num_features == conv.out_channels
        and not parametrize.is_parametrized(conv)
        # A module used in two places would change the other use too.
        and refcount[id(conv)] == 1
        and refcount[id(bn)] == 1
    )


def fold_batchnorm(module: nn.Module) -> int:
    """Fold, in place, every BatchNorm that directly follows a conv inside an ``nn.Sequential``.

    Only pairs whose folding is provably exact are touched: exact ``Conv2d``/``ConvTranspose2d``
    and ``BatchNorm2d``/``SyncBatchNorm`` types, BN with running statistics, neither module shared
    with another part of the model, conv weight not parametrised. Call it on a model in eval
    mode (a folded model no longer normalises with batch statistics in train mode).

    Args:
        module: The model to rewrite.

    Returns:
        The number of BatchNorm layers folded (each replaced by ``nn.Identity``).
    """
    refcount: dict[int, int] = {}
    for _, m in module.named_modules(remove_duplicate=False):
        refcount[id(m)] = refcount.get(id(m), 0) + 1
    folded = 0
    # Materialise the list first: the loop replaces children of the containers it visits.
    for parent in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        names = list(parent._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = parent._modules[first], parent._modules[second]
            if conv is not None and bn is not None and _can_fold(conv, bn, refcount):
                parent._modules[first] = fuse_conv_bn(conv, bn)
                parent._modules[second] = nn.Identity()
                folded += 1
    return folded
