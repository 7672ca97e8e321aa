"""RoIAlign versus RoIPool on a feature map with a known ramp, against the exact bilinear crop.

The feature at cell ``(y, x)`` is ``F(x + 0.5, y + 0.5)`` of the plane ``F(u, v) = u + 2 v`` (cell
centres at half-integers). Bilinear interpolation of a plane is exact and a bin's mean is its
centre's value, so the exact 7 x 7 crop of a box ``(x1, y1, x2, y2)`` holds ``F`` at the bin
centres. The box is deliberately off the grid. docs/instance.md quotes the numbers printed here.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align, roi_pool

from seglab.models.instance.poolers import MultiScaleRoIPool

BOX = (3.3, 4.7, 12.9, 10.2)  # x1, y1, x2, y2 in feature cells
OUT = 7


def _ramp(h: int = 32, w: int = 32) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return ((xs + 0.5) + 2 * (ys + 0.5))[None, None]


def _exact_crop(box: tuple[float, ...] = BOX, out: int = OUT) -> torch.Tensor:
    x1, y1, x2, y2 = box
    u = x1 + (torch.arange(out, dtype=torch.float64) + 0.5) * (x2 - x1) / out
    v = y1 + (torch.arange(out, dtype=torch.float64) + 0.5) * (y2 - y1) / out
    return (u[None, :] + 2 * v[:, None])[None, None]


def pooler_errors() -> dict[str, float]:
    """Mean absolute error against the exact crop of each pooler (one 32 x 32 level, scale 1)."""
    feature = _ramp()
    boxes = [torch.tensor([BOX], dtype=torch.float64)]
    rois = torch.tensor([[0, *BOX]], dtype=torch.float64)
    exact = _exact_crop()
    x = OrderedDict([("0", feature)])
    results = {
        "roi_align aligned=True": roi_align(feature, rois, OUT, 1.0, sampling_ratio=2, aligned=True),
        "MultiScaleRoIAlign (Mask R-CNN's)": MultiScaleRoIAlign(["0"], OUT, 2)(x, boxes, [(32, 32)]),
        "roi_pool": roi_pool(feature, rois, OUT, 1.0),
        "MultiScaleRoIPool (roi_pooler=pool)": MultiScaleRoIPool(["0"], OUT, 2)(x, boxes, [(32, 32)]),
    }
    return {name: float((value - exact).abs().mean()) for name, value in results.items()}


def test_roi_align_is_the_exact_crop_and_roi_pool_is_not() -> None:
    errors = pooler_errors()
    assert errors["roi_align aligned=True"] < 1e-9
    # torchvision's Mask R-CNN pools with aligned=False: cell k sits at k, not k + 0.5, a constant
    # half-cell shift of F by 0.5 * (1 + 2) = 1.5.
    assert errors["MultiScaleRoIAlign (Mask R-CNN's)"] == pytest.approx(1.5, abs=1e-9)
    # RoIPool rounds the box to cells and takes each bin's max: several times further off.
    assert errors["roi_pool"] > 1.5 * errors["MultiScaleRoIAlign (Mask R-CNN's)"]
    assert errors["MultiScaleRoIPool (roi_pooler=pool)"] == pytest.approx(errors["roi_pool"])
    assert errors["roi_pool"] == pytest.approx(2.9286, abs=1e-4)  # the figure docs/instance.md quotes


def test_roi_pool_follows_the_same_fpn_level_mapping() -> None:
    torch.manual_seed(0)
    x = OrderedDict((str(k), torch.randn(1, 4, 64 >> k, 64 >> k)) for k in range(4))
    boxes = [torch.tensor([[2.0, 3.0, 30.0, 40.0], [10.0, 10.0, 250.0, 240.0], [0.0, 0.0, 12.0, 9.0]])]
    align, pool = MultiScaleRoIAlign(list(x), OUT, 2), MultiScaleRoIPool(list(x), OUT, 2)
    align(x, boxes, [(256, 256)])
    pooled = pool(x, boxes, [(256, 256)])
    levels = align.map_levels(boxes)
    assert torch.equal(levels, pool.map_levels(boxes)) and pool.scales == align.scales
    assert len(set(levels.tolist())) > 1  # the boxes do land on different levels
    for i, level in enumerate(levels.tolist()):
        rois = torch.cat([torch.zeros(1, 1), boxes[0][i:i + 1]], 1)
        expected = roi_pool(x[str(level)], rois, OUT, align.scales[level])
        assert torch.equal(pooled[i:i + 1], expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_roi_pool_runs_on_half_features_as_roi_align_does(dtype: torch.dtype) -> None:
    # torchvision's CPU roi_pool kernel has no bfloat16: bf16 autocast training stopped at the first RoI
    torch.manual_seed(0)
    x = OrderedDict((str(k), torch.randn(1, 4, 64 >> k, 64 >> k)) for k in range(4))
    boxes = [torch.tensor([[2.0, 3.0, 30.0, 40.0], [10.0, 10.0, 250.0, 240.0]])]
    pool = MultiScaleRoIPool(list(x), OUT, 2)
    expected = pool(x, boxes, [(256, 256)])
    half = pool(OrderedDict((k, v.to(dtype)) for k, v in x.items()), boxes, [(256, 256)])
    assert half.dtype == dtype
    torch.testing.assert_close(half.float(), expected, atol=0.05, rtol=0.02)


if __name__ == "__main__":
    for name, error in pooler_errors().items():
        print(f"{name:<40} MAE {error:.4f}")
