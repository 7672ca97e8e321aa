"""The training loop: ``seglab.train(config)``.

One :class:`Trainer` owns the model, data, optimizer and run folder. Each epoch it
trains, validates every ``train.val_every`` epochs, appends a line to the metrics log
and writes ``last.pt`` (and ``best.pt`` when the selected metric improves), always
atomically. Ctrl-C or SIGTERM finishes the current step, writes a resumable
``last.pt`` and returns; a NaN/inf loss stops training and leaves the last good
checkpoint untouched. Under torchrun the same loop runs on every rank with
DistributedDataParallel (:mod:`seglab.engine.distributed`); rank 0 alone prints and writes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from seglab.core.atomic import atomic_write_text, remove_stale_temporaries
from seglab.core.config import Config, check_training_config, config_to_dict, dump_config
from seglab.core.errors import SeglabError
from seglab.core.runtime import (
    autocast, configure_threads, resolve_amp, rng_state, seed_everything, select_device, set_rng_state
)
from seglab.core.version import __version__
from seglab.data import build_dataset, compute_class_weights, dataset_info
from seglab.engine.averaging import WeightAverage
from seglab.engine.distributed import SINGLE_PROCESS, DistContext, combine_meters, distributed_session
from seglab.engine.distributed import prepare_model, shard_range, split_batch_size, threads_per_process
from seglab.engine.evaluate import evaluate_model
from seglab.engine.loader import build_eval_loader, build_train_loader, closing_loaders
from seglab.engine.signals import StopOnSignal
from seglab.engine.logging import MetricsLogger, dumps, epoch_line
from seglab.engine.optim import build_optimizer, build_scheduler
from seglab.metrics import format_metrics_table
from seglab.tasks import build_task
from seglab.tasks.checkpoint import Checkpoint, CheckpointMeta, TrainingState, check_compatible, nonfinite_tensors
from seglab.tasks.checkpoint import read_checkpoint, save_checkpoint

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
    main_process: bool = True  # False on ranks other than 0 of a torchrun job: they print nothing


def train(cfg: Config, callbacks: dict[str, Callable[["Trainer"], None]] | None = None) -> TrainResult:
    """Train the model described by ``cfg``; returns where everything was written.

    Launched by torchrun, this process trains its share of each batch and joins the job's
    process group for the length of the run.
    """
    t = cfg.train
    with distributed_session(t.dist_backend, t.device, t.dist_timeout) as (dist, device):
        return Trainer(cfg, callbacks, dist=dist, device=device).fit()


class Trainer:
    """Trains one model per its config. ``callbacks['on_step_end'](trainer)`` runs after each step."""

    def __init__(self, cfg: Config, callbacks: dict[str, Callable[["Trainer"], None]] | None = None,
                 dist: DistContext = SINGLE_PROCESS, device: torch.device | None = None) -> None:
        self.cfg = cfg
        self.callbacks = callbacks or {}
        self.stop_requested: str | None = None  # set by a signal, on this rank, at any moment
        self.stopping = False  # the job's decision, taken by every rank at the same point
        self.dist = dist
        t = cfg.train
        check_training_config(cfg)
        configure_threads(threads_per_process(t.threads, dist))
        seed_everything(t.seed)
        self.device = device or select_device(t.device)
        self.amp_dtype = resolve_amp(t.amp, self.device)
        self.info = dataset_info(cfg.data)
        self._build_data()
        self._build_model()
        self.epoch, self.step_in_epoch, self.global_step, self.epoch_loss_sum = 0, 0, 0, 0.0
        self.best_score = -math.inf
        self.best_metrics: dict[str, Any] | None = None
        # The weight average starts from the weights training starts from (fresh, init_from or resumed).
        self.average = WeightAverage(self.model, t.ema_decay) if t.ema_decay > 0 else None
        if t.resume:
            self._resume(t.resume)
        elif t.init_from:
            self._init_from(t.init_from)
        self.run_dir = self._make_run_dir()
        self.logger = MetricsLogger(self.run_dir, t.log_format) if dist.is_main else None
        if self.logger is not None and t.resume:  # epochs logged after the checkpoint was written are redone
            self.logger.trim(self.epoch)

    # ------------------------------------------------------------------ setup
    def _build_data(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        pin = self.device.type == "cuda"
        self.train_set = build_dataset(cfg.data, cfg.data.train_split, train=True)
        if len(self.train_set) < t.batch_size:
            raise SeglabError(f"The training split has {len(self.train_set)} images, fewer than train.batch_size={t.batch_size}. "
                              "Lower --train.batch_size or add data.")
        rank_batch = split_batch_size(t.batch_size, self.dist, len(self.train_set))
        # Validation runs at the labels' native resolution; the model sees data.image_size.
        val_data = dataclasses.replace(cfg.data, image_size=None)
        self.val_set = build_dataset(val_data, cfg.data.val_split, train=False) if t.val_every > 0 else None
        if self.val_set is not None and self.dist.active:  # each rank scores its own block, none twice
            self.val_set = torch.utils.data.Subset(self.val_set, shard_range(len(self.val_set), self.dist))
        self.train_loader = build_train_loader(self.train_set, t.batch_size, t.seed, cfg.data.num_workers, pin,
                                               self.dist.rank, self.dist.world_size)
        self.val_loader = (build_eval_loader(self.val_set, max(1, rank_batch // 2), cfg.data.num_workers, pin)
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
        # self.model stays the plain module (checkpoints, validation); steps run through DDP in a job.
        self.model, self.train_model = prepare_model(self.model, self.dist, self.device, t.sync_bn)
        self.optimizer = build_optimizer(self.model, t)
        self.scheduler = build_scheduler(self.optimizer, t, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def _make_run_dir(self) -> Path:
        t = self.cfg.train
        if t.resume:
            run_dir = Path(t.resume).resolve().parent
        else:
            name = t.run_name or f"{datetime.now():%Y%m%d-%H%M%S}-{self.cfg.model.name}-{self.cfg.data.dataset}"
            run_dir = _unused_run_dir(Path(t.out_dir), name) if self.dist.is_main else None
            run_dir = self.dist.broadcast(run_dir)  # rank 0 names the folder (clocks and races differ)
        if self.dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(run_dir)
            dump_config(self.cfg, run_dir / "config.yaml")
        return run_dir

    def _init_from(self, path: str) -> None:
        ckpt = read_checkpoint(path, map_location=self.device)
        check_compatible(ckpt, self.cfg.model.name, self.info.num_classes, path, task=self.cfg.task)
        self.model.load_state_dict(ckpt.model)  # a fresh weight average copies these at its first update

    @property
    def eval_model(self) -> torch.nn.Module:
        """What is validated, checkpointed and shipped: the weight average when there is one."""
        return self.average.module if self.average is not None else self.model

    def _resume(self, path: str) -> None:
        ckpt = read_checkpoint(path, map_location=self.device)
        check_compatible(ckpt, self.cfg.model.name, self.info.num_classes, path, task=self.cfg.task)
        state = ckpt.training
        if state is None or not state.resumable:
            raise SeglabError(f"Checkpoint {path!r} holds weights only (no optimizer state), so it cannot resume a run. "
                              "Resume from the run's last.pt.")
        # A run with a weight average stored the trained weights apart (its checkpoint weights are the average).
        self.model.load_state_dict(state.raw_model if state.raw_model is not None else ckpt.model)
        if self.average is not None:
            self.average.load_state_dict(ckpt.model, updates=state.ema_updates or 0)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.scaler.load_state_dict(state.scaler)
        self.epoch, self.step_in_epoch, self.global_step = state.epoch, state.step_in_epoch, state.global_step
        self.epoch_loss_sum = state.epoch_loss_sum or 0.0
        self.best_score, self.best_metrics = state.best_score, state.best_metrics
        set_rng_state(state.rng)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, full: bool = True) -> Checkpoint:
        """What a checkpoint holds; ``full`` adds what resuming needs."""
        cfg = self.cfg
        meta = CheckpointMeta(**self.task.checkpoint_metadata(), model_name=cfg.model.name,
                              model_kwargs=dict(cfg.model.kwargs), mean=list(cfg.data.mean), std=list(cfg.data.std),
                              seglab_version=__version__, config=config_to_dict(cfg))
        training = TrainingState(self.epoch, self.step_in_epoch, self.global_step, self.best_score, self.best_metrics,
                                 epoch_loss_sum=self.epoch_loss_sum)
        if full:
            training = dataclasses.replace(training, optimizer=self.optimizer.state_dict(),
                                           scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
                                           rng=rng_state())
            if self.average is not None:
                training = dataclasses.replace(training, raw_model=_cpu_weights(self.model),
                                               ema_updates=self.average.updates)
        weights = _cpu_weights(self.eval_model)
        return Checkpoint(meta, weights, training)

    def save(self, name: str, full: bool = True) -> Path:
        path = self.run_dir / name
        bad = nonfinite_tensors(self.model.state_dict())  # on every rank, so all stop together
        if bad:
            last = self.run_dir / "last.pt"
            kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint had been written"
            raise TrainingDiverged(f"The weights became NaN or inf ({', '.join(bad[:3])}) by epoch {self.epoch}, step "
                                   f"{self.global_step}; {name} was not written and {kept}. Lower --train.lr or set "
                                   "--train.grad_clip 1.0.")
        if self.dist.is_main:  # every rank holds the same weights; one writes them
            save_checkpoint(path, self.checkpoint(full))
        return path

    def say(self, text: str) -> None:
        if self.dist.is_main:
            print(text, flush=True)

    # ------------------------------------------------------------------ loop
    def fit(self) -> TrainResult:
        t = self.cfg.train
        history: list[dict[str, Any]] = []
        job = f" x {self.dist.world_size} processes ({self.dist.backend})" if self.dist.active else ""
        self.say(f"seglab: training {self.cfg.model.name} on {self.cfg.data.dataset} ({len(self.train_set)} images, "
                 f"{self.info.num_classes} classes) on {self.device}{job}, precision {self.amp_dtype or 'fp32'}; "
                 f"run folder {self.run_dir}")
        with StopOnSignal(self), closing_loaders(self.train_loader, self.val_loader):
            while self.epoch < t.epochs and not self.stopping:
                record = self._train_epoch()
                if self._agree_to_stop():
                    break
                self.epoch += 1
                self.step_in_epoch, self.epoch_loss_sum = 0, 0.0
                record["epoch"] = self.epoch
                if self.val_loader is not None and (self.epoch % t.val_every == 0 or self.epoch == t.epochs):
                    record.update(self._loader_call(lambda _: self._validate(), None) or {})
                history.append(record)
                self.save("last.pt")
                if self.logger is not None:  # after the checkpoint: a crash between the two never logs twice
                    self.logger.log(record)
                self.say(epoch_line(record, t.epochs))
        if self.stopping:
            path = self.save("last.pt")
            self.say(f"\nseglab: stopped by {self.stop_requested} at epoch {self.epoch} step {self.step_in_epoch}; "
                  f"resumable checkpoint written to {path}.\nResume with: seglab train {self.run_dir / 'config.yaml'} "
                  f"--train.resume {path}")
        if self.best_metrics is None and not self.stopping:
            self.save("best.pt", full=False)  # no validation ran: the final weights are the best we know
        if self.logger is not None:
            self.logger.close()
        best = self.run_dir / "best.pt"
        self._write_summary()
        self.dist.barrier()  # no rank leaves while rank 0 still writes
        return TrainResult(self.run_dir, best if best.exists() else None, self.run_dir / "last.pt",
                           self.best_metrics, history, interrupted=self.stopping,
                           main_process=self.dist.is_main)

    def _train_epoch(self) -> dict[str, Any]:
        t = self.cfg.train
        self.model.train()
        self.train_loader.sampler.set_epoch(self.epoch, skip=self.step_in_epoch * t.batch_size)
        steps_left = self.steps_per_epoch - self.step_in_epoch
        # disable=None: tqdm draws only on a terminal, so CI logs keep just the per-epoch lines.
        bar = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{t.epochs}",
                   disable=None if t.progress and self.dist.is_main else True, dynamic_ncols=True, mininterval=1.0, leave=False)
        seen, done, start = 0, 0, time.perf_counter()
        batches = self._loader_call(iter, self.train_loader)
        for _ in range(steps_left):
            item = None if batches is None else self._loader_call(next, batches)
            if self._agree_to_stop():  # before the step, so a rank without a batch never enters it
                break
            batch = self.task.prepare_batch(item, self.device, t.channels_last)
            loss = self._train_step(batch)
            self.epoch_loss_sum += loss
            done += 1
            seen += self.task.batch_size(batch) * self.dist.world_size  # the job's images, not this rank's
            rate = seen / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}", img_s=f"{rate:.1f}", refresh=False)
            bar.update(1)
            if "on_step_end" in self.callbacks:
                self.callbacks["on_step_end"](self)
        bar.close()
        elapsed = time.perf_counter() - start
        # The whole epoch's mean, also across a resume (epoch_loss_sum travels in last.pt).
        return {"step": self.global_step, "lr": self.scheduler.get_last_lr()[0],
                "train_loss": self.epoch_loss_sum / max(1, self.step_in_epoch), **self.task.epoch_log(),
                "train_images_per_s": seen / elapsed if elapsed > 0 else 0.0, "epoch_seconds": elapsed}

    def _loader_call(self, call: Any, arg: Any) -> Any:
        """``call(arg)`` on the loader (``iter`` starts an epoch, ``next`` takes a batch), or None when a
        stop was requested and the workers are gone with it.

        A SIGTERM sent to the process group ends the workers too; with persistent workers the loader
        may notice at the start of the next epoch (``iter``) as well as at a batch (``next``).
        """
        try:
            return call(arg)
        except (RuntimeError, OSError, EOFError):
            if self.stop_requested:
                return None
            raise

    def _agree_to_stop(self) -> bool:
        """Whether any rank was asked to stop; every rank then stops at the same step.

        The answer is the collective one, never the local flag read again: a signal landing just
        after the all-reduce would otherwise make this rank leave a step the others enter.
        """
        self.stopping = self.dist.any(bool(self.stop_requested))
        if self.stopping and not self.stop_requested:
            self.stop_requested = "a signal to another rank"
        return self.stopping

    def _train_step(self, batch: Any) -> float:
        """One optimisation step on a batch prepared by the task, which also computes the loss."""
        t = self.cfg.train
        with autocast(self.device, self.amp_dtype):
            output = self.task.forward(self.train_model, batch)
        loss = self.task.loss(output, batch)
        value = self.dist.mean(loss.item())  # the job's loss: every rank stops together on NaN
        if not math.isfinite(value):
            last = self.run_dir / "last.pt"
            kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint had been written yet"
            raise TrainingDiverged(f"The training loss became {value} at epoch {self.epoch + 1}, step {self.step_in_epoch + 1}; "
                                   f"training stopped and {kept}. Lower --train.lr, set --train.grad_clip 1.0, "
                                   "or check the data for broken masks (`seglab data check`).")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # DDP averages the gradients of the ranks' shares here
        if t.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.average is not None:
            self.average.update(self.model)
        self.step_in_epoch += 1
        self.global_step += 1
        return value

    def _validate(self) -> dict[str, Any]:
        t = self.cfg.train
        start = time.perf_counter()
        # The plain module: DDP's forward would sync buffers, and the ranks' shards may differ in length.
        results = evaluate_model(self.eval_model, self.val_loader, self.task, self.device, self.amp_dtype,
                                 channels_last=t.channels_last, combine=lambda m: combine_meters(m, self.dist))
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
        if self.best_metrics is None or not self.dist.is_main:
            return
        atomic_write_text(self.run_dir / "metrics.json", dumps(
            {"split": self.cfg.data.val_split, "class_names": list(self.info.class_names), **self.best_metrics}, indent=2))
        print(format_metrics_table(self.best_metrics, list(self.info.class_names)))


def _cpu_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}
