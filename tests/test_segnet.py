"""SegNet / SegNet-Basic specifics: sizes, parameter counts, unpooling, pretrained encoder, FLOPs."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from seglab.core.errors import SeglabError
from seglab.models import count_gflops, count_parameters
from seglab.models.layers.blocks import (
    UPSAMPLE_MODES,
    BilinearConvTranspose2d,
    make_upsample,
    max_pool_2x2,
    max_unpool_2x2,
)
from seglab.models.registry import create_model

# --- parameter counts -------------------------------------------------------------------------


def test_segnet_parameter_count() -> None:
    model = create_model("segnet", num_classes=11)
    # Encoder = VGG16 conv layers (14,714,688) + 13 BNs (8,448): the paper's "14.7M".
    assert count_parameters(model.encoder) == 14_723_136
    assert count_parameters(model.decoder) == 14_719_872
    assert count_parameters(model.classifier) == 64 * 11 * 9 + 11
    assert count_parameters(model) == 29_449_355  # paper: 117 MB fp32; ENet: 29.46 M


def test_segnet_basic_parameter_count() -> None:
    model = create_model("segnet_basic", num_classes=11)
    convs = 3 * 64 * 49 + 7 * 64 * 64 * 49
    assert count_parameters(model) == convs + 8 * 2 * 64 + 64 * 11 + 11 == 1_416_075  # paper: 1.425 M
    with_bias = create_model("segnet_basic", num_classes=11, conv_bias=True)
    assert count_parameters(with_bias) == 1_416_075 + 8 * 64


def test_transposed_upsampling_adds_depthwise_weights_only() -> None:
    base = count_parameters(create_model("segnet_basic", num_classes=11))
    learnt = count_parameters(create_model("segnet_basic", num_classes=11, upsample="transposed"))
    assert learnt - base == 4 * 64 * 4 * 4


# --- input sizes and upsampling modes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "size"),
    [("segnet", (360, 480)), ("segnet", (97, 131)), ("segnet_basic", (361, 479))],
)
def test_output_matches_input_size(name: str, size: tuple[int, int]) -> None:
    model = create_model(name, num_classes=11).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 11, *size)


@pytest.mark.parametrize("mode", UPSAMPLE_MODES)
@pytest.mark.parametrize("name", ["segnet", "segnet_basic"])
def test_every_upsample_mode(name: str, mode: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, upsample=mode)
    assert model.encoder.return_indices == (mode == "indices")
    out = model(torch.randn(2, 3, 33, 47))
    assert out.shape == (2, 4, 33, 47)
    if name == "segnet":
        return  # same decoder wiring as segnet_basic; full-SegNet backward is covered in test_models.py
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_bad_upsample_mode_suggests_fix() -> None:
    with pytest.raises(SeglabError, match="Did you mean 'bilinear'"):
        create_model("segnet_basic", num_classes=3, upsample="bilinaer")


def test_segnet_accepts_other_input_channels() -> None:
    model = create_model("segnet_basic", num_classes=2, in_channels=1, input_norm="none").eval()
    assert isinstance(model.input_norm, nn.Identity)
    with torch.no_grad():
        assert model(torch.randn(1, 1, 20, 21)).shape == (1, 2, 20, 21)


# --- unpooling, worked by hand ----------------------------------------------------------------


def _pool_unpool(plane: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.tensor(plane, dtype=torch.float32).view(1, 1, len(plane), len(plane[0]))
    pooled, indices = max_pool_2x2()(x)
    return pooled[0, 0], indices[0, 0], max_unpool_2x2(pooled, indices, x.shape[-2:])[0, 0]


def test_unpool_4x4_by_hand() -> None:
    pooled, indices, unpooled = _pool_unpool([
        [1, 2, 5, 0],
        [3, 4, 1, 6],
        [0, 7, 2, 2],
        [8, 1, 3, 9],
    ])  # fmt: skip
    assert pooled.tolist() == [[4, 6], [8, 9]]
    assert indices.tolist() == [[5, 7], [12, 15]]  # flat positions in the 4x4 plane
    assert unpooled.tolist() == [
        [0, 0, 0, 0],
        [0, 4, 0, 6],
        [0, 0, 0, 0],
        [8, 0, 0, 9],
    ]  # fmt: skip


def test_unpool_odd_3x5_ceil_mode_by_hand() -> None:
    # ceil_mode: 3x5 -> 2x3; the last row/column windows are 1 pixel tall/wide.
    pooled, indices, unpooled = _pool_unpool([
        [1, 9, 2, 3, 7],
        [4, 0, 8, 5, 1],
        [6, 2, 3, 0, 4],
    ])  # fmt: skip
    assert pooled.tolist() == [[9, 8, 7], [6, 3, 4]]
    assert indices.tolist() == [[1, 7, 4], [10, 12, 14]]
    assert unpooled.tolist() == [
        [0, 9, 0, 0, 7],
        [0, 0, 8, 0, 0],
        [6, 0, 3, 0, 4],
    ]  # fmt: skip


def test_transposed_upsampling_starts_as_bilinear() -> None:
    x = torch.randn(1, 3, 6, 7)
    up = BilinearConvTranspose2d(3)
    with torch.no_grad():
        learnt = up(x, None, (11, 14))
    reference = F.interpolate(x, size=(12, 14), mode="bilinear", align_corners=False)
    assert learnt.shape == (1, 3, 11, 14)  # odd pre-pool height: last row cropped
    # Equal away from the border, where zero padding differs from interpolate's edge clamping.
    torch.testing.assert_close(learnt[..., 1:, 1:-1], reference[..., 1:11, 1:-1])


def test_index_upsampling_without_indices_fails_loudly() -> None:
    with pytest.raises(RuntimeError, match="indices"):
        make_upsample("indices", 4)(torch.zeros(1, 4, 2, 2), None, (4, 4))


# --- pretrained encoder -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, Path]:
    """A random torchvision vgg16_bn with non-trivial BN state, saved whole and features-only."""
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16_bn().eval()
    with torch.no_grad():
        for m in vgg.features.modules():
            if isinstance(m, nn.BatchNorm2d):  # defaults (1, 0, 0, 1) would hide weight/bias/stat mix-ups
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    folder = tmp_path_factory.mktemp("vgg")
    torch.save(vgg.state_dict(), folder / "vgg16_bn.pth")
    torch.save(vgg.features.state_dict(), folder / "features.pth")
    return vgg, folder / "vgg16_bn.pth", folder / "features.pth"


def test_encoder_keys_are_torchvision_vgg16_bn_features_keys(vgg_files: tuple[nn.Module, Path, Path]) -> None:
    # Replaces the test of the removed hand-written key map: no map is needed any more.
    vgg, _, _ = vgg_files
    encoder = create_model("segnet", num_classes=2).encoder
    ours = {k: v.shape for k, v in encoder.state_dict().items()}
    assert ours == {f"features.{k}": v.shape for k, v in vgg.features.state_dict().items()}


@pytest.mark.parametrize("which", ["whole", "features_only"])
def test_pretrained_encoder_loads_vgg16_bn(vgg_files: tuple[nn.Module, Path, Path], which: str) -> None:
    vgg, whole, features_only = vgg_files
    path = whole if which == "whole" else features_only
    model = create_model("segnet", num_classes=3, weights_backbone=str(path)).eval()
    ours, theirs = model.encoder.features.state_dict(), vgg.features.state_dict()
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), f"features.{key}"
    x = torch.randn(1, 3, 64, 64)  # a multiple of 32: torchvision's floor-mode pools agree with ours
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(x)[0], vgg.features(x))


#: The removed map's table: (conv, BN) positions in vgg16_bn().features of SegNet's 13 encoder blocks.
_OLD_VGG16_BN_FEATURE_INDICES = ((0, 1), (3, 4), (7, 8), (10, 11), (14, 15), (17, 18), (20, 21), (24, 25), (27, 28),
                                 (30, 31), (34, 35), (37, 38), (40, 41))


@pytest.mark.parametrize("name", ["segnet", "bayesian_segnet"])
def test_old_layout_state_dict_loads(name: str) -> None:
    """A state dict of the old ``encoder.stages.<s>.<b>.<0 conv | 1 bn>`` layout loads by itself."""
    torch.manual_seed(0)
    source = create_model(name, num_classes=3).eval()
    with torch.no_grad():
        for m in source.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    blocks = [(s, b) for s, widths in enumerate(((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3))
              for b in range(len(widths))]
    new_to_old = {f"encoder.features.{index}.": f"encoder.stages.{s}.{b}.{child}."
                  for (s, b), pair in zip(blocks, _OLD_VGG16_BN_FEATURE_INDICES) for child, index in enumerate(pair)}
    old_state = {}
    for key, value in source.state_dict().items():
        prefix = next((p for p in new_to_old if key.startswith(p)), None)
        old_state[key if prefix is None else new_to_old[prefix] + key[len(prefix):]] = value
    assert "encoder.stages.4.2.1.running_var" in old_state and not any(".features." in k for k in old_state)
    model = create_model(name, num_classes=3).eval()
    model.load_state_dict(old_state)  # strict: every old key found its new place
    x = torch.randn(1, 3, 37, 50)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_pretrained_encoder_rejects_other_models(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(SeglabError, match=r"resnet18\.pth.*missing keys: features\.0\.weight"):
        create_model("segnet", num_classes=3, weights_backbone=str(path))


def test_pretrained_encoder_reports_shape_mismatch(vgg_files: tuple[nn.Module, Path, Path], tmp_path: Path) -> None:
    state = torch.load(vgg_files[2], weights_only=True)
    state["3.weight"] = torch.zeros(64, 32, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    expected = r"bad\.pth.*features\.3\.weight \(64, 32, 3, 3\) vs encoder \(64, 64, 3, 3\)"
    with pytest.raises(SeglabError, match=expected):
        create_model("segnet", num_classes=3, weights_backbone=str(tmp_path / "bad.pth"))


def test_pretrained_encoder_needs_three_input_channels(vgg_files: tuple[nn.Module, Path, Path]) -> None:
    with pytest.raises(SeglabError, match="in_channels=3"):
        create_model("segnet", num_classes=3, in_channels=1, weights_backbone=str(vgg_files[2]))


def test_pretrained_encoder_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SeglabError, match="neither 'imagenet' nor an existing file"):
        create_model("segnet", num_classes=3, weights_backbone=str(tmp_path / "nope.pth"))


def test_pretrained_encoder_not_a_state_dict(tmp_path: Path) -> None:
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(SeglabError, match="not a state dict"):
        create_model("segnet", num_classes=3, weights_backbone=str(tmp_path / "tensor.pth"))


def test_imagenet_download_failure_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(SeglabError, match="could not be downloaded.*pass that file's path"):
        create_model("segnet", num_classes=3, weights_backbone="imagenet")


# --- FLOPs ------------------------------------------------------------------------------------


def test_gflops_of_one_conv_matches_hand_formula() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_gflops(conv, size=(20, 30)) == pytest.approx(2 * 3 * 8 * 3 * 3 * 20 * 30 / 1e9)


def test_gflops_of_segnet_basic_matches_hand_formula() -> None:
    model = create_model("segnet_basic", num_classes=11)
    was = model.training
    side = [32, 16, 8, 4]  # conv resolutions of encoders 1-4; decoders reuse them in reverse
    encoder = 2 * 49 * (3 * 64 * side[0] ** 2 + sum(64 * 64 * s**2 for s in side[1:]))
    decoder = 2 * 49 * sum(64 * 64 * s**2 for s in side)
    classifier = 2 * 64 * 11 * side[0] ** 2
    gflops = count_gflops(model, size=(32, 32))
    assert gflops > 0
    assert gflops == pytest.approx((encoder + decoder + classifier) / 1e9)
    assert model.training == was


def test_gflops_rejects_bad_size() -> None:
    with pytest.raises(SeglabError, match="two positive integers"):
        count_gflops(nn.Conv2d(3, 3, 1), size=(32,))
