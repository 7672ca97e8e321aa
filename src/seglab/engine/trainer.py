"""The training loop: ``seglab.train(config)``.

One :class:`Trainer` owns the model, data, optimizer and run folder. Each epoch it
trains, validates every ``train.val_every`` epochs, appends a line to the metrics log
and writes ``last.pt`` (and ``best.pt`` when the selected metric improves), always
atomically. Ctrl-C or SIGTERM finishes the current step, writes a resumable
``last.pt`` and returns; a NaN/inf loss stops training and leaves the last good
checkpoint untouched.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from seglab.core.atomic import atomic_write_text
from seglab.core.config import Config, config_to_dict, dump_config
from seglab.core.errors import SeglabError
from seglab.core.runtime import (
    autocast, configure_threads, resolve_amp, rng_state, seed_everything, select_device, set_rng_state
)
from seglab.core.version import __version__
from seglab.data import build_dataset, compute_class_weights, dataset_info
from seglab.engine.evaluate import evaluate_model
from seglab.engine.loader import build_eval_loader, build_train_loader
from seglab.engine.logging import MetricsLogger, dumps
from seglab.engine.optim import build_optimizer, build_scheduler
from seglab.metrics import format_metrics_table
from seglab.tasks import build_task
from seglab.tasks.checkpoint import Checkpoint, CheckpointMeta, TrainingState, check_compatible, read_checkpoint, save_checkpoint

__all__ = ["train", "Trainer", "TrainResult", "TrainingDiverged"]


def _unused_run_dir(out_dir: Path, name: str) -> Path:
    """``out_dir/name``, or ``name-2``, ``name-3``, ... when that folder already holds a checkpoint.

    A new run never overwrites an earlier run's checkpoints or appends to its metrics log; to go
    on with a run, resume it (``--train.resume``) instead.
    """
    run_dir, n = out_dir / name, 1
    while any((run_dir / f).exists() for f in ("last.pt", "best.pt")):
        n += 1
        run_dir = out_dir / f"{name}-{n}"
    if n > 1:
        print(f"seglab: {out_dir / name} already holds a run; this one goes to {run_dir} "
              "(use --train.resume to continue the earlier run).", flush=True)
    return run_dir


class TrainingDiverged(SeglabError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    best_metrics: dict[str, Any] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False


def train(cfg: Config, callbacks: dict[str, Callable[["Trainer"], None]] | None = None) -> TrainResult:
    """Train the model described by ``cfg``; returns where everything was written."""
    return Trainer(cfg, callbacks).fit()


class Trainer:
    """Trains one model per its config. ``callbacks['on_step_end'](trainer)`` runs after each step."""

    def __init__(self, cfg: Config, callbacks: dict[str, Callable[["Trainer"], None]] | None = None) -> None:
        self.cfg = cfg
        self.callbacks = callbacks or {}
        self.stop_requested: str | None = None
        t = cfg.train
        configure_threads(t.threads)
        seed_everything(t.seed)
        self.device = select_device(t.device)
        self.amp_dtype = resolve_amp(t.amp, self.device)
        self.info = dataset_info(cfg.data)
        self._build_data()
        self._build_model()
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best_score = -math.inf
        self.best_metrics: dict[str, Any] | None = None
        if t.resume:
            self._resume(t.resume)
        elif t.init_from:
            self._init_from(t.init_from)
        self.run_dir = self._make_run_dir()
        self.logger = MetricsLogger(self.run_dir, t.log_format)

    # ------------------------------------------------------------------ setup
    def _build_data(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        pin = self.device.type == "cuda"
        self.train_set = build_dataset(cfg.data, cfg.data.train_split, train=True)
        if len(self.train_set) < t.batch_size:
            raise SeglabError(f"The training split has {len(self.train_set)} images, fewer than train.batch_size={t.batch_size}. "
                              "Lower --train.batch_size or add data.")
        # Validation runs at the labels' native resolution; the model sees data.image_size.
        val_data = dataclasses.replace(cfg.data, image_size=None)
        self.val_set = build_dataset(val_data, cfg.data.val_split, train=False) if t.val_every > 0 else None
        self.train_loader = build_train_loader(self.train_set, t.batch_size, t.seed, cfg.data.num_workers, pin)
        self.val_loader = (build_eval_loader(self.val_set, max(1, t.batch_size // 2), cfg.data.num_workers, pin)
                           if self.val_set is not None else None)
        self.steps_per_epoch = len(self.train_set) // t.batch_size
        if t.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, t.max_steps_per_epoch)

    def _build_model(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        # The task owns the loss (with class weights from the training split) and the metrics.
        self.task = build_task(cfg, self.info, lambda method: compute_class_weights(cfg.data, method), self.device)
        self.model = self.task.build_model(cfg).to(self.device)
        if t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, t)
        self.scheduler = build_scheduler(self.optimizer, t, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def _make_run_dir(self) -> Path:
        t = self.cfg.train
        if t.resume:
            run_dir = Path(t.resume).resolve().parent
        else:
            name = t.run_name or f"{datetime.now():%Y%m%d-%H%M%S}-{self.cfg.model.name}-{self.cfg.data.dataset}"
            run_dir = _unused_run_dir(Path(t.out_dir), name)
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(self.cfg, run_dir / "config.yaml")
        return run_dir

    def _init_from(self, path: str) -> None:
        ckpt = read_checkpoint(path, map_location=self.device)
        check_compatible(ckpt, self.cfg.model.name, self.info.num_classes, path, task=self.cfg.task)
        self.model.load_state_dict(ckpt.model)

    def _resume(self, path: str) -> None:
        ckpt = read_checkpoint(path, map_location=self.device)
        check_compatible(ckpt, self.cfg.model.name, self.info.num_classes, path, task=self.cfg.task)
        state = ckpt.training
        if state is None or not state.resumable:
            raise SeglabError(f"Checkpoint {path!r} holds weights only (no optimizer state), so it cannot resume a run. "
                              "Resume from the run's last.pt.")
        self.model.load_state_dict(ckpt.model)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.scaler.load_state_dict(state.scaler)
        self.epoch, self.step_in_epoch, self.global_step = state.epoch, state.step_in_epoch, state.global_step
        self.best_score, self.best_metrics = state.best_score, state.best_metrics
        set_rng_state(state.rng)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, full: bool = True) -> Checkpoint:
        """What a checkpoint holds; ``full`` adds what resuming needs."""
        cfg = self.cfg
        meta = CheckpointMeta(**self.task.checkpoint_metadata(), model_name=cfg.model.name,
                              model_kwargs=dict(cfg.model.kwargs), mean=list(cfg.data.mean), std=list(cfg.data.std),
                              seglab_version=__version__, config=config_to_dict(cfg))
        training = TrainingState(self.epoch, self.step_in_epoch, self.global_step, self.best_score, self.best_metrics)
        if full:
            training = dataclasses.replace(training, optimizer=self.optimizer.state_dict(),
                                           scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
                                           rng=rng_state())
        weights = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return Checkpoint(meta, weights, training)

    def save(self, name: str, full: bool = True) -> Path:
        path = self.run_dir / name
        save_checkpoint(path, self.checkpoint(full))
        return path

    # ------------------------------------------------------------------ loop
    def fit(self) -> TrainResult:
        t = self.cfg.train
        history: list[dict[str, Any]] = []
        print(f"seglab: training {self.cfg.model.name} on {self.cfg.data.dataset} ({len(self.train_set)} images, "
              f"{self.info.num_classes} classes) on {self.device}, precision {self.amp_dtype or 'fp32'}; run folder {self.run_dir}")
        with _StopOnSignal(self):
            while self.epoch < t.epochs and not self.stop_requested:
                record = self._train_epoch()
                if self.stop_requested:
                    break
                self.epoch += 1
                self.step_in_epoch = 0
                record["epoch"] = self.epoch
                if self.val_loader is not None and (self.epoch % t.val_every == 0 or self.epoch == t.epochs):
                    record.update(self._validate())
                history.append(record)
                self.logger.log(record)
                print(_epoch_line(record, t.epochs))
                self.save("last.pt")
        if self.stop_requested:
            path = self.save("last.pt")
            print(f"\nseglab: stopped by {self.stop_requested} at epoch {self.epoch} step {self.step_in_epoch}; "
                  f"resumable checkpoint written to {path}.\nResume with: seglab train {self.run_dir / 'config.yaml'} "
                  f"--train.resume {path}")
        if self.best_metrics is None and not self.stop_requested:
            self.save("best.pt", full=False)  # no validation ran: the final weights are the best we know
        self.logger.close()
        best = self.run_dir / "best.pt"
        self._write_summary()
        return TrainResult(self.run_dir, best if best.exists() else None, self.run_dir / "last.pt",
                           self.best_metrics, history, interrupted=bool(self.stop_requested))

    def _train_epoch(self) -> dict[str, Any]:
        t = self.cfg.train
        self.model.train()
        self.train_loader.sampler.set_epoch(self.epoch, skip=self.step_in_epoch * t.batch_size)
        steps_left = self.steps_per_epoch - self.step_in_epoch
        # disable=None: tqdm draws only on a terminal, so CI logs keep just the per-epoch lines.
        bar = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{t.epochs}",
                   disable=None if t.progress else True, dynamic_ncols=True, mininterval=1.0, leave=False)
        loss_sum, seen, start = 0.0, 0, time.perf_counter()
        for i, item in enumerate(self.train_loader):
            if i >= steps_left:
                break
            batch = self.task.prepare_batch(item, self.device, t.channels_last)
            loss = self._train_step(batch)
            loss_sum += loss
            seen += self.task.batch_size(batch)
            rate = seen / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}", img_s=f"{rate:.1f}", refresh=False)
            bar.update(1)
            if "on_step_end" in self.callbacks:
                self.callbacks["on_step_end"](self)
            if self.stop_requested:
                break
        bar.close()
        elapsed = time.perf_counter() - start
        steps = max(1, i + 1 if seen else 0)
        return {"step": self.global_step, "lr": self.scheduler.get_last_lr()[0], "train_loss": loss_sum / steps,
                **self.task.epoch_log(), "train_images_per_s": seen / elapsed if elapsed > 0 else 0.0,
                "epoch_seconds": elapsed}

    def _train_step(self, batch: Any) -> float:
        """One optimisation step on a batch prepared by the task, which also computes the loss."""
        t = self.cfg.train
        with autocast(self.device, self.amp_dtype):
            output = self.task.forward(self.model, batch)
        loss = self.task.loss(output, batch)
        value = loss.item()
        if not math.isfinite(value):
            last = self.run_dir / "last.pt"
            kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint had been written yet"
            raise TrainingDiverged(f"The training loss became {value} at epoch {self.epoch + 1}, step {self.step_in_epoch + 1}; "
                                   f"training stopped and {kept}. Lower --train.lr, set --train.grad_clip 1.0, "
                                   "or check the data for broken masks (`seglab data check`).")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if t.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step_in_epoch += 1
        self.global_step += 1
        return value

    def _validate(self) -> dict[str, Any]:
        t = self.cfg.train
        start = time.perf_counter()
        results = evaluate_model(self.model, self.val_loader, self.task, self.device, self.amp_dtype,
                                 channels_last=t.channels_last)
        summary = {f"val_{k}": results[k] for k in (*self.task.summary_keys, "iou") if k in results}
        summary["val_seconds"] = time.perf_counter() - start
        score = results.get(t.select_metric)
        if not isinstance(score, float):
            raise SeglabError(f"train.select_metric {t.select_metric!r} is not a computed metric; use miou, global_acc, "
                              "class_acc, fwiou, or bf (bf needs train.val_bf true).")
        if score != score:  # NaN (e.g. no class present): never "best", but don't crash
            score = -math.inf
        if score > self.best_score:
            self.best_score, self.best_metrics = score, {**results, "epoch": self.epoch}
            self.save("best.pt", full=False)
        return summary

    def _write_summary(self) -> None:
        if self.best_metrics is None:
            return
        atomic_write_text(self.run_dir / "metrics.json", dumps(
            {"split": self.cfg.data.val_split, "class_names": list(self.info.class_names), **self.best_metrics}, indent=2))
        print(format_metrics_table(self.best_metrics, list(self.info.class_names)))


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    line = (f"epoch {record['epoch']}/{epochs}  loss {record['train_loss']:.4f}  lr {record['lr']:.2e}  "
            f"{record['train_images_per_s']:.1f} img/s")
    if "val_miou" in record:
        line += (f"  | val G {100 * record['val_global_acc']:.1f}  C {100 * record['val_class_acc']:.1f}  "
                 f"mIoU {100 * record['val_miou']:.1f}")
        if record.get("val_bf") is not None and record["val_bf"] == record["val_bf"]:
            line += f"  BF {100 * record['val_bf']:.1f}"
    if "val_mask_ap" in record:
        line += "  | val " + "  ".join(f"{k[4:]} {100 * record[k]:.1f}" for k in
                                       ("val_mask_ap", "val_mask_ap50", "val_mask_ap75", "val_box_ap", "val_mask_iou"))
    return line


class _StopOnSignal:
    """Turns the first SIGINT/SIGTERM into a graceful stop request; a second SIGINT aborts at once."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.trainer.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.trainer.stop_requested = signal.Signals(signum).name

    def __enter__(self) -> "_StopOnSignal":
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self.previous.clear()
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
