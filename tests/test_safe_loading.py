"""Loading a checkpoint never runs code from it: ``weights_only`` everywhere, exactly the numpy
types seglab 0.1.0 wrote let through, and a poisoned pickle refused with a clear message."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from seglab.core.errors import SeglabError
from seglab.core.runtime import rng_state, set_rng_state
from seglab.tasks.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, read_checkpoint

OLD_CHECKPOINT = Path(__file__).parent / "data" / "checkpoint_main_f87ebd0.pt"
SRC = Path(__file__).resolve().parents[1] / "src" / "seglab"


class _RunsCode:
    """Unpickling this calls ``Path.touch``: what a malicious checkpoint would do with ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_runs_code_is_refused_and_the_code_does_not_run(tmp_path):
    marker = tmp_path / "code-ran"
    bad = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model_name": "segnet_basic", "payload": _RunsCode(marker)}, bad)
    with pytest.raises(SeglabError, match=r"refused.*could run code.*pathlib"):
        load_checkpoint(bad)
    assert not marker.exists()


def test_checkpoints_of_seglab_0_1_0_still_load_with_their_numpy_rng_state():
    ckpt = read_checkpoint(OLD_CHECKPOINT)
    assert isinstance(ckpt.training.rng["numpy"][1], np.ndarray)  # the old tuple form, let through
    set_rng_state(ckpt.training.rng)  # and still usable for resuming


def test_rng_state_is_plain_data_and_round_trips(tmp_path):
    state = rng_state()
    path = tmp_path / "rng.pt"
    torch.save(state, path)
    loaded = torch.load(path, weights_only=True)  # would raise on any non-plain object
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(loaded)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_every_torch_load_in_seglab_is_weights_only():
    calls = [(path, line) for path in SRC.rglob("*.py") for line in path.read_text().splitlines()
             if "torch.load(" in line and not line.lstrip().startswith(("#", "*", "``"))]
    assert calls, "expected torch.load calls to check"
    unsafe = [f"{p.relative_to(SRC)}: {line.strip()}" for p, line in calls if "weights_only=True" not in line]
    assert not unsafe, unsafe
