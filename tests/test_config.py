"""Typed configs: unknown keys and bad values are errors that name them."""

import json

import pytest

from semlayout.config import ExperimentConfig, apply_overrides, config_from_dict, load_config
from semlayout.errors import SemlayoutError


def test_defaults_follow_the_design():
    cfg = ExperimentConfig()
    assert cfg.generator.max_filters == 256
    assert cfg.loss.lambda_l1 == 100 and cfg.loss.lambda_cycle == 10 and cfg.loss.lambda_fm == 10
    assert cfg.loss.real_label == 0.9
    assert cfg.train.beta1 == 0.5 and cfg.train.lr == 2e-4 and cfg.train.buffer_size == 50


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("generator:\n  base_filter: 32\n")
    with pytest.raises(SemlayoutError, match=r"unknown key 'generator.base_filter'"):
        load_config(p)


def test_bad_value_is_named():
    with pytest.raises(SemlayoutError, match="loss.gan_mode"):
        config_from_dict({"loss": {"gan_mode": "wgan"}})


def test_depth_must_fit_size():
    with pytest.raises(SemlayoutError, match="n_down=8 does not fit image_size=128"):
        config_from_dict({"generator": {"image_size": 128, "n_down": 8}})


def test_crop_must_fit_the_network():
    cfg = config_from_dict(
        {"generator": {"image_size": 256, "n_down": 5}, "train": {"crop_size": 128}}
    )
    assert cfg.train.crop_size == 128
    for crop in (300, 100, 32):  # larger than the image, not a multiple of 32, bottleneck 1 px
        with pytest.raises(SemlayoutError, match=f"train.crop_size={crop} does not fit"):
            config_from_dict(
                {"generator": {"image_size": 256, "n_down": 5}, "train": {"crop_size": crop}}
            )


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(SemlayoutError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(SemlayoutError, match="not valid YAML"):
        load_config(bad)


def test_round_trip_and_overrides(tmp_path):
    cfg = apply_overrides(ExperimentConfig(), {"train.epochs": 3, "train.decay_start_epoch": 1})
    cfg.save_json(tmp_path / "config.json")
    again = config_from_dict(json.loads((tmp_path / "config.json").read_text()))
    assert again == cfg and again.train.epochs == 3
    with pytest.raises(SemlayoutError, match="unknown config key 'train.epoch'"):
        apply_overrides(cfg, {"train.epoch": 1})
