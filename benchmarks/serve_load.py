"""Load and junk against ``seglab serve`` on loopback: concurrency, batching on/off, then junk.

For each batching setting (``--max-batch-size 1``, i.e. off, and on) a ``seglab serve`` process is
started on a free 127.0.0.1 port; N concurrent clients (threads, one HTTP connection each; N = 1, 4,
8, 16) each send a fixed number of POST /v1/segment requests (format=labels) of synthetic road
scenes. Printed per row: requests/s, p50/p95/p99 latency, 5xx count, and the server's peak RSS
(VmHWM). Then a junk mix (oversize body, non-image, truncated PNG, zero bytes, a slow upload that
stalls past the request timeout) must get 4xx answers, and /healthz plus good requests must
still succeed. The same run measures the offline batched throughput of the same model
(``ModelRunner.run`` on batches of the batching size from a worker thread, in a fresh process while no
server runs, before and after the load runs, averaged) for comparison.

Usage:
    python benchmarks/serve_load.py                                  # tiny SegNet-Basic, 96x128 images
    python benchmarks/serve_load.py --model unet.isbi2012 --size 256 256 --requests 4
    python benchmarks/serve_load.py --quick                          # 1 and 8 clients, 4 requests each
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
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _tiny_checkpoint(folder: Path, size: tuple[int, int]) -> str:
    """A SegNet-Basic with random weights and the synthetic scenes' 7 classes (timing only)."""
    import torch

    from seglab.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE
    from seglab.models.registry import create_model
    from seglab.tasks.checkpoint import save_checkpoint

    torch.manual_seed(0)
    names, palette = list(SYNTHETIC_CLASSES), [list(c) for c in SYNTHETIC_PALETTE]
    path = folder / "tiny.pt"
    save_checkpoint(path, {"model_name": "segnet_basic", "num_classes": len(names), "class_names": names,
                           "palette": palette, "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": list(size),
                           "model": create_model("segnet_basic", len(names)).state_dict()})
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(model: str, batch: int, threads: int, timeout_s: float) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "seglab", "serve", model, "--port", str(port), "--max-batch-size", str(batch),
           "--max-batch-delay-ms", "5", "--max-upload-mb", "1", "--request-timeout-s", str(timeout_s),
           "--threads", str(threads), "--max-queue", "64"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"seglab serve exited: {proc.stderr.read()}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("seglab serve did not become ready in 120 s")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _load(url: str, bodies: list[bytes], clients: int, requests: int) -> dict:
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(timeout=120) as http:
            for i in range(requests):
                body = bodies[(k * requests + i) % len(bodies)]
                start = time.perf_counter()
                try:
                    code = http.post(url + "/v1/segment?format=labels", content=body,
                                     headers={"content-type": "image/png"}).status_code
                except httpx.HTTPError:
                    code = 599  # a dropped connection counts as a server error
                with lock:
                    latencies.append(time.perf_counter() - start)
                    statuses.append(code)

    start = time.perf_counter()
    workers = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(statuses), "req_per_s": len(statuses) / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "5xx": sum(c >= 500 for c in statuses),
            "non_200": sum(c != 200 for c in statuses)}


def _slow_upload(url: str, stall_s: float) -> int:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=stall_s + 30) as s:
        s.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
                  + b"\x89PNG\r\n\x1a\n")
        reply = s.recv(4096).decode("latin-1")
    return int(reply.split()[1]) if reply.startswith("HTTP/") else 599


def _junk(url: str, good: bytes, stall_s: float) -> dict:
    cases = {"oversize (2 MB, limit 1 MB)": b"\x89PNG" + b"0" * (2 << 20), "non-image": b"name,value\n1,2\n" * 20,
             "truncated PNG": good[: len(good) // 3], "zero bytes": b""}
    out = {}
    with httpx.Client(timeout=60) as http:
        for name, body in cases.items():
            try:
                out[name] = http.post(url + "/v1/segment", content=body).status_code
            except httpx.HTTPError as e:
                out[name] = f"client error {type(e).__name__}"
        out["multipart without file"] = http.post(url + "/v1/segment", files={"x": ("a", b"1")}).status_code
    out["slow upload"] = _slow_upload(url, stall_s)
    with httpx.Client(timeout=60) as http:
        out["healthz after junk"] = http.get(url + "/healthz").status_code
        out["good requests after junk"] = [http.post(url + "/v1/segment", content=good).status_code for _ in range(3)]
    return out


def _offline_in_process(model: str, size: list[int], batch: int, threads: int, seconds: float) -> float:
    """Images/s of batched ``ModelRunner.run`` calls, made from a worker thread as the server makes them
    (on the contended 2-core machine, torch ran batch-1 passes about 3x slower from the main thread)."""
    import concurrent.futures

    import torch

    from seglab.apps.serve.runner import ModelRunner
    from seglab.apps.serve.server import load_segmenter
    from seglab.data.synthetic import render_scene

    torch.set_num_threads(threads)
    runner = ModelRunner(load_segmenter(model, threads=threads)[0])
    images = [render_scene(np.random.default_rng(s), *size)[0] for s in range(16)]

    def measure() -> float:
        runner.run(images[:batch])
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            runner.run([images[(done + i) % len(images)] for i in range(batch)])
            done += batch
        return done / (time.perf_counter() - start)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(measure).result()


def _offline(model: str, size: list[int], batch: int, threads: int, seconds: float = 5.0) -> float:
    """The same model's offline batched throughput (no HTTP, no PNG), in a fresh process like the server's."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, __file__, "--offline-only", model, "--size", *map(str, size), "--batch", str(batch),
           "--threads", str(threads), "--offline-seconds", str(seconds)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=600).stdout
    return float(out.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="checkpoint, .onnx or weights name (default: a tiny random SegNet-Basic)")
    p.add_argument("--size", type=int, nargs=2, default=[96, 128], metavar=("H", "W"))
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--requests", type=int, default=8, help="requests per client")
    p.add_argument("--batch", type=int, default=8, help="--max-batch-size when batching is on")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--request-timeout", type=float, default=20.0,
                   help="the server's --request-timeout-s (the slow upload stalls this long)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--offline-only", metavar="MODEL", help=argparse.SUPPRESS)  # the offline measurement's process
    p.add_argument("--offline-seconds", type=float, default=5.0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.offline_only:
        print(_offline_in_process(args.offline_only, args.size, args.batch, args.threads, args.offline_seconds))
        return 0
    if args.quick:
        args.clients, args.requests = [1, 8], 4
    sys.path.insert(0, str(REPO / "src"))
    from seglab.data.synthetic import render_scene

    tmp = tempfile.TemporaryDirectory()
    model = args.model or _tiny_checkpoint(Path(tmp.name), tuple(args.size))
    images = [render_scene(np.random.default_rng(s), *args.size)[0] for s in range(16)]
    bodies = [_png(im) for im in images]
    results: dict = {"model": args.model or "segnet_basic (random weights)", "size": args.size,
                     "threads": args.threads, "cpus": os.cpu_count(), "rows": [], "junk": {}}
    results["offline_img_per_s"] = _offline(model, args.size, args.batch, args.threads)
    print(f"offline batched throughput (batch {args.batch}): {results['offline_img_per_s']:.1f} images/s", flush=True)
    print(f"{'batching':<10}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'5xx':>5}{'RSS MB':>8}")
    for batch in (1, args.batch):
        proc, url = _start_server(model, batch, args.threads, timeout_s=args.request_timeout)
        try:
            _load(url, bodies, 2, 2)  # warm the connection handling
            for clients in args.clients:
                row = {"batching": "off" if batch == 1 else f"on ({batch})", **_load(url, bodies, clients, args.requests),
                       "peak_rss_mb": _peak_rss_mb(proc.pid)}
                results["rows"].append(row)
                print(f"{row['batching']:<10}{clients:>8}{row['req_per_s']:>9.1f}{row['p50_ms']:>9.1f}"
                      f"{row['p95_ms']:>9.1f}{row['p99_ms']:>9.1f}{row['5xx']:>5}{row['peak_rss_mb']:>8.0f}", flush=True)
            results["junk"][str(batch)] = junk = _junk(url, bodies[0], stall_s=args.request_timeout)
            print(f"junk (batch {batch}): {json.dumps(junk)}", flush=True)
            results["junk"][str(batch)]["server alive"] = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(30)
    after = _offline(model, args.size, args.batch, args.threads)  # again: the shared machine's load drifts
    print(f"offline batched throughput again, after the load runs: {after:.1f} images/s")
    results["offline_img_per_s_runs"] = [results["offline_img_per_s"], after]
    results["offline_img_per_s"] = (results["offline_img_per_s"] + after) / 2
    on8 = [r for r in results["rows"] if r["batching"] != "off" and r["clients"] == 8]
    if on8:
        ratio = on8[0]["req_per_s"] / results["offline_img_per_s"]
        results["served_vs_offline_at_8"] = ratio
        print(f"served with batching at 8 clients / offline batched: {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
