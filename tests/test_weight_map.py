"""Tests for U-Net's weight map: hand-worked values, the bounded-distance shortcut, transforms, a real slice."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from scipy import ndimage

from seglab.data.io import read_mask
from seglab.data.transforms import SegmentationTransform
from seglab.data.weight_map import border_cutoff, nearest_two_distances, transform_with_weight_map, unet_weight_map
from seglab.core.errors import SeglabError


def border(d1: float, d2: float, w0: float = 10.0, sigma: float = 5.0) -> float:
    return w0 * math.exp(-((d1 + d2) ** 2) / (2 * sigma**2))


def two_squares() -> np.ndarray:
    """12 x 16 membrane (0) with two 4x4 cells (1) in columns 2..5 and 10..13: a 4-pixel gap (columns 6..9)."""
    mask = np.zeros((12, 16), np.uint8)
    mask[4:8, 2:6] = 1
    mask[4:8, 10:14] = 1
    return mask


def test_two_squares_by_hand():
    w = unet_weight_map(two_squares(), balance=False)
    # In the gap, d1 + d2 = 5 at every pixel: (1, 4), (2, 3), (3, 2), (4, 1).
    assert w[4:8, 6:10] == pytest.approx(np.full((4, 4), 1 + 10 * math.exp(-25 / 50)), rel=1e-6)
    assert w[5, 6] == pytest.approx(7.0653, abs=1e-4)
    # Above the gap: nearest cell pixels (4, 5) and (4, 10) from (2, 7).
    assert w[2, 7] == pytest.approx(1 + border(math.hypot(2, 2), math.hypot(2, 3)), rel=1e-6)
    # Far corner (0, 0): (4, 2) and (4, 10).
    assert w[0, 0] == pytest.approx(1 + border(math.hypot(4, 2), math.hypot(4, 10)), rel=1e-5)
    assert np.all(w[two_squares() == 1] == 1.0)  # the border term is for membrane pixels only


def test_class_balance_and_ignored_pixels():
    mask = two_squares()
    # 32 cell pixels, 160 membrane pixels: membrane (the majority) weighs 1, cells 160 / 32 = 5.
    w = unet_weight_map(mask)
    assert np.all(w[mask == 1] == pytest.approx(5.0))
    assert w[5, 7] == pytest.approx(1 + 10 * math.exp(-0.5), rel=1e-6)
    assert w[0, 15] == pytest.approx(1 + border(math.hypot(4, 2), math.hypot(4, 10)), rel=1e-5)
    mask[0, :] = 255  # ignored: weight 0, not counted in the class frequencies (32 vs 144)
    w = unet_weight_map(mask)
    assert np.all(w[0] == 0) and np.all(w[mask == 1] == pytest.approx(144 / 32))


def test_a_single_cell_gets_no_border_term():
    mask = np.zeros((10, 10), np.uint8)
    mask[3:6, 3:6] = 1
    assert np.all(unet_weight_map(mask, balance=False) == 1.0)
    assert np.all(unet_weight_map(mask, w0=0.0, balance=False) == 1.0)


def brute_force_distances(instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d1, d2 from one full-image distance transform per instance (the slow, obvious way)."""
    ids = [k for k in np.unique(instances) if k != 0]
    dist = np.stack([ndimage.distance_transform_edt(instances != k) for k in ids])
    dist.sort(axis=0)
    return dist[0], dist[1]


def test_bounded_distances_match_brute_force_within_the_cutoff():
    rng = np.random.default_rng(0)
    cells = ndimage.binary_opening(rng.random((96, 80)) > 0.55, iterations=1)
    instances, count = ndimage.label(cells)
    assert count >= 10
    cutoff = border_cutoff(10.0, 5.0)
    d1, d2 = nearest_two_distances(instances, cutoff)
    b1, b2 = brute_force_distances(instances)
    assert np.allclose(d1[b1 <= cutoff], b1[b1 <= cutoff], atol=1e-5)
    assert np.allclose(d2[b2 <= cutoff], b2[b2 <= cutoff], atol=1e-5)
    assert np.all(d2[b2 > cutoff] > cutoff)
    # The whole map agrees with the unbounded formula to far below a visible difference.
    membrane = ~cells
    expected = 1.0 + np.where(membrane, 10 * np.exp(-((b1 + b2) ** 2) / 50.0), 0.0)
    assert np.allclose(unet_weight_map(cells.astype(np.uint8), balance=False), expected, atol=1e-5)


def test_border_cutoff_and_bad_arguments():
    cut = border_cutoff(10.0, 5.0)
    assert 10 * math.exp(-(cut**2) / 50) == pytest.approx(1e-6)
    with pytest.raises(SeglabError, match="H x W"):
        unet_weight_map(np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(SeglabError, match="sigma > 0"):
        unet_weight_map(two_squares(), sigma=0.0)


def test_weight_map_follows_the_mask_through_random_scale_crop_and_flip():
    mask = two_squares()
    image = np.zeros((12, 16, 3), np.uint8)
    source = np.arange(mask.size, dtype=np.float32).reshape(mask.shape)  # each pixel's weight is its own index
    tf = SegmentationTransform(train=True, mean=[0.5] * 3, std=[0.5] * 3, ignore_index=255, crop_size=[14, 14],
                               scale_range=[0.7, 1.5], hflip=True)
    for seed in range(8):
        torch.manual_seed(seed)
        img, out_mask, weights = transform_with_weight_map(tf, image, mask, source, 255)
        assert img.shape == (3, 14, 14) and out_mask.shape == weights.shape == (14, 14)
        valid = out_mask != 255
        assert torch.all(weights[~valid] == 0)
        came_from = weights[valid].long()  # the transformed index tells where each pixel came from
        assert torch.equal(torch.from_numpy(mask.astype(np.int64)).flatten()[came_from], out_mask[valid])
        assert torch.equal(weights[valid], came_from.float())  # exact values, nothing interpolated


def test_weight_map_size_mismatch_raises():
    tf = SegmentationTransform(train=False, mean=[0.5] * 3, std=[0.5] * 3, ignore_index=255)
    with pytest.raises(SeglabError, match="does not match"):
        transform_with_weight_map(tf, np.zeros((12, 16, 3), np.uint8), two_squares(), np.ones((12, 15)), 255)


def test_real_isbi_slice(shared_data):
    raw = read_mask(shared_data / "isbi2012" / "labels" / "00.png")
    mask = (raw == 255).astype(np.uint8)
    start = time.perf_counter()
    w = unet_weight_map(mask)
    seconds = time.perf_counter() - start
    assert w.shape == (512, 512) and w.dtype == np.float32 and np.isfinite(w).all()
    assert w.min() > 0
    assert np.all(w[mask == 1] == pytest.approx(1.0))  # cells are the majority class here
    membrane = w[mask == 0]
    f_ratio = (mask == 1).sum() / (mask == 0).sum()
    assert membrane.min() >= f_ratio - 1e-4 and membrane.max() <= f_ratio + 10 + 1e-4
    assert np.percentile(membrane, 90) > f_ratio + 3  # thin membranes between cells are heavily weighted
    assert seconds < 5.0, f"weight map took {seconds:.2f} s for one 512x512 slice"
