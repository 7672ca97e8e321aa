"""The default prediction path: the fastest one verified to keep a model's labels.

:func:`load_predictor` is what ``seglab predict`` and ``seglab serve`` open a model with. With
``backend="auto"`` (the default) it picks, in order:

1. an exported file (``.onnx``, OpenVINO ``.xml``) runs in its own runtime (:func:`load_exported`);
2. trained weights by name that ship an int8 OpenVINO model run in OpenVINO, on the CPU, when
   OpenVINO is installed, ``precision`` is ``auto`` and nothing asks for a PyTorch-only feature
   (test-time augmentation, Monte-Carlo dropout, instance outputs, CUDA). ``seglab weights pack``
   ships that model only when it agreed with fp32 on at least 99 % of the val pixels and lost at
   most 0.5 mIoU (:func:`seglab.core.runtime.passes_default_rule`);
3. PyTorch (:meth:`Segmenter.from_checkpoint`), at bf16 where the CPU has it natively and the weights
   record that bf16 passed the same rule, else fp32.

If OpenVINO cannot read or compile the shipped model (an OpenVINO too old for the file), the
prediction falls back to PyTorch with a warning. ``SEGLAB_BACKEND=torch`` in the environment keeps
``auto`` on PyTorch everywhere.

Example:
    >>> seg = load_predictor("segnet_basic.camvid")                    # doctest: +SKIP
    >>> seg.backend, seg.predict("street.png").shape                   # doctest: +SKIP
    ('openvino', (360, 480))
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from seglab.core.errors import SeglabError
from seglab.inference.base import Predictor
from seglab.inference.exported import is_exported_file, load_exported

__all__ = ["BACKENDS", "BackendChoice", "choose_backend", "load_predictor"]

#: What ``backend`` may name; ``auto`` (or None) applies the rules of this module.
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnxruntime", "openvino")
_ENV = "SEGLAB_BACKEND"


@dataclass(frozen=True)
class BackendChoice:
    """Which runtime a source will run in, and why (printed by ``seglab predict``)."""

    backend: str  # torch | onnxruntime | openvino
    reason: str
    openvino_ir: Path | None = None  # the shipped int8 model, when that is what runs


def _openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def choose_backend(source: str | Path, backend: str | None = "auto", *, device: str = "auto",
                   precision: str = "auto", torch_only: str | None = None) -> BackendChoice:
    """The runtime :func:`load_predictor` opens ``source`` in (no model is loaded).

    ``torch_only`` names a requested feature only PyTorch has (e.g. ``"--tta"``), which keeps ``auto``
    on PyTorch and makes another explicit backend an error.
    """
    from seglab.models.zoo import get_pretrained, is_pretrained_name, pretrained_openvino_ir

    backend = backend or "auto"
    if backend not in BACKENDS:
        raise SeglabError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    exported = is_exported_file(source)
    if backend == "torch":
        if exported:
            raise SeglabError(f"{str(source)!r} is an exported model: run it with --backend onnxruntime or openvino, "
                              "or predict from the checkpoint it was exported from.")
        return BackendChoice("torch", "asked for")
    if backend != "auto" or exported:
        if torch_only:
            raise SeglabError(f"{torch_only} needs the torch backend; {str(source)!r} would run in "
                              f"{'its exported runtime' if exported else backend}. Drop {torch_only}, or use --backend torch.")
        if exported:
            return BackendChoice(backend if backend != "auto" else "exported", "an exported file")
        if backend == "openvino" and is_pretrained_name(str(source)):
            ir = pretrained_openvino_ir(str(source))
            if ir is None:
                raise SeglabError(f"{str(source)!r} ships no int8 OpenVINO model: export one with `seglab export "
                                  f"{source} --out model.xml --int8 --quantizer nncf` and predict from that file.")
            return BackendChoice("openvino", "asked for", ir)
        raise SeglabError(f"--backend {backend} runs a file written by `seglab export` (.onnx, or the .xml of "
                          f"--quantizer nncf), or trained weights that ship an int8 OpenVINO model; {str(source)!r} "
                          "is a checkpoint: export it first, or drop --backend.")
    if not is_pretrained_name(str(source)) or Path(str(source)).exists():
        return BackendChoice("torch", "a checkpoint (only packed trained weights carry a verified int8 model)")
    if get_pretrained(str(source)).openvino_int8 is None:
        return BackendChoice("torch", "these weights ship no int8 OpenVINO model")
    why_not = (f"{_ENV}={os.environ[_ENV]}" if os.environ.get(_ENV, "auto") != "auto"
               else torch_only if torch_only
               else f"--precision {precision}" if precision != "auto"
               else f"device {device}" if device not in ("auto", "cpu") or (device == "auto" and _cuda_available())
               else "OpenVINO is not installed (pip install 'seglab[openvino]')" if not _openvino_installed()
               else None)
    if why_not:
        return BackendChoice("torch", f"PyTorch: {why_not}")
    return BackendChoice("openvino", "int8, verified on val at packing", pretrained_openvino_ir(str(source)))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def load_predictor(source: str | Path, backend: str | None = "auto", *, device: str = "auto", precision: str = "auto",
                   threads: int | None = None, tile: Sequence[int] | None = None, tile_overlap: int = 32,
                   fast: bool = True, tta=None, task: str | None = None, score_threshold: float | None = None,
                   torch_only: str | None = None) -> Predictor:
    """A predictor for a checkpoint, trained weights by name, or an exported file, in the fastest
    verified runtime (see the module docstring). ``precision`` is ``auto``, ``f32`` or ``bf16``; the
    other arguments are those of :meth:`Segmenter.from_checkpoint` and :func:`load_exported`.
    ``torch_only`` names a PyTorch-only feature the caller will use (``tta`` is detected here)."""
    from seglab.core.runtime import amp_for_precision
    from seglab.inference.predictor import Segmenter

    torch_only = torch_only or ("--tta" if tta else "--task instance" if task == "instance" else
                                "--score-threshold" if score_threshold is not None else None)
    choice = choose_backend(source, backend, device=device, precision=precision, torch_only=torch_only)
    if choice.backend in ("onnxruntime", "openvino", "exported") and choice.openvino_ir is None:
        return load_exported(source, None if choice.backend == "exported" else choice.backend, threads=threads,
                             precision=precision, tile=tile, tile_overlap=tile_overlap)
    if choice.openvino_ir is not None:
        seg = _open_shipped_int8(choice.openvino_ir, threads, tile, tile_overlap, asked=backend == "openvino")
        if seg is not None:
            return seg
    if threads:
        import torch

        torch.set_num_threads(threads)
    return Segmenter.from_checkpoint(source, device=device, amp=amp_for_precision(precision), tile=tile,
                                     tile_overlap=tile_overlap, fast=fast, tta=tta, task=task,
                                     score_threshold=score_threshold)


def _open_shipped_int8(ir: Path, threads: int | None, tile: Sequence[int] | None, tile_overlap: int,
                       asked: bool) -> Predictor | None:
    """The shipped int8 model, compiled for its own input size; None (with a warning) if OpenVINO cannot
    run it and PyTorch was not ruled out."""
    from seglab.inference.openvino_backend import OpenVinoSegmenter

    try:
        seg = OpenVinoSegmenter(ir, threads=threads, precision="auto", tile=tile, tile_overlap=tile_overlap)
        if seg.infer_size is not None and tile is None:
            seg.compiled_for((1, 3, *seg.infer_size))  # fail here, not at the first image
    except SeglabError as e:
        if asked:
            raise
        warnings.warn(f"seglab: OpenVINO could not run {ir.name} ({e}); predicting with PyTorch instead.",
                      RuntimeWarning, stacklevel=3)
        return None
    return seg


def predictor_precision(predictor: Predictor) -> str:
    """The compute precision a predictor runs at: PyTorch's autocast dtype, or an exported model's
    (``int8 (f32 elsewhere)`` for a quantized one)."""
    if hasattr(predictor, "amp_dtype"):
        return {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(predictor.amp_dtype), "fp32")
    metadata = getattr(predictor, "metadata", None)
    base = str(getattr(predictor, "precision", "fp32"))
    return f"int8 ({base} elsewhere)" if isinstance(metadata, dict) and metadata.get("quantization") else base


def describe_predictor(predictor: Predictor) -> str:
    """One line: runtime, device and precision, e.g. ``openvino on cpu, int8 (f32 elsewhere)``."""
    device = getattr(predictor, "device", "cpu")
    return f"{getattr(predictor, 'backend', 'torch')} on {device}, {predictor_precision(predictor)}"
