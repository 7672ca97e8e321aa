"""The FastAPI application of ``seglab serve``: ``create_app(segmenter, settings)``.

Usable without a socket (``fastapi.testclient.TestClient(create_app(seg, settings))``); the model
is warmed in the application's start-up, and /readyz answers 503 until that is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from importlib import resources
from typing import Any, Literal

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from seglab.apps.serve.batcher import MicroBatcher, QueueFull
from seglab.apps.serve.decode import decode_image
from seglab.apps.serve.errors import ACCEPTED_IMAGES, ApiError
from seglab.apps.serve.guard import GuardMiddleware
from seglab.apps.serve.instance_render import INSTANCE_FORMATS, instance_page_maps, instance_picture, instance_summary
from seglab.apps.serve.instance_runner import InstanceRunner
from seglab.apps.serve.metrics import ServeMetrics
from seglab.apps.serve.render import page_maps, picture, summary
from seglab.apps.serve.runner import ModelRunner
from seglab.apps.serve.samples import sample_png, sample_names
from seglab.apps.serve.settings import ServeSettings
from seglab.apps.serve.upload import read_upload
from seglab.core.errors import SeglabError
from seglab.core.version import __version__
from seglab.inference.auto import predictor_precision

__all__ = ["create_app", "model_info"]

_SEGMENT_BODY = {"requestBody": {"required": True, "description": ACCEPTED_IMAGES, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


def _is_instance(segmenter: Any) -> bool:
    return getattr(segmenter, "task", "semantic") == "instance"


def model_info(segmenter: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What /v1/models says about the model: task, name, classes, palette, normalisation, weights metadata;
    for an instance model also its default score threshold and mask threshold."""
    if _is_instance(segmenter):
        extra = {"score_threshold": segmenter.score_threshold, "mask_threshold": segmenter.mask_threshold,
                 "formats": ["json", *INSTANCE_FORMATS], **(extra or {})}
    else:
        extra = {"formats": ["json", "labels", "color", "overlay"], **(extra or {})}
    return {"task": getattr(segmenter, "task", "semantic"), "name": segmenter.model_name, "seglab_version": __version__,
            "backend": getattr(segmenter, "backend", "torch"), "precision": predictor_precision(segmenter),
            "num_classes": segmenter.num_classes,
            "classes": [{"id": i, "name": n, "color": list(segmenter.palette[i]) if i < len(segmenter.palette)
                         else [0, 0, 0]} for i, n in enumerate(segmenter.class_names)],
            "normalisation": {"mean": [round(float(v), 6) for v in segmenter.mean.flatten()],
                              "std": [round(float(v), 6) for v in segmenter.std.flatten()]},
            "infer_size": getattr(segmenter, "infer_size", None), "mc_dropout": _has_dropout(segmenter), **extra}


def _has_dropout(segmenter: Any) -> bool:
    from seglab.ops.contract import has_dropout

    return hasattr(segmenter, "forward_model") and has_dropout(segmenter.model)


def _error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def create_app(segmenter: Any, settings: ServeSettings | None = None, info: dict[str, Any] | None = None) -> FastAPI:
    """The server for ``segmenter`` (a :class:`Segmenter`, :class:`OnnxSegmenter` or :class:`InstanceSegmenter`)."""
    settings = (settings or ServeSettings()).check()
    instance = _is_instance(segmenter)
    if settings.score_threshold is not None and not instance:
        raise SeglabError(f"--score-threshold applies to instance-segmentation models; {segmenter.model_name} "
                          "predicts label maps.")
    # The threshold of requests that give none: --score-threshold, else the predictor's own.
    default_threshold = settings.score_threshold if settings.score_threshold is not None else \
        getattr(segmenter, "score_threshold", None)
    runner = InstanceRunner(segmenter) if instance else ModelRunner(segmenter)
    state: dict[str, Any] = {"ready": False, "batcher": None, "last_batch_s": 0.05}
    metrics = ServeMetrics(settings.max_batch_size, lambda: state["batcher"].queue.qsize() if state["batcher"] else 0)
    described = model_info(segmenter, {**(info or {}), "score_threshold": default_threshold} if instance else info)

    def _queue_full(batcher: MicroBatcher) -> ApiError:
        # Retry-After: about the time the waiting batches take, at least a second.
        wait = math.ceil(max(1.0, batcher.queue.qsize() / settings.max_batch_size * state["last_batch_s"]))
        return ApiError(503, "queue_full", f"{batcher.queue.qsize()} requests are already waiting (--max-queue "
                        f"{settings.max_queue}); try again shortly.", headers={"Retry-After": str(wait)})

    def run_batch(images, mc_samples):
        start = time.perf_counter()
        out = runner.run(images, mc_samples)
        state["last_batch_s"] = time.perf_counter() - start
        return out

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = MicroBatcher(run_batch, settings.max_batch_size, settings.max_batch_delay_ms, settings.max_queue,
                               on_batch=metrics.observe_batch)
        state["batcher"] = batcher
        batcher.start()
        if settings.warmup:
            await batcher.run_in_thread(runner.warm_up)
        state["ready"] = True
        yield
        state["ready"] = False
        await batcher.stop()

    app = FastAPI(title="seglab serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=f"{'Instance' if instance else 'Semantic'} segmentation with {segmenter.model_name}. "
                              "The page at / uses this API.")
    app.add_middleware(GuardMiddleware, api_key=settings.api_key, metrics=metrics)
    static = resources.files("seglab.apps.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return _error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        return _error_response(ApiError(422, "invalid_parameter", f"Invalid request parameters: {problems}.",
                                        "format=json|labels|color|overlay (instance models also ids), mc_samples=0..N, "
                                        "alpha=0..1, maps=true, score_threshold=0..1 (instance models)"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error_response(ApiError(err.status_code, "http_error", str(err.detail),
                                        "see /docs for the endpoints", dict(err.headers or {})))

    @app.exception_handler(Exception)
    async def _crash(request: Request, err: Exception) -> JSONResponse:
        return _error_response(ApiError(500, "internal_error", f"The server failed: {type(err).__name__}: {err}"))

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse((static / "docs.html").read_text(encoding="utf-8"))

    @app.get("/healthz", summary="Alive (answers while the model loads)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Ready: 503 until the model is loaded and warmed")
    async def readyz() -> JSONResponse:
        if not state["ready"]:
            return _error_response(ApiError(503, "not_ready", "The model is still loading or warming up.",
                                            headers={"Retry-After": "1"}))
        return JSONResponse({"status": "ready", "model": segmenter.model_name})

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", summary="The model served: name, classes, palette, normalisation, weights metadata")
    async def models() -> dict[str, Any]:
        return {"models": [described]}

    @app.get("/v1/samples", summary="Built-in sample images (synthetic road scenes)")
    async def samples() -> dict[str, Any]:
        return {"samples": [{"name": n, "url": f"/v1/samples/{n}"} for n in sample_names()]}

    @app.get("/v1/samples/{name}", summary="One sample image as PNG")
    async def sample(name: str) -> Response:
        if name not in sample_names():
            raise ApiError(404, "no_such_sample", f"No sample named {name!r}.", ", ".join(sample_names()))
        return Response(await anyio.to_thread.run_sync(sample_png, name), media_type="image/png")

    @app.post("/v1/segment", summary="Segment one image", openapi_extra=_SEGMENT_BODY,
              responses={200: {"content": {"application/json": {}, "image/png": {}}}})
    async def segment(request: Request,
                      format: Literal["json", "labels", "color", "overlay", "ids"] = Query(
                          "json", description="ids: the 16-bit instance-id PNG (instance models)"),
                      mc_samples: int = Query(0, ge=0, le=settings.max_mc_samples),
                      alpha: float = Query(0.5, ge=0.0, le=1.0),
                      maps: bool = Query(False, description="json only: add the pictures the web page draws"),
                      score_threshold: float | None = Query(None, ge=0.0, le=1.0, description="instance models: keep "
                                                            "detections scoring at least this (default: the server's)")):
        started = time.perf_counter()
        if not state["ready"]:
            raise ApiError(503, "not_ready", "The model is still loading or warming up.", headers={"Retry-After": "1"})
        if not instance and (format == "ids" or score_threshold is not None):
            asked = "format=ids" if format == "ids" else "score_threshold"
            raise ApiError(422, "instance_only", f"{asked} applies to instance-segmentation models; "
                           f"{segmenter.model_name} predicts label maps.", "format=json|labels|color|overlay")
        if mc_samples and not (runner.supports_mc and described["mc_dropout"]):
            raise ApiError(422, "mc_unsupported", f"mc_samples needs a semantic model with dropout (a Bayesian model) "
                           f"on the torch backend; {segmenter.model_name} has none"
                           f"{' (an instance-segmentation model)' if instance else ''}.", "mc_samples=0")
        batcher: MicroBatcher = state["batcher"]
        if batcher.queue.full():  # shed load before reading and decoding the body
            raise _queue_full(batcher)
        data = await read_upload(request, settings.max_upload_bytes, settings.request_timeout_s)
        image = await anyio.to_thread.run_sync(decode_image, data, settings.max_pixels)
        try:
            future = batcher.submit(image, mc_samples)
        except QueueFull:
            raise _queue_full(batcher) from None
        left = settings.request_timeout_s - (time.perf_counter() - started)
        try:
            prediction = await asyncio.wait_for(future, max(left, 0.001))
        except asyncio.TimeoutError:
            raise ApiError(504, "request_timeout", f"The prediction did not finish within {settings.request_timeout_s:g}"
                           " s (--request-timeout-s); the server is overloaded or the image is too large.",
                           headers={"Retry-After": "1"}) from None
        headers = {"X-Inference-Ms": f"{prediction.model_ms:.3f}", "X-Batch-Size": str(prediction.batch_size)}
        if instance:
            return await _instance_answer(image, prediction, format, alpha, maps, score_threshold, headers, started)
        if format != "json":
            png = await anyio.to_thread.run_sync(picture, segmenter, image, prediction, format, alpha)
            return Response(png, media_type="image/png", headers=headers)
        body = summary(segmenter, prediction, {"name": described["name"], "version": described["seglab_version"]})
        if maps:
            body["maps"] = await anyio.to_thread.run_sync(page_maps, segmenter, prediction)
        body["total_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return JSONResponse(body, headers=headers)

    async def _instance_answer(image, prediction, format, alpha, maps, score_threshold, headers, started):
        threshold = default_threshold if score_threshold is None else score_threshold
        found = prediction.instances.above(threshold)
        headers["X-Instances"] = str(len(found))
        if format != "json":
            png = await anyio.to_thread.run_sync(instance_picture, segmenter, image, found, format, alpha)
            return Response(png, media_type="image/png", headers=headers)
        body = await anyio.to_thread.run_sync(instance_summary, segmenter, found, prediction,
                                              {"name": described["name"], "version": described["seglab_version"]},
                                              threshold)
        if maps:
            body["maps"] = await anyio.to_thread.run_sync(instance_page_maps, segmenter, image, found)
        body["total_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return JSONResponse(body, headers=headers)

    app.state.seglab = state
    return app
