"""Loading ImageNet VGG16-BN weights into a SegNet encoder.

The encoder's modules are named ``stages.<s>.<b>.<0 conv | 1 bn>`` while torchvision's
``vgg16_bn().features`` is one flat ``nn.Sequential``; :data:`VGG16_BN_FEATURE_INDICES` is the
explicit correspondence. A source is either ``"imagenet"`` (torchvision's weights API, which
downloads once into the torch hub cache) or the path of a file written by
``torch.save(torchvision.models.vgg16_bn().state_dict(), path)``. Whole-model dicts
(``features.*`` and ``classifier.*``) and ``features``-only dicts are both accepted; the
classifier part is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from seglab.core.errors import SeglabError

__all__ = ["VGG16_BN_FEATURE_INDICES", "load_vgg16_bn_encoder", "read_state_dict_file", "read_vgg16_bn_features",
           "vgg16_bn_key_map"]

#: ``(conv, batchnorm)`` positions in ``torchvision.models.vgg16_bn().features`` of the 13 conv
#: layers, in order; ReLUs and the 5 max-pools (at 6, 13, 23, 33, 43) have no weights.
VGG16_BN_FEATURE_INDICES: tuple[tuple[int, int], ...] = (
    (0, 1), (3, 4),                     # block 1: 64, 64
    (7, 8), (10, 11),                   # block 2: 128, 128
    (14, 15), (17, 18), (20, 21),       # block 3: 256 x 3
    (24, 25), (27, 28), (30, 31),       # block 4: 512 x 3
    (34, 35), (37, 38), (40, 41),       # block 5: 512 x 3
)  # fmt: skip

_HOW_TO_SAVE = "torch.save(torchvision.models.vgg16_bn().state_dict(), path)"
_MAX_LISTED = 8


def vgg16_bn_key_map(encoder: nn.Module) -> dict[str, str]:
    """Map every state-dict key of a SegNet VGG16 encoder to its ``vgg16_bn().features`` key.

    Args:
        encoder: A :class:`seglab.models.segnet.SegNetEncoder` with the VGG16 layout.

    Returns:
        ``{encoder key: features key}``, e.g. ``"stages.1.0.1.running_var" -> "7.running_var"``.

    Raises:
        SeglabError: The encoder does not have 13 conv blocks in VGG16's 5 stages.
    """
    blocks = [(f"stages.{s}.{b}", block) for s, stage in enumerate(encoder.stages) for b, block in enumerate(stage)]
    if len(blocks) != len(VGG16_BN_FEATURE_INDICES):
        raise SeglabError(f"VGG16-BN weights need an encoder with 13 conv blocks; this one has {len(blocks)}.")
    if not all(isinstance(block[1], nn.BatchNorm2d) for _, block in blocks):
        raise SeglabError("VGG16-BN weights need BatchNorm2d after every encoder conv (norm_layer=nn.BatchNorm2d).")
    key_map: dict[str, str] = {}
    for (prefix, block), (conv_idx, norm_idx) in zip(blocks, VGG16_BN_FEATURE_INDICES):
        for child, src_idx in (("0", conv_idx), ("1", norm_idx)):
            for name in block[int(child)].state_dict():
                key_map[f"{prefix}.{child}.{name}"] = f"{src_idx}.{name}"
    return key_map


def _download_imagenet() -> dict[str, Tensor]:
    """torchvision's ImageNet VGG16-BN state dict (from the hub cache or the internet)."""
    from torchvision.models import VGG16_BN_Weights  # lazy: importing torchvision is slow

    try:
        return VGG16_BN_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
    except Exception as e:  # noqa: BLE001  (URLError, HTTPError, SSL, hash check: all mean "no weights")
        raise SeglabError(
            f"ImageNet VGG16-BN weights could not be downloaded ({type(e).__name__}: {e}). If this machine is "
            f"offline, save them elsewhere with {_HOW_TO_SAVE} using weights='IMAGENET1K_V1' and pass that "
            "file's path as pretrained_encoder."
        ) from e


def read_state_dict_file(path: Path, option: str, how_to_save: str) -> Mapping[str, Tensor]:
    """Load a state dict from ``path``; any failure becomes a :class:`SeglabError` naming the file.

    ``option`` is the user-facing setting that named the file and ``how_to_save`` the
    command that writes a valid one; both go into the messages.
    """
    if not path.is_file():
        raise SeglabError(f"{option} {str(path)!r} is neither 'imagenet' nor an existing file. "
                          f"Pass 'imagenet' or the path of a file written by {how_to_save}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (pickle, zip and torch errors alike mean "unreadable")
        raise SeglabError(f"Could not read {option} file {str(path)!r}: {e}") from e
    if not isinstance(state, Mapping):
        raise SeglabError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict. Save it with {how_to_save}.")
    return state


def _strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Keys starting with ``prefix``, without it; all keys unchanged when none starts with it."""
    if not any(k.startswith(prefix) for k in state):
        return dict(state)
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def read_vgg16_bn_features(source: str | Path) -> tuple[dict[str, Tensor], str]:
    """Read a ``vgg16_bn`` state dict and reduce it to its ``features`` part.

    Args:
        source: ``"imagenet"`` or a file path.

    Returns:
        The features state dict with keys like ``"0.weight"``, and a description of the source
        for error messages.
    """
    if str(source) == "imagenet":
        state, where = _download_imagenet(), "torchvision ImageNet VGG16-BN weights"
    else:
        state, where = read_state_dict_file(Path(source), "pretrained_encoder", _HOW_TO_SAVE), f"file {str(source)!r}"
    # DataParallel checkpoints prefix "module."; whole-model dicts prefix "features.".
    return _strip_prefix(_strip_prefix(state, "module."), "features."), where


def _check_compatible(features: Mapping[str, Tensor], key_map: Mapping[str, str], target: Mapping[str, Tensor],
                      where: str) -> None:
    """Raise a :class:`SeglabError` listing missing and mismatched keys, if any."""
    # BN's num_batches_tracked is bookkeeping that older checkpoints lack; never require it.
    missing = [src for dst, src in key_map.items() if src not in features and not dst.endswith("num_batches_tracked")]
    mismatched = {
        src: (tuple(features[src].shape), tuple(target[dst].shape))
        for dst, src in key_map.items()
        if src in features and features[src].shape != target[dst].shape
    }
    if not missing and not mismatched:
        return
    problems = []
    if missing:
        more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        problems.append("missing keys: " + ", ".join(f"features.{k}" for k in missing[:_MAX_LISTED]) + more)
    if mismatched:
        shown = list(mismatched.items())[:_MAX_LISTED]
        problems.append("shape mismatches: " + "; ".join(f"features.{k} {a} vs encoder {b}" for k, (a, b) in shown))
    hint = " VGG16-BN weights need in_channels=3." if "0.weight" in mismatched else ""
    raise SeglabError(
        f"The {where} is not a torchvision vgg16_bn state dict ({'; '.join(problems)}).{hint} "
        f"Save one with {_HOW_TO_SAVE}."
    )


def load_vgg16_bn_encoder(encoder: nn.Module, source: str | Path) -> None:
    """Copy VGG16-BN conv and BatchNorm tensors into a SegNet encoder, in place.

    Args:
        encoder: Encoder with the VGG16 layout (:data:`seglab.models.segnet.VGG16_STAGES`).
        source: ``"imagenet"`` or the path of a ``vgg16_bn`` (or ``vgg16_bn().features``) state dict.

    Raises:
        SeglabError: Weights unavailable (offline), unreadable file, or a state dict of another model.
    """
    key_map = vgg16_bn_key_map(encoder)
    features, where = read_vgg16_bn_features(source)
    target = encoder.state_dict()
    _check_compatible(features, key_map, target, where)
    loaded = {dst: features.get(src, target[dst]) for dst, src in key_map.items()}
    encoder.load_state_dict(loaded, strict=True)
