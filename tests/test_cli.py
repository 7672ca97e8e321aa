"""End to end through the ``seglab`` command: train a few iterations, evaluate, predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seglab.apps.cli import main, overrides_last

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "data" / "camvid"


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("train", "evaluate", "predict", "models", "data", "quickstart"):
        assert cmd in out
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "example:" in capsys.readouterr().out


def test_train_evaluate_predict_on_synthetic(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "model: {name: segnet_basic}\n"
        "data: {dataset: synthetic, synthetic_train: 8, synthetic_val: 4, synthetic_size: [32, 48], num_workers: 0}\n"
        f"train: {{epochs: 1, batch_size: 4, out_dir: '{tmp_path}', run_name: cli, progress: false, threads: 1}}\n")
    code, out, _ = _run(capsys, "train", recipe, "--train.lr", "0.01", "--loss.class_weights", "none")
    assert code == 0, out
    run = tmp_path / "cli"
    assert {"best.pt", "last.pt", "config.yaml", "metrics.jsonl", "metrics.json"} <= {p.name for p in run.iterdir()}

    # fp32 (train.amp "auto" is bf16 on CPUs with AVX512-BF16/AMX): the ONNX graph below runs in
    # fp32 and is compared with these results.
    code, out, _ = _run(capsys, "evaluate", run / "best.pt", "--split", "val", "--out", tmp_path / "eval.json",
                        "--train.amp", "none")
    assert code == 0
    assert "mIoU" in out
    results = json.loads((tmp_path / "eval.json").read_text())
    assert 0.0 <= results["miou"] <= 1.0 and len(results["iou"]) == 7

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray((np.random.rand(40, 50, 3) * 255).astype(np.uint8)).save(images / f"im{i}.png")
    code, out, _ = _run(capsys, "predict", run / "best.pt", images, "--out", tmp_path / "pred")
    assert code == 0
    written = sorted(p.name for p in (tmp_path / "pred").iterdir())
    assert written == sorted(f"im{i}_{kind}.png" for i in range(2) for kind in ("labels", "color", "overlay"))
    labels = np.asarray(Image.open(tmp_path / "pred" / "im0_labels.png"))
    assert labels.shape == (40, 50) and labels.max() < 7
    overlay = Image.open(tmp_path / "pred" / "im0_overlay.png")
    assert overlay.size[0] > 50  # the legend is appended on the right

    # Export, then score the ONNX file through the same protocol: it matches PyTorch.
    pytest.importorskip("onnxruntime")
    code, out, _ = _run(capsys, "export", run / "best.pt", "--out", tmp_path / "model.onnx")
    assert code == 0 and "argmax agreement" in out
    code, out, _ = _run(capsys, "evaluate", run / "best.pt", "--onnx", tmp_path / "model.onnx", "--no-bf",
                        "--out", tmp_path / "eval_onnx.json")
    assert code == 0, out
    onnx_results = json.loads((tmp_path / "eval_onnx.json").read_text())
    assert onnx_results["onnx"] == str(tmp_path / "model.onnx")
    assert onnx_results["miou"] == pytest.approx(results["miou"], abs=1e-3)


def test_user_errors_are_one_paragraph_without_traceback(tmp_path, capsys):
    code, _, err = _run(capsys, "train", tmp_path / "missing.yaml")
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name: segnett}\ndata: {dataset: synthetic}\n")
    code, _, err = _run(capsys, "train", recipe, "--train.epochs", "1")
    assert code == 2 and "Did you mean 'segnet'" in err
    code, _, err = _run(capsys, "train", recipe, "--train.epoch", "1")
    assert code == 2 and "train.epochs" in err
    # Overrides before the recipe: the recipe is still the recipe, not the data root.
    code, _, err = _run(capsys, "train", "--data.root", tmp_path, recipe, "--train.epochs", "1")
    assert code == 2 and "Did you mean 'segnet'" in err
    code, _, err = _run(capsys, "predict", tmp_path / "none.pt", "x.png", "--out", tmp_path)
    assert code == 2 and "does not exist" in err
    code, _, err = _run(capsys, "evaluate", "--data.root", tmp_path, tmp_path / "none.pt", "--split", "val")
    assert code == 2 and "none.pt" in err and "does not exist" in err


def test_overrides_move_after_the_positional_arguments():
    assert overrides_last(["--data.root", "d", "r.yaml", "--train.epochs=2", "--split", "val"]) == [
        "r.yaml", "--split", "val", "--data.root", "d", "--train.epochs=2"]


def test_models_lists_parameters(capsys):
    code, out, _ = _run(capsys, "models", "--no-flops")
    assert code == 0 and "segnet_basic" in out and "segnet " in out


def test_models_counts_flops_of_a_valid_convolution_model_at_a_size_it_accepts(capsys):
    code, out, _ = _run(capsys, "models", "segnet_lite", "unet_valid", "--size", "64", "80", "--num-classes", "2")
    assert code == 0 and "segnet_lite" in out
    assert "unet_valid: counted at 188x188" in out  # 188 is the smallest size a depth-4 unet_valid takes
    code, _, err = _run(capsys, "models", "segnett")
    assert code == 2 and "segnet" in err


@pytest.mark.skipif(not CAMVID.is_dir(), reason="../shared/data/camvid not found: the real-data CLI test runs in CI")
def test_train_evaluate_predict_on_camvid_subset(tmp_path, capsys):
    code, out, _ = _run(capsys, "train", REPO / "configs" / "segnet_basic_camvid_cpu.yaml", "--data.root", CAMVID,
                        "--data.limit", "4", "--data.image_size", "[90,120]", "--data.num_workers", "0",
                        "--train.epochs", "1", "--train.batch_size", "2", "--train.out_dir", tmp_path,
                        "--train.run_name", "camvid", "--train.progress", "false", "--loss.class_weights", "none")
    assert code == 0, out
    ckpt = tmp_path / "camvid" / "best.pt"
    code, out, _ = _run(capsys, "evaluate", ckpt, "--data.root", CAMVID, "--split", "val", "--data.limit", "2")
    assert code == 0 and "Bicyclist" in out
    code, _, _ = _run(capsys, "predict", ckpt, CAMVID / "val" / "0016E5_07959.png", "--out", tmp_path / "pred")
    assert code == 0
    assert np.asarray(Image.open(tmp_path / "pred" / "0016E5_07959_labels.png")).shape == (360, 480)
    code, out, _ = _run(capsys, "data", "check", CAMVID)
    assert code == 0, out
