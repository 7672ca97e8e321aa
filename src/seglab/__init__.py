"""seglab: image segmentation centred on SegNet — train, evaluate, predict, with the papers' protocols.

Example:
    >>> import seglab
    >>> model = seglab.create_model("segnet", num_classes=11)
    >>> cfg = seglab.load_config("configs/segnet_basic_camvid.yaml", ["--data.root", "../shared/data/camvid"])
    >>> result = seglab.train(cfg)
    >>> labels = seglab.Segmenter.from_checkpoint(result.best_checkpoint).predict("street.png")
"""

__version__ = "0.1.0"

from .config import Config, load_config  # noqa: E402
from .engine.trainer import TrainResult, train  # noqa: E402
from .errors import SeglabError  # noqa: E402
from .inference import Segmenter  # noqa: E402
from .registry import create_model, list_models  # noqa: E402

__all__ = ["__version__", "Config", "load_config", "train", "TrainResult", "SeglabError", "Segmenter",
           "create_model", "list_models"]
