"""Defects found by trying seglab as a new user would (issue 14, item 4): each has a test here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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


def seglab_cli(*args: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
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


# ----------------------------------------------------------------------------- loader workers


def _folder_with_a_corrupt_image(root: Path, n: int = 8, bad: int = 5) -> Path:
    import numpy as np
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(rng.integers(0, 3, (32, 48), dtype=np.uint8)).save(root / "masks" / f"{i}.png")
    path = root / "images" / f"{bad}.png"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    return path


def _folder_recipe(tmp_path: Path, root: Path, **train: object) -> Path:
    import yaml

    recipe = {"model": {"name": "unet", "kwargs": {"depth": 1, "base_channels": 4, "batch_norm": False}},
              "data": {"dataset": "folder", "root": str(root), "num_classes": 3, "num_workers": 1},
              "loss": {"class_weights": "none"},
              "train": {"epochs": 2, "batch_size": 2, "threads": 1, "amp": "none", "val_every": 0, "progress": False,
                        "out_dir": str(tmp_path / "runs"), "run_name": "run", **train}}
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_an_error_in_a_loader_worker_ends_the_process_with_the_seglab_message_alone(tmp_path):
    bad = _folder_with_a_corrupt_image(tmp_path / "data")
    done = seglab_cli("train", str(_folder_recipe(tmp_path, tmp_path / "data")))  # a hang times out
    assert done.returncode == 2, done.stderr
    flat = "".join(done.stderr.split())  # the CLI wraps lines (also at hyphens in paths)
    assert flat.startswith(f"seglaberror:Cannotreadimage'{bad}'"), done.stderr
    assert "Traceback" not in flat and "DataLoaderworker" not in flat
    assert "`seglabdatacheck`" in flat


def test_sigterm_to_the_process_group_with_loader_workers_stops_gracefully(tmp_path):
    import numpy as np
    from PIL import Image

    root = tmp_path / "data"
    _folder_with_a_corrupt_image(root, n=8, bad=0)
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(root / "images" / "0.png")  # all readable
    recipe = _folder_recipe(tmp_path, root, epochs=500)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "seglab", "train", str(recipe)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    run = tmp_path / "runs" / "run"
    try:
        deadline = time.monotonic() + 240
        while not (run / "metrics.jsonl").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)  # the main process and its loader worker, as `kill -TERM -PGID` does
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, out + err
    assert "stopped by SIGTERM" in out
    assert load_checkpoint(run / "last.pt")["optimizer"] is not None


# ----------------------------------------------------------------------------- run folder bookkeeping


def test_resume_cleans_temporaries_trims_the_log_and_keeps_the_epoch_mean_loss(tmp_path):
    full = train(tiny(tmp_path / "a", epochs=3, batch_size=2))

    def stop_mid_epoch_2(trainer):
        if trainer.global_step == 6:  # 4 steps per epoch
            trainer.stop_requested = "test"

    part = train(tiny(tmp_path / "b", epochs=3, batch_size=2), callbacks={"on_step_end": stop_mid_epoch_2})
    run = part.run_dir
    (run / ".last.pt.k2j4x9ab.tmp").write_bytes(b"orphan of a killed save")
    with (run / "metrics.jsonl").open("a") as f:  # as if killed after logging an epoch but before its last.pt
        f.write('{"epoch": 2, "train_loss": 9.9}\n')
    resumed = train(tiny(tmp_path / "b", epochs=3, batch_size=2, resume=str(part.last_checkpoint)))
    assert not list(run.glob(".*.tmp"))
    import json

    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in logged] == [1, 2, 3]
    reference = [json.loads(line) for line in (full.run_dir / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(reference, logged):  # epoch 2's mean covers its steps before and after the resume
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    assert resumed.history[-1]["epoch"] == 3


# ----------------------------------------------------------------------------- messages


def test_every_command_named_in_a_message_exists():
    """Each `seglab WORD [ACTION]` quoted in the source is a real subcommand (and action)."""
    import argparse
    import re

    from seglab.apps.cli import _parser

    def choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    commands = choices(_parser())
    named = set()
    for path in (REPO / "src" / "seglab").rglob("*.py"):
        for word, action in re.findall(r"`seglab ([a-z][a-z0-9-]*)(?: ([a-z][a-z0-9-]*))?", path.read_text()):
            named.add((word, action, path.name))
    assert len(named) > 10
    for word, action, where in sorted(named):
        assert word in commands, f"{where} names `seglab {word}`, which is not a command"
        actions = choices(commands[word])
        if actions and action:
            assert action in actions, f"{where} names `seglab {word} {action}`, which is not an action"


# ----------------------------------------------------------------------------- predict and evaluate


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt")
    return train(tiny(out, epochs=1)).last_checkpoint


def test_predict_continues_past_bad_images_lists_them_and_fails(tmp_path, tiny_checkpoint):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "c.png"):
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / name)
    (folder / "b.png").write_bytes(b"")  # zero bytes, sorted between the good ones
    done = seglab_cli("predict", str(tiny_checkpoint), str(folder), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    flat = " ".join(done.stderr.split())
    assert "1 of 3 images could not be predicted" in flat and "b.png" in flat, flat
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{s}_{k}.png" for s in "ac" for k in ("labels", "color", "overlay"))


def test_a_huge_image_asks_for_tiles_before_the_forward_pass(tiny_checkpoint, monkeypatch):
    import numpy as np

    from seglab.inference.predictor import Segmenter

    seg = Segmenter.from_checkpoint(tiny_checkpoint, device="cpu")
    monkeypatch.setattr(Segmenter, "max_untiled_pixels", 40 * 40)  # an 8000x8000 image, scaled down
    image = np.zeros((48, 64, 3), np.uint8)
    with pytest.raises(SeglabError, match=r"64x48 .* --tile 1024 1024"):
        seg.predict(image)
    tiled = Segmenter.from_checkpoint(tiny_checkpoint, device="cpu", tile=(32, 32), tile_overlap=8)
    assert tiled.predict(image).shape == (48, 64)


@pytest.mark.parametrize("override", ["--model.name", "--loss.name", "--train.lr"])
def test_evaluate_refuses_overrides_that_cannot_apply(tiny_checkpoint, override):
    from seglab.apps.evaluate import evaluate_checkpoint

    value = {"--model.name": "segnet", "--loss.name": "dice", "--train.lr": "0.1"}[override]
    with pytest.raises(SeglabError, match=f"own model, so {override} cannot apply"):
        evaluate_checkpoint(str(tiny_checkpoint), [override, value], compute_bf=False, device="cpu")
    assert evaluate_checkpoint(str(tiny_checkpoint), ["--data.num_workers", "0"], compute_bf=False,
                               device="cpu")["num_images"] == 2


# ----------------------------------------------------------------------------- seglab data check


def _pairs(root: Path, n: int = 3, suffix: str = ".png") -> None:
    import numpy as np
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        Image.fromarray(np.full((24, 32, 3), 40 * i, np.uint8)).save(root / "images" / f"{i}{suffix}", quality=95)
        Image.fromarray((np.arange(24 * 32).reshape(24, 32) % 3).astype(np.uint8)).save(root / "masks" / f"{i}.png")


def test_data_check_decodes_jpegs_fully_and_names_empty_files(tmp_path):
    import numpy as np
    from PIL import Image

    from seglab.data import check_dataset

    _pairs(tmp_path, suffix=".jpg")
    noisy = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(tmp_path / "images" / "0.jpg", quality=95)
    Image.fromarray((np.arange(240 * 320).reshape(240, 320) % 3).astype(np.uint8)).save(tmp_path / "masks" / "0.png")
    data = (tmp_path / "images" / "0.jpg").read_bytes()
    (tmp_path / "images" / "0.jpg").write_bytes(data[: len(data) // 2])  # header intact, pixels cut off
    (tmp_path / "images" / "1.jpg").write_bytes(b"")
    report = check_dataset(tmp_path)
    text = report.format()
    assert not report.ok
    assert "0.jpg" in text and "1.jpg (empty: 0 bytes)" in text, text


def test_data_check_takes_the_ignore_index_its_messages_ask_for(tmp_path):
    import numpy as np
    from PIL import Image

    _pairs(tmp_path)
    mask = (np.arange(24 * 32).reshape(24, 32) % 3).astype(np.uint8)
    mask[:4] = 99  # void marked 99
    Image.fromarray(mask).save(tmp_path / "masks" / "0.png")
    first = seglab_cli("data", "check", str(tmp_path), "--num-classes", "3")
    assert first.returncode == 1 and "--ignore-index" in " ".join(first.stdout.split())
    second = seglab_cli("data", "check", str(tmp_path), "--num-classes", "3", "--ignore-index", "99")
    assert second.returncode == 0, second.stdout + second.stderr


def test_data_check_explains_images_without_masks(tmp_path):
    from seglab.data import check_dataset

    _pairs(tmp_path)
    for f in (tmp_path / "masks").iterdir():
        f.unlink()
    (tmp_path / "masks").rmdir()
    report = check_dataset(tmp_path)
    assert not report.ok and "has no masks/ folder beside it" in report.format()
