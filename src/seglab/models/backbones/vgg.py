"""VGG16 as a segmentation backbone, laid out like torchvision's ``vgg16().features``.

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015 (arXiv:1409.1556). FCN (arXiv:1411.4038), DeconvNet (arXiv:1505.04366) and
DeepLab-LargeFOV (arXiv:1412.7062) all start from its 13 conv layers and turn the classifier's
fully connected ``fc6``/``fc7`` into convolutions. What differs between them is the pooling
(FCN: 2x2/2; DeepLab: 3x3 with stride 1 in the last two stages), dilation, padding and the shape of
``fc6``, so :class:`VGG16Backbone` takes those as arguments.

The convs (and BatchNorms, ReLUs) sit in :class:`VGGFeatures`, numbered exactly as in
torchvision's ``vgg16().features`` / ``vgg16_bn().features``, pools included in the count; the
pools themselves are kept apart (``pools``, or SegNet's index-recording ``pool``) so they can
differ from torchvision's. A torchvision state dict therefore loads by key, with no map:
``features.<i>`` is ``features.<i>``. ``classifier.0`` (``4096 x 25088``) becomes ``fc6`` as
``4096 x 512 x 7 x 7`` and ``classifier.3`` becomes ``fc7`` as ``4096 x 4096 x 1 x 1``; a smaller
fc layer (DeepLab's 3x3, 1024 channels) is filled by decimation: every 4th filter and every 3rd
spatial tap, as DeepLab describes. Models saved before this layout (convs named
``stages.<s>.<b>.<0 conv | 1 norm>``) still load: :class:`LegacyStageKeys` renames their keys.

Example:
    >>> import torch
    >>> backbone = VGG16Backbone(fc=make_fc_layers(kernel_size=1, width=64))
    >>> [f.shape[1] for f in backbone(torch.zeros(1, 3, 64, 64))]
    [64, 128, 256, 512, 512, 64]
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from seglab.core.errors import SeglabError
from seglab.models.layers.blocks import conv_norm_act
from seglab.models.weights import check_state_dict, load_state_dict, strip_prefix

__all__ = ["VGG16_STAGES", "LegacyStageKeys", "VGG16Backbone", "VGGFeatures", "fc_weights_for", "load_vgg16_weights",
           "make_fc_layers"]

#: torchvision ``classifier`` positions of the two fully connected layers that become convolutions.
_FC_SOURCES: dict[str, str] = {"fc6": "classifier.0", "fc7": "classifier.3"}
#: Output channels of the VGG16 conv layers, grouped by pooling stage.
VGG16_STAGES: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGGFeatures(nn.Sequential):
    """Conv -> [norm] -> [activation] per layer, named with torchvision's flat ``features`` numbering.

    Every module gets the index it has in torchvision's ``make_layers``, and one index after each
    stage stays free for the pooling layer, which the owner keeps itself. For VGG16 widths this is
    ``vgg16().features`` (convs at 0, 2, 5, ...) without norm, ``vgg16_bn().features`` (0, 3, 7, ...)
    with BatchNorm. Run it stage by stage with :meth:`run_stage`; ``features[i]`` is the module
    torchvision numbers ``i``. It is an ``nn.Sequential`` (whose own ``forward`` refuses to run,
    having no pools) because consecutive children are what
    :func:`~seglab.models.layers.folding.fold_batchnorm` folds.

    Args:
        in_channels: Input channels.
        stages: Conv output widths per stage.
        kernel_size: Conv kernel size.
        bias: Whether the convs have biases (torchvision's do, BatchNorm or not).
        norm_layer: Norm factory after every conv; ``None`` for none.
        activation_layer: Activation factory (called with ``inplace=True``); ``None`` for none.
        dilations: Conv dilation per stage (padding follows, so the convs keep the size).
        first_padding: Padding of the very first conv; ``None`` for "same" (FCN uses 100).

    Attributes:
        stage_keys: Module names of each stage, in order.
        legacy_names: ``{"stages.<s>.<b>.<c>": "<i>"}``: where each module was before this layout.
    """

    def __init__(
        self,
        in_channels: int,
        stages: Sequence[Sequence[int]],
        *,
        kernel_size: int = 3,
        bias: bool = True,
        norm_layer: Callable[..., nn.Module] | None = None,
        activation_layer: Callable[..., nn.Module] | None = nn.ReLU,
        dilations: Sequence[int] | None = None,
        first_padding: int | None = None,
    ) -> None:
        dilations = [1] * len(stages) if dilations is None else list(dilations)
        if len(dilations) != len(stages):
            raise ValueError(f"Got {len(stages)} stages: give one dilation per stage.")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        stage_keys, legacy, index = [], {}, 0
        for s, (widths, dilation) in enumerate(zip(stages, dilations)):
            keys = []
            for b, width in enumerate(widths):
                same = (kernel_size - 1) // 2 * dilation
                padding = first_padding if s == b == 0 and first_padding is not None else same
                parts = [nn.Conv2d(in_channels, width, kernel_size, padding=padding, dilation=dilation, bias=bias)]
                if norm_layer is not None:
                    parts.append(norm_layer(width))
                if activation_layer is not None:
                    parts.append(activation_layer(inplace=True))
                for c, module in enumerate(parts):
                    layers[str(index)] = module
                    keys.append(str(index))
                    legacy[f"stages.{s}.{b}.{c}"] = str(index)
                    index += 1
                in_channels = width
            stage_keys.append(keys)
            index += 1  # the stage's pooling layer
        super().__init__(layers)
        self.stage_keys: list[list[str]] = stage_keys
        self.legacy_names: dict[str, str] = legacy
        self.out_channels = in_channels

    def __getitem__(self, index: int | str) -> nn.Module:  # type: ignore[override]
        """The module torchvision numbers ``index`` (not the ``index``-th module: pools leave gaps)."""
        return self._modules[str(index)]

    def run_stage(self, x: Tensor, stage: int) -> Tensor:
        """Apply the convs (norms, activations) of ``stage``; the caller pools."""
        for key in self.stage_keys[stage]:
            x = self._modules[key](x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        raise RuntimeError("VGGFeatures holds no pooling layers: call run_stage(x, s) per stage and pool in between.")


class LegacyStageKeys:
    """Mixin loading state dicts written when the convs were named ``stages.<s>.<b>.<c>`` (older seglab).

    The owner has a :class:`VGGFeatures` named ``features``; old keys under the owner's prefix are
    renamed in place (``stages.1.0.1.running_var`` -> ``features.8.running_var`` in VGG16-BN)
    before the normal loading, so ``model.load_state_dict(old_state)`` simply works.
    """

    _version = 2  # 1: ``stages.<s>.<b>.<c>`` names
    features: VGGFeatures

    def upgrade_state_dict(self, state_dict: MutableMapping[str, Any], prefix: str = "") -> None:
        """Rename this module's old-layout keys in ``state_dict`` (keys of the whole model; ``prefix`` is ours)."""
        start = prefix + "stages."
        for key in [k for k in state_dict if k.startswith(start)]:
            s, b, c, name = (key[len(prefix):].split(".", 4) + [""] * 4)[1:5]
            new = self.features.legacy_names.get(f"stages.{s}.{b}.{c}")
            if new is not None and name:
                state_dict[f"{prefix}features.{new}.{name}"] = state_dict.pop(key)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        self.upgrade_state_dict(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[misc]


def _stride(pool: nn.Module) -> int:
    stride = getattr(pool, "stride", 1)
    return int(stride[0] if isinstance(stride, (tuple, list)) else stride)


class VGG16Backbone(LegacyStageKeys, nn.Module):
    """The 13 VGG16 convs in five stages, each followed by its pooling layer, then optional fc layers.

    Args:
        in_channels: Image channels.
        norm_layer: Norm factory after every conv; ``None`` for plain VGG16.
        pools: One pooling module per stage; ``None`` for 2x2/2 ceil-mode max-pooling (Caffe).
        dilations: Conv dilation per stage (padding follows, so the convs keep the size).
        first_padding: Padding of ``conv1_1`` (FCN uses 100).
        fc: ``fc6``/``fc7`` block from :func:`make_fc_layers`, applied after the last pool.
        widths: Conv widths per stage; VGG16's by default (narrower ones make cheap test models
            with the same geometry).

    Attributes:
        feature_channels: Channels of each output of :meth:`forward`.
        feature_strides: Input pixels per feature pixel of each output (the ``FeatureBackbone``
            protocol of :mod:`seglab.ops.contract`).
    """

    def __init__(
        self,
        in_channels: int = 3,
        *,
        norm_layer: Callable[..., nn.Module] | None = None,
        pools: Sequence[nn.Module] | None = None,
        dilations: Sequence[int] = (1, 1, 1, 1, 1),
        first_padding: int = 1,
        fc: nn.Sequential | None = None,
        widths: Sequence[Sequence[int]] = VGG16_STAGES,
    ) -> None:
        super().__init__()
        if pools is None:
            pools = [nn.MaxPool2d(2, 2, ceil_mode=True) for _ in widths]
        if not len(pools) == len(dilations) == len(widths):
            raise ValueError(f"Got {len(widths)} stages: give one pool and one dilation per stage.")
        # Convs keep their bias even before a norm layer so that torchvision weights load.
        self.features = VGGFeatures(in_channels, widths, norm_layer=norm_layer, dilations=dilations,
                                    first_padding=first_padding)
        self.pools = nn.ModuleList(pools)
        self.fc = fc
        self.feature_channels = [stage_widths[-1] for stage_widths in widths]
        strides, stride = [], 1
        for pool in pools:
            stride *= _stride(pool)
            strides.append(stride)
        if fc is not None:
            self.feature_channels.append(fc.out_channels)
            strides.append(stride)
        self.feature_strides = strides
        self.out_channels = self.feature_channels[-1]

    def forward(self, x: Tensor) -> list[Tensor]:
        """Pooled outputs of the five stages (``pool1`` ... ``pool5``), then ``fc7`` if there is ``fc``."""
        features = []
        for s, pool in enumerate(self.pools):
            x = pool(self.features.run_stage(x, s))
            features.append(x)
        if self.fc is not None:
            features.append(self.fc(x))
        return features


def make_fc_layers(
    in_channels: int = 512,
    width: int = 4096,
    kernel_size: int = 7,
    *,
    padding: int = 0,
    dilation: int = 1,
    dropout: float = 0.5,
    norm_layer: Callable[..., nn.Module] | None = None,
) -> nn.Sequential:
    """VGG's ``fc6``/``fc7`` as convolutions: ``fc6`` (k x k), ReLU, dropout, ``fc7`` (1x1), ReLU, dropout.

    Args:
        in_channels: Channels of ``pool5``.
        width: Output channels of both layers (4096 in VGG, 1024 in DeepLab-LargeFOV).
        kernel_size: ``fc6`` kernel (7 reproduces VGG's 7x7x512 input window).
        padding: ``fc6`` padding.
        dilation: ``fc6`` dilation (DeepLab's "atrous" rate).
        dropout: Dropout probability after each layer; 0 for none.
        norm_layer: Norm factory after each conv (DeconvNet), ``None`` for none.

    Returns:
        ``nn.Sequential`` with children ``fc6``, ``drop6``, ``fc7``, ``drop7``; ``fc6``/``fc7`` are
        torchvision ``Conv2dNormActivation`` blocks whose child ``0`` is the conv.
    """
    layers = OrderedDict(
        fc6=conv_norm_act(in_channels, width, kernel_size, padding=padding, dilation=dilation, bias=True,
                          norm_layer=norm_layer),
        drop6=nn.Dropout(dropout),
        fc7=conv_norm_act(width, width, 1, bias=True, norm_layer=norm_layer),
        drop7=nn.Dropout(dropout),
    )
    block = nn.Sequential(layers)
    block.out_channels = width
    return block


def fc_weights_for(state: Mapping[str, Tensor], layer: str, conv: nn.Conv2d) -> tuple[Tensor, Tensor]:
    """VGG's ``layer`` (``"fc6"``/``"fc7"``) weight and bias reshaped, and decimated if needed, for ``conv``.

    The linear weight is viewed as a conv kernel (``fc6``: ``4096 x 512 x 7 x 7``; ``fc7``:
    ``4096 x 4096 x 1 x 1``). When ``conv`` is smaller, filters and input channels are taken at an
    even stride (``4096 -> 1024`` keeps every 4th) and spatial taps too (``7 -> 3`` keeps 0, 3, 6;
    ``7 -> 1`` the centre), which is DeepLab's "decimation" of the fc layers.

    Raises:
        SeglabError: The shapes cannot be reconciled (e.g. 1000 filters from 4096).
    """
    source = _FC_SOURCES[layer]
    weight, bias = state[f"{source}.weight"], state[f"{source}.bias"]
    out_c, in_c, k = conv.out_channels, conv.in_channels, conv.kernel_size[0]
    src_in = 512 if layer == "fc6" else weight.shape[1]
    src_k = 7 if layer == "fc6" else 1
    if weight.shape[1] != src_in * src_k * src_k or weight.shape[0] % out_c or src_in % in_c:
        raise SeglabError(f"{source}.weight of shape {tuple(weight.shape)} cannot initialise {layer} "
                          f"({out_c} x {in_c} x {k} x {k}).")
    kernel = weight.reshape(weight.shape[0], src_in, src_k, src_k)
    if k > src_k or (k > 1 and (src_k - 1) % (k - 1)):
        raise SeglabError(f"{layer} kernel {k} cannot be decimated from VGG's {src_k}x{src_k}.")
    taps = [src_k // 2] if k == 1 else list(range(0, src_k, (src_k - 1) // (k - 1)))
    out_step, in_step = weight.shape[0] // out_c, src_in // in_c
    kernel = kernel[::out_step, ::in_step][:, :, taps][:, :, :, taps]
    return kernel.contiguous(), bias[::out_step].contiguous()


def load_vgg16_weights(encoder: nn.Module, source: str | Path, *, fc: nn.Module | None = None) -> None:
    """Copy torchvision VGG16 (or VGG16-BN) weights into ``encoder`` and, if given, ``fc``, in place.

    Args:
        encoder: Module with VGG16's 13 convs in a :class:`VGGFeatures` named ``features``
            (:class:`VGG16Backbone`, SegNet's encoder). With BatchNorm it takes ``vgg16_bn``
            weights (conv + BN), otherwise ``vgg16``.
        source: Anything :func:`seglab.models.weights.load_state_dict` reads (``"imagenet"``, a URL,
            a file) holding a whole-model ``vgg16``/``vgg16_bn`` state dict or its ``features`` part.
        fc: Module with ``fc6``/``fc7`` children (:func:`make_fc_layers`); their convs get the
            reshaped (and, if smaller, decimated) classifier weights.

    Raises:
        SeglabError: Weights unavailable (offline), unreadable file, or a state dict of another model.
    """
    features = encoder.features
    arch = "vgg16_bn" if any(isinstance(m, nn.BatchNorm2d) for m in features.modules()) else "vgg16"
    state = strip_prefix(load_state_dict(source, what=arch, option="weights_backbone"), "module.")
    if not any(k.startswith(("features.", "classifier.")) for k in state):  # a features-only dict
        state = {f"features.{k}": v for k, v in state.items()}
    wanted = {f"features.{k}": tuple(v.shape) for k, v in features.state_dict().items()}
    if fc is not None:
        # fc shapes are checked against VGG's own (the decimation adapts them afterwards).
        wanted |= {"classifier.0.weight": (4096, 512 * 7 * 7), "classifier.0.bias": (4096,),
                   "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,)}
    check_state_dict(state, wanted, source=source, what=arch, option="weights_backbone", part="encoder",
                     ignore=("classifier.",), hints={"features.0.weight": f"{arch} weights need in_channels=3."})
    current = features.state_dict()
    features.load_state_dict({k: state.get(f"features.{k}", v) for k, v in current.items()})
    if fc is not None:
        with torch.no_grad():
            for layer in _FC_SOURCES:
                conv = getattr(fc, layer)[0]
                weight, bias = fc_weights_for(state, layer, conv)
                conv.weight.copy_(weight)
                conv.bias.copy_(bias)
