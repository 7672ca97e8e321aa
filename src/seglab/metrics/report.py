"""Plain-text tables of evaluation results, laid out like the SegNet paper's tables.

Example:
    >>> print(format_metrics_table(metrics.compute(), ["Sky", "Building", ...]))
    class        acc %   IoU %
    Sky           93.1    88.0
    ...
    G (global accuracy)      90.4
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["format_metrics_table", "format_percent"]

_SUMMARY = (
    ("global_acc", "G (global accuracy)"),
    ("class_acc", "C (class average accuracy)"),
    ("miou", "mIoU"),
    ("fwiou", "fwIoU"),
    ("bf", "BF (boundary F1)"),
    # Binary EM data (ISBI 2012) only; see seglab.metrics.em_metrics.
    ("pixel_error", "pixel error"),
    ("foreground_iou", "foreground IoU"),
    ("rand_error", "Rand error (adapted)"),
    # Instance segmentation (seglab.metrics.InstanceMetrics).
    ("mask_ap", "mask AP"),
    ("mask_ap50", "mask AP50"),
    ("mask_ap75", "mask AP75"),
    ("box_ap", "box AP"),
    ("mask_iou", "mask IoU (matched)"),
)


def format_percent(value: float | None) -> str:
    """A fraction as a percentage with one decimal; ``-`` for None or NaN (undefined or not computed)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100.0 * value:.1f}"


def format_metrics_table(results: dict[str, Any], class_names: Sequence[str] | None = None) -> str:
    """Per-class accuracy and IoU, then G, C, mIoU, fwIoU and BF, all in percent.

    Args:
        results: The dict returned by :meth:`SegmentationMetrics.compute`.
        class_names: One name per class; ``class 0``, ``class 1``, ... when None or too short.

    Returns:
        A multi-line string (no trailing newline). Undefined values print as ``-``:
        a class without ground-truth pixels has no accuracy, one absent from both
        maps has no IoU, and BF is ``-`` when it was not computed.
    """
    acc = list(results.get("class_acc_per_class", []))
    iou = list(results.get("iou", []))
    n = max(len(acc), len(iou))
    names = list(class_names or [])
    names += [f"class {i}" for i in range(len(names), n)]
    width = max([len("class")] + [len(s) for s in names[:n]])

    lines = [f"{'class':<{width}}  {'acc %':>6}  {'IoU %':>6}"]
    for i in range(n):
        a = format_percent(acc[i]) if i < len(acc) else "-"
        u = format_percent(iou[i]) if i < len(iou) else "-"
        lines.append(f"{names[i]:<{width}}  {a:>6}  {u:>6}")

    label_width = max(len(label) for _, label in _SUMMARY)
    lines.append("-" * max(width + 16, label_width + 8))
    for key, label in _SUMMARY:
        if key in results:
            lines.append(f"{label:<{label_width}}  {format_percent(results[key]):>6}")
    if "num_images" in results or "num_pixels" in results:
        lines.append(f"({results.get('num_images', '?')} images, {results.get('num_pixels', '?')} labelled pixels)")
    return "\n".join(lines)
