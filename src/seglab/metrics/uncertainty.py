"""Uncertainty maps and calibration of Monte-Carlo dropout samples (Bayesian SegNet).

From ``S`` softmax samples ``p_s`` (:func:`seglab.ops.mc_dropout.mc_probabilities`) the prediction
is their mean ``p̄``; its uncertainty is summarised by predictive entropy ``H[p̄]`` (total),
mutual information ``H[p̄] - mean_s H[p_s]`` (the model's own, epistemic share) and the
predictive variance (what the Bayesian SegNet tutorial script draws).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["CalibrationMeter", "uncertainty_maps"]


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
