"""Pretrained weights (:mod:`seglab.models.weights`): one loader for names, URLs and files; clear errors.

Nothing here touches the network: sources are local files and ``file://`` URLs under ``tmp_path``,
and the cache is ``SEGLAB_CACHE_DIR`` pointed at a temporary folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import urllib.request
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from seglab.core.errors import SeglabError
from seglab.models.registry import create_model, list_models
from seglab.models.weights import cache_dir, load_state_dict, upgrade_state_dict


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SEGLAB_CACHE_DIR", str(tmp_path / "seglab-cache"))
    return tmp_path / "seglab-cache" / "weights"


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every way of reaching the network fail; the URLs asked for are recorded."""
    asked: list[str] = []

    def refuse(url: object, *args: object, **kwargs: object) -> None:
        asked.append(getattr(url, "full_url", url))
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    return asked


def _small_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_local_file_loads(tmp_path: Path) -> None:
    state = _small_state()
    torch.save(state, tmp_path / "w.pth")
    assert _same(load_state_dict(tmp_path / "w.pth", what="net"), state)
    assert _same(load_state_dict(str(tmp_path / "w.pth"), what="net"), state)


def test_file_url_downloads_into_the_cache_once(tmp_path: Path, cache: Path) -> None:
    state = _small_state()
    source = tmp_path / "src" / "w.pth"
    source.parent.mkdir()
    torch.save(state, source)
    assert cache_dir() == cache
    assert _same(load_state_dict(source.as_uri(), what="net", progress=False), state)
    assert [p.name for p in cache.iterdir()] == ["w.pth"]  # no temporary file left behind
    source.unlink()  # the second read comes from the cache
    assert _same(load_state_dict(source.as_uri(), what="net"), state)


def test_hash_prefix_in_the_file_name_is_checked(tmp_path: Path, cache: Path) -> None:
    good = tmp_path / "w.pth"
    torch.save(_small_state(), good)
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    named = tmp_path / f"net-{digest[:8]}.pth"
    good.rename(named)
    load_state_dict(named.as_uri(), what="net")  # torch hub's convention, satisfied
    wrong = tmp_path / "net-00000000.pth"
    named.rename(wrong)
    with pytest.raises(SeglabError, match=r"does not match the hash prefix in the file name.*deleted"):
        load_state_dict(wrong.as_uri(), what="net")
    assert [p.name for p in cache.iterdir()] == [named.name]  # neither the bad file nor a temporary one


def test_sha256_mismatch_deletes_the_download_and_the_cached_copy(tmp_path: Path, cache: Path) -> None:
    source = tmp_path / "w.pth"
    torch.save(_small_state(), source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    with pytest.raises(SeglabError, match=r"does not match the given sha256.*deleted"):
        load_state_dict(source.as_uri(), what="net", sha256="0" * 64)
    assert not (cache / "w.pth").exists()
    load_state_dict(source.as_uri(), what="net", sha256=digest)
    (cache / "w.pth").write_bytes(b"tampered")  # a cached copy that no longer matches
    with pytest.raises(SeglabError, match=r"cached copy .*w\.pth.* does not match the given sha256.*deleted"):
        load_state_dict(source.as_uri(), what="net", sha256=digest)
    assert not (cache / "w.pth").exists()
    assert _same(load_state_dict(source.as_uri(), what="net", sha256=digest), _small_state())  # fetched afresh


def test_truncated_and_foreign_files_are_explained(tmp_path: Path) -> None:
    torch.save(_small_state(), tmp_path / "w.pth")
    data = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(SeglabError, match=r"Could not read weights_backbone file .*cut\.pth.*may be truncated"):
        load_state_dict(tmp_path / "cut.pth", what="vgg16", option="weights_backbone")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(SeglabError, match=r"tensor\.pth.*holds a Tensor, not a state dict"):
        load_state_dict(tmp_path / "tensor.pth", what="net")
    with pytest.raises(SeglabError, match=r"'.*nope\.pth' is neither 'imagenet' nor an existing file.*vgg16\(weights="):
        load_state_dict(tmp_path / "nope.pth", what="vgg16")
    with pytest.raises(SeglabError, match="segnet has no registered names"):
        load_state_dict("imagenet", what="segnet")


def test_safetensors_files(tmp_path: Path) -> None:
    state = _small_state()
    path = tmp_path / "w.safetensors"
    if importlib.util.find_spec("safetensors") is None:
        path.write_bytes(b"\0" * 16)
        with pytest.raises(SeglabError, match="pip install safetensors"):
            load_state_dict(path, what="net")
        return
    from safetensors.torch import save_file

    save_file(state, str(path))
    assert _same(load_state_dict(path, what="net"), state)


def test_registered_names_resolve_to_torchvision_urls(cache: Path, offline: list[str]) -> None:
    with pytest.raises(SeglabError, match="could not be downloaded"):
        load_state_dict("imagenet", what="vgg16_bn")
    with pytest.raises(SeglabError, match="could not be downloaded"):
        load_state_dict("imagenet", what="resnet50")
    with pytest.raises(SeglabError, match="could not be downloaded"):
        load_state_dict("DEFAULT", what="resnet50")
    assert offline == [torchvision.models.VGG16_BN_Weights.IMAGENET1K_V1.url,
                       torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url,
                       torchvision.models.ResNet50_Weights.DEFAULT.url]
    assert not any(cache.iterdir())


def test_default_builds_never_touch_the_network(offline: list[str]) -> None:
    with torch.device("meta"):  # tiny: no memory is allocated and no weight initialised for real
        for name in list_models():
            create_model(name, num_classes=2)
    assert offline == []


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file_url"])
def test_weights_loads_a_whole_model_state_dict(tmp_path: Path, cache: Path, as_url: bool) -> None:
    torch.manual_seed(0)
    source = create_model("segnet_lite", num_classes=3).eval()
    with torch.no_grad():
        for m in source.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
    path = tmp_path / "segnet_lite.pth"
    torch.save(source.state_dict(), path)
    model = create_model("segnet_lite", num_classes=3, weights=path.as_uri() if as_url else str(path)).eval()
    x = torch.randn(1, 3, 35, 47)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_weights_upgrades_old_seglab_layouts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = create_model("segnet_basic", num_classes=3)
    # The old SegNetEncoder names (one conv + BN + ReLU per stage of segnet_basic): stages.<s>.0.<c>.
    old = {k.replace(f"encoder.features.{4 * s + c}.", f"encoder.stages.{s}.0.{c}."): v
           for k, v in source.state_dict().items() for s in range(4) for c in range(2)
           if k.startswith(f"encoder.features.{4 * s + c}.")}
    old |= {k: v for k, v in source.state_dict().items() if not k.startswith("encoder.")}
    assert len(old) == len(source.state_dict()) and "encoder.stages.3.0.1.running_var" in old
    assert upgrade_state_dict(source, old).keys() == source.state_dict().keys()
    torch.save(old, tmp_path / "old.pth")
    model = create_model("segnet_basic", num_classes=3, weights=str(tmp_path / "old.pth"))
    assert _same(model.state_dict(), source.state_dict())


def test_weights_of_another_model_list_the_keys(tmp_path: Path) -> None:
    state = create_model("segnet_basic", num_classes=3).state_dict()
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "basic.pth")
    expected = (r"weights '.*basic\.pth' is not a seglab segnet_lite state dict \(missing keys: .*"
                r"shape mismatches: encoder\.features\.0\.weight \(64, 3, 7, 7\) vs model \(16, 3, 3, 3\).*"
                r"unexpected keys: extra\.weight")
    with pytest.raises(SeglabError, match=expected):
        create_model("segnet_lite", num_classes=3, weights=str(tmp_path / "basic.pth"))


@pytest.mark.parametrize("name, old", [("segnet", "pretrained_encoder"), ("fcn8s", "pretrained_backbone"),
                                       ("deeplabv3_resnet50", "pretrained_backbone")])
def test_old_option_names_name_weights_backbone(name: str, old: str) -> None:
    with pytest.raises(SeglabError, match=rf"'{old}' was renamed to 'weights_backbone'.*model\.weights_backbone"):
        create_model(name, num_classes=2, **{old: "imagenet"})
