"""Show it learns: train every CamVid recipe for one equal, short wall-clock budget; tabulate val metrics.

Every model gets the same minutes of training (``--minutes``), from scratch (this machine cannot
download ImageNet weights, so ``model.weights_backbone`` is switched off),
with the zoo's CPU set-up: half-resolution images, 144x192 random crops, batch 8, AdamW + cosine,
median-frequency class weights. Before each run a short probe times the model's training step on
a random batch; the run then gets ``minutes / step time`` optimisation steps (at least 8), split
over 4 epochs (more for fast models, as an epoch holds 45 steps) with a one-epoch warm-up. Because the budget is a step count, a busy machine
stretches a run's wall time but never changes its result. The table reports the measured time.

Validation scores the full-resolution val labels (the SegNet protocol: predictions are upsampled
back to 360x480). The ISBI 2012 U-Net run has its own fixed budget and adds pixel error,
foreground IoU and adapted Rand error.

Usage:
    python benchmarks/learning_study.py                        # every run, 4 min each
    python benchmarks/learning_study.py --minutes 20           # the issue's suggested budget
    python benchmarks/learning_study.py --only segnet_basic fcn_basic segnet_basic_bilinear
    python benchmarks/learning_study.py --smoke                # seconds: synthetic data, checks the script

Each finished run writes ``<out-dir>/<label>/study_row.json``; a rerun reuses finished rows (delete
the folder or pass ``--fresh`` to retrain), so an interrupted study resumes where it stopped.
Prints a Markdown table (with the command of every row) and writes
``benchmarks/results/learning-study-<host>-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import shutil
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F

from seglab.core.config import Config, load_config
from seglab.data import build_dataset
from seglab.engine import train
from seglab.metrics import format_percent
from seglab.models.registry import create_model

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED = REPO.parent / "shared" / "data"
EPOCHS = 4  # the step budget is split over at least this many epochs; warm-up is the recipes' one epoch
MIN_STEPS = 8


@dataclass
class Run:
    label: str
    recipe: str
    overrides: list[str] = field(default_factory=list)
    steps: int | None = None  # a fixed budget (ISBI); None: the study's time budget


def study_runs(camvid: Path, isbi: Path) -> list[Run]:
    """Every CamVid recipe (plus SegNet-Basic's bilinear decoder), then U-Net on ISBI 2012."""
    # One class balance for every row: the paper's median-frequency weights (the SegNet-Basic CPU
    # recipe's own, milder square-root balance is tuned for its 2-hour run, not for 4 minutes).
    cam = ["--data.root", str(camvid), "--loss.class_weights", "median_frequency"]
    scratch = cam + ["--model.weights_backbone", "null"]  # no downloads here: every run from scratch
    # The two paper recipes are full resolution with SGD; the study gives them the zoo's CPU set-up.
    cpu = ["--data.image_size", "[180, 240]", "--data.crop_size", "[144, 192]", "--data.scale_range", "[0.75, 1.5]",
           "--data.color_jitter", "0.2", "--data.num_workers", "1", "--train.batch_size", "8",
           "--train.optimizer", "adamw", "--train.weight_decay", "0.0001", "--train.schedule", "cosine",
           "--train.warmup_epochs", "1", "--train.select_metric", "miou"]
    runs = [
        Run("segnet_basic", "configs/segnet_basic_camvid_cpu.yaml", cam),
        Run("segnet_basic_bilinear", "configs/segnet_basic_camvid_cpu.yaml",
            cam + ["--model.kwargs.upsample", "bilinear"]),
        Run("fcn_basic", "configs/fcn_basic_camvid.yaml", cam),
        Run("bayesian_segnet_basic", "configs/bayesian_segnet_basic_camvid.yaml", cam),
        Run("segnet_lite", "configs/segnet_lite_camvid.yaml", cam),
        Run("segnet", "configs/segnet_camvid.yaml", cam + cpu + ["--model.weights_backbone", "null",
                                                                 "--train.lr", "0.001"]),
        Run("bayesian_segnet", "configs/bayesian_segnet_camvid.yaml", cam),
        Run("unet", "configs/unet_camvid.yaml", cam),
        Run("unet_valid", "configs/unet_valid_camvid.yaml", cam),
    ]
    runs += [Run(name, f"configs/{name}_camvid.yaml", scratch) for name in (
        "fcn32s", "fcn16s", "fcn8s", "deconvnet", "deeplab_largefov", "deeplabv3_resnet50", "deeplabv3_resnet101",
        "deeplabv3plus_resnet50")]
    runs.append(Run("deeplabv3plus_xception65", "configs/deeplabv3plus_xception65_camvid.yaml", cam))
    # 20 training slices make 5 steps an epoch; 40 epochs of 4 crops, at a quarter of the width.
    runs.append(Run("unet_isbi", "configs/unet_isbi.yaml",
                    ["--data.root", str(isbi), "--model.kwargs.base_channels", "16"], steps=200))
    return runs


def smoke_runs() -> list[Run]:
    tiny = ["--data.dataset", "synthetic", "--data.synthetic_train", "8", "--data.synthetic_val", "2",
            "--data.synthetic_size", "[32, 48]", "--data.image_size", "[32, 48]", "--data.crop_size", "[32, 48]",
            "--data.num_workers", "0", "--loss.class_weights", "none"]
    return [Run("segnet_basic", "configs/segnet_basic_camvid_cpu.yaml", tiny),
            Run("fcn_basic", "configs/fcn_basic_camvid.yaml", tiny, steps=8)]


def seconds_per_step(cfg: Config, num_classes: int, repeats: int = 2) -> float:
    """Median time of one AdamW training step of ``cfg``'s model on a random batch at the crop size."""
    torch.manual_seed(0)
    model = create_model(cfg.model.name, num_classes, **cfg.model.kwargs).train()
    h, w = cfg.data.crop_size or cfg.data.image_size
    x = torch.randn(cfg.train.batch_size, 3, h, w)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for _ in range(repeats + 1):  # the first step warms up allocator and kernels
        start = time.perf_counter()
        logits = model(x)
        target = torch.randint(0, logits.shape[1], (x.shape[0], *logits.shape[-2:]))
        F.cross_entropy(logits, target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def run_one(run: Run, minutes: float, out_dir: Path, threads: int | None, fresh: bool) -> dict:
    row_file = out_dir / run.label / "study_row.json"
    if row_file.is_file() and not fresh:
        print(f"{run.label}: reusing {row_file}", flush=True)
        row = json.loads(row_file.read_text())
        return {**row, **loss_curve(Path(row.get("run_dir", row_file.parent)))}
    if fresh and row_file.parent.exists():
        shutil.rmtree(row_file.parent)  # retrain into the same folder, not into <label>-2
    if threads:
        torch.set_num_threads(threads)
    base = ["--train.threads", str(threads)] if threads else []
    cfg = load_config(REPO / run.recipe, run.overrides)
    probe_s = None
    steps = run.steps
    if steps is None:
        probe_s = seconds_per_step(cfg, num_classes=11)
        steps = max(MIN_STEPS, int(minutes * 60 / probe_s))
    available = len(build_dataset(cfg.data, train=True)) // cfg.train.batch_size  # steps in a whole epoch
    epochs = max(EPOCHS, math.ceil(steps / available))  # fast models get more epochs, not longer ones
    per_epoch = math.ceil(steps / epochs)
    budget = base + ["--train.epochs", str(epochs), "--train.max_steps_per_epoch", str(per_epoch),
                     "--train.val_every", str(epochs), "--train.progress", "false",
                     "--train.out_dir", str(out_dir), "--train.run_name", run.label]
    overrides = run.overrides + budget
    cfg = load_config(REPO / run.recipe, overrides)  # rebuilt from the overrides the row's command names
    start = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - start
    if result.interrupted:  # Ctrl-C / SIGTERM stopped the run: stop the study too, not just this run
        raise SystemExit(f"interrupted during {run.label}; rerun the study to redo it")
    metrics = result.best_metrics or {}
    keys = ("global_acc", "class_acc", "miou", "bf", "pixel_error", "foreground_iou", "rand_error")
    row = {"label": run.label, "model": cfg.model.name, "steps": result.history[-1]["step"], "batch": cfg.train.batch_size,
           "probe_s_per_step": probe_s, "seconds": seconds, "run_dir": str(result.run_dir),
           "command": "seglab train " + shlex.join([run.recipe, *overrides]),
           **{k: metrics.get(k) for k in keys}}
    row_file.write_text(json.dumps(row, indent=1))
    return {**row, **loss_curve(result.run_dir)}


def loss_curve(run_dir: Path) -> dict:
    """Mean training loss of the first and of the last epoch, from the run's ``metrics.jsonl``.

    Learning shows here even when a tiny budget leaves val scores near chance: a model that
    predicts every class with equal probability has a loss of ln(11) = 2.40 on CamVid, with or
    without class weights.
    """
    log = run_dir / "metrics.jsonl"
    losses = [json.loads(line)["train_loss"] for line in log.read_text().splitlines()] if log.is_file() else []
    return {"loss_first_epoch": losses[0] if losses else None, "loss_last_epoch": losses[-1] if losses else None}


def markdown(rows: list[dict]) -> str:
    lines = ["| run | model | steps x batch | wall time | train loss, epoch 1 -> last | val G | val C | val mIoU | "
             "val BF | pixel error | fg IoU | Rand error |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [format_percent(r[k]) for k in ("global_acc", "class_acc", "miou", "bf", "pixel_error",
                                                "foreground_iou", "rand_error")]
        first, last = r.get("loss_first_epoch"), r.get("loss_last_epoch")
        loss = f"{first:.2f} -> {last:.2f}" if first is not None and last is not None else "-"
        lines.append(f"| {r['label']} | {r['model']} | {r['steps']} x {r['batch']} | {r['seconds'] / 60:.1f} min | "
                     f"{loss} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=4.0, help="training budget per CamVid run")
    parser.add_argument("--only", nargs="+", help="run only these labels")
    parser.add_argument("--threads", type=int, help="intra-op threads per run (default: all cores)")
    parser.add_argument("--fresh", action="store_true", help="retrain runs that already have a study_row.json")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic runs that check the script")
    parser.add_argument("--out-dir", default=str(REPO / "runs" / "study"))
    args = parser.parse_args()
    runs = smoke_runs() if args.smoke else study_runs(SHARED / "camvid", SHARED / "isbi2012")
    if args.only:
        unknown = set(args.only) - {r.label for r in runs}
        if unknown:
            parser.error(f"unknown run labels {sorted(unknown)}; known: {[r.label for r in runs]}")
        runs = [r for r in runs if r.label in args.only]
    minutes = 0.05 if args.smoke else args.minutes
    rows = []
    for run in runs:
        rows.append(run_one(run, minutes, Path(args.out_dir), args.threads, args.fresh))
        print(json.dumps(rows[-1]), flush=True)
    print(markdown(rows))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"learning-study-{platform.node() or 'host'}-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps({"minutes": minutes, "epochs": EPOCHS, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
