"""The trained weights that ship in the package: complete metadata, checksums, size, and val figures that reproduce."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from seglab.apps.evaluate import evaluate_checkpoint
from seglab.models import zoo
from seglab.models.registry import create_model

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = zoo.list_pretrained()
#: The shared data folder of each shipped entry's data set (tests reproducing figures skip without it).
DATA = {"camvid": ROOT.parent / "shared" / "data" / "camvid", "isbi2012": ROOT.parent / "shared" / "data" / "isbi2012"}


def test_the_package_ships_the_camvid_and_isbi_models():
    assert {"segnet_basic.camvid", "unet.isbi2012"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_file_is_small_fp16_checksummed_and_described(name):
    entry = zoo.pretrained_entries()[name]
    path = zoo.WEIGHTS_DIR / entry.file
    assert path.stat().st_size == entry.size <= 4 * 1024 * 1024
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
    meta = zoo.pretrained_metadata(name)
    ckpt, trained = meta["checkpoint"], meta["trained"]
    assert len(ckpt["class_names"]) == len(ckpt["palette"]) == ckpt["num_classes"]
    assert len(ckpt["mean"]) == len(ckpt["std"]) == 3
    assert (ROOT / trained["recipe"].split()[0]).is_file()  # the recipe file, then any overrides
    assert trained["input_size"] and trained["commit"]
    assert trained["train_seconds"] > 0 and trained["hardware"] and trained["train_split"]
    for figures in (meta["val_metrics"], meta["val_metrics_fp32"]):
        assert {"global_acc", "class_acc", "miou", "fwiou", "bf"} <= set(figures)
        assert len(figures["iou"]) == ckpt["num_classes"]
    assert abs(meta["val_metrics"]["miou"] - meta["val_metrics_fp32"]["miou"]) <= 0.002  # fp16 within 0.2 mIoU
    state, _ = zoo.read_pretrained(name)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    model_name, _, tag = name.rpartition(".")
    model = create_model(model_name, num_classes=ckpt["num_classes"], weights=tag)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_val_figures_reproduce(name):
    meta = zoo.pretrained_metadata(name)
    root = DATA.get(meta["trained"]["dataset"])
    if root is None or not root.is_dir():
        pytest.skip(f"needs the {meta['trained']['dataset']} data under ../shared/data (absent here)")
    results = evaluate_checkpoint(name, ["--data.root", str(root), "--train.amp", "none"], meta["trained"]["val_split"])
    recorded = meta["val_metrics"]
    for key in ("global_acc", "class_acc", "miou", "bf"):
        assert results[key] == pytest.approx(recorded[key], abs=2e-4), key
    json.dumps(results, default=str)  # the figures serialise as the JSON report does


def test_the_camvid_model_runs_bf16_by_default_on_the_evidence_it_records():
    """segnet_basic.camvid passed the bf16 check at packing (every val frame), so where the CPU has native
    bf16 it predicts in bf16 by default; the check reproduces on a few val frames."""
    from seglab.apps.weights import check_bf16

    meta = zoo.pretrained_metadata("segnet_basic.camvid")
    check = meta["precision_checks"]["bf16"]
    assert check["passes_default_rule"] and check["images"] == 101 and check["agreement_pct"] >= 99
    assert check["miou_change"] >= -0.5 and meta["checkpoint"]["verified_precisions"] == ["bf16", "int8_openvino"]
    root = DATA["camvid"]
    if not root.is_dir():
        pytest.skip("needs the camvid data under ../shared/data (absent here)")
    again = check_bf16("segnet_basic.camvid", ["--data.root", str(root), "--data.limit", "4"], "val")
    assert again["images"] == 4 and again["agreement_pct"] >= 98.5, again
