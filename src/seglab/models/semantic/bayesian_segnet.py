"""Bayesian SegNet (Kendall, Badrinarayanan & Cipolla, BMVC 2017, arXiv:1511.02680).

SegNet with dropout (p = 0.5) on the central encoder and decoder units, kept active at
test time: averaging the softmax of several stochastic passes (Monte-Carlo dropout)
gives the prediction, and their spread gives its uncertainty (see
:mod:`seglab.ops.mc_dropout`). Placement follows the tutorial prototxts:

* ``bayesian_segnet``: after pool3, pool4, pool5 and after the decoder stages that end in
  conv5_1_D, conv4_1_D and conv3_1_D (6 dropout layers);
* ``bayesian_segnet_basic``: after pool3 and pool4 and after decoders 4 and 3.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from seglab.models.semantic.segnet import build_segnet, build_segnet_basic

__all__ = ["bayesian_segnet", "bayesian_segnet_basic"]


def bayesian_segnet(num_classes: int, *, in_channels: int = 3, weights_backbone: str | None = None,
                    upsample: str = "indices", dropout: float = 0.5, **kw: Any) -> nn.Module:
    """SegNet with dropout after encoder stages 3-5 and decoder stages 5-3 (deepest first).

    ``weights_backbone`` and the other options are :func:`~seglab.models.semantic.segnet.segnet`'s.
    """
    return build_segnet(num_classes, in_channels=in_channels, weights_backbone=weights_backbone,
                        upsample=upsample, dropout=dropout, encoder_dropout=(2, 3, 4), decoder_dropout=(0, 1, 2), **kw)


def bayesian_segnet_basic(num_classes: int, *, in_channels: int = 3, upsample: str = "indices",
                          input_norm: str = "lrn", input_lrn: bool | None = None, conv_bias: bool = False,
                          dropout: float = 0.5) -> nn.Module:
    """SegNet-Basic with dropout after encoders 3-4 and decoders 4-3 (``input_norm`` as SegNet-Basic's)."""
    return build_segnet_basic(num_classes, in_channels=in_channels, upsample=upsample, input_norm=input_norm,
                              input_lrn=input_lrn, conv_bias=conv_bias, dropout=dropout, encoder_dropout=(2, 3), decoder_dropout=(0, 1))
