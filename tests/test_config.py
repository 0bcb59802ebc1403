"""Config loading, overrides and the errors a typo gets."""
import subprocess
import sys

import pytest
import yaml

from segkit.config import Config, config_from_dict, load_config, save_config
from segkit.errors import ConfigError


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_yaml_and_overrides(tmp_path):
    p = write(tmp_path, "name: a\ntrain:\n  epochs: 3\nmodels:\n  - {name: unet, base_filters: 8}\n")
    cfg = load_config(p, ["train.batch_size=4", "train.learning_rate=1e-4", "models.0.depth=2",
                          "data.image_size=64", "predict.tta=[identity,hflip]"])
    assert cfg.name == "a" and cfg.train.epochs == 3 and cfg.train.batch_size == 4
    assert cfg.train.learning_rate == pytest.approx(1e-4)
    assert cfg.models == [{"name": "unet", "base_filters": 8, "depth": 2}]
    assert cfg.data.image_size == [64, 64]
    assert cfg.predict.tta == ["identity", "hflip"]


def test_unknown_key_names_the_closest(tmp_path):
    p = write(tmp_path, "train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"train\.epoch: unknown config key; did you mean 'train\.epochs'"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"postprocess\.treshold.*'postprocess\.threshold'"):
        load_config(None, ["postprocess.treshold=0.3"])


def test_wrong_types_are_errors():
    with pytest.raises(ConfigError, match="train.epochs: expected an integer"):
        load_config(None, ["train.epochs=many"])
    with pytest.raises(ConfigError, match="train.augment.hflip: expected a number"):
        load_config(None, ["train.augment.hflip=yes please"])
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(None, ["train.epochs"])


def test_base_inheritance_and_missing_file(tmp_path):
    write(tmp_path, "name: parent\ntrain: {epochs: 5, folds: 3}\n", "parent.yaml")
    child = write(tmp_path, "base: parent.yaml\nname: child\ntrain: {epochs: 2}\n")
    cfg = load_config(child)
    assert (cfg.name, cfg.train.epochs, cfg.train.folds) == ("child", 2, 3)
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["name=x", "train.folds=3"])
    save_config(cfg, tmp_path / "config.yaml")
    again = config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert again == cfg and isinstance(again, Config)


@pytest.mark.parametrize("name", ["demo", "cloud38", "cloud95"])
def test_builtin_configs_load(name):
    load_config(name)


def test_cli_prints_config_error_without_traceback(tmp_path):
    p = write(tmp_path, "trian:\n  epochs: 1\n")
    res = subprocess.run([sys.executable, "-m", "segkit", "train", str(p)], capture_output=True, text=True)
    assert res.returncode == 1
    assert "trian: unknown config key; did you mean 'train'" in res.stderr
    assert "Traceback" not in res.stderr
