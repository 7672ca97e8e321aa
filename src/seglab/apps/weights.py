"""``seglab weights``: the table of trained weights, and ``seglab weights pack`` that makes an entry.

Packing turns a trained checkpoint into a seglab weights file (fp16 safetensors, metadata in the
header), scores it on the val split in fp32 (the checkpoint) and in fp16 (the packed file) so the
entry records both, and adds it to the ``index.json`` of the weights folder (the package's own
``seglab/weights/`` by default). Weights over 4 MB must be published at a URL (``--url``): they
are listed, not shipped.

Packing also checks the precisions a prediction could run at by default, on every val image
against fp32 (:func:`seglab.core.runtime.passes_default_rule`): bf16 autocast, and, where OpenVINO
and NNCF are installed, an int8 OpenVINO model quantized by NNCF from the packed weights
(calibrated on training frames spread over the split). A passing int8 model ships beside the
weights (``<name>.int8.xml`` + ``.bin``) and becomes the default CPU path of that entry where
OpenVINO is installed (:mod:`seglab.inference.auto`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seglab.apps.evaluate import evaluate_checkpoint
from seglab.core.config import apply_overrides
from seglab.core.errors import SeglabError
from seglab.core.runtime import passes_default_rule
from seglab.data import inference_size
from seglab.engine.logging import json_safe
from seglab.models import zoo
from seglab.models.zoo import PretrainedEntry, list_pretrained, register_entry, write_weights_file
from seglab.ops.contract import has_dropout
from seglab.tasks.checkpoint import checkpoint_config, model_from_checkpoint, read_checkpoint

__all__ = ["INT8_CALIBRATION_IMAGES", "MAX_SHIPPED_BYTES", "check_bf16", "check_openvino_int8", "format_weights_table",
           "pack_weights"]

#: Shipped weights stay under this size (the package must stay small); larger ones need a URL.
MAX_SHIPPED_BYTES = 4 * 1024 * 1024
#: Metrics copied into an entry (besides per-class IoU).
#: Training frames NNCF calibrates an int8 model on (spread over the split).
INT8_CALIBRATION_IMAGES = 16
_SUMMARY = ("global_acc", "class_acc", "miou", "fwiou", "bf", "pixel_error", "foreground_iou", "rand_error")


def _pct(value: Any) -> str:
    return "-" if not isinstance(value, float) or value != value else f"{100 * value:.1f}"


def _verified(meta: dict[str, Any]) -> str:
    """The precisions besides fp32 the weights passed the default-path rule in (``bf16,int8``), or ``-``."""
    names = {"bf16": "bf16", "int8_openvino": "int8"}
    return ",".join(names.get(p, p) for p in meta["checkpoint"].get("verified_precisions") or []) or "-"


def format_weights_table() -> str:
    """One line per trained-weights entry: model, data, classes, val G / C / mIoU / BF, size, the precisions
    verified for the default path (bf16, int8 OpenVINO), where."""
    width = max([24, *(len(name) + 2 for name in list_pretrained())])
    rows = [f"{'name':<{width}}{'data (trained on / scored on)':<34}{'classes':>8}{'G':>7}{'C':>7}{'mIoU':>7}{'BF':>7}"
            f"{'MB':>6}  {'verified':<16}source"]
    for name in list_pretrained():
        meta = zoo.pretrained_metadata(name)
        val, trained = meta["val_metrics"], meta["trained"]
        entry_size = meta.get("size_bytes", 0) / 1e6
        data = f"{trained['dataset']} {trained['train_split']} / {trained['val_split']}"
        rows.append(f"{name:<{width}}{data:<34}{meta['checkpoint']['num_classes']:>8}{_pct(val.get('global_acc')):>7}"
                    f"{_pct(val.get('class_acc')):>7}{_pct(val.get('miou')):>7}{_pct(val.get('bf')):>7}"
                    f"{entry_size:>6.1f}  {_verified(meta):<16}{meta.get('source', 'shipped')}")
    if len(rows) == 1:
        rows.append("(none)")
    return "\n".join(rows)


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _hardware() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.backends.cpu.get_cpu_capability()})")


def _training_seconds(run_dir: Path) -> float | None:
    """Training plus validation time from the run's ``metrics.jsonl``, if it is beside the checkpoint."""
    log = run_dir / "metrics.jsonl"
    if not log.is_file():
        return None
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return sum(r.get("epoch_seconds", 0.0) + r.get("val_seconds", 0.0) for r in records)


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    return json_safe({**{k: results[k] for k in _SUMMARY if k in results}, "iou": results.get("iou"),
                      "split": results["split"]})


def _compare_on_split(weights: str | Path, overrides: list[str], split: str,
                      candidate: Callable[[np.ndarray], np.ndarray],
                      fp32_labels: list[np.ndarray] | None = None) -> dict[str, Any]:
    """``candidate`` (image -> labels) against fp32 PyTorch prediction on every image of ``split``: argmax
    agreement, both mIoUs, and whether the candidate passes the default-path rule. ``fp32_labels``, when
    given, caches the fp32 label maps: filled by the first check, reused by the next."""
    from seglab.data import build_dataset, dataset_info
    from seglab.inference.predictor import Segmenter
    from seglab.metrics import SegmentationMetrics

    cfg = apply_overrides(checkpoint_config(read_checkpoint(weights)), overrides)
    data = build_dataset(dataclasses.replace(cfg.data, image_size=None), split, train=False)
    info = dataset_info(cfg.data)
    cache = fp32_labels if fp32_labels is not None else []
    reference = None if len(cache) == len(data) else Segmenter.from_checkpoint(weights, device="cpu", amp="none")
    if reference is not None:
        cache.clear()
    paths = ("fp32", "candidate")
    metrics = {key: SegmentationMetrics(info.num_classes, info.ignore_index, compute_bf=False) for key in paths}
    same = total = 0
    for i in range(len(data)):
        image, target = data.load_image(i), torch.from_numpy(data.load_mask(i).astype(np.int64))
        if reference is not None:
            cache.append(np.asarray(reference.predict(image)))
        labels = {"fp32": cache[i], "candidate": np.asarray(candidate(image))}
        same += int((labels["fp32"] == labels["candidate"]).sum())
        total += labels["fp32"].size
        for key, predicted in labels.items():
            metrics[key].update(torch.from_numpy(predicted.astype(np.int64)), target)
    fp32, other = (100 * metrics[key].compute()["miou"] for key in paths)
    agreement = 100 * same / max(total, 1)
    return json_safe({"split": split, "images": len(data), "agreement_pct": agreement, "miou_fp32": fp32,
                      "miou": other, "miou_change": other - fp32, "hardware": _hardware(),
                      "passes_default_rule": passes_default_rule(agreement, other - fp32)})


def check_bf16(weights: str | Path, overrides: list[str], split: str,
               fp32_labels: list[np.ndarray] | None = None) -> dict[str, Any]:
    """bf16 autocast against fp32 on every image of ``split``, through the prediction path users run
    (:class:`~seglab.inference.predictor.Segmenter`, fast path, labels at the image's size): argmax
    agreement, both mIoUs, and whether bf16 passes the default-path rule
    (:func:`seglab.core.runtime.passes_default_rule`) and so may run by default where the CPU has it."""
    from seglab.inference.predictor import Segmenter

    bf16 = Segmenter.from_checkpoint(weights, device="cpu", amp="bf16")
    return _compare_on_split(weights, overrides, split, bf16.predict, fp32_labels)


def openvino_int8_missing() -> str | None:
    """Why an int8 OpenVINO model cannot be made here (a sentence with the fix), or None."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None:
        return "OpenVINO and NNCF are not installed (pip install 'seglab[openvino]')"
    return None


def check_openvino_int8(weights: str | Path, overrides: list[str], split: str, out_xml: str | Path,
                        calibration: int = INT8_CALIBRATION_IMAGES,
                        fp32_labels: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Quantize ``weights`` to an int8 OpenVINO IR at ``out_xml`` (NNCF, calibrated on ``calibration``
    training frames spread over the split) and compare it with fp32 PyTorch on every image of ``split``,
    as :func:`check_bf16` does for bf16."""
    from seglab.export.onnx import export_onnx
    from seglab.export.quantize import calibration_images, quantize_openvino
    from seglab.inference.openvino_backend import OpenVinoSegmenter

    out_xml = Path(out_xml)
    onnx_file = out_xml.with_name(out_xml.stem + ".fp32.onnx")
    export_onnx(str(weights), onnx_file, verbose=False)
    images = calibration_images(str(weights), overrides, calibration)
    quantize_openvino(onnx_file, out_xml, images, verbose=False)
    onnx_file.unlink()
    int8 = OpenVinoSegmenter(out_xml, precision="auto")  # an int8 model's float remainder runs f32
    check = _compare_on_split(weights, overrides, split, int8.predict, fp32_labels)
    return {**check, "runtime": "openvino", "quantizer": "nncf", "calibration_images": len(images),
            "calibration_split": "training split, spread frames"}


def _ship_openvino_int8(trial_xml: Path, folder: Path, name: str) -> dict[str, str]:
    """Move a checked int8 IR into ``folder`` as ``<name>.int8.xml`` + ``.bin``: the entry's files and sha256s."""
    from seglab.models.weights import file_sha256

    files = {"xml": f"{name}.int8.xml", "bin": f"{name}.int8.bin"}
    os.replace(trial_xml.with_suffix(".bin"), folder / files["bin"])  # the weights first, then the graph
    os.replace(trial_xml, folder / files["xml"])
    return {**files, **{f"{kind}_sha256": file_sha256(folder / file) for kind, file in files.items()}}


def pack_weights(checkpoint: str | Path, name: str, *, out_dir: str | Path | None = None, recipe: str | None = None,
                 commit: str | None = None, url: str | None = None, overrides: list[str] | None = None,
                 split: str = "val", hardware: str | None = None,
                 also_splits: list[str] | None = None, int8: bool = True,
                 infer_scale: float | None = None) -> PretrainedEntry:
    """Pack ``checkpoint`` as the trained weights ``name`` (``<model>.<tag>``) into ``out_dir``.

    ``also_splits`` (e.g. ``["train:0001TP"]``, a sequence held out of training) are scored with the
    packed fp16 weights too and recorded under ``other_metrics``, beside the ``split`` figures.
    ``int8`` (where OpenVINO and NNCF are installed) checks an int8 OpenVINO model of the packed weights
    and ships it beside them when it passes the default-path rule. ``infer_scale`` (``data.infer_scale``)
    makes the packed model run at ``data.image_size`` times it, everywhere it runs.
    """
    ckpt = read_checkpoint(checkpoint)
    model, _, tag = name.rpartition(".")
    if model != ckpt.meta.model_name or not tag:
        raise SeglabError(f"Name trained weights <model>.<tag> with the checkpoint's model {ckpt.meta.model_name!r}, "
                          f"e.g. {ckpt.meta.model_name}.camvid; got {name!r}.")
    folder = Path(out_dir) if out_dir is not None else zoo.WEIGHTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (folder / f"{name}.int8.xml", folder / f"{name}.int8.bin"):  # a former pack's; re-made if it passes
        stale.unlink(missing_ok=True)
    shipped_int8: dict[str, str] | None = None
    cfg = checkpoint_config(ckpt)
    metadata: dict[str, Any] = {
        "name": name,
        "checkpoint": dataclasses.asdict(ckpt.meta),
        "trained": {"dataset": cfg.data.dataset, "train_split": cfg.data.train_split, "val_split": split,
                    # last.pt is the schedule's end, chosen on nothing; best.pt was chosen on val_split.
                    "selected_on": "none (last epoch)" if Path(checkpoint).name == "last.pt" else cfg.data.val_split,
                    "input_size": cfg.data.image_size or cfg.data.crop_size, "recipe": recipe,
                    "commit": commit or _git_commit(), "train_seconds": _training_seconds(Path(checkpoint).parent),
                    "hardware": hardware or _hardware(), "epochs": ckpt.training.epoch if ckpt.training else None},
        "source": f"download: {url}" if url else "shipped",
    }
    # Scored in fp32 compute on every machine (the recipe's amp may be bf16 on CPUs that have it), so the
    # entry's figures compare fp32 weights with fp16 weights and nothing else.
    overrides = ["--train.amp", "none", *(overrides or [])]
    if infer_scale is not None:  # the entry runs at the new size; every score below is taken at it
        metadata["checkpoint"]["image_size"] = inference_size(dataclasses.replace(cfg.data, infer_scale=infer_scale))
        metadata["checkpoint"]["config"].setdefault("data", {})["infer_scale"] = float(infer_scale)
        overrides += ["--data.infer_scale", str(float(infer_scale))]
    print(f"seglab: scoring {checkpoint} (fp32) on {split} ...", flush=True)
    metadata["val_metrics_fp32"] = _summary(evaluate_checkpoint(str(checkpoint), overrides, split))
    target = folder / f"{name}.safetensors"
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        trial = Path(tmp) / f"{name}.safetensors"
        write_weights_file(trial, ckpt.model, {**metadata, "val_metrics": metadata["val_metrics_fp32"]})
        print(f"seglab: scoring the fp16 weights on {split} ...", flush=True)
        metadata["val_metrics"] = _summary(evaluate_checkpoint(str(trial), overrides, split))
        metadata["other_metrics"] = {}
        for other in also_splits or []:
            print(f"seglab: scoring the fp16 weights on {other} ...", flush=True)
            metadata["other_metrics"][other] = _summary(evaluate_checkpoint(str(trial), overrides, other))
        metadata["size_bytes"] = trial.stat().st_size
        if metadata["size_bytes"] > MAX_SHIPPED_BYTES and url is None:
            raise SeglabError(f"{name} is {metadata['size_bytes'] / 2**20:.1f} MiB in fp16, over the 4 MiB that may ship "
                              "in the package: publish the file and pass its --url (the entry then downloads it).")
        if ckpt.meta.task == "semantic":  # bf16 runs by default only for weights that pass this check
            print(f"seglab: checking bf16 against fp32 on {split} ...", flush=True)
            fp32_labels: list[np.ndarray] = []  # the fp32 reference, predicted once for both checks
            check = check_bf16(trial, overrides, split, fp32_labels)
            metadata["precision_checks"] = {"bf16": check}
            metadata["checkpoint"]["verified_precisions"] = ["bf16"] if check["passes_default_rule"] else []
            missing = ("not asked for (--no-int8)" if not int8 else "downloaded weights ship no int8 model" if url
                       else "the model has dropout: Monte-Carlo sampling (predict --mc-samples, serve's mc_samples) "
                            "needs PyTorch, so it stays the default" if has_dropout(model_from_checkpoint(ckpt))
                       else openvino_int8_missing())
            if missing:
                print(f"seglab: no int8 OpenVINO model: {missing}", flush=True)
            else:
                print(f"seglab: quantizing to int8 (OpenVINO, NNCF) and checking it against fp32 on {split} ...",
                      flush=True)
                check = check_openvino_int8(trial, overrides, split, Path(tmp) / "int8.xml",
                                            fp32_labels=fp32_labels)
                metadata["precision_checks"]["int8_openvino"] = check
                if check["passes_default_rule"]:
                    metadata["checkpoint"]["verified_precisions"].append("int8_openvino")
                    shipped_int8 = _ship_openvino_int8(Path(tmp) / "int8.xml", folder, name)
    sha256 = write_weights_file(target, ckpt.model, metadata)
    entry = PretrainedEntry(name, target.name, sha256, target.stat().st_size, url, shipped_int8)
    register_entry(entry, folder)
    fp32, fp16 = metadata["val_metrics_fp32"], metadata["val_metrics"]
    print(f"seglab: wrote {target} ({entry.size / 1e6:.2f} MB, sha256 {sha256[:12]}...); {split} mIoU fp32 "
          f"{_pct(fp32.get('miou'))}, fp16 {_pct(fp16.get('miou'))}")
    if "precision_checks" in metadata:
        check = metadata["precision_checks"]["bf16"]
        print(f"seglab: bf16 agrees with fp32 on {check['agreement_pct']:.2f} % of the {split} pixels, mIoU "
              f"{check['miou_change']:+.2f}: {'runs by default' if check['passes_default_rule'] else 'fp32 stays the default'}"
              " where the CPU has native bf16")
        int8_check = metadata["precision_checks"].get("int8_openvino")
        if int8_check:
            print(f"seglab: OpenVINO int8 agrees with fp32 on {int8_check['agreement_pct']:.2f} % of the {split} "
                  f"pixels, mIoU {int8_check['miou_change']:+.2f}: "
                  + (f"ships as {shipped_int8['xml']} and runs by default where OpenVINO is installed" if shipped_int8
                     else "not shipped"))
    return entry
