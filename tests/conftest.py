"""Shared pytest fixtures: the real data folder (when present) and an isolated seglab cache."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``<repo>/../shared/data`` (real CamVid and ISBI 2012), or skip the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not found: the CamVid/ISBI tests run in CI, where the shared data is mounted.")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_seglab_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``SEGLAB_CACHE_DIR`` at a per-test folder so tests never read or write ``~/.cache/seglab``."""
    cache = tmp_path_factory.mktemp("seglab-cache")
    monkeypatch.setenv("SEGLAB_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(autouse=True)
def _torch_backend_in_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep ``backend="auto"`` on PyTorch in the pytest process (``SEGLAB_BACKEND=torch``).

    Trained weights that ship an int8 OpenVINO model run in OpenVINO by default, and OpenVINO loaded
    beside in-process training once crashed the suite (tests/test_openvino.py). The OpenVINO cases,
    run in a process of their own, test that default as users get it.
    """
    if request.module.__name__.rsplit(".", 1)[-1] != "openvino_cases":
        monkeypatch.setenv("SEGLAB_BACKEND", "torch")
    else:  # inherited from the pytest process that started this one (tests/test_openvino.py)
        monkeypatch.delenv("SEGLAB_BACKEND", raising=False)
