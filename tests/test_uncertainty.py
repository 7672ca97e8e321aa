"""Bayesian SegNet: dropout placement, batched Monte-Carlo dropout, uncertainty maps, calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from seglab.apps.cli import main
from seglab.core.config import Config, DataConfig, LossConfig, ModelConfig, TrainConfig
from seglab.engine import train
from seglab.models.registry import create_model
from seglab.metrics.uncertainty import CalibrationMeter, uncertainty_maps
from seglab.ops.mc_dropout import mc_dropout, mc_probabilities


def _dropout_sites(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Dropout)]


def test_dropout_sits_where_the_paper_puts_it():
    basic = create_model("bayesian_segnet_basic", num_classes=11)
    assert _dropout_sites(basic) == ["encoder.dropouts.2", "encoder.dropouts.3", "decoder.dropouts.0", "decoder.dropouts.1"]
    full = create_model("bayesian_segnet", num_classes=11)
    assert _dropout_sites(full) == ["encoder.dropouts.2", "encoder.dropouts.3", "encoder.dropouts.4",
                                    "decoder.dropouts.0", "decoder.dropouts.1", "decoder.dropouts.2"]
    assert all(m.p == 0.5 for m in full.modules() if isinstance(m, nn.Dropout))
    # Dropout adds no parameters: same count as the plain models.
    assert sum(p.numel() for p in basic.parameters()) == sum(
        p.numel() for p in create_model("segnet_basic", num_classes=11).parameters())


def test_mc_dropout_samples_but_keeps_batchnorm_statistics():
    torch.manual_seed(0)
    model = create_model("bayesian_segnet_basic", num_classes=4).eval()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), mc_dropout(model):
        a, b = model(x), model(x)
    assert not torch.equal(a, b), "dropout should make passes differ"
    assert torch.equal(bn.running_mean, before), "BN must stay in eval mode"
    assert not model.training and all(not m.training for m in model.modules())


def test_samples_run_batched():
    calls = []

    def forward(x):
        calls.append(x.shape[0])
        return torch.zeros(x.shape[0], 3, 4, 5)

    probs = mc_probabilities(forward, torch.zeros(2, 3, 4, 5), samples=8, max_batch=8)
    assert probs.shape == (8, 2, 3, 4, 5)
    assert calls == [8, 8]  # 4 samples x 2 images per pass, not 8 passes


def test_uncertainty_maps_hand_example():
    # Two samples, one pixel, two classes: [1, 0] and [0, 1].
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 1, 2, 1, 1)
    maps = uncertainty_maps(probs)
    assert torch.allclose(maps["mean"].flatten(), torch.tensor([0.5, 0.5]))
    assert maps["entropy"].item() == pytest.approx(math.log(2))
    assert maps["mutual_info"].item() == pytest.approx(math.log(2), abs=1e-6)  # each sample is certain
    assert maps["variance"].item() == pytest.approx(0.25)
    agree = uncertainty_maps(torch.tensor([[0.5, 0.5], [0.5, 0.5]]).view(2, 1, 2, 1, 1))
    assert agree["mutual_info"].item() == pytest.approx(0.0, abs=1e-6)


def test_calibration_hand_example():
    meter = CalibrationMeter(num_classes=2, ignore_index=9, bins=10)
    mean = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.9, 0.1]]).T.reshape(1, 2, 1, 4)
    target = torch.tensor([[[0, 0, 1, 9]]])  # two right, one wrong, one ignored
    entropy = torch.zeros(1, 1, 4)
    meter.update(mean, entropy, target)
    out = meter.compute()
    assert out["ece"] == pytest.approx(abs(0.9 - 2 / 3))
    assert out["accuracy_by_uncertainty"][0]["pixels"] == 3
    assert out["accuracy_by_uncertainty"][0]["accuracy"] == pytest.approx(2 / 3)


def _tiny_run(tmp_path, model_name):
    cfg = Config(model=ModelConfig(name=model_name),
                 data=DataConfig(dataset="synthetic", synthetic_train=8, synthetic_val=2, synthetic_size=[32, 48],
                                 num_workers=0),
                 loss=LossConfig(class_weights="none"),
                 train=TrainConfig(epochs=1, batch_size=4, out_dir=str(tmp_path), run_name=model_name, progress=False,
                                   val_bf=False, threads=1))
    return train(cfg).best_checkpoint


def test_cli_mc_predict_and_evaluate(tmp_path, capsys):
    ckpt = _tiny_run(tmp_path, "bayesian_segnet_basic")
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray((np.random.rand(30, 40, 3) * 255).astype(np.uint8)).save(image)
    assert main(["predict", str(ckpt), str(image), "--out", str(tmp_path / "p"), "--mc-samples", "4"]) == 0
    names = {p.name for p in (tmp_path / "p").iterdir()}
    assert {"x_entropy.png", "x_mutual_info.png", "x_variance.png", "x_labels.png"} <= names
    assert np.asarray(Image.open(tmp_path / "p" / "x_entropy.png")).shape == (30, 40, 3)
    capsys.readouterr()
    assert main(["evaluate", str(ckpt), "--mc-samples", "3", "--no-bf", "--out", str(tmp_path / "e.json")]) == 0
    assert "expected calibration error" in capsys.readouterr().out


def test_mc_samples_on_model_without_dropout_is_explained(tmp_path, capsys):
    ckpt = _tiny_run(tmp_path, "segnet_basic")
    code = main(["evaluate", str(ckpt), "--mc-samples", "3", "--no-bf"])
    err = capsys.readouterr().err
    assert code == 2 and "has none" in err and "bayesian_segnet_basic" in err
