"""Request latency of ``seglab serve`` with an instance (Mask R-CNN) checkpoint, against the model alone.

Writes a random-weight tiny Mask R-CNN checkpoint (ResNet-18 FPN, 16 FPN channels, images resized to
64..80 px, every detection kept: ``box_score_thresh`` 0, at most 5 per image), starts ``seglab serve``
on a free 127.0.0.1 port (``--threads``, ``--score-threshold 0``), and sends sequential POST
/v1/segment requests of one image size (``format=json``: instances with RLE masks; then
``format=overlay``). Printed: p50 / p95 of the request latency seen by the client and of the
model time the server reports (``X-Inference-Ms``), and, in this process with the same threads,
p50 of ``InstanceSegmenter.predict`` on the same image, so the serving overhead is a ratio within
one run. Then N concurrent clients with batching off and on (``--max-batch-size 8``): requests/s.

Usage:
    python benchmarks/serve_instance_latency.py [--requests 30] [--size 48 64] [--threads 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
KWARGS = {"min_size": 64, "max_size": 80, "fpn_channels": 16, "representation_size": 32, "mask_channels": 8,
          "box_score_thresh": 0.0, "box_detections_per_img": 5}
CLASSES = ["background", "Pole", "Car"]


def _checkpoint(folder: Path) -> Path:
    import torch

    from seglab.models.registry import create_model
    from seglab.tasks.checkpoint import Checkpoint, CheckpointMeta, save_checkpoint
    from seglab.tasks.instance import InstanceTask

    torch.manual_seed(0)
    task = InstanceTask(len(CLASSES), CLASSES, [[0, 0, 0], [200, 200, 0], [0, 0, 200]])
    meta = CheckpointMeta(**task.checkpoint_metadata(), model_name="mask_rcnn_resnet18_fpn", model_kwargs=KWARGS,
                          mean=[0.0] * 3, std=[1.0] * 3)
    model = create_model("mask_rcnn_resnet18_fpn", len(CLASSES), **KWARGS)
    path = folder / "tiny_mask_rcnn.pt"
    save_checkpoint(path, Checkpoint(meta, {k: v.detach() for k, v in model.state_dict().items()}))
    return path


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(ckpt: Path, threads: int, batch: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "seglab", "serve", str(ckpt), "--port", str(port), "--device", "cpu",
                             "--threads", str(threads), "--score-threshold", "0", "--max-batch-size", str(batch),
                             "--max-batch-delay-ms", "20"], env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit("seglab serve exited before it was ready")
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("seglab serve was not ready within 300 s")


def _percentiles(values: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(values, 50)), 1), "p95": round(float(np.percentile(values, 95)), 1)}


def _sequential(url: str, body: bytes, fmt: str, n: int) -> dict:
    client_ms, model_ms, counts = [], [], []
    with httpx.Client(timeout=120) as http:
        http.post(f"{url}/v1/segment?format={fmt}", content=body)  # warm this size
        for _ in range(n):
            start = time.perf_counter()
            r = http.post(f"{url}/v1/segment?format={fmt}", content=body)
            client_ms.append((time.perf_counter() - start) * 1000)
            r.raise_for_status()
            model_ms.append(float(r.headers["x-inference-ms"]))
            counts.append(int(r.headers["x-instances"]))
    return {"format": fmt, "request_ms": _percentiles(client_ms), "model_ms": _percentiles(model_ms),
            "instances": sorted(set(counts))}


def _concurrent(url: str, bodies: list[bytes], rounds: int) -> dict:
    with httpx.Client(timeout=120) as http, ThreadPoolExecutor(len(bodies)) as pool:
        start = time.perf_counter()
        replies = [r for _ in range(rounds) for r in pool.map(lambda b: http.post(f"{url}/v1/segment", content=b),
                                                                 bodies)]
        seconds = time.perf_counter() - start
    assert all(r.status_code == 200 for r in replies)
    return {"clients": len(bodies), "requests": len(replies), "req_per_s": round(len(replies) / seconds, 2),
            "max_batch": max(int(r.headers["x-batch-size"]) for r in replies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--size", type=int, nargs=2, default=[48, 64], metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    import torch

    from seglab.inference.instance_predictor import InstanceSegmenter

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (*args.size, 3), dtype=np.uint8) for _ in range(args.clients)]
    results: dict = {"size": args.size, "threads": args.threads, "load_average_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = _checkpoint(Path(tmp))
        seg = InstanceSegmenter.from_checkpoint(ckpt, device="cpu", score_threshold=0.0)
        seg.predict(images[0])
        direct = []
        for _ in range(args.requests):
            start = time.perf_counter()
            seg.predict(images[0])
            direct.append((time.perf_counter() - start) * 1000)
        results["predict_ms"] = _percentiles(direct)
        for batch in (1, 8):
            proc, url = _serve(ckpt, args.threads, batch)
            try:
                if batch == 1:
                    results["sequential"] = [_sequential(url, _png(images[0]), fmt, args.requests)
                                             for fmt in ("json", "overlay")]
                results[f"concurrent_batch_{batch}"] = _concurrent(url, [_png(im) for im in images], 2)
            finally:
                proc.terminate()
                proc.wait(30)
    results["load_average_after"] = os.getloadavg()[0]
    seq = results["sequential"][0]
    results["request_over_predict_p50"] = round(seq["request_ms"]["p50"] / results["predict_ms"]["p50"], 3)
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
