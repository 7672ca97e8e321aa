"""The inference fast path: BN folding is exact, outputs match eager, the caller's model is untouched.

Tolerances, and why:

* float64 (every registered model): max |fast - eager| <= 1e-9 x max|logit|. In float64 the
  rewrite (BN folding, memory format) is exact up to rounding, so this checks the transformation
  itself.
* float32: argmax agreement >= 99.9 % and max |diff| <= 1e-4 x max|logit| -- except for models
  that unpool with max-pool *indices* (SegNet family), where a 1e-6 rounding difference can flip
  the argmax of a near-tied 2x2 window and move one activation to the neighbouring pixel, so a
  few logits legitimately differ by more; for those the *mean* |diff| must be <= 1e-4 x max|logit|.
* bf16 (SegNet, SegNet-Basic): argmax agreement >= 99 % on the pixels whose fp32 top-2 logit
  margin exceeds 1 standard deviation of the logits (about 13 % of the pixels here). Random
  weights make most pixels near-ties (typical margin ~0.35 std), and bf16's 8-bit mantissa turns
  many max-pool near-ties into exact ties that unpool to another pixel; over *all* pixels random
  SegNets agree only ~82 %. A trained model is confident on most pixels, so the margin restricts
  the check to the pixels such a model would be sure of. Measured (48x64, seed below): 99.8 %
  (SegNet-Basic) and 100 % (SegNet); at 0.5 std 97.3 % / 98.2 %.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglab.inference import fastpath
from seglab.core.errors import SeglabError
from seglab.inference.fastpath import (
    fold_batchnorm, fuse_conv_bn, optimize_for_inference, prefers_channels_last, resolve_inference_dtype, tune_malloc
)
from seglab.models.layers.compact_pool import CodeMaxPool2d
from seglab.ops.contract import runnable_size
from seglab.models.registry import create_model, list_models

NUM_CLASSES = 11


@pytest.fixture(autouse=True)
def _restore_threads():
    """optimize_for_inference sets the process's intra-op threads; put them back after each test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _bn_with_stats(channels: int, seed: int) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels, eps=1e-3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=g) * 2)
        bn.running_var.copy_(torch.rand(channels, generator=g) * 3 + 0.1)
        bn.weight.copy_(torch.randn(channels, generator=g))
        bn.bias.copy_(torch.randn(channels, generator=g))
    return bn.eval()


def _unpools_with_indices(model: nn.Module) -> bool:
    """Whether ``model`` records max-pool indices (which SegNet-style decoders unpool with)."""
    return any(isinstance(m, CodeMaxPool2d) or (isinstance(m, nn.MaxPool2d) and m.return_indices)
               for m in model.modules())


def _valid_size(model: nn.Module, size: tuple[int, int] = (64, 80)) -> tuple[int, int]:
    """``size``, or the nearest valid size above it for models with unpadded convs (``unet_valid``)."""
    return runnable_size(model, size)


def _images(batch: int, seed: int, size: tuple[int, int] = (64, 80)) -> torch.Tensor:
    """Smooth, image-like inputs (upsampled noise), normalised like ImageNet-standardised photos."""
    low = torch.randn(batch, 3, size[0] // 8, size[1] // 8, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(low, size=size, mode="bilinear", align_corners=False)


# --- BatchNorm folding ---------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", ["conv", "conv_groups", "transposed", "transposed_groups"])
def test_fuse_conv_bn_equals_conv_then_bn(kind: str, bias: bool) -> None:
    torch.manual_seed(0)
    groups = 2 if kind.endswith("groups") else 1
    if kind.startswith("transposed"):
        conv = nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, groups=groups, bias=bias)
    else:
        conv = nn.Conv2d(4, 6, 3, padding=1, groups=groups, bias=bias)
    reference = nn.Sequential(conv, _bn_with_stats(6, seed=1)).double().eval()
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64)
    fused = fuse_conv_bn(reference[0], reference[1])
    with torch.no_grad():
        expected, got = reference(x), fused(x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert fused.bias is not None and reference[0].bias is not fused.bias  # a new conv, original kept


def test_fold_batchnorm_replaces_bn_and_keeps_outputs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), _bn_with_stats(8, 2), nn.ReLU(),
                          nn.Sequential(nn.Conv2d(8, 5, 1), _bn_with_stats(5, 3))).eval()
    x = torch.randn(1, 3, 12, 10)
    with torch.no_grad():
        expected = model(x)
        assert fold_batchnorm(model) == 2
        got = model(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert isinstance(model[1], nn.Identity) and isinstance(model[3][1], nn.Identity)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_leaves_unsafe_pairs_alone() -> None:
    shared = nn.Conv2d(3, 3, 3, padding=1)
    no_stats = nn.BatchNorm2d(3, track_running_stats=False)

    class ScaledConv(nn.Conv2d):  # a subclass may transform its weight in forward
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 3, 1), no_stats),             # BN uses batch statistics
        nn.Sequential(shared, _bn_with_stats(3, 4)), shared,     # conv used twice
        nn.Sequential(ScaledConv(3, 3, 1), _bn_with_stats(3, 5)),
        nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(), _bn_with_stats(3, 6)),  # BN not directly after conv
    ).eval()
    before = copy.deepcopy(model)
    assert fold_batchnorm(model) == 0
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before(x))


def test_fuse_conv_bn_rejects_bn_without_running_stats() -> None:
    with pytest.raises(SeglabError, match="running statistics"):
        fuse_conv_bn(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3, track_running_stats=False))


# --- fast path vs eager --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_models(task="semantic"))
def test_fast_path_is_exact_in_float64(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES).double().eval()
    x = _images(1, seed=0, size=_valid_size(model)).double()
    with torch.no_grad():
        expected = model(x)
    got = optimize_for_inference(model, dtype=torch.float32, channels_last=True)(x)
    assert got.dtype == torch.float64
    assert (got - expected).abs().max() <= 1e-9 * expected.abs().max()


@pytest.mark.parametrize("name", list_models(task="semantic"))
def test_fast_path_matches_eager_in_float32(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES).eval()
    x = _images(2, seed=1, size=_valid_size(model))
    with torch.no_grad():
        expected = model(x)
    got = optimize_for_inference(model, dtype=torch.float32)(x)  # this machine's default memory format
    assert got.shape == expected.shape and got.dtype == torch.float32 and got.is_contiguous()
    diff, scale = (got - expected).abs(), expected.abs().max()
    agreement = (got.argmax(1) == expected.argmax(1)).float().mean().item()
    assert agreement >= 0.999, f"argmax agreement {agreement:.5f}"
    if _unpools_with_indices(model):
        assert diff.mean() <= 1e-4 * scale, f"mean |diff| {diff.mean():.3g} vs logit scale {scale:.3g}"
    else:
        assert diff.max() <= 1e-4 * scale, f"max |diff| {diff.max():.3g} vs logit scale {scale:.3g}"


@pytest.mark.parametrize("name", ["segnet_basic", "segnet"])
def test_bf16_path_agrees_on_confident_pixels(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES).eval()
    x = _images(1, seed=2, size=(48, 64))  # small: bf16 convolution is emulated (slow) on AVX2 CPUs
    with torch.no_grad():
        expected = model(x)
    fast = optimize_for_inference(model, dtype=torch.bfloat16)
    assert fast.amp_dtype == torch.bfloat16
    got = fast(x)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    top2 = expected.topk(2, dim=1).values
    confident = (top2[:, 0] - top2[:, 1]) > expected.std()
    assert confident.float().mean() > 0.1  # the check must cover a real share of the image
    agreement = (got.argmax(1) == expected.argmax(1))[confident].float().mean().item()
    assert agreement >= 0.99, f"bf16 argmax agreement on confident pixels {agreement:.4f}"


# --- the caller's model and the wrapper -----------------------------------------------------------


def test_callers_model_is_untouched() -> None:
    model = create_model("segnet_basic", num_classes=NUM_CLASSES).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modules = list(model.modules())
    fast = optimize_for_inference(model, channels_last=True)
    fast(_images(1, seed=3))
    assert model.training and list(model.modules()) == modules
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(p.requires_grad and p.is_contiguous() for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_wrapper_is_inference_only() -> None:
    fast = optimize_for_inference(create_model("segnet_basic", num_classes=NUM_CLASSES))
    out = fast(_images(1, seed=4))
    assert not out.requires_grad and out.is_inference()
    assert not fast.training
    with pytest.raises(SeglabError, match="inference-only"):
        fast.train()
    fast.eval()  # allowed, e.g. by Segmenter and mc_dropout


def test_threads_are_set() -> None:
    optimize_for_inference(nn.Conv2d(3, 3, 1), threads=1)
    assert torch.get_num_threads() == 1


# --- options -------------------------------------------------------------------------------------


def test_resolve_inference_dtype() -> None:
    cpu = torch.device("cpu")
    assert resolve_inference_dtype(torch.float32, cpu) is None
    assert resolve_inference_dtype(torch.bfloat16, cpu) == torch.bfloat16
    assert resolve_inference_dtype(None, cpu) == (torch.bfloat16 if fastpath.cpu_supports_bf16() else None)
    with pytest.raises(SeglabError, match="float16"):
        resolve_inference_dtype(torch.float16, cpu)


def test_channels_last_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert prefers_channels_last(torch.device("cuda"))
    for capability, expected in (("AVX2", True), ("AVX512", True), ("DEFAULT", False), ("SVE256", False)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert prefers_channels_last(torch.device("cpu")) is expected, capability


def test_compile_failure_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    # fp32 explicitly: the default precision is bf16 on CPUs with AVX512-BF16/AMX, and this test
    # is about the compile fallback, not about bf16 rounding.
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _bn_with_stats(4, 7)).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)

    def broken_at_call(module):
        def call(*args):
            raise RuntimeError("backend exploded")
        return call

    monkeypatch.setattr(torch, "compile", broken_at_call)
    fast = optimize_for_inference(model, dtype=torch.float32, compile=True)
    assert fast.compiled
    with pytest.warns(RuntimeWarning, match="backend exploded"):
        got = fast(x)
    assert not fast.compiled
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast(x)  # no second warning

    def broken_at_compile(module):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(torch, "compile", broken_at_compile)
    with pytest.warns(RuntimeWarning, match="no compiler"):
        fast = optimize_for_inference(model, dtype=torch.float32, compile=True)
    assert not fast.compiled
    torch.testing.assert_close(fast(x), expected, rtol=1e-5, atol=1e-5)


def test_compile_keeps_its_path_on_input_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda module: module)
    fast = optimize_for_inference(nn.Conv2d(3, 4, 1), compile=True)
    with pytest.raises(RuntimeError):
        fast(torch.randn(1, 5, 4, 4))  # wrong channel count fails eagerly too: not a compile error
    assert fast.compiled


def test_malloc_tuning_opt_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "_malloc_tuned", None)
    monkeypatch.setenv("SEGLAB_NO_MALLOPT", "1")
    assert tune_malloc() is False
    assert tune_malloc() is False  # decided once per process


def test_malloc_tuning_applies_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt tuning is glibc-only")
    monkeypatch.setattr(fastpath, "_malloc_tuned", None)
    monkeypatch.delenv("SEGLAB_NO_MALLOPT", raising=False)
    assert tune_malloc() is True
