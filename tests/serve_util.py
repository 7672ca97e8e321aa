"""Helpers of the serve tests: a tiny segmenter and Mask R-CNN, PNG bytes, and uvicorn on a free loopback port."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time

import numpy as np
import torch
from PIL import Image

from seglab.inference.instance_predictor import InstanceSegmenter
from seglab.inference.predictor import Segmenter
from seglab.models.registry import create_model

CLASSES = ["sky", "road", "car"]
PALETTE = [[128, 128, 128], [128, 64, 128], [64, 0, 128]]


def tiny_segmenter(model_name: str = "segnet_basic", seed: int = 0) -> Segmenter:
    torch.manual_seed(seed)
    model = create_model(model_name, len(CLASSES))
    return Segmenter(model, len(CLASSES), CLASSES, PALETTE, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3], infer_size=[32, 48],
                     device="cpu", model_name=model_name)


INSTANCE_CLASSES = ["background", "Pole", "Car"]
INSTANCE_PALETTE = [[0, 0, 0], [200, 200, 0], [0, 0, 200]]
# A tiny Mask R-CNN that keeps every detection its heads make (box_score_thresh 0), so a random model finds some.
INSTANCE_KWARGS = {"min_size": 64, "max_size": 80, "fpn_channels": 16, "representation_size": 32, "mask_channels": 8,
                   "box_score_thresh": 0.0, "box_detections_per_img": 5}


def tiny_instance_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("mask_rcnn_resnet18_fpn", len(INSTANCE_CLASSES), **INSTANCE_KWARGS)


def tiny_instance_segmenter(seed: int = 0, score_threshold: float = 0.0) -> InstanceSegmenter:
    return InstanceSegmenter(tiny_instance_model(seed), len(INSTANCE_CLASSES), INSTANCE_CLASSES, INSTANCE_PALETTE,
                             device="cpu", score_threshold=score_threshold, model_name="mask_rcnn_resnet18_fpn")


def random_image(seed: int, height: int = 40, width: int = 52) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(app, start_timeout_s: float = 30.0):
    """Serve ``app`` with uvicorn in a thread on a free 127.0.0.1 port; yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_keep_alive=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
