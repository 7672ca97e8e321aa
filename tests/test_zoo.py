"""Trained weights by name: packing a checkpoint, loading it by name everywhere, and bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.apps.cli import main
from seglab.apps.evaluate import evaluate_checkpoint
from seglab.apps.weights import pack_weights
from seglab.core.config import load_config
from seglab.core.errors import SeglabError
from seglab.engine.trainer import train
from seglab.inference.predictor import Segmenter
from seglab.models import zoo
from seglab.models.registry import create_model
from seglab.tasks import semantic
from seglab.tasks.checkpoint import read_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zoo")
    cfg = load_config(None, ["--model.name", "unet", "--model.kwargs", "{depth: 2, base_channels: 4}",
                             "--data.synthetic_train", "8", "--data.synthetic_val", "4",
                             "--data.synthetic_size", "[32, 48]", "--train.epochs", "2", "--train.batch_size", "4",
                             "--train.threads", "1", "--train.amp", "none", "--train.out_dir", str(out),
                             "--train.run_name", "run"])
    return train(cfg).best_checkpoint


@pytest.fixture()
def weights_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "weights"
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", folder)
    monkeypatch.setenv("SEGLAB_CACHE_DIR", str(tmp_path / "cache"))
    zoo.pretrained_entries.cache_clear()
    yield folder
    zoo.pretrained_entries.cache_clear()


def test_pack_then_load_by_name_everywhere(trained, weights_dir, tmp_path, capsys):
    entry = pack_weights(trained, "unet.tiny", recipe="inline", commit="abc123", also_splits=["train"],
                         int8=False)  # NNCF stays out of this process: tests/openvino_cases.py packs int8
    assert (weights_dir / "unet.tiny.safetensors").stat().st_size == entry.size
    assert zoo.list_pretrained() == ["unet.tiny"]
    state, meta = zoo.read_pretrained("unet.tiny")
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())  # loads as fp32
    assert meta["trained"]["commit"] == "abc123" and meta["trained"]["dataset"] == "synthetic"
    assert meta["trained"]["train_seconds"] > 0 and meta["checkpoint"]["class_names"][0] == "Sky"
    assert abs(meta["val_metrics"]["miou"] - meta["val_metrics_fp32"]["miou"]) < 0.01  # fp16 vs fp32
    assert len(meta["val_metrics"]["iou"]) == 7
    other = meta["other_metrics"]["train"]  # another split, scored with the fp16 weights
    assert other["split"] == "train" and 0 <= other["miou"] <= 1 and other["miou"] != meta["val_metrics"]["miou"]
    assert meta["trained"]["selected_on"] == "val"
    check = meta["precision_checks"]["bf16"]  # bf16 against fp32 on every val image, by the rule
    assert check["split"] == "val" and check["images"] == 4 and 0 <= check["agreement_pct"] <= 100
    assert check["miou_change"] == pytest.approx(check["miou"] - check["miou_fp32"])
    assert check["passes_default_rule"] == (check["agreement_pct"] >= 99 and check["miou_change"] >= -0.5)
    assert meta["checkpoint"]["verified_precisions"] == (["bf16"] if check["passes_default_rule"] else [])
    assert read_checkpoint("unet.tiny").meta.verified_precisions == meta["checkpoint"]["verified_precisions"]

    model = create_model("unet", num_classes=7, weights="tiny")  # the trained options (depth 2) are used
    original = read_checkpoint(trained).model
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value.float(), original[key].float(), atol=2e-3, rtol=2e-3)  # fp16 rounding

    image = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    labels = Segmenter.from_pretrained("unet.tiny", device="cpu").predict(image)
    assert labels.shape == (40, 50) and labels.max() < 7

    Image.fromarray(image).save(tmp_path / "street.png")
    assert main(["predict", "unet.tiny", str(tmp_path / "street.png"), "--out", str(tmp_path / "pred")]) == 0
    assert (tmp_path / "pred" / "street_overlay.png").is_file()
    assert main(["evaluate", "unet.tiny", "--out", str(tmp_path / "eval.json"), "--no-bf"]) == 0
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["miou"] == pytest.approx(meta["val_metrics"]["miou"], abs=1e-6)
    capsys.readouterr()
    assert main(["weights"]) == 0
    table = capsys.readouterr().out
    assert "unet.tiny" in table and "synthetic train / val" in table


def test_bad_names_and_files(trained, weights_dir, capsys):
    pack_weights(trained, "unet.tiny", commit="abc123", int8=False)
    with pytest.raises(SeglabError, match="No trained weights named 'unet.tinny'.*Did you mean.*unet.tiny"):
        Segmenter.from_pretrained("unet.tinny")
    assert main(["predict", "unet.tinny", "x.png", "--out", str(weights_dir / "pred")]) == 2
    assert "Did you mean 'unet.tiny'" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(SeglabError, match="predict 7 classes.*num_classes=7"):
        create_model("unet", num_classes=3, weights="tiny")
    with pytest.raises(SeglabError, match="Name trained weights <model>.<tag>"):
        pack_weights(trained, "segnet.tiny")
    path = weights_dir / "unet.tiny.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte
    path.write_bytes(bytes(data))
    with pytest.raises(SeglabError, match="does not match its sha256.*damaged"):
        zoo.read_pretrained("unet.tiny")
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(SeglabError, match="Could not read the weights file.*truncated"):
        zoo.read_weights_file(path)


def test_large_weights_download_from_a_url_into_the_cache(trained, weights_dir, tmp_path):
    published = tmp_path / "published"
    entry = pack_weights(trained, "unet.big", out_dir=published, url="file://placeholder", commit="abc123",
                         int8=False)
    # Publish the file and list it (not shipped) in the package's index with its URL.
    url = (published / entry.file).as_uri()
    zoo.register_entry(zoo.PretrainedEntry(entry.name, entry.file, entry.sha256, entry.size, url), weights_dir)
    assert not (weights_dir / entry.file).exists()
    state, meta = zoo.read_pretrained("unet.big")
    assert (tmp_path / "cache" / "weights" / entry.file).is_file() and meta["source"] == "download: file://placeholder"
    # A cached copy that no longer matches is deleted with a clear error.
    cached = tmp_path / "cache" / "weights" / entry.file
    cached.write_bytes(b"junk")
    with pytest.raises(SeglabError, match="does not match the given sha256.*deleted"):
        zoo.read_pretrained("unet.big")
    assert not cached.exists()


@pytest.mark.parametrize("native_bf16", [True, False])
def test_auto_precision_is_bf16_only_for_weights_verified_in_bf16(trained, tmp_path, monkeypatch, native_bf16):
    """amp "auto" (the default of from_checkpoint, predict and serve) runs bf16 only where the CPU has
    it natively and the weights record a passed bf16 check; "none" and "bf16" are always obeyed."""
    import dataclasses

    from seglab.core import runtime
    from seglab.tasks.checkpoint import save_checkpoint

    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: native_bf16)
    ckpt = read_checkpoint(trained)
    verified = tmp_path / "verified.pt"
    save_checkpoint(verified, dataclasses.replace(ckpt, meta=dataclasses.replace(ckpt.meta, verified_precisions=["bf16"])))
    for path, amp, expected in [(trained, "auto", None), (verified, "auto", torch.bfloat16 if native_bf16 else None),
                                (verified, "none", None), (trained, "bf16", torch.bfloat16)]:
        seg = Segmenter.from_checkpoint(path, device="cpu", amp=amp, fast=False)
        assert seg.amp_dtype == expected, (path.name, amp)
    assert runtime.resolve_inference_amp("auto", torch.device("cuda"), ["bf16"]) == "none"  # a CPU check
    assert runtime.passes_default_rule(99.0, -0.5) and not runtime.passes_default_rule(98.99, 0.0)
    assert not runtime.passes_default_rule(99.5, -0.51)


def test_auto_backend_picks_a_shipped_int8_model_only_when_nothing_rules_it_out(trained, weights_dir, monkeypatch):
    """choose_backend's rules, without loading OpenVINO (tests/openvino_cases.py runs the model itself)."""
    import dataclasses

    from seglab.inference import auto
    from seglab.models.weights import file_sha256

    entry = pack_weights(trained, "unet.tiny", commit="abc123", int8=False)
    for suffix in ("xml", "bin"):  # stand-ins: only their names and sha256s are read here
        (weights_dir / f"unet.tiny.int8.{suffix}").write_text(f"<{suffix}/>")
    ir = {"xml": "unet.tiny.int8.xml", "bin": "unet.tiny.int8.bin",
          "xml_sha256": file_sha256(weights_dir / "unet.tiny.int8.xml"),
          "bin_sha256": file_sha256(weights_dir / "unet.tiny.int8.bin")}
    zoo.register_entry(dataclasses.replace(entry, openvino_int8=ir), weights_dir)
    monkeypatch.delenv("SEGLAB_BACKEND")
    monkeypatch.setattr(auto, "_openvino_installed", lambda: True)
    monkeypatch.setattr(auto, "_cuda_available", lambda: False)

    choice = auto.choose_backend("unet.tiny")
    assert choice.backend == "openvino" and choice.openvino_ir == weights_dir / "unet.tiny.int8.xml"
    ruled_out = [({"precision": "f32"}, "--precision f32"), ({"device": "cuda"}, "device cuda"),
                 ({"torch_only": "--tta"}, "--tta")]
    for kwargs, why in ruled_out:
        choice = auto.choose_backend("unet.tiny", **kwargs)
        assert choice.backend == "torch" and why in choice.reason, kwargs
    assert auto.choose_backend(str(trained)).backend == "torch"  # a checkpoint carries no verified int8 model
    assert auto.choose_backend("unet.tiny", "torch").backend == "torch"
    monkeypatch.setenv("SEGLAB_BACKEND", "torch")
    assert "SEGLAB_BACKEND=torch" in auto.choose_backend("unet.tiny").reason
    monkeypatch.delenv("SEGLAB_BACKEND")
    monkeypatch.setattr(auto, "_openvino_installed", lambda: False)
    assert "not installed" in auto.choose_backend("unet.tiny").reason

    with pytest.raises(SeglabError, match="--tta needs the torch backend"):
        auto.choose_backend("unet.tiny", "openvino", torch_only="--tta")
    with pytest.raises(SeglabError, match="is a checkpoint: export it first"):
        auto.choose_backend(str(trained), "openvino")
    with pytest.raises(SeglabError, match="is an exported model"):
        auto.choose_backend("model.onnx", "torch")
    (weights_dir / "unet.tiny.int8.bin").write_text("damaged")
    with pytest.raises(SeglabError, match="OpenVINO int8 weights of 'unet.tiny'.*does not match its sha256"):
        auto.choose_backend("unet.tiny", "openvino")
    zoo.register_entry(entry, weights_dir)  # packed without int8: auto stays on PyTorch, openvino is refused
    assert "no int8 OpenVINO model" in auto.choose_backend("unet.tiny").reason
    with pytest.raises(SeglabError, match="ships no int8 OpenVINO model"):
        auto.choose_backend("unet.tiny", "openvino")


def test_models_with_dropout_keep_pytorch_as_their_default(tmp_path, weights_dir, capsys):
    """No int8 model is made for a Monte-Carlo dropout model: sampling needs PyTorch (and NNCF never loads here)."""
    cfg = load_config(None, ["--model.name", "bayesian_segnet_basic", "--data.synthetic_train", "4",
                             "--data.synthetic_val", "2", "--data.synthetic_size", "[32, 48]", "--train.epochs", "1",
                             "--train.batch_size", "4", "--train.threads", "1", "--train.amp", "none",
                             "--train.out_dir", str(tmp_path), "--train.run_name", "run"])
    entry = pack_weights(train(cfg).best_checkpoint, "bayesian_segnet_basic.tiny", commit="abc123")
    assert entry.openvino_int8 is None and "int8_openvino" not in zoo.pretrained_metadata(entry.name)["precision_checks"]
    assert "no int8 OpenVINO model: the model has dropout" in capsys.readouterr().out


def test_infer_scale_packs_a_model_that_runs_at_the_scaled_size(trained, weights_dir, tmp_path, monkeypatch):
    with pytest.raises(SeglabError, match="infer_scale 1.5 scales data.image_size, which is not set"):
        pack_weights(trained, "unet.tiny", commit="abc123", int8=False, infer_scale=1.5)
    cfg = load_config(None, ["--model.name", "unet", "--model.kwargs", "{depth: 2, base_channels: 4}",
                             "--data.synthetic_train", "8", "--data.synthetic_val", "4", "--data.synthetic_size",
                             "[48, 64]", "--data.image_size", "[32, 48]", "--train.epochs", "1", "--train.batch_size",
                             "4", "--train.threads", "1", "--train.amp", "none", "--train.out_dir", str(tmp_path),
                             "--train.run_name", "run"])
    checkpoint = train(cfg).best_checkpoint
    assert read_checkpoint(checkpoint).meta.image_size == [32, 48]  # trained and validated at image_size
    sizes: list[tuple[int, ...]] = []
    real = semantic.forward_at_size
    monkeypatch.setattr(semantic, "forward_at_size", lambda model, x, size: sizes.append(tuple(size)) or real(model, x, size))
    scaled = evaluate_checkpoint(str(checkpoint), ["--train.amp", "none", "--data.infer_scale", "1.5"], "val")
    assert set(sizes) == {(48, 72)}  # seglab evaluate --data.infer_scale 1.5 scores at 1.5 x image_size
    pack_weights(checkpoint, "unet.scaled", commit="abc123", int8=False, infer_scale=1.5)
    packed = read_checkpoint("unet.scaled")
    assert packed.meta.image_size == [48, 72] and packed.meta.config["data"]["infer_scale"] == 1.5
    assert Segmenter.from_pretrained("unet.scaled", device="cpu").infer_size == [48, 72]
    _, meta = zoo.read_pretrained("unet.scaled")
    assert meta["val_metrics_fp32"]["miou"] == pytest.approx(scaled["miou"], abs=1e-9)  # packed figures: the new size
    assert meta["trained"]["input_size"] == [32, 48]  # while the record of training keeps its own size
    sizes.clear()
    evaluate_checkpoint("unet.scaled", ["--train.amp", "none"], "val")
    assert set(sizes) == {(48, 72)}
