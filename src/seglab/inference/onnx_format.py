"""The seglab ONNX file: metadata embedded by ``seglab export`` and read back by every runtime, and
the parity measure both sides report (export against PyTorch, int8 against fp32)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seglab.core.errors import SeglabError

__all__ = ["METADATA_KEY", "ONNX_FORMAT", "Parity", "compare_logits", "parse_metadata", "read_onnx_metadata"]

#: Marker stored with the metadata, so readers can reject foreign ONNX files.
ONNX_FORMAT = "seglab-onnx-v1"
#: ``metadata_props`` key holding the JSON metadata.
METADATA_KEY = "seglab"

@dataclass
class Parity:
    """ONNX-vs-reference agreement on one input."""

    shape: tuple[int, ...]  # of the logits
    max_abs_diff: float
    argmax_agreement: float  # percent of pixels with the same class

    def format(self) -> str:
        return (f"parity {'x'.join(map(str, self.shape))}: max |diff| {self.max_abs_diff:.3g}, "
                f"argmax agreement {self.argmax_agreement:.3f} %")


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> Parity:
    """Max abs difference and label agreement of two ``N x K x H x W`` logit arrays.

    Labels are the argmax over classes, or ``logit > 0`` for one-channel (binary sigmoid) heads,
    whose argmax would trivially agree.
    """
    def labels(logits: np.ndarray) -> np.ndarray:
        return logits[:, 0] > 0 if logits.shape[1] == 1 else logits.argmax(1)

    agreement = 100.0 * float(np.mean(labels(candidate) == labels(reference)))
    return Parity(tuple(reference.shape), float(np.abs(candidate - reference).max()), agreement)


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The seglab metadata embedded in an ONNX file by :func:`export_onnx`."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise SeglabError(f"ONNX file {str(path)!r} does not exist.")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf decode errors
        raise SeglabError(f"{str(path)!r} is not a readable ONNX file ({type(e).__name__}: {e}).") from e
    return parse_metadata({p.key: p.value for p in proto.metadata_props}, path)


def parse_metadata(props: dict[str, str], path: str | Path) -> dict[str, Any]:
    """Decode the ``seglab`` entry of an ONNX ``metadata_props`` mapping."""
    raw = props.get(METADATA_KEY)
    meta = json.loads(raw) if raw else {}
    if meta.get("format") != ONNX_FORMAT:
        raise SeglabError(f"{str(path)!r} has no seglab metadata: export it with `seglab export CKPT --format onnx`, "
                          "which records classes, palette and normalisation in the file.")
    return meta
