"""``seglab.benchmark``: rows carry the documented keys and sane numbers; the table and JSON are well formed.

No timing assertions: the numbers depend on the machine and its load. One end-to-end run (real
child processes, tiny input, 1 repeat) checks the measurement plumbing; the bookkeeping is
checked with a stubbed child so it is exact and fast.
"""

from __future__ import annotations

import json
import math

import pytest

from seglab.core import atomic
from seglab.apps import benchmark
from seglab.apps.benchmark import ROW_KEYS, format_table, run_benchmark, write_json
from seglab.core.errors import SeglabError


def test_end_to_end_tiny_run(tmp_path) -> None:
    out = tmp_path / "results" / "bench.json"
    rows = run_benchmark(["segnet_basic"], sizes=[(32, 48)], batch_sizes=[2], paths=["eager", "fast"],
                         warmup=0, repeats=1, threads=1, train_mode=True, json_out=out,
                         train_paths=["train_eager"])
    assert [(r["mode"], r["path"]) for r in rows] == [("inference", "eager"), ("inference", "fast"),
                                                      ("train", "train_eager")]
    for row in rows:
        assert set(row) == set(ROW_KEYS)
        assert row["status"] == "ok", row["note"]
        assert (row["model"], row["height"], row["width"], row["batch"], row["threads"]) == ("segnet_basic", 32, 48, 2, 1)
        for key in ("median_ms", "min_ms", "images_per_s", "gflops", "gflops_per_s", "peak_pct"):
            assert row[key] > 0 and math.isfinite(row[key]), key
        assert row["min_ms"] <= row["median_ms"]
        assert row["peak_mem_mb"] >= 0
        # 4 pools of 64 channels on 16x24, 8x12, 4x6, 2x3 windows, batch 2
        pooled = 2 * 64 * (16 * 24 + 8 * 12 + 4 * 6 + 2 * 3)
        packed = 2 * 64 * (16 * 6 + 8 * 3 + 4 * 2 + 2 * 1)  # ceil(width / 4) bytes per row
        assert row["pool_index_int64_mb"] == pytest.approx(pooled * 8 / 2**20)
        assert row["pool_index_uint8_mb"] == pytest.approx(pooled / 2**20)
        assert row["pool_index_packed_mb"] == pytest.approx(packed / 2**20)
        assert row["pool_index_format"] in ("int64", "uint8", "packed")
    assert rows[2]["gflops"] > 2 * rows[0]["gflops"]  # a training step also runs the backward pass
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    assert saved["meta"]["conv_peak"]["peak_gflops_per_s"] > 0 and saved["meta"]["threads"] == 1
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # no temporary file left
    assert "segnet_basic" in format_table(rows)


def _fake_child(case: dict, env: dict | None = None) -> dict:
    if case["mode"] == "peak":
        return {"peak_gflops_per_s": 100.0}
    if case["model"] == "segnet":
        raise RuntimeError("benchmark process exited with 1: boom")
    return {"times_s": [0.4, 0.1, 0.2], "peak_mem_mb": 12.5, "gflops": 10.0, "pool_index_format": None,
            "pool_index_int64_mb": 0.0, "pool_index_uint8_mb": 0.0, "pool_index_packed_mb": 0.0,
            "input_hw": [case["height"], case["width"]]}


def test_rows_bookkeeping_and_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(benchmark, "_child", _fake_child)
    rows = run_benchmark(["tv_fcn_resnet50", "segnet"], sizes=[(8, 8)], batch_sizes=[4], paths=["eager"], threads=3)
    peer, failed = rows
    assert peer["status"] == "ok" and peer["threads"] == 3
    assert peer["median_ms"] == pytest.approx(200.0) and peer["min_ms"] == pytest.approx(100.0)
    assert peer["images_per_s"] == pytest.approx(20.0)
    assert peer["gflops_per_s"] == pytest.approx(200.0) and peer["peak_pct"] == pytest.approx(200.0)
    assert peer["pool_index_int64_mb"] is None and peer["pool_index_format"] is None  # shown as "-"
    assert failed["status"] == "error" and "boom" in failed["note"] and failed["median_ms"] is None
    table = format_table(rows)
    assert "tv_fcn_resnet50" in table and "segnet" in table and "boom" in table
    header, rule, first = table.splitlines()[:3]
    assert set(rule) <= {"-", " "}
    assert first.index("eager") == header.index("path")  # text left-aligned under its title
    assert first.index("200.0") + 5 == header.index("median ms") + len("median ms")  # numbers right-aligned


def test_unavailable_onnx_path_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(benchmark, "_child", _fake_child)
    monkeypatch.setattr(benchmark, "_onnx_unavailable", lambda path: f"skipped: no {path} here")
    rows = run_benchmark(["segnet_basic"], sizes=[(8, 8)], paths=["quantized"])
    assert rows[0]["status"] == "skipped" and rows[0]["note"] == "skipped: no quantized here"


def test_nomallopt_path_sets_the_opt_out(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setattr(benchmark, "_child", lambda case, env=None: seen.append(env) or _fake_child(case, env))
    run_benchmark(["segnet_basic"], sizes=[(8, 8)], paths=["fast", "fast_nomallopt"])
    assert seen[1:] == [None, {"SEGLAB_NO_MALLOPT": "1"}]


def test_unknown_names_are_rejected() -> None:
    with pytest.raises(SeglabError, match="model"):
        run_benchmark(["segnot"], paths=["eager"])
    with pytest.raises(SeglabError, match="path"):
        run_benchmark(["segnet"], paths=["warp_speed"])


def test_write_json_is_atomic(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "r.json"
    write_json(target, {"a": 1})

    def explode(*args, **kwargs):
        raise OSError("disk full")

    # Fail after the temporary file is written, before it replaces the target.
    monkeypatch.setattr(atomic.os, "fsync", explode)
    with pytest.raises(OSError, match="disk full"):
        write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.parametrize("named, expected", [
    (["train_bf16", "train_bf16_cl"], [("train", "train_bf16"), ("train", "train_bf16_cl")]),
    (["eager", "train_cl"], [("inference", "eager"), ("train", "train_cl")]),
])
def test_cli_routes_training_path_names_to_training_steps(monkeypatch, capsys, named, expected) -> None:
    """`seglab benchmark --paths train_...` times training steps; inference paths only when named."""
    from seglab.apps.cli import main

    cases = []
    monkeypatch.setattr(benchmark, "_child", lambda case, env=None: cases.append(case) or _fake_child(case, env))
    assert main(["benchmark", "--models", "segnet_basic", "--sizes", "32", "48", "--repeats", "1", "--warmup", "0",
                 "--paths", *named]) == 0
    assert [(c["mode"], c["path"]) for c in cases if c["mode"] != "peak"] == expected
    assert expected[-1][1] in capsys.readouterr().out
