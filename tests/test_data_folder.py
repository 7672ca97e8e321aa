"""The generic folder data set: layouts, stem matching, index and RGB masks, and every bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.core.config import DataConfig
from seglab.data import build_dataset, dataset_info
from seglab.core.errors import SeglabError


def _write_pair(root, stem, mask, image_ext=".png", split=None, image_size=None):
    base = root / split if split else root
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "masks").mkdir(parents=True, exist_ok=True)
    h, w = image_size or mask.shape[:2]
    img = np.random.default_rng(len(stem)).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(img).save(base / "images" / f"{stem}{image_ext}")
    Image.fromarray(mask).save(base / "masks" / f"{stem}.png")
    return img


def _cfg(root, **kw):
    kw.setdefault("num_classes", 3)
    return DataConfig(dataset="folder", root=str(root), num_workers=0, **kw)


def test_folder_index_masks_matched_by_stem(tmp_path):
    masks = {s: np.random.default_rng(i).integers(0, 3, (6, 8)).astype(np.uint8) for i, s in enumerate("bca")}
    for s, m in masks.items():
        _write_pair(tmp_path, s, m, image_ext=".jpg" if s == "b" else ".png")
    (tmp_path / "masks" / "orphan.png").write_bytes((tmp_path / "masks" / "a.png").read_bytes())
    ds = build_dataset(_cfg(tmp_path), "train", train=False)
    assert [p.name for p, _ in ds.samples] == ["a.png", "b.jpg", "c.png"]
    assert [m.name for _, m in ds.samples] == ["a.png", "b.png", "c.png"]
    assert ds.info.class_names == ["class_0", "class_1", "class_2"] and ds.info.ignore_index == 255
    img, mask = ds[1]
    assert img.dtype == torch.float32 and img.shape == (3, 6, 8)
    assert mask.dtype == torch.int64 and mask.shape == (6, 8)
    np.testing.assert_array_equal(mask.numpy(), masks["b"])
    assert ds.load_image(0).dtype == np.uint8 and ds.load_mask(0).dtype == np.int64


def test_folder_split_subfolders_limit_and_image_size(tmp_path):
    for i in range(3):
        _write_pair(tmp_path, f"t{i}", np.full((8, 12), i, np.uint8), split="train")
    _write_pair(tmp_path, "v0", np.array([[0, 1, 2, 255]] * 4, np.uint8), split="val")
    cfg = _cfg(tmp_path, limit=2, image_size=[4, 6])
    train = build_dataset(cfg, "train", train=True)
    assert len(train) == 2 and train.load_image(1).shape == (4, 6, 3)
    val = build_dataset(cfg, "val", train=False)
    assert set(np.unique(val.load_mask(0))) <= {0, 1, 2, 255}


def test_folder_flat_layout_has_no_val_split(tmp_path):
    _write_pair(tmp_path, "a", np.zeros((4, 4), np.uint8))
    assert len(build_dataset(_cfg(tmp_path), "train")) == 1
    with pytest.raises(SeglabError, match=r"no split 'val'.*--data.val_split"):
        build_dataset(_cfg(tmp_path), "val")


def test_folder_uint16_and_palette_mode_masks(tmp_path):
    _write_pair(tmp_path, "deep", np.array([[0, 299], [5, 1]], np.uint16))
    ds = build_dataset(_cfg(tmp_path, num_classes=300), "train")
    assert ds.load_mask(0).max() == 299
    (tmp_path / "masks" / "deep.png").unlink()
    im = Image.new("P", (2, 2))
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    im.putdata([0, 1, 2, 1])
    im.save(tmp_path / "masks" / "deep.png")
    np.testing.assert_array_equal(build_dataset(_cfg(tmp_path), "train").load_mask(0), [[0, 1], [2, 1]])


def test_folder_rgb_masks_with_palette(tmp_path):
    palette = [[0, 0, 0], [255, 0, 0], [0, 0, 255], [255, 255, 255]]  # 3 classes + a void colour
    rgb = np.array([[[0, 0, 0], [255, 0, 0]], [[0, 0, 255], [255, 255, 255]]], np.uint8)
    _write_pair(tmp_path, "a", rgb)
    ds = build_dataset(_cfg(tmp_path, rgb_masks=True, palette=palette), "train")
    np.testing.assert_array_equal(ds.load_mask(0), [[0, 1], [2, 255]])
    assert ds.info.palette == [(0, 0, 0), (255, 0, 0), (0, 0, 255)]
    rgb[0, 0] = (9, 9, 9)
    Image.fromarray(rgb).save(tmp_path / "masks" / "a.png")
    ds = build_dataset(_cfg(tmp_path, rgb_masks=True, palette=palette), "train")
    with pytest.raises(SeglabError, match=r"a\.png.*\(9, 9, 9\)"):
        ds.load_mask(0)


def test_rgb_masks_need_palette(tmp_path):
    with pytest.raises(SeglabError, match="--data.palette"):
        dataset_info(_cfg(tmp_path, rgb_masks=True))


def test_rgb_mask_where_index_expected(tmp_path):
    _write_pair(tmp_path, "a", np.array([[[0, 0, 0], [255, 0, 0]]], np.uint8))
    ds = build_dataset(_cfg(tmp_path), "train")
    with pytest.raises(SeglabError, match=r"a\.png.*--data\.rgb_masks true.*palette"):
        ds[0]


def test_mask_size_mismatch(tmp_path):
    _write_pair(tmp_path, "a", np.zeros((4, 4), np.uint8), image_size=(5, 4))
    with pytest.raises(SeglabError, match=r"a\.png.*4x4.*4x5"):
        build_dataset(_cfg(tmp_path), "train")[0]


def test_mask_values_out_of_range(tmp_path):
    _write_pair(tmp_path, "a", np.array([[0, 1, 7, 9]], np.uint8))
    with pytest.raises(SeglabError, match=r"a\.png.*7, 9.*--data\.num_classes 10.*--data\.ignore_index"):
        build_dataset(_cfg(tmp_path), "train").load_mask(0)


def test_binary_0_255_mask(tmp_path):
    _write_pair(tmp_path, "a", np.array([[0, 255], [255, 0]], np.uint8))
    with pytest.raises(SeglabError, match="0/255 binary mask; map 255 to class 1"):
        build_dataset(_cfg(tmp_path, num_classes=2, ignore_index=100), "train").load_mask(0)
    with pytest.warns(UserWarning, match="only 0 and 255"):
        build_dataset(_cfg(tmp_path, num_classes=2), "train").load_mask(0)


def test_corrupt_image_named(tmp_path):
    _write_pair(tmp_path, "a", np.zeros((4, 4), np.uint8))
    (tmp_path / "images" / "a.png").write_text("garbage")
    with pytest.raises(SeglabError, match=r"a\.png"):
        build_dataset(_cfg(tmp_path), "train")[0]


def test_image_without_mask(tmp_path):
    _write_pair(tmp_path, "a", np.zeros((4, 4), np.uint8))
    (tmp_path / "masks" / "a.png").rename(tmp_path / "masks" / "b.png")
    with pytest.raises(SeglabError, match=r"no mask.*a\.png"):
        build_dataset(_cfg(tmp_path), "train")


def test_empty_data_directory(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(SeglabError, match="No image/mask pairs"):
        build_dataset(_cfg(tmp_path), "train")
    with pytest.raises(SeglabError, match="no split 'train'"):
        build_dataset(_cfg(tmp_path / "images"), "train")


def test_missing_root_and_num_classes(tmp_path):
    with pytest.raises(SeglabError, match=r"does not exist.*--data\.root"):
        build_dataset(_cfg(tmp_path / "nowhere"), "train")
    with pytest.raises(SeglabError, match=r"--data\.root"):
        build_dataset(DataConfig(dataset="folder", num_classes=2), "train")
    with pytest.raises(SeglabError, match=r"--data\.num_classes"):
        dataset_info(DataConfig(dataset="folder", root=str(tmp_path)))


def test_unknown_dataset_kind_suggests():
    with pytest.raises(SeglabError, match="Did you mean 'camvid'"):
        dataset_info(DataConfig(dataset="camvd"))


def test_class_names_and_palette_lengths_checked(tmp_path):
    with pytest.raises(SeglabError, match="class_names"):
        dataset_info(_cfg(tmp_path, class_names=["a", "b"]))
    with pytest.raises(SeglabError, match="palette"):
        dataset_info(_cfg(tmp_path, palette=[[0, 0, 0]]))
    info = dataset_info(_cfg(tmp_path, class_names=["bg", "x", "y"]))
    assert info.class_names == ["bg", "x", "y"] and len(set(info.palette)) == 3
