"""ONNX export, the onnxruntime backend and int8 quantization, on a tiny SegNet-Basic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from seglab.tasks.checkpoint import save_checkpoint
from seglab.core.errors import SeglabError
from seglab.export.onnx import export_onnx, read_onnx_metadata
from seglab.inference.predictor import Segmenter
from seglab.inference.onnx_backend import OnnxSegmenter
from seglab.export.quantize import calibration_indices, quantize_onnx
from seglab.models.registry import create_model

CLASSES = ["sky", "road", "car", "tree"]
PALETTE = [[128, 128, 128], [128, 64, 128], [64, 0, 128], [128, 128, 0]]
SIZE = (48, 64)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SegNet-Basic checkpoint with int64 indices (export must switch to 2-bit codes)."""
    torch.manual_seed(0)
    kwargs = {"index_format": "int64"}
    model = create_model("segnet_basic", num_classes=len(CLASSES), **kwargs).eval()
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, {"model_name": "segnet_basic", "model_kwargs": kwargs, "num_classes": len(CLASSES),
                           "class_names": CLASSES, "palette": PALETTE, "ignore_index": 255,
                           "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3], "image_size": list(SIZE),
                           "model": model.state_dict()})
    return path


@pytest.fixture(scope="module")
def exported(checkpoint: Path) -> tuple[Path, object]:
    out = checkpoint.parent / "onnx" / "segnet_basic.onnx"
    report = export_onnx(checkpoint, out, input_size=SIZE, second_size=(37, 53))
    return out, report


def test_export_parity_at_two_sizes(exported) -> None:
    out, report = exported
    assert out.is_file() and report.path == out and report.size_bytes == out.stat().st_size
    assert report.exporter in ("dynamo", "torchscript") and report.dynamic_hw
    assert [p.shape for p in report.parity] == [(1, 4, *SIZE), (2, 4, 37, 53)]  # batch and H/W dynamic
    for parity in report.parity:
        assert parity.argmax_agreement >= 99.9
        assert parity.max_abs_diff < 1e-3
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary files left
    assert "argmax agreement" in report.format()


def test_metadata_round_trips(exported) -> None:
    out, _ = exported
    meta = read_onnx_metadata(out)
    assert meta["model_name"] == "segnet_basic" and meta["num_classes"] == 4
    assert meta["class_names"] == CLASSES and meta["palette"] == PALETTE
    assert meta["mean"] == [0.4, 0.5, 0.6] and meta["std"] == [0.2, 0.25, 0.3]
    assert meta["image_size"] == list(SIZE) and meta["ignore_index"] == 255


def test_onnx_segmenter_matches_segmenter(checkpoint: Path, exported) -> None:
    out, _ = exported
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)  # resized to 48x64
    torch_seg = Segmenter.from_checkpoint(checkpoint, device="cpu")
    onnx_seg = OnnxSegmenter.from_onnx(out, threads=1)
    assert onnx_seg.class_names == CLASSES and onnx_seg.num_classes == 4
    assert onnx_seg.palette == [tuple(c) for c in PALETTE] and onnx_seg.infer_size == list(SIZE)
    labels = onnx_seg.predict(image)
    assert labels.shape == (50, 70) and labels.dtype == np.int64
    assert np.mean(labels == torch_seg.predict(image)) >= 0.999
    np.testing.assert_allclose(onnx_seg.predict_proba(image), torch_seg.predict_proba(image), atol=1e-4)
    with pytest.raises(SeglabError, match="PyTorch backend"):
        onnx_seg.predict_mc(image, 4)


def test_int8_quantization_runs_and_reports_agreement(exported) -> None:
    out, _ = exported
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(4)]
    report = quantize_onnx(out, out.parent / "int8" / "model.onnx", images)
    assert len(report.parity) == 4 and all(0 <= p.argmax_agreement <= 100 for p in report.parity)
    assert report.int8_bytes < report.fp32_bytes / 2  # weights really are int8
    quantized = onnx.load(str(report.path))
    assert any(node.op_type == "QuantizeLinear" for node in quantized.graph.node)
    assert "seglab quantize" in report.format() and "agreement" in report.format()
    seg = OnnxSegmenter(report.path, threads=1)
    assert seg.metadata["quantization"]["per_channel"] and seg.class_names == CLASSES
    assert seg.predict(images[0]).shape == (48, 64)


@torch.library.custom_op("seglab_test::opaque_double", mutates_args=())
def _opaque_double(x: torch.Tensor) -> torch.Tensor:
    """A custom op with neither an ONNX translation nor a TorchScript symbolic."""
    return x * 2


@_opaque_double.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class CustomOpNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _opaque_double(self.conv(x))


def test_calibration_frames_spread_over_the_split() -> None:
    """A split lists its sequences one after another: calibration takes frames from all of them."""
    assert calibration_indices(367, 4) == [0, 122, 244, 366]
    assert calibration_indices(10, 1) == [0]
    assert calibration_indices(3, 16) == [0, 1, 2]
    assert calibration_indices(0, 4) == [] and calibration_indices(5, 0) == []
    picked = calibration_indices(367, 16)
    assert len(picked) == 16 and picked[0] == 0 and picked[-1] == 366
    assert max(np.diff(picked)) - min(np.diff(picked)) <= 1


def test_unexportable_model_raises_naming_it(tmp_path: Path) -> None:
    out = tmp_path / "bad.onnx"
    with pytest.raises(SeglabError, match="'CustomOpNet' cannot be exported to ONNX"):
        export_onnx(CustomOpNet(), out, input_size=(8, 8), verbose=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no temporary files left either


def test_non_segmentation_output_is_rejected(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(SeglabError, match="'classifier' cannot be exported: it must return N x K x H x W"):
        export_onnx(model, tmp_path / "c.onnx", input_size=(8, 8), metadata={"model_name": "classifier"})


def test_foreign_onnx_file_is_rejected(tmp_path: Path) -> None:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    path = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(SeglabError, match="no seglab metadata"):
        OnnxSegmenter(path)
