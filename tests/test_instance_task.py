"""task: instance through the same engine: train, per-term loss log, best by mask AP, resume,
evaluate, and clear errors when task and model or checkpoint disagree."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from seglab.apps.evaluate import evaluate_checkpoint
from seglab.core.config import Config, DataConfig, ModelConfig, TrainConfig
from seglab.core.errors import SeglabError
from seglab.engine import TrainingDiverged
from seglab.engine.trainer import train
from seglab.tasks import InstanceTask, build_task
from seglab.tasks.checkpoint import check_compatible, load_checkpoint, read_checkpoint
from seglab.tasks.instance import render_label_map


def _config(tmp_path: Path, **train) -> Config:
    return Config(
        task="instance",
        model=ModelConfig("mask_rcnn_resnet18_fpn", kwargs={"min_size": 64, "max_size": 80, "fpn_channels": 32,
                                                             "representation_size": 64, "mask_channels": 16}),
        data=DataConfig(dataset="synthetic_instances", synthetic_train=4, synthetic_val=2, synthetic_size=[64, 80],
                        num_workers=0),
        train=TrainConfig(**{"epochs": 1, "batch_size": 2, "optimizer": "adamw", "lr": 1e-3, "out_dir": str(tmp_path),
                             "run_name": "inst", "select_metric": "mask_ap", "val_bf": False, "progress": False,
                             "amp": "none", "threads": 1, **train}),
    )


def test_instance_training_resumes_logs_each_loss_term_and_evaluates(tmp_path: Path) -> None:
    torch.manual_seed(0)
    result = train(_config(tmp_path))
    record = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    for term in ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"):
        assert f"train_{term}" in record
    parts = sum(record[f"train_{t}"] for t in ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                                                 "loss_rpn_box_reg"))
    assert parts == pytest.approx(record["train_loss"], rel=1e-5)
    assert 0.0 <= record["val_mask_ap"] <= 1.0 and "val_miou" in record
    best = read_checkpoint(result.best_checkpoint)
    assert best.meta.task == "instance" and best.meta.num_classes == 3
    resumed = train(_config(tmp_path, epochs=2, resume=str(result.last_checkpoint)))
    assert resumed.run_dir == result.run_dir and read_checkpoint(resumed.last_checkpoint).training.epoch == 2
    scores = evaluate_checkpoint(str(result.best_checkpoint), ["--data.num_workers", "0"], split="val")
    assert {"mask_ap", "mask_ap50", "mask_ap75", "box_ap", "mask_iou", "miou"} <= set(scores)
    with pytest.raises(SeglabError, match="trained for task: instance .*but task: semantic"):
        evaluate_checkpoint(str(result.best_checkpoint), ["--task", "semantic"], split="val")
    with pytest.raises(SeglabError, match="trained for task: instance"):
        check_compatible(read_checkpoint(result.best_checkpoint), "mask_rcnn_resnet18_fpn", 3, "x.pt", task="semantic")


def test_task_and_model_must_agree(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    task = build_task(cfg, type("Info", (), {"num_classes": 3, "class_names": ["b", "p", "c"], "palette": [[0] * 3] * 3})())
    assert isinstance(task, InstanceTask)
    cfg.model.name = "segnet_basic"
    with pytest.raises(SeglabError, match="semantic-segmentation model, but the recipe says task: instance"):
        task.build_model(cfg)
    semantic = Config(model=ModelConfig("mask_rcnn_resnet18_fpn"))
    with pytest.raises(SeglabError, match="instance-segmentation model, but the recipe says task: semantic"):
        build_task(semantic, type("Info", (), {"num_classes": 3, "ignore_index": 255, "class_names": ["a"] * 3,
                                                "palette": [[0] * 3] * 3})()).build_model(semantic)
    with pytest.raises(SeglabError, match="needs an instance data set"):
        task.prepare_batch((torch.zeros(1, 3, 8, 8), torch.zeros(1, 8, 8)), torch.device("cpu"))


def test_render_label_map_puts_the_highest_score_on_top() -> None:
    masks = torch.zeros(2, 1, 4, 4)
    masks[0, 0, :, :2] = 1
    masks[1, 0, :, 1:3] = 1
    pred = {"scores": torch.tensor([0.9, 0.6]), "labels": torch.tensor([1, 2]), "masks": masks}
    labels = render_label_map(pred, (4, 4))
    assert labels[0].tolist() == [1, 1, 2, 0]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_instance_training_stops_on_a_signal_with_a_resumable_checkpoint(tmp_path: Path, sig: int) -> None:
    def send(trainer) -> None:
        if trainer.global_step == 1:
            os.kill(os.getpid(), sig)

    torch.manual_seed(0)
    result = train(_config(tmp_path, epochs=2), callbacks={"on_step_end": send})
    assert result.interrupted and load_checkpoint(result.last_checkpoint)["global_step"] == 1
    resumed = train(_config(tmp_path, epochs=2, resume=str(result.last_checkpoint)))
    assert not resumed.interrupted and load_checkpoint(resumed.last_checkpoint)["global_step"] == 4


def test_instance_training_stops_on_nan(tmp_path: Path) -> None:
    def poison(trainer) -> None:
        if trainer.global_step == 1:
            with torch.no_grad():
                for p in trainer.model.parameters():
                    p.fill_(float("nan"))

    torch.manual_seed(0)
    with pytest.raises(TrainingDiverged, match="training loss became nan"):
        train(_config(tmp_path, epochs=2), callbacks={"on_step_end": poison})


def test_instance_training_under_bf16_autocast_with_progress(tmp_path: Path) -> None:
    torch.manual_seed(0)
    result = train(_config(tmp_path, amp="bf16", progress=True))
    record = result.history[-1]
    assert all(record[f"train_{t}"] == record[f"train_{t}"] for t in ("loss_mask", "loss_classifier"))  # not NaN
    assert 0.0 <= record["val_mask_ap"] <= 1.0
