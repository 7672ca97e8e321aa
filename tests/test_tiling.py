"""Overlap-tile inference (:mod:`seglab.tiling`): tiled predictions must match whole-image ones."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglab.core.errors import SeglabError
from seglab.models.registry import create_model
from seglab.ops.tiling import blend_window, mirror_pad, predict_tiled

K = 3


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """One intra-op thread: on a loaded 2-core machine two threads per op mostly wait on each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _pointwise() -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(2, K, 1).eval()


def _padded_3x3_net() -> nn.Module:
    """Translation-equivariant except within 2 px of its input's border (two zero-padded 3x3 convs)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, K, 3, padding=1)).eval()


def test_mirror_pad_is_endless_reflection() -> None:
    row = torch.tensor([[[[10.0, 11.0, 12.0]]]])  # 1 x 1 x 1 x 3
    padded = mirror_pad(row, (0, 0, 5, 5))
    # Period 2 * (3 - 1) = 4, edge pixels not repeated: 11 10 11 12 11 10 11 ...
    assert padded.flatten().tolist() == [11, 10, 11, 12, 11, 10, 11, 12, 11, 10, 11, 12, 11]
    image = torch.randn(1, 2, 6, 5)
    assert torch.equal(mirror_pad(image, (3, 2, 4, 1)), F.pad(image, (4, 1, 3, 2), mode="reflect"))
    # Canonical: a larger pad extends a smaller one instead of changing it.
    assert torch.equal(mirror_pad(image, (9, 20, 7, 30))[..., :9 + 6 + 5, :7 + 5 + 4],
                       mirror_pad(image, (9, 5, 7, 4)))


def test_gaussian_window_peaks_in_the_centre() -> None:
    window = blend_window((32, 24))
    assert window.shape == (32, 24)
    assert torch.equal(window, window.flip(0)) and torch.equal(window, window.flip(1))
    # Even sizes have no centre pixel: the four middle ones are 0.5 px off (sigma 4 and 3).
    assert window.max() == window[15, 11] > 0.97 and window[0, 0] < 1e-3 and window.min() > 0
    assert torch.equal(blend_window((4, 5), "mean"), torch.ones(4, 5))


@pytest.mark.parametrize("blend", ["gaussian", "mean"])
@pytest.mark.parametrize("size, tile", [((100, 77), (32, 32)), ((100, 77), (128, 96)), ((5, 3), (32, 16))],
                         ids=["tiles", "tile-larger-than-image", "tiny-image"])
def test_pointwise_model_tiles_exactly(blend: str, size: tuple[int, int], tile: tuple[int, int]) -> None:
    model, image = _pointwise(), torch.randn(1, 2, *size)
    with torch.no_grad():
        tiled = predict_tiled(model, image, K, tile, overlap=8, blend=blend)
        whole = model(image)
    assert tiled.shape == (1, K, *size)
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)


def test_padded_net_tiles_align_without_overlap() -> None:
    # Tiles of 32x24 start at multiples of 32 / 24 in the image when overlap = 0; a radius-2 net is
    # exact wherever the nearest tile or image border is >= 2 px away, so misplaced tiles would show.
    model, image = _padded_3x3_net(), torch.randn(1, 2, 100, 77)
    with torch.no_grad():
        tiled = predict_tiled(model, image, K, (32, 24), overlap=0)
        whole = model(image)
    keep_rows = torch.tensor([2 <= r % 32 < 30 and 2 <= r < 98 for r in range(100)])
    keep_cols = torch.tensor([2 <= c % 24 < 22 and 2 <= c < 75 for c in range(77)])
    mask = keep_rows[:, None] & keep_cols[None, :]
    torch.testing.assert_close(tiled[0][:, mask], whole[0][:, mask], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(tiled, whole, atol=1e-3), "tile edges should differ: the net is zero-padded"


def test_gaussian_blending_hides_tile_edges() -> None:
    model, image = _padded_3x3_net(), torch.randn(1, 2, 100, 77)
    with torch.no_grad():
        whole = model(image)[..., 2:-2, 2:-2]  # away from the image border (zero vs mirror padding)
        errors = {blend: (predict_tiled(model, image, K, (32, 32), overlap=12, blend=blend)[..., 2:-2, 2:-2]
                          - whole).abs().max().item() for blend in ("gaussian", "mean")}
    assert errors["gaussian"] < 0.05 * whole.abs().max().item()
    assert errors["gaussian"] < errors["mean"] / 3


@pytest.mark.parametrize("depth, tile", [(1, (30, 34)), (2, (60, 64))])
def test_valid_unet_tiles_equal_one_whole_pass(depth: int, tile: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = create_model("unet_valid", num_classes=K, in_channels=2, depth=depth, base_channels=4).eval()
    out_tile = model.output_size(tile)
    context = (tile[0] - out_tile[0]) // 2
    # 48x36: with the context on every side the whole image is itself a valid input.
    image = torch.randn(1, 2, 48, 36)
    with torch.no_grad():
        whole = model(mirror_pad(image, (context,) * 4))
        tiled = predict_tiled(model, image, K, tile, valid_model=model.output_size, batch_size=3)
    assert whole.shape == tiled.shape == (1, K, 48, 36)
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(100, 77), (7, 5)], ids=["odd-size", "smaller-than-tile"])
def test_valid_unet_any_image_size(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = create_model("unet_valid", num_classes=K, in_channels=2, depth=2, base_channels=4).eval()
    image = torch.randn(1, 2, *size)
    with torch.no_grad():
        tiled = predict_tiled(model, image, K, (60, 64), valid_model=model.output_size)
        # Reference: one pass over the canvas predict_tiled builds (context 20, last tile filled up).
        rows, cols = -(-size[0] // 20) * 20, -(-size[1] // 24) * 24
        canvas = mirror_pad(image, (20, 20 + rows - size[0], 20, 20 + cols - size[1]))
        whole = model(canvas)[..., : size[0], : size[1]]
    assert tiled.shape == (1, K, *size)
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)


def test_invalid_arguments_raise() -> None:
    model, image = _pointwise(), torch.randn(1, 2, 20, 20)
    with pytest.raises(SeglabError, match="overlap"):
        predict_tiled(model, image, K, (16, 16), overlap=16)
    with pytest.raises(SeglabError, match="blend"):
        predict_tiled(model, image, K, (16, 16), blend="median")
    with pytest.raises(SeglabError, match="1 x C x H x W"):
        predict_tiled(model, torch.randn(2, 2, 20, 20), K, (16, 16))
    with pytest.raises(SeglabError, match="expected"):
        predict_tiled(model, image, K + 1, (16, 16))
    valid = create_model("unet_valid", num_classes=K, in_channels=2, depth=1, base_channels=4).eval()
    with pytest.raises(SeglabError, match="nearest valid"):
        predict_tiled(valid, image, K, (31, 31), valid_model=valid.output_size)


def test_evaluation_shrinks_the_tile_of_small_images_without_changing_the_result() -> None:
    from seglab.ops.resize import forward_at_size

    torch.manual_seed(0)
    model = create_model("unet_valid", num_classes=K, depth=2, base_channels=4).eval()
    image = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        shrunk = forward_at_size(model, image, None)  # one small tile covers the image
        paper = predict_tiled(model, image, K, (572, 572), valid_model=model.output_size)
    assert shrunk.shape == (1, K, 45, 61)
    torch.testing.assert_close(shrunk, paper, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tile, overlap", [((32, 24), 8), ((7, 7), 6), ((16, 128), 0)],
                         ids=["overlap", "overlap-larger-than-stride", "one-row-of-tiles"])
@pytest.mark.parametrize("classes", [K, 1], ids=["multiclass", "binary"])
def test_streamed_labels_equal_argmax_of_tiled_logits(tile: tuple[int, int], overlap: int, classes: int) -> None:
    """predict_tiled_labels holds one band of logits, yet gives exactly the labels of predict_tiled."""
    from seglab.ops.tiling import predict_tiled_labels

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, classes, 3, padding=1)).eval()
    image = torch.randn(1, 2, 61, 50)
    with torch.no_grad():
        logits = predict_tiled(model, image, classes, tile, overlap=overlap, batch_size=3)
        labels = predict_tiled_labels(model, image, classes, tile, overlap=overlap, batch_size=3)
    expected = (logits[:, 0] > 0).long() if classes == 1 else logits.argmax(1)
    assert labels.shape == (1, 61, 50) and labels.dtype == torch.long
    assert torch.equal(labels, expected)


def test_streamed_labels_of_a_valid_model() -> None:
    from seglab.ops.tiling import predict_tiled_labels

    torch.manual_seed(0)
    model = create_model("unet_valid", num_classes=K, in_channels=2, depth=1, base_channels=4).eval()
    image = torch.randn(1, 2, 50, 37)
    with torch.no_grad():
        logits = predict_tiled(model, image, K, (30, 34), valid_model=model.output_size)
        labels = predict_tiled_labels(model, image, K, (30, 34), valid_model=model.output_size)
    assert torch.equal(labels, logits.argmax(1))


def test_default_tile_batch_is_capped_by_pixels() -> None:
    from seglab.ops.tiling import TILE_BATCH_PIXELS

    calls: list[int] = []

    def forward(tiles: torch.Tensor) -> torch.Tensor:
        calls.append(tiles.shape[0])
        return _pointwise()(tiles)

    image = torch.randn(1, 2, 40, 40)
    with torch.no_grad():
        predict_tiled(forward, image, K, (16, 16), overlap=4)  # 16 tiles of 256 pixels: batches of 4
        assert set(calls) == {4}
        calls.clear()
        big = int(TILE_BATCH_PIXELS**0.5) + 1  # one tile above the budget: one tile per call
        predict_tiled(forward, image, K, (big, big), overlap=4)
    assert calls and set(calls) == {1}


def test_tiled_segmenter_predict_streams_the_labels_of_its_logits(tmp_path) -> None:
    """A tiled Segmenter.predict streams labels (predict_tiled_labels): the argmax of predict_logits, also in
    the files the CLI's writer makes."""
    import numpy as np
    from PIL import Image

    from seglab.apps.predict import predict_to_files
    from seglab.inference.predictor import Segmenter

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, K, 3, padding=1))
    seg = Segmenter(model, K, ["a", "b", "c"], [(0, 0, 0), (255, 0, 0), (0, 255, 0)], (0.5,) * 3, (0.25,) * 3,
                    device="cpu", tile=(24, 20), tile_overlap=6)
    image = np.random.default_rng(0).integers(0, 256, (45, 38, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    predict_to_files(seg, [str(tmp_path / "img.png")], tmp_path / "out")
    written = np.asarray(Image.open(tmp_path / "out" / "img_labels.png"))
    assert np.array_equal(written, seg.predict(image).astype(np.uint8))
    assert np.array_equal(seg.predict(image), seg.predict_logits(image).argmax(0).numpy())
