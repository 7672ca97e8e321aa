"""The task layer and the typed checkpoint: the engine only talks to a task, checkpoints read the same
whether main wrote them before this layout existed or the trainer writes them now."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from seglab.core.config import load_config
from seglab.core.errors import SeglabError
from seglab.engine.evaluate import evaluate_model
from seglab.engine.trainer import train
from seglab.inference.fastpath import optimize_for_inference
from seglab.inference.predictor import Segmenter
from seglab.models.registry import create_model
from seglab.ops.contract import runnable_size, size_rule, unwrap, valid_output_fn
from seglab.ops.resize import forward_at_size
from seglab.tasks import build_task
from seglab.tasks.checkpoint import Checkpoint, model_from_checkpoint, read_checkpoint
from seglab.tasks.semantic import SemanticBatch, SemanticTask

#: A resumable last.pt written by seglab's main at commit f87ebd0, before tasks and the typed
#: checkpoint existed: U-Net (depth 2, 4 base channels) after one epoch on 4 synthetic scenes.
OLD_CHECKPOINT = Path(__file__).parent / "data" / "checkpoint_main_f87ebd0.pt"


def tiny_overrides(out: Path) -> list[str]:
    return ["--model.name", "unet", "--model.kwargs", "{depth: 2, base_channels: 4}", "--data.dataset", "synthetic",
            "--data.synthetic_train", "4", "--data.synthetic_val", "2", "--data.synthetic_size", "[32, 48]",
            "--train.batch_size", "2", "--train.threads", "1", "--train.val_bf", "false", "--train.out_dir", str(out)]


def test_wrapped_valid_model_keeps_its_size_rule():
    """The fast path's wrapper keeps its module in ``.module``: a wrapped unet_valid is still valid-size."""
    model = create_model("unet_valid", num_classes=2, depth=2, base_channels=4).eval()
    fast = optimize_for_inference(model, dtype=torch.float32)
    inner = unwrap(fast)  # the fast path's BN-folded copy
    assert inner is not fast and type(inner) is type(model) and size_rule(fast) is inner
    assert valid_output_fn(fast) is not None
    assert runnable_size(fast, (50, 61)) == runnable_size(model, (50, 61)) != (50, 61)
    x = torch.randn(1, 3, 50, 61)
    with torch.inference_mode():
        expected = forward_at_size(model, x, None)
        got = forward_at_size(fast, x, None)
    assert got.shape == expected.shape == (1, 2, 50, 61)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_semantic_loss_scores_the_centre_of_valid_outputs():
    task = SemanticTask(3, ignore_index=255, criterion=torch.nn.CrossEntropyLoss(ignore_index=255))
    masks = torch.randint(0, 3, (2, 10, 12))
    logits = torch.randn(2, 3, 6, 8)
    loss = task.loss(logits, SemanticBatch(torch.zeros(2, 3, 10, 12), masks))
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, masks[:, 2:8, 2:10]))


class _CountingTask:
    """A task that is not semantic segmentation: the evaluator must not care."""

    name, summary_keys = "counting", ("images",)

    def prepare_batch(self, item, device, channels_last=False):
        return item[0].to(device)

    def batch_size(self, batch):
        return batch.shape[0]

    def predict(self, model, batch):
        return model(batch).shape[0]

    def new_metrics(self):
        task = self

        class Meter:
            images = 0

            def update(self, predictions, batch):
                assert predictions == task.batch_size(batch)
                self.images += predictions

            def compute(self):
                return {"images": self.images}

        return Meter()


def test_evaluator_is_task_agnostic():
    model = torch.nn.Conv2d(3, 1, 1).train()
    batches = [(torch.randn(n, 3, 4, 4),) for n in (2, 3)]
    assert evaluate_model(model, batches, _CountingTask(), torch.device("cpu")) == {"images": 5}
    assert model.training  # mode restored


def test_unknown_task_is_a_clear_error(tmp_path):
    cfg = load_config(None, [*tiny_overrides(tmp_path), "--task", "panoptic"])
    with pytest.raises(SeglabError, match="Unknown task 'panoptic'.*semantic"):
        build_task(cfg, None)


def test_checkpoint_written_by_main_before_the_typed_layout_loads(tmp_path):
    ckpt = read_checkpoint(OLD_CHECKPOINT)
    assert ckpt.meta.task == "semantic" and ckpt.meta.model_name == "unet"
    assert ckpt.meta.num_classes == ckpt.meta.model_num_classes == 7
    assert ckpt.training is not None and ckpt.training.resumable and ckpt.training.epoch == 1
    model = model_from_checkpoint(ckpt, OLD_CHECKPOINT)
    assert sum(p.numel() for p in model.parameters()) > 0
    labels = Segmenter.from_checkpoint(OLD_CHECKPOINT, device="cpu").predict((torch.rand(30, 41, 3) * 255).byte().numpy())
    assert labels.shape == (30, 41) and labels.max() < 7

    # ... and a run resumes from it with today's trainer.
    run = tmp_path / "old"
    run.mkdir()
    shutil.copy(OLD_CHECKPOINT, run / "last.pt")
    result = train(load_config(None, [*tiny_overrides(tmp_path), "--train.epochs", "2",
                                      "--train.resume", str(run / "last.pt")]))
    resumed = read_checkpoint(result.last_checkpoint)
    assert resumed.training.epoch == 2 and resumed.training.global_step == 2 * ckpt.training.global_step


def test_checkpoint_round_trip(tmp_path):
    result = train(load_config(None, [*tiny_overrides(tmp_path), "--train.epochs", "1"]))
    ckpt = read_checkpoint(result.last_checkpoint)
    again = Checkpoint.from_dict(ckpt.to_dict())
    assert again.meta == ckpt.meta and again.training.epoch == ckpt.training.epoch == 1
    assert ckpt.meta.task == "semantic" and ckpt.meta.image_size is None and ckpt.meta.config["task"] == "semantic"
    best = read_checkpoint(result.best_checkpoint)
    assert best.training is not None and not best.training.resumable  # weights only: cannot resume
