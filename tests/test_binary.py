"""One-channel (sigmoid) models through the whole pipeline: train, evaluate (threshold), predict."""

from __future__ import annotations

import numpy as np
from PIL import Image

from seglab.apps.cli import main
from seglab.tasks.checkpoint import load_checkpoint
from seglab.inference.predictor import Segmenter


def _binary_folder(root, n=6, size=(32, 40)):
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        rng = np.random.default_rng(0 if split == "train" else 1)
        for i in range(n):
            mask = np.zeros(size, np.uint8)
            y, x = rng.integers(4, 20), rng.integers(4, 24)
            mask[y:y + 10, x:x + 12] = 1
            image = np.where(mask[..., None] == 1, 200, 40).astype(np.uint8).repeat(3, axis=2)
            image = (image + rng.integers(0, 30, image.shape)).astype(np.uint8)
            Image.fromarray(image).save(root / split / "images" / f"{i}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i}.png")


def test_binary_head_trains_evaluates_and_predicts(tmp_path, capsys):
    _binary_folder(tmp_path / "data")
    recipe = tmp_path / "binary.yaml"
    recipe.write_text(
        "model: {name: segnet_basic}\n"
        f"data: {{dataset: folder, root: '{tmp_path / 'data'}', num_classes: 2, class_names: [background, object], "
        "num_workers: 0}\n"
        "loss: {name: bce_dice, class_weights: none}\n"
        f"train: {{epochs: 2, batch_size: 3, optimizer: adamw, lr: 0.01, out_dir: '{tmp_path}', run_name: bin, "
        "progress: false, val_bf: false, threads: 1}\n")
    assert main(["train", str(recipe)]) == 0
    ckpt = tmp_path / "bin" / "best.pt"
    state = load_checkpoint(ckpt)
    assert state["num_classes"] == 2 and state["model_num_classes"] == 1
    assert state["model"]["classifier.weight"].shape[0] == 1

    seg = Segmenter.from_checkpoint(ckpt, device="cpu")
    image = np.asarray(Image.open(tmp_path / "data" / "val" / "images" / "0.png"))
    labels = seg.predict(image)
    assert labels.shape == image.shape[:2] and set(np.unique(labels)) <= {0, 1}
    probs = seg.predict_proba(image)
    assert probs.shape == (1, *image.shape[:2]) and 0 <= probs.min() and probs.max() <= 1

    capsys.readouterr()
    assert main(["evaluate", str(ckpt), "--no-bf", "--out", str(tmp_path / "e.json")]) == 0
    assert "object" in capsys.readouterr().out
