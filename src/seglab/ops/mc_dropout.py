"""Monte-Carlo dropout (Bayesian SegNet): batched stochastic passes.

The maps and calibration computed from the samples are in :mod:`seglab.metrics.uncertainty`.

With dropout active and BatchNorm in eval mode, ``S`` stochastic passes give softmax
samples ``p_s``. The prediction is their mean ``p̄``; its uncertainty is summarised by

* predictive entropy ``H[p̄] = -Σ_c p̄_c log p̄_c`` (total uncertainty),
* mutual information ``H[p̄] - mean_s H[p_s]`` (the model's own, epistemic share),
* predictive variance: the variance over samples of ``p_s``, averaged over classes
  (what the Bayesian SegNet tutorial script draws).

The ``S`` samples run as one batch (the input repeated ``S`` times, in chunks that bound
memory), not as ``S`` sequential passes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from seglab.core.errors import SeglabError

__all__ = ["mc_dropout", "mc_probabilities"]


@contextlib.contextmanager
def mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (BN uses running statistics) with only the dropout layers sampling."""
    was_training = model.training
    model.eval()
    drops = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    for m in drops:
        m.train()
    try:
        yield model
    finally:
        model.train(was_training)
        if not was_training:
            for m in drops:
                m.eval()


def _to_probabilities(logits: Tensor) -> Tensor:
    if logits.shape[1] == 1:  # binary sigmoid head: make it a two-class distribution
        p = torch.sigmoid(logits.float())
        return torch.cat([1 - p, p], dim=1)
    return logits.float().softmax(1)


@torch.inference_mode()
def mc_probabilities(forward: Callable[[Tensor], Tensor], images: Tensor, samples: int,
                     max_batch: int = 8) -> Tensor:
    """``S x N x C x H x W`` class probabilities from ``samples`` stochastic passes, batched.

    ``forward`` must already sample (use inside :func:`mc_dropout`). Up to ``max_batch``
    images (samples x inputs) go through the network at once.
    """
    if samples < 1:
        raise SeglabError(f"--mc-samples must be at least 1, got {samples}.")
    n = images.shape[0]
    per_chunk = max(1, max_batch // n)
    out = []
    for start in range(0, samples, per_chunk):
        s = min(per_chunk, samples - start)
        batch = images.unsqueeze(0).expand(s, *images.shape).reshape(s * n, *images.shape[1:])
        probs = _to_probabilities(forward(batch))
        out.append(probs.reshape(s, n, *probs.shape[1:]))
    return torch.cat(out, 0)
