"""Training engine: exact resume, NaN stop, graceful signals, atomic checkpoints, schedules."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from seglab.core.config import Config, DataConfig, LossConfig, ModelConfig, TrainConfig
from seglab.engine import TrainingDiverged, train
from seglab.tasks.checkpoint import load_checkpoint, save_checkpoint
from seglab.engine.optim import lr_factor
from seglab.core.errors import SeglabError
from seglab.inference.predictor import Segmenter


def tiny_config(tmp_path, **train_kw) -> Config:
    train_args = dict(epochs=2, batch_size=4, optimizer="sgd", lr=0.05, schedule="poly", warmup_epochs=0.5,
                      out_dir=str(tmp_path), run_name="run", progress=False, val_bf=False, seed=3, threads=1)
    train_args.update(train_kw)
    return Config(
        model=ModelConfig(name="segnet_basic"),
        data=DataConfig(dataset="synthetic", synthetic_train=16, synthetic_val=4, synthetic_size=[32, 48],
                        num_workers=0, scale_range=[0.8, 1.2], crop_size=[32, 48], color_jitter=0.2),
        loss=LossConfig(class_weights="median_frequency"),
        train=TrainConfig(**train_args),
    )


def _weights(path):
    return load_checkpoint(path)["model"]


@pytest.mark.parametrize("ema_decay", [0.0, 0.9], ids=["plain", "weight_average"])
def test_resume_is_exact(tmp_path, ema_decay):
    """N steps in one go == k steps, interrupt, resume, N-k steps (bit for bit on CPU), with or
    without a weight average (then both the average and the trained weights must resume)."""
    full = train(tiny_config(tmp_path / "a", ema_decay=ema_decay))
    assert not full.interrupted and len(full.history) == 2

    def stop_at_6(trainer):
        if trainer.global_step == 6:  # in the middle of epoch 2 (4 steps per epoch)
            trainer.stop_requested = "test"

    part = train(tiny_config(tmp_path / "b", ema_decay=ema_decay), callbacks={"on_step_end": stop_at_6})
    assert part.interrupted
    ckpt = load_checkpoint(part.last_checkpoint)
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]) == (1, 2, 6)
    assert ("raw_model" in ckpt) == (ema_decay > 0)

    resumed = train(tiny_config(tmp_path / "b", resume=str(part.last_checkpoint), ema_decay=ema_decay))
    a, b = load_checkpoint(full.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    for key in ("model", "raw_model") if ema_decay else ("model",):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            torch.testing.assert_close(a[key][k], b[key][k], rtol=0, atol=1e-6, msg=f"{key}.{k} differs after resume")
    assert b["global_step"] == 8
    if ema_decay:
        assert b["ema_updates"] == 8
        assert not torch.equal(*(next(w[k] for k in w if k.endswith("weight")) for w in (b["model"], b["raw_model"])))


def test_weight_average_follows_its_decay_and_is_what_gets_validated(tmp_path):
    """The EMA's arithmetic (warm-up ramp, BN statistics averaged, counters copied), and the
    trainer validating and saving the average rather than the trained weights."""
    from torch import nn
    from seglab.engine.averaging import WeightAverage, ema_decay_at

    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    average = WeightAverage(model, decay=0.5)
    average.update(model)  # the first update copies
    start = {k: v.clone() for k, v in average.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(2.0)
        model[1].num_batches_tracked.fill_(7)
    average.update(model)
    keep = ema_decay_at(0.5, 1)
    assert keep == pytest.approx(1 / 3)  # bias-corrected: (0.5 * 0.5 * w1 + 0.5 * w2) / (1 - 0.5**2)
    assert ema_decay_at(0.9, 0) == 0.0  # the first weights are copied
    got = average.state_dict()
    torch.testing.assert_close(got["0.weight"], keep * start["0.weight"] + (1 - keep) * model[0].weight)
    torch.testing.assert_close(got["1.running_mean"], keep * start["1.running_mean"] + (1 - keep) * 2.0)
    assert int(got["1.num_batches_tracked"]) == 7 and average.updates == 2
    assert ema_decay_at(0.998, 10_000) == pytest.approx(0.998)

    seen = []
    result = train(tiny_config(tmp_path, ema_decay=0.95),
                   callbacks={"on_step_end": lambda t: seen.append(t.eval_model is t.average.module)})
    assert all(seen) and len(seen) == 8
    ckpt = load_checkpoint(result.last_checkpoint)
    assert ckpt["config"]["train"]["ema_decay"] == 0.95
    best = load_checkpoint(result.best_checkpoint)["model"]
    assert set(best) == set(ckpt["raw_model"])  # best.pt holds the average's weights only
    with pytest.raises(SeglabError, match=r"train.ema_decay must be in \[0, 1\)"):
        train(tiny_config(tmp_path / "bad", ema_decay=1.0))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    def poison(trainer):
        if trainer.global_step == 5:
            with torch.no_grad():
                for p in trainer.model.parameters():
                    p.fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train(tiny_config(tmp_path), callbacks={"on_step_end": poison})
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_writes_resumable_checkpoint(tmp_path, sig):
    def send(trainer):
        if trainer.global_step == 3:
            os.kill(os.getpid(), sig)

    result = train(tiny_config(tmp_path), callbacks={"on_step_end": send})
    assert result.interrupted
    ckpt = load_checkpoint(result.last_checkpoint)
    assert ckpt["global_step"] == 3 and "optimizer" in ckpt
    assert signal.getsignal(sig) is not None  # handler restored
    resumed = train(tiny_config(tmp_path, resume=str(result.last_checkpoint)))
    assert not resumed.interrupted and load_checkpoint(resumed.last_checkpoint)["global_step"] == 8


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model_name": "x", "value": 1})
    before = path.read_bytes()

    def crash(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, {"model_name": "x", "value": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_checkpoint_alone_rebuilds_model(tmp_path):
    result = train(tiny_config(tmp_path, epochs=1))
    ckpt = load_checkpoint(result.best_checkpoint)
    for key in ("model_name", "model_kwargs", "num_classes", "class_names", "palette", "mean", "std", "config"):
        assert key in ckpt, key
    seg = Segmenter.from_checkpoint(result.best_checkpoint, device="cpu")
    image = (torch.rand(30, 41, 3) * 255).byte().numpy()
    labels = seg.predict(image)
    assert labels.shape == (30, 41) and labels.max() < ckpt["num_classes"]
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 1
    assert (tmp_path / "run" / "config.yaml").exists()


def test_a_reused_run_name_never_overwrites_the_earlier_run(tmp_path, capsys):
    first = train(tiny_config(tmp_path, epochs=1))
    before = (tmp_path / "run" / "last.pt").read_bytes()
    second = train(tiny_config(tmp_path, epochs=1, seed=4))
    assert first.run_dir == tmp_path / "run" and second.run_dir == tmp_path / "run-2"
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 1  # nothing appended to the first log
    assert "already holds a run" in capsys.readouterr().out


def test_csv_log_format(tmp_path):
    train(tiny_config(tmp_path, epochs=1, log_format="csv"))
    lines = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("step,") and len(lines) == 2


def test_unreadable_and_foreign_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SeglabError, match="could not be read"):
        load_checkpoint(bad)
    torch.save({"weight": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(SeglabError, match="not a seglab checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(SeglabError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_resume_into_other_model_names_both(tmp_path):
    result = train(tiny_config(tmp_path, epochs=1))
    cfg = tiny_config(tmp_path, resume=str(result.last_checkpoint))
    cfg.model.name = "segnet"
    with pytest.raises(SeglabError, match="'segnet_basic' model, but 'segnet'"):
        train(cfg)


def test_schedules():
    cfg = TrainConfig(epochs=10, warmup_epochs=1, schedule="poly", poly_power=1.0)
    assert lr_factor(0, 100, cfg, 10) == pytest.approx(0.1)  # warm-up starts small
    assert lr_factor(9, 100, cfg, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, cfg, 10) == pytest.approx(0.5)  # halfway through the decay
    cfg.schedule = "cosine"
    assert lr_factor(100, 100, cfg, 10) == pytest.approx(0.0, abs=1e-9)
    cfg.schedule = "constant"
    assert lr_factor(77, 100, cfg, 10) == 1.0
    cfg.schedule = "cosin"
    with pytest.raises(SeglabError, match="cosine"):
        lr_factor(20, 100, cfg, 10)


def test_ctrl_c_in_a_terminal_with_loader_workers(tmp_path):
    """SIGINT to the whole process group (what a terminal sends) still ends in a resumable checkpoint."""
    import subprocess
    import sys
    import time

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: {name: segnet_basic}\n"
        "data: {dataset: synthetic, synthetic_train: 8, synthetic_val: 2, synthetic_size: [32, 48], num_workers: 1}\n"
        "loss: {class_weights: none}\n"
        f"train: {{epochs: 1000, batch_size: 4, out_dir: '{tmp_path}', run_name: ctrlc, progress: false, "
        "val_every: 0, threads: 1}\n")
    proc = subprocess.Popen([sys.executable, "-m", "seglab", "train", str(recipe)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    deadline = time.time() + 240
    for line in proc.stdout:  # wait until a full epoch ran, so workers are up and last.pt exists
        lines.append(line)
        if line.startswith("epoch 2/") or time.time() > deadline:
            break
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    text = "".join(lines) + out
    assert proc.returncode == 130, text
    assert "resumable checkpoint written" in text and "Traceback" not in text
    assert "optimizer" in load_checkpoint(tmp_path / "ctrlc" / "last.pt")


def test_tiled_prediction_matches_whole_image(tmp_path):
    # A pointwise model is translation-equivariant, so tiling must not change its logits at all.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 1))
    args = dict(num_classes=4, class_names=list("abcd"), palette=[(0, 0, 0)] * 4, mean=[0.5] * 3, std=[0.25] * 3,
                device="cpu")
    image = (torch.rand(70, 90, 3) * 255).byte().numpy()
    whole = Segmenter(model, **args).predict_logits(image)
    tiled = Segmenter(model, tile=(32, 48), tile_overlap=8, **args).predict_logits(image)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)

    result = train(tiny_config(tmp_path, epochs=1))
    seg = Segmenter.from_checkpoint(result.best_checkpoint, device="cpu", tile=(48, 64), tile_overlap=16)
    assert seg.predict(image).shape == (70, 90)


def test_init_from_fine_tunes_with_a_fresh_schedule_and_another_loss(tmp_path):
    from seglab.engine.trainer import Trainer

    first = train(tiny_config(tmp_path / "a", epochs=1))
    cfg = tiny_config(tmp_path / "b", init_from=str(first.best_checkpoint), lr=0.01)
    cfg.loss.class_weights = "none"  # unlike resume, the config may change
    trainer = Trainer(cfg)
    assert trainer.epoch == 0 and trainer.global_step == 0
    expected = _weights(first.best_checkpoint)
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    wrong = tiny_config(tmp_path / "c", init_from=str(first.best_checkpoint))
    wrong.model.name = "segnet"
    with pytest.raises(SeglabError, match="'segnet_basic' model, but 'segnet'"):
        Trainer(wrong)
