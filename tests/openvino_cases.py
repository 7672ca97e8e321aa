"""The OpenVINO backend: seglab's ONNX export in OpenVINO (f32, bf16), and NNCF int8 that compiles and runs.

Run by tests/test_openvino.py in a process of its own (see there); `pytest tests/openvino_cases.py`
runs it directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from seglab.core.errors import SeglabError  # noqa: E402
from seglab.export.onnx import export_onnx  # noqa: E402
from seglab.export.quantize import quantize_openvino  # noqa: E402
from seglab.inference.exported import load_exported  # noqa: E402
from seglab.inference.onnx_backend import OnnxSegmenter  # noqa: E402
from seglab.inference.openvino_backend import OpenVinoSegmenter, read_openvino_metadata  # noqa: E402
from seglab.inference.predictor import Segmenter  # noqa: E402
from seglab.models.registry import create_model  # noqa: E402
from seglab.tasks.checkpoint import save_checkpoint  # noqa: E402

CLASSES = ["sky", "road", "car"]
PALETTE = [[128, 128, 128], [128, 64, 128], [64, 0, 128]]
SIZE = (48, 64)



@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A SegNet-Basic checkpoint, its ONNX export and its NNCF int8 OpenVINO IR."""
    torch.manual_seed(0)
    model = create_model("segnet_basic", num_classes=len(CLASSES)).eval()
    root = tmp_path_factory.mktemp("openvino")
    ckpt = root / "best.pt"
    save_checkpoint(ckpt, {"model_name": "segnet_basic", "model_kwargs": {}, "num_classes": len(CLASSES),
                           "class_names": CLASSES, "palette": PALETTE, "ignore_index": 255, "mean": [0.4, 0.5, 0.6],
                           "std": [0.2, 0.25, 0.3], "image_size": list(SIZE), "model": model.state_dict()})
    onnx_file = root / "model.onnx"
    export_onnx(ckpt, onnx_file, input_size=SIZE, verbose=False)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8) for _ in range(4)]
    report = quantize_openvino(onnx_file, root / "int8" / "model_int8.xml", images, verbose=False)
    return {"ckpt": ckpt, "onnx": onnx_file, "int8": report.path, "report": report}


def _image(seed: int = 1, size: tuple[int, int] = (50, 70)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def test_f32_matches_pytorch_and_onnxruntime(files) -> None:
    openvino = OpenVinoSegmenter(files["onnx"], threads=1, precision="f32")
    assert openvino.backend == "openvino" and openvino.precision == "f32" and openvino.class_names == CLASSES
    image = _image()
    reference = Segmenter.from_checkpoint(files["ckpt"], device="cpu", fast=False).predict_proba(image)
    np.testing.assert_allclose(openvino.predict_proba(image), reference, atol=1e-4)
    np.testing.assert_allclose(openvino.predict_proba(image), OnnxSegmenter(files["onnx"], threads=1).predict_proba(image),
                               atol=1e-4)
    x = torch.randn(2, 3, 37, 53)  # another batch and an odd size: one more compiled shape
    with torch.no_grad():
        eager = Segmenter.from_checkpoint(files["ckpt"], device="cpu", fast=False).model(x)
    assert float((openvino.run(x).argmax(1) == eager.argmax(1)).float().mean()) >= 0.999


def test_nncf_int8_compiles_runs_and_keeps_the_metadata(files) -> None:
    """The int8 graph compiles at a static shape in OpenVINO's CPU plugin (the 4-D pooling codes)."""
    report, path = files["report"], files["int8"]
    assert path.suffix == ".xml" and path.with_suffix(".bin").is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["model_int8.bin", "model_int8.xml"]  # no temporaries
    assert len(report.parity) == 4 and report.int8_bytes < report.fp32_bytes / 2
    assert "OpenVINO IR, NNCF" in report.format()
    meta = read_openvino_metadata(path)
    assert meta["class_names"] == CLASSES and meta["quantization"]["tool"] == "nncf"
    import openvino as ov

    ops = {op.get_type_name() for op in ov.Core().read_model(str(path)).get_ops()}
    assert "FakeQuantize" in ops  # really quantized
    seg = load_exported(path, threads=1)  # an .xml picks OpenVINO
    assert isinstance(seg, OpenVinoSegmenter) and seg.precision == "f32"  # auto keeps an int8 model's rest in f32
    assert OpenVinoSegmenter(files["onnx"], threads=1).precision in ("f32", "bf16")
    for precision in ("f32", "bf16"):
        labels = OpenVinoSegmenter(path, threads=1, precision=precision).predict(_image())
        assert labels.shape == (50, 70) and set(np.unique(labels)) <= {0, 1, 2}
    logits = seg.run(torch.randn(1, 3, *SIZE))
    assert logits.shape == (1, 3, *SIZE) and torch.isfinite(logits).all()


def test_tiled_prediction_and_the_shape_cache(files) -> None:
    seg = OpenVinoSegmenter(files["onnx"], threads=1, precision="f32", tile=(32, 32), tile_overlap=8)
    reference = OnnxSegmenter(files["onnx"], threads=1, tile=(32, 32), tile_overlap=8)
    image = _image(2, (70, 90))
    assert np.mean(seg.predict(image) == reference.predict(image)) >= 0.999
    assert len(seg._compiled) <= 2  # tiles share one shape (plus the edge tiles')


def test_bad_choices_are_clear_errors(files, tmp_path: Path) -> None:
    with pytest.raises(SeglabError, match="OpenVINO IR.*--backend openvino"):
        load_exported(files["int8"], "onnxruntime")
    with pytest.raises(SeglabError, match="precision"):
        load_exported(files["onnx"], "onnxruntime", precision="bf16")
    with pytest.raises(SeglabError, match="Unknown OpenVINO precision"):
        OpenVinoSegmenter(files["onnx"], precision="fp8")
    lonely = tmp_path / "lonely.xml"
    lonely.write_bytes(files["int8"].read_bytes())  # its .bin is missing
    with pytest.raises(SeglabError, match=r"\.bin must lie beside it"):
        OpenVinoSegmenter(lonely)
    with pytest.raises(SeglabError, match="does not exist"):
        OpenVinoSegmenter(tmp_path / "missing.xml")


def test_cli_predict_and_evaluate_with_openvino(files, tmp_path: Path, capsys) -> None:
    from seglab.apps.cli import main
    from PIL import Image

    Image.fromarray(_image(3, SIZE)).save(tmp_path / "street.png")
    for backend, out in (("onnxruntime", "ort"), ("openvino", "ov")):
        assert main(["predict", str(files["onnx"]), str(tmp_path / "street.png"), "--out", str(tmp_path / out),
                     "--backend", backend, "--precision", "f32" if backend == "openvino" else "auto"]) == 0
    ort_labels = np.array(Image.open(tmp_path / "ort" / "street_labels.png"))
    ov_labels = np.array(Image.open(tmp_path / "ov" / "street_labels.png"))
    assert np.mean(ort_labels == ov_labels) >= 0.999
    assert main(["predict", str(files["ckpt"]), str(tmp_path / "street.png"), "--out", str(tmp_path / "bf16"),
                 "--precision", "bf16"]) == 0  # PyTorch's fast path with bf16 autocast
    assert np.array(Image.open(tmp_path / "bf16" / "street_labels.png")).shape == SIZE
    assert main(["evaluate", str(files["ckpt"]), "--backend", "openvino"]) == 2
    assert "add --onnx FILE" in capsys.readouterr().err


def test_evaluate_scores_the_openvino_file_like_onnxruntime(files, tmp_path: Path) -> None:
    from PIL import Image

    from seglab.apps.evaluate import evaluate_checkpoint

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(4)
    for i in range(3):
        Image.fromarray(_image(10 + i, SIZE)).save(root / "images" / f"{i}.png")
        Image.fromarray(rng.integers(0, len(CLASSES), SIZE, dtype=np.uint8)).save(root / "masks" / f"{i}.png")
    overrides = ["--data.dataset=folder", f"--data.root={root}", f"--data.num_classes={len(CLASSES)}"]
    ort = evaluate_checkpoint(str(files["ckpt"]), overrides, split="train", compute_bf=False, onnx=str(files["onnx"]))
    ov = evaluate_checkpoint(str(files["ckpt"]), overrides, split="train", compute_bf=False, onnx=str(files["onnx"]),
                             backend="openvino", precision="f32")
    assert ov["miou"] == pytest.approx(ort["miou"], abs=1e-3) and json.dumps(ov, default=str)


def test_int8_of_the_shipped_camvid_model_keeps_its_labels(shared_data: Path, tmp_path: Path) -> None:
    """NNCF int8 and onnxruntime int8 of segnet_basic.camvid agree with fp32 on CamVid val frames.

    Guards the export graph's int8-safety: quantized comparisons in the pooling codes, or a
    quantizer that calibrates on the -inf padding, once dropped agreement to 20-90 %.
    """
    from seglab.export.quantize import calibration_images, quantize_onnx

    camvid = str(shared_data / "camvid")
    onnx_file = tmp_path / "segnet_basic.onnx"
    export_onnx("segnet_basic.camvid", onnx_file, verbose=False)
    images = calibration_images("segnet_basic.camvid", [f"--data.root={camvid}"], 4)
    int8_files = [quantize_openvino(onnx_file, tmp_path / "ov_int8.xml", images, verbose=False).path,
                  quantize_onnx(onnx_file, tmp_path / "ort_int8.onnx", images, verbose=False).path]
    reference = OpenVinoSegmenter(onnx_file, threads=2, precision="f32")
    frames = sorted((shared_data / "camvid" / "val").glob("*.png"))[::50]
    for path, least in zip(int8_files, (98.0, 95.0)):
        seg = load_exported(path, threads=2, precision="f32" if path.suffix == ".xml" else "auto")
        agreement = np.mean([np.mean(seg.predict(f) == reference.predict(f)) for f in frames])
        assert agreement * 100 >= least, (path.name, agreement)


def test_serve_answers_from_openvino(files) -> None:
    from fastapi.testclient import TestClient
    from PIL import Image
    import io

    from seglab.apps.serve import ServeSettings, create_app
    from seglab.apps.serve.server import load_segmenter

    seg, info = load_segmenter(str(files["onnx"]), backend="openvino", precision="f32")
    image = _image(5, SIZE)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    with TestClient(create_app(seg, ServeSettings(), info)) as client:
        model = client.get("/v1/models").json()["models"][0]
        reply = client.post("/v1/segment?format=labels", content=buffer.getvalue())
    assert model["backend"] == "openvino" and reply.status_code == 200
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(reply.content))), seg.predict(image))


@pytest.fixture()
def packed_int8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """pack_weights with int8 into a temporary weights folder; ``pack(passes)`` forces the rule's verdict."""
    from seglab.apps import weights as packing
    from seglab.core.config import load_config
    from seglab.engine.trainer import train
    from seglab.models import zoo

    cfg = load_config(None, ["--model.name", "segnet_basic", "--data.synthetic_train", "8", "--data.synthetic_val", "3",
                             "--data.synthetic_size", "[48, 64]", "--train.epochs", "1", "--train.batch_size", "4",
                             "--train.threads", "1", "--train.amp", "none", "--train.out_dir", str(tmp_path),
                             "--train.run_name", "run"])
    checkpoint = train(cfg).best_checkpoint
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", tmp_path / "weights")
    zoo.pretrained_entries.cache_clear()

    def pack(passes: bool):
        monkeypatch.setattr(packing, "passes_default_rule", lambda agreement, change: passes)
        return packing.pack_weights(checkpoint, "segnet_basic.tiny", commit="abc123")

    yield pack, tmp_path / "weights"
    zoo.pretrained_entries.cache_clear()


def test_pack_ships_a_passing_int8_model_and_auto_runs_it(packed_int8, capsys) -> None:
    from seglab.inference.auto import describe_predictor, load_predictor
    from seglab.models import zoo

    pack, folder = packed_int8
    entry = pack(True)
    check = zoo.pretrained_metadata("segnet_basic.tiny")["precision_checks"]["int8_openvino"]
    assert check["split"] == "val" and check["images"] == 3 and check["calibration_images"] == 8  # all of train
    assert check["miou_change"] == pytest.approx(check["miou"] - check["miou_fp32"])
    assert entry.openvino_int8["xml"] == "segnet_basic.tiny.int8.xml" and (folder / "segnet_basic.tiny.int8.bin").is_file()
    assert "int8_openvino" in zoo.pretrained_metadata("segnet_basic.tiny")["checkpoint"]["verified_precisions"]
    assert "ships as segnet_basic.tiny.int8.xml" in capsys.readouterr().out

    seg = load_predictor("segnet_basic.tiny")
    assert isinstance(seg, OpenVinoSegmenter) and describe_predictor(seg) == "openvino on cpu, int8 (f32 elsewhere)"
    direct = OpenVinoSegmenter(folder / "segnet_basic.tiny.int8.xml", precision="f32")
    np.testing.assert_array_equal(seg.predict(_image(3, SIZE)), direct.predict(_image(3, SIZE)))
    assert isinstance(load_predictor("segnet_basic.tiny", precision="f32"), Segmenter)  # an explicit precision: torch
    assert isinstance(load_predictor("segnet_basic.tiny", tta=True), Segmenter)

    entry = pack(False)  # a failing check ships nothing, and removes what the last pack shipped
    assert entry.openvino_int8 is None and not (folder / "segnet_basic.tiny.int8.xml").exists()
    assert isinstance(load_predictor("segnet_basic.tiny"), Segmenter)


def test_an_unreadable_shipped_int8_model_falls_back_to_pytorch(packed_int8) -> None:
    from seglab.inference.auto import choose_backend, load_predictor
    from seglab.models import zoo

    pack, folder = packed_int8
    entry = pack(True)
    xml = folder / entry.openvino_int8["xml"]
    xml.write_text("<net>not a model</net>")  # e.g. an IR newer than the installed OpenVINO reads
    import dataclasses

    from seglab.models.weights import file_sha256

    ir = {**entry.openvino_int8, "xml_sha256": file_sha256(xml)}
    zoo.register_entry(dataclasses.replace(entry, openvino_int8=ir), folder)
    assert choose_backend("segnet_basic.tiny").backend == "openvino"
    with pytest.warns(RuntimeWarning, match="predicting with PyTorch instead"):
        seg = load_predictor("segnet_basic.tiny")
    assert isinstance(seg, Segmenter)
    with pytest.raises(SeglabError, match="OpenVINO cannot read"):
        load_predictor("segnet_basic.tiny", "openvino")  # asked for by name: no silent fallback


def test_the_shipped_camvid_model_predicts_in_verified_int8_by_default(shared_data: Path, tmp_path: Path, capsys) -> None:
    """segnet_basic.camvid ships an int8 OpenVINO model that passed the rule on all of val; by default
    predict and serve run it, and its labels stay those of fp32 PyTorch."""
    from PIL import Image

    from seglab.apps.cli import main
    from seglab.apps.serve.server import load_segmenter
    from seglab.models import zoo

    check = zoo.pretrained_metadata("segnet_basic.camvid")["precision_checks"]["int8_openvino"]
    assert check["images"] == 101 and check["passes_default_rule"] and check["agreement_pct"] >= 99
    frame = sorted((shared_data / "camvid" / "val").glob("*.png"))[40]
    image = np.asarray(Image.open(frame).convert("RGB"))
    Image.fromarray(image).save(tmp_path / "street.png")
    assert main(["predict", "segnet_basic.camvid", str(tmp_path / "street.png"), "--out", str(tmp_path / "out")]) == 0
    assert "predicting with openvino on cpu, int8" in capsys.readouterr().out
    labels = np.asarray(Image.open(tmp_path / "out" / "street_labels.png"))
    fp32 = Segmenter.from_pretrained("segnet_basic.camvid", device="cpu", amp="none").predict(image)
    assert np.mean(labels == fp32) >= 0.97  # one frame; val-wide agreement is the check above
    seg, _ = load_segmenter("segnet_basic.camvid")
    assert seg.backend == "openvino"
