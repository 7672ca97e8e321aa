"""Mask R-CNN models: torchvision's parameter counts, no network on build, weights by file, the
train/eval contract (loss dict; detections with N x 1 x H x W mask probabilities), RoI poolers.

Instance models are routed here from the shared semantic contract test in tests/test_models.py.
"""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest
import torch
import torchvision
import torchvision.models._api
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

from seglab.core.errors import SeglabError
from seglab.models.instance.poolers import MultiScaleRoIPool
from seglab.models.registry import create_model, list_models, model_task

INSTANCE_MODELS = ["mask_rcnn_resnet18_fpn", "mask_rcnn_resnet50_fpn", "mask_rcnn_resnet50_fpn_v2"]


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_instance_models_are_registered_and_routed() -> None:
    import seglab
    import seglab.metrics

    # The public names other code relies on.
    assert seglab.create_model is create_model and seglab.metrics.InstanceMetrics.__name__ == "InstanceMetrics"
    assert list_models(task="instance") == INSTANCE_MODELS
    assert set(list_models()) == set(list_models(task="semantic")) | set(INSTANCE_MODELS)
    assert all(model_task(n) == "instance" for n in INSTANCE_MODELS) and model_task("segnet") == "semantic"


@pytest.mark.parametrize(("frozen_bn", "expected"), [(True, 44_401_393), (False, 44_454_513)])
def test_resnet50_fpn_has_torchvision_parameter_count(frozen_bn: bool, expected: int) -> None:
    with torch.device("meta"):
        model = create_model("mask_rcnn_resnet50_fpn", num_classes=91, frozen_bn=frozen_bn)
    assert _params(model) == expected
    frozen = [m for m in model.backbone.body.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert bool(frozen) == frozen_bn


def test_v2_has_torchvision_parameter_count() -> None:
    with torch.device("meta"):
        assert _params(create_model("mask_rcnn_resnet50_fpn_v2", num_classes=91)) == 46_359_409


def test_building_never_touches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    tried: list[str] = []

    def refuse(url, *args, **kwargs):
        tried.append(str(url))
        raise RuntimeError("network access during a model build")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    # torchvision imports load_state_dict_from_url by name and torch.hub imports urlopen by name, and a
    # cached file needs no download at all: refuse every connection and every hub download path too.
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "urlopen", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    with torch.device("meta"):
        for name in INSTANCE_MODELS:
            for pooler in ("align", "pool"):
                create_model(name, num_classes=3, roi_pooler=pooler)
    assert tried == []


@pytest.mark.parametrize("pooler", ["align", "pool"])
def test_roi_pooler_option_sets_both_heads(pooler: str) -> None:
    with torch.device("meta"):
        model = create_model("mask_rcnn_resnet50_fpn", num_classes=3, roi_pooler=pooler)
    heads = model.roi_heads
    kind = MultiScaleRoIAlign if pooler == "align" else MultiScaleRoIPool
    assert type(heads.box_roi_pool) is kind and type(heads.mask_roi_pool) is kind
    assert heads.box_roi_pool.output_size == (7, 7) and heads.mask_roi_pool.output_size == (14, 14)
    with pytest.raises(SeglabError, match="roi_pooler must be one of align, pool"):
        create_model("mask_rcnn_resnet18_fpn", num_classes=3, roi_pooler="warp")


def _target(size: int, n: int) -> dict[str, torch.Tensor]:
    masks = torch.zeros(n, size, size, dtype=torch.uint8)
    boxes = []
    for i in range(n):
        y0, x0 = 8 + 20 * i, 10 + 15 * i
        masks[i, y0:y0 + 24, x0:x0 + 30] = 1
        boxes.append([x0, y0, x0 + 30, y0 + 24])
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.ones(n, dtype=torch.int64),
            "masks": masks}


# The ResNet-50 models are slow on a CPU: RoIPool is run on the small one only.
@pytest.mark.parametrize(("name", "pooler"), [(n, "align") for n in INSTANCE_MODELS] + [(INSTANCE_MODELS[0], "pool")])
def test_instance_model_contract(name: str, pooler: str) -> None:
    torch.manual_seed(0)
    size = 96
    few = {"rpn_pre_nms_top_n_train": 64, "rpn_post_nms_top_n_train": 64, "rpn_pre_nms_top_n_test": 64,
           "rpn_post_nms_top_n_test": 32, "box_batch_size_per_image": 32}  # a small, fast test
    model = create_model(name, num_classes=3, roi_pooler=pooler, min_size=size, max_size=size, **few)
    images = [torch.rand(3, size, size), torch.rand(3, size, size)]
    targets = [_target(size, 2), _target(size, 0)]  # the second image has no instance: boxes 0 x 4
    model.train()
    losses = model(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.roi_heads.mask_predictor.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        out = model([images[0]])
    assert isinstance(out, list) and set(out[0]) == {"boxes", "labels", "scores", "masks"}
    n = out[0]["boxes"].shape[0]
    assert out[0]["masks"].shape == (n, 1, size, size)
    if n:
        assert 0 <= out[0]["masks"].min() and out[0]["masks"].max() <= 1


def test_whole_model_weights_load_from_a_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = create_model("mask_rcnn_resnet18_fpn", num_classes=3, min_size=64, max_size=64).eval()
    path = tmp_path / "mask_rcnn.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(1)
    model = create_model("mask_rcnn_resnet18_fpn", num_classes=3, min_size=64, max_size=64,
                         weights=path.as_uri()).eval()
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(SeglabError, match="shape mismatches"):
        create_model("mask_rcnn_resnet18_fpn", num_classes=5, weights=str(path))


def test_backbone_weights_load_from_a_file_and_freeze_like_torchvision(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trunk = torchvision.models.resnet18(weights=None)  # a randomly initialised "ImageNet" state dict
    path = tmp_path / "resnet18.pth"
    torch.save(trunk.state_dict(), path)
    model = create_model("mask_rcnn_resnet18_fpn", num_classes=2, weights_backbone=str(path))
    body = model.backbone.body
    assert torch.equal(body.conv1.weight, trunk.conv1.weight)
    assert torch.equal(body.layer4[1].bn2.running_var, trunk.layer4[1].bn2.running_var)
    assert isinstance(body.bn1, FrozenBatchNorm2d)  # pretrained: torchvision's frozen BNs ...
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad  # ... and 3 stages
    assert body.layer2[0].conv1.weight.requires_grad
    with pytest.raises(SeglabError, match="weights_backbone"):
        create_model("mask_rcnn_resnet18_fpn", num_classes=2, weights_backbone=str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("name", ["mask_rcnn_resnet50_fpn", "mask_rcnn_resnet50_fpn_v2"])
def test_coco_weights_load_by_name_from_torchvision(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """weights="COCO_V1" resolves to torchvision's COCO file through the weights module (no download here)."""
    from seglab.models import weights as weights_module

    asked: list[str] = []

    def record(url: str, **kwargs) -> Path:
        asked.append(url)
        raise SeglabError("stop before downloading")

    monkeypatch.setattr(weights_module, "cached_download", record)
    enum = {"mask_rcnn_resnet50_fpn": torchvision.models.detection.MaskRCNN_ResNet50_FPN_Weights,
            "mask_rcnn_resnet50_fpn_v2": torchvision.models.detection.MaskRCNN_ResNet50_FPN_V2_Weights}[name]
    with torch.device("meta"), pytest.raises(SeglabError, match="stop before downloading"):
        create_model(name, num_classes=91, weights="COCO_V1")
    assert asked == [enum.COCO_V1.url]


def test_imagenet_backbone_loads_by_name_through_the_weights_module(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """weights_backbone="imagenet" names torchvision's ResNet-18 file; a random state dict stands in for it."""
    from seglab.models import weights as weights_module

    torch.manual_seed(0)
    trunk = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(trunk.state_dict(), path)
    asked: list[str] = []

    def cached(url: str, **kwargs) -> Path:
        asked.append(url)
        return path

    monkeypatch.setattr(weights_module, "cached_download", cached)
    model = create_model("mask_rcnn_resnet18_fpn", num_classes=2, weights_backbone="imagenet")
    assert asked == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]
    assert torch.equal(model.backbone.body.layer3[0].conv1.weight, trunk.layer3[0].conv1.weight)
