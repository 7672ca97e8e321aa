"""Segmentation metrics with the SegNet evaluation protocol.

* :class:`SegmentationMetrics` — streaming G, C, mIoU, fwIoU (one data-set confusion
  matrix) and boundary F1 (mean over images), by ``bf_protocol`` ``"fast"`` (default) or
  ``"paper"`` (the SegNet script's void rule and one-to-one matching; :data:`BF_PROTOCOLS`).
* :func:`boundary_f1` — BF of one image; :func:`format_metrics_table` — paper-style table.
* :func:`logits_to_labels` — argmax for multi-class models, sigmoid threshold for
  1-channel binary models.
* :func:`em_metrics` — pixel error, foreground IoU and adapted Rand error for binary EM data.
* :class:`InstanceMetrics` — COCO mask AP / AP50 / AP75, box AP and matched mask IoU
  (:mod:`seglab.metrics.instance`, pycocotools; imported on first use).

Example:
    >>> metrics = SegmentationMetrics(num_classes=11, ignore_index=11)
    >>> for images, masks in loader:
    ...     metrics.update(logits_to_labels(model(images)), masks)
    >>> print(format_metrics_table(metrics.compute(), class_names))
"""

from seglab.metrics.boundary import (
    BF_PROTOCOLS,
    BoundaryF1Accumulator,
    boundary_f1,
    boundary_f1_per_class,
    boundary_map,
    check_bf_protocol,
)
from seglab.metrics.confusion import SegmentationMetrics, confusion_matrix, logits_to_labels, metrics_from_confusion
from seglab.metrics.em import em_metrics
from seglab.metrics.report import format_metrics_table, format_percent

__all__ = [
    "SegmentationMetrics",
    "confusion_matrix",
    "metrics_from_confusion",
    "logits_to_labels",
    "boundary_f1",
    "boundary_f1_per_class",
    "boundary_map",
    "BoundaryF1Accumulator",
    "BF_PROTOCOLS",
    "check_bf_protocol",
    "format_metrics_table",
    "format_percent",
    "em_metrics",
    "InstanceMetrics",
]


def __getattr__(name: str):
    # pycocotools is needed by instance metrics only: import it when they are first asked for.
    if name == "InstanceMetrics":
        from seglab.metrics.instance import InstanceMetrics

        return InstanceMetrics
    raise AttributeError(f"module 'seglab.metrics' has no attribute {name!r}")
