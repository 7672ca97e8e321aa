"""FCN-32s/16s/8s: parameter counts, bilinear deconvolutions, zero-initialised skips, crop offsets, sizes.

The 134 M-parameter models are built on the ``meta`` device wherever only shapes matter (counts,
output sizes), and the crop offsets are checked on a one-channel model of identical geometry, so
this file never runs the full VGG16 on the CPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglab.models import count_parameters
from seglab.models.layers.heads import bilinear_conv_transpose, crop_to
from seglab.models.registry import create_model
from seglab.models.semantic.fcn import FCN, FCNHead, fcn_backbone

#: VGG16's geometry with one channel per conv: cheap, same pooling, padding and crops.
ONE_CHANNEL = ((1, 1), (1, 1), (1, 1, 1), (1, 1, 1), (1, 1, 1))
VGG16_CONVS = 14_714_688
FC6, FC7 = 512 * 7 * 7 * 4096 + 4096, 4096 * 4096 + 4096


def _meta_model(name: str, **kw: object) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kw)


# --- parameter counts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "head"),
    [
        ("fcn32s", 21 * 21 * 64 * 64),                                   # 64x64 stride-32 deconv
        ("fcn16s", (512 * 21 + 21) + 21 * 21 * (4 * 4 + 32 * 32)),         # score_pool4, 2x, 16x
        ("fcn8s", (512 * 21 + 21) + (256 * 21 + 21) + 21 * 21 * (2 * 4 * 4 + 16 * 16)),
    ],
)
def test_fcn_parameter_counts(name: str, head: int) -> None:
    model = _meta_model(name, num_classes=21)
    assert count_parameters(model.encoder) == VGG16_CONVS + FC6 + FC7 == 134_260_544
    score_fr = 4096 * 21 + 21
    assert count_parameters(model.decoder) == score_fr + head
    expected = {"fcn32s": 136_152_917, "fcn16s": 134_815_994, "fcn8s": 134_489_759}[name]
    assert count_parameters(model) == expected  # FCN paper, Table 1: FCN-VGG16 "134M"


def test_fixed_bilinear_upsampling_is_frozen() -> None:
    model = _meta_model("fcn8s", num_classes=21, learnable_upsampling=False)
    deconvs = 21 * 21 * (2 * 4 * 4 + 16 * 16)
    assert count_parameters(model) == 134_489_759
    assert count_parameters(model, trainable_only=True) == 134_489_759 - deconvs


# --- initialisation ---------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [32, 16, 8])
def test_skip_scores_start_at_zero_and_score_fr_does_not(stride: int) -> None:
    torch.manual_seed(0)
    head = FCNHead([64, 128, 256, 512, 512, 4096], num_classes=21, stride=stride)
    assert len(head.skip_scores) == {32: 0, 16: 1, 8: 2}[stride]
    assert [s.in_channels for s in head.skip_scores] == [512, 256][: len(head.skip_scores)]
    for score in head.skip_scores:
        assert not score.weight.any() and not score.bias.any()
    assert head.score_fr.weight.std() > 0


@pytest.mark.parametrize("factor", [2, 8, 16, 32])
def test_deconvolution_starts_as_bilinear_interpolation(factor: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 5, 6)
    up = bilinear_conv_transpose(3, factor)
    assert up.weight.shape == (3, 3, 2 * factor, 2 * factor) and up.bias is None
    with torch.no_grad():
        learnt = up(x)
    reference = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    # An unpadded 2f x 2f stride-f deconvolution puts input pixel u at output f*u + f - 0.5,
    # interpolate at f*u + f/2 - 0.5: the same map shifted by f/2. Compare away from the border,
    # where zero padding and interpolate's edge clamping differ.
    shift, inner = factor // 2, slice(factor, 4 * factor)
    torch.testing.assert_close(learnt[..., shift:, shift:][..., inner, inner], reference[..., inner, inner])


def test_deconvolution_does_not_mix_classes_at_init() -> None:
    up = bilinear_conv_transpose(4, 2)
    off_diagonal = ~torch.eye(4, dtype=torch.bool)
    assert not up.weight[off_diagonal].any()
    x = torch.zeros(1, 4, 3, 3)
    x[:, 2] = 1.0
    with torch.no_grad():
        out = up(x)
    assert out[:, [0, 1, 3]].abs().max() == 0 and out[:, 2].max() > 0


def test_larger_kernel_keeps_bilinear_at_its_centre() -> None:
    up = bilinear_conv_transpose(1, 2, kernel_size=8, padding=3)
    x = torch.randn(1, 1, 6, 7)
    with torch.no_grad():
        learnt = up(x)
    assert learnt.shape[-2:] == (12, 14)  # exactly 2x with padding 3
    reference = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(learnt[..., 1:-1, 1:-1], reference[..., 1:-1, 1:-1])
    with pytest.raises(ValueError, match="kernel_size"):
        bilinear_conv_transpose(1, 2, kernel_size=5)


# --- crop offsets: output pixel v must describe input pixel v ----------------------------------


def _ramp_fcn(stride: int, source: str) -> FCN:
    """One-channel FCN whose every conv passes channel 0 through and whose pools average.

    Then the net is linear, and on a ramp input ``x[v] = v + 1`` each score sample equals the ramp
    at the image position it is centred on; bilinear upsampling of such samples returns the ramp
    itself, so the output equals ``a * (v + 1)`` exactly (``a`` from the zero-padded rows) if and
    only if every crop offset is right. ``source`` picks which score map feeds the output.
    """
    encoder = fcn_backbone(widths=ONE_CHANNEL, fc_width=1)
    encoder.pools = nn.ModuleList(nn.AvgPool2d(2, 2, ceil_mode=True) for _ in encoder.pools)
    model = FCN(encoder, FCNHead(encoder.feature_channels, 1, stride)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                centre = m.kernel_size[0] // 2
                m.weight.zero_()
                m.weight[0, 0, centre, centre] = 1.0
                m.bias.zero_()
        model.decoder.score_fr.weight.fill_(float(source == "fc7"))
        for name, score in zip(model.decoder.skip_names, model.decoder.skip_scores):
            score.weight.fill_(float(name == source))
    return model


@pytest.mark.parametrize(
    ("stride", "source"),
    [(32, "fc7"), (16, "fc7"), (16, "pool4"), (8, "fc7"), (8, "pool4"), (8, "pool3")],
)
def test_crop_offsets_align_output_with_input(stride: int, source: str) -> None:
    model = _ramp_fcn(stride, source)
    width = 200
    x = torch.arange(1, width + 1, dtype=torch.float32).expand(1, 3, 1, width).clone()
    with torch.no_grad():
        out = model(x)[0, 0, 0]
    assert out.shape == (width,)
    interior = torch.arange(70, 130)  # far enough from the zero padding for every window
    ratio = out[interior] / (interior + 1)
    assert ratio.min() > 0
    # A crop off by one pixel would make the ratio vary by about 1.5 % over this range.
    torch.testing.assert_close(ratio, ratio.mean().expand_as(ratio), rtol=1e-5, atol=0)


# --- sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
def test_output_is_input_sized_for_any_size(name: str) -> None:
    model = _meta_model(name, num_classes=3).eval()
    for size in [(1, 1), (33, 47), (97, 131), (224, 224), (360, 480), (500, 375)]:
        assert model(torch.zeros(1, 3, *size, device="meta")).shape == (1, 3, *size), size


def test_odd_size_forward_and_backward_on_real_tensors() -> None:
    torch.manual_seed(0)
    encoder = fcn_backbone(widths=ONE_CHANNEL, fc_width=4)
    model = FCN(encoder, FCNHead(encoder.feature_channels, 3, 8))
    out = model(torch.randn(2, 3, 97, 131))
    assert out.shape == (2, 3, 97, 131)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_crop_to_refuses_maps_that_are_too_small() -> None:
    x = torch.zeros(1, 1, 10, 10)
    assert crop_to(x, 3, (7, 5)).shape == (1, 1, 7, 5)
    with pytest.raises(RuntimeError, match="offset 4"):
        crop_to(x, 4, (7, 5))
