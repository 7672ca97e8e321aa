"""``seglab quickstart``: a few minutes from install to a trained SegNet-Basic and pictures of its output.

Trains on the built-in synthetic road scenes (generated procedurally, nothing is
downloaded), evaluates on their validation split, and writes the run folder:
``config.yaml``, ``metrics.jsonl``, ``metrics.json``, ``best.pt``, ``last.pt`` and
``overlays/*.png``. ``task="instance"`` (``seglab quickstart --task instance``) runs
:mod:`seglab.apps.instance_quickstart` instead: a CPU Mask R-CNN on the synthetic instances.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from seglab.core.config import Config, DataConfig, LossConfig, ModelConfig, TrainConfig, apply_overrides
from seglab.core.errors import SeglabError
from seglab.data import build_dataset
from seglab.engine.trainer import TrainResult, train
from seglab.inference.predictor import Segmenter
from seglab.models.zoo import list_pretrained
from seglab.apps.predict import write_prediction
from seglab.apps.visualize import colorize, save_png

__all__ = ["quickstart_config", "run_quickstart"]


def quickstart_config(out_dir: str = "runs") -> Config:
    """The quickstart recipe: SegNet-Basic, AdamW + cosine, small synthetic road scenes."""
    return Config(
        model=ModelConfig(name="segnet_basic"),
        data=DataConfig(dataset="synthetic", synthetic_train=224, synthetic_val=48, synthetic_size=[72, 96],
                        hflip=True, color_jitter=0.2, num_workers=0),
        loss=LossConfig(class_weights="none"),
        train=TrainConfig(epochs=8, batch_size=8, optimizer="adamw", lr=3e-3, weight_decay=1e-4, schedule="cosine",
                          warmup_epochs=0.5, val_every=2, out_dir=out_dir, run_name="quickstart"),
    )


def run_quickstart(out_dir: str = "runs", overrides: list[str] | None = None, epochs: int | None = None,
                   num_overlays: int = 4, task: str = "semantic") -> TrainResult:
    """Train, evaluate and draw; returns the :class:`TrainResult` (its ``run_dir`` holds everything)."""
    if task == "instance":
        from seglab.apps.instance_quickstart import run_instance_quickstart

        return run_instance_quickstart(out_dir, overrides, epochs, num_overlays)
    if task != "semantic":
        raise SeglabError(f"seglab quickstart trains task semantic or instance, not {task!r}.")
    cfg = quickstart_config(out_dir)
    if epochs is not None:
        cfg.train.epochs = epochs
    apply_overrides(cfg, overrides or [])
    result = train(cfg)
    if result.best_checkpoint is None:
        return result
    overlay_dir = result.run_dir / "overlays"
    _draw_overlays(result.best_checkpoint, cfg, overlay_dir, num_overlays)
    m = result.best_metrics or {}
    print(f"\nseglab quickstart: val G {100 * m.get('global_acc', float('nan')):.1f}  "
          f"C {100 * m.get('class_acc', float('nan')):.1f}  mIoU {100 * m.get('miou', float('nan')):.1f}")
    print(f"  run folder : {result.run_dir}")
    print(f"  metrics    : {result.run_dir / 'metrics.json'}")
    print(f"  checkpoint : {result.best_checkpoint}")
    print(f"  overlays   : {overlay_dir}")
    print(f"Next: seglab predict {result.best_checkpoint} YOUR_IMAGE.png --out predictions/")
    if "segnet_basic.camvid" in list_pretrained():
        print("  or, on a real street photo, the SegNet-Basic trained on CamVid that ships with seglab:\n"
              "      seglab predict segnet_basic.camvid YOUR_STREET_PHOTO.png --out predictions/")
    return result


def _draw_overlays(checkpoint: Path, cfg: Config, out: Path, count: int) -> None:
    """Prediction overlays for the first validation scenes, each with its ground truth beside it."""
    segmenter = Segmenter.from_checkpoint(checkpoint)
    val = build_dataset(dataclasses.replace(cfg.data, limit=count), cfg.data.val_split, train=False)
    for i in range(min(count, len(val))):
        image, truth = val.load_image(i), val.load_mask(i)
        labels = segmenter.predict(image)
        write_prediction(segmenter, image, labels, out, f"val_{i:02d}")
        save_png(np.concatenate([colorize(truth, segmenter.palette), colorize(labels, segmenter.palette)], axis=1),
                 out / f"val_{i:02d}_truth_vs_prediction.png")
