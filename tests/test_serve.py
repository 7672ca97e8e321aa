"""``seglab serve``: every status code, micro-batching equivalence, the bounded queue, auth, metrics."""

from __future__ import annotations

import io
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed: pip install 'seglab[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed: pip install 'seglab[serve]'")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
import torch  # noqa: E402

from seglab.apps.cli import main  # noqa: E402
from seglab.apps.serve import ServeSettings, create_app  # noqa: E402
from seglab.apps.serve.settings import is_loopback  # noqa: E402
from seglab.core.errors import SeglabError  # noqa: E402
from serve_util import png, random_image, running_server, tiny_segmenter  # noqa: E402


@pytest.fixture(scope="module")
def seg():
    return tiny_segmenter()


@pytest.fixture()
def client(seg):
    with TestClient(create_app(seg, ServeSettings(max_upload_mb=0.05, max_pixels=100_000))) as c:
        yield c


def _error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["error"] == code and body["detail"]
    return body


def test_segment_json_matches_predict(client, seg) -> None:
    image = random_image(1)
    r = client.post("/v1/segment", files={"file": ("a.png", png(image), "image/png")})
    assert r.status_code == 200
    body = r.json()
    labels = seg.predict(image)
    ids, counts = np.unique(labels, return_counts=True)
    assert [c["id"] for c in body["classes"]] == ids.tolist()
    assert [c["fraction"] for c in body["classes"]] == pytest.approx((counts / labels.size).tolist(), abs=1e-6)
    assert [c["name"] for c in body["classes"]] == [seg.class_names[i] for i in ids]
    assert body["image_size"] == {"height": 40, "width": 52}
    assert body["model"]["name"] == "segnet_basic" and body["inference_ms"] > 0


def test_segment_pictures_at_image_size(client, seg) -> None:
    image = random_image(2, 37, 61)  # not the training size: answers come back at the image's own size
    labels = seg.predict(image)
    raw = client.post("/v1/segment?format=labels", content=png(image), headers={"content-type": "image/png"})
    assert raw.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(raw.content))), labels)
    color = client.post("/v1/segment?format=color", content=png(image))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(color.content))),
                                  np.asarray(seg.palette, dtype=np.uint8)[labels])
    over = client.post("/v1/segment?format=overlay&alpha=1", content=png(image))
    assert Image.open(io.BytesIO(over.content)).size == (61, 37)
    maps = client.post("/v1/segment?maps=true", content=png(image)).json()["maps"]
    assert maps["color_png"].startswith("data:image/png;base64,") and maps["labels_dtype"] == "uint8"


def test_client_errors_say_what_is_accepted(client) -> None:
    image = random_image(3)
    assert "PNG" in _error(client.post("/v1/segment", content=b""), 400, "empty_body")["accepted"]
    _error(client.post("/v1/segment", content=png(image)[:120]), 400, "corrupt_image")
    _error(client.post("/v1/segment", content=b"name,value\n1,2\n"), 415, "not_an_image")
    _error(client.post("/v1/segment", files={"file": ("a.txt", b"hello", "text/plain")}), 415, "not_an_image")
    _error(client.post("/v1/segment", files={"picture": ("a.png", png(image), "image/png")}), 422, "missing_field")
    _error(client.post("/v1/segment?format=jpeg", content=png(image)), 422, "invalid_parameter")
    _error(client.post("/v1/segment?mc_samples=4", content=png(image)), 422, "mc_unsupported")
    _error(client.get("/no/such/page"), 404, "http_error")
    _error(client.get("/v1/segment"), 405, "http_error")


def test_size_limits_413(client) -> None:
    big = png(random_image(4, 200, 200))  # ~120 kB, over the 0.05 MB limit
    assert len(big) > 0.05 * 1024 * 1024
    _error(client.post("/v1/segment", content=big), 413, "body_too_large")  # by Content-Length

    def chunks():  # no Content-Length: counted while streaming
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    _error(client.post("/v1/segment", content=chunks()), 413, "body_too_large")
    flat = Image.new("RGB", (400, 300))  # 120 000 pixels > 100 000, but a tiny file
    buf = io.BytesIO()
    flat.save(buf, format="PNG")
    assert "pixels" in _error(client.post("/v1/segment", content=buf.getvalue()), 413, "too_many_pixels")["detail"]


def test_not_ready_until_started(seg) -> None:
    c = TestClient(create_app(seg, ServeSettings()))  # no `with`: the start-up (load + warm-up) has not run
    assert c.get("/healthz").status_code == 200
    assert _error(c.get("/readyz"), 503, "not_ready") and c.get("/readyz").headers["retry-after"] == "1"
    _error(c.post("/v1/segment", content=png(random_image(5))), 503, "not_ready")
    with c:
        assert c.get("/readyz").json()["status"] == "ready"


def test_models_metrics_page_docs(client, seg) -> None:
    client.post("/v1/segment", content=png(random_image(6)))
    client.post("/v1/segment", content=b"junk")
    info = client.get("/v1/models").json()["models"][0]
    assert [c["name"] for c in info["classes"]] == seg.class_names and info["normalisation"]["mean"][0] == 0.4
    text = client.get("/metrics").text
    assert 'seglab_requests_total{method="POST",path="/v1/segment",status="200"} 1' in text
    assert 'seglab_requests_total{method="POST",path="/v1/segment",status="415"} 1' in text
    assert "seglab_request_latency_seconds_count 2" in text
    assert 'seglab_batch_size_bucket{le="+Inf"} 1' in text  # the request (the warm-up is not counted)
    assert "seglab_queue_length 0" in text
    assert "/v1/segment" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200 and "<html" in client.get("/").text.lower()
    sample = client.get(client.get("/v1/samples").json()["samples"][0]["url"])
    assert Image.open(io.BytesIO(sample.content)).size == (240, 180)


def test_mc_samples_add_uncertainty_maps() -> None:
    bayes = tiny_segmenter("bayesian_segnet_basic")
    with TestClient(create_app(bayes, ServeSettings())) as c:
        body = c.post("/v1/segment?mc_samples=3&maps=true", content=png(random_image(7))).json()
    assert {"entropy_png", "mutual_info_png"} <= set(body["maps"])
    assert c.get("/v1/models").json()["models"][0]["mc_dropout"] is True


def test_non_loopback_bind_needs_api_key(seg, monkeypatch) -> None:
    monkeypatch.delenv("SEGLAB_API_KEY", raising=False)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    with pytest.raises(SeglabError, match="--api-key"):
        ServeSettings(host="0.0.0.0").check()
    assert main(["serve", "no-such-model.pt", "--host", "0.0.0.0"]) == 2  # refused before loading anything
    monkeypatch.setenv("SEGLAB_API_KEY", "s3cret")
    settings = ServeSettings(host="0.0.0.0").check()
    assert settings.api_key == "s3cret"
    image = png(random_image(8))
    with TestClient(create_app(seg, settings)) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert "Bearer" in _error(c.post("/v1/segment", content=image), 401, "unauthorised")["accepted"]
        _error(c.post("/v1/segment", content=image, headers={"X-API-Key": "wrong"}), 401, "unauthorised")
        _error(c.get("/metrics"), 401, "unauthorised")
        _error(c.get("/v1/models"), 401, "unauthorised")
        assert c.post("/v1/segment", content=image, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.post("/v1/segment", content=image, headers={"X-API-Key": "s3cret"}).status_code == 200


def _post_all(url: str, images: list[np.ndarray], fmt: str = "labels") -> list[httpx.Response]:
    with httpx.Client(timeout=60) as http, ThreadPoolExecutor(len(images)) as pool:
        return list(pool.map(lambda im: http.post(f"{url}/v1/segment?format={fmt}", content=png(im)), images))


def test_batching_on_and_off_give_identical_labels(seg) -> None:
    images = [random_image(10 + i) for i in range(6)] + [random_image(20, 30, 44)]  # one other size
    expected = [seg.predict(im) for im in images]
    sizes = {}
    for batch in (1, 8):
        app = create_app(seg, ServeSettings(max_batch_size=batch, max_batch_delay_ms=200))
        with running_server(app) as url:
            answers = _post_all(url, images)
        assert all(r.status_code == 200 for r in answers)
        for r, want in zip(answers, expected):
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), want)
        sizes[batch] = [int(r.headers["x-batch-size"]) for r in answers]
    assert max(sizes[1]) == 1
    assert max(sizes[8]) > 1 and sizes[8][-1] == 1  # batched, the odd-sized image on its own


def _slow(seg, seconds: float):
    inner = seg.forward_model

    def forward(x):
        time.sleep(seconds)
        return inner(x)

    slow = tiny_segmenter()
    slow.forward_model = forward
    return slow


def test_full_queue_answers_503_with_retry_after(seg) -> None:
    app = create_app(_slow(seg, 0.4), ServeSettings(max_batch_size=1, max_queue=1, warmup=False))
    with running_server(app) as url:
        answers = _post_all(url, [random_image(30 + i) for i in range(6)], fmt="json")
        codes = sorted(r.status_code for r in answers)
        assert set(codes) == {200, 503} and codes.count(200) >= 2, codes
        full = next(r for r in answers if r.status_code == 503)
        assert full.json()["error"] == "queue_full" and int(full.headers["retry-after"]) >= 1
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200  # still answering afterwards


def test_request_timeouts_504_and_408(seg) -> None:
    app = create_app(_slow(seg, 1.0), ServeSettings(request_timeout_s=0.4, warmup=False))
    with running_server(app) as url:
        r = httpx.post(f"{url}/v1/segment", content=png(random_image(40)), timeout=30)
        assert _error(r, 504, "request_timeout")
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:  # a slow upload: 10 of 5000 bytes
            s.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                      b"Content-Length: 5000\r\n\r\n" + b"\x89PNG\r\n\x1a\n\0\0")
            reply = b""
            while b"upload_timeout" not in reply and len(reply) < 65536:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
            reply = reply.decode("latin-1")
        assert reply.startswith("HTTP/1.1 408") and "upload_timeout" in reply


def test_serves_checkpoints_onnx_files_and_weights_names(tmp_path, seg) -> None:
    from seglab.apps.serve.runner import ModelRunner
    from seglab.apps.serve.server import load_segmenter
    from seglab.export.onnx import export_onnx
    from seglab.tasks.checkpoint import save_checkpoint

    ckpt = tmp_path / "best.pt"
    save_checkpoint(ckpt, {"model_name": "segnet_basic", "num_classes": 3, "class_names": seg.class_names,
                           "palette": [list(c) for c in seg.palette], "mean": [0.4, 0.5, 0.6],
                           "std": [0.2, 0.25, 0.3], "image_size": [32, 48], "model": seg.model.state_dict()})
    onnx_file = tmp_path / "model.onnx"
    export_onnx(ckpt, onnx_file, input_size=(32, 48))
    images = [random_image(50), random_image(51)]
    for source, backend in ((ckpt, None), (onnx_file, None)):  # OpenVINO: tests/openvino_cases.py
        loaded, info = load_segmenter(str(source), backend=backend, precision="f32" if backend else "auto")
        runner = ModelRunner(loaded)
        batched = runner.run(images)
        assert batched[0].batch_size == 2
        for image, result in zip(images, batched):
            np.testing.assert_array_equal(result.labels, loaded.predict(image))
        with TestClient(create_app(loaded, ServeSettings(), info)) as c:
            model = c.get("/v1/models").json()["models"][0]
            r = c.post("/v1/segment?format=labels", content=png(images[0]))
            mc = c.post("/v1/segment?mc_samples=2", content=png(images[0]))
        assert model["backend"] == (backend or ("onnxruntime" if source == onnx_file else "torch"))
        assert model["precision"] == "fp32"  # a checkpoint with no bf16 check stays exact
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), loaded.predict(images[0]))
        _error(mc, 422, "mc_unsupported")  # neither this dropout-free model nor an ONNX graph can sample
    with pytest.raises(SeglabError, match="is a checkpoint: export it first"):
        load_segmenter(str(ckpt), backend="openvino")
    forced, _ = load_segmenter(str(ckpt), precision="bf16")  # asked for: bf16 autocast on the checkpoint
    assert forced.amp_dtype == torch.bfloat16
    _, info = load_segmenter("unet.isbi2012")  # shipped weights by name carry their metadata
    assert info["weights"]["name"] == "unet.isbi2012" and "val_metrics" in info["weights"]
