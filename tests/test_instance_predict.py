"""Instance checkpoints through ``Segmenter.from_checkpoint`` and ``seglab predict``: instances out,
an overlay, a 16-bit id PNG and a COCO results JSON whose RLE masks decode to the predictions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from seglab.apps.cli import main
from seglab.apps.instance_visualize import mask_contour
from seglab.core.errors import SeglabError
from seglab.inference.instance_predictor import Instances, InstanceSegmenter
from seglab.inference.predictor import Segmenter
from seglab.models.registry import create_model
from seglab.tasks.checkpoint import Checkpoint, CheckpointMeta, save_checkpoint
from seglab.tasks.instance import InstanceTask

# A tiny Mask R-CNN that keeps every detection (box_score_thresh 0), so a random model finds some.
KWARGS = {"min_size": 64, "max_size": 80, "fpn_channels": 16, "representation_size": 32, "mask_channels": 8,
          "box_score_thresh": 0.0, "box_detections_per_img": 5}


def _save(path: Path, model: torch.nn.Module, task: InstanceTask | None, name: str, kwargs: dict) -> Path:
    if task is None:  # semantic
        meta = CheckpointMeta(name, 3, ["a", "b", "c"], [[0, 0, 0], [255, 0, 0], [0, 255, 0]], [0.5] * 3, [0.25] * 3,
                              model_kwargs=kwargs)
    else:
        meta = CheckpointMeta(**task.checkpoint_metadata(), model_name=name, model_kwargs=kwargs, mean=[0.0] * 3,
                              std=[1.0] * 3)
    save_checkpoint(path, Checkpoint(meta, {k: v.detach().cpu() for k, v in model.state_dict().items()}))
    return path


@pytest.fixture(scope="module")
def instance_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = create_model("mask_rcnn_resnet18_fpn", 3, **KWARGS)
    task = InstanceTask(3, ["background", "Pole", "Car"], [[0, 0, 0], [200, 200, 0], [0, 0, 200]])
    return _save(tmp_path_factory.mktemp("inst") / "inst.pt", model, task, "mask_rcnn_resnet18_fpn", KWARGS)


@pytest.fixture(scope="module")
def semantic_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("segnet_basic", 3)
    return _save(tmp_path_factory.mktemp("sem") / "sem.pt", model, None, "segnet_basic", {})


def _image(h: int = 48, w: int = 60, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_segmenter_returns_instances_with_consistent_shapes(instance_checkpoint: Path) -> None:
    seg = Segmenter.from_checkpoint(instance_checkpoint, device="cpu", score_threshold=0.0)
    assert isinstance(seg, InstanceSegmenter) and seg.task == "instance"
    found = seg.predict(_image())
    assert isinstance(found, Instances) and len(found) > 0
    n = len(found)
    assert found.boxes.shape == (n, 4) and found.boxes.dtype == np.float32
    assert found.labels.shape == (n,) and found.labels.dtype == np.int64 and set(found.labels) <= {1, 2}
    assert found.scores.shape == (n,) and np.all(np.diff(found.scores) <= 0)  # score order
    assert found.masks.shape == (n, 48, 60) and found.masks.dtype == np.bool_
    assert np.all(found.boxes[:, 2] <= 60) and np.all(found.boxes[:, 3] <= 48)
    # The threshold is settable and filters: only scores at or above it stay.
    seg.score_threshold = float(found.scores[n // 2])
    kept = seg.predict(_image())
    assert 0 < len(kept) <= n and np.all(kept.scores >= seg.score_threshold)
    assert InstanceSegmenter.from_checkpoint(instance_checkpoint, device="cpu").score_threshold == 0.5
    with pytest.raises(SeglabError, match="per-pixel logits"):
        seg.predict_logits(_image())
    with pytest.raises(SeglabError, match="score_threshold must be >= 0"):
        seg.score_threshold = -1


def test_no_detection_gives_empty_arrays_of_the_right_shapes(instance_checkpoint: Path) -> None:
    found = Segmenter.from_checkpoint(instance_checkpoint, device="cpu", score_threshold=1.01).predict(_image(40, 52))
    assert len(found) == 0
    assert found.boxes.shape == (0, 4) and found.labels.shape == (0,) and found.scores.shape == (0,)
    assert found.masks.shape == (0, 40, 52) and found.masks.dtype == np.bool_
    assert found.id_map().shape == (40, 52) and not found.id_map().any() and not found.label_map().any()


def test_cli_writes_overlay_ids_and_coco_json_that_decodes_to_the_masks(instance_checkpoint: Path,
                                                                        tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i, (h, w) in enumerate([(48, 60), (40, 52)]):
        Image.fromarray(_image(h, w, seed=i)).save(images / f"im{i}.png")
    out = tmp_path / "pred"
    assert main(["predict", str(instance_checkpoint), str(images), "--out", str(out), "--score-threshold", "0",
                 "--device", "cpu", "--task", "instance"]) == 0
    results = json.loads((out / "instances.json").read_text())
    seg = InstanceSegmenter.from_checkpoint(instance_checkpoint, device="cpu", score_threshold=0.0)
    for i, (h, w) in enumerate([(48, 60), (40, 52)]):
        found = seg.predict(images / f"im{i}.png")
        overlay = np.asarray(Image.open(out / f"im{i}_instances.png"))
        assert overlay.shape == (h, w, 3) and not np.array_equal(overlay, _image(h, w, seed=i))
        ids = np.asarray(Image.open(out / f"im{i}_ids.png"))
        assert ids.dtype == np.uint16 and ids.shape == (h, w)
        assert set(np.unique(ids)) - {0} <= set(range(1, len(found) + 1)) and ids.max() >= 1
        np.testing.assert_array_equal(ids, found.id_map())
        mine = [r for r in results if r["file_name"] == f"im{i}.png"]
        assert len(mine) == len(found) and {r["image_id"] for r in mine} == {i + 1}
        for record, mask, box, label, score in zip(mine, found.masks, found.boxes, found.labels, found.scores):
            assert isinstance(record["segmentation"]["counts"], str)
            rle = {"size": record["segmentation"]["size"], "counts": record["segmentation"]["counts"].encode()}
            np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), mask)
            x, y, bw, bh = record["bbox"]
            np.testing.assert_allclose([x, y, x + bw, y + bh], box, atol=0.02)
            assert record["category_id"] == label and record["score"] == pytest.approx(score, abs=1e-5)


def test_cli_without_detections_still_writes_every_file(instance_checkpoint: Path, tmp_path: Path) -> None:
    Image.fromarray(_image()).save(tmp_path / "a.png")
    out = tmp_path / "pred"
    assert main(["predict", str(instance_checkpoint), str(tmp_path / "a.png"), "--out", str(out),
                 "--score-threshold", "1.01", "--device", "cpu"]) == 0
    assert json.loads((out / "instances.json").read_text()) == []
    ids = np.asarray(Image.open(out / "a_ids.png"))
    assert ids.dtype == np.uint16 and ids.shape == (48, 60) and not ids.any()
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a_instances.png")), _image())


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The user-facing error of a CLI call that must fail (exit status 2), on one line."""
    assert main(argv) == 2
    return " ".join(capsys.readouterr().err.split())


def test_semantic_only_options_and_task_mismatch_are_clear_errors(instance_checkpoint: Path, semantic_checkpoint: Path,
                                                                  tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Image.fromarray(_image()).save(tmp_path / "a.png")
    base = ["predict", str(instance_checkpoint), str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--device", "cpu"]
    for extra, match in ((["--tta"], "tta .*applies to semantic checkpoints"),
                         (["--tile", "32", "32"], "tile .*applies to semantic checkpoints"),
                         (["--mc-samples", "2"], "--mc-samples applies to semantic checkpoints"),
                         (["--video"], "Video prediction applies to semantic checkpoints"),
                         (["--task", "semantic"], "trained for task: instance .*but task: semantic")):
        assert re.search(match, _fails(base + extra, capsys)), extra
    assert not (tmp_path / "o").exists()
    sem = ["predict", str(semantic_checkpoint), str(tmp_path / "a.png"), "--out", str(tmp_path / "s"), "--device", "cpu"]
    assert re.search("trained for task: semantic .*but task: instance", _fails(sem + ["--task", "instance"], capsys))
    assert re.search("score_threshold .*applies to instance checkpoints", _fails(sem + ["--score-threshold", "0.3"], capsys))
    with pytest.raises(SeglabError, match="tile .* and tta .* apply to semantic checkpoints"):
        Segmenter.from_checkpoint(instance_checkpoint, device="cpu", tile=(32, 32), tta=True)
    with pytest.raises(SeglabError, match="not instance"):
        InstanceSegmenter.from_checkpoint(semantic_checkpoint, device="cpu")


def test_semantic_checkpoint_still_predicts_label_maps(semantic_checkpoint: Path, tmp_path: Path) -> None:
    seg = Segmenter.from_checkpoint(semantic_checkpoint, device="cpu", task="semantic")
    assert type(seg) is Segmenter and seg.task == "semantic"
    labels = seg.predict(_image())
    assert labels.shape == (48, 60) and labels.dtype == np.int64
    Image.fromarray(_image()).save(tmp_path / "a.png")
    assert main(["predict", str(semantic_checkpoint), str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                 "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a_color.png", "a_labels.png", "a_overlay.png"]


def test_mask_contour_is_the_inner_boundary() -> None:
    mask = np.zeros((6, 6), bool)
    mask[1:5, 1:5] = True
    ring = mask.copy()
    ring[2:4, 2:4] = False
    np.testing.assert_array_equal(mask_contour(mask), ring)
    full = np.ones((3, 3), bool)  # the image border counts as outside
    assert mask_contour(full).sum() == 8


def test_checkpoint_written_by_training_predicts_and_its_json_loads_into_cocoeval(tmp_path: Path) -> None:
    """End to end: the engine's best.pt through `seglab predict`, and COCO.loadRes reads instances.json."""
    from pycocotools.coco import COCO

    from seglab.core.config import Config, DataConfig, ModelConfig, TrainConfig
    from seglab.engine.trainer import train

    torch.manual_seed(0)
    cfg = Config(task="instance", model=ModelConfig("mask_rcnn_resnet18_fpn", kwargs=dict(KWARGS)),
                 data=DataConfig(dataset="synthetic_instances", synthetic_train=2, synthetic_val=1,
                                 synthetic_size=[48, 64], num_workers=0),
                 train=TrainConfig(epochs=1, batch_size=2, optimizer="adamw", lr=1e-3, out_dir=str(tmp_path),
                                   run_name="inst", select_metric="mask_ap", val_bf=False, progress=False, amp="none",
                                   threads=1))
    best = train(cfg).best_checkpoint
    Image.fromarray(_image(48, 64)).save(tmp_path / "a.png")
    out = tmp_path / "pred"
    assert main(["predict", str(best), str(tmp_path / "a.png"), "--out", str(out), "--score-threshold", "0",
                 "--device", "cpu"]) == 0
    assert {"a_instances.png", "a_ids.png", "instances.json"} <= {p.name for p in out.iterdir()}
    results = json.loads((out / "instances.json").read_text())
    assert results, "box_score_thresh 0 and --score-threshold 0 keep the model's detections"
    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "file_name": "a.png", "height": 48, "width": 64}], "annotations": [],
                  "categories": [{"id": 1, "name": "Pole"}, {"id": 2, "name": "Car"}]}
    gt.createIndex()
    loaded = gt.loadRes(str(out / "instances.json"))
    assert len(loaded.getAnnIds()) == len(results)

