"""Segmentation models, built by name through one registry.

Layout: ``layers/`` (conv blocks, pooling with indices, upsampling, atrous and separable convs,
FCN heads, BN folding), ``backbones/`` (VGG16, Xception-65), ``semantic/`` (the per-pixel
models), ``registry.py`` (``create_model`` / ``list_models``), ``weights.py`` (the one loader of
pretrained weights: ``weights`` for a whole model, ``weights_backbone`` for its ImageNet backbone),
``complexity.py`` (parameters and GFLOPs). Building a model never downloads anything by default.

Example:
    >>> from seglab.models import create_model
    >>> model = create_model("segnet", num_classes=11, upsample="indices")
"""

from __future__ import annotations

from seglab.models.complexity import count_gflops, count_parameters
from seglab.models.registry import create_model, get_model_builder, list_models, register_model

__all__ = ["count_gflops", "count_parameters", "create_model", "get_model_builder", "list_models", "register_model"]
