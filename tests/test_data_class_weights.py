"""Class weights: SegNet median frequency on a hand-computed example, inverse frequency, and the cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.core.config import DataConfig
from seglab.data import compute_class_weights
from seglab.data.class_weights import cache_dir, class_pixel_stats, weights_from_stats
from seglab.core.errors import SeglabError

# Two 2x2 masks, 3 classes, 255 = ignore.
MASK_A = np.array([[0, 0], [1, 255]], np.uint8)  # 3 labelled pixels: class 0 x2, class 1 x1
MASK_B = np.array([[0, 2], [2, 2]], np.uint8)  # 4 labelled pixels: class 0 x1, class 2 x3
# f_0 = 3 / (3 + 4) = 3/7 (in both images); f_1 = 1/3 (image A only); f_2 = 3/4 (image B only)
# median f = 3/7 -> w = [1, (3/7)/(1/3), (3/7)/(3/4)] = [1, 9/7, 4/7]
MEDIAN_FREQ = [1.0, 9 / 7, 4 / 7]
# 1/f = [7/3, 3, 4/3], mean 20/9 -> [21/20, 27/20, 12/20]
INVERSE_FREQ = [1.05, 1.35, 0.6]


def _folder(root, num_classes=3):
    for name, mask in (("a", MASK_A), ("b", MASK_B)):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    return DataConfig(dataset="folder", root=str(root), num_classes=num_classes, num_workers=0)


def test_pixel_stats_hand_example():
    counts, totals = class_pixel_stats([MASK_A, MASK_B], 3, 255)
    assert counts.tolist() == [3, 1, 3] and totals.tolist() == [7, 3, 4]
    np.testing.assert_allclose(weights_from_stats(counts, totals, "median_frequency"), MEDIAN_FREQ)
    np.testing.assert_allclose(weights_from_stats(counts, totals, "inverse_frequency"), INVERSE_FREQ)
    np.testing.assert_allclose(weights_from_stats(counts, totals, "median_frequency_sqrt"), np.sqrt(MEDIAN_FREQ))


def test_median_frequency_from_train_masks(tmp_path):
    w = compute_class_weights(_folder(tmp_path), "median_frequency")
    assert w.dtype == torch.float32 and w.shape == (3,)
    torch.testing.assert_close(w, torch.tensor(MEDIAN_FREQ))
    inverse = compute_class_weights(_folder(tmp_path), "inverse_frequency")
    torch.testing.assert_close(inverse, torch.tensor(INVERSE_FREQ))


def test_absent_class_gets_zero_weight(tmp_path):
    w = compute_class_weights(_folder(tmp_path, num_classes=4), "median_frequency")
    assert w[3] == 0 and w[0] == 1  # median over the three present classes is unchanged


def test_weights_are_cached_atomically(tmp_path, _isolated_seglab_cache):
    cfg = _folder(tmp_path)
    compute_class_weights(cfg, "median_frequency")
    files = list(cache_dir().glob("*.json"))
    assert cache_dir().parent == _isolated_seglab_cache and len(files) == 1
    assert not list(cache_dir().glob(".tmp-*"))  # no temporary file left behind
    payload = json.loads(files[0].read_text())
    assert payload["method"] == "median_frequency" and payload["pixel_counts"] == [3, 1, 3]
    payload["weights"] = [5.0, 6.0, 7.0]  # a doctored cache proves the second call reads it
    files[0].write_text(json.dumps(payload))
    assert compute_class_weights(cfg, "median_frequency").tolist() == [5.0, 6.0, 7.0]
    compute_class_weights(cfg, "inverse_frequency")
    assert len(list(cache_dir().glob("*.json"))) == 2  # the method is part of the key


def test_changed_masks_invalidate_the_cache(tmp_path):
    cfg = _folder(tmp_path)
    before = compute_class_weights(cfg, "median_frequency")
    Image.fromarray(np.array([[1, 1], [1, 1]], np.uint8)).save(tmp_path / "masks" / "b.png")
    assert not torch.equal(before, compute_class_weights(cfg, "median_frequency"))


def test_none_list_and_unknown_methods(tmp_path):
    cfg = _folder(tmp_path)
    assert compute_class_weights(cfg, "none") is None and compute_class_weights(cfg, None) is None
    assert compute_class_weights(cfg, [1, 2, 3]).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(SeglabError, match="3 classes"):
        compute_class_weights(cfg, [1, 2])
    with pytest.raises(SeglabError, match="Did you mean 'median_frequency'"):
        compute_class_weights(cfg, "median_freq")


def test_synthetic_weights_cover_every_class():
    cfg = DataConfig(dataset="synthetic", synthetic_train=16, synthetic_size=[48, 64], num_workers=0)
    w = compute_class_weights(cfg, "median_frequency")
    assert w.shape == (7,) and (w > 0).all()
    assert w[2] > w[3]  # thin poles are rarer than road, so weigh more


def test_real_camvid_weights_look_like_segnet(shared_data):
    cfg = DataConfig(dataset="camvid", root=str(shared_data / "camvid"), image_size=[180, 240], num_workers=0)
    w = compute_class_weights(cfg, "median_frequency")
    names = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
             "Bicyclist"]
    assert w.shape == (11,)
    # SegNet's published weights: Road ~0.14, Building ~0.18, Pole ~4.6, Bicyclist ~7.4.
    assert w[names.index("Road")] < 0.3 and w[names.index("Building")] < 0.3
    assert w[names.index("Pole")] > 3 and w[names.index("Bicyclist")] > 5
