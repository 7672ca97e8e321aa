"""SegNet-Lite: the small teaching version of SegNet (Badrinarayanan et al., arXiv:1511.00561).

Five encoder stages of one conv 3x3 + BN + ReLU (16, 32, 64, 128, 256 channels) and a 2x2 max-pool
each; the decoder mirrors them (bilinear 2x upsampling, then conv 3x3 + BN + ReLU to 128, 64, 32,
16, 16 channels) and a 3x3 conv classifier, like SegNet's ``conv1_1_D``. It is built from
SegNet's own encoder and decoder classes, with bilinear upsampling instead of pooling indices, so
it works at any input size the same way. About 0.6 M parameters.

Binary segmentation: with ``num_classes`` 1 or 2 the model has **one** output channel, a
foreground logit. The rest of seglab treats a 1-channel output as binary: sigmoid and threshold
0.5 for labels (:func:`seglab.metrics.logits_to_labels`), sigmoid probabilities in inference,
and a binary loss (BCE + Dice) instead of cross-entropy, which refuses one channel. For
``num_classes > 2`` it returns ``num_classes`` channels (softmax/cross-entropy as usual).

Example:
    >>> import torch
    >>> from seglab.models.registry import create_model
    >>> create_model("segnet_lite", num_classes=2)(torch.zeros(1, 3, 45, 61)).shape
    torch.Size([1, 1, 45, 61])
"""

from __future__ import annotations

from torch import nn

from seglab.models.layers.blocks import init_he, upsample_uses_indices
from seglab.models.semantic.segnet import SegNet, SegNetDecoder, SegNetEncoder

__all__ = ["SEGNET_LITE_DECODER_STAGES", "SEGNET_LITE_STAGES", "output_channels", "segnet_lite"]

#: Encoder conv widths, one conv per stage.
SEGNET_LITE_STAGES: tuple[tuple[int, ...], ...] = ((16,), (32,), (64,), (128,), (256,))
#: Decoder conv widths, deepest stage first (each returns to the width of the stage above).
SEGNET_LITE_DECODER_STAGES: tuple[tuple[int, ...], ...] = ((128,), (64,), (32,), (16,), (16,))


def output_channels(num_classes: int) -> int:
    """Channels of a model's output: 1 (a sigmoid logit) for 1 or 2 classes, else ``num_classes``."""
    return 1 if num_classes <= 2 else num_classes


def segnet_lite(num_classes: int = 1, *, in_channels: int = 3, upsample: str = "bilinear") -> nn.Module:
    """SegNet-Lite, 5 small encoder/decoder stages; binary (one channel) by default.

    Args:
        num_classes: 1 or 2 for binary segmentation (one output channel), otherwise the number
            of output channels K.
        in_channels: Image channels.
        upsample: Decoder upsampling; ``bilinear`` (default, no indices) or any mode of
            :data:`seglab.models.layers.blocks.UPSAMPLE_MODES`, e.g. ``indices`` for SegNet's own.

    Returns:
        A :class:`~seglab.models.semantic.segnet.SegNet` module returning logits at the input size.
    """
    encoder = SegNetEncoder(in_channels, SEGNET_LITE_STAGES, return_indices=upsample_uses_indices(upsample))
    decoder = SegNetDecoder(encoder.out_channels, SEGNET_LITE_DECODER_STAGES, upsample=upsample)
    classifier = nn.Conv2d(decoder.out_channels, output_channels(num_classes), 3, padding=1)
    model = SegNet(encoder, decoder, classifier)
    init_he(model)
    return model
