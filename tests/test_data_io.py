"""Reading images and masks: formats, palette masks, resizing, the shared cache, and bad files."""

from __future__ import annotations

import multiprocessing as mp
import pickle

import numpy as np
import pytest
from PIL import Image

from seglab.data import read_image, read_mask, read_rgb_mask
from seglab.data.cache import ArrayCache
from seglab.data.io import RGBMaskError, image_hw, resize_mask
from seglab.core.errors import SeglabError


def test_read_image_rgb_gray_and_16_bit(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(np.full((5, 7), 65535, np.uint16)).save(tmp_path / "deep.png")
    out = read_image(tmp_path / "rgb.png")
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, rgb)
    gray = read_image(tmp_path / "gray.png")
    assert gray.shape == (5, 7, 3) and (gray[..., 2] == rgb[..., 0]).all()
    assert (read_image(tmp_path / "deep.png") == 255).all()  # 16-bit scaled, not clipped garbage
    assert image_hw(tmp_path / "rgb.png") == (5, 7)


def test_read_image_truncated_png_names_file(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "broken.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(SeglabError, match=r"broken\.png.*corrupt"):
        read_image(tmp_path / "broken.png")


def test_read_image_text_file_and_missing_file(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(SeglabError, match=r"notes\.png"):
        read_image(tmp_path / "notes.png")
    with pytest.raises(SeglabError, match=r"missing\.png.*does not exist"):
        read_image(tmp_path / "missing.png")


def test_read_mask_modes(tmp_path):
    ids = np.array([[0, 1], [2, 11]], np.uint8)
    Image.fromarray(ids).save(tmp_path / "l.png")
    Image.fromarray(np.array([[0, 300], [1000, 2]], np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(np.stack([ids] * 3, -1)).save(tmp_path / "gray_rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "l.png"), ids)
    deep = read_mask(tmp_path / "deep.png")
    assert deep.dtype == np.uint16 and deep.max() == 1000
    np.testing.assert_array_equal(read_mask(tmp_path / "gray_rgb.png"), ids)


def test_palette_mode_mask_indices_are_class_ids(tmp_path):
    im = Image.new("P", (3, 1))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    im.putdata([2, 0, 1])
    im.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), [[2, 0, 1]])


def test_rgb_mask_where_index_expected(tmp_path):
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[:2] = (128, 64, 128)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(RGBMaskError, match=r"colour\.png.*--data\.rgb_masks true"):
        read_mask(tmp_path / "colour.png")


def test_read_rgb_mask_maps_palette_and_void(tmp_path):
    palette = [[10, 20, 30], [200, 0, 0], [0, 0, 0]]  # two classes + a final void colour
    rgb = np.array([[[10, 20, 30], [200, 0, 0], [0, 0, 0]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_rgb_mask(tmp_path / "m.png", palette, 2, 255), [[0, 1, 255]])


def test_read_rgb_mask_unknown_colour_named(tmp_path):
    rgb = np.array([[[10, 20, 30], [1, 2, 3]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    with pytest.raises(SeglabError, match=r"m\.png.*\(1, 2, 3\)"):
        read_rgb_mask(tmp_path / "m.png", [[10, 20, 30]], 1, 255)
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "index.png")
    with pytest.raises(SeglabError, match="rgb_masks false"):
        read_rgb_mask(tmp_path / "index.png", [[10, 20, 30]], 1, 255)


def test_resize_mask_is_nearest():
    mask = np.random.default_rng(0).integers(0, 5, (37, 53)).astype(np.uint8)
    for size in [(18, 26), (74, 106), (40, 20)]:
        out = resize_mask(mask, size)
        assert out.shape == size and set(np.unique(out)) <= set(np.unique(mask))
    np.testing.assert_array_equal(resize_mask(mask, (74, 106))[::2, ::2], mask)


def _fill(cache: ArrayCache) -> None:
    cache.put(1, np.full((2, 3), 7, np.uint8))


def test_array_cache_is_shared_with_forked_children():
    cache = ArrayCache(3, (2, 3), np.uint8)
    assert cache.get(1) is None and cache.shared
    child = mp.get_context("fork").Process(target=_fill, args=(cache,))
    child.start()
    child.join(10)
    got = cache.get(1)
    assert got is not None and (got == 7).all() and not got.flags.writeable
    # Off-shape arrays fall back to a private store; pickled copies start empty.
    cache.put(2, np.ones((4, 4), np.uint8))
    assert cache.get(2).shape == (4, 4)
    assert pickle.loads(pickle.dumps(cache)).get(1) is None
