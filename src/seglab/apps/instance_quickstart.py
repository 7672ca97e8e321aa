"""``seglab quickstart --task instance``: a CPU Mask R-CNN on the built-in synthetic instances, in minutes.

Trains ``mask_rcnn_resnet18_fpn`` with narrow heads on small synthetic road scenes (every pole and
car its own instance; generated, nothing is downloaded), validates it (COCO mask AP, box AP,
matched mask IoU), and writes the run folder (``config.yaml``, ``metrics.jsonl``,
``metrics.json``, ``best.pt``, ``last.pt``) with ``overlays/``: per validation scene the
prediction overlay and 16-bit id PNG of ``seglab predict`` and a ground truth | prediction picture.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from seglab.apps.instance_predict import write_instances
from seglab.apps.instance_visualize import draw_instances
from seglab.apps.visualize import save_png
from seglab.core.config import Config, DataConfig, ModelConfig, TrainConfig, apply_overrides
from seglab.data import build_dataset
from seglab.engine.trainer import TrainResult, train
from seglab.inference.instance_predictor import InstanceSegmenter

__all__ = ["QUICKSTART_MODEL_KWARGS", "instance_quickstart_config", "run_instance_quickstart"]

#: 96 x 128 scenes at their own size; FPN, box and mask heads narrowed and anchors scaled to the
#: objects (8..128 px), fewer proposals: the RoI heads dominate CPU time on small images.
QUICKSTART_MODEL_KWARGS = {
    "min_size": 96, "max_size": 128, "fpn_channels": 64, "representation_size": 128, "mask_channels": 32,
    "anchor_sizes": [8, 16, 32, 64, 128], "box_batch_size_per_image": 64, "rpn_pre_nms_top_n_train": 400,
    "rpn_post_nms_top_n_train": 200, "rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 100,
    "box_detections_per_img": 50,
}


def instance_quickstart_config(out_dir: str = "runs") -> Config:
    """The instance quickstart recipe (see :data:`QUICKSTART_MODEL_KWARGS`); AdamW + cosine, one validation at the end.

    One thread: on 2 cores shared with other jobs a training step of this model took 0.4 s of CPU with
    1 thread and 8.5 s with 2 (threads waiting on each other; docs/instance.md, "Quickstart").
    """
    return Config(
        task="instance",
        model=ModelConfig(name="mask_rcnn_resnet18_fpn", kwargs=dict(QUICKSTART_MODEL_KWARGS)),
        data=DataConfig(dataset="synthetic_instances", synthetic_train=96, synthetic_val=16, synthetic_size=[96, 128],
                        hflip=True, num_workers=0),
        train=TrainConfig(epochs=8, batch_size=4, optimizer="adamw", lr=1e-3, weight_decay=1e-4, schedule="cosine",
                          warmup_epochs=0.25, grad_clip=10.0, val_every=8, val_bf=False, select_metric="mask_ap",
                          threads=1, out_dir=out_dir, run_name="quickstart_instance"),
    )


def run_instance_quickstart(out_dir: str = "runs", overrides: list[str] | None = None, epochs: int | None = None,
                            num_overlays: int = 4) -> TrainResult:
    """Train, validate and draw; returns the :class:`TrainResult` (its ``run_dir`` holds everything)."""
    cfg = instance_quickstart_config(out_dir)
    if epochs is not None:
        cfg.train.epochs = cfg.train.val_every = epochs
    apply_overrides(cfg, overrides or [])
    result = train(cfg)
    if result.best_checkpoint is None:
        return result
    overlay_dir = result.run_dir / "overlays"
    _draw_overlays(result.best_checkpoint, cfg, overlay_dir, num_overlays)
    m = result.best_metrics or {}
    print(f"\nseglab quickstart --task instance: val mask AP {_pct(m, 'mask_ap')}  AP50 {_pct(m, 'mask_ap50')}  "
          f"AP75 {_pct(m, 'mask_ap75')}  box AP {_pct(m, 'box_ap')}  matched mask IoU {_pct(m, 'mask_iou')}")
    print(f"  run folder : {result.run_dir}")
    print(f"  metrics    : {result.run_dir / 'metrics.json'}")
    print(f"  checkpoint : {result.best_checkpoint}")
    print(f"  overlays   : {overlay_dir}")
    print(f"Next: seglab predict {result.best_checkpoint} YOUR_IMAGE.png --out predictions/\n"
          f"  or a longer run: seglab train configs/mask_rcnn_synthetic.yaml (docs/instance.md)")
    return result


def _pct(metrics: dict, key: str) -> str:
    return f"{100 * metrics.get(key, float('nan')):.1f}"


def _draw_overlays(checkpoint: Path, cfg: Config, out: Path, count: int) -> None:
    """For the first validation scenes: ``seglab predict``'s overlay and id PNG, and ground truth | prediction."""
    segmenter = InstanceSegmenter.from_checkpoint(checkpoint, device=cfg.train.device)
    val = build_dataset(dataclasses.replace(cfg.data, limit=count), cfg.data.val_split, train=False)
    for i in range(min(count, len(val))):
        tensor, target = val[i]
        image = tensor.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # the scene's own uint8 pixels
        found = segmenter.predict(image)
        write_instances(segmenter, image, found, out, f"val_{i:02d}")
        truth = draw_instances(image, target["boxes"].numpy(), target["labels"].numpy(), np.ones(len(target["labels"])),
                               target["masks"].bool().numpy(), segmenter.class_names)
        predicted = draw_instances(image, found.boxes, found.labels, found.scores, found.masks, segmenter.class_names)
        save_png(np.concatenate([truth, predicted], axis=1), out / f"val_{i:02d}_truth_vs_prediction.png")
