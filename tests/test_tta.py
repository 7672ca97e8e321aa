"""Test-time augmentation: the op (flips, scales, batching, sizes), its wiring into the task, the
Segmenter and the ``seglab evaluate`` / ``seglab predict`` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from seglab.apps.cli import main
from seglab.core.errors import SeglabError
from seglab.inference.predictor import Segmenter
from seglab.models.registry import create_model
from seglab.ops.resize import forward_at_size
from seglab.ops.tta import DEFAULT_SCALES, TTA, as_tta, tta_forward
from seglab.tasks.semantic import SemanticBatch, SemanticTask


class PositionRamp(nn.Module):
    """Logits that ignore the image: class 0 rises left to right, so they depend on the flip."""

    def __init__(self, channels: int = 2) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        ramp = torch.linspace(0.0, 3.0, w).expand(n, 1, h, w)
        return torch.cat([ramp, torch.zeros(n, self.channels - 1, h, w)], 1) if self.channels > 1 else ramp


class CountingForward:
    """``forward`` wrapper that records the batch shape of every call."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.shapes = model, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return self.model(x)


def _conv(out_channels: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(3, out_channels, 1).eval()


# ---------------------------------------------------------------------------------------------- the op
def test_flip_equivariant_model_gives_the_same_prediction_with_flip_tta():
    conv, x = _conv(), torch.rand(2, 3, 37, 53)
    with torch.no_grad():
        plain, tta = conv(x), tta_forward(conv, x, scales=(1.0,), flip=True)
    # Several views return the logits of the mean probabilities, log p: log_softmax of the plain logits.
    torch.testing.assert_close(tta, plain.log_softmax(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tta.softmax(1), plain.softmax(1), atol=1e-6, rtol=1e-5)
    assert torch.equal(tta.argmax(1), plain.argmax(1))


def test_one_view_is_exactly_the_plain_forward():
    conv, x = _conv(), torch.rand(2, 3, 37, 53)
    with torch.no_grad():
        assert torch.equal(tta_forward(conv, x, scales=(1.0,), flip=False), conv(x))
        # At a trained size: the same resizing as forward_at_size.
        assert torch.equal(tta_forward(conv, x, (1.0,), flip=False, size=(20, 30)), forward_at_size(conv, x, (20, 30)))


def test_flip_views_are_averaged_as_probabilities():
    x = torch.rand(1, 3, 8, 11)
    ramp = torch.linspace(0.0, 3.0, 11)
    p = torch.sigmoid(ramp)  # softmax([r, 0]) for class 0
    expected = (p + p.flip(0)) / 2
    out = tta_forward(PositionRamp(2), x, scales=(1.0,), flip=True)
    probs = out.softmax(1)
    torch.testing.assert_close(probs[0, 0], expected.expand(8, 11), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 8, 11))
    # A binary (one-channel, sigmoid) head: the mean of the sigmoid probabilities, as a logit.
    out1 = tta_forward(PositionRamp(1), x, scales=(1.0,), flip=True)
    assert out1.shape == (1, 1, 8, 11)
    torch.testing.assert_close(torch.sigmoid(out1[0, 0]), expected.expand(8, 11), atol=1e-6, rtol=1e-5)


def test_views_of_one_scale_run_as_one_batch():
    counting, x = CountingForward(_conv()), torch.rand(2, 3, 37, 53)
    with torch.no_grad():
        tta_forward(counting, x, scales=(0.5, 1.0, 1.5), flip=True)
    assert len(counting.shapes) == 3  # one call per scale, not one per view
    assert [s[0] for s in counting.shapes] == [4, 4, 4]  # 2 images + their mirror images
    assert counting.shapes[1][-2:] == (37, 53)
    counting.shapes.clear()
    tta_forward(counting, x, scales=(1.0, 1.25), flip=False)
    assert [s[0] for s in counting.shapes] == [2, 2]


@pytest.mark.parametrize("size", [None, (20, 30)])
def test_output_is_at_the_input_size_for_odd_sizes_and_every_scale(size):
    conv, x = _conv(3), torch.rand(2, 3, 37, 53)
    counting = CountingForward(conv)
    with torch.no_grad():
        out = tta_forward(counting, x, scales=(0.5, 0.75, 1.0, 1.25, 1.5), flip=True, size=size)
    assert out.shape == (2, 3, 37, 53) and torch.isfinite(out).all()
    base = size or (37, 53)
    assert counting.shapes[2][-2:] == tuple(base)  # scale 1.0 runs at the trained size
    assert counting.shapes[0][-2:] == (int(base[0] * 0.5 + 0.5), int(base[1] * 0.5 + 0.5))  # rounded half up
    if size is None:  # a 1x1 conv is scale- and flip-equivariant up to interpolation
        assert (out.argmax(1) == conv(x).argmax(1)).float().mean() > 0.7


def test_valid_convolution_model_through_forward_at_size():
    model = create_model("unet_valid", num_classes=2, depth=2, base_channels=4).eval()
    x = torch.rand(1, 3, 37, 53)
    with torch.no_grad():
        out = tta_forward(lambda v: forward_at_size(model, v, None), x, scales=(0.75, 1.0), flip=True)
    assert out.shape == (1, 2, 37, 53) and torch.isfinite(out).all()


def test_spec_parsing_and_errors():
    assert TTA() == TTA(DEFAULT_SCALES, True) and TTA().views == 6
    assert TTA.parse("0.5, 1,2") == TTA((0.5, 1.0, 2.0)) and TTA.parse(None) == TTA()
    assert TTA.from_cli(False, None) is None
    assert TTA.from_cli(True, None) == TTA() and TTA.from_cli(False, "1") == TTA((1.0,))
    assert TTA((1, 2)).to_dict() == {"scales": [1.0, 2.0], "flip": True}
    assert as_tta(True) == TTA() and as_tta(None) is None and as_tta(False) is None
    assert as_tta("1,1.5") == TTA((1.0, 1.5)) and as_tta([1.0]) == TTA((1.0,))
    assert as_tta({"scales": [1.0], "flip": False}) == TTA((1.0,), False)
    assert TTA.parse("") == TTA()
    for bad in ("a,b", "0,1", "-1", "inf"):
        with pytest.raises(SeglabError):
            TTA.parse(bad)
    with pytest.raises(SeglabError):
        TTA(())
    with pytest.raises(SeglabError):
        tta_forward(_conv(), torch.rand(3, 8, 8))


# ---------------------------------------------------------------------------------------------- wiring
def test_semantic_task_predicts_with_tta_and_refuses_mc_dropout():
    conv, x = _conv(4), torch.rand(2, 3, 21, 30)
    batch = SemanticBatch(x, torch.zeros(2, 21, 30, dtype=torch.long))
    task = SemanticTask(4, None, infer_size=(16, 24), tta=TTA((0.75, 1.0, 1.25)))
    labels = task.predict(conv, batch).labels
    assert labels.shape == (2, 21, 30)
    one_view = SemanticTask(4, None, infer_size=(16, 24), tta=TTA((1.0,), flip=False))
    plain = SemanticTask(4, None, infer_size=(16, 24))
    assert torch.equal(one_view.predict(conv, batch).labels, plain.predict(conv, batch).labels)
    with pytest.raises(SeglabError, match="mc-samples"):
        SemanticTask(4, None, mc_samples=2, tta=TTA()).predict(conv, batch)


def _segmenter(**kwargs) -> Segmenter:
    return Segmenter(_conv(3), 3, ["a", "b", "c"], [(0, 0, 0), (1, 1, 1), (2, 2, 2)], [0.5] * 3, [0.25] * 3,
                     device="cpu", fast=False, **kwargs)


def test_segmenter_tta_plain_and_tiled():
    coarse = torch.from_numpy(np.random.default_rng(0).random((1, 3, 5, 7))).float()  # a smooth image
    smooth = torch.nn.functional.interpolate(coarse, size=(37, 53), mode="bilinear", align_corners=False)
    image = (smooth[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    plain = _segmenter()
    for seg in (_segmenter(tta=True), _segmenter(tta="0.75,1", tile=(16, 16), tile_overlap=4)):
        probs = seg.predict_proba(image)
        assert probs.shape == (3, 37, 53)
        np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
        assert (seg.predict(image) == plain.predict(image)).mean() > 0.9
    flip_only = _segmenter(tta=TTA((1.0,)))
    np.testing.assert_allclose(flip_only.predict_proba(image), plain.predict_proba(image), atol=1e-5)
    with pytest.raises(SeglabError, match="Monte-Carlo"):
        _segmenter(tta=True).predict_mc(image, 2)


# ---------------------------------------------------------------------------------------------- commands
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tta")
    recipe = tmp / "tiny.yaml"
    recipe.write_text(
        "model: {name: segnet_basic}\n"
        "data: {dataset: synthetic, synthetic_train: 4, synthetic_val: 3, synthetic_size: [32, 48], num_workers: 0}\n"
        f"train: {{epochs: 1, batch_size: 4, out_dir: '{tmp}', run_name: tta, progress: false, threads: 1}}\n")
    assert main(["train", str(recipe), "--loss.class_weights", "none"]) == 0
    return tmp / "tta" / "best.pt"


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_evaluate_with_tta_records_the_spec(checkpoint, tmp_path, capsys):
    code, out, _ = _run(capsys, "evaluate", checkpoint, "--no-bf", "--out", tmp_path / "plain.json", "--train.amp", "none")
    assert code == 0
    assert json.loads((tmp_path / "plain.json").read_text())["tta"] is None
    code, out, _ = _run(capsys, "evaluate", checkpoint, "--no-bf", "--tta", "--out", tmp_path / "tta.json",
                        "--train.amp", "none")
    assert code == 0, out
    assert "Test-time augmentation: 6 views" in out
    results = json.loads((tmp_path / "tta.json").read_text())
    assert results["tta"] == {"scales": [0.75, 1.0, 1.25], "flip": True} and 0.0 <= results["miou"] <= 1.0
    code, out, _ = _run(capsys, "evaluate", checkpoint, "--no-bf", "--tta-scales", "1,1.5", "--out",
                        tmp_path / "tta2.json")
    assert code == 0, out
    assert json.loads((tmp_path / "tta2.json").read_text())["tta"]["scales"] == [1.0, 1.5]
    code, _, err = _run(capsys, "evaluate", checkpoint, "--tta", "--mc-samples", "2")
    assert code == 2 and "cannot be combined" in err and "Traceback" not in err
    code, _, err = _run(capsys, "evaluate", checkpoint, "--tta-scales", "0,x")
    assert code == 2 and "--tta-scales" in err


def test_cli_predict_with_tta(checkpoint, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray((np.random.rand(37, 53, 3) * 255).astype(np.uint8)).save(images / "im.png")
    code, _, err = _run(capsys, "predict", checkpoint, images, "--out", tmp_path / "pred", "--tta")
    assert code == 0, err
    labels = np.asarray(Image.open(tmp_path / "pred" / "im_labels.png"))
    assert labels.shape == (37, 53) and labels.max() < 7
    code, _, err = _run(capsys, "predict", checkpoint, images, "--out", tmp_path / "p2", "--tta", "--mc-samples", "2")
    assert code == 2 and "cannot be combined" in err
