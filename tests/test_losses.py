"""Tests for the weighted cross-entropy loss, its config builder and class-weight resolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seglab.config import LossConfig
from seglab.errors import SeglabError
from seglab.losses import (
    WeightedCrossEntropy,
    build_loss,
    cross_entropy,
    resolve_class_weights,
    weights_from_frequencies,
)


def sample(seed: int = 0, ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 4, 5, generator=gen)
    target = torch.randint(0, 3, (2, 4, 5), generator=gen)
    target[0, 0, :3] = ignore_index
    return logits, target


def test_weighted_cross_entropy_equals_manual_computation():
    logits, target = sample()
    weight = torch.tensor([1.0, 2.0, 0.5])
    logp = torch.log_softmax(logits, dim=1)
    valid = target != 255
    t = target.clamp(max=2)
    nll = -logp.gather(1, t.unsqueeze(1)).squeeze(1)  # N x H x W
    w = weight[t] * valid
    manual = (w * nll).sum() / w.sum()  # weighted mean over labelled pixels
    assert cross_entropy(logits, target, weight) == pytest.approx(manual.item(), rel=1e-6)
    assert WeightedCrossEntropy(weight)(logits, target) == pytest.approx(manual.item(), rel=1e-6)


def test_unweighted_equals_torch_and_ignore_index_is_ignored():
    logits, target = sample(1, ignore_index=11)
    loss = cross_entropy(logits, target, ignore_index=11)
    assert loss == pytest.approx(F.cross_entropy(logits, target, ignore_index=11).item(), rel=1e-6)
    changed = logits.clone()
    changed[0, :, 0, :3] = 100.0  # logits under ignored pixels do not matter
    assert cross_entropy(changed, target, ignore_index=11) == pytest.approx(loss.item(), rel=1e-6)


def test_all_pixels_ignored_gives_zero_with_a_gradient():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = cross_entropy(logits, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


def test_low_precision_logits_are_computed_in_float32():
    logits, target = sample()
    weight = torch.tensor([1.0, 2.0, 0.5])
    loss = cross_entropy(logits.bfloat16(), target, weight)
    assert loss.dtype == torch.float32
    assert loss == pytest.approx(cross_entropy(logits.bfloat16().float(), target, weight).item(), rel=1e-6)


def test_out_of_range_target_raises_a_clear_error():
    logits, target = sample()
    target[1, 2, 3] = 7
    target[1, 0, 0] = -1
    with pytest.raises(SeglabError, match=r"\[-1, 7\].*--data.num_classes.*--data.ignore_index"):
        cross_entropy(logits, target)


def test_shape_mismatch_and_single_channel_raise():
    logits, target = sample()
    with pytest.raises(SeglabError, match="do not match"):
        cross_entropy(logits, target[:, :3])
    with pytest.raises(SeglabError, match="binary loss"):
        cross_entropy(logits[:, :1], torch.zeros(2, 4, 5, dtype=torch.long))


def test_build_loss():
    loss = build_loss(LossConfig(name="cross_entropy"), 3, 11, torch.tensor([1.0, 2.0, 3.0]))
    assert isinstance(loss, WeightedCrossEntropy) and loss.ignore_index == 11
    assert "weight" in dict(loss.named_buffers())  # moves with .to(device)
    assert build_loss(LossConfig(name="cross_entropy"), 3, 255, None).weight is None
    with pytest.raises(SeglabError, match="Did you mean 'cross_entropy'"):
        build_loss(LossConfig(name="cross_entropi"), 3, 255, None)
    with pytest.raises(SeglabError, match="loss.class_weights"):
        build_loss(LossConfig(), 3, 255, torch.ones(4))


def test_resolve_class_weights():
    calls: list[str] = []

    def computed(method: str) -> torch.Tensor:
        calls.append(method)
        return torch.tensor([0.5, 1.0, 2.0])

    assert resolve_class_weights("none", 3, computed) is None
    assert resolve_class_weights(None, 3, computed) is None
    assert resolve_class_weights("median_frequency", 3, computed).tolist() == [0.5, 1.0, 2.0]
    assert resolve_class_weights("inverse_frequency", 3, computed) is not None
    assert calls == ["median_frequency", "inverse_frequency"]
    assert resolve_class_weights([1, 2, 3], 3, computed).tolist() == [1.0, 2.0, 3.0]
    assert resolve_class_weights("median_frequency", 3, lambda m: None) is None


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ([1.0, 2.0], r"loss.class_weights.*2 entries.*3 classes"),
        ("median_frequencies", "Did you mean 'median_frequency'"),
        ([1.0, -1.0, 1.0], "non-negative"),
        ([0.0, 0.0, 0.0], "not all zero"),
        (["a", "b", "c"], "list of numbers"),
        (3.5, "one of none"),
    ],
)
def test_resolve_class_weights_errors(spec, match):
    with pytest.raises(SeglabError, match=match):
        resolve_class_weights(spec, 3, lambda m: torch.ones(3))


def test_computed_weights_of_the_wrong_length_are_rejected():
    with pytest.raises(SeglabError, match="median_frequency"):
        resolve_class_weights("median_frequency", 3, lambda m: torch.ones(2))


def test_weights_from_frequencies():
    # freq = [0.1, 0.3, 0.6, 0] -> median over seen classes 0.3 -> MFB [3, 1, 0.5, 0 (never seen)].
    assert weights_from_frequencies([10, 30, 60, 0]).tolist() == pytest.approx([3.0, 1.0, 0.5, 0.0])
    # inverse: 1 / (C * freq) with C = 4.
    assert weights_from_frequencies([10, 30, 60, 0], method="inverse_frequency").tolist() == pytest.approx(
        [2.5, 1 / 1.2, 1 / 2.4, 0.0])
    # Eigen & Fergus frequency: pixels of c / pixels of the images containing c: [0.5, 0.25, 0.5] -> median 0.5.
    assert weights_from_frequencies([10, 30, 60], [20, 120, 120]).tolist() == pytest.approx([1.0, 2.0, 1.0])
    with pytest.raises(SeglabError):
        weights_from_frequencies([0, 0])
