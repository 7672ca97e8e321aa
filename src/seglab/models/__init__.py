"""Segmentation models.

Each model module is imported here explicitly, so every ``@register_model`` runs exactly once, in
a fixed order, whatever the user imported first. Add new model modules to the import list below.

Example:
    >>> from seglab.registry import create_model
    >>> model = create_model("segnet", num_classes=11, upsample="indices")
"""

from __future__ import annotations

from . import segnet
from . import bayesian_segnet  # noqa: E402,I001  (after segnet: it reuses its builders)
from . import fcn, fcn_basic, deconvnet, deeplab_v1, segnet_lite  # noqa: E402,I001  (after segnet: they reuse it)
from . import deeplabv3, unet  # noqa: E402,I001  (DeepLabv3/v3+ with ResNet and Xception-65; U-Net)
from .complexity import count_gflops, count_parameters

__all__ = ["count_gflops", "count_parameters", "segnet"]
