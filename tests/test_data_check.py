"""check_dataset: counts, histograms, and every kind of problem named in the report."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from seglab.data import check_dataset
from seglab.core.errors import SeglabError


def _pair(root, stem, mask, image_hw=None, split=None):
    base = root / split if split else root
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "masks").mkdir(parents=True, exist_ok=True)
    h, w = image_hw or mask.shape[:2]
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(base / "images" / f"{stem}.png")
    Image.fromarray(mask).save(base / "masks" / f"{stem}.png")


def _good(n=3):
    return (np.arange(16).reshape(4, 4) % n).astype(np.uint8)


def test_clean_folder_is_ok(tmp_path):
    _pair(tmp_path, "a", _good(), split="train")
    _pair(tmp_path, "b", _good(), split="val")
    report = check_dataset(tmp_path, num_classes=3)
    assert report.ok, report.format()
    assert [s.name for s in report.splits] == ["train", "val"] and report.splits[0].pairs == 1
    text = report.format()
    assert "class_2" in text and "Result: OK" in text


def test_folder_with_every_problem(tmp_path):
    _pair(tmp_path, "good", _good())
    _pair(tmp_path, "wrong_size", _good(), image_hw=(5, 4))
    _pair(tmp_path, "out_of_range", np.array([[0, 1], [7, 9]], np.uint8))
    _pair(tmp_path, "binary", np.array([[0, 255], [255, 255]], np.uint8))
    _pair(tmp_path, "colour", np.array([[[255, 0, 0], [0, 255, 0]]], np.uint8))
    _pair(tmp_path, "lonely", _good())
    (tmp_path / "masks" / "lonely.png").unlink()
    Image.fromarray(_good()).save(tmp_path / "masks" / "stray.png")
    _pair(tmp_path, "corrupt", _good())
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 40)

    report = check_dataset(tmp_path, num_classes=3)
    text = report.format()
    assert not report.ok and "FAILED" in text
    assert "image(s) without a mask: lonely.png" in text
    assert "mask(s) without an image" in text and "stray.png" in text
    assert "differ in size" in text and "wrong_size.png" in text
    assert "outside [0, 3)" in text and "7 (1 file), 9 (1 file)" in text and "out_of_range.png" in text
    assert "0/255 binary mask; map 255 to class 1" in text and "binary.png" in text
    assert "RGB colour mask(s)" in text and "colour.png" in text and "--data.rgb_masks true" in text
    assert "unreadable or corrupt" in text and "corrupt.png" in text
    assert report.splits[0].images == 7 and report.splits[0].masks == 7


def test_num_classes_inferred_from_largest_value(tmp_path):
    _pair(tmp_path, "a", np.array([[0, 4], [2, 255]], np.uint8))
    report = check_dataset(tmp_path)
    assert report.num_classes == 5 and "inferred" in report.format()
    assert any("never present" in i.message for i in report.warnings) and report.ok


def test_all_binary_data_set_is_an_error(tmp_path):
    _pair(tmp_path, "a", np.array([[0, 255]], np.uint8))
    report = check_dataset(tmp_path)
    assert not report.ok and "looks like a 0/255 binary mask" in report.format()


def test_camvid_layout_missing_list_entry(tmp_path):
    for d in ("train", "trainannot"):
        (tmp_path / d).mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "train" / "x.png")
    Image.fromarray(np.full((4, 4), 3, np.uint8)).save(tmp_path / "trainannot" / "x.png")
    (tmp_path / "train.txt").write_text("train/x.png trainannot/x.png\ntrain/y.png trainannot/y.png\n")
    report = check_dataset(tmp_path)
    assert report.layout == "camvid" and report.num_classes == 11
    assert not report.ok and "train.txt" in report.format() and "line 2" in report.format()
    assert "Road" in report.format()


def test_empty_and_missing_paths(tmp_path):
    report = check_dataset(tmp_path)
    assert not report.ok and "No data set found" in report.format()
    with pytest.raises(SeglabError, match="does not exist"):
        check_dataset(tmp_path / "nope")
    _pair(tmp_path, "a", _good())
    assert "not found" in check_dataset(tmp_path, split="val").format()


def test_real_camvid_check_is_fast_and_clean(shared_data):
    start = time.perf_counter()
    report = check_dataset(shared_data / "camvid")
    elapsed = time.perf_counter() - start
    assert report.ok, report.format()
    assert {s.name: s.pairs for s in report.splits} == {"train": 367, "val": 101}
    assert sum(report.splits[0].histogram.values()) == 367 * 360 * 480
    assert max(report.splits[0].histogram) == 11 and "Bicyclist" in report.format()
    assert elapsed < 15  # a few seconds on one core


def _isbi_slice(root, stem, label):
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros(label.shape, np.uint8)).save(root / "images" / f"{stem}.png")
    Image.fromarray(label).save(root / "labels" / f"{stem}.png")


def test_isbi_layout_maps_0_255_to_membrane_and_cell(tmp_path):
    label = np.full((8, 8), 255, np.uint8)
    label[:, 3] = 0  # 8 membrane pixels, 56 cell pixels
    _isbi_slice(tmp_path / "isbi2012", "00", label)
    _isbi_slice(tmp_path / "isbi2012" / "test", "30", label)
    report = check_dataset(tmp_path)  # a parent folder holding isbi2012/ is found too
    assert report.ok, report.format()
    assert report.layout == "isbi2012" and report.num_classes == 2
    assert [s.name for s in report.splits] == ["labelled", "test"]
    assert dict(report.splits[0].histogram) == {0: 8, 1: 56}
    assert "membrane" in report.format() and "0/255" not in report.format()


def test_isbi_label_with_grey_values_is_an_error_naming_the_file(tmp_path):
    label = np.full((8, 8), 255, np.uint8)
    label[0, 0] = 128  # an anti-aliased export
    _isbi_slice(tmp_path, "07", label)
    report = check_dataset(tmp_path)
    assert not report.ok
    assert "07.png: 128" in report.format() and "threshold" in report.format()


def test_real_isbi_check_is_clean(shared_data):
    report = check_dataset(shared_data / "isbi2012")
    assert report.ok, report.format()
    assert report.splits[0].pairs == 24 and sum(report.splits[0].histogram.values()) == 24 * 512 * 512
