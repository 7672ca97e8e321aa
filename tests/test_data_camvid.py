"""CamVid: the real SegNet-layout files (when present), the held-out test split's layout, and list-file errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from seglab.core.config import DataConfig
from seglab.data import CAMVID_CLASSES, CAMVID_PALETTE, build_dataset, dataset_info
from seglab.core.errors import SeglabError


def _camvid(root, **kw) -> DataConfig:
    return DataConfig(dataset="camvid", root=str(root), num_workers=0, **kw)


def _tiny_camvid(root, split="train", n=2, with_list=True):
    """A CamVid-layout folder of ``n`` 6x8 samples (labels 0..11) under ``root``."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / f"{split}annot").mkdir(exist_ok=True)
    lines = []
    for i in range(n):
        name = f"0001TP_{i:06d}.png"
        Image.fromarray(np.full((6, 8, 3), 40 * i, np.uint8)).save(root / split / name)
        Image.fromarray((np.arange(48).reshape(6, 8) % 12).astype(np.uint8)).save(root / f"{split}annot" / name)
        lines.append(f"{split}/{name} {split}annot/{name}")
    if with_list:
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return lines


def test_camvid_info():
    info = dataset_info(DataConfig(dataset="camvid"))
    assert info.num_classes == 11 and info.ignore_index == 11
    assert info.class_names == CAMVID_CLASSES and info.palette == CAMVID_PALETTE
    assert CAMVID_PALETTE[CAMVID_CLASSES.index("Road")] == (128, 64, 128)
    with pytest.raises(SeglabError, match="num_classes"):
        dataset_info(DataConfig(dataset="camvid", num_classes=12))


def test_real_camvid_splits(shared_data):
    cfg = _camvid(shared_data / "camvid")
    train, val = build_dataset(cfg, "train", train=True), build_dataset(cfg, "val")
    assert len(train) == 367 and len(val) == 101
    assert train.samples[0][0].name == "0001TP_006690.png" and train.samples[0][1].parent.name == "trainannot"
    assert train.info.class_names[3] == "Road"
    image, mask = val.load_image(0), val.load_mask(0)
    assert image.shape == (360, 480, 3) and image.dtype == np.uint8
    assert mask.shape == (360, 480) and mask.dtype == np.int64
    assert 0 <= mask.min() and mask.max() <= 11
    img, target = val[5]
    assert tuple(img.shape) == (3, 360, 480) and tuple(target.shape) == (360, 480)


def test_real_camvid_half_resolution_and_parent_root(shared_data):
    ds = build_dataset(_camvid(shared_data, image_size=[180, 240], limit=3), "train", train=False)
    assert len(ds) == 3 and ds.load_image(2).shape == (180, 240, 3)
    assert set(np.unique(ds.load_mask(2))) <= set(range(12))


def test_real_camvid_test_split_layout(shared_data, tmp_path):
    """The held-out test split (test/, testannot/, test.txt) loads exactly like train and val."""
    src = shared_data / "camvid"
    (tmp_path / "test").mkdir()
    (tmp_path / "testannot").mkdir()
    lines = (src / "train.txt").read_text().splitlines()[:2]
    out = []
    for line in lines:
        img, ann = line.split()
        name = img.split("/")[-1]
        (tmp_path / "test" / name).symlink_to(src / img)
        (tmp_path / "testannot" / name).symlink_to(src / ann)
        out.append(f"test/{name} testannot/{name}")
    (tmp_path / "test.txt").write_text("\n".join(out) + "\n")
    ds = build_dataset(_camvid(tmp_path), "test")
    assert len(ds) == 2 and ds.load_image(1).shape == (360, 480, 3) and ds.load_mask(1).max() <= 11


def test_camvid_list_file_with_tutorial_absolute_paths(tmp_path):
    _tiny_camvid(tmp_path, "test", with_list=False)
    names = sorted(p.name for p in (tmp_path / "test").iterdir())
    (tmp_path / "test.txt").write_text(
        "".join(f"/SegNet/CamVid/test/{n} /SegNet/CamVid/testannot/{n}\n" for n in names)
    )
    ds = build_dataset(_camvid(tmp_path), "test")
    assert [p.name for p, _ in ds.samples] == names
    assert ds.samples[0][1] == tmp_path / "testannot" / names[0]


def test_camvid_without_list_file_pairs_folders(tmp_path):
    _tiny_camvid(tmp_path, "val", n=3, with_list=False)
    ds = build_dataset(_camvid(tmp_path), "val")
    assert len(ds) == 3 and ds.load_mask(0).max() == 11


def test_camvid_void_remapped_to_configured_ignore_index(tmp_path):
    _tiny_camvid(tmp_path)
    mask = build_dataset(_camvid(tmp_path, ignore_index=255), "train").load_mask(0)
    assert 11 not in mask and (mask == 255).sum() == 4 and mask[mask != 255].max() == 10


def test_camvid_list_entry_missing_names_list_and_line(tmp_path):
    lines = _tiny_camvid(tmp_path, n=3)
    (tmp_path / "trainannot" / lines[1].split()[1].split("/")[1]).unlink()
    with pytest.raises(SeglabError, match=r"train\.txt.*line 2"):
        build_dataset(_camvid(tmp_path), "train")


def test_camvid_malformed_list_line(tmp_path):
    _tiny_camvid(tmp_path)
    (tmp_path / "train.txt").write_text("train/a.png\n")
    with pytest.raises(SeglabError, match=r"train\.txt.*line 1"):
        build_dataset(_camvid(tmp_path), "train")


def test_camvid_missing_root_or_split(tmp_path):
    with pytest.raises(SeglabError, match=r"set --data\.root"):
        build_dataset(DataConfig(dataset="camvid"), "train")
    with pytest.raises(SeglabError, match=r"does not exist.*--data\.root"):
        build_dataset(_camvid(tmp_path / "nope"), "train")
    _tiny_camvid(tmp_path)
    with pytest.raises(SeglabError, match=r"split 'trian' not found.*Did you mean 'train'"):
        build_dataset(_camvid(tmp_path), "trian")


def test_camvid_empty_directory(tmp_path):
    with pytest.raises(SeglabError, match="not found"):
        build_dataset(_camvid(tmp_path), "train")
    (tmp_path / "train.txt").write_text("\n")
    with pytest.raises(SeglabError, match="empty"):
        build_dataset(_camvid(tmp_path), "train")


def test_split_with_sequence_prefixes_selects_frames(tmp_path):
    """``train:0016E5,0006R0`` keeps the frames of those sequences; an unmatched prefix names those found."""
    from seglab.data.build import parse_split

    (tmp_path / "train").mkdir()
    (tmp_path / "trainannot").mkdir()
    lines = []
    for seq, n in (("0001TP", 2), ("0006R0", 3), ("0016E5", 1)):
        for i in range(n):
            name = f"{seq}_{i:06d}.png"
            Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "train" / name)
            Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "trainannot" / name)
            lines.append(f"train/{name} trainannot/{name}")
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    assert parse_split("train:0016E5, 0006R0") == ("train", ["0016E5", "0006R0"])
    assert parse_split("val") == ("val", [])
    cfg = _camvid(tmp_path, train_split="train:0016E5,0006R0", val_split="train:0001TP")
    train, val = build_dataset(cfg, train=True), build_dataset(cfg, train=False)
    assert len(train) == 4 and len(val) == 2
    assert {p.name[:6] for p, _ in val.samples} == {"0001TP"}
    with pytest.raises(SeglabError, match=r"no file name starts with Seq05VD.*0001TP, 0006R0, 0016E5"):
        build_dataset(cfg, "train:Seq05VD")
    with pytest.raises(SeglabError, match="names no file-name prefixes"):
        build_dataset(cfg, "train:")
