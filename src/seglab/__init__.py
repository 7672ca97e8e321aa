"""seglab: image segmentation centred on SegNet — train, evaluate, predict, with the papers' protocols.

Example:
    >>> import seglab
    >>> model = seglab.create_model("segnet", num_classes=11)
    >>> cfg = seglab.load_config("configs/segnet_basic_camvid.yaml", ["--data.root", "../shared/data/camvid"])
    >>> result = seglab.train(cfg)
    >>> labels = seglab.Segmenter.from_checkpoint(result.best_checkpoint).predict("street.png")
    >>> fastest = seglab.load_predictor("segnet_basic.camvid")  # the default path: int8 OpenVINO where verified

The names below are imported on first use, so ``import seglab`` (and ``seglab --help``) stays
cheap: torch, torchvision, scipy and scikit-image load only when something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from seglab.core.version import __version__

#: Public name -> module that defines it.
_EXPORTS = {
    "Config": "seglab.core.config",
    "load_config": "seglab.core.config",
    "SeglabError": "seglab.core.errors",
    "train": "seglab.engine.trainer",
    "TrainResult": "seglab.engine.trainer",
    "Segmenter": "seglab.inference.predictor",
    "load_predictor": "seglab.inference.auto",
    "create_model": "seglab.models.registry",
    "list_models": "seglab.models.registry",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # names for type checkers and IDEs; loaded lazily at run time
    from seglab.core.config import Config, load_config  # noqa: F401
    from seglab.core.errors import SeglabError  # noqa: F401
    from seglab.engine.trainer import TrainResult, train  # noqa: F401
    from seglab.inference.auto import load_predictor  # noqa: F401
    from seglab.inference.predictor import Segmenter  # noqa: F401
    from seglab.models.registry import create_model, list_models  # noqa: F401


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'seglab' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
