"""Tests for the ISBI 2012 data set: splits, explicit 0/255 label mapping, weight maps, the U-Net recipe."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from seglab.core.config import DataConfig, LossConfig, load_config
from seglab.data import ISBI2012Dataset, build_dataset, dataset_info
from seglab.core.errors import SeglabError
from seglab.losses import build_loss

REPO = Path(__file__).resolve().parents[1]


def write_slice(folder: Path, name: str, rng: np.random.Generator, size: int = 24, label_values=(0, 255)) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    image = rng.integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(image, mode="L").save(folder / "images" / f"{name}.png")
    label = np.full((size, size), label_values[1], np.uint8)
    label[:, size // 2] = label_values[0]  # one vertical membrane between two cells
    label[size // 3, :] = label_values[0]
    Image.fromarray(label, mode="L").save(folder / "labels" / f"{name}.png")


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """24 small labelled slices 00..23, like the real layout."""
    rng = np.random.default_rng(0)
    for k in range(24):
        write_slice(tmp_path, f"{k:02d}", rng)
    return tmp_path


def cfg_for(root: Path, **kw) -> DataConfig:
    return DataConfig(dataset="isbi2012", root=str(root), **kw)


def stems(ds) -> list[str]:
    return [ds.name_of(i) for i in range(len(ds))]


def test_info_has_two_explicit_classes():
    info = dataset_info(DataConfig(dataset="isbi2012"))
    assert info.num_classes == 2 and info.class_names == ["membrane", "cell"] and info.ignore_index == 255
    with pytest.raises(SeglabError, match="2 classes"):
        dataset_info(DataConfig(dataset="isbi2012", num_classes=3))


def test_default_split_is_20_train_4_val(fake_root):
    train = build_dataset(cfg_for(fake_root), "train", train=True)
    val = build_dataset(cfg_for(fake_root), "val")
    assert isinstance(train, ISBI2012Dataset)
    assert stems(train) == [f"{k:02d}" for k in range(20)] and stems(val) == ["20", "21", "22", "23"]
    custom = cfg_for(fake_root, val_indices=[0, 5])
    assert stems(build_dataset(custom, "val")) == ["00", "05"] and len(build_dataset(custom, "train")) == 22


@pytest.mark.parametrize(("indices", "match"), [([24], r"\[0, 23\]"), ([1, 1], "distinct"),
                                                 (list(range(24)), "empty")])
def test_bad_val_indices(fake_root, indices, match):
    with pytest.raises(SeglabError, match=match):
        build_dataset(cfg_for(fake_root, val_indices=indices), "train")


def test_labels_are_mapped_explicitly_and_images_are_three_equal_channels(fake_root):
    ds = build_dataset(cfg_for(fake_root), "train")
    raw = np.asarray(Image.open(fake_root / "labels" / "00.png"))
    mask = ds.load_mask(0)
    assert set(np.unique(mask).tolist()) == {0, 1}
    assert np.array_equal(mask, (raw == 255).astype(np.int64))
    ds.transform = None
    image, target = ds[0]
    assert image.shape == (3, 24, 24) and torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    assert torch.equal(target, torch.from_numpy(mask))


def test_any_other_label_value_is_an_error_naming_the_file(tmp_path):
    rng = np.random.default_rng(1)
    for k in range(6):
        write_slice(tmp_path, f"{k:02d}", rng, label_values=(0, 1) if k == 2 else (0, 255))
    ds = build_dataset(cfg_for(tmp_path), "val")  # the last 4: slices 02..05
    assert ds.load_mask(1).max() == 1
    with pytest.raises(SeglabError, match=r"02\.png.*value\(s\) 1, .*0 \(membrane\) or 255"):
        ds.load_mask(0)


def test_held_out_test_split_from_a_folder_or_a_list(fake_root):
    with pytest.raises(SeglabError, match="no split 'test'.*test/images"):
        build_dataset(cfg_for(fake_root), "test")
    rng = np.random.default_rng(2)
    for k in range(24, 30):
        write_slice(fake_root / "test", f"{k:02d}", rng)
    assert stems(build_dataset(cfg_for(fake_root), "test")) == [f"{k:02d}" for k in range(24, 30)]
    (fake_root / "extra.txt").write_text("test/images/24.png test/labels/24.png\nimages/03.png labels/03.png\n")
    assert stems(build_dataset(cfg_for(fake_root), "extra")) == ["24", "03"]


def test_a_parent_root_and_a_missing_root(fake_root, tmp_path_factory):
    parent = tmp_path_factory.mktemp("parent")
    (parent / "isbi2012").symlink_to(fake_root, target_is_directory=True)
    assert len(build_dataset(cfg_for(parent), "val")) == 4
    with pytest.raises(SeglabError, match="no images/ folder"):
        build_dataset(cfg_for(parent / "nowhere"), "train")


def test_weight_maps_only_for_isbi():
    with pytest.raises(SeglabError, match="weight_maps.*isbi2012 data set only"):
        build_dataset(DataConfig(dataset="synthetic", weight_maps=True, synthetic_train=2), "train")


def test_weight_maps_are_returned_and_stay_aligned_under_flips(fake_root):
    cfg = cfg_for(fake_root, weight_maps=True, hflip=True, weight_map_sigma=2.0)
    ds = build_dataset(cfg, "train", train=True)
    image0, mask0, weights0 = build_dataset(cfg, "train", train=False)[0]
    reference = ds.load_weight_map(0)
    assert torch.allclose(weights0, torch.from_numpy(reference)) and weights0.dtype == torch.float32
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        image, mask, weights = ds[0]
        flipped = bool(torch.equal(mask, mask0.flip(-1))) and not torch.equal(mask, mask0)
        seen.add(flipped)
        expect = (image0, mask0, weights0) if not flipped else (image0.flip(-1), mask0.flip(-1), weights0.flip(-1))
        assert torch.equal(mask, expect[1]) and torch.equal(weights, expect[2]) and torch.allclose(image, expect[0])
    assert seen == {True, False}  # both branches were exercised


def test_batches_of_weight_maps_reach_the_loss(fake_root):
    cfg = cfg_for(fake_root, weight_maps=True, crop_size=[16, 16], scale_range=[0.8, 1.2])
    batch = next(iter(DataLoader(build_dataset(cfg, "train", train=True), batch_size=3)))
    images, masks, weight_maps = batch
    assert images.shape == (3, 3, 16, 16) and masks.shape == weight_maps.shape == (3, 16, 16)
    criterion = build_loss(LossConfig(name="weighted_map_ce", class_weights="none"), 2, 255)
    logits = torch.zeros(3, 2, 16, 16, requires_grad=True)
    loss = criterion(logits, masks, weight_maps)  # as the trainer calls it: images, masks, *extra
    # With uniform logits every pixel's CE is log 2, so the loss is log 2 * mean weight.
    valid = masks != 255
    assert loss.item() == pytest.approx(np.log(2) * weight_maps[valid].mean().item(), rel=1e-5)


def test_unet_recipe_loads_and_builds_its_data(shared_data):
    cfg = load_config(REPO / "configs" / "unet_isbi.yaml",
                      ["--data.root", str(shared_data / "isbi2012")])
    assert (cfg.model.name, cfg.data.dataset, cfg.loss.name) == ("unet", "isbi2012", "weighted_map_ce")
    assert cfg.data.weight_maps and cfg.loss.class_weights == "none"
    build_loss(cfg.loss, 2, 255)  # the recipe's loss settings are consistent
    train = build_dataset(dataclasses.replace(cfg.data, limit=1), "train", train=True)
    torch.manual_seed(0)
    image, mask, weights = train[0]
    assert image.shape == (3, 256, 256) and mask.shape == weights.shape == (256, 256)
    assert set(torch.unique(mask).tolist()) <= {0, 1, 255} and weights.min() >= 0


def test_real_isbi_split_and_values(shared_data):
    cfg = cfg_for(shared_data / "isbi2012")
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert stems(train) == [f"{k:02d}" for k in range(20)] and stems(val) == ["20", "21", "22", "23"]
    mask = val.load_mask(0)
    raw = np.asarray(Image.open(shared_data / "isbi2012" / "labels" / "20.png"))
    assert np.array_equal(mask, (raw == 255).astype(np.int64)) and 0.6 < mask.mean() < 0.9  # mostly cell interior


def test_training_and_evaluate_report_the_em_metrics(fake_root, tmp_path_factory):
    from seglab.core.config import Config, ModelConfig, TrainConfig
    from seglab.engine import train
    from seglab.tasks.semantic import EM_KEYS
    from seglab.apps.evaluate import evaluate_checkpoint

    out = tmp_path_factory.mktemp("runs")
    cfg = Config(
        model=ModelConfig(name="unet", kwargs={"depth": 2, "base_channels": 4}),
        data=cfg_for(fake_root, crop_size=[16, 16], weight_maps=True, num_workers=0),
        loss=LossConfig(name="weighted_map_ce", class_weights="none"),
        train=TrainConfig(epochs=1, batch_size=4, optimizer="adamw", lr=0.01, out_dir=str(out), run_name="em",
                          progress=False, val_bf=False, seed=0, threads=1),
    )
    result = train(cfg)
    assert all(f"val_{k}" in result.history[-1] for k in EM_KEYS)
    results = evaluate_checkpoint(str(result.best_checkpoint), split="val", compute_bf=False)
    for key in EM_KEYS:
        assert key in results
    # Pixel error is the complement of global accuracy over the same labelled pixels.
    assert results["pixel_error"] == pytest.approx(1.0 - results["global_acc"], abs=1e-6)
    assert 0.0 <= results["foreground_iou"] <= 1.0 and 0.0 <= results["rand_error"] <= 1.0
