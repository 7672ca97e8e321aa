"""``seglab evaluate``: score a checkpoint (or its ONNX export) on a split of its data set."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from seglab.core.config import apply_overrides
from seglab.core.errors import SeglabError
from seglab.core.runtime import resolve_amp, select_device
from seglab.data import build_dataset, dataset_info, inference_size
from seglab.engine.evaluate import evaluate_model
from seglab.engine.loader import build_eval_loader
from seglab.inference.exported import load_exported
from seglab.inference.onnx_backend import OnnxSegmenter
from seglab.ops.tta import TTA, as_tta
from seglab.tasks.checkpoint import check_compatible, checkpoint_config, model_from_checkpoint, read_checkpoint
from seglab.tasks.instance import InstanceTask
from seglab.tasks.semantic import SemanticTask, em_foreground_class, require_dropout

__all__ = ["evaluate_checkpoint"]


def evaluate_checkpoint(path: str, overrides: list[str] | None = None, split: str = "val", batch_size: int = 2,
                        compute_bf: bool = True, device: str = "auto", mc_samples: int = 0,
                        onnx: str | None = None, tta: TTA | bool | str | None = None,
                        bf_protocol: str | None = None, backend: str | None = None, precision: str = "auto") -> dict:
    """Score a checkpoint on a split of its own data set (``overrides`` may point ``--data.root`` elsewhere).

    With ``onnx`` (a file exported from this checkpoint, fp32 or int8; ``.onnx`` or OpenVINO ``.xml``)
    onnxruntime or OpenVINO (``backend``, ``precision``: :func:`seglab.inference.exported.load_exported`)
    computes the logits instead of PyTorch, through the same resizing and scoring, so the two are comparable.
    ``tta`` (a :class:`seglab.ops.tta.TTA`, True for the default one, or a scale string such as
    ``"0.75,1,1.25"``) averages flipped and rescaled views (:func:`seglab.ops.tta.tta_forward`).

    ``bf_protocol`` (``"fast"`` or ``"paper"``, :mod:`seglab.metrics.boundary`) picks the BF rules;
    None: the checkpoint's ``train.bf_protocol`` (after ``overrides``). The results' ``bf_protocol``
    key records the one used.

    Returns the metrics dict plus ``class_names``, ``split``, ``checkpoint``, ``tta`` (the spec
    used, or None) (and ``onnx``).
    """
    tta = as_tta(tta)
    if tta is not None and mc_samples:
        raise SeglabError("--tta and --mc-samples cannot be combined: test-time augmentation averages flipped and "
                          "rescaled views of a deterministic model; choose one.")
    _refuse_inapplicable(overrides or [])
    if onnx is None and (backend is not None or precision != "auto"):
        raise SeglabError("--backend and --precision choose the runtime of an exported model: add --onnx FILE "
                          "(from `seglab export`), or drop them to score the checkpoint in PyTorch.")
    ckpt = read_checkpoint(path)
    meta = ckpt.meta
    cfg = apply_overrides(checkpoint_config(ckpt), overrides or [])
    if bf_protocol is not None:
        cfg.train.bf_protocol = bf_protocol  # validated by TrainConfig: a clear error listing the choices
    info = dataset_info(cfg.data)
    check_compatible(ckpt, meta.model_name, info.num_classes, path, task=cfg.task)
    dev = select_device(device)
    if meta.task == "instance":
        return _evaluate_instances(ckpt, path, cfg, info, split, batch_size, dev, onnx=onnx, tta=tta,
                                   mc_samples=mc_samples)
    infer_size = meta.image_size
    if cfg.data.infer_scale != checkpoint_config(ckpt).data.infer_scale:  # --data.infer_scale S: score at another size
        infer_size = inference_size(cfg.data)
    if onnx is not None:
        if mc_samples:
            raise SeglabError("--mc-samples needs the PyTorch model: an exported ONNX graph has no dropout sampling.")
        model = _OnnxModule(load_exported(onnx, backend, precision=precision), meta.model_name, info.num_classes)
        dev = torch.device("cpu")
        infer_size = model.segmenter.infer_size
        if tta is not None and tta.scales != (1.0,) and not model.segmenter.metadata.get("dynamic_hw", True):
            raise SeglabError(f"{onnx!r} was exported for {infer_size} inputs only, so --tta can flip but not "
                              "rescale: pass --tta-scales 1 or re-export with dynamic height/width.")
    else:
        model = model_from_checkpoint(ckpt, path).to(dev)
    if mc_samples:
        require_dropout(model, meta.model_name)
    task = SemanticTask(info.num_classes, info.ignore_index, info.class_names, info.palette, infer_size=infer_size,
                        compute_bf=compute_bf, mc_samples=mc_samples, em_foreground=em_foreground_class(cfg.data.dataset),
                        tta=tta, bf_protocol=cfg.train.bf_protocol)
    data_cfg = dataclasses.replace(cfg.data, image_size=None, limit=cfg.data.limit)
    dataset = build_dataset(data_cfg, split, train=False)
    loader = build_eval_loader(dataset, batch_size, cfg.data.num_workers, dev.type == "cuda")
    results = evaluate_model(model, loader, task, dev, resolve_amp(cfg.train.amp, dev))
    extra = {"onnx": str(onnx)} if onnx is not None else {}
    return {"checkpoint": str(path), **extra, "split": split, "tta": tta.to_dict() if tta is not None else None,
            "class_names": list(info.class_names), **results}


#: The only ``train.`` keys evaluation reads; model and loss come from the checkpoint itself.
_EVALUATE_TRAIN_KEYS = ("train.amp", "train.bf_protocol", "train.threads")


def _refuse_inapplicable(overrides: list[str]) -> None:
    """A clear error for overrides that evaluation would silently ignore (it scores the checkpoint's model)."""
    keys = [t[2:].split("=", 1)[0] for t in overrides if t.startswith("--")]
    ignored = [k for k in keys if k.split(".", 1)[0] in ("model", "loss")
               or (k.startswith("train.") and k not in _EVALUATE_TRAIN_KEYS)]
    if ignored:
        raise SeglabError(f"seglab evaluate scores the checkpoint's own model, so --{ignored[0]} cannot apply: drop it. "
                          "Overrides here set the data (--data.root, --data.num_workers, ...), --train.amp and "
                          "--train.bf_protocol; to score another model, pass its checkpoint.")


def _evaluate_instances(ckpt, path: str, cfg, info, split: str, batch_size: int, dev: torch.device, *, onnx, tta,
                        mc_samples: int) -> dict:
    """COCO mask/box AP, matched mask IoU and the rendered label maps' semantic metrics of an instance checkpoint."""
    if onnx is not None or tta is not None or mc_samples:
        raise SeglabError("--onnx, --tta and --mc-samples apply to semantic checkpoints; "
                          f"{path!r} is an instance (Mask R-CNN) checkpoint: evaluate it without them.")
    task = InstanceTask.from_config(cfg, info)
    model = model_from_checkpoint(ckpt, path).to(dev)
    dataset = build_dataset(dataclasses.replace(cfg.data, image_size=None), split, train=False)
    loader = build_eval_loader(dataset, batch_size, cfg.data.num_workers, dev.type == "cuda")
    results = evaluate_model(model, loader, task, dev, resolve_amp(cfg.train.amp, dev))
    return {"checkpoint": str(path), "split": split, "tta": None, "class_names": list(info.class_names), **results}


class _OnnxModule(nn.Module):
    """An exported model's runtime (onnxruntime or OpenVINO) behind the ``nn.Module`` call that
    :func:`evaluate_model` makes."""

    def __init__(self, segmenter: OnnxSegmenter, model_name: str, num_classes: int) -> None:
        super().__init__()
        self.segmenter = segmenter
        if (segmenter.model_name, segmenter.num_classes) != (model_name, num_classes):
            raise SeglabError(f"{str(segmenter.path)!r} holds {segmenter.model_name!r} with {segmenter.num_classes} classes, "
                              f"but the checkpoint is {model_name!r} with {num_classes}: export this checkpoint with "
                              "`seglab export` and pass that file.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmenter.run(x.float().contiguous())
