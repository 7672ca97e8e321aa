"""Typed config: YAML recipes, dotted overrides, helpful errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from seglab.core.config import apply_overrides, config_from_dict, config_to_dict, load_config
from seglab.core.errors import SeglabError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("recipe", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_loads_and_round_trips(recipe):
    from seglab.models.registry import list_models

    cfg = load_config(recipe)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert cfg.model.name in list_models()


def test_overrides_are_typed():
    cfg = load_config(CONFIGS / "segnet_basic_camvid.yaml",
                      ["--train.epochs", "2", "--train.lr=0.01", "--data.image_size", "[180, 240]",
                       "--train.grad_clip", "null", "--model.kwargs.upsample", "bilinear", "--data.hflip", "false"])
    assert cfg.train.epochs == 2 and isinstance(cfg.train.epochs, int)
    assert cfg.train.lr == 0.01
    assert cfg.data.image_size == [180, 240]
    assert cfg.train.grad_clip is None
    assert cfg.model.kwargs == {"upsample": "bilinear"}
    assert cfg.data.hflip is False


def test_mistyped_key_suggests_the_close_one():
    cfg = config_from_dict({})
    with pytest.raises(SeglabError, match="Did you mean 'train.epochs'"):
        apply_overrides(cfg, ["--train.epoch", "3"])
    with pytest.raises(SeglabError, match="Did you mean 'data.root'"):
        config_from_dict({"data": {"rot": "x"}})


@pytest.mark.parametrize("old", ["model.pretrained_encoder", "model.kwargs.pretrained_backbone",
                                 "model.kwargs.pretrained_encoder"])
def test_renamed_model_keys_name_weights_backbone(tmp_path, old):
    section, *rest = old.split(".")
    nested = "imagenet"
    for name in reversed(rest):
        nested = {name: nested}
    recipe = tmp_path / "old.yaml"
    recipe.write_text(yaml.safe_dump({section: {"name": "segnet", **nested}}))
    expected = rf"In recipe .*old\.yaml.*'{old}' was renamed to 'model\.weights_backbone'"
    with pytest.raises(SeglabError, match=expected):
        load_config(recipe)
    with pytest.raises(SeglabError, match=rf"'{old}' was renamed.*--model\.weights_backbone imagenet"):
        apply_overrides(config_from_dict({}), [f"--{old}", "imagenet"])


def test_weights_options_are_model_keys():
    cfg = load_config(None, ["--model.weights", "w.pth", "--model.weights_backbone=imagenet"])
    assert (cfg.model.weights, cfg.model.weights_backbone) == ("w.pth", "imagenet")
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_wrong_value_type_names_the_key():
    with pytest.raises(SeglabError, match="'train.epochs' expects an integer"):
        apply_overrides(config_from_dict({}), ["--train.epochs", "two"])
    with pytest.raises(SeglabError, match="has no value"):
        apply_overrides(config_from_dict({}), ["--train.epochs"])


def test_missing_recipe_is_explained(tmp_path):
    with pytest.raises(SeglabError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2")
    with pytest.raises(SeglabError, match="not valid YAML"):
        load_config(bad)
