"""The parameter-free input normalisations of SegNet-Basic: LRN, the paper's LCN, none."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from seglab.core.errors import SeglabError
from seglab.export.onnx import export_onnx
from seglab.inference.fastpath import optimize_for_inference
from seglab.models.layers.normalization import LocalContrastNorm, make_input_norm
from seglab.models.registry import create_model


def test_lcn_removes_brightness_and_contrast() -> None:
    # LCN's point in the paper: the same scene under other lighting gives the same input.
    torch.manual_seed(0)
    lcn = LocalContrastNorm(3)
    image = torch.rand(2, 3, 40, 56)
    out = lcn(image)
    assert torch.allclose(lcn(0.3 * image + 0.5), out, atol=1e-4)
    assert out.shape == image.shape


def test_lcn_by_hand_on_a_step_edge() -> None:
    # A vertical step from 0 to 1: far from the edge the local mean equals the value, so the output
    # is 0 there; at the edge the dark side goes negative and the bright side positive.
    image = torch.zeros(1, 1, 21, 21)
    image[..., 11:] = 1.0
    out = LocalContrastNorm(1, kernel_size=5)(image)[0, 0]
    assert out[:, :6].abs().max() < 1e-5 and out[:, 16:].abs().max() < 1e-5
    assert (out[:, 10] < 0).all() and (out[:, 11] > 0).all()
    assert torch.allclose(out[:, 10], -out[:, 11], atol=1e-5)  # the edge is symmetric


def test_lcn_of_a_flat_image_is_zero_not_nan() -> None:
    out = LocalContrastNorm(3)(torch.full((1, 3, 8, 8), 0.7))
    assert torch.isfinite(out).all() and out.abs().max() < 1e-3  # rounding noise is not amplified


def test_lcn_works_on_inputs_smaller_than_its_window() -> None:
    assert LocalContrastNorm(3, kernel_size=9)(torch.rand(1, 3, 2, 3)).shape == (1, 3, 2, 3)


@pytest.mark.parametrize("name, kind", [("lrn", nn.LocalResponseNorm), ("lcn", LocalContrastNorm), ("none", type(None))])
def test_make_input_norm(name: str, kind: type) -> None:
    assert isinstance(make_input_norm(name, 3), kind)


def test_old_input_lrn_switch_still_turns_it_off() -> None:
    assert make_input_norm("lrn", 3, input_lrn=False) is None
    assert isinstance(create_model("segnet_basic", num_classes=3, input_lrn=False).input_norm, nn.Identity)


def test_unknown_input_norm_names_the_choices() -> None:
    with pytest.raises(SeglabError, match="lrn, lcn, none"):
        create_model("segnet_basic", num_classes=3, input_norm="lnc")


@pytest.mark.parametrize("name", ["segnet_basic", "bayesian_segnet_basic", "fcn_basic"])
def test_lcn_models_keep_the_state_dict_and_run(name: str) -> None:
    # The window is not saved: an LCN model's state dict has exactly the LRN model's keys.
    lcn = create_model(name, num_classes=3, input_norm="lcn").eval()
    assert isinstance(lcn.input_norm, LocalContrastNorm)
    assert set(lcn.state_dict()) == set(create_model(name, num_classes=3).state_dict())
    with torch.no_grad():
        assert lcn(torch.rand(1, 3, 32, 48)).shape == (1, 3, 32, 48)


def test_lcn_fast_path_matches_eager() -> None:
    torch.manual_seed(0)
    model = create_model("segnet_basic", num_classes=4, input_norm="lcn").eval()
    x = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        eager = model(x)
        fast = optimize_for_inference(model, torch.float32, threads=torch.get_num_threads())(x)
    assert (eager.argmax(1) == fast.argmax(1)).float().mean() >= 0.999


def test_lcn_model_exports_to_onnx_with_parity(tmp_path: Path) -> None:
    # export_onnx checks argmax agreement >= 99.9 % against PyTorch at both sizes, or raises.
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = create_model("segnet_basic", num_classes=4, input_norm="lcn").eval()
    report = export_onnx(model, tmp_path / "lcn.onnx", input_size=(48, 64), second_size=(37, 53),
                         metadata={"model_name": "segnet_basic"}, verbose=False)
    assert len(report.parity) == 2 and all(p.argmax_agreement >= 99.9 for p in report.parity)
