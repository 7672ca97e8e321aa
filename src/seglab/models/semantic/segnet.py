"""SegNet and SegNet-Basic (Badrinarayanan, Kendall & Cipolla, TPAMI 2017, arXiv:1511.00561).

SegNet is an encoder-decoder: the encoder is the 13 conv layers of VGG16 with BatchNorm, each
stage ending in a 2x2 max-pool that records the argmax positions; the decoder mirrors it and
upsamples by placing each value back at its recorded position (max-unpooling), then densifies the
sparse map with convolutions. Both models return raw logits ``N x num_classes x H x W`` at the
input size, for any input size: pooling rounds odd sizes up (Caffe's ``ceil``) and every
upsampling step is told the exact pre-pool size, so 360x480 CamVid frames need no crop or pad.

The builders store the pooling indices as :data:`DEFAULT_INDEX_FORMAT` unless ``index_format``
says otherwise: int64 flat indices, or the paper's 2-bit window codes (``uint8``: 8x less
memory, ``packed``: 32x); outputs are identical (:mod:`seglab.models.layers.compact_pool`).

Example:
    >>> import torch
    >>> from seglab.models.registry import create_model
    >>> model = create_model("segnet", num_classes=11)
    >>> model(torch.zeros(1, 3, 45, 61)).shape
    torch.Size([1, 11, 45, 61])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from seglab.models.backbones.vgg import VGG16_STAGES, LegacyStageKeys, VGGFeatures, load_vgg16_weights
from seglab.models.layers.blocks import (
    conv_norm_act,
    init_he,
    make_upsample,
    max_pool_2x2,
    set_index_format,
    upsample_uses_indices,
)
from seglab.models.layers.normalization import make_input_norm

__all__ = [
    "DEFAULT_INDEX_FORMAT",
    "SEGNET_BASIC_STAGES",
    "SEGNET_DECODER_STAGES",
    "SegNet",
    "SegNetDecoder",
    "SegNetEncoder",
    "build_segnet",
    "build_segnet_basic",
    "segnet",
    "segnet_basic",
]

#: SegNet decoder conv outputs, deepest stage first (conv5_3_D ... conv1_2_D of the official
#: prototxt); the classifier conv1_1_D (64 -> K) follows separately.
SEGNET_DECODER_STAGES: tuple[tuple[int, ...], ...] = (
    (512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64,)
)
#: SegNet-Basic: four stages of one 64-channel 7x7 conv, in the encoder and in the decoder.
SEGNET_BASIC_STAGES: tuple[tuple[int, ...], ...] = ((64,), (64,), (64,), (64,))

PoolSizes = list[tuple[int, int]]

#: Index storage of the ``segnet`` / ``segnet_basic`` builders (see :func:`set_index_format`).
#: int64, because PyTorch's fused pooling kernels are faster in eager mode: a SegNet 360x480
#: CPU forward (2 cores, median of 5) took 2.28 s with int64 indices and 2.30 s with uint8 codes
#: on idle cores, 4.68 s and 5.39 s on busy ones; the codes were slower in every paired run.
#: Pick ``"uint8"`` (8x less index memory) or ``"packed"`` (32x) when memory matters more.
DEFAULT_INDEX_FORMAT = "int64"


def _conv_stage(
    in_channels: int,
    widths: Sequence[int],
    kernel_size: int,
    bias: bool,
    norm_layer: Callable[..., nn.Module],
    activation_layer: Callable[..., nn.Module] | None,
) -> nn.Sequential:
    """A stack of ``Conv2dNormActivation`` blocks with output widths ``widths``."""
    blocks = []
    for width in widths:
        blocks.append(conv_norm_act(in_channels, width, kernel_size, bias=bias, norm_layer=norm_layer,
                                    activation_layer=activation_layer))
        in_channels = width
    return nn.Sequential(*blocks)


def _dropouts(num_stages: int, p: float, after: Sequence[int]) -> nn.ModuleList:
    """``nn.Dropout(p)`` for the listed stages, ``nn.Identity`` elsewhere (no parameters either way)."""
    return nn.ModuleList(nn.Dropout(p) if i in after else nn.Identity() for i in range(num_stages))


class SegNetEncoder(LegacyStageKeys, nn.Module):
    """Conv stages, each followed by 2x2 ceil-mode max pooling that can record its argmax indices.

    The convs, norms and activations are a :class:`~seglab.models.backbones.vgg.VGGFeatures`
    named ``features``, numbered like torchvision's ``vgg16_bn().features``, so with VGG16's
    stages torchvision's weights load key for key; the one pooling module ``pool`` (see
    :func:`~seglab.models.layers.blocks.max_pool_2x2`) serves every stage.

    Args:
        in_channels: Image channels.
        stages: Conv output widths per stage.
        kernel_size: Conv kernel size.
        bias: Whether the convs have biases.
        return_indices: Record max-pool indices (needed by ``upsample="indices"``).
        norm_layer: Norm factory.
        activation_layer: Activation factory.
        dropout: Dropout probability applied after the pooling of the stages in ``dropout_after``.
        dropout_after: 0-based stage numbers followed by dropout (Bayesian SegNet).
    """

    def __init__(
        self,
        in_channels: int,
        stages: Sequence[Sequence[int]],
        *,
        kernel_size: int = 3,
        bias: bool = True,
        return_indices: bool = True,
        norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
        activation_layer: Callable[..., nn.Module] | None = nn.ReLU,
        dropout: float = 0.5,
        dropout_after: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.features = VGGFeatures(in_channels, stages, kernel_size=kernel_size, bias=bias, norm_layer=norm_layer,
                                    activation_layer=activation_layer)
        self.dropouts = _dropouts(len(stages), dropout, dropout_after)
        self.pool = max_pool_2x2(return_indices)
        self.return_indices = return_indices
        self.num_stages = len(stages)
        self.out_channels = self.features.out_channels

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor | None], PoolSizes]:
        """Encode ``x``.

        Returns:
            The deepest pooled features, the pooling indices per stage (``None`` entries when
            indices are not recorded) and the pre-pool ``(H, W)`` per stage, shallowest first.
        """
        indices: list[Tensor | None] = []
        sizes: PoolSizes = []
        for s, dropout in enumerate(self.dropouts):
            x = self.features.run_stage(x, s)
            sizes.append((x.shape[-2], x.shape[-1]))
            if self.return_indices:
                x, idx = self.pool(x)
                indices.append(idx)
            else:
                x = self.pool(x)
                indices.append(None)
            x = dropout(x)
        return x, indices, sizes


class SegNetDecoder(nn.Module):
    """Upsample-then-convolve stages mirroring a :class:`SegNetEncoder`.

    Args:
        in_channels: Channels of the encoder output.
        stages: Conv output widths per stage, deepest first.
        upsample: Upsampling mode, see :data:`seglab.models.layers.blocks.UPSAMPLE_MODES`.
        kernel_size: Conv kernel size.
        bias: Whether the convs have biases.
        norm_layer: Norm factory.
        activation_layer: Activation factory, ``None`` for none (SegNet-Basic).
        dropout: Dropout probability applied after the stages in ``dropout_after``.
        dropout_after: 0-based decoder stage numbers (deepest first) followed by dropout.
    """

    def __init__(
        self,
        in_channels: int,
        stages: Sequence[Sequence[int]],
        *,
        upsample: str = "indices",
        kernel_size: int = 3,
        bias: bool = True,
        norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
        activation_layer: Callable[..., nn.Module] | None = nn.ReLU,
        dropout: float = 0.5,
        dropout_after: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.upsamples = nn.ModuleList()
        self.stages = nn.ModuleList()
        for widths in stages:
            self.upsamples.append(make_upsample(upsample, in_channels))
            self.stages.append(_conv_stage(in_channels, widths, kernel_size, bias, norm_layer, activation_layer))
            in_channels = widths[-1]
        self.dropouts = _dropouts(len(stages), dropout, dropout_after)
        self.out_channels = in_channels

    def forward(self, x: Tensor, indices: Sequence[Tensor | None], sizes: PoolSizes) -> Tensor:
        """Decode encoder features; ``indices``/``sizes`` are the encoder's, shallowest first."""
        if len(indices) != len(self.stages) or len(sizes) != len(self.stages):
            raise ValueError(f"Decoder has {len(self.stages)} stages but got {len(indices)} pooling records.")
        for up, stage, dropout, idx, size in zip(self.upsamples, self.stages, self.dropouts, reversed(indices),
                                                 reversed(sizes)):
            x = dropout(stage(up(x, idx, size)))
        return x


class SegNet(nn.Module):
    """Input normalisation -> encoder -> decoder -> pixel classifier; returns logits.

    Args:
        encoder: Produces ``(features, indices, sizes)``.
        decoder: Consumes them and returns full-resolution features.
        classifier: Maps decoder features to ``num_classes`` logits.
        input_norm: Optional parameter-free input normalisation (SegNet-Basic's LRN).
    """

    def __init__(
        self, encoder: SegNetEncoder, decoder: SegNetDecoder, classifier: nn.Module, input_norm: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.input_norm = input_norm if input_norm is not None else nn.Identity()
        self.encoder = encoder
        self.decoder = decoder
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``N x num_classes x H x W`` for images ``N x C x H x W``."""
        features, indices, sizes = self.encoder(self.input_norm(x))
        return self.classifier(self.decoder(features, indices, sizes))


def segnet(
    num_classes: int,
    *,
    in_channels: int = 3,
    weights_backbone: str | None = None,
    upsample: str = "indices",
    index_format: str = DEFAULT_INDEX_FORMAT,
    **kw: Any,
) -> nn.Module:
    """SegNet with a VGG16-BN encoder, as in the paper and the official ``segnet_train.prototxt``.

    Encoder: 13 conv3x3 + BN + ReLU (64,64 | 128,128 | 256x3 | 512x3 | 512x3), convs with bias so
    torchvision's ``vgg16_bn`` weights load. Decoder: 12 conv3x3 + BN + ReLU (512x3 | 512,512,256 |
    256,256,128 | 128,64 | 64), then the classifier conv3x3 64 -> K, which outputs K classes
    directly (``conv1_1_D`` in the prototxt, no BN/ReLU). Decoder convs keep their biases because
    every prototxt conv has a bias blob (``lr_mult: 2`` second param).

    Parameters for K=11: 29,449,355 (encoder 14,723,136, decoder 14,719,872, classifier 6,347);
    the paper's 117 MB fp32 model and ENet's 29.46 M agree to rounding.

    Args:
        num_classes: Number of output classes K.
        in_channels: Image channels.
        weights_backbone: Encoder weights: ``"imagenet"`` (torchvision ``VGG16_BN_Weights.IMAGENET1K_V1``,
            downloaded once into the cache), a URL, or the path of a ``torchvision.models.vgg16_bn``
            state dict (whole or ``features`` only; any :func:`seglab.models.weights.load_state_dict`
            source); ``None`` (default) for He init, without any download.
        upsample: Decoder upsampling: ``indices`` (max-unpooling, the paper's), ``nearest``,
            ``bilinear`` or ``transposed``. Other modes pool without recording indices.
        index_format: Pooling-index storage: ``int64``, ``uint8`` (2-bit codes) or ``packed``
            (four codes per byte); the outputs are the same for all three.
        **kw: ``norm_layer`` / ``activation_layer`` factories for every conv block.

    Returns:
        A :class:`SegNet` module returning logits.
    """
    unknown = set(kw) - {"norm_layer", "activation_layer"}  # dropout belongs to bayesian_segnet
    if unknown:
        raise TypeError(f"segnet() got an unexpected keyword argument {sorted(unknown)[0]!r}")
    model = build_segnet(num_classes, in_channels=in_channels, weights_backbone=weights_backbone,
                         upsample=upsample, **kw)
    return set_index_format(model, index_format)


def build_segnet(
    num_classes: int,
    *,
    in_channels: int = 3,
    weights_backbone: str | None = None,
    upsample: str = "indices",
    dropout: float = 0.5,
    encoder_dropout: Sequence[int] = (),
    decoder_dropout: Sequence[int] = (),
    **kw: Any,
) -> SegNet:
    """Assemble SegNet; ``encoder_dropout``/``decoder_dropout`` list the stages followed by dropout."""
    norm_layer = kw.pop("norm_layer", nn.BatchNorm2d)
    activation_layer = kw.pop("activation_layer", nn.ReLU)
    if kw:
        raise TypeError(f"segnet() got an unexpected keyword argument {next(iter(kw))!r}")
    layers = dict(norm_layer=norm_layer, activation_layer=activation_layer)
    encoder = SegNetEncoder(in_channels, VGG16_STAGES, return_indices=upsample_uses_indices(upsample),
                            dropout=dropout, dropout_after=encoder_dropout, **layers)
    decoder = SegNetDecoder(encoder.out_channels, SEGNET_DECODER_STAGES, upsample=upsample, dropout=dropout,
                            dropout_after=decoder_dropout, **layers)
    model = SegNet(encoder, decoder, nn.Conv2d(decoder.out_channels, num_classes, 3, padding=1))
    init_he(model)
    if weights_backbone is not None:
        load_vgg16_weights(model.encoder, weights_backbone)
    return model


def segnet_basic(
    num_classes: int,
    *,
    in_channels: int = 3,
    upsample: str = "indices",
    input_norm: str = "lrn",
    input_lrn: bool | None = None,
    conv_bias: bool = False,
    index_format: str = DEFAULT_INDEX_FORMAT,
) -> nn.Module:
    """SegNet-Basic, the paper's small model for the decoder-variant study (TPAMI Table 1).

    Four encoders (conv7x7 64 + BN + ReLU + 2x2 max-pool) and four decoders (upsample + conv7x7 64
    + BN, no ReLU), then a 1x1 classifier 64 -> K with bias.

    Parameters for K=11: 1,416,075 = 8 convs (3*64*49 + 7*64*64*49 = 1,414,336) + 8 BNs
    (1,024) + classifier (715). The paper reports 1.425 M. The 8,925 gap (0.6 %) is not explained
    by any counting convention we tried: conv biases (the tutorial prototxt has them; see
    ``conv_bias``) add only 512, BN running statistics 1,024, a 7x7 classifier 33,792. We follow
    the layer description exactly and take 1.425 M as the paper's rounding/approximation.

    Args:
        num_classes: Number of output classes K.
        in_channels: Image channels.
        upsample: Decoder upsampling mode (see :func:`segnet`).
        input_norm: Parameter-free input normalisation: ``lrn`` (LocalResponseNorm(5, alpha=1e-4,
            beta=0.75), as the official ``segnet_basic_train.prototxt``), ``lcn`` (the paper's local
            contrast normalisation, see :class:`~seglab.models.layers.normalization.LocalContrastNorm`)
            or ``none``.
        input_lrn: The older switch: False means ``input_norm="none"``.
        conv_bias: Give the 7x7 convs biases like the tutorial prototxt; the paper says no biases.
        index_format: Pooling-index storage (see :func:`segnet`).

    Returns:
        A :class:`SegNet` module returning logits.
    """
    model = build_segnet_basic(num_classes, in_channels=in_channels, upsample=upsample, input_norm=input_norm,
                               input_lrn=input_lrn, conv_bias=conv_bias)
    return set_index_format(model, index_format)


def build_segnet_basic(
    num_classes: int,
    *,
    in_channels: int = 3,
    upsample: str = "indices",
    input_norm: str = "lrn",
    input_lrn: bool | None = None,
    conv_bias: bool = False,
    dropout: float = 0.5,
    encoder_dropout: Sequence[int] = (),
    decoder_dropout: Sequence[int] = (),
) -> SegNet:
    """Assemble SegNet-Basic; ``encoder_dropout``/``decoder_dropout`` list the stages followed by dropout."""
    encoder = SegNetEncoder(in_channels, SEGNET_BASIC_STAGES, kernel_size=7, bias=conv_bias,
                            return_indices=upsample_uses_indices(upsample), dropout=dropout,
                            dropout_after=encoder_dropout)
    decoder = SegNetDecoder(encoder.out_channels, SEGNET_BASIC_STAGES, upsample=upsample, kernel_size=7,
                            bias=conv_bias, activation_layer=None, dropout=dropout, dropout_after=decoder_dropout)
    classifier = nn.Conv2d(decoder.out_channels, num_classes, 1)
    model = SegNet(encoder, decoder, classifier, make_input_norm(input_norm, in_channels, input_lrn=input_lrn))
    init_he(model)
    return model
