"""``seglab serve MODEL``: load the model, build the app, run uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from seglab.apps.serve.settings import ServeSettings
from seglab.core.errors import SeglabError

__all__ = ["load_segmenter", "run_server"]


def load_segmenter(model: str, device: str = "auto", threads: int | None = None, backend: str | None = None,
                   precision: str = "auto") -> tuple[Any, dict[str, Any]]:
    """``(predictor, extra model info)`` for a checkpoint path (semantic or instance), an exported ``.onnx``
    file (onnxruntime, or OpenVINO with ``backend="openvino"``), an OpenVINO IR ``.xml`` or trained
    weights by name (``unet.isbi2012``), in the runtime :func:`seglab.inference.auto.load_predictor` picks."""
    from seglab.inference.auto import load_predictor
    from seglab.inference.exported import is_exported_file
    from seglab.models.zoo import is_pretrained_name, pretrained_metadata

    if is_exported_file(model) and not Path(model).is_file():
        raise SeglabError(f"Exported model {model!r} does not exist; write one with `seglab export CKPT --out FILE`.")
    # auto: a shipped int8 OpenVINO model verified on val, else PyTorch (bf16 only where verified), else fp32.
    # An InstanceSegmenter for a Mask R-CNN checkpoint.
    seg = load_predictor(model, backend, device=device, precision=precision, threads=threads)
    extra: dict[str, Any] = {"source": str(model)}
    if is_exported_file(model):
        extra["onnx_metadata"] = {k: v for k, v in seg.metadata.items() if k not in ("class_names", "palette")}
    elif is_pretrained_name(model):
        meta = pretrained_metadata(model)
        extra["weights"] = {k: v for k, v in meta.items() if k not in ("class_names", "palette", "config", "checkpoint")}
    return seg, extra


def run_server(model: str, settings: ServeSettings, device: str = "auto", threads: int | None = None,
               log_level: str = "info", backend: str | None = None, precision: str = "auto") -> None:
    """Serve ``model`` until interrupted (Ctrl-C)."""
    try:
        import uvicorn
    except ImportError as e:
        raise SeglabError("seglab serve needs FastAPI and uvicorn: pip install 'seglab[serve]'.") from e
    settings.check()  # refuse an unprotected public bind before the model loads
    seg, extra = load_segmenter(model, device=device, threads=threads, backend=backend, precision=precision)
    from seglab.apps.serve.app import create_app

    app = create_app(seg, settings, extra)
    print(f"seglab: serving {seg.model_name} on http://{settings.host}:{settings.port}/  "
          f"(API docs /docs, batching up to {settings.max_batch_size})", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level, timeout_keep_alive=5)
