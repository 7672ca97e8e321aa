"""FCN-Basic, DeconvNet, DeepLab-LargeFOV, SegNet-Lite and torchvision VGG16 weight loading.

Large models are built on the ``meta`` device where only shapes matter; the pretrained-weight tests
share one random torchvision ``vgg16`` saved to a temporary file.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from seglab.core.errors import SeglabError
from seglab.metrics import logits_to_labels
from seglab.models import count_parameters
from seglab.models.backbones.vgg import VGG16Backbone, load_vgg16_weights, make_fc_layers
from seglab.models.registry import create_model
from seglab.models.semantic.deconvnet import _init_he_transposed, deconv_norm_act, fc_padding
from seglab.models.semantic.deeplab_v1 import DeepLabLargeFOV, DeepLabV1Head, deeplab_v1_backbone
from seglab.models.semantic.fcn import fcn_backbone
from seglab.models.semantic.segnet import SegNetEncoder

ONE_CHANNEL = ((1, 1), (1, 1), (1, 1, 1), (1, 1, 1), (1, 1, 1))
VGG16_CONVS = 14_714_688
ODD_SIZES = [(1, 1), (33, 47), (97, 131), (224, 224), (361, 479)]


def _meta_model(name: str, **kw: object) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kw)


# --- parameter counts -------------------------------------------------------------------------


def test_fcn_basic_parameter_count() -> None:
    model = create_model("fcn_basic", num_classes=11)
    encoder = 3 * 64 * 49 + 3 * 64 * 64 * 49 + 4 * 2 * 64  # SegNet-Basic's encoder, no conv bias
    reductions = 4 * (64 * 11 + 11)
    deconvs = 4 * 11 * 11 * 8 * 8
    assert count_parameters(model.encoder) == encoder == 612_032
    assert count_parameters(model) == encoder + reductions + deconvs == 645_868  # paper: 0.65 M
    basic = create_model("segnet_basic", num_classes=11)
    assert count_parameters(model.encoder) == count_parameters(basic.encoder)


def test_deeplab_largefov_parameter_count() -> None:
    model = _meta_model("deeplab_largefov", num_classes=21)
    fc6, fc7, fc8 = 512 * 9 * 1024 + 1024, 1024 * 1024 + 1024, 1024 * 21 + 21
    assert count_parameters(model) == VGG16_CONVS + fc6 + fc7 + fc8 == 20_505_429  # paper: 20.5M


def test_deconvnet_parameter_count() -> None:
    model = _meta_model("deconvnet", num_classes=21)
    bn = 2 * (2 * 64 + 2 * 128 + 3 * 256 + 6 * 512)  # encoder BNs, as in SegNet
    fc = (512 * 49 * 4096 + 4096) + (4096 * 4096 + 4096) + 2 * 2 * 4096
    assert count_parameters(model.encoder) == VGG16_CONVS + bn + fc
    assert count_parameters(model) == 251_805_653  # Noh et al.: "252M"


@pytest.mark.parametrize(("num_classes", "channels"), [(1, 1), (2, 1), (5, 5), (11, 11)])
def test_segnet_lite_output_channels(num_classes: int, channels: int) -> None:
    model = create_model("segnet_lite", num_classes=num_classes)
    assert model.classifier.out_channels == channels
    assert count_parameters(model) == 393_600 + 394_752 + 16 * 9 * channels + channels


# --- output sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["deconvnet", "deeplab_largefov"])
def test_big_models_are_input_sized_for_any_size(name: str) -> None:
    model = _meta_model(name, num_classes=3).eval()
    for size in ODD_SIZES:
        assert model(torch.zeros(1, 3, *size, device="meta")).shape == (1, 3, *size), size


@pytest.mark.parametrize(("name", "classes"), [("fcn_basic", 11), ("segnet_lite", 1), ("segnet_lite", 4)])
def test_small_models_at_odd_size(name: str, classes: int) -> None:
    # Gradients at an odd size (33x47) are covered by the contract test in test_models.py.
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 97, 131))
    assert out.shape == (1, classes, 97, 131) and torch.isfinite(out).all()


def test_segnet_lite_binary_output_gives_binary_labels() -> None:
    model = create_model("segnet_lite", num_classes=2).eval()
    with torch.no_grad():
        labels = logits_to_labels(model(torch.randn(1, 3, 45, 61)))
    assert labels.shape == (1, 45, 61) and set(labels.unique().tolist()) <= {0, 1}


# --- FCN-Basic ---------------------------------------------------------------------------------


def test_fcn_basic_deconvolutions_start_as_bilinear() -> None:
    model = create_model("fcn_basic", num_classes=3)
    assert isinstance(model.encoder, SegNetEncoder)
    up = model.decoder.upsamples[0]
    assert up.kernel_size == (8, 8) and up.stride == (2, 2)
    x = torch.randn(1, 3, 6, 7)
    with torch.no_grad():
        learnt = up(x)
    reference = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(learnt[..., 1:-1, 1:-1], reference[..., 1:-1, 1:-1])


def test_fcn_basic_adds_reduced_encoder_maps() -> None:
    torch.manual_seed(0)
    model = create_model("fcn_basic", num_classes=3, input_norm="none").eval()
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        with_skips = model(x)
        for reduction in model.decoder.reductions[:-1]:  # the shallow three feed the additions
            reduction.weight.zero_()
            reduction.bias.zero_()
        without = model(x)
    assert not torch.allclose(with_skips, without)


# --- DeconvNet ----------------------------------------------------------------------------------


def test_deconvnet_fc6_is_the_unpadded_original_at_224() -> None:
    assert fc_padding(7) == (0, 0) and fc_padding(12) == (0, 0)
    assert fc_padding(2) == (2, 3) and fc_padding(1) == (3, 3)
    model = _meta_model("deconvnet", num_classes=3).eval()
    fc7 = model.encoder(torch.zeros(1, 3, 224, 224, device="meta"))[0]
    assert fc7.shape == (1, 4096, 1, 1)  # 7x7 pool5 -> 1x1, as in Noh et al.
    assert model.encoder(torch.zeros(1, 3, 360, 480, device="meta"))[0].shape == (1, 4096, 6, 9)


def test_deconvnet_transposed_convs_get_he_init() -> None:
    torch.manual_seed(0)
    block = deconv_norm_act(256, 128)
    _init_he_transposed(block)
    expected = (2 / (128 * 9)) ** 0.5  # same fan as init_he gives the equivalent Conv2d
    assert abs(block[0].weight.std().item() / expected - 1) < 0.05
    assert not block[0].bias.any()


# --- DeepLab-LargeFOV ---------------------------------------------------------------------------


def test_deeplab_output_stride_8_and_alignment() -> None:
    encoder = deeplab_v1_backbone(widths=ONE_CHANNEL, fc_width=1)
    assert encoder(torch.zeros(1, 3, 97, 131))[-1].shape[-2:] == (13, 17)  # ceil(H / 8)
    # Linear one-channel copy (centre taps, average pools): on a ramp, the upsampled logits must
    # reproduce the ramp exactly when W = 8w - 7, i.e. feature i is centred on pixel 8i.
    encoder.pools = nn.ModuleList([nn.AvgPool2d(3, 2, padding=1) for _ in range(3)]
                                  + [nn.AvgPool2d(3, 1, padding=1) for _ in range(2)])
    model = DeepLabLargeFOV(encoder, DeepLabV1Head(1, 1)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                centre = m.kernel_size[0] // 2
                m.weight.zero_()
                m.weight[0, 0, centre, centre] = 1.0
                m.bias.zero_()
        width = 153
        out = model(torch.arange(1, width + 1, dtype=torch.float32).expand(1, 3, 1, width).clone())[0, 0, 0]
    interior = torch.arange(40, width - 40)
    ratio = out[interior] / (interior + 1)
    torch.testing.assert_close(ratio, ratio.mean().expand_as(ratio), rtol=1e-5, atol=0)


# --- torchvision VGG16 weights -----------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], Path]:
    """A randomly initialised torchvision ``vgg16`` state dict, saved whole."""
    torch.manual_seed(0)
    state = torchvision.models.vgg16().state_dict()
    path = tmp_path_factory.mktemp("vgg") / "vgg16.pth"
    torch.save(state, path)
    return state, path


def test_fcn_loads_vgg16_with_reshaped_fc(vgg16_file: tuple[dict[str, torch.Tensor], Path]) -> None:
    state, path = vgg16_file
    model = create_model("fcn32s", num_classes=3, weights_backbone=str(path))
    # No key map: the encoder's conv keys are torchvision's (the removed VGG16_FEATURE_INDICES test).
    features = model.encoder.features.state_dict()
    assert set(features) == {k.removeprefix("features.") for k in state if k.startswith("features.")}
    for key, value in features.items():
        assert torch.equal(value, state[f"features.{key}"])
    fc6, fc7 = model.encoder.fc.fc6[0], model.encoder.fc.fc7[0]
    assert torch.equal(fc6.weight, state["classifier.0.weight"].view(4096, 512, 7, 7))
    assert torch.equal(fc7.weight, state["classifier.3.weight"].view(4096, 4096, 1, 1))
    assert torch.equal(fc6.bias, state["classifier.0.bias"]) and torch.equal(fc7.bias, state["classifier.3.bias"])
    # The reshape keeps torchvision's flatten order: fc6 on a 7x7 pool5 map is classifier.0.
    pool5 = torch.randn(1, 512, 7, 7)
    with torch.no_grad():
        expected = F.linear(pool5.flatten(1), state["classifier.0.weight"], state["classifier.0.bias"])
        # Sums of 25,088 products in another order: allow float32 rounding, not a permutation.
        torch.testing.assert_close(fc6(pool5).flatten(1), expected, rtol=1e-4, atol=1e-4)


def test_deeplab_loads_convs_and_decimated_fc(vgg16_file: tuple[dict[str, torch.Tensor], Path]) -> None:
    state, path = vgg16_file
    model = create_model("deeplab_largefov", num_classes=3, weights_backbone=str(path))
    assert torch.equal(model.encoder.features[28].weight, state["features.28.weight"])
    fc6, fc7 = model.encoder.fc.fc6[0], model.encoder.fc.fc7[0]
    w6 = state["classifier.0.weight"].view(4096, 512, 7, 7)
    assert torch.equal(fc6.weight, w6[::4, :, ::3, ::3])  # 1024 filters, taps 0, 3, 6
    assert torch.equal(fc6.bias, state["classifier.0.bias"][::4])
    assert torch.equal(fc7.weight[..., 0, 0], state["classifier.3.weight"][::4, ::4])


def test_other_state_dict_is_rejected_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(SeglabError, match=r"resnet18\.pth.*not a torchvision vgg16 state dict.*features\.0\.weight"):
        create_model("deeplab_largefov", num_classes=3, weights_backbone=str(path))


def test_features_only_state_dict_is_rejected_when_fc_is_needed(
    vgg16_file: tuple[dict[str, torch.Tensor], Path], tmp_path: Path
) -> None:
    backbone = VGG16Backbone(fc=make_fc_layers(kernel_size=1, width=8))
    path = tmp_path / "features.pth"
    torch.save({k: v for k, v in vgg16_file[0].items() if k.startswith("features.")}, path)
    with pytest.raises(SeglabError, match=r"features\.pth.*missing keys: classifier\.0\.weight"):
        load_vgg16_weights(backbone, path, fc=backbone.fc)
    load_vgg16_weights(backbone, path)  # convs alone load fine


def test_missing_file_and_offline_imagenet_explain_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(SeglabError, match="neither 'imagenet' nor an existing file"):
        create_model("deeplab_largefov", num_classes=3, weights_backbone=str(tmp_path / "nope.pth"))

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(SeglabError, match="could not be downloaded.*file's path .*as weights_backbone"):
        create_model("deeplab_largefov", num_classes=3, weights_backbone="imagenet")


#: The removed map's table: positions in vgg16().features of the 13 conv layers.
_OLD_VGG16_FEATURE_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


@pytest.mark.parametrize("build", ["fcn", "deeplab_v1"])
def test_old_layout_vgg16_backbone_state_dict_loads(build: str) -> None:
    """A state dict of the old ``stages.<s>.<b>.0`` layout loads into the new one, tensor for tensor."""
    widths = ((4, 4), (8, 8), (8, 8, 8), (16, 16, 16), (16, 16, 16))
    make = (lambda: fcn_backbone(widths=widths, fc_width=8)) if build == "fcn" else (
        lambda: deeplab_v1_backbone(widths=widths, fc_width=8))
    torch.manual_seed(0)
    source = make()
    blocks = [(s, b) for s, n in enumerate((2, 2, 3, 3, 3)) for b in range(n)]
    new_to_old = {f"features.{i}.": f"stages.{s}.{b}.0." for (s, b), i in zip(blocks, _OLD_VGG16_FEATURE_INDICES)}
    old_state = {}
    for key, value in source.state_dict().items():
        prefix = next((p for p in new_to_old if key.startswith(p)), None)
        old_state[key if prefix is None else new_to_old[prefix] + key[len(prefix):]] = value
    assert "stages.4.2.0.weight" in old_state and "fc.fc6.0.weight" in old_state
    backbone = make()
    backbone.load_state_dict(old_state)  # strict
    for key, value in source.state_dict().items():
        assert torch.equal(backbone.state_dict()[key], value), key
