"""Trained weights by name, in torchvision's style: ``segnet_basic.camvid``, ``unet.isbi2012``.

Small weights ship inside the package (``seglab/weights/``, fp16 safetensors of at most 4 MB),
so they work offline right after ``pip install``; larger ones are listed with a URL and
downloaded once into the cache (progress bar, sha256 check, atomic rename). ``weights/index.json``
lists each entry's file, sha256, size and URL; everything else about it (classes, palette,
normalisation, training size, recipe, commit, training time and hardware, val metrics in fp32
and fp16) is in the safetensors header under the key ``seglab``, written by
``seglab weights pack``. Loading verifies the sha256 and returns fp32 tensors.

An entry may also ship its OpenVINO int8 model (``<name>.int8.xml`` + ``.bin``, NNCF-quantized
from the same weights), listed under ``openvino_int8`` with both files' sha256. Packing writes it
only when it passed the default-path rule on the val split against fp32
(:func:`seglab.core.runtime.passes_default_rule`), so :func:`pretrained_openvino_ir` returns
nothing unverified.

Example:
    >>> from seglab.models.zoo import list_pretrained, read_pretrained
    >>> state, meta = read_pretrained("unet.isbi2012")            # doctest: +SKIP
    >>> meta["checkpoint"]["class_names"]                          # doctest: +SKIP
    ['membrane', 'cell']
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from seglab.core.atomic import atomic_write, atomic_write_text
from seglab.core.errors import SeglabError, did_you_mean
from seglab.models.weights import cached_download, file_sha256

__all__ = ["WEIGHTS_DIR", "WEIGHTS_FORMAT", "PretrainedEntry", "get_pretrained", "is_pretrained_name",
           "list_pretrained", "pretrained_entries", "pretrained_metadata", "pretrained_openvino_ir", "read_pretrained",
           "read_weights_file",
           "register_entry", "resolve_pretrained", "write_weights_file"]

#: Where shipped weights live (package data).
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
#: Marker of seglab's weights files, stored in their safetensors header.
WEIGHTS_FORMAT = "seglab-weights-v1"
_HEADER_KEY = "seglab"


@dataclass(frozen=True)
class PretrainedEntry:
    """One named set of trained weights (``<model>.<tag>``)."""

    name: str
    file: str  # file name in WEIGHTS_DIR (shipped) or in the download cache (url entries)
    sha256: str
    size: int  # bytes
    url: str | None = None  # set for weights that are downloaded, not shipped
    #: The verified OpenVINO int8 model beside a shipped entry: {"xml": file, "xml_sha256": ..., "bin": ..., "bin_sha256": ...}
    openvino_int8: dict[str, str] | None = None

    @property
    def model(self) -> str:
        return self.name.rsplit(".", 1)[0]

    @property
    def tag(self) -> str:
        return self.name.rsplit(".", 1)[1]


def _index_path(folder: Path | None = None) -> Path:
    return (folder or WEIGHTS_DIR) / "index.json"


@functools.cache
def pretrained_entries() -> dict[str, PretrainedEntry]:
    """Every entry of ``weights/index.json``, by name."""
    path = _index_path()
    if not path.is_file():
        return {}
    return {e["name"]: PretrainedEntry(**e) for e in json.loads(path.read_text())["weights"]}


def list_pretrained(model: str | None = None) -> list[str]:
    """Sorted names of the trained weights (of ``model`` only, if given)."""
    return sorted(n for n, e in pretrained_entries().items() if model is None or e.model == model)


def is_pretrained_name(text: str) -> bool:
    return str(text) in pretrained_entries()


def get_pretrained(name: str) -> PretrainedEntry:
    """The entry named ``name``; a clear error with the close names otherwise."""
    entries = pretrained_entries()
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise SeglabError(f"No trained weights named {name!r}.{did_you_mean(name, entries)} Trained weights: {known} "
                          "(see `seglab weights`).")
    return entries[name]


def _entry_path(entry: PretrainedEntry) -> Path:
    """The verified local file of ``entry`` (downloaded first for url entries)."""
    if entry.url is not None:
        return cached_download(entry.url, sha256=entry.sha256, progress=True, option="weights",
                               described=f"{entry.name!r}")
    return _checked_file(entry, entry.file, entry.sha256, "weights file")


def _checked_file(entry: PretrainedEntry, file: str, sha256: str, what: str) -> Path:
    path = WEIGHTS_DIR / file
    if not path.is_file():
        raise SeglabError(f"The {what} of {entry.name!r} ({path}) is missing from the installed package; "
                          "reinstall seglab (pip install --force-reinstall seglab).")
    if file_sha256(path) != sha256:
        raise SeglabError(f"The {what} of {entry.name!r} ({path}) does not match its sha256 in "
                          f"{_index_path()}: it is damaged; reinstall seglab.")
    return path


def pretrained_openvino_ir(name: str) -> Path | None:
    """The checked ``.xml`` of the OpenVINO int8 model shipped with ``name`` (its ``.bin`` beside it,
    checked too), or None when the entry has none (not packed with one, or downloaded weights)."""
    entry = get_pretrained(name)
    ir = entry.openvino_int8
    if not ir or entry.url is not None:
        return None
    _checked_file(entry, ir["bin"], ir["bin_sha256"], "OpenVINO int8 weights")
    return _checked_file(entry, ir["xml"], ir["xml_sha256"], "OpenVINO int8 graph")


def _open_weights_file(path: Path, tensors: bool) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors (if ``tensors``) and the checked ``seglab`` metadata of a weights file."""
    from safetensors import safe_open  # lazy: only weights files need it

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except Exception as e:  # truncated or foreign files
        raise SeglabError(f"Could not read the weights file {str(path)!r} ({type(e).__name__}: {e}); it may be "
                          "truncated. Reinstall seglab, or write it again with `seglab weights pack`.") from e
    meta = json.loads(header.get(_HEADER_KEY, "{}"))
    if meta.get("format") != WEIGHTS_FORMAT:
        raise SeglabError(f"{str(path)!r} is a safetensors file without seglab metadata; write seglab weights "
                          "files with `seglab weights pack CHECKPOINT --name MODEL.TAG`.")
    return state, meta


def read_weights_file(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(fp32 state dict, metadata)`` of a seglab weights file (safetensors with a ``seglab`` header)."""
    state, meta = _open_weights_file(Path(path), tensors=True)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, meta


def pretrained_metadata(name: str) -> dict[str, Any]:
    """The metadata of the trained weights ``name``, from the file header only (no tensors read)."""
    return _open_weights_file(_entry_path(get_pretrained(name)), tensors=False)[1]


def read_pretrained(name: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(fp32 state dict, metadata)`` of the trained weights named ``name``."""
    return read_weights_file(_entry_path(get_pretrained(name)))


def write_weights_file(path: str | Path, state: dict[str, Tensor], metadata: dict[str, Any]) -> str:
    """Write ``state`` as fp16 safetensors with ``metadata`` in its header, atomically; returns its sha256."""
    from safetensors.torch import save_file

    half = {k: (v.half() if v.is_floating_point() else v).contiguous().cpu() for k, v in state.items()}
    header = {_HEADER_KEY: json.dumps({**metadata, "format": WEIGHTS_FORMAT}, sort_keys=True)}
    atomic_write(path, lambda tmp: save_file(half, tmp, metadata=header))
    return file_sha256(Path(path))


def register_entry(entry: PretrainedEntry, folder: Path | None = None) -> None:
    """Add (or replace) ``entry`` in ``folder``'s ``index.json`` (the package's by default)."""
    path = _index_path(folder)
    entries = json.loads(path.read_text())["weights"] if path.is_file() else []
    entries = [e for e in entries if e["name"] != entry.name] + [asdict(entry)]
    atomic_write_text(path, json.dumps({"weights": sorted(entries, key=lambda e: e["name"])}, indent=2) + "\n")
    pretrained_entries.cache_clear()


def resolve_pretrained(model_name: str, weights: str, num_classes: int) -> tuple[dict[str, Tensor], dict] | None:
    """``(state, metadata)`` of the trained weights ``weights`` names for ``model_name`` (``"camvid"``
    or ``"segnet_basic.camvid"``), checked against ``num_classes``; None if it names no entry."""
    name = weights if is_pretrained_name(weights) else f"{model_name}.{weights}"
    if not is_pretrained_name(name):
        return None
    entry = get_pretrained(name)
    if entry.model != model_name:
        raise SeglabError(f"Trained weights {name!r} are for {entry.model!r}, not {model_name!r}: use "
                          f"create_model({entry.model!r}, ...) or one of {list_pretrained(model_name) or 'none'}.")
    state, meta = read_pretrained(name)
    trained = meta["checkpoint"]
    if trained["model_num_classes"] != num_classes:
        raise SeglabError(f"Trained weights {name!r} predict {trained['num_classes']} classes "
                          f"({', '.join(trained['class_names'])}), not {num_classes}: use num_classes="
                          f"{trained['model_num_classes']}, or fine-tune them (--train.init_from) on your classes.")
    return state, meta
