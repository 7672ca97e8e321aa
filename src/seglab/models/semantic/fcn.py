"""FCN-32s, FCN-16s and FCN-8s on VGG16 (Long, Shelhamer & Darrell, CVPR 2015, arXiv:1411.4038).

VGG16 without BatchNorm (13 convs, five 2x2 max-pools), ``fc6`` as a 7x7 conv 512 -> 4096 and
``fc7`` as a 1x1 conv 4096 -> 4096 (each with ReLU and dropout 0.5), a 1x1 ``score_fr`` to K
classes, and learnt transposed-conv upsampling initialised to bilinear:

* FCN-32s: ``score_fr`` upsampled 32x.
* FCN-16s: ``score_fr`` upsampled 2x, plus ``score_pool4`` (1x1 on pool4), then 16x.
* FCN-8s: as 16s, upsampled 2x again, plus ``score_pool3``, then 8x.

Any input size: like the reference Caffe models (``voc-fcn*s``) we pad ``conv1_1`` by 100 and crop.
The padding guarantees ``pool5`` is at least 7x7, so the unpadded 7x7 ``fc6`` (which must stay
unpadded for ImageNet ``fc6`` weights to mean what they meant) always has an output, even for a
1x1 image; every upsampled map is then larger than the layer it is fused with and is cropped at
a fixed offset. The offsets follow from the layers' coordinate maps (a k x k, stride s, pad p
layer maps output ``u`` to input ``s*u + (k-1)/2 - p``): ``score_fr`` position ``u`` sits at
image pixel ``32u + 12.5``, a ``2f x 2f`` stride-``f`` deconvolution puts input ``u`` at output
``f*u + f - 0.5``, so upscore32 is cropped at 19; ``score_pool4`` at 5 and upscore16 at 27 (16s);
``score_pool3`` at 9 and upscore8 at 31 (8s). The outputs are therefore exactly input-sized. We
prefer this to pad-to-a-multiple-of-32 with a 'same'-padded fc6 because it is the published
network, pixel for pixel; the price is compute: a 360x480 image is processed as 558x678.

Skip score layers start at zero, as in the paper (a new skip is a no-op at first); ``score_fr`` is
He-initialised like the rest (the paper zeroes it too, but only on top of a pretrained net).

Example:
    >>> import torch
    >>> from seglab.models.registry import create_model
    >>> model = create_model("fcn8s", num_classes=21).eval()
    >>> model(torch.zeros(1, 3, 33, 47)).shape
    torch.Size([1, 21, 33, 47])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from seglab.models.backbones.vgg import VGG16_STAGES, VGG16Backbone, load_vgg16_weights, make_fc_layers
from seglab.models.layers.blocks import init_he
from seglab.models.layers.heads import bilinear_conv_transpose, crop_to, zero_init_

__all__ = ["FCN", "FCNHead", "FCN_INPUT_PADDING", "FCN_SKIPS", "fcn_backbone", "fcn8s", "fcn16s", "fcn32s"]

#: Padding of ``conv1_1``; the crop offsets below are derived for it.
FCN_INPUT_PADDING = 100
#: Skip connections: backbone output index and crop offset of the skip's score map.
FCN_SKIPS: dict[str, tuple[int, int]] = {"pool4": (3, 5), "pool3": (2, 9)}
#: Per output stride: the skips used (deepest first) and the crop offset of the final upsampling.
_VARIANTS: dict[int, tuple[tuple[str, ...], int]] = {32: ((), 19), 16: (("pool4",), 27), 8: (("pool4", "pool3"), 31)}


class FCNHead(nn.Module):
    """Scores, skip fusions and upsampling of FCN-``stride``s; the decoder of :class:`FCN`.

    Args:
        feature_channels: Channels of the backbone outputs (``pool1`` ... ``pool5``, ``fc7``).
        num_classes: Number of classes K.
        stride: 32, 16 or 8.
        learnable_upsampling: Learn the deconvolutions (``False`` fixes them at bilinear).
    """

    def __init__(self, feature_channels: Sequence[int], num_classes: int, stride: int,
                 learnable_upsampling: bool = True) -> None:
        super().__init__()
        if stride not in _VARIANTS:
            raise ValueError(f"FCN stride must be one of {sorted(_VARIANTS)}, got {stride}.")
        skips, self.final_offset = _VARIANTS[stride]
        self.skip_names = skips
        self.score_fr = nn.Conv2d(feature_channels[-1], num_classes, 1)
        init_he(self.score_fr)
        self.skip_scores = nn.ModuleList(
            zero_init_(nn.Conv2d(feature_channels[FCN_SKIPS[s][0]], num_classes, 1)) for s in skips
        )
        self.skip_upsamples = nn.ModuleList(
            bilinear_conv_transpose(num_classes, 2, learnable=learnable_upsampling) for _ in skips
        )
        self.upscore = bilinear_conv_transpose(num_classes, stride, learnable=learnable_upsampling)

    def forward(self, features: Sequence[Tensor], size: Sequence[int]) -> Tensor:
        """Logits of size ``size`` from the backbone outputs (``pool1`` ... ``pool5``, ``fc7``)."""
        x = self.score_fr(features[-1])
        for name, up, score in zip(self.skip_names, self.skip_upsamples, self.skip_scores):
            index, offset = FCN_SKIPS[name]
            x = up(x)
            x = x + crop_to(score(features[index]), offset, x.shape)
        return crop_to(self.upscore(x), self.final_offset, size)


class FCN(nn.Module):
    """VGG16 backbone (``encoder``, with ``fc6``/``fc7``) and :class:`FCNHead` (``decoder``); returns logits.

    Args:
        encoder: A :class:`VGG16Backbone` with ``fc`` layers and ``conv1_1`` padded by 100.
        decoder: The score/upsampling head.
    """

    def __init__(self, encoder: VGG16Backbone, decoder: FCNHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``N x num_classes x H x W`` for images ``N x C x H x W``."""
        return self.decoder(self.encoder(x), x.shape[-2:])


def fcn_backbone(
    in_channels: int = 3,
    *,
    dropout: float = 0.5,
    widths: Sequence[Sequence[int]] = VGG16_STAGES,
    fc_width: int = 4096,
) -> VGG16Backbone:
    """He-initialised VGG16 with ``conv1_1`` padded by 100 and ``fc6`` (7x7, unpadded) / ``fc7``.

    ``widths``/``fc_width`` default to VGG16's; narrower values give a cheap model of the same
    geometry (the tests use one to check the crop offsets).
    """
    fc = make_fc_layers(widths[-1][-1], fc_width, 7, dropout=dropout)
    encoder = VGG16Backbone(in_channels, first_padding=FCN_INPUT_PADDING, fc=fc, widths=widths)
    init_he(encoder)
    return encoder


def _build_fcn(
    num_classes: int,
    stride: int,
    in_channels: int,
    weights_backbone: str | None,
    learnable_upsampling: bool,
    dropout: float,
) -> FCN:
    encoder = fcn_backbone(in_channels, dropout=dropout)
    if weights_backbone is not None:
        load_vgg16_weights(encoder, weights_backbone, fc=encoder.fc)
    return FCN(encoder, FCNHead(encoder.feature_channels, num_classes, stride, learnable_upsampling))


_ARGS_DOC = """
    Args:
        num_classes: Number of output classes K.
        in_channels: Image channels (3 for pretrained weights).
        weights_backbone: ``"imagenet"`` (torchvision ``VGG16_Weights.IMAGENET1K_V1``, downloaded once
            into the cache), a URL or the path of a ``torchvision.models.vgg16().state_dict()`` file
            (see :func:`seglab.models.weights.load_state_dict`): convs load by key, ``fc6``/``fc7``
            from ``classifier.0``/``classifier.3`` reshaped to 7x7 and 1x1 kernels. ``None``: He init.
        learnable_upsampling: ``True`` learns the bilinear-initialised deconvolutions (SegNet
            paper's "FCN (learnt deconv)"); ``False`` freezes them ("fixed bilinear").
        dropout: Dropout after ``fc6`` and ``fc7``.

    Returns:
        An :class:`FCN` returning logits at the input size.
"""


def _with_args_doc(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Append the arguments shared by the three FCN builders to ``fn``'s docstring."""
    fn.__doc__ = (fn.__doc__ or "").rstrip() + "\n" + _ARGS_DOC
    return fn


@_with_args_doc
def fcn32s(num_classes: int, *, in_channels: int = 3, weights_backbone: str | None = None,
           learnable_upsampling: bool = True, dropout: float = 0.5) -> nn.Module:
    """FCN-32s: ``score_fr`` upsampled 32x by a 64x64 deconvolution (136,152,917 parameters for K=21)."""
    return _build_fcn(num_classes, 32, in_channels, weights_backbone, learnable_upsampling, dropout)


@_with_args_doc
def fcn16s(num_classes: int, *, in_channels: int = 3, weights_backbone: str | None = None,
           learnable_upsampling: bool = True, dropout: float = 0.5) -> nn.Module:
    """FCN-16s: 2x upsampled scores + ``score_pool4``, then a 32x32 stride-16 deconvolution (134,815,994 for K=21)."""
    return _build_fcn(num_classes, 16, in_channels, weights_backbone, learnable_upsampling, dropout)


@_with_args_doc
def fcn8s(num_classes: int, *, in_channels: int = 3, weights_backbone: str | None = None,
          learnable_upsampling: bool = True, dropout: float = 0.5) -> nn.Module:
    """FCN-8s: as FCN-16s, then 2x + ``score_pool3`` and a 16x16 stride-8 deconvolution.

    134,489,759 parameters for K=21: the paper's "134M" of FCN-VGG16 (Table 1) is the converted
    VGG16 up to ``score_fr`` (134,346,581); the two skip scores add 16,170 and the three
    21x21-channel deconvolutions 127,008."""
    return _build_fcn(num_classes, 8, in_channels, weights_backbone, learnable_upsampling, dropout)
