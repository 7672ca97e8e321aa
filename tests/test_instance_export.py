"""``seglab export`` of instance (Mask R-CNN) checkpoints: a fixed-size ONNX file whose detections match
PyTorch with detections (N > 0) and without (N = 0), its metadata, the onnxruntime runner, both
RoI poolers, and the refusals (int8, a semantic checkpoint, no input size)."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from seglab.apps.cli import main
from seglab.core.errors import SeglabError
from seglab.export import instance_onnx
from seglab.export.instance_onnx import ThresholdedMaskRCNN, compare_detections, export_instance_onnx
from seglab.inference.instance_onnx import OnnxInstanceSegmenter
from seglab.inference.instance_predictor import InstanceSegmenter
from seglab.inference.onnx_backend import OnnxSegmenter
from seglab.inference.onnx_format import read_onnx_metadata
from seglab.models.registry import create_model
from seglab.tasks.checkpoint import Checkpoint, CheckpointMeta, model_from_checkpoint, read_checkpoint, save_checkpoint
from seglab.tasks.instance import InstanceTask

# A tiny random Mask R-CNN; box_score_thresh 0 so the eager model keeps what the file's threshold input keeps.
KWARGS = {"min_size": 64, "max_size": 80, "fpn_channels": 16, "representation_size": 32, "mask_channels": 8,
          "box_score_thresh": 0.0, "box_detections_per_img": 20}
SIZE = (128, 128)
CLASSES = ["background", "Pole", "Car"]


def _checkpoint(path: Path, roi_pooler: str) -> Path:
    torch.manual_seed(0)
    kwargs = {**KWARGS, "roi_pooler": roi_pooler}
    model = create_model("mask_rcnn_resnet18_fpn", 3, **kwargs)
    task = InstanceTask(3, CLASSES, [[0, 0, 0], [200, 200, 0], [0, 0, 200]])
    meta = CheckpointMeta(**task.checkpoint_metadata(), model_name="mask_rcnn_resnet18_fpn", model_kwargs=kwargs,
                          mean=[0.0] * 3, std=[1.0] * 3)
    save_checkpoint(path, Checkpoint(meta, {k: v.detach() for k, v in model.state_dict().items()}))
    return path


def _image(seed: int, h: int = SIZE[0], w: int = SIZE[1]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """An align checkpoint exported through `seglab export` (which dispatches on the task), and what it printed."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("inst_export")
    ckpt = _checkpoint(folder / "inst.pt", "align")
    out = folder / "inst.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["export", str(ckpt), "--format", "onnx", "--out", str(out), "--input-size", *map(str, SIZE)])
    assert code == 0
    return ckpt, out, printed.getvalue()


def test_cli_exports_an_instance_checkpoint_with_a_parity_report(exported: tuple[Path, Path, str]) -> None:
    _, out, printed = exported
    assert out.is_file() and sorted(p.name for p in out.parent.iterdir()) == ["inst.onnx", "inst.pt"]  # no temporaries
    assert "mask_rcnn_resnet18_fpn (instance)" in printed and "fixed input 3x128x128" in printed
    found = re.search(r"parity with detections \(score > [^)]+\): (\d+) detections", printed)
    assert found and int(found.group(1)) > 0, printed
    assert "labels equal, mask agreement" in printed
    assert re.search(r"parity no detection .*: 0 detections; ONNX boxes 0x4, labels 0, scores 0, masks 0x1x128x128",
                     printed), printed
    assert "FAILED" not in printed


def test_metadata_and_graph_signature_read_back(exported: tuple[Path, Path, str]) -> None:
    _, out, _ = exported
    meta = read_onnx_metadata(out)
    assert meta["task"] == "instance" and meta["model_name"] == "mask_rcnn_resnet18_fpn"
    assert meta["class_names"] == CLASSES and meta["num_classes"] == 3 and len(meta["palette"]) == 3
    assert meta["input_size"] == [3, *SIZE] and meta["image_size"] == list(SIZE) and meta["dynamic_hw"] is False
    assert meta["score_threshold"] == 0.5 and meta["mask_threshold"] == 0.5 and meta["model_score_thresh"] == 0.0
    assert meta["detections_per_img"] == 20 and meta["roi_pooler"] == "align" and meta["opset"] >= 11
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("image", [3, *SIZE]), ("score_threshold", [])]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [
        ("boxes", ["detections", 4]), ("labels", ["detections"]), ("scores", ["detections"]),
        ("masks", ["detections", 1, *SIZE])]
    with pytest.raises(SeglabError, match="instance .*OnnxInstanceSegmenter"):
        OnnxSegmenter(out)


def test_onnxruntime_matches_pytorch_with_and_without_detections(exported: tuple[Path, Path, str]) -> None:
    ckpt, out, _ = exported
    graph = ThresholdedMaskRCNN(model_from_checkpoint(read_checkpoint(ckpt)).eval())
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = 1, 3
    session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    cases = [(_image(3), 0.0), (np.zeros((*SIZE, 3), np.uint8), 1.0)]  # every detection; none (scores never > 1)
    results = []
    for array, threshold in cases:
        x = torch.from_numpy(array).permute(2, 0, 1).float() / 255
        with torch.no_grad():
            ref = [t.numpy() for t in graph(x, torch.tensor(threshold))]
        got = session.run(None, {"image": x.numpy(), "score_threshold": np.asarray(threshold, np.float32)})
        results.append((ref, got, compare_detections("case", threshold, ref, got, SIZE)))
    (ref, got, with_detections), (_, empty, without) = results
    assert with_detections.detections == 20 and with_detections.ok, with_detections.format()  # N > 0 really compared
    assert with_detections.box_max_diff < 1e-3 and with_detections.mask_agreement == 100.0
    assert without.detections == 0 and without.ok, without.format()
    assert [a.shape for a in empty] == [(0, 4), (0,), (0,), (0, 1, *SIZE)]
    assert [a.dtype for a in empty] == [np.float32, np.int64, np.float32, np.float32]
    # The comparison catches what it should.
    wrong = [got[0] + 1.0, got[1] % 2 + 1, got[2], 1.0 - got[3]]  # labels 1 <-> 2
    problems = compare_detections("bad", 0.0, ref, wrong, SIZE).problems
    assert len(problems) == 3 and "labels differ" in problems and any("boxes differ" in p for p in problems)
    assert compare_detections("short", 0.0, ref, [a[:3] for a in got], SIZE).problems[0].startswith("boxes is")


def test_onnx_runner_gives_the_instances_of_the_checkpoint(exported: tuple[Path, Path, str]) -> None:
    ckpt, out, _ = exported
    eager = InstanceSegmenter.from_checkpoint(ckpt, device="cpu", score_threshold=0.0)
    scores = eager.predict(_image(4)).scores
    threshold = float(scores[4] + scores[5]) / 2  # between two scores: 5 detections on both sides of > and >=
    eager.score_threshold = threshold
    runner = OnnxInstanceSegmenter(out, score_threshold=threshold, threads=1)
    want, got = eager.predict(_image(4)), runner.predict(_image(4))
    assert len(got) == len(want) == 5
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
    assert np.mean(got.masks == want.masks) >= 0.999
    other = runner.predict(_image(5, 100, 120))  # resized to the export size and back
    assert other.masks.shape == (len(other), 100, 120) and np.all(other.boxes[:, [0, 2]] <= 120 + 1e-3)
    runner.score_threshold = 1.0
    assert runner.predict(_image(5, 100, 120)).masks.shape == (0, 100, 120)


def test_roi_pool_model_exports_with_parity(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    report = export_instance_onnx(_checkpoint(tmp_path / "pool.pt", "pool"), tmp_path / "pool.onnx", input_size=SIZE,
                                  verbose=False)
    with_detections, none = report.parity
    assert with_detections.ok and 0 < with_detections.detections <= instance_onnx.PARITY_DETECTIONS
    assert none.ok and none.detections == 0 and none.onnx_shapes["masks"] == (0, 1, *SIZE)
    assert read_onnx_metadata(tmp_path / "pool.onnx")["roi_pooler"] == "pool"


def test_failed_parity_raises_and_writes_nothing(exported: tuple[Path, Path, str], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt, out, _ = exported
    monkeypatch.setattr(instance_onnx, "_trace_export", lambda graph, size, path, opset, name: shutil.copy(out, path))
    target = tmp_path / "never.onnx"
    with pytest.raises(SeglabError, match="disagrees with PyTorch .*scores differ.*nothing was written"):
        export_instance_onnx(ckpt, target, input_size=SIZE, score_atol=-1.0, verbose=False)
    assert list(tmp_path.iterdir()) == []


def test_int8_semantic_checkpoints_and_missing_sizes_are_refused(exported: tuple[Path, Path, str], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, _, _ = exported
    assert main(["export", str(ckpt), "--int8", "--out", str(tmp_path / "q.onnx"), "--input-size", "128", "128"]) == 2
    assert "--int8 quantizes semantic checkpoints only" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SeglabError, match="fixes no image size .*--input-size 512 512"):
        export_instance_onnx(ckpt, tmp_path / "x.onnx")
    with pytest.raises(SeglabError, match="at least 32 pixels"):
        export_instance_onnx(ckpt, tmp_path / "x.onnx", input_size=(16, 16))
    semantic = CheckpointMeta("segnet_basic", 3, ["a", "b", "c"], [[0, 0, 0]] * 3, [0.5] * 3, [0.25] * 3)
    path = tmp_path / "sem.pt"
    save_checkpoint(path, Checkpoint(semantic, create_model("segnet_basic", 3).state_dict()))
    with pytest.raises(SeglabError, match="task: semantic; export_instance_onnx exports Mask R-CNN"):
        export_instance_onnx(path, tmp_path / "x.onnx", input_size=SIZE)
