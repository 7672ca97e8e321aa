"""Contract tests run on every registered model, plus registry behaviour.

The parametrised test below picks up new semantic models automatically through
``list_models(task="semantic")``; instance models (Mask R-CNN, torchvision-style detections instead
of logits) have their own contract test in tests/test_instance_models.py. A semantic model
passes if it returns finite ``N x K x H x W`` logits at the input size (also for sizes that are
not multiples of 32), every trainable parameter receives a finite gradient, eval mode is
deterministic, and it exposes ``encoder`` and ``decoder`` for fine-tuning.

Models with unpadded convolutions (``unet_valid``) accept only some input sizes and return smaller
logits; they declare this with ``output_size((h, w))`` and ``nearest_valid_sizes(n)`` methods, and
are fed the nearest valid size at or above the requested one and checked against ``output_size``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seglab.core.errors import SeglabError
from seglab.models.layers.blocks import MaxUnpool2d, NearestUp2d
from seglab.models.registry import create_model, list_models
from seglab.ops.contract import FeatureBackbone, runnable_size

NUM_CLASSES = 5


def _io_sizes(model: torch.nn.Module, size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Input size to feed and logits size to expect: ``size`` twice, unless the model has ``output_size``."""
    if not hasattr(model, "output_size"):
        return size, size
    in_size = runnable_size(model, size)
    return in_size, tuple(model.output_size(in_size))


@pytest.mark.parametrize("size", [(33, 47), (64, 64)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list_models(task="semantic"))
def test_model_contract(name: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES)
    assert hasattr(model, "encoder") and hasattr(model, "decoder"), f"{name} must expose .encoder and .decoder"
    in_size, out_size = _io_sizes(model, size)
    x = torch.randn(2, 3, *in_size)
    target = torch.randint(0, NUM_CLASSES, (2, *out_size))

    model.train()
    out = model(x)
    assert isinstance(out, torch.Tensor), f"{name} must return a logits tensor, got {type(out).__name__}"
    assert out.shape == (2, NUM_CLASSES, *out_size)
    assert torch.isfinite(out).all()
    F.cross_entropy(out, target).backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: no gradient for {pname}"
            assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"

    model.eval()
    with torch.no_grad():
        first, second = model(x), model(x)
    assert torch.equal(first, second), f"{name}: eval forward is not deterministic"


def test_unknown_model_suggests_close_name() -> None:
    with pytest.raises(SeglabError, match="Did you mean 'segnet'"):
        create_model("segnett", num_classes=3)


def test_create_model_drops_none_kwargs() -> None:
    # segnet_basic has no weights_backbone option: a None must vanish rather than raise, and a
    # None upsample must leave the model default (max-unpooling) in place.
    model = create_model("segnet_basic", num_classes=3, weights_backbone=None, upsample=None)
    assert all(isinstance(up, MaxUnpool2d) for up in model.decoder.upsamples)
    model = create_model("segnet_basic", num_classes=3, upsample="nearest", input_lrn=None)
    assert all(isinstance(up, NearestUp2d) for up in model.decoder.upsamples)


def test_create_model_rejects_unknown_option() -> None:
    with pytest.raises(SeglabError, match="does not accept that option"):
        create_model("segnet", num_classes=3, dropout=0.5)
    with pytest.raises(SeglabError, match="does not accept that option"):
        create_model("segnet_basic", num_classes=3, weights_backbone="imagenet")


def test_create_model_rejects_bad_num_classes() -> None:
    with pytest.raises(SeglabError, match="num_classes"):
        create_model("segnet_basic", num_classes=0)


def _feature_backbones() -> list[tuple[str, torch.nn.Module]]:
    from seglab.models.backbones.vgg import VGG16Backbone
    from seglab.models.backbones.xception import Xception65
    from seglab.models.semantic.deeplab_v1 import deeplab_v1_backbone
    from seglab.models.semantic.deeplabv3 import resnet_backbone
    from seglab.models.semantic.fcn import fcn_backbone

    narrow = ((4, 4), (8, 8), (8, 8, 8), (16, 16, 16), (16, 16, 16))
    return [("vgg16", VGG16Backbone(widths=narrow)), ("fcn", fcn_backbone(widths=narrow, fc_width=8)),
            ("deeplab_v1", deeplab_v1_backbone(widths=narrow, fc_width=8)),
            ("resnet50_os8_low", resnet_backbone(50, 8, low_level=True)), ("resnet50_os16", resnet_backbone(50, 16)),
            ("xception65_os16", Xception65(output_stride=16))]


def test_feature_backbones_declare_their_outputs() -> None:
    """``feature_channels`` / ``feature_strides`` match what ``forward`` returns, shallowest first.

    A stride ``s`` means ``s`` more input pixels give one more feature pixel, whatever the padding
    (FCN pads by 100), so two inputs 64 pixels apart must give outputs ``64 / s`` apart.
    """
    for name, backbone in _feature_backbones():
        assert isinstance(backbone, FeatureBackbone), name
        backbone.eval()
        outputs = []
        with torch.no_grad():
            for side in (64, 128):
                out = backbone(torch.zeros(1, 3, side, side + 32))
                outputs.append(list(out.values()) if isinstance(out, dict) else out)
        small, large = outputs
        assert [f.shape[1] for f in small] == list(backbone.feature_channels), name
        assert len(backbone.feature_strides) == len(small), name
        for a, b, stride in zip(small, large, backbone.feature_strides):
            assert (b.shape[-2] - a.shape[-2], b.shape[-1] - a.shape[-1]) == (64 // stride, 64 // stride), name

