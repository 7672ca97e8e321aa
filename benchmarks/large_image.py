"""Peak memory and time of ``seglab predict`` on a 4000x3000 image: tiled versus whole.

Makes a 4000 x 3000 (W x H) test image, a CamVid validation frame scaled up (bicubic) when
``--camvid`` exists, else a synthetic road scene, and runs SegNet-Basic (the shipped
``segnet_basic.camvid`` weights) over it in fresh processes:

* ``tiled HxW``: ``seglab predict segnet_basic.camvid IMG --tile H W`` (overlap 32, Gaussian
  blending; the model runs at the image's own resolution, tile by tile).
* ``whole, native``: the same :func:`seglab.apps.predict.predict_to_files` on the whole image in one
  pass at its own resolution (a ``Segmenter`` with ``infer_size=None``; the CLI has no switch for
  this because the checkpoint asks for its training size, see the next row).
* ``whole, CLI default``: ``seglab predict segnet_basic.camvid IMG`` without ``--tile``: the image
  is resized to the checkpoint's training size (180x240), predicted, and the logits are scaled
  back up to 3000x4000 (a different, much cheaper, computation: reported for completeness).
* ``startup``: the CLI on the original 480x360 frame (interpreter, torch, model and PNG writing:
  the floor under every other row).

Every row runs PyTorch in fp32 (``--backend torch --precision f32``): the default path of the
shipped weights (OpenVINO int8 or bf16, :mod:`seglab.inference.auto`) would change the figures.

Each process runs under ``/usr/bin/time -v`` (peak RSS = the kernel's ``ru_maxrss`` of the
predicting process, wall time = the whole command, start-up included) with an address-space cap
(``--mem-limit-gb``, default 12: torch's own mappings take ~3.5 GB of it, so resident memory stays
below ~9 GB) and a watchdog that kills the process tree if its resident memory passes
``--kill-rss-gb`` (default 9.5). A case stopped either way is reported as "did not fit".

Usage:
    python benchmarks/large_image.py                    # tiles 512x512, and the whole-image rows
    python benchmarks/large_image.py --tiles 512 512 1024 1024 --skip-whole --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = "segnet_basic.camvid"
CAMVID_FRAME = Path("/work/shared/data/camvid/val/0016E5_07959.png")
#: Whole-image prediction at native resolution through the same writer as ``seglab predict``.
_WHOLE_NATIVE = (
    "import sys\n"
    "from seglab.apps.predict import predict_to_files\n"
    "from seglab.inference.predictor import Segmenter\n"
    "seg = Segmenter.from_pretrained(sys.argv[1], device='cpu', amp='none')\n"
    "seg.infer_size = None  # one pass at the image's own size instead of the checkpoint's 180x240\n"
    "files = predict_to_files(seg, [sys.argv[2]], sys.argv[3])\n"
    "print(f'wrote {len(files)} files')\n"
)


def make_image(path: Path, camvid: Path, size: tuple[int, int] = (4000, 3000)) -> str:
    """Write the W x H test image; returns where it came from."""
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if camvid.is_file():
        Image.open(camvid).convert("RGB").resize(size, Image.BICUBIC).save(path)
        return f"{camvid} resized to {size[0]}x{size[1]} (bicubic)"
    from seglab.data.synthetic import render_scene

    image = render_scene(np.random.default_rng(0), size[1], size[0])[0]
    Image.fromarray(image).save(path)
    return f"synthetic road scene {size[0]}x{size[1]} (seglab.data.synthetic.render_scene, seed 0)"


def _watch(proc: subprocess.Popen, kill_rss_kib: int, state: dict[str, Any]) -> None:
    """Poll the RSS of ``proc``'s process tree; kill it when it passes ``kill_rss_kib``."""
    import psutil

    try:
        root = psutil.Process(proc.pid)
    except psutil.NoSuchProcess:
        return
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) // 1024
        except psutil.Error:
            rss = 0
        state["max_polled_kib"] = max(state.get("max_polled_kib", 0), rss)
        if rss > kill_rss_kib:
            state["killed"] = True
            for p in [*root.children(recursive=True), root]:  # only the processes this script started
                try:
                    p.kill()
                except psutil.Error:
                    pass
            return
        time.sleep(0.05)


def run_case(name: str, argv: list[str], mem_limit_gb: float, kill_rss_gb: float) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    limit = int(mem_limit_gb * 1e9)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    state: dict[str, Any] = {}
    start = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-v", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=cap)
    watcher = threading.Thread(target=_watch, args=(proc, int(kill_rss_gb * 2**20), state), daemon=True)
    watcher.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    watcher.join()
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    status = re.search(r"Exit status: (\d+)", err)
    code = int(status.group(1)) if status else proc.returncode
    row = {"case": name, "command": " ".join(argv), "wall_s": wall, "exit": code,
           "peak_rss_mb": int(peak.group(1)) / 1024 if peak else None,
           "max_polled_rss_mb": state.get("max_polled_kib", 0) / 1024}
    if state.get("killed"):
        row.update(status="did not fit", note=f"killed by the watchdog at {kill_rss_gb:g} GB resident")
    elif code != 0:
        # The child's own last error line, not /usr/bin/time's report (which is tab-indented or "Command ...").
        lines = [l for l in err.splitlines() if l.strip() and not l.startswith(("\t", "Command "))]
        memory = any(s in err for s in ("MemoryError", "DefaultCPUAllocator", "std::bad_alloc", "Cannot allocate"))
        row.update(status="did not fit" if memory else "error",
                   note=(f"did not fit in {mem_limit_gb:g} GB address space: " if memory else "")
                   + (lines[-1][-200:] if lines else f"exit {code}"))
    else:
        row.update(status="ok", note=out.strip().splitlines()[-1] if out.strip() else "")
    return row


def _agreement(a: Path, b: Path) -> float | None:
    import numpy as np
    from PIL import Image

    if not (a.is_file() and b.is_file()):
        return None
    la, lb = np.asarray(Image.open(a)), np.asarray(Image.open(b))
    return float((la == lb).mean()) if la.shape == lb.shape else None


def format_markdown(rows: list[dict[str, Any]], budget_mb: float) -> str:
    lines = ["| case | peak RSS MiB | within 2 GB | wall s | labels = whole native | status |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        peak = r.get("peak_rss_mb")
        fits = "-" if peak is None or r["status"] != "ok" else ("yes" if peak <= budget_mb else "no")
        agree = "-" if r.get("agree_whole_native") is None else f"{100 * r['agree_whole_native']:.2f}%"
        status = r["status"] + (f": {r['note']}" if r["status"] != "ok" else "")
        lines.append(f"| {r['case']} | {'-' if peak is None else f'{peak:.0f}'} | {fits} | {r['wall_s']:.1f} | "
                     f"{agree} | {status} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/seglab-large-image", help="folder for the image and the predictions")
    p.add_argument("--camvid", default=str(CAMVID_FRAME), help="frame to scale up (synthetic scene if missing)")
    p.add_argument("--size", type=int, nargs=2, default=(4000, 3000), metavar=("W", "H"))
    p.add_argument("--tiles", type=int, nargs="+", default=[512, 512], help="H W pairs of tile sizes")
    p.add_argument("--skip-whole", action="store_true", help="only the tiled rows (and startup)")
    p.add_argument("--mem-limit-gb", type=float, default=12.0, help="address-space cap of every run")
    p.add_argument("--kill-rss-gb", type=float, default=9.5, help="watchdog: kill a run above this resident size")
    p.add_argument("--budget-mb", type=float, default=2048.0, help="the tiled path's memory budget (2 GB)")
    p.add_argument("--json", help="also write {meta, rows} here")
    args = p.parse_args(argv)
    if len(args.tiles) % 2:
        p.error("--tiles takes H W pairs")

    work = Path(args.work)
    image = work / f"large_{args.size[0]}x{args.size[1]}.png"
    source = make_image(image, Path(args.camvid), tuple(args.size))
    # PyTorch in fp32, as the documented figures: by default the CLI runs the weights' verified faster path.
    cli = [sys.executable, "-m", "seglab", "predict", WEIGHTS, "--backend", "torch", "--precision", "f32"]
    cases: list[tuple[str, list[str], str]] = []
    if Path(args.camvid).is_file():
        cases.append(("startup (480x360 frame, CLI)", [*cli, args.camvid, "--out", str(work / "startup"),
                                                       "--device", "cpu"], "startup"))
    for h, w in zip(args.tiles[::2], args.tiles[1::2]):
        cases.append((f"tiled {h}x{w} (CLI --tile {h} {w})", [*cli, str(image), "--out", str(work / f"tiled_{h}x{w}"),
                                                                "--device", "cpu", "--tile", str(h), str(w)],
                      f"tiled_{h}x{w}"))
    if not args.skip_whole:
        cases.append(("whole, native resolution", [sys.executable, "-c", _WHOLE_NATIVE, WEIGHTS, str(image),
                                                   str(work / "whole_native")], "whole_native"))
        cases.append(("whole, CLI default (resized to 180x240)", [*cli, str(image), "--out", str(work / "whole_cli"),
                                                                   "--device", "cpu"], "whole_cli"))
    rows = []
    for name, command, out_name in cases:
        row = run_case(name, command, args.mem_limit_gb, args.kill_rss_gb)
        row["out"] = out_name
        rows.append(row)
        print(f"{name}: {row['status']}, peak RSS {row['peak_rss_mb']} MiB, {row['wall_s']:.1f} s", file=sys.stderr,
              flush=True)
    reference = work / "whole_native" / f"{image.stem}_labels.png"
    for row in rows:
        if row["out"] != "startup" and row["status"] == "ok":
            row["agree_whole_native"] = _agreement(work / row["out"] / f"{image.stem}_labels.png", reference)
    print(f"image: {source}")
    print(format_markdown(rows, args.budget_mb))
    if args.json:
        import platform

        import torch

        from seglab.apps.benchmark import write_json

        meta = {"image": source, "size_wh": list(args.size), "weights": WEIGHTS, "torch": torch.__version__,
                "python": platform.python_version(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "usable_cores": len(os.sched_getaffinity(0)), "loadavg": os.getloadavg(),
                "mem_limit_gb": args.mem_limit_gb, "kill_rss_gb": args.kill_rss_gb, "budget_mb": args.budget_mb}
        write_json(args.json, {"meta": meta, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
