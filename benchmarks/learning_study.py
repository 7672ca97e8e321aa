"""Show it learns: train several recipes for one equal, short budget and tabulate val metrics.

Every CamVid run gets the same number of optimisation steps (``--epochs`` x ``--steps``,
batch and crop from the recipe), so models are compared at equal data seen, as the SegNet
paper's Table 1 compares decoders; the ISBI run has its own fixed budget. Validation scores the full-resolution val labels (the SegNet
protocol); ISBI 2012 runs add pixel error, foreground IoU and adapted Rand error.

Usage:
    python benchmarks/learning_study.py                     # SegNet-Basic vs bilinear vs FCN-Basic, U-Net on ISBI
    python benchmarks/learning_study.py --only segnet_basic fcn_basic --epochs 2 --steps 5
    python benchmarks/learning_study.py --smoke             # seconds: synthetic data, checks the script

Prints a Markdown table (with the command of every row) and writes
``benchmarks/results/learning-study-<host>-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from seglab.config import load_config
from seglab.engine import train
from seglab.metrics import format_percent

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED = REPO.parent / "shared" / "data"


@dataclass
class Run:
    label: str
    recipe: str
    overrides: list[str] = field(default_factory=list)
    epochs: int | None = None  # own budget (a different data set); None: the study's --epochs/--steps
    steps: int | None = None


def study_runs(camvid: Path, isbi: Path) -> list[Run]:
    """The paper's decoder comparison on CamVid, then U-Net on ISBI 2012 (CPU-sized)."""
    cam = ["--data.root", str(camvid)]
    return [
        Run("segnet_basic", "configs/segnet_basic_camvid_cpu.yaml", cam),
        Run("segnet_basic_bilinear", "configs/segnet_basic_camvid_cpu.yaml",
            cam + ["--model.kwargs.upsample", "bilinear"]),
        Run("fcn_basic", "configs/fcn_basic_camvid.yaml", cam),
        # 20 training slices make 5 steps an epoch; 40 epochs of 4 crops, at a quarter of the width.
        Run("unet_isbi", "configs/unet_isbi.yaml",
            ["--data.root", str(isbi), "--model.kwargs.base_channels", "16"], epochs=40, steps=5),
    ]


def smoke_runs() -> list[Run]:
    tiny = ["--data.dataset", "synthetic", "--data.synthetic_train", "8", "--data.synthetic_val", "2",
            "--data.synthetic_size", "[32, 48]", "--data.image_size", "[32, 48]", "--data.crop_size", "[32, 48]",
            "--data.num_workers", "0", "--loss.class_weights", "none"]
    return [Run("segnet_basic", "configs/segnet_basic_camvid_cpu.yaml", tiny),
            Run("fcn_basic", "configs/fcn_basic_camvid.yaml", tiny)]


def run_one(run: Run, epochs: int, steps: int, out_dir: Path, threads: int | None) -> dict:
    budget = ["--train.threads", str(threads)] if threads else []
    budget += ["--train.epochs", str(epochs), "--train.max_steps_per_epoch", str(steps),
              "--train.val_every", str(epochs), "--train.progress", "false",
              "--train.out_dir", str(out_dir), "--train.run_name", run.label]
    overrides = run.overrides + budget
    cfg = load_config(REPO / run.recipe, overrides)
    start = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - start
    if result.interrupted:  # Ctrl-C / SIGTERM stopped the run: stop the study too, not just this run
        raise SystemExit(f"interrupted during {run.label}; resume it with --train.resume {result.last_checkpoint}")
    metrics = result.best_metrics or {}
    keys = ("global_acc", "class_acc", "miou", "bf", "pixel_error", "foreground_iou", "rand_error")
    return {"label": run.label, "model": cfg.model.name, "steps": epochs * steps, "batch": cfg.train.batch_size,
            "seconds": seconds, "command": "seglab train " + shlex.join([run.recipe, *overrides]),
            **{k: metrics.get(k) for k in keys}}


def markdown(rows: list[dict]) -> str:
    lines = ["| run | model | steps x batch | train time | val G | val C | val mIoU | val BF | pixel error | "
             "fg IoU | Rand error |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [format_percent(r[k]) for k in ("global_acc", "class_acc", "miou", "bf", "pixel_error",
                                                "foreground_iou", "rand_error")]
        lines.append(f"| {r['label']} | {r['model']} | {r['steps']} x {r['batch']} | {r['seconds'] / 60:.1f} min | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=15, help="optimisation steps per epoch")
    parser.add_argument("--only", nargs="+", help="run only these labels")
    parser.add_argument("--threads", type=int, help="intra-op threads per run (default: all cores)")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic runs that check the script")
    parser.add_argument("--out-dir", default=str(REPO / "runs" / "study"))
    args = parser.parse_args()
    runs = smoke_runs() if args.smoke else study_runs(SHARED / "camvid", SHARED / "isbi2012")
    if args.only:
        runs = [r for r in runs if r.label in args.only]
    rows = []
    for run in runs:
        rows.append(run_one(run, run.epochs or args.epochs, run.steps or args.steps, Path(args.out_dir), args.threads))
        print(json.dumps(rows[-1]), flush=True)
    print(markdown(rows))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"learning-study-{platform.node() or 'host'}-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps({"epochs": args.epochs, "steps_per_epoch": args.steps, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
