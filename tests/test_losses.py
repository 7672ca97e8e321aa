"""Tests for the losses (CE, Dice, CE + Dice, BCE + Dice, focal, weight-map CE), build_loss and class weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seglab.core.config import LossConfig
from seglab.core.errors import SeglabError
from seglab.losses import (
    LOSSES, BCEDiceLoss, CEDiceLoss, DiceLoss, FocalLoss, WeightedCrossEntropy, WeightMapCrossEntropy, bce_dice_loss,
    build_loss, ce_dice_loss, cross_entropy, dice_loss, focal_loss, resolve_class_weights, weighted_map_cross_entropy
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


# --------------------------------------------------------------------------- Dice, focal, BCE + Dice, weight maps


def manual_dice(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255, smooth: float = 1.0,
                weight: list[float] | None = None) -> float:
    """Soft Dice loss written out pixel by pixel, class by class."""
    probs = torch.softmax(logits, dim=1)
    n, c, h, w = logits.shape
    terms, weights = [], []
    for k in range(c):
        inter = p_sum = g_sum = 0.0
        for b in range(n):
            for y in range(h):
                for x in range(w):
                    t = int(target[b, y, x])
                    if t == ignore_index:
                        continue
                    p, g = float(probs[b, k, y, x]), float(t == k)
                    inter, p_sum, g_sum = inter + p * g, p_sum + p, g_sum + g
        if g_sum > 0:  # classes present in the target only
            terms.append(1.0 - (2 * inter + smooth) / (p_sum + g_sum + smooth))
            weights.append(1.0 if weight is None else weight[k])
    return sum(t * w for t, w in zip(terms, weights)) / sum(weights)


def binary_sample(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 1, 4, 5, generator=gen)
    target = torch.randint(0, 2, (2, 4, 5), generator=gen)
    target[1, 3, :2] = 255
    return logits, target


def test_dice_equals_manual_computation_and_skips_absent_classes():
    logits = torch.randn(2, 4, 3, 4, generator=torch.Generator().manual_seed(3))
    target = torch.randint(0, 3, (2, 3, 4), generator=torch.Generator().manual_seed(4))  # class 3 never present
    target[0, 0, :2] = 255
    assert dice_loss(logits, target).item() == pytest.approx(manual_dice(logits, target), rel=1e-5)
    unsmoothed = manual_dice(logits, target, smooth=0.0)
    assert dice_loss(logits, target, smooth=0.0).item() == pytest.approx(unsmoothed, rel=1e-5)
    weight = torch.tensor([1.0, 2.0, 0.5, 4.0])
    assert DiceLoss(weight)(logits, target).item() == pytest.approx(
        manual_dice(logits, target, weight=weight.tolist()), rel=1e-5)


def test_dice_ignores_ignored_pixels_and_is_zero_for_a_perfect_prediction():
    logits, target = sample(2)
    loss = dice_loss(logits, target)
    changed = logits.clone()
    changed[0, :, 0, :3] = 50.0
    assert dice_loss(changed, target).item() == pytest.approx(loss.item(), rel=1e-6)
    perfect = 30.0 * F.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float()
    assert dice_loss(perfect, target).item() < 1e-6
    assert dice_loss(-perfect, target).item() > 0.9  # all wrong


def test_ce_dice_is_the_sum_of_its_parts():
    logits, target = sample(5)
    weight = torch.tensor([1.0, 2.0, 0.5])
    expected = cross_entropy(logits, target, weight) + 0.5 * dice_loss(logits, target, weight, smooth=2.0)
    got = ce_dice_loss(logits, target, weight, smooth=2.0, dice_weight=0.5)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert CEDiceLoss(weight, 255, 2.0, 0.5)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_bce_dice_equals_manual_computation():
    logits, target = binary_sample()
    valid = target != 255
    x, t = logits[:, 0][valid], target[valid].float()
    p = torch.sigmoid(x)
    bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
    dice = (2 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0)
    assert bce_dice_loss(logits, target).item() == pytest.approx((bce + 1 - dice).item(), rel=1e-5)
    assert BCEDiceLoss(dice_weight=2.0)(logits, target).item() == pytest.approx((bce + 2 * (1 - dice)).item(), rel=1e-5)
    w = torch.tensor([1.0, 3.0])  # class weights weigh the BCE term's pixels
    pw = w[t.long()]
    weighted_bce = (-(t * torch.log(p) + (1 - t) * torch.log(1 - p)) * pw).sum() / pw.sum()
    assert bce_dice_loss(logits, target, w).item() == pytest.approx((weighted_bce + 1 - dice).item(), rel=1e-5)


def test_bce_dice_ignores_ignored_pixels_and_is_zero_when_perfect():
    logits, target = binary_sample(1)
    changed = logits.clone()
    changed[1, 0, 3, :2] = -40.0
    assert bce_dice_loss(changed, target).item() == pytest.approx(bce_dice_loss(logits, target).item(), rel=1e-6)
    perfect = (target.clamp(max=1).float() * 60 - 30).unsqueeze(1)
    assert bce_dice_loss(perfect, target).item() < 1e-6


def test_focal_equals_manual_computation_and_cross_entropy_at_gamma_zero():
    logits, target = sample(6)
    weight = torch.tensor([0.25, 1.0, 2.0])
    valid = target != 255
    t = target.clamp(max=2)
    pt = torch.softmax(logits, 1).gather(1, t.unsqueeze(1)).squeeze(1)
    alpha = weight[t] * valid
    manual = (alpha * -(1 - pt) ** 2 * torch.log(pt)).sum() / alpha.sum()
    assert focal_loss(logits, target, weight, gamma=2.0).item() == pytest.approx(manual.item(), rel=1e-5)
    assert FocalLoss(weight, gamma=2.0)(logits, target).item() == pytest.approx(manual.item(), rel=1e-5)
    for w in (None, weight):
        assert focal_loss(logits, target, w, gamma=0.0).item() == pytest.approx(
            cross_entropy(logits, target, w).item(), rel=1e-6)
    # Focusing down-weights easy pixels, so the loss drops as gamma grows.
    assert focal_loss(logits, target, gamma=2.0) < focal_loss(logits, target, gamma=0.5) < cross_entropy(logits, target)


def test_weighted_map_ce_equals_manual_computation():
    logits, target = sample(7)
    weight_map = torch.rand(2, 4, 5, generator=torch.Generator().manual_seed(8)) * 10
    valid = target != 255
    t = target.clamp(max=2)
    nll = -torch.log_softmax(logits, 1).gather(1, t.unsqueeze(1)).squeeze(1)
    manual = (weight_map * nll * valid).sum() / valid.sum()  # mean over labelled pixels
    assert weighted_map_cross_entropy(logits, target, weight_map).item() == pytest.approx(manual.item(), rel=1e-6)
    assert WeightMapCrossEntropy()(logits, target, weight_map).item() == pytest.approx(manual.item(), rel=1e-6)
    ones = torch.ones(2, 4, 5)
    assert weighted_map_cross_entropy(logits, target, ones).item() == pytest.approx(
        cross_entropy(logits, target).item(), rel=1e-6)
    changed = weight_map.clone()
    changed[0, 0, :3] = 1e6  # weights under ignored pixels do not matter
    assert weighted_map_cross_entropy(logits, target, changed).item() == pytest.approx(manual.item(), rel=1e-6)


def _loss_inputs(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logits, target = binary_sample(2) if name == "bce_dice" else sample(9)
    return logits.clone().requires_grad_(True), target, torch.rand(target.shape) + 0.5


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_builds_and_its_gradient_flows(name):
    num_classes = 2 if name == "bce_dice" else 3
    criterion = build_loss(LossConfig(name=name), num_classes, 255, None)
    logits, target, weight_map = _loss_inputs(name)
    loss = criterion(logits, target, weight_map)  # the trainer's call: a 3rd item goes to every loss
    loss.backward()
    assert loss.dim() == 0 and math.isfinite(loss.item()) and loss.item() > 0
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    ignored = target == 255
    assert ignored.any() and logits.grad.abs().sum(1)[ignored].sum() == 0  # ignored pixels get no gradient


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_is_zero_with_a_gradient_when_all_pixels_are_ignored(name):
    logits, target, weight_map = _loss_inputs(name)
    loss = build_loss(LossConfig(name=name), 2 if name == "bce_dice" else 3, 255)(logits, torch.full_like(target, 255),
                                                                              weight_map)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


def test_build_loss_maps_names_and_settings():
    cfg = LossConfig(name="ce_dice", dice_weight=0.3, dice_smooth=2.0)
    loss = build_loss(cfg, 3, 11, torch.tensor([1.0, 2.0, 3.0]))
    assert isinstance(loss, CEDiceLoss) and (loss.dice_weight, loss.smooth, loss.ignore_index) == (0.3, 2.0, 11)
    assert build_loss(LossConfig(name="focal", focal_gamma=1.5), 3, 255).gamma == 1.5
    assert isinstance(build_loss(LossConfig(name="dice"), 3, 255), DiceLoss)
    assert isinstance(build_loss(LossConfig(name="bce_dice"), 2, 255), BCEDiceLoss)
    assert isinstance(build_loss(LossConfig(name="weighted_map_ce"), 2, 255), WeightMapCrossEntropy)


@pytest.mark.parametrize("name", ["cross_entropy", "dice", "ce_dice", "focal", "weighted_map_ce"])
def test_multi_class_losses_reject_a_one_channel_model(name):
    logits, target = binary_sample()
    with pytest.raises(SeglabError, match="1-channel.*use loss.name bce_dice"):
        build_loss(LossConfig(name=name), 2, 255)(logits, target, torch.ones(target.shape))


def test_bce_dice_rejects_multi_channel_models_and_non_binary_data():
    logits, target = sample()
    with pytest.raises(SeglabError, match="bce_dice.*1-channel.*3 channels.*cross_entropy"):
        build_loss(LossConfig(name="bce_dice"), 2, 255)(logits, target)
    with pytest.raises(SeglabError, match="binary data.*3 classes"):
        build_loss(LossConfig(name="bce_dice"), 3, 255)
    bad = binary_sample()[1]
    bad[0, 0, 0] = 2
    with pytest.raises(SeglabError, match=r"\[2\] outside \[0, 1\]"):
        bce_dice_loss(binary_sample()[0], bad)


def test_weighted_map_ce_errors():
    logits, target = sample()
    with pytest.raises(SeglabError, match="data.weight_maps true"):
        build_loss(LossConfig(name="weighted_map_ce"), 3, 255)(logits, target)
    with pytest.raises(SeglabError, match="does not match"):
        weighted_map_cross_entropy(logits, target, torch.ones(2, 4, 4))
    with pytest.raises(SeglabError, match="loss.class_weights none"):
        build_loss(LossConfig(name="weighted_map_ce"), 3, 255, torch.ones(3))
    with pytest.raises(SeglabError, match="focal_gamma"):
        build_loss(LossConfig(name="focal", focal_gamma=-1.0), 3, 255)
