"""Synthetic road scenes: determinism, class coverage, speed, and use through a DataLoader."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from seglab.core.config import DataConfig
from seglab.data import CAMVID_PALETTE, SYNTHETIC_CLASSES, build_dataset, dataset_info, render_scene
from seglab.core.errors import SeglabError


def _cfg(**kw) -> DataConfig:
    return DataConfig(dataset="synthetic", num_workers=0, **kw)


def test_synthetic_is_the_default_and_has_seven_camvid_coloured_classes():
    info = dataset_info(DataConfig())
    assert info.num_classes == 7 and info.class_names == SYNTHETIC_CLASSES and info.ignore_index == 255
    assert info.palette[SYNTHETIC_CLASSES.index("Car")] == CAMVID_PALETTE[8]


def test_same_seed_same_scene_and_streams_differ():
    a = build_dataset(_cfg(synthetic_train=4, synthetic_val=4), "train")
    b = build_dataset(_cfg(synthetic_train=4, synthetic_val=4), "train")
    np.testing.assert_array_equal(a.load_image(3), b.load_image(3))
    np.testing.assert_array_equal(a.load_mask(3), b.load_mask(3))
    val = build_dataset(_cfg(synthetic_train=4, synthetic_val=4), "val")
    assert not np.array_equal(a.load_image(0), val.load_image(0))
    other = build_dataset(_cfg(synthetic_train=4, synthetic_seed=1), "train")
    assert not np.array_equal(a.load_image(0), other.load_image(0))


def test_all_classes_appear_and_shapes():
    ds = build_dataset(_cfg(synthetic_train=12), "train")
    seen = set()
    for i in range(len(ds)):
        mask = ds.load_mask(i)
        assert mask.shape == (96, 128) and mask.min() >= 0 and mask.max() < 7
        seen |= set(np.unique(mask).tolist())
    assert seen == set(range(7))
    assert ds.load_image(0).shape == (96, 128, 3)


def test_colour_alone_does_not_decide_the_class():
    """Per-image lighting and texture spread each class's colours (the task is not a lookup table)."""
    img, mask = render_scene(np.random.default_rng(5), 96, 128)
    road = img[mask == 3].astype(float)
    assert road.std(axis=0).mean() > 5


def test_generation_is_fast():
    rng = np.random.default_rng(0)
    render_scene(rng, 96, 128)
    start = time.perf_counter()
    for _ in range(20):
        render_scene(rng, 96, 128)
    per_image = (time.perf_counter() - start) / 20
    assert per_image < 0.05  # ~3-5 ms on an idle core; generous for loaded CI machines


def test_sizes_limit_and_splits():
    ds = build_dataset(_cfg(synthetic_size=[32, 48], synthetic_train=10, limit=3), "train", train=True)
    assert len(ds) == 3
    img, mask = ds[0]
    assert tuple(img.shape) == (3, 32, 48) and mask.dtype == torch.int64
    assert len(build_dataset(_cfg(synthetic_val=5), "test")) == 5
    with pytest.raises(SeglabError, match="Did you mean 'val'"):
        build_dataset(_cfg(), "vall")


def test_dataloader_workers_share_the_decoded_cache():
    ds = build_dataset(_cfg(synthetic_train=8, synthetic_size=[32, 48]), "train")
    loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="fork")
    batches = list(loader)
    assert len(batches) == 2 and batches[0][0].shape == (4, 3, 32, 48)
    # Workers decoded everything; the parent process sees it without decoding again.
    assert len(ds._images) == 8 and len(ds._masks) == 8
    torch.testing.assert_close(batches[1][1][3], ds[7][1])
