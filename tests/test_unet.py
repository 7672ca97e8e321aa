"""U-Net: the valid network's size rule and parameter count, and the padded variant at any size."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from seglab.core.errors import SeglabError
from seglab.models import count_parameters
from seglab.models.registry import create_model
from seglab.models.semantic.unet import nearest_valid_sizes, output_size, valid_input_size
from seglab.ops.contract import runnable_size


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """One intra-op thread: on a loaded 2-core machine two threads per op mostly wait on each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _unet_params_by_hand(in_channels: int, num_classes: int, base: int = 64, depth: int = 4) -> int:
    """Conv weights + biases of the paper's U-Net, counted level by level."""
    conv3 = lambda i, o: 9 * i * o + o  # noqa: E731
    widths = [base * 2**i for i in range(depth + 1)]
    total, channels = 0, in_channels
    for width in widths:  # contracting path, bottleneck included
        total += conv3(channels, width) + conv3(width, width)
        channels = width
    for deep, shallow in zip(widths[:0:-1], widths[-2::-1]):  # expanding path
        total += 4 * deep * shallow + shallow  # 2x2 up-convolution halving the channels
        total += conv3(2 * shallow, shallow) + conv3(shallow, shallow)
    return total + base * num_classes + num_classes  # 1x1 classifier


def test_unet_valid_parameter_count() -> None:
    model = create_model("unet_valid", num_classes=2)
    assert count_parameters(model) == _unet_params_by_hand(3, 2) == 31_031_810
    # The paper's grayscale input: 31,030,658, the "31.0 M" usually quoted.
    assert _unet_params_by_hand(1, 2) == 31_030_658
    # The padded variant trades each of the 18 convs' bias (C) for BN (2C): + sum of their widths.
    assert count_parameters(create_model("unet", num_classes=2)) == 31_031_810 + 2 * (64 + 128 + 256 + 512 + 1024) \
        + 2 * (512 + 256 + 128 + 64)


def test_unet_valid_572_gives_388_through_the_papers_sizes() -> None:
    # Fig. 1 of the paper: 572 -> 570 -> 568 | 284 -> 280 | 140 -> 136 | 68 -> 64 | 32 -> 28 (bottleneck),
    # up 56 -> 52 | 104 -> 100 | 200 -> 196 | 392 -> 388. Narrow channels keep it fast; sizes are the same.
    model = create_model("unet_valid", num_classes=2, base_channels=4, dropout=0.0).eval()
    sizes: list[int] = []
    for level in [*model.encoder.levels, *model.decoder.levels]:
        level.register_forward_hook(lambda module, args, out: sizes.append(out.shape[-1]))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 572, 572))
    assert out.shape == (1, 2, 388, 388)
    assert sizes == [568, 280, 136, 64, 28, 52, 100, 196, 388]
    assert output_size((572, 572)) == model.output_size((572, 572)) == (388, 388)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_valid_sizes_follow_the_closed_form(depth: int) -> None:
    smallest_b = 3 if depth == 1 else 4
    expected = [2**depth * (b + 8) - 4 for b in range(smallest_b, smallest_b + 20)]
    found = [s for s in range(1, expected[-1] + 1) if valid_input_size(s, depth)]
    assert found == expected
    for s in expected[:3]:
        b = (s + 4) // 2**depth - 8
        assert output_size((s, s), depth) == (2**depth * (b - 4) + 4,) * 2


def test_nearest_valid_sizes() -> None:
    assert nearest_valid_sizes(573) == (572, 588)
    assert nearest_valid_sizes(572) == (572, 572)
    assert nearest_valid_sizes(100) == (None, 188)  # 188 = 16 * (4 + 8) - 4 is the smallest at depth 4
    assert nearest_valid_sizes(50, depth=2) == (48, 52)
    model = create_model("unet_valid", num_classes=2, depth=2, base_channels=4)
    assert model.nearest_valid_sizes(50) == (48, 52) and model.valid_input_size((48, 52))
    assert not model.valid_input_size((48, 50))


def test_runnable_size_keeps_any_size_models_and_rounds_valid_ones_up() -> None:
    assert runnable_size(create_model("unet", num_classes=2), (97, 131)) == (97, 131)
    assert runnable_size(create_model("unet_valid", num_classes=2), (573, 572)) == (588, 572)


def test_bad_size_error_names_the_nearest_valid_sizes() -> None:
    with pytest.raises(SeglabError) as info:
        output_size((100, 573))
    message = str(info.value)
    assert "height 100: no valid size below, smallest valid 188" in message
    assert "width 573: nearest valid 572 or 588" in message
    model = create_model("unet_valid", num_classes=2, depth=2, base_channels=4)
    with pytest.raises(SeglabError, match="nearest valid 48 or 52"):
        model(torch.randn(1, 3, 50, 52))


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (33, 47), (37, 16)])
def test_padded_unet_returns_input_size(size: tuple[int, int]) -> None:
    model = create_model("unet", num_classes=3, base_channels=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 3, *size)


def test_padded_unet_odd_sizes_crop_aligned() -> None:
    # Keep only the centre tap of every 3x3 conv: the net becomes pointwise apart from pooling and
    # up-convolution, so zero padding plays no role. On an image constant over 4x4 blocks a
    # ceil-mode pool over a cut-off window sees the same maximum as over the full one, so the odd
    # 13x9 crop must predict exactly the top-left 13x9 of the 16x12 prediction; cropping the
    # up-convolution anywhere but at the bottom/right would shift it.
    torch.manual_seed(0)
    model = create_model("unet", num_classes=2, depth=2, base_channels=4, batch_norm=False).eval()
    for conv in model.modules():
        if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
            conv.weight.data[:, :, [0, 0, 0, 1, 1, 2, 2, 2], [0, 1, 2, 0, 2, 0, 1, 2]] = 0
    image = torch.randn(1, 3, 4, 3).repeat_interleave(4, -2).repeat_interleave(4, -1)  # 16 x 12
    with torch.no_grad():
        full, cropped = model(image), model(image[..., :13, :9])
    assert cropped.shape == (1, 2, 13, 9)
    torch.testing.assert_close(cropped, full[..., :13, :9])


def test_options_and_errors() -> None:
    model = create_model("unet_valid", num_classes=4, in_channels=1, depth=2, base_channels=8)
    assert model.encoder.widths == [8, 16, 32]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in create_model("unet", num_classes=2).modules())
    assert not hasattr(create_model("unet", num_classes=2), "output_size")
    with pytest.raises(SeglabError, match="depth >= 1"):
        create_model("unet", num_classes=2, depth=0)


def _valid_unet_config(tmp_path, crop: list[int]):
    from seglab.core.config import Config, DataConfig, LossConfig, ModelConfig, TrainConfig

    return Config(
        model=ModelConfig(name="unet_valid", kwargs={"depth": 2, "base_channels": 4}),
        data=DataConfig(dataset="synthetic", synthetic_train=8, synthetic_val=2, synthetic_size=[64, 80],
                        num_workers=0, crop_size=crop, scale_range=[1.0, 1.0], color_jitter=0.0),
        loss=LossConfig(class_weights="none"),
        train=TrainConfig(epochs=2, batch_size=4, optimizer="adamw", lr=0.01, out_dir=str(tmp_path), run_name="run",
                          progress=False, val_bf=False, seed=0, threads=1),
    )


def test_unet_valid_trains_on_centre_cropped_targets_and_evaluates_tiled(tmp_path) -> None:
    from seglab.engine import train
    from seglab.ops.resize import forward_at_size

    assert output_size((52, 52), depth=2) == (12, 12)  # 52 in, 12 labelled pixels out per side
    result = train(_valid_unet_config(tmp_path, [52, 52]))
    first, last = result.history[0]["train_loss"], result.history[-1]["train_loss"]
    assert last < first, (first, last)
    # Validation scored whole 64x80 images: tiled with mirror padding, not a stretched 12x12 map.
    assert 0.0 <= result.best_metrics["global_acc"] <= 1.0
    model = create_model("unet_valid", 3, depth=2, base_channels=4).eval()
    with torch.no_grad():
        assert forward_at_size(model, torch.rand(2, 3, 37, 53), None).shape == (2, 3, 37, 53)


def test_unet_valid_rejects_a_crop_it_cannot_take(tmp_path) -> None:
    from seglab.engine import train

    with pytest.raises(SeglabError, match=r"crop_size.*nearest valid: 50 -> 48 or 52.*--data.crop_size 52 52"):
        train(_valid_unet_config(tmp_path, [50, 50]))
