"""2-bit pooling codes: identical to MaxPool2d + max_unpool2d, and 8x / 32x smaller indices."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglab.core.errors import SeglabError
from seglab.models.layers.blocks import MaxUnpool2d, max_pool_2x2, max_unpool_2x2, set_index_format
from seglab.models.layers.compact_pool import (
    CodeMaxPool2d, code_bytes, pack_codes, pool_with_codes, unpack_codes, unpool_from_codes
)
from seglab.models.registry import create_model

REFERENCE_POOL = nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True)


def _make(kind: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Inputs that stress ties (integers, constants), signs and NaN propagation."""
    g = torch.Generator().manual_seed(hash((kind, shape)) % 2**31)
    if kind == "randn":
        return torch.randn(shape, generator=g)
    if kind == "integers":  # 5 values: most windows hold ties
        return torch.randint(-2, 3, shape, generator=g).float()
    if kind == "constant":
        return torch.full(shape, 0.75)
    if kind == "negative":
        return -1.0 - torch.rand(shape, generator=g)
    if kind == "nan":
        x = torch.randint(-1, 2, shape, generator=g).float()
        return x.masked_fill(torch.rand(shape, generator=g) < 0.3, float("nan"))
    raise ValueError(kind)


def _codes_from_indices(indices: torch.Tensor, width: int) -> torch.Tensor:
    row, col = indices // width, indices % width
    return (row % 2 * 2 + col % 2).to(torch.uint8)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise-equal values, NaNs at the same places."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


SHAPES = [(2, 3, 8, 10), (2, 3, 7, 9), (1, 4, 33, 47), (1, 2, 1, 1), (1, 2, 1, 6), (3, 5, 4)]
KINDS = ["randn", "integers", "constant", "negative", "nan"]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", KINDS)
def test_pool_and_unpool_match_torch_exactly(kind: str, shape: tuple[int, ...]) -> None:
    x = _make(kind, shape)
    ref_pooled, ref_indices = REFERENCE_POOL(x)
    pooled, codes = pool_with_codes(x)
    assert codes.dtype == torch.uint8 and codes.shape == ref_pooled.shape
    assert _same(pooled, ref_pooled)
    assert torch.equal(codes, _codes_from_indices(ref_indices, shape[-1]))  # same tie and NaN choice
    size = shape[-2:]
    reference = F.max_unpool2d(ref_pooled, ref_indices, 2, 2, output_size=size)
    assert _same(unpool_from_codes(pooled, codes, size), reference)
    assert _same(unpool_from_codes(pooled, pack_codes(codes), size, packed=True), reference)


@pytest.mark.parametrize("shape", [s for s in SHAPES if len(s) == 4], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", [k for k in KINDS if k != "nan"])
def test_the_exported_4d_formulation_matches_torch_exactly(kind: str, shape: tuple[int, ...], monkeypatch) -> None:
    """While exporting, pool and unpool switch to 4-D ops (OpenVINO's int8 graph needs it): same results,
    ties included (NaNs, which a trained network does not produce, are not matched bitwise there)."""
    from seglab.models.layers import compact_pool

    monkeypatch.setattr(compact_pool, "_shapes_symbolic", lambda: True)
    x = _make(kind, shape)
    ref_pooled, ref_indices = REFERENCE_POOL(x)
    pooled, codes = pool_with_codes(x)
    assert codes.dtype == torch.uint8 and _same(pooled, ref_pooled)
    assert torch.equal(codes, _codes_from_indices(ref_indices, shape[-1]))
    reference = F.max_unpool2d(ref_pooled, ref_indices, 2, 2, output_size=shape[-2:])
    assert _same(unpool_from_codes(pooled, codes, shape[-2:]), reference)


def test_by_hand_ties_pick_first_in_scan_order() -> None:
    x = torch.tensor([[[[1.0, 5.0, 2.0], [5.0, 0.0, 2.0], [7.0, 7.0, 3.0]]]])
    pooled, codes = pool_with_codes(x)
    assert pooled.tolist() == [[[[5.0, 2.0], [7.0, 3.0]]]]
    assert codes.tolist() == [[[[1, 0], [0, 0]]]]  # 5 at top-right beats the later tied 5
    assert unpool_from_codes(pooled, codes, (3, 3)).tolist() == [[[[0, 5, 2], [0, 0, 0], [7, 0, 3]]]]


@pytest.mark.parametrize("kind", ["randn", "integers"])
def test_gradients_match_max_pool_and_unpool(kind: str) -> None:
    x = _make(kind, (2, 3, 11, 13))
    upstream = torch.randn(2, 3, 11, 13)

    def run(pool_unpool):  # returns d(out . upstream)/dx through pool -> scale -> unpool
        leaf = x.clone().requires_grad_(True)
        out = pool_unpool(leaf)
        (out * upstream).sum().backward()
        return out.detach(), leaf.grad

    def reference(t: torch.Tensor) -> torch.Tensor:
        pooled, indices = REFERENCE_POOL(t)
        return F.max_unpool2d(pooled * 3, indices, 2, 2, output_size=t.shape[-2:])

    def compact(t: torch.Tensor) -> torch.Tensor:
        pooled, codes = pool_with_codes(t)
        return unpool_from_codes(pooled * 3, codes, t.shape[-2:])

    ref_out, ref_grad = run(reference)
    out, grad = run(compact)
    assert torch.equal(out, ref_out)
    assert torch.equal(grad, ref_grad)
    assert grad.ne(0).sum() == 2 * 3 * 6 * 7  # one pixel per window, ties included


def test_pack_roundtrip_and_width_one_is_unchanged() -> None:
    codes = torch.randint(0, 4, (2, 3, 5, 11), dtype=torch.uint8)
    packed = pack_codes(codes)
    assert packed.shape == (2, 3, 5, 3) and packed.dtype == torch.uint8
    assert torch.equal(unpack_codes(packed, 11), codes)
    single = torch.randint(0, 4, (1, 1, 4, 1), dtype=torch.uint8)
    assert torch.equal(pack_codes(single), single)


def test_index_memory_ratios() -> None:
    x = torch.randn(1, 8, 36, 48)
    _, indices = max_pool_2x2(True, "int64")(x)
    _, codes = max_pool_2x2(True, "uint8")(x)
    _, packed = max_pool_2x2(True, "packed")(x)
    int64_bytes = indices.numel() * indices.element_size()
    assert int64_bytes == code_bytes(indices.shape, "int64") == 8 * 18 * 24 * 8
    assert int64_bytes == 8 * codes.numel() * codes.element_size() == 8 * code_bytes(codes.shape, "uint8")
    assert int64_bytes == 32 * packed.numel() * packed.element_size() == 32 * code_bytes(indices.shape, "packed")


def test_segnet_index_memory_at_360x480() -> None:
    with torch.device("meta"):  # shapes only: no weights are initialised or convolved
        model = create_model("segnet", num_classes=11, index_format="int64")
    shapes = []
    model.encoder.pool.register_forward_hook(lambda m, i, out: shapes.append(out[0].shape))
    with torch.no_grad():
        model.encoder(torch.zeros(1, 3, 360, 480, device="meta"))
    assert [tuple(s[-3:]) for s in shapes] == [(64, 180, 240), (128, 90, 120), (256, 45, 60), (512, 23, 30),
                                               (512, 12, 15)]
    total = {fmt: sum(code_bytes(s, fmt) for s in shapes) for fmt in ("int64", "uint8", "packed")}
    assert total["int64"] == 8 * total["uint8"] == 42_270_720
    assert total["packed"] == 1_328_384  # ceil(w / 4) bytes per row: 31.8x smaller than int64


@pytest.mark.parametrize("name", ["segnet_basic", "segnet"])
def test_segnet_outputs_identical_for_every_index_format(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, index_format="int64").eval()
    # Odd sizes at several stages: 19 -> 10 -> 5 -> 3 -> 2 and 33 -> 17 -> 9 -> 5.
    x = torch.randn(1, 3, 19, 29) if name == "segnet" else torch.randn(2, 3, 33, 47)
    outputs = {}
    for fmt in ("int64", "uint8", "packed"):
        set_index_format(model, fmt)
        assert all(isinstance(up, MaxUnpool2d) and up.index_format == fmt for up in model.decoder.upsamples)
        assert isinstance(model.encoder.pool, nn.MaxPool2d if fmt == "int64" else CodeMaxPool2d)
        with torch.no_grad():
            outputs[fmt] = model(x)
    assert torch.equal(outputs["int64"], outputs["uint8"])
    assert torch.equal(outputs["int64"], outputs["packed"])


def test_builders_take_index_format_and_reject_unknown() -> None:
    model = create_model("segnet_basic", num_classes=3, index_format="packed")
    assert model.encoder.pool.packed and model.decoder.upsamples[0].index_format == "packed"
    with pytest.raises(SeglabError, match="Did you mean 'uint8'"):
        create_model("segnet_basic", num_classes=3, index_format="unit8")


def test_max_unpool_2x2_dispatches_on_dtype() -> None:
    x = _make("integers", (1, 2, 9, 6))
    pooled, indices = max_pool_2x2(True, "int64")(x)
    _, codes = max_pool_2x2(True, "uint8")(x)
    assert torch.equal(max_unpool_2x2(pooled, indices, (9, 6)), max_unpool_2x2(pooled, codes, (9, 6)))
