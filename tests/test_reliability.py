"""Defects found by trying seglab as a new user would (issue 14, item 4): each has a test here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seglab.core.config import Config, DataConfig, LossConfig, ModelConfig, TrainConfig, load_config
from seglab.core.errors import SeglabError
from seglab.core.version import __version__
from seglab.engine import TrainingDiverged, train
from seglab.tasks.checkpoint import NonFiniteWeights, load_checkpoint, read_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def tiny(tmp_path: Path, data: dict | None = None, **train_kw) -> Config:
    train_args = dict(epochs=2, batch_size=4, optimizer="sgd", lr=0.05, out_dir=str(tmp_path), run_name="run",
                      progress=False, val_bf=False, seed=0, threads=1, amp="none")
    train_args.update(train_kw)
    data_args = dict(dataset="synthetic", synthetic_train=8, synthetic_val=2, synthetic_size=[32, 48], num_workers=0)
    data_args.update(data or {})
    return Config(model=ModelConfig(name="unet", kwargs={"depth": 1, "base_channels": 4, "batch_norm": False}),
                  data=DataConfig(**data_args), loss=LossConfig(class_weights="none"), train=TrainConfig(**train_args))


def seglab_cli(*args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "seglab", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or REPO)


# ----------------------------------------------------------------------------- non-finite weights


def test_weights_that_turn_inf_are_never_checkpointed(tmp_path):
    def poison(trainer):
        if trainer.global_step == 3:  # epoch 2 (2 steps per epoch): last.pt of epoch 1 exists
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("inf"))

    # The loss of the next step may still be finite (inf weights behind a ReLU give NaN or not):
    # what matters is that the checkpoint written at the epoch's end is refused.
    with pytest.raises(TrainingDiverged, match=r"NaN or inf|loss became"):
        train(tiny(tmp_path), callbacks={"on_step_end": poison})
    last = tmp_path / "run" / "last.pt"
    ckpt = read_checkpoint(last)  # still loads: finite weights of epoch 1
    assert ckpt.training.epoch == 1
    assert all(torch.isfinite(v).all() for v in ckpt.model.values() if v.is_floating_point())
    assert not (tmp_path / "run" / "best.pt").exists() or read_checkpoint(tmp_path / "run" / "best.pt")


def test_checkpoints_with_nonfinite_weights_are_neither_written_nor_loaded(tmp_path):
    result = train(tiny(tmp_path, epochs=1))
    state = load_checkpoint(result.last_checkpoint)
    state["model"] = {k: v.clone() for k, v in state["model"].items()}
    first = next(iter(state["model"]))
    state["model"][first][...] = float("nan")
    with pytest.raises(NonFiniteWeights, match="Not writing"):
        save_checkpoint(tmp_path / "bad.pt", state)
    assert not (tmp_path / "bad.pt").exists()
    torch.save(state, tmp_path / "bad.pt")  # written by something else
    with pytest.raises(NonFiniteWeights, match=f"holds NaN or inf weights \\({first}"):
        read_checkpoint(tmp_path / "bad.pt")
    predicted = seglab_cli("predict", str(tmp_path / "bad.pt"), str(tmp_path / "none.png"), "--out", str(tmp_path / "o"))
    assert predicted.returncode == 2 and "NaN or inf weights" in " ".join(predicted.stderr.split())


# ----------------------------------------------------------------------------- config values


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("3e-4", 3e-4), ("1e30", 1e30), ("2.5E-2", 0.025)])
def test_scientific_notation_is_a_number_on_the_command_line_and_in_recipes(tmp_path, text, value):
    assert load_config(None, ["--train.lr", text]).train.lr == value
    assert load_config(None, [f"--train.grad_clip={text}"]).train.grad_clip == value  # optional float
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"train:\n  lr: {text}\n  weight_decay: {text}\n")
    cfg = load_config(recipe)
    assert cfg.train.lr == value and cfg.train.weight_decay == value


def test_words_are_still_not_numbers():
    with pytest.raises(SeglabError, match="expects a number, got 'fast'"):
        load_config(None, ["--train.lr", "fast"])


@pytest.mark.parametrize("overrides, message", [
    ({"lr": 0.0}, "train.lr must be a positive number, got 0.0"),
    ({"lr": -0.1}, "train.lr must be a positive number"),
    ({"batch_size": 0}, "train.batch_size must be at least 1, got 0"),
    ({"epochs": 0}, "train.epochs must be at least 1, got 0"),
])
def test_settings_that_cannot_train_are_clear_errors_before_any_work(tmp_path, overrides, message):
    with pytest.raises(SeglabError, match=message):
        train(tiny(tmp_path, **overrides))
    assert not (tmp_path / "run").exists()  # epochs 0 no longer writes an untrained best.pt


def test_scale_jitter_without_a_crop_is_a_clear_error(tmp_path):
    with pytest.raises(SeglabError, match="set --data.crop_size"):
        train(tiny(tmp_path, data={"crop_size": None, "scale_range": [0.5, 1.5]}))


# ----------------------------------------------------------------------------- checkpoint files


def test_a_newer_checkpoint_format_names_the_seglab_that_wrote_it(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format": "seglab-checkpoint-v7", "seglab_version": "9.3.0", "model": {}}, path)
    with pytest.raises(SeglabError, match=rf"newer seglab \(9.3.0, format seglab-checkpoint-v7\); this is seglab {__version__}"):
        read_checkpoint(path)


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root writes into read-only folders; the OSError path is tested with a full disk below")
def test_a_permission_error_while_saving_names_the_path(tmp_path):
    run = train(tiny(tmp_path, epochs=1))
    os.chmod(run.run_dir, 0o500)
    try:
        with pytest.raises(SeglabError, match="Could not write checkpoint .*last.pt"):
            save_checkpoint(run.run_dir / "last.pt", load_checkpoint(run.last_checkpoint))
    finally:
        os.chmod(run.run_dir, 0o700)


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run = train(tiny(tmp_path, epochs=1))
    before = run.last_checkpoint.read_bytes()

    def full_disk(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SeglabError, match=r"Could not write checkpoint '.*last.pt' \(No space left on device\); the previous"):
        save_checkpoint(run.last_checkpoint, load_checkpoint(run.last_checkpoint))
    assert run.last_checkpoint.read_bytes() == before
    assert not list(run.run_dir.glob(".*.tmp"))
