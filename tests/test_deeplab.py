"""DeepLabv3 / DeepLabv3+: parameter counts, output strides, ASPP rates, separable convs, weights."""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from seglab.core.errors import SeglabError
from seglab.models import count_parameters
from seglab.models.backbones.xception import XCEPTION65_BLOCKS
from seglab.models.layers.atrous import ASPP, SeparableConv2d, aspp_rates, separable_conv_params
from seglab.models.registry import create_model

RESNET50 = "deeplabv3_resnet50"
XCEPTION = "deeplabv3plus_xception65"


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """One intra-op thread for these big-model tests.

    On a loaded machine two threads per op wait on each other: an Xception-65 forward took 15 s
    with 2 threads and 0.4 s with 1 while a training ran beside it.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_separable_conv_parameters_by_hand() -> None:
    block = SeparableConv2d(304, 256, dilation=2)
    # depthwise 3*3*304 + BN 2*304, pointwise 304*256 + BN 2*256
    assert count_parameters(block) == 2736 + 608 + 77824 + 512 == separable_conv_params(304, 256) == 81680
    assert block.depthwise[0].groups == 304 and block.depthwise[0].dilation == (2, 2)
    assert isinstance(block.depthwise[-1], nn.ReLU) and isinstance(block.pointwise[-1], nn.ReLU)
    assert not any(isinstance(m, nn.ReLU) for m in SeparableConv2d(8, 8, relu_after_depthwise=False).depthwise)


@pytest.mark.parametrize("name, expected", [
    (RESNET50, 39_638_613),
    ("deeplabv3_resnet101", 58_630_741),
    ("deeplabv3plus_resnet50", 40_351_925),
    (XCEPTION, 41_055_157),
])
def test_parameter_counts_for_21_classes(name: str, expected: int) -> None:
    assert count_parameters(create_model(name, num_classes=21)) == expected


def test_deeplabv3_matches_torchvision_but_for_the_pooling_bn() -> None:
    ours = create_model(RESNET50, num_classes=21)
    theirs = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None,
                                                                num_classes=21, aux_loss=False)
    # Our image-pooling branch has a conv bias (256) where torchvision has a BN (512).
    assert count_parameters(ours) == count_parameters(theirs) - 256
    assert count_parameters(ours.encoder) == count_parameters(theirs.backbone)


def test_deeplabv3plus_decoder_parameters_by_hand() -> None:
    v3, plus = (create_model(n, num_classes=21).decoder for n in (RESNET50, "deeplabv3plus_resnet50"))
    # v3+ drops v3's 3x3 head conv and adds: 1x1 256->48 + BN, 3x3 304->256 + BN, 3x3 256->256 + BN.
    reduce, fuse = 256 * 48 + 2 * 48, 9 * 304 * 256 + 512 + 9 * 256 * 256 + 512
    assert count_parameters(plus) - count_parameters(v3) == reduce + fuse - (9 * 256 * 256 + 512)


def test_xception65_parameters_by_hand() -> None:
    encoder = create_model(XCEPTION, num_classes=21).encoder
    stem = 3 * 32 * 9 + 2 * 32 + 32 * 64 * 9 + 2 * 64
    separable, shortcuts, channels = 0, 0, 64
    for _, widths, _, shortcut in XCEPTION65_BLOCKS:
        if shortcut == "conv":  # 1x1 conv + BN from the block input
            shortcuts += channels * widths[-1] + 2 * widths[-1]
        for width in widths:
            separable += separable_conv_params(channels, width)
            channels = width
    assert count_parameters(encoder) == stem + separable + shortcuts == 37_867_312
    assert (len(encoder.entry_flow), len(encoder.middle_flow), len(encoder.exit_flow)) == (3, 16, 2)


@pytest.fixture(scope="module")
def build() -> Iterator[Callable[[str, int], nn.Module]]:
    """``build(name, output_stride)``: a 4-class model in eval mode, built once per module (tests only read it)."""
    cache: dict[tuple[str, int], nn.Module] = {}

    def get(name: str, output_stride: int) -> nn.Module:
        if (name, output_stride) not in cache:
            cache[name, output_stride] = create_model(name, num_classes=4, output_stride=output_stride).eval()
        return cache[name, output_stride]

    yield get
    cache.clear()


def _dilations(module: nn.Module) -> set[int]:
    return {m.dilation[0] for m in module.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)}


@pytest.mark.parametrize("name", [RESNET50, XCEPTION])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_strides_give_input_sized_logits(build: Callable[[str, int], nn.Module], name: str,
                                                output_stride: int) -> None:
    model = build(name, output_stride)
    x = torch.randn(1, 3, 33, 47)
    with torch.no_grad():
        features = model.encoder(x)
        logits = model(x)
    assert logits.shape == (1, 4, 33, 47)
    assert features["out"].shape[-2:] == (math.ceil(33 / output_stride), math.ceil(47 / output_stride))
    if "low" in features:
        assert features["low"].shape[-2:] == (9, 12)  # stride 4, rounded up


def test_aspp_rates_double_at_output_stride_8(build: Callable[[str, int], nn.Module]) -> None:
    assert aspp_rates(16) == (6, 12, 18) and aspp_rates(8) == (12, 24, 36) and aspp_rates(32) == (3, 6, 9)
    for name in (RESNET50, XCEPTION):
        for output_stride, rates in ((16, [6, 12, 18]), (8, [12, 24, 36])):
            aspp = build(name, output_stride).decoder.aspp
            assert [_dilations(branch).pop() for branch in aspp.branches[1:4]] == rates


def test_backbone_dilation_per_output_stride(build: Callable[[str, int], nn.Module]) -> None:
    def resnet(os: int) -> nn.Module:
        return build(RESNET50, os).encoder

    assert _dilations(resnet(32)) == {1}
    assert _dilations(resnet(16).layer3) == {1} and _dilations(resnet(16).layer4) == {1, 2}
    assert _dilations(resnet(8).layer3) == {1, 2} and _dilations(resnet(8).layer4) == {2, 4}
    xception16 = build(XCEPTION, 16).encoder
    assert _dilations(xception16.middle_flow) == {1} and _dilations(xception16.exit_flow[1]) == {2}
    xception8 = build(XCEPTION, 8).encoder
    assert _dilations(xception8.middle_flow) == {2} and _dilations(xception8.exit_flow[1]) == {4}
    assert xception8.entry_flow[2].convs[2].depthwise[0].stride == (1, 1)


@pytest.mark.parametrize("name", [RESNET50, "deeplabv3plus_resnet50", XCEPTION])
def test_bad_output_stride_names_the_valid_values(name: str) -> None:
    with pytest.raises(SeglabError, match="output_stride must be one of 8, 16, 32, got 4"):
        create_model(name, num_classes=2, output_stride=4)


def test_aspp_trains_with_batch_one_at_tiny_size() -> None:
    aspp = ASPP(16, 8, rates=(1, 2, 3), dropout=0.5).train()
    # 4 values per channel suffice for the BNs of the other branches; a BN after global pooling
    # would see one value and raise "Expected more than 1 value per channel when training".
    out = aspp(torch.randn(1, 16, 2, 2))
    assert out.shape == (1, 8, 2, 2)
    out.sum().backward()
    assert len(aspp.branches) == 5 and aspp.dropout.p == 0.5


def _random_resnet50_state(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    resnet = torchvision.models.resnet50(weights=None)
    for module in resnet.modules():  # non-default statistics, so a silent no-op load would show
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    state = resnet.state_dict()
    torch.save({prefix + k: v for k, v in state.items()}, path)
    return state


@pytest.mark.parametrize("name, prefix", [(RESNET50, ""), ("deeplabv3plus_resnet50", "backbone.")])
def test_pretrained_backbone_from_file(tmp_path: Path, name: str, prefix: str) -> None:
    state = _random_resnet50_state(tmp_path / "resnet50.pth", prefix)
    model = create_model(name, num_classes=3, output_stride=8, weights_backbone=str(tmp_path / "resnet50.pth"))
    loaded = model.encoder.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("fc.")}
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


def test_pretrained_backbone_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SeglabError, match="neither 'imagenet' nor an existing file"):
        create_model(RESNET50, num_classes=3, weights_backbone=str(tmp_path / "missing.pth"))
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(SeglabError, match="not a torchvision resnet50 state dict.*missing"):
        create_model(RESNET50, num_classes=3, weights_backbone=str(tmp_path / "resnet18.pth"))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(SeglabError, match="offline.*pass that file's path .*as weights_backbone"):
        create_model(RESNET50, num_classes=3, weights_backbone="imagenet")
