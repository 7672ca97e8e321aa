"""``seglab weights``: the table of trained weights, and ``seglab weights pack`` that makes an entry.

Packing turns a trained checkpoint into a seglab weights file (fp16 safetensors, metadata in the
header), scores it on the val split in fp32 (the checkpoint) and in fp16 (the packed file) so the
entry records both, and adds it to the ``index.json`` of the weights folder (the package's own
``seglab/weights/`` by default). Weights over 4 MB must be published at a URL (``--url``): they
are listed, not shipped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seglab.apps.evaluate import evaluate_checkpoint
from seglab.core.config import apply_overrides
from seglab.core.errors import SeglabError
from seglab.core.runtime import passes_default_rule
from seglab.engine.logging import json_safe
from seglab.models import zoo
from seglab.models.zoo import PretrainedEntry, list_pretrained, register_entry, write_weights_file
from seglab.tasks.checkpoint import checkpoint_config, read_checkpoint

__all__ = ["MAX_SHIPPED_BYTES", "check_bf16", "format_weights_table", "pack_weights"]

#: Shipped weights stay under this size (the package must stay small); larger ones need a URL.
MAX_SHIPPED_BYTES = 4 * 1024 * 1024
#: Metrics copied into an entry (besides per-class IoU).
_SUMMARY = ("global_acc", "class_acc", "miou", "fwiou", "bf", "pixel_error", "foreground_iou", "rand_error")


def _pct(value: Any) -> str:
    return "-" if not isinstance(value, float) or value != value else f"{100 * value:.1f}"


def format_weights_table() -> str:
    """One line per trained-weights entry: model, data, classes, val G / C / mIoU / BF, size, where."""
    rows = [f"{'name':<24}{'data (trained on / scored on)':<34}{'classes':>8}{'G':>7}{'C':>7}{'mIoU':>7}{'BF':>7}"
            f"{'MB':>6}  source"]
    for name in list_pretrained():
        meta = zoo.pretrained_metadata(name)
        val, trained = meta["val_metrics"], meta["trained"]
        entry_size = meta.get("size_bytes", 0) / 1e6
        data = f"{trained['dataset']} {trained['train_split']} / {trained['val_split']}"
        rows.append(f"{name:<24}{data:<34}{meta['checkpoint']['num_classes']:>8}{_pct(val.get('global_acc')):>7}"
                    f"{_pct(val.get('class_acc')):>7}{_pct(val.get('miou')):>7}{_pct(val.get('bf')):>7}"
                    f"{entry_size:>6.1f}  {meta.get('source', 'shipped')}")
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


def check_bf16(weights: str | Path, overrides: list[str], split: str) -> dict[str, Any]:
    """bf16 autocast against fp32 on every image of ``split``, through the prediction path users run
    (:class:`~seglab.inference.predictor.Segmenter`, fast path, labels at the image's size): argmax
    agreement, both mIoUs, and whether bf16 passes the default-path rule
    (:func:`seglab.core.runtime.passes_default_rule`) and so may run by default where the CPU has it."""
    from seglab.data import build_dataset, dataset_info
    from seglab.inference.predictor import Segmenter
    from seglab.metrics import SegmentationMetrics

    cfg = apply_overrides(checkpoint_config(read_checkpoint(weights)), overrides)
    data = build_dataset(dataclasses.replace(cfg.data, image_size=None), split, train=False)
    info = dataset_info(cfg.data)
    paths = {amp: Segmenter.from_checkpoint(weights, device="cpu", amp=amp) for amp in ("none", "bf16")}
    metrics = {amp: SegmentationMetrics(info.num_classes, info.ignore_index, compute_bf=False) for amp in paths}
    same = total = 0
    for i in range(len(data)):
        image, target = data.load_image(i), torch.from_numpy(data.load_mask(i).astype(np.int64))
        labels = {amp: np.asarray(seg.predict(image)) for amp, seg in paths.items()}
        same += int((labels["none"] == labels["bf16"]).sum())
        total += labels["none"].size
        for amp, predicted in labels.items():
            metrics[amp].update(torch.from_numpy(predicted.astype(np.int64)), target)
    fp32, bf16 = (100 * metrics[amp].compute()["miou"] for amp in ("none", "bf16"))
    agreement = 100 * same / max(total, 1)
    return json_safe({"split": split, "images": len(data), "agreement_pct": agreement, "miou_fp32": fp32,
                      "miou": bf16, "miou_change": bf16 - fp32, "hardware": _hardware(),
                      "passes_default_rule": passes_default_rule(agreement, bf16 - fp32)})


def pack_weights(checkpoint: str | Path, name: str, *, out_dir: str | Path | None = None, recipe: str | None = None,
                 commit: str | None = None, url: str | None = None, overrides: list[str] | None = None,
                 split: str = "val", hardware: str | None = None,
                 also_splits: list[str] | None = None) -> PretrainedEntry:
    """Pack ``checkpoint`` as the trained weights ``name`` (``<model>.<tag>``) into ``out_dir``.

    ``also_splits`` (e.g. ``["train:0001TP"]``, a sequence held out of training) are scored with the
    packed fp16 weights too and recorded under ``other_metrics``, beside the ``split`` figures.
    """
    ckpt = read_checkpoint(checkpoint)
    model, _, tag = name.rpartition(".")
    if model != ckpt.meta.model_name or not tag:
        raise SeglabError(f"Name trained weights <model>.<tag> with the checkpoint's model {ckpt.meta.model_name!r}, "
                          f"e.g. {ckpt.meta.model_name}.camvid; got {name!r}.")
    folder = Path(out_dir) if out_dir is not None else zoo.WEIGHTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
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
        if ckpt.meta.task == "semantic":  # bf16 runs by default only for weights that pass this check
            print(f"seglab: checking bf16 against fp32 on {split} ...", flush=True)
            check = check_bf16(trial, overrides, split)
            metadata["precision_checks"] = {"bf16": check}
            metadata["checkpoint"]["verified_precisions"] = ["bf16"] if check["passes_default_rule"] else []
    if metadata["size_bytes"] > MAX_SHIPPED_BYTES and url is None:
        raise SeglabError(f"{name} is {metadata['size_bytes'] / 2**20:.1f} MiB in fp16, over the 4 MiB that may ship "
                          "in the package: publish the file and pass its --url (the entry then downloads it).")
    sha256 = write_weights_file(target, ckpt.model, metadata)
    entry = PretrainedEntry(name, target.name, sha256, target.stat().st_size, url)
    register_entry(entry, folder)
    fp32, fp16 = metadata["val_metrics_fp32"], metadata["val_metrics"]
    print(f"seglab: wrote {target} ({entry.size / 1e6:.2f} MB, sha256 {sha256[:12]}...); {split} mIoU fp32 "
          f"{_pct(fp32.get('miou'))}, fp16 {_pct(fp16.get('miou'))}")
    if "precision_checks" in metadata:
        check = metadata["precision_checks"]["bf16"]
        print(f"seglab: bf16 agrees with fp32 on {check['agreement_pct']:.2f} % of the {split} pixels, mIoU "
              f"{check['miou_change']:+.2f}: {'runs by default' if check['passes_default_rule'] else 'fp32 stays the default'}"
              " where the CPU has native bf16")
    return entry
