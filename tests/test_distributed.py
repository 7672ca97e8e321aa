"""Distributed training: 2 processes with gloo on loopback, launched as a user launches them.

Each job is ``python -m torch.distributed.run --nproc-per-node 2 -m seglab train RECIPE`` with a
loopback rendezvous on a free port, ``OMP_NUM_THREADS=1`` and a subprocess timeout, so a hang fails
the test instead of blocking CI. The model is a 2-level U-Net without BatchNorm and the loss has no
class weights, and the synthetic data has no void pixels (scales >= 1, so random crops never pad with
the ignore index): every rank's loss averages the same number of pixels, so the mean of the two ranks' half-batch
gradients (what DDP computes) is the gradient of the global batch, and the 2-process run must follow
the 1-process run up to float summation order (see docs/distributed.md, "What the tests prove").
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from seglab.core.config import load_config
from seglab.core.errors import SeglabError
from seglab.engine import train
from seglab.engine.distributed import (DistContext, _resolve_backend, distributed_session, prepare_model,
                                       shard_range, split_batch_size)
from seglab.engine.loader import SeededSampler
from seglab.tasks.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
RECIPE = {
    "model": {"name": "unet", "kwargs": {"depth": 2, "base_channels": 4, "batch_norm": False}},
    "data": {"dataset": "synthetic", "synthetic_train": 16, "synthetic_val": 6, "synthetic_size": [32, 48],
             "crop_size": [32, 48], "scale_range": [1.0, 1.3], "num_workers": 0},
    "loss": {"class_weights": "none"},
    "train": {"epochs": 2, "batch_size": 4, "optimizer": "sgd", "lr": 0.05, "schedule": "poly", "seed": 3,
              "threads": 1, "amp": "none", "progress": False, "val_bf": True},
}
#: Relative tolerance on every weight tensor (scaled by its largest entry) after 8 SGD steps. Measured:
#: at most 1.2e-6 (float32 sums of 2 half-batches and a gloo all-reduce vs one batch); 1e-5 leaves room.
RTOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recipe(tmp_path: Path, **train: object) -> Path:
    recipe = {**RECIPE, "train": {**RECIPE["train"], "out_dir": str(tmp_path / "runs"), **train}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _torchrun_command(recipe: Path, *overrides: str, nproc: int = 2) -> tuple[list[str], dict[str, str]]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", f"--nproc-per-node={nproc}",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}",
           "-m", "seglab", "train", str(recipe), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    return cmd, env


def _kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and its workers (their own session), so no orphan outlives a failed test."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def torchrun(recipe: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd, env = _torchrun_command(recipe, *overrides)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        _kill_job(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _assert_same_weights(a_path: Path, b_path: Path) -> None:
    a, b = load_checkpoint(a_path)["model"], load_checkpoint(b_path)["model"]
    assert a.keys() == b.keys()
    for k in a:
        scale = float(a[k].abs().max())
        torch.testing.assert_close(b[k], a[k], rtol=RTOL, atol=RTOL * scale, msg=f"{k} differs")


@pytest.mark.parametrize("extra", [[], ["--train.ema_decay", "0.9"]], ids=["plain", "weight_average"])
def test_two_processes_train_like_one(tmp_path, extra):
    recipe = _recipe(tmp_path)
    one = train(load_config(recipe, ["--train.run_name", "one", *extra]))
    job = torchrun(recipe, "--train.run_name", "two", *extra)
    assert job.returncode == 0, job.stdout + job.stderr
    two = tmp_path / "runs" / "two"
    _assert_same_weights(one.last_checkpoint, two / "last.pt")
    if extra:  # the average (validated, saved) and the trained weights both match one process
        raw_one, raw_two = load_checkpoint(one.last_checkpoint)["raw_model"], load_checkpoint(two / "last.pt")["raw_model"]
        for k in raw_one:
            torch.testing.assert_close(raw_two[k], raw_one[k], rtol=RTOL, atol=RTOL * float(raw_one[k].abs().max()))
    best_one, best_two = load_checkpoint(one.best_checkpoint), load_checkpoint(two / "best.pt")
    for key in ("confusion", "num_images", "num_pixels", "miou", "global_acc", "class_acc", "bf", "epoch"):
        assert best_two["best_metrics"][key] == best_one["best_metrics"][key], key  # identical, not close
    assert best_two["best_metrics"]["num_images"] == 6  # every val image once: no padding duplicates
    # Rank 0 alone writes and prints: the same files as one process, one log line per epoch, one summary.
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.run_dir.iterdir())
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 2
    assert job.stdout.count("epoch 2/2") == 1 and job.stdout.count("seglab: done") == 1
    assert "x 2 processes (gloo)" in job.stdout


def test_two_processes_resume_a_one_process_checkpoint(tmp_path):
    recipe = _recipe(tmp_path)
    full = train(load_config(recipe, ["--train.run_name", "full"]))

    def stop_at_6(trainer):
        if trainer.global_step == 6:  # mid-epoch 2 of 4 steps each
            trainer.stop_requested = "test"

    part = train(load_config(recipe, ["--train.run_name", "part"]), callbacks={"on_step_end": stop_at_6})
    assert part.interrupted
    job = torchrun(recipe, "--train.resume", str(part.last_checkpoint))
    assert job.returncode == 0, job.stdout + job.stderr
    _assert_same_weights(full.last_checkpoint, part.last_checkpoint)
    assert load_checkpoint(part.last_checkpoint)["global_step"] == 8


def _worker_pids(agent: int) -> dict[int, int]:
    """rank -> pid of the torchrun agent's worker processes (from their environment, Linux /proc)."""
    found = {}
    for child in Path(f"/proc/{agent}/task/{agent}/children").read_text().split():
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        for item in env:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(child)
    return found


def _start_and_hit_rank1(tmp_path: Path, sig: int) -> tuple[subprocess.CompletedProcess, float, Path]:
    recipe = _recipe(tmp_path, epochs=100, val_every=0)
    cmd, env = _torchrun_command(recipe, "--train.run_name", "long")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)
    run = tmp_path / "runs" / "long"
    try:
        deadline = time.monotonic() + 240  # startup: 3 interpreters importing torch on shared cores
        while not (run / "metrics.jsonl").exists():  # an epoch done: both ranks are in the loop
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        os.kill(_worker_pids(proc.pid)[1], sig)
        hit = time.monotonic()
        out, err = proc.communicate(timeout=60)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err), time.monotonic() - hit, run
    finally:
        _kill_job(proc)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker processes through Linux /proc")
def test_sigterm_to_one_rank_stops_all_with_a_resumable_checkpoint(tmp_path):
    job, seconds, run = _start_and_hit_rank1(tmp_path, signal.SIGTERM)
    assert seconds < 30, job.stderr
    assert "seglab: stopped by a signal to another rank" in job.stdout, job.stdout + job.stderr
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["optimizer"] is not None and ckpt["global_step"] >= 4
    assert not list(run.glob(".*.tmp"))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker processes through Linux /proc")
def test_killed_rank_fails_the_job_fast_with_a_message(tmp_path):
    job, seconds, _ = _start_and_hit_rank1(tmp_path, signal.SIGKILL)
    assert job.returncode != 0
    assert seconds < 30
    # Rank 0 either reports its peer's disappearance or is stopped by torchrun, which names the dead rank.
    assert "exitcode: -9" in job.stderr or "collective operation failed" in job.stderr, job.stderr


# ----------------------------------------------------------------------------- bad input, in-process


def test_global_batch_splits_over_ranks_or_says_how():
    assert split_batch_size(8, DistContext(0, 2), 16) == 4
    with pytest.raises(SeglabError, match="batch_size=5 is the global batch.*4 or 6"):
        split_batch_size(5, DistContext(0, 2), 16)
    with pytest.raises(SeglabError, match="3 processes but the training split only 2 images"):
        split_batch_size(3, DistContext(0, 3), 2)


def test_rank_shards_are_disjoint_and_make_up_the_one_process_order():
    one = SeededSampler(10, seed=1)
    one.set_epoch(2, skip=4)
    ranks = [SeededSampler(10, seed=1, rank=r, world_size=2, global_batch=4) for r in range(2)]
    for s in ranks:
        s.set_epoch(2, skip=4)
    a, b = (list(s) for s in ranks)
    assert len(a) == len(ranks[0]) == 2 and len(b) == 2  # one global batch of 4 left (10 // 4 = 2, one skipped)
    assert a + b == list(one)[:4]
    assert [list(shard_range(7, DistContext(r, 3))) for r in range(3)] == [[0, 1], [2, 3], [4, 5, 6]]


def test_nccl_without_cuda_and_sync_bn_on_cpu_are_clear_errors():
    if not torch.cuda.is_available():
        with pytest.raises(SeglabError, match="nccl needs CUDA GPUs"):
            _resolve_backend("nccl", "auto")
    assert _resolve_backend("auto", "cpu") == "gloo"
    with pytest.raises(SeglabError, match="train.dist_backend must be one of"):
        _resolve_backend("mpi2", "auto")
    with pytest.raises(SeglabError, match="sync_bn needs CUDA"):
        prepare_model(torch.nn.BatchNorm2d(2), DistContext(), torch.device("cpu"), sync_bn=True)


def test_unreachable_rendezvous_is_a_clear_error_within_seconds(monkeypatch):
    port = _free_port()  # nothing listens there
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    start = time.monotonic()
    with pytest.raises(SeglabError, match=f"could not join the job's rendezvous at 127.0.0.1:{port}"):
        with distributed_session("gloo", "cpu", timeout_s=1):
            pass
    assert time.monotonic() - start < 30


INSTANCE_RECIPE = {
    "task": "instance",
    "model": {"name": "mask_rcnn_resnet18_fpn",
              "kwargs": {"min_size": 64, "max_size": 80, "fpn_channels": 32, "representation_size": 64,
                         "mask_channels": 16, "frozen_bn": True}},
    "data": {"dataset": "synthetic_instances", "synthetic_train": 4, "synthetic_val": 3, "synthetic_size": [64, 80],
             "num_workers": 0},
    # lr 1e-30 leaves every float32 weight as it was (and frozen batch norms keep their statistics), so the
    # 1- and 2-process runs validate the same model: their merged COCO figures must be identical.
    "train": {"epochs": 1, "batch_size": 2, "optimizer": "adamw", "lr": 1e-30, "seed": 1, "select_metric": "mask_ap",
              "val_bf": False, "progress": False, "amp": "none", "threads": 1},
}


def test_instance_task_trains_and_validates_across_two_processes(tmp_path):
    recipe = tmp_path / "instance.yaml"
    recipe.write_text(yaml.safe_dump({**INSTANCE_RECIPE,
                                      "train": {**INSTANCE_RECIPE["train"], "out_dir": str(tmp_path / "runs")}}))
    one = train(load_config(recipe, ["--train.run_name", "one"]))
    job = torchrun(recipe, "--train.run_name", "two")
    assert job.returncode == 0, job.stdout + job.stderr
    best_one = load_checkpoint(one.best_checkpoint)["best_metrics"]
    best_two = load_checkpoint(tmp_path / "runs" / "two" / "best.pt")["best_metrics"]
    for key in ("mask_ap", "mask_ap50", "box_ap", "mask_iou", "miou", "global_acc"):
        assert best_two[key] == best_one[key] or (best_two[key] != best_two[key] and best_one[key] != best_one[key]), key
    assert "x 2 processes (gloo)" in job.stdout
