"""Instance data in torchvision's target schema: ISBI cells, synthetic instances, COCO folders, bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from seglab.core.config import DataConfig
from seglab.core.errors import SeglabError
from seglab.data import build_dataset, dataset_info
from seglab.data.instance import collate_instances, masks_to_boxes
from seglab.data.instance.sources import cell_instances
from seglab.data.synthetic import render_scene, render_scene_instances
from seglab.engine.loader import build_eval_loader

ISBI = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "isbi2012"
ISBI = ISBI if ISBI.is_dir() else Path("/work/shared/data/isbi2012")


def _check_schema(image: torch.Tensor, target: dict) -> None:
    n = len(target["labels"])
    h, w = image.shape[-2:]
    assert image.dtype == torch.float32 and image.shape[0] == 3 and 0 <= image.min() and image.max() <= 1
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (n, 4)
    assert target["labels"].dtype == torch.int64 and (target["labels"] >= 1).all()
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (n, h, w)
    assert target["area"].shape == (n,) and target["iscrowd"].dtype == torch.int64
    assert target["image_id"].dtype == torch.int64
    assert torch.equal(target["boxes"], masks_to_boxes(target["masks"]))


def test_cells_are_4_connected_components_above_the_minimum_area() -> None:
    label = np.zeros((20, 20), np.uint8)
    label[2:7, 2:7] = 255  # two cells meeting only at a corner: 4-connectivity keeps them apart
    label[7:12, 7:12] = 255
    label[15:17, 15:17] = 255  # 4 pixels: under the 20-pixel minimum, not a cell
    masks = cell_instances(label)
    assert masks.shape == (2, 20, 20) and masks.sum((1, 2)).tolist() == [25, 25]


def _isbi_root(tmp_path: Path, label_value: int = 255) -> Path:
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    for k in range(5):
        label = np.zeros((40, 48), np.uint8)
        label[5:15, 5:20] = label_value
        label[20:35, 25:40] = label_value
        Image.fromarray(np.where(label > 0, 200, 30).astype(np.uint8)).save(tmp_path / "images" / f"{k:02d}.png")
        Image.fromarray(label).save(tmp_path / "labels" / f"{k:02d}.png")
    return tmp_path


def test_isbi_cells_items_follow_the_schema_and_augment_jointly(tmp_path: Path) -> None:
    cfg = DataConfig(dataset="isbi2012_cells", root=str(_isbi_root(tmp_path)), hflip=True, vflip=True, rotate90=True,
                     crop_size=[32, 32])
    assert dataset_info(cfg).class_names == ["background", "cell"]
    train = build_dataset(cfg, "train", train=True)
    assert len(train) == 1 and len(build_dataset(cfg, "val")) == 4
    for seed in range(6):
        torch.manual_seed(seed)
        image, target = train[0]
        _check_schema(image, target)
        union = target["masks"].bool().any(0)
        assert (image[0][union] > 0.5).all()  # cells stay bright: the image moved with its masks


def test_isbi_cells_reject_non_binary_labels(tmp_path: Path) -> None:
    ds = build_dataset(DataConfig(dataset="isbi2012_cells", root=str(_isbi_root(tmp_path, label_value=7))), "val")
    with pytest.raises(SeglabError, match="binary labels"):
        ds[0]


@pytest.mark.skipif(not (ISBI / "labels").is_dir(), reason="ISBI 2012 data not present")
def test_real_isbi_slices_have_about_130_cells() -> None:
    image, target = build_dataset(DataConfig(dataset="isbi2012_cells", root=str(ISBI)), "val")[0]
    _check_schema(image, target)
    assert 80 <= len(target["labels"]) <= 200


def test_synthetic_instances_keep_the_semantic_scene() -> None:
    for i in range(6):
        image, label = render_scene(np.random.default_rng([0, 0, i]), 96, 128)
        image2, label2, ids = render_scene_instances(np.random.default_rng([0, 0, i]), 96, 128)
        assert np.array_equal(image, image2) and np.array_equal(label, label2)
        assert set(np.unique(label[ids > 0]).tolist()) <= {2, 6}  # only poles and cars are things
    ds = build_dataset(DataConfig(dataset="synthetic_instances", synthetic_train=8), "train")
    counts = []
    for k in range(len(ds)):
        image, target = ds[k]
        _check_schema(image, target)
        assert set(target["labels"].tolist()) <= {1, 2}
        counts.append(len(target["labels"]))
    assert 0 in counts and max(counts) >= 3  # images without instances are kept (boxes 0 x 4)
    images, targets = next(iter(build_eval_loader(ds, 4, 0, False)))
    assert isinstance(images, list) and len(images) == 4 and isinstance(targets[0], dict)
    assert collate_instances([ds[0], ds[1]])[1][1] is not None


# ------------------------------------------------------------------ COCO folders
def _coco(tmp_path: Path, **changes) -> Path:
    split = tmp_path / "train"
    (split / "images").mkdir(parents=True, exist_ok=True)
    for k in (1, 2):
        Image.fromarray(np.full((30, 40, 3), 50 * k, np.uint8)).save(split / "images" / f"im{k}.png")
    square = np.zeros((30, 40), np.uint8)
    square[5:15, 10:25] = 1
    rle = mask_utils.encode(np.asfortranarray(square))
    rle["counts"] = rle["counts"].decode()
    data = {
        "images": [{"id": 1, "file_name": "im1.png", "height": 30, "width": 40},
                   {"id": 2, "file_name": "im2.png", "height": 30, "width": 40}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 7, "segmentation": rle, "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 7, "segmentation": {"size": [30, 40], "counts": [0, 1200]},
             "iscrowd": 1},
        ],
    }
    for key, value in changes.items():
        data[key] = value(data[key]) if callable(value) else value
    (split / "annotations.json").write_text(json.dumps(data))
    return tmp_path


def test_coco_folder_polygons_rle_and_category_mapping(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = DataConfig(dataset="coco", root=str(_coco(tmp_path)), val_split="train")
    assert dataset_info(cfg).class_names == ["background", "cat", "dog"]
    assert "not 1..2; mapped to labels 1..2" in capsys.readouterr().out
    ds = build_dataset(cfg, "train")
    image, target = ds[0]
    _check_schema(image, target)
    assert target["labels"].tolist() == [1, 2]  # ids 3, 7 -> 1, 2; the crowd annotation is left out
    assert target["boxes"][1].tolist() == [10, 5, 25, 15] and target["area"][1] == 150
    image, target = ds[1]
    assert target["boxes"].shape == (0, 4)  # an image without annotations


def test_coco_degenerate_instances_are_dropped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _coco(tmp_path, annotations=lambda a: a + [{"id": 9, "image_id": 2, "category_id": 3, "iscrowd": 0,
                                                        "segmentation": {"size": [30, 40], "counts": [1200]}}])
    ds = build_dataset(DataConfig(dataset="coco", root=str(root)), "train")
    with caplog.at_level(logging.WARNING):
        _, target = ds[1]
    assert target["boxes"].shape == (0, 4) and ds.degenerate == 1 and "dropped 1 degenerate" in caplog.text


@pytest.mark.parametrize(("change", "message"), [
    ({"annotations": lambda a: a + [{"id": 5, "image_id": 99, "category_id": 3, "segmentation": []}]},
     "names image_id 99, which is not in 'images'"),
    ({"annotations": lambda a: a + [{"id": 5, "image_id": 1, "category_id": 4, "segmentation": []}]},
     "category_id 4, which is not in 'categories'"),
    ({"annotations": lambda a: a + [{"id": 5, "image_id": 1, "category_id": 3, "segmentation": [[1, 1, 5, 5]]}]},
     "polygon with 2 point"),
    ({"annotations": lambda a: a + [{"id": 5, "image_id": 1, "category_id": 3, "segmentation": [1, 1, 5, 5, 1, 5]}]},
     "annotation 5 has a flat 'segmentation' list.*wrap it"),
    ({"annotations": lambda a: a + [{"id": 5, "image_id": 1, "category_id": 3,
                                     "segmentation": [[1, 1, 5, 5, 1, 5, 2]]}]},
     "odd number \\(7\\) of coordinates"),
    ({"annotations": lambda a: a + [{"id": 5, "image_id": 1, "category_id": 3}]}, "annotation 5 has no 'segmentation'"),
])
def test_coco_bad_annotations_are_clear_errors(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(SeglabError, match=message) as e:
        build_dataset(DataConfig(dataset="coco", root=str(_coco(tmp_path, **change))), "train")
    assert "annotations.json" in str(e.value)


def test_coco_mask_of_another_size_and_missing_image_file(tmp_path: Path) -> None:
    bad = {"size": [20, 20], "counts": [400]}
    root = _coco(tmp_path, annotations=lambda a: [{**a[1], "segmentation": bad}])
    with pytest.raises(SeglabError, match=r"mask of size 20x20 \(WxH\), but its image is 40x30"):
        build_dataset(DataConfig(dataset="coco", root=str(root)), "train")[0]
    (tmp_path / "train" / "images" / "im2.png").unlink()
    with pytest.raises(SeglabError, match="file 'im2.png' is in neither"):
        build_dataset(DataConfig(dataset="coco", root=str(root)), "train")
