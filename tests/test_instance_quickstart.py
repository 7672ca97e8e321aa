"""``seglab quickstart --task instance`` with a tiny budget: trains, scores, draws and says what next; and
``seglab evaluate`` / ``seglab predict`` refuse a checkpoint of the other task with a clear error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seglab.apps.cli import main
from seglab.apps.instance_quickstart import QUICKSTART_MODEL_KWARGS, instance_quickstart_config
from seglab.apps.quickstart import run_quickstart
from seglab.core.config import load_config
from seglab.core.errors import SeglabError

# The recipe's shape at a test's size: 2 scenes of 64 x 80, narrow heads, one epoch of 2 steps.
TINY_INSTANCE = ["--epochs", "1", "--data.synthetic_train", "4", "--data.synthetic_val", "2",
                 "--data.synthetic_size", "[64,80]", "--model.kwargs.min_size", "64", "--model.kwargs.max_size", "80",
                 "--model.kwargs.fpn_channels", "16", "--model.kwargs.representation_size", "32",
                 "--model.kwargs.mask_channels", "8", "--train.threads", "1", "--train.amp", "none",
                 "--train.progress", "false"]
TINY_SEMANTIC = ["--epochs", "1", "--data.synthetic_train", "8", "--data.synthetic_val", "2", "--train.threads", "1",
                 "--train.amp", "none", "--train.progress", "false"]


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The user-facing error of a CLI call that must fail (exit status 2), on one line."""
    assert main(argv) == 2
    return " ".join(capsys.readouterr().err.split())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quickstart")


def test_the_recipe_is_the_cpu_mask_rcnn_on_synthetic_instances() -> None:
    cfg = instance_quickstart_config("x")
    assert (cfg.task, cfg.model.name, cfg.data.dataset) == ("instance", "mask_rcnn_resnet18_fpn", "synthetic_instances")
    assert cfg.model.kwargs == QUICKSTART_MODEL_KWARGS and cfg.train.select_metric == "mask_ap"
    assert cfg.train.val_every == cfg.train.epochs and cfg.train.threads == 1  # one validation, at the end
    with pytest.raises(SeglabError, match="semantic or instance, not 'panoptic'"):
        run_quickstart("x", task="panoptic")


def test_quickstart_task_instance_trains_scores_and_draws(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quickstart", "--task", "instance", "--out-dir", str(runs), *TINY_INSTANCE]) == 0
    out = capsys.readouterr().out
    run = runs / "quickstart_instance"
    assert re.search(r"quickstart --task instance: val mask AP \d+\.\d  AP50 \d+\.\d  AP75 \d+\.\d  box AP \d+\.\d", out)
    assert f"overlays   : {run / 'overlays'}" in out
    assert f"Next: seglab predict {run / 'best.pt'} YOUR_IMAGE.png --out predictions/" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["mask_ap"] <= 1.0 and metrics["epoch"] == 1 and metrics["split"] == "val"
    assert f"val mask AP {100 * metrics['mask_ap']:.1f}" in out
    assert load_config(run / "config.yaml").task == "instance"
    for i in range(2):  # the 2 validation scenes
        ids = np.asarray(Image.open(run / "overlays" / f"val_{i:02d}_ids.png"))
        assert ids.dtype == np.uint16 and ids.shape == (64, 80)
        assert np.asarray(Image.open(run / "overlays" / f"val_{i:02d}_instances.png")).shape == (64, 80, 3)
        assert np.asarray(Image.open(run / "overlays" / f"val_{i:02d}_truth_vs_prediction.png")).shape == (64, 160, 3)
    assert not (run / "overlays" / "val_02_ids.png").exists()


def test_semantic_quickstart_is_unchanged_and_each_command_refuses_the_other_task(
        runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quickstart", "--out-dir", str(runs), *TINY_SEMANTIC]) == 0
    out = capsys.readouterr().out
    assert re.search(r"seglab quickstart: val G \d+\.\d  C \d+\.\d  mIoU \d+\.\d", out)
    semantic, instance = runs / "quickstart" / "best.pt", runs / "quickstart_instance" / "best.pt"
    assert (runs / "quickstart" / "overlays" / "val_00_truth_vs_prediction.png").is_file()
    if not instance.is_file():
        pytest.skip("needs the instance quickstart's checkpoint (test_quickstart_task_instance_trains_scores_and_draws)")
    Image.fromarray(np.full((64, 80, 3), 120, np.uint8)).save(tmp_path / "a.png")
    for ckpt, asked, trained in ((semantic, "instance", "semantic"), (instance, "semantic", "instance")):
        evaluate = ["evaluate", str(ckpt), "--task", asked, "--data.num_workers", "0", "--out", str(tmp_path / "e.json")]
        assert re.search(f"trained for task: {trained} .*but task: {asked} was asked for .*Use --task {trained}",
                         _fails(evaluate, capsys))
        predict = ["predict", str(ckpt), str(tmp_path / "a.png"), "--out", str(tmp_path / "p"), "--task", asked,
                   "--device", "cpu"]
        assert re.search(f"trained for task: {trained} .*but task: {asked}", _fails(predict, capsys))
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "p").exists()
