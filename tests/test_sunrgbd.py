"""SUN RGB-D (37 classes): the loader, the data check and the download layout, on a tiny fake of the real folders."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seglab.core.config import DataConfig
from seglab.core.errors import SeglabError
from seglab.data import build_dataset, check_dataset, dataset_info
from seglab.data import download as dl
from seglab.data.sunrgbd import SUNRGBD_CLASSES, SUNRGBD_PALETTE, SUNRGBD_TEST_COUNT

H, W = 6, 8


def _label(seed: int) -> np.ndarray:
    values = (np.arange(H * W).reshape(H, W) + seed) % 38  # 0 (unlabelled) .. 37
    return values.astype(np.uint8)


def _fake(root: Path, train: int = 2, test: int = 1) -> Path:
    """The real layout in miniature: image folders of img-NNNNNN.jpg and one label folder for both splits."""
    for split, count, offset in (("train", train, SUNRGBD_TEST_COUNT), ("test", test, 0)):
        folder = root / f"SUNRGBD-{split}_images"
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(1, count + 1):
            Image.fromarray(np.full((H, W, 3), 10 * n, np.uint8)).save(folder / f"img-{n:06d}.jpg")
            labels = root / "sunrgbd_train_test_labels"
            labels.mkdir(exist_ok=True)
            Image.fromarray(_label(n + offset)).save(labels / f"img-{n + offset:06d}.png")
    return root


def test_classes_and_palette():
    assert len(SUNRGBD_CLASSES) == 37 == len(SUNRGBD_PALETTE) == len(set(SUNRGBD_PALETTE))
    assert SUNRGBD_CLASSES[:3] == ["wall", "floor", "cabinet"] and SUNRGBD_CLASSES[-1] == "bag"
    info = dataset_info(DataConfig(dataset="sunrgbd", root="x"))
    assert info.num_classes == 37 and info.ignore_index == 255 and info.class_names == SUNRGBD_CLASSES


def test_loader_pairs_by_number_and_maps_labels(tmp_path):
    root = _fake(tmp_path / "sunrgbd")
    cfg = DataConfig(dataset="sunrgbd", root=str(root))
    train = build_dataset(cfg, "train")
    assert len(train) == 2
    assert [Path(m).name for _, m in train.samples] == ["img-005051.png", "img-005052.png"]
    image, mask = train[0]
    assert tuple(image.shape) == (3, H, W) and tuple(mask.shape) == (H, W)
    raw = _label(SUNRGBD_TEST_COUNT + 1).astype(np.int64)
    expected = np.where(raw == 0, 255, raw - 1)
    assert np.array_equal(mask.numpy(), expected)
    assert mask.max() <= 255 and set(np.unique(mask.numpy())) <= set(range(37)) | {255}
    test = build_dataset(cfg, "test")
    assert [Path(m).name for _, m in test.samples] == ["img-000001.png"]
    assert build_dataset(cfg, "val").samples == test.samples  # val is the test split
    # A parent folder holding sunrgbd/ works too.
    assert len(build_dataset(DataConfig(dataset="sunrgbd", root=str(tmp_path)), "train")) == 2


def test_loader_errors_name_the_fix(tmp_path):
    root = _fake(tmp_path / "s")
    (root / "sunrgbd_train_test_labels" / "img-005052.png").unlink()
    with pytest.raises(SeglabError, match=r"img-000002.jpg.*img-\(N\+5050\)"):
        build_dataset(DataConfig(dataset="sunrgbd", root=str(root)), "train")
    with pytest.raises(SeglabError, match="Did you mean 'train'"):
        build_dataset(DataConfig(dataset="sunrgbd", root=str(root)), "trian")
    with pytest.raises(SeglabError, match="sunrgbd_train_test_labels"):
        build_dataset(DataConfig(dataset="sunrgbd", root=str(tmp_path / "nothing")), "train")
    Image.fromarray(np.full((H, W), 40, np.uint8)).save(root / "sunrgbd_train_test_labels" / "img-000001.png")
    with pytest.raises(SeglabError, match="img-000001.png.*40"):
        build_dataset(DataConfig(dataset="sunrgbd", root=str(root)), "test")[0]


def test_data_check_recognises_the_layout(tmp_path):
    root = _fake(tmp_path / "sunrgbd")
    report = check_dataset(root)
    assert report.ok and report.layout == "sunrgbd", report.format()
    assert [s.name for s in report.splits] == ["train", "test"] and report.splits[0].pairs == 2
    assert report.num_classes == 37 and report.class_names == SUNRGBD_CLASSES
    hist = report.splits[0].histogram
    assert set(hist) <= set(range(37)) | {255} and hist[255] > 0  # file value 0 counted as ignore
    assert "wall" in report.format()
    Image.fromarray(np.full((H, W), 50, np.uint8)).save(root / "sunrgbd_train_test_labels" / "img-000001.png")
    (root / "sunrgbd_train_test_labels" / "img-005051.png").unlink()
    text = check_dataset(root).format()
    assert "outside 0..37" in text and "img-000001.png" in text and "without a label: img-000001.jpg" in text


def _tgz(path: Path, files: dict[str, Path]) -> dl.Archive:
    with tarfile.open(path, "w:gz") as tf:
        for name, src in files.items():
            tf.add(src, arcname=name)
    return dl.Archive(path.as_uri(), path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())


def test_download_lays_out_the_real_archives(tmp_path, monkeypatch):
    """Archives shaped like the real three (images in a folder each, labels flat) give the loader's layout."""
    src = _fake(tmp_path / "src", train=2, test=2)
    archives = []
    for split in ("train", "test"):
        folder = f"SUNRGBD-{split}_images"
        files = {f"{folder}/{p.name}": p for p in sorted((src / folder).iterdir())}
        archives.append(_tgz(tmp_path / f"{folder}.tgz", files))
    labels = {p.name: p for p in sorted((src / "sunrgbd_train_test_labels").iterdir())}
    lab = _tgz(tmp_path / "sunrgbd_train_test_labels.tar.gz", labels)
    real = dl.CATALOGUE["sunrgbd"]
    archives.append(dl.Archive(lab.url, lab.size, lab.sha256, members=real.archives[2].members))
    entry = dl.DatasetEntry("sunrgbd", real.title, tuple(archives), real.licence, real.holds, real.loader)
    monkeypatch.setitem(dl.CATALOGUE, "sunrgbd", entry)
    report = dl.download_dataset("sunrgbd", tmp_path / "data" / "sunrgbd")
    assert report.ok and report.layout == "sunrgbd", report.format()
    cfg = DataConfig(dataset="sunrgbd", root=str(tmp_path / "data" / "sunrgbd"))
    assert len(build_dataset(cfg, "train")) == 2 and len(build_dataset(cfg, "test")) == 2
