"""VGG16 as a segmentation backbone, and torchvision VGG16 weights for it, fc layers included.

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015 (arXiv:1409.1556). FCN (arXiv:1411.4038), DeconvNet (arXiv:1505.04366) and
DeepLab-LargeFOV (arXiv:1412.7062) all start from its 13 conv layers and turn the classifier's
fully connected ``fc6``/``fc7`` into convolutions. What differs between them is the pooling
(FCN: 2x2/2; DeepLab: 3x3 with stride 1 in the last two stages), dilation, padding and the shape of
``fc6``, so :class:`VGG16Backbone` takes those as arguments.

Weights come from torchvision: ``"imagenet"`` (``VGG16_Weights.IMAGENET1K_V1``, or the ``_BN``
variant for backbones with BatchNorm) or the path of a file written by
``torch.save(torchvision.models.vgg16().state_dict(), path)``. The conv layers load directly;
``classifier.0`` (``4096 x 25088``) becomes ``fc6`` as ``4096 x 512 x 7 x 7`` and ``classifier.3``
becomes ``fc7`` as ``4096 x 4096 x 1 x 1``. A smaller fc layer (DeepLab's 3x3, 1024 channels) is
filled by decimation: every 4th filter and every 3rd spatial tap, as DeepLab describes.

Example:
    >>> import torch
    >>> backbone = VGG16Backbone(fc=make_fc_layers(kernel_size=1, width=64))
    >>> [f.shape[1] for f in backbone(torch.zeros(1, 3, 64, 64))]
    [64, 128, 256, 512, 512, 64]
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from seglab.core.errors import SeglabError
from seglab.models.layers.blocks import ConvNormAct
from seglab.models.weights import read_state_dict_file, vgg16_bn_key_map

__all__ = [
    "VGG16_FEATURE_INDICES",
    "VGG16_STAGES",
    "VGG16Backbone",
    "fc_weights_for",
    "load_vgg16_weights",
    "make_fc_layers",
    "read_vgg16_state",
    "vgg16_key_map",
]

#: Positions of the 13 conv layers in ``torchvision.models.vgg16().features`` (no BatchNorm).
VGG16_FEATURE_INDICES: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
#: torchvision ``classifier`` positions of the two fully connected layers that become convolutions.
_FC_SOURCES: dict[str, str] = {"fc6": "classifier.0", "fc7": "classifier.3"}
#: Output channels of the VGG16 conv layers, grouped by pooling stage.
VGG16_STAGES: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
_MAX_LISTED = 6


def _how_to_save(batch_norm: bool) -> str:
    return f"torch.save(torchvision.models.{'vgg16_bn' if batch_norm else 'vgg16'}().state_dict(), path)"


class VGG16Backbone(nn.Module):
    """The 13 VGG16 convs in five stages, each followed by its pooling layer, then optional fc layers.

    Conv blocks are named ``stages.<s>.<b>`` (a :class:`ConvNormAct`), like SegNet's encoder, so
    one key map serves both.

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
        self.stages = nn.ModuleList()
        for s, (stage_widths, dilation) in enumerate(zip(widths, dilations)):
            blocks = []
            for b, width in enumerate(stage_widths):
                # Convs keep their bias even before a norm layer so that torchvision weights load.
                padding = first_padding if s == b == 0 else dilation
                blocks.append(ConvNormAct(in_channels, width, 3, padding=padding, dilation=dilation, bias=True,
                                          norm_layer=norm_layer))
                in_channels = width
            self.stages.append(nn.Sequential(*blocks))
        self.pools = nn.ModuleList(pools)
        self.fc = fc
        self.feature_channels = [stage_widths[-1] for stage_widths in widths]
        if fc is not None:
            self.feature_channels.append(fc.out_channels)
        self.out_channels = self.feature_channels[-1]

    def forward(self, x: Tensor) -> list[Tensor]:
        """Pooled outputs of the five stages (``pool1`` ... ``pool5``), then ``fc7`` if there is ``fc``."""
        features = []
        for stage, pool in zip(self.stages, self.pools):
            x = pool(stage(x))
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
        :class:`ConvNormAct` whose child ``0`` is the conv.
    """
    layers = OrderedDict(
        fc6=ConvNormAct(in_channels, width, kernel_size, padding=padding, dilation=dilation, bias=True,
                        norm_layer=norm_layer),
        drop6=nn.Dropout(dropout),
        fc7=ConvNormAct(width, width, 1, bias=True, norm_layer=norm_layer),
        drop7=nn.Dropout(dropout),
    )
    block = nn.Sequential(layers)
    block.out_channels = width
    return block


def _conv_blocks(encoder: nn.Module) -> list[tuple[str, nn.Sequential]]:
    return [(f"stages.{s}.{b}", block) for s, stage in enumerate(encoder.stages) for b, block in enumerate(stage)]


def vgg16_key_map(encoder: nn.Module) -> dict[str, str]:
    """Map an encoder's conv (and norm) state-dict keys to ``vgg16().features`` / ``vgg16_bn().features`` keys.

    Args:
        encoder: A :class:`VGG16Backbone` or :class:`~seglab.models.segnet.SegNetEncoder` with
            VGG16's 13 convs in ``stages``; with BatchNorm it maps to ``vgg16_bn``.

    Returns:
        ``{encoder key: features key}``, e.g. ``"stages.1.0.0.weight" -> "5.weight"``.
    """
    blocks = _conv_blocks(encoder)
    if len(blocks) != len(VGG16_FEATURE_INDICES):
        raise SeglabError(f"VGG16 weights need an encoder with 13 conv blocks; this one has {len(blocks)}.")
    if _has_batch_norm(encoder):
        return vgg16_bn_key_map(encoder)
    return {
        f"{prefix}.0.{name}": f"{index}.{name}"
        for (prefix, block), index in zip(blocks, VGG16_FEATURE_INDICES)
        for name in block[0].state_dict()
    }


def _has_batch_norm(encoder: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm2d) for m in encoder.stages.modules())


def _download_imagenet(batch_norm: bool) -> dict[str, Tensor]:
    """torchvision's ImageNet VGG16(-BN) state dict, from the hub cache or the internet."""
    from torchvision.models import VGG16_BN_Weights, VGG16_Weights  # lazy: importing torchvision is slow

    weights = VGG16_BN_Weights.IMAGENET1K_V1 if batch_norm else VGG16_Weights.IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=True)
    except Exception as e:  # noqa: BLE001  (URLError, HTTPError, SSL, hash check: all mean "no weights")
        raise SeglabError(
            f"ImageNet VGG16 weights could not be downloaded ({type(e).__name__}: {e}). If this machine is offline, "
            f"save them elsewhere with {_how_to_save(batch_norm)} using weights='IMAGENET1K_V1' and pass that "
            "file's local path as pretrained_backbone."
        ) from e


def read_vgg16_state(source: str | Path, *, batch_norm: bool = False) -> tuple[dict[str, Tensor], str]:
    """Read a whole ``vgg16``/``vgg16_bn`` state dict (``features.*`` and ``classifier.*`` keys).

    Args:
        source: ``"imagenet"`` or a file path; a ``module.`` prefix (DataParallel) is dropped.
        batch_norm: Which torchvision model ``"imagenet"`` means (and error messages name).

    Returns:
        The state dict and a description of the source for error messages.
    """
    if str(source) == "imagenet":
        state, where = _download_imagenet(batch_norm), "torchvision ImageNet weights"
    else:
        state = read_state_dict_file(Path(source), "pretrained_backbone", _how_to_save(batch_norm))
        where = f"file {str(source)!r}"
    if any(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return dict(state), where


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


def _check_compatible(state: Mapping[str, Tensor], wanted: Mapping[str, tuple[int, ...]], where: str,
                      batch_norm: bool) -> None:
    """Raise a :class:`SeglabError` listing missing keys and shape mismatches, if any."""
    # BN's num_batches_tracked is bookkeeping that older checkpoints lack; never require it.
    missing = [k for k in wanted if k not in state and not k.endswith("num_batches_tracked")]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {shape}" for k, shape in wanted.items()
                  if k in state and tuple(state[k].shape) != shape]
    if not missing and not mismatched:
        return
    problems = []
    if missing:
        more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        problems.append("missing keys: " + ", ".join(missing[:_MAX_LISTED]) + more)
    if mismatched:
        problems.append("shape mismatches: " + "; ".join(mismatched[:_MAX_LISTED]))
    hint = " VGG16 weights need in_channels=3." if "features.0.weight" in "".join(mismatched) else ""
    model = "vgg16_bn" if batch_norm else "vgg16"
    raise SeglabError(f"The {where} is not a torchvision {model} state dict ({'; '.join(problems)}).{hint} "
                      f"Save one with {_how_to_save(batch_norm)}.")


def load_vgg16_weights(encoder: nn.Module, source: str | Path, *, fc: nn.Module | None = None) -> None:
    """Copy torchvision VGG16 (or VGG16-BN) weights into ``encoder`` and, if given, ``fc``, in place.

    Args:
        encoder: Module with VGG16's 13 convs in ``stages`` (see :func:`vgg16_key_map`). With
            BatchNorm it takes ``vgg16_bn`` weights (conv + BN), otherwise ``vgg16``.
        source: ``"imagenet"`` or the path of a whole-model ``vgg16``/``vgg16_bn`` state dict.
        fc: Module with ``fc6``/``fc7`` :class:`ConvNormAct` children (:func:`make_fc_layers`);
            their convs get the reshaped (and, if smaller, decimated) classifier weights.

    Raises:
        SeglabError: Weights unavailable (offline), unreadable file, or a state dict of another model.
    """
    batch_norm = _has_batch_norm(encoder)
    key_map = vgg16_key_map(encoder)
    state, where = read_vgg16_state(source, batch_norm=batch_norm)
    target = encoder.state_dict()
    wanted = {f"features.{src}": tuple(target[dst].shape) for dst, src in key_map.items()}
    if fc is not None:
        # fc shapes are checked against VGG's own (the decimation adapts them afterwards).
        wanted |= {"classifier.0.weight": (4096, 512 * 7 * 7), "classifier.0.bias": (4096,),
                   "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,)}
    _check_compatible(state, wanted, where, batch_norm)
    with torch.no_grad():
        for dst, src in key_map.items():
            if f"features.{src}" in state:
                target[dst].copy_(state[f"features.{src}"])
        if fc is not None:
            for layer in _FC_SOURCES:
                conv = getattr(fc, layer)[0]
                weight, bias = fc_weights_for(state, layer, conv)
                conv.weight.copy_(weight)
                conv.bias.copy_(bias)
