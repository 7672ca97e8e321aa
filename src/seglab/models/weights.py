"""Pretrained weights: one loader for every source, and the checks that make its errors clear.

Two options, named as in torchvision:

* ``weights_backbone`` (the builders; ``model.weights_backbone`` in a recipe): weights for a
  model's ImageNet backbone, e.g. ``"imagenet"`` for SegNet's VGG16-BN encoder or DeepLabv3's ResNet.
* ``weights`` (:func:`seglab.models.create_model`; ``model.weights`` in a recipe): a whole-model
  state dict, e.g. ``torch.save(model.state_dict(), path)`` of a model built with the same options.

Both take the same sources, read by :func:`load_state_dict`:

* a registered name: ``"imagenet"`` is torchvision's ``IMAGENET1K_V1`` weights of the backbone in
  question (``VGG16_BN_Weights``, ``ResNet50_Weights``, ...); any other member of that enum
  (``"IMAGENET1K_V2"``, ``"DEFAULT"``) works too;
* an ``http(s)://`` or ``file://`` URL, downloaded once into :func:`cache_dir`;
* a local file: ``torch.load(..., weights_only=True)``, or ``.safetensors`` when the
  ``safetensors`` package is installed.

Downloads show a progress bar (when ``tqdm`` is installed), go to a temporary file in the cache
folder and are renamed onto their name only once complete and checked: against ``sha256`` when
given, else against torch hub's convention of a hash prefix in the file name
(``resnet50-0676ba61.pth``). Nothing is downloaded unless an option names a URL or a registered
name; building a model with default arguments never touches the network.

Example:
    >>> state = load_state_dict("imagenet", what="vgg16_bn")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from seglab.core.atomic import atomic_write
from seglab.core.errors import SeglabError

__all__ = ["ALIASES", "TORCHVISION_WEIGHTS", "cache_dir", "cached_download", "file_sha256", "check_state_dict", "load_model_weights",
           "load_state_dict", "strip_prefix", "upgrade_state_dict"]

#: Backbones with registered names: ``what`` -> the torchvision weights enum whose members name them.
TORCHVISION_WEIGHTS: dict[str, str] = {
    "vgg16": "VGG16_Weights",
    "vgg16_bn": "VGG16_BN_Weights",
    "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights",
    "resnet18": "ResNet18_Weights",
    "mask_rcnn_resnet50_fpn": "MaskRCNN_ResNet50_FPN_Weights",
    "mask_rcnn_resnet50_fpn_v2": "MaskRCNN_ResNet50_FPN_V2_Weights",
}
#: seglab's short names for torchvision enum members.
ALIASES: dict[str, str] = {"imagenet": "IMAGENET1K_V1"}
_URL_SCHEMES = ("http://", "https://", "file://")
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.")
_MAX_LISTED = 6
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """``$SEGLAB_CACHE_DIR/weights``, else torch hub's ``checkpoints`` folder (shared with torchvision)."""
    base = os.environ.get("SEGLAB_CACHE_DIR")
    if base:
        return Path(base) / "weights"
    return Path(torch.hub.get_dir()) / "checkpoints"


def _how_to_save(what: str) -> str:
    if what in TORCHVISION_WEIGHTS:
        return f"torch.save(torchvision.models.{what}(weights='IMAGENET1K_V1').state_dict(), path)"
    return f"torch.save(model.state_dict(), path) for a {what} built with the same options"


def _option_help(option: str) -> str:
    return f"{option} (model.{option} in a recipe)"


def _registered_url(source: str, what: str) -> tuple[str, str] | None:
    """``(url, description)`` of the torchvision weights ``source`` names for ``what``, if it names any."""
    enum_name = TORCHVISION_WEIGHTS.get(what)
    member = ALIASES.get(source, source)
    if enum_name is None or not member.isidentifier():
        return None
    import torchvision.models  # lazy: importing torchvision is slow
    import torchvision.models.detection

    # Backbone enums live in torchvision.models, detection ones (MaskRCNN_...) in its detection package.
    enum = getattr(torchvision.models, enum_name, None) or getattr(torchvision.models.detection, enum_name)
    try:
        weights = enum[member]
    except KeyError:
        return None
    return weights.url, f"torchvision {enum_name}.{weights.name}"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _expected_hash(name: str, sha256: str | None) -> tuple[str, str] | None:
    """``(expected hex prefix, where it comes from)``: the given sha256, else torch hub's name convention."""
    if sha256:
        return sha256.lower(), "the given sha256"
    match = _HASH_IN_NAME.search(name)
    return (match.group(1), f"the hash prefix in the file name {name!r}") if match else None


def _progress_bar(total: int | None, name: str, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm  # lazy and optional: a download without a bar is still a download
    except ImportError:
        print(f"Downloading {name} ...", file=sys.stderr)
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, file=sys.stderr)


def _download(url: str, target: Path, *, sha256: str | None, progress: bool, option: str, described: str) -> None:
    """Fetch ``url`` into ``target``: a temporary file in the same folder, checked, then renamed onto it."""

    def fetch(tmp: str) -> None:
        digest = hashlib.sha256()
        with open(tmp, "wb") as out:
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "seglab"})) as response:
                    length = response.headers.get("Content-Length")
                    bar = _progress_bar(int(length) if length else None, target.name, progress)
                    try:
                        while chunk := response.read(_CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                            if bar is not None:
                                bar.update(len(chunk))
                    finally:
                        if bar is not None:
                            bar.close()
            except Exception as e:  # URLError, HTTPError, SSL, timeouts: all mean "no file"
                raise SeglabError(
                    f"{option} {described} could not be downloaded from {url} ({type(e).__name__}: {e}). If this "
                    f"machine is offline, download that file elsewhere and pass that file's path (or a file:// URL) "
                    f"as {_option_help(option)}, or copy it into {str(target.parent)!r} as {target.name!r}."
                ) from e
        expected = _expected_hash(target.name, sha256)
        if expected is not None and not digest.hexdigest().startswith(expected[0]):
            raise SeglabError(
                f"The download of {url} does not match {expected[1]} (sha256 {digest.hexdigest()[:16]}..., expected "
                f"{expected[0][:16]}...); it was deleted. The file may have changed on the server or been "
                f"corrupted on the way: check the URL and sha256 given as {_option_help(option)}, or try again."
            )

    atomic_write(target, fetch)  # an interrupted or rejected download leaves no file behind


def cached_download(url: str, *, sha256: str | None, progress: bool, option: str, described: str) -> Path:
    """The cached copy of ``url``, downloaded first if absent; a cached file failing ``sha256`` is deleted."""
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if not name:
        raise SeglabError(f"{option} URL {url!r} names no file; give the URL of a .pth or .safetensors file.")
    target = cache_dir() / name
    if target.is_file() and sha256:
        actual = file_sha256(target)
        if not actual.startswith(sha256.lower()):
            target.unlink()
            raise SeglabError(
                f"The cached copy {str(target)!r} of {url} does not match the given sha256 (got {actual[:16]}..., "
                f"expected {sha256[:16]}...); it was deleted. Run again to download it afresh, or check the "
                f"sha256 given for {_option_help(option)}."
            )
    if not target.is_file():
        _download(url, target, sha256=sha256, progress=progress, option=option, described=described)
    return target


def _read(path: Path, *, option: str, cached: bool) -> dict[str, Tensor]:
    """A state dict from ``path`` (``torch.load`` with ``weights_only``, or safetensors)."""
    again = ("delete it and run again to download it afresh" if cached
             else "write it again, e.g. with torch.save(model.state_dict(), path)")
    safetensors = path.suffix == ".safetensors"
    if safetensors and importlib.util.find_spec("safetensors") is None:
        raise SeglabError(f"{option} file {str(path)!r} is a safetensors file; install the package to read it "
                          "(pip install safetensors) or save the weights with torch.save.")
    try:
        if safetensors:
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, pickle, safetensors header and truncation errors alike
        raise SeglabError(f"Could not read {option} file {str(path)!r} ({type(e).__name__}: {e}). It may be truncated "
                          f"(an interrupted copy or download) or not a PyTorch/safetensors file: {again}.") from e
    if isinstance(state, Mapping) and not all(isinstance(v, Tensor) for v in state.values()):
        # A checkpoint that holds the state dict under a key (seglab's "model", Lightning's "state_dict").
        nested = [state[k] for k in ("state_dict", "model") if isinstance(state.get(k), Mapping)]
        state = nested[0] if nested else state
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        kind = type(state).__name__ if not isinstance(state, Mapping) else "mapping with non-tensor values"
        raise SeglabError(f"{option} file {str(path)!r} holds a {kind}, not a state dict of tensors. "
                          "Save one with torch.save(model.state_dict(), path).")
    return dict(state)


def load_state_dict(source: str | Path, *, what: str, sha256: str | None = None, progress: bool = True,
                    option: str = "weights") -> dict[str, Tensor]:
    """Read a state dict from a registered name, an ``http(s)://``/``file://`` URL or a local file.

    Args:
        source: ``"imagenet"`` (or another torchvision enum member name for ``what``), a URL
            (downloaded once into :func:`cache_dir`) or a path.
        what: The network the weights are for: a key of :data:`TORCHVISION_WEIGHTS` (``"vgg16_bn"``,
            ``"resnet50"``, ...), which is what registered names resolve against, or a seglab model
            name (no registered names). Error messages name it.
        sha256: Expected SHA-256 (or a prefix of it) of the file; ``None``: torch hub's hash prefix
            in a downloaded file's name, if it has one.
        progress: Show a progress bar while downloading.
        option: The user-facing option that named ``source``, for error messages.

    Returns:
        The state dict, on the CPU.

    Raises:
        SeglabError: Unknown name or missing file, failed download, sha256 mismatch (a bad cached
            copy is deleted), unreadable or truncated file, or a file that holds no state dict.
    """
    text = str(source)
    registered = _registered_url(text, what) if "://" not in text and not Path(text).exists() else None
    if registered is not None or text.startswith(_URL_SCHEMES):
        url, described = registered if registered is not None else (text, repr(text))
        path = cached_download(url, sha256=sha256, progress=progress, option=option, described=described)
        return _read(path, option=option, cached=True)
    path = Path(text).expanduser()
    if "://" in text or not path.is_file():
        if what in TORCHVISION_WEIGHTS:
            enum = TORCHVISION_WEIGHTS[what]
            raise SeglabError(
                f"{option} {text!r} is neither 'imagenet' nor an existing file or http(s)/file URL. Pass 'imagenet' "
                f"(torchvision {enum}.IMAGENET1K_V1; other {enum} member names such as 'DEFAULT' work too), an "
                f"http(s):// or file:// URL, or the path of a file written by {_how_to_save(what)}."
            )
        raise SeglabError(
            f"{option} {text!r} is neither an existing file nor an http(s)/file URL ({what} has no registered "
            f"names such as 'imagenet'; ImageNet backbone weights are set with weights_backbone). Pass a URL or "
            f"the path of a file written by {_how_to_save(what)}."
        )
    if sha256 and not file_sha256(path).startswith(sha256.lower()):
        raise SeglabError(f"{option} file {str(path)!r} does not match the given sha256 {sha256[:16]}...; "
                          "check that it is the intended file.")
    return _read(path, option=option, cached=False)


def strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The keys starting with ``prefix``, without it, when any key does; otherwise ``state`` unchanged.

    For wrappers (``module.`` of DataParallel, ``_orig_mod.`` of ``torch.compile``) and for parts of
    larger models (``backbone.`` of torchvision's segmentation models, ``features.``).
    """
    if not any(k.startswith(prefix) for k in state):
        return dict(state)
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _listed(keys: Sequence[str]) -> str:
    more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def check_state_dict(
    state: Mapping[str, Tensor],
    wanted: Mapping[str, Sequence[int]],
    *,
    source: str | Path,
    what: str,
    option: str,
    part: str = "model",
    ignore: tuple[str, ...] = (),
    hints: Mapping[str, str] | None = None,
) -> None:
    """Raise a :class:`SeglabError` naming the file and listing a few missing, mismatched and unexpected keys.

    Args:
        state: The state dict read.
        wanted: ``{key: shape}`` it must provide (BN ``num_batches_tracked`` may be absent).
        source: What the user passed, for the message.
        what: Network the weights should be for (see :func:`load_state_dict`).
        option: The option that named ``source``.
        part: What the shapes are compared with in the message (``encoder``, ``model``).
        ignore: Prefixes of keys ``state`` may have besides ``wanted`` (``classifier.``, ``fc.``).
        hints: Extra sentences, each added when its key has a shape mismatch.
    """
    missing = [k for k in wanted if k not in state and not k.endswith("num_batches_tracked")]
    mismatched = [k for k, shape in wanted.items() if k in state and tuple(state[k].shape) != tuple(shape)]
    unexpected = [k for k in state if k not in wanted and not k.startswith(ignore)]
    if not missing and not mismatched and not unexpected:
        return
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if mismatched:
        shown = [f"{k} {tuple(state[k].shape)} vs {part} {tuple(wanted[k])}" for k in mismatched]
        problems.append(f"shape mismatches: {'; '.join(shown[:_MAX_LISTED])}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    extra = "".join(f" {text}" for key, text in (hints or {}).items() if key in mismatched)
    expected = f"torchvision {what}" if what in TORCHVISION_WEIGHTS else f"seglab {what}"
    raise SeglabError(f"{option} {str(source)!r} is not a {expected} state dict ({'; '.join(problems)}).{extra} "
                      f"Save one with {_how_to_save(what)}.")


def upgrade_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A copy of ``state`` with keys of older seglab layouts renamed to ``model``'s current ones.

    Every submodule with an ``upgrade_state_dict(state, prefix)`` method (the VGG encoders, see
    :class:`seglab.models.backbones.vgg.LegacyStageKeys`) renames its own keys. ``model.load_state_dict``
    does the same by itself; this is for checking a state dict before loading it.
    """
    state = dict(state)
    for name, module in model.named_modules():
        upgrade = getattr(module, "upgrade_state_dict", None)
        if callable(upgrade):
            upgrade(state, f"{name}." if name else "")
    return state


def load_model_weights(model: nn.Module, source: str | Path, *, what: str, sha256: str | None = None,
                       option: str = "weights") -> nn.Module:
    """Load a whole-model state dict (any :func:`load_state_dict` source) into ``model``, in place.

    ``module.`` / ``_orig_mod.`` prefixes (DataParallel, ``torch.compile``) are dropped and old
    seglab layouts upgraded; then every key and shape must match. Returns ``model``.
    """
    state = load_state_dict(source, what=what, sha256=sha256, option=option)
    for prefix in ("module.", "_orig_mod."):
        state = strip_prefix(state, prefix)
    state = upgrade_state_dict(model, state)
    target = model.state_dict()
    check_state_dict(state, {k: tuple(v.shape) for k, v in target.items()}, source=source, what=what,
                     option=option, part="model")
    # BN counters that an older file lacks keep the model's value.
    model.load_state_dict({**{k: v for k, v in target.items() if k.endswith("num_batches_tracked")}, **state})
    return model
