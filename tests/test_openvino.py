"""The OpenVINO backend's tests (tests/openvino_cases.py), in a process of their own.

With OpenVINO's CPU plugin and NNCF loaded, a later in-process training test crashed pytest with a
segfault in the interpreter (a freed object, not reproduced outside the suite); separate processes
keep OpenVINO out of every other test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")


def test_openvino_backend_cases_pass_in_their_own_process() -> None:
    cases = Path(__file__).with_name("openvino_cases.py")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(cases)],
                          cwd=cases.parent.parent, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and " failed" not in done.stdout


def test_default_path_benchmark_runs(tmp_path: Path) -> None:
    """benchmarks/default_path.py (docs/benchmarks.md, "The default CPU path") at a tiny size."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "default_path.py"
    out = tmp_path / "default.json"
    done = subprocess.run([sys.executable, str(script), "--model", "segnet_basic", "--size", "48", "64", "--repeats", "1",
                           "--warmup", "0", "--calibration", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    import json

    rows = json.loads(out.read_text())["rows"]
    assert [r["path"].split(" (")[0] for r in rows][1:] == ["torch fast fp32", "torch fast bf16", "openvino f32",
                                                             "openvino bf16"]
    assert all(r["median_ms"] > 0 and r["x_peak"] > 0 for r in rows)
