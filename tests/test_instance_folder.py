"""dataset: instance_folder: id PNGs (8- and 16-bit) with a fixed class, a JSON class map or class PNGs in
masks/, images without instances, and a clear error for each kind of bad input in either direction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.core.config import DataConfig
from seglab.core.errors import SeglabError
from seglab.data import build_dataset, dataset_info
from seglab.data.instance import masks_to_boxes
from seglab.engine.loader import build_eval_loader

H, W = 24, 32


def _ids(k: int) -> np.ndarray:
    """Three objects (ids 1, 2 and 300, so 16-bit PNGs need all their bits) and, for k == 2, none."""
    ids = np.zeros((H, W), np.uint16)
    if k != 2:
        ids[2:8, 3:10] = 1
        ids[10:20, 12:16] = 2
        ids[14:22, 20:30] = 300
    return ids


def _classes(ids: np.ndarray) -> np.ndarray:
    """Class PNG: id 1 -> class 2, ids 2 and 300 -> class 1, and a 'road' stuff class 3 under no instance."""
    classes = np.zeros((H, W), np.uint8)
    classes[ids == 1] = 2
    classes[(ids == 2) | (ids == 300)] = 1
    classes[22:, :10] = 3
    return classes


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _folder(root: Path, *, class_pngs: bool = False, sidecars: bool = False, eight_bit: bool = False,
            split: str = "train", count: int = 3) -> Path:
    for k in range(count):
        image = np.random.default_rng(k).integers(0, 256, (H, W, 3), dtype=np.uint8)
        _save(root / split / "images" / f"s{k}.jpg", image)
        ids = _ids(k)
        if eight_bit:
            ids = np.where(ids == 300, 3, ids).astype(np.uint8)
        _save(root / split / "instances" / f"s{k}.png", ids)
        if class_pngs:
            _save(root / split / "masks" / f"s{k}.png", _classes(_ids(k)))
        if sidecars:
            top = "3" if eight_bit else "300"
            (root / split / "instances" / f"s{k}.json").write_text(json.dumps({"classes": {"1": "car", "2": 1, top: 1}}))
    return root


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(dataset="instance_folder", root=str(root), num_workers=0, hflip=False, **kw)


def _check(image: torch.Tensor, target: dict) -> None:
    n = len(target["labels"])
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    assert target["boxes"].shape == (n, 4) and target["masks"].shape == (n, H, W)
    assert torch.equal(target["boxes"], masks_to_boxes(target["masks"]))


def test_a_16_bit_id_png_alone_gives_one_class_instances_and_an_empty_image_has_0x4_boxes(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    cfg = _cfg(root)
    info = dataset_info(cfg)
    assert info.num_classes == 2 and info.class_names == ["background", "class_1"]
    ds = build_dataset(cfg, "train", train=False)
    assert len(ds) == 3 and ds.name_of(0) == "s0"
    image, target = ds[0]
    _check(image, target)
    assert target["labels"].tolist() == [1, 1, 1]
    assert target["area"].tolist() == [42.0, 40.0, 80.0]  # ids 1, 2, 300 in id order
    assert target["boxes"][2].tolist() == [20.0, 14.0, 30.0, 22.0]
    image, empty = ds[2]
    _check(image, empty)
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, H, W) and empty["labels"].shape == (0,)
    images, targets = next(iter(build_eval_loader(ds, 3, 0, False)))
    assert len(images) == 3 and [len(t["labels"]) for t in targets] == [3, 3, 0]


def test_class_pngs_in_masks_give_each_instance_its_class(tmp_path: Path) -> None:
    root = _folder(tmp_path, class_pngs=True)
    cfg = _cfg(root, class_names=["background", "person", "car", "road"])
    ds = build_dataset(cfg, "train", train=True)  # the same folder is a semantic `folder` data set too
    image, target = ds[0]
    _check(image, target)
    assert target["labels"].tolist() == [2, 1, 1]  # ids 1, 2, 300; road (3) is stuff under no instance
    semantic = build_dataset(DataConfig(dataset="folder", root=str(root), num_classes=4, num_workers=0), "train")
    assert semantic.load_mask(0).max() == 3


def test_json_class_maps_by_index_or_name_with_8_bit_ids_and_a_flat_folder(tmp_path: Path) -> None:
    _folder(tmp_path, sidecars=True, eight_bit=True)
    flat = tmp_path / "train"  # images/ and instances/ directly under the root: the training split alone
    ds = build_dataset(_cfg(flat, class_names=["background", "person", "car"]), "train")
    _, target = ds[1]
    assert target["labels"].tolist() == [2, 1, 1]
    with pytest.raises(SeglabError, match="no split 'val'"):
        build_dataset(_cfg(flat), "val")


def test_more_than_one_class_needs_class_pngs_or_a_json_map(tmp_path: Path) -> None:
    ds = build_dataset(_cfg(_folder(tmp_path), num_classes=3), "train")
    with pytest.raises(SeglabError, match=r"Which class is each instance of .*s0.png.*masks/s0.png.*s0.json"):
        ds[0]
    assert ds[2][1]["boxes"].shape == (0, 4)  # no instance, no class needed


def test_missing_folders_and_files_are_clear_errors(tmp_path: Path) -> None:
    root = _folder(tmp_path / "a", class_pngs=True)
    (root / "train" / "instances" / "s1.png").unlink()
    with pytest.raises(SeglabError, match=r"1 image\(s\) in .* have no instance-id PNG .*all zeros for an image without"):
        build_dataset(_cfg(root), "train")
    semantic = tmp_path / "b"  # a semantic folder data set: images/ + masks/ (class PNGs), no instances/
    _save(semantic / "images" / "x.png", np.zeros((H, W, 3), np.uint8))
    _save(semantic / "masks" / "x.png", np.zeros((H, W), np.uint8))
    with pytest.raises(SeglabError, match=r"no instances/ folder.*--data.dataset folder"):
        build_dataset(_cfg(semantic), "train")
    _save(semantic / "masks" / "x.png", _ids(0))  # id PNGs put in masks/ instead of instances/
    with pytest.raises(SeglabError, match=r"16-bit PNGs \(x.png\), which look like instance ids.*rename masks/ to instances/"):
        build_dataset(_cfg(semantic), "train")
    both = _folder(tmp_path / "c", class_pngs=True, sidecars=True)
    with pytest.raises(SeglabError, match="both give the classes"):
        build_dataset(_cfg(both), "train")


def test_a_colour_png_in_the_id_slot_is_an_error(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    colour = np.zeros((H, W, 3), np.uint8)
    colour[2:8, 3:10] = (255, 0, 0)
    colour[10:20, 12:16] = (0, 255, 0)
    _save(root / "train" / "instances" / "s0.png", colour)
    with pytest.raises(SeglabError, match=r"Instance-id PNG .*s0.png' is an RGB colour image.*single-channel 8- or 16-bit"):
        build_dataset(_cfg(root), "train")[0]


def test_a_class_png_copied_into_instances_is_an_error_but_one_object_per_class_is_not(tmp_path: Path) -> None:
    root = _folder(tmp_path, class_pngs=True)
    classes = _classes(_ids(0))
    _save(root / "train" / "instances" / "s0.png", classes)  # class 1 covers two separate objects
    ds = build_dataset(_cfg(root, num_classes=4), "train")
    with pytest.raises(SeglabError, match=r"s0.png' is identical to its class PNG .* value\(s\) 1 each cover several "
                                          r"separate regions: it holds class ids, not instance ids"):
        ds[0]
    single = np.zeros((H, W), np.uint8)
    single[3:9, 4:12] = 1  # one object of class 1 numbered 1: the same PNG serves as both, rightly
    _save(root / "train" / "instances" / "s1.png", single)
    _save(root / "train" / "masks" / "s1.png", single)
    assert ds[1][1]["labels"].tolist() == [1]


def test_size_mismatches_and_inconsistent_classes_are_errors(tmp_path: Path) -> None:
    root = _folder(tmp_path, class_pngs=True)
    _save(root / "train" / "instances" / "s0.png", np.zeros((H, W + 2), np.uint16))
    _save(root / "train" / "masks" / "s1.png", np.zeros((H - 4, W), np.uint8))
    classes = _classes(_ids(0))
    classes[2, 3] = 1  # one pixel of instance 1 (class 2) says class 1
    classes[10, 12] = 0  # and one of instance 2 lies on the background
    _save(root / "train" / "masks" / "s0.png", classes)
    ds = build_dataset(_cfg(root, num_classes=4), "train")
    with pytest.raises(SeglabError, match=r"Instance-id PNG .*s0.png' is 34x24 \(WxH\) but its image .*s0.jpg' is 32x24"):
        ds[0]
    with pytest.raises(SeglabError, match=r"Class PNG .*s1.png' is 32x20 \(WxH\) but its instance-id PNG .*is 32x24"):
        ds[1]
    _save(root / "train" / "instances" / "s0.png", _ids(0))
    with pytest.raises(SeglabError, match=r"Instance 1 of .*covers class\(es\) 1 \(1 px\), 2 \(41 px\).*same class"):
        ds[0]
    classes[2, 3] = 2
    _save(root / "train" / "masks" / "s0.png", classes)
    with pytest.raises(SeglabError, match=r"Instance 2 of .*covers class\(es\) 0 \(1 px\), 1 \(39 px\)"):
        ds[0]
    classes[10, 12] = 7
    _save(root / "train" / "masks" / "s0.png", classes)
    with pytest.raises(SeglabError, match=r"has value\(s\) 7 outside the 4 classes"):
        ds[0]


def test_json_class_map_errors(tmp_path: Path) -> None:
    root = _folder(tmp_path, sidecars=True)
    ds = build_dataset(_cfg(root, class_names=["background", "person", "cars"]), "train")
    with pytest.raises(SeglabError, match=r"gives instance 1 the class 'car', which is not one of .*Did you mean 'cars'"):
        ds[0]
    sidecar = root / "train" / "instances" / "s0.json"
    sidecar.write_text(json.dumps({"classes": {"1": 1, "2": 5, "300": 1}}))
    with pytest.raises(SeglabError, match=r"gives instance 2 the class 5; classes are indices 1..2"):
        ds[0]
    sidecar.write_text(json.dumps({"classes": {"1": 1}}))
    with pytest.raises(SeglabError, match=r"Instance 2 of .* has no class in .*s0.json"):
        ds[0]
    sidecar.write_text("{not json")
    with pytest.raises(SeglabError, match=r"Class map .*s0.json' cannot be read"):
        ds[0]


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(SeglabError, match="class_names has 2 names but --data.num_classes is 3"):
        dataset_info(_cfg(tmp_path, num_classes=3, class_names=["background", "a"]))
    with pytest.raises(SeglabError, match="at least one class"):
        dataset_info(_cfg(tmp_path, num_classes=1))
    with pytest.raises(SeglabError, match="rgb_masks applies to semantic folder"):
        dataset_info(_cfg(tmp_path, rgb_masks=True))
    with pytest.raises(SeglabError, match="set --data.root"):
        build_dataset(DataConfig(dataset="instance_folder"), "train")


def test_a_semantic_folder_fed_instance_id_pngs_says_so(tmp_path: Path) -> None:
    _save(tmp_path / "images" / "a.png", np.zeros((H, W, 3), np.uint8))
    _save(tmp_path / "masks" / "a.png", _ids(0))  # 16-bit ids 1, 2, 300
    ds = build_dataset(DataConfig(dataset="folder", root=str(tmp_path), num_classes=3, num_workers=0), "train")
    with pytest.raises(SeglabError, match=r"value\(s\) 300 outside the 3 classes .*instance-id PNG \(a 16-bit PNG; 3 "
                                          r"nonzero values.*put it in instances/ and use --data.dataset instance_folder"):
        ds.load_mask(0)
    ids = np.zeros((H, W), np.uint8)
    for k in range(1, 7):  # 8-bit ids 1..6 without a gap, past the 3 classes
        ids[k * 3: k * 3 + 2, 2:20] = k
    _save(tmp_path / "masks" / "a.png", ids)
    ds = build_dataset(DataConfig(dataset="folder", root=str(tmp_path), num_classes=3, num_workers=0), "train")
    with pytest.raises(SeglabError, match=r"value\(s\) 3, 4, 5, 6 outside .*\(ids 1, 2, \.\.\.; 6 nonzero values"):
        ds.load_mask(0)
    ids[ids == 6] = 9  # a gap: plain bad class values, the usual hint
    _save(tmp_path / "masks" / "a.png", ids)
    ds = build_dataset(DataConfig(dataset="folder", root=str(tmp_path), num_classes=3, num_workers=0), "train")
    with pytest.raises(SeglabError, match=r"If these are real classes set --data.num_classes 10") as caught:
        ds.load_mask(0)
    assert "instance" not in str(caught.value)
