"""``seglab serve`` with an instance (Mask R-CNN) model: JSON instances with RLE masks, the overlay and 16-bit
id PNGs, ``score_threshold``, errors, metrics, batching on and off, and loading an instance checkpoint."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed: pip install 'seglab[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed: pip install 'seglab[serve]'")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from seglab.apps.instance_visualize import draw_instances  # noqa: E402
from seglab.apps.serve import ServeSettings, create_app  # noqa: E402
from seglab.apps.visualize import colorize  # noqa: E402
from seglab.core.errors import SeglabError  # noqa: E402
from seglab.inference.instance_predictor import Instances, InstanceSegmenter  # noqa: E402
from serve_util import (INSTANCE_CLASSES, INSTANCE_KWARGS, INSTANCE_PALETTE, png, random_image,  # noqa: E402
                        running_server, tiny_instance_model, tiny_instance_segmenter, tiny_segmenter)

RECORD_KEYS = {"id", "label", "class_name", "score", "box", "bbox", "area", "color", "segmentation"}


@pytest.fixture(scope="module")
def seg() -> InstanceSegmenter:
    torch.set_num_threads(1)
    return tiny_instance_segmenter(score_threshold=0.0)  # keeps every detection: a random model finds some


@pytest.fixture(scope="module")
def client(seg):
    with TestClient(create_app(seg, ServeSettings(max_upload_mb=0.05, max_pixels=100_000))) as c:
        yield c


def _error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["error"] == code and body["detail"]
    return body


def _decode(record: dict) -> np.ndarray:
    rle = {"size": record["segmentation"]["size"], "counts": record["segmentation"]["counts"].encode()}
    return mask_utils.decode(rle).astype(bool)


def _picture(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200 and response.headers["content-type"] == "image/png", response.text
    return Image.open(io.BytesIO(response.content))


def test_json_instances_match_predict_and_rle_decodes_to_image_size_masks(client, seg) -> None:
    image = random_image(1)
    body = client.post("/v1/segment", files={"file": ("a.png", png(image), "image/png")}).json()
    found = seg.predict(image)
    assert len(found) > 0  # box_score_thresh 0 and score_threshold 0: the random model's detections
    assert body["task"] == "instance" and body["count"] == len(found) == len(body["instances"])
    assert body["image_size"] == {"height": 40, "width": 52} and body["score_threshold"] == 0.0
    assert body["model"]["name"] == "mask_rcnn_resnet18_fpn" and body["inference_ms"] > 0 and body["batch_size"] == 1
    for i, (record, box, label, score, mask) in enumerate(zip(body["instances"], found.boxes, found.labels,
                                                              found.scores, found.masks)):
        assert set(record) == RECORD_KEYS and record["id"] == i + 1
        assert record["label"] == label and record["class_name"] == INSTANCE_CLASSES[label]
        assert record["score"] == pytest.approx(float(score), abs=1e-5)
        np.testing.assert_allclose(record["box"], box, atol=0.006)
        x, y, w, h = record["bbox"]
        np.testing.assert_allclose([x, y, x + w, y + h], record["box"], atol=0.02)
        decoded = _decode(record)
        assert decoded.shape == (40, 52) and record["segmentation"]["size"] == [40, 52]
        np.testing.assert_array_equal(decoded, mask)
        assert record["area"] == int(mask.sum())
    assert [r["score"] for r in body["instances"]] == sorted((r["score"] for r in body["instances"]), reverse=True)
    info = client.get("/v1/models").json()["models"][0]
    assert info["task"] == "instance" and [c["name"] for c in info["classes"]] == INSTANCE_CLASSES
    assert info["score_threshold"] == 0.0 and "ids" in info["formats"] and info["mc_dropout"] is False


def test_overlay_ids_labels_and_color_pngs_at_image_size(client, seg) -> None:
    image = random_image(2, 37, 61)  # an odd size: every picture comes back at it
    found = seg.predict(image)
    assert len(found) > 0
    overlay = _picture(client.post("/v1/segment?format=overlay&alpha=0.7", content=png(image)))
    expected = draw_instances(image, found.boxes, found.labels, found.scores, found.masks, seg.class_names, 0.7)
    np.testing.assert_array_equal(np.asarray(overlay), expected)
    ids = _picture(client.post("/v1/segment?format=ids", content=png(image)))
    assert ids.mode == "I;16" and ids.size == (61, 37)  # a 16-bit PNG
    id_map = np.asarray(ids)
    np.testing.assert_array_equal(id_map, found.id_map())
    assert id_map.max() >= 1 and set(np.unique(id_map)) <= set(range(len(found) + 1))
    labels = _picture(client.post("/v1/segment?format=labels", content=png(image)))
    np.testing.assert_array_equal(np.asarray(labels), found.label_map())
    color = _picture(client.post("/v1/segment?format=color", content=png(image)))
    np.testing.assert_array_equal(np.asarray(color), colorize(found.label_map(), INSTANCE_PALETTE))
    page = client.post("/v1/segment?maps=true", content=png(image)).json()["maps"]
    assert page["overlay_png"].startswith("data:image/png;base64,") and page["ids_dtype"] == "uint16"


def test_score_threshold_filters_and_zero_detections(client, seg) -> None:
    image = random_image(3)
    everything = client.post("/v1/segment", content=png(image)).json()["instances"]
    assert len(everything) >= 2
    cut = everything[len(everything) // 2]["score"]
    kept = client.post(f"/v1/segment?score_threshold={cut}", content=png(image)).json()
    assert kept["score_threshold"] == cut and 0 < kept["count"] < len(everything)
    assert kept["instances"] == [r for r in everything if r["score"] >= cut]
    ids = _picture(client.post(f"/v1/segment?format=ids&score_threshold={cut}", content=png(image)))
    assert np.asarray(ids).max() == kept["count"]
    assert max(r["score"] for r in everything) < 1.0
    none = client.post("/v1/segment?score_threshold=1", content=png(image))
    assert none.json()["count"] == 0 and none.json()["instances"] == [] and none.headers["x-instances"] == "0"
    ids = _picture(client.post("/v1/segment?format=ids&score_threshold=1", content=png(image)))
    assert ids.mode == "I;16" and not np.asarray(ids).any()
    overlay = _picture(client.post("/v1/segment?format=overlay&score_threshold=1", content=png(image)))
    np.testing.assert_array_equal(np.asarray(overlay), image)  # nothing drawn
    # The server's default (--score-threshold) applies to requests without one.
    with TestClient(create_app(seg, ServeSettings(score_threshold=1.0, warmup=False))) as strict:
        assert strict.get("/v1/models").json()["models"][0]["score_threshold"] == 1.0
        assert strict.post("/v1/segment", content=png(image)).json()["count"] == 0
        assert strict.post("/v1/segment?score_threshold=0", content=png(image)).json()["count"] == len(everything)


def test_errors_limits_and_metrics(client) -> None:
    image = png(random_image(4))
    _error(client.post("/v1/segment?mc_samples=2", content=image), 422, "mc_unsupported")
    _error(client.post("/v1/segment?score_threshold=1.5", content=image), 422, "invalid_parameter")
    _error(client.post("/v1/segment?score_threshold=nan", content=image), 422, "invalid_parameter")
    _error(client.post("/v1/segment?format=jpeg", content=image), 422, "invalid_parameter")
    _error(client.post("/v1/segment", content=b"name,value\n1,2\n"), 415, "not_an_image")
    _error(client.post("/v1/segment", content=png(random_image(5, 200, 200))), 413, "body_too_large")
    text = client.get("/metrics").text
    assert 'seglab_requests_total{method="POST",path="/v1/segment",status="422"} 4' in text
    assert 'seglab_requests_total{method="POST",path="/v1/segment",status="415"} 1' in text
    assert 'seglab_requests_total{method="POST",path="/v1/segment",status="200"}' in text
    assert "seglab_batch_size_count" in text and "seglab_queue_length 0" in text


def test_semantic_models_refuse_instance_options() -> None:
    semantic = tiny_segmenter()
    with pytest.raises(SeglabError, match="--score-threshold applies to instance"):
        create_app(semantic, ServeSettings(score_threshold=0.3))
    with pytest.raises(SeglabError, match="--score-threshold must lie in"):
        ServeSettings(score_threshold=2.0).check()
    with TestClient(create_app(semantic, ServeSettings(warmup=False))) as c:
        image = png(random_image(6))
        assert "format=ids applies to instance" in _error(c.post("/v1/segment?format=ids", content=image), 422,
                                                          "instance_only")["detail"]
        _error(c.post("/v1/segment?score_threshold=0.5", content=image), 422, "instance_only")
        assert c.post("/v1/segment", content=image).json()["task"] == "semantic"
        assert c.get("/v1/models").json()["models"][0]["task"] == "semantic"


def _same_detections(a: list[dict], b: list[dict]) -> None:
    """Equal up to the float rounding of batched convolutions: classes, scores, boxes, nearly every mask pixel."""
    assert [r["label"] for r in a] == [r["label"] for r in b]
    np.testing.assert_allclose([r["score"] for r in a], [r["score"] for r in b], atol=1e-4)
    np.testing.assert_allclose([r["box"] for r in a], [r["box"] for r in b], atol=0.05)
    for ra, rb in zip(a, b):
        assert np.count_nonzero(_decode(ra) != _decode(rb)) <= 2


def test_batching_on_and_off_give_the_same_instances(seg) -> None:
    images = [random_image(10 + i) for i in range(4)] + [random_image(20, 30, 44)]  # one other size
    runner_batch = seg.predict_batch(images[:4])
    for alone, together in zip([seg.predict(im) for im in images[:4]], runner_batch):
        assert isinstance(together, Instances) and len(together) == len(alone) > 0
        np.testing.assert_allclose(together.scores, alone.scores, atol=1e-4)
    answers = {}
    sizes = {}
    for batch in (1, 8):
        app = create_app(seg, ServeSettings(max_batch_size=batch, max_batch_delay_ms=300))
        with running_server(app) as url, httpx.Client(timeout=60) as http, ThreadPoolExecutor(len(images)) as pool:
            replies = list(pool.map(lambda im: http.post(f"{url}/v1/segment", content=png(im)), images))
        assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
        answers[batch] = [r.json()["instances"] for r in replies]
        sizes[batch] = [int(r.headers["x-batch-size"]) for r in replies]
    assert max(sizes[1]) == 1
    assert max(sizes[8]) > 1 and sizes[8][-1] == 1  # batched, the odd-sized image on its own
    for off, on in zip(answers[1], answers[8]):
        assert len(off) > 0
        _same_detections(off, on)


def test_load_segmenter_serves_an_instance_checkpoint(tmp_path) -> None:
    from seglab.apps.serve.server import load_segmenter
    from seglab.tasks.checkpoint import Checkpoint, CheckpointMeta, save_checkpoint
    from seglab.tasks.instance import InstanceTask

    task = InstanceTask(3, INSTANCE_CLASSES, INSTANCE_PALETTE)
    meta = CheckpointMeta(**task.checkpoint_metadata(), model_name="mask_rcnn_resnet18_fpn",
                          model_kwargs=INSTANCE_KWARGS, mean=[0.0] * 3, std=[1.0] * 3)
    ckpt = tmp_path / "inst.pt"
    save_checkpoint(ckpt, Checkpoint(meta, {k: v.detach() for k, v in tiny_instance_model().state_dict().items()}))
    loaded, info = load_segmenter(str(ckpt), device="cpu")
    assert isinstance(loaded, InstanceSegmenter) and info["source"] == str(ckpt)
    image = png(random_image(7))
    with TestClient(create_app(loaded, ServeSettings(), info)) as c:
        model = c.get("/v1/models").json()["models"][0]
        default = c.post("/v1/segment", content=image).json()
        everything = c.post("/v1/segment?score_threshold=0", content=image).json()
    assert model["task"] == "instance" and model["source"] == str(ckpt) and model["score_threshold"] == 0.5
    assert everything["count"] > 0  # the checkpoint's default 0.5 keeps only what scores that high
    assert default["instances"] == [r for r in everything["instances"] if r["score"] >= 0.5]
