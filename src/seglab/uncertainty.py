"""Monte-Carlo dropout (Bayesian SegNet): batched sampling, uncertainty maps, calibration.

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

from .errors import SeglabError
from .models.bayesian_segnet import has_dropout

__all__ = ["mc_dropout", "require_dropout", "mc_probabilities", "uncertainty_maps", "CalibrationMeter"]


def require_dropout(model: nn.Module, name: str) -> None:
    """Raise a clear error when Monte-Carlo dropout is asked of a model without dropout."""
    if not has_dropout(model):
        from .registry import list_models

        bayesian = [m for m in list_models() if "bayesian" in m]
        raise SeglabError(f"--mc-samples needs dropout layers, and model {name!r} has none. "
                          f"Monte-Carlo dropout works with: {', '.join(bayesian)}; train one of those "
                          "(e.g. --model.name bayesian_segnet_basic) or drop --mc-samples.")


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


def uncertainty_maps(probs: Tensor) -> dict[str, Tensor]:
    """Mean probabilities (``N x C x H x W``) and entropy / mutual information / variance (``N x H x W``)."""
    eps = 1e-12
    mean = probs.mean(0)
    entropy = -(mean * (mean + eps).log()).sum(1)
    expected_entropy = -(probs * (probs + eps).log()).sum(2).mean(0)
    return {
        "mean": mean,
        "entropy": entropy,
        "mutual_info": (entropy - expected_entropy).clamp_min(0),
        "variance": probs.var(0, unbiased=False).mean(1),
    }


class CalibrationMeter:
    """Expected calibration error and accuracy of pixels binned by predictive entropy.

    ECE uses ``bins`` equal-width bins of confidence (max mean probability); the entropy
    bins split ``[0, log C]`` into ``bins`` equal parts. Ignored pixels are left out.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None, bins: int = 10) -> None:
        self.num_classes, self.ignore_index, self.bins = max(2, num_classes), ignore_index, bins
        self.conf_count = torch.zeros(bins, dtype=torch.float64)
        self.conf_sum = torch.zeros(bins, dtype=torch.float64)
        self.conf_correct = torch.zeros(bins, dtype=torch.float64)
        self.unc_count = torch.zeros(bins, dtype=torch.float64)
        self.unc_correct = torch.zeros(bins, dtype=torch.float64)

    def update(self, mean_probs: Tensor, entropy: Tensor, target: Tensor) -> None:
        conf, pred = mean_probs.max(1)
        valid = torch.ones_like(target, dtype=torch.bool) if self.ignore_index is None else target != self.ignore_index
        conf, pred, ent, tgt = conf[valid].double().cpu(), pred[valid].cpu(), entropy[valid].double().cpu(), target[valid].cpu()
        correct = (pred == tgt).double()
        cbin = (conf * self.bins).long().clamp_(0, self.bins - 1)
        self.conf_count += torch.bincount(cbin, minlength=self.bins).double()
        self.conf_sum += torch.bincount(cbin, weights=conf, minlength=self.bins)
        self.conf_correct += torch.bincount(cbin, weights=correct, minlength=self.bins)
        max_entropy = torch.log(torch.tensor(float(self.num_classes), dtype=torch.float64))
        ubin = (ent / max_entropy * self.bins).long().clamp_(0, self.bins - 1)
        self.unc_count += torch.bincount(ubin, minlength=self.bins).double()
        self.unc_correct += torch.bincount(ubin, weights=correct, minlength=self.bins)

    def compute(self) -> dict:
        total = self.conf_count.sum().clamp_min(1)
        gap = (self.conf_sum - self.conf_correct).abs()
        ece = float(gap.sum() / total)
        width = 1.0 / self.bins
        bins = [{"entropy_from": round(i * width, 3), "entropy_to": round((i + 1) * width, 3),
                 "pixels": int(self.unc_count[i]),
                 "accuracy": float(self.unc_correct[i] / self.unc_count[i]) if self.unc_count[i] > 0 else None}
                for i in range(self.bins)]
        return {"ece": ece, "accuracy_by_uncertainty": bins}
