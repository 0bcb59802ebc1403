"""The typed `models:` section: a model spec is checked key by key when the config loads (CLI and
`sk.load_config`), reads as the mapping it was written as, and saves back exactly as written."""
import inspect

import pytest
import yaml

import segkit as sk
from segkit.cli import main
from segkit.config import config_from_dict, load_config, save_config
from segkit.errors import ConfigError
from segkit.modelspec import BUILTIN_PARAMS, ModelSpec


def test_a_mistyped_model_key_fails_when_the_config_loads():
    with pytest.raises(ConfigError, match=r"models\.0: unknown unet key 'depht'; did you mean 'depth'\?"):
        load_config(None, ["models=[{name: unet, depht: 2}]"])
    with pytest.raises(ConfigError, match=r"models\.1: unknown resnet_unet key 'backbon'; did you mean 'backbone'"):
        load_config(None, ["models=[{name: unet}, {name: resnet_unet, backbon: resnet18}]"])
    with pytest.raises(ConfigError, match=r"models\.0\.name: unknown model 'unte'; did you mean 'unet'"):
        load_config(None, ["models=[{name: unte}]"])
    with pytest.raises(ConfigError, match=r"models\.0\.activation: unknown activation 'softmx'"):
        load_config(None, ["models=[{name: fractal_unet, activation: softmx}]"])


def test_the_notebook_api_refuses_a_mistyped_model_key():
    with pytest.raises(sk.ConfigError, match=r"models\.0\.name: missing model name"):
        sk.load_config("demo", models=[{"depht": 2}])
    with pytest.raises(sk.ConfigError, match=r"models\.0: unknown unet key 'depht'; did you mean 'depth'"):
        sk.load_config("demo", models=[{"name": "unet", "depht": 2}])


def test_the_cli_fails_before_any_cache_or_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "siim", "models=[{name: unet, depht: 2}]", f"data.cache_dir={tmp_path / 'cache'}",
                 f"output.runs_dir={tmp_path / 'runs'}"])
    assert code == 1
    assert "models.0: unknown unet key 'depht'; did you mean 'depth'?" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_typed_fields_and_the_mapping_view():
    cfg = load_config(None, ["models=[{name: unet, tag: a, depth: 2, activation: softmax}, "
                             "{name: fractal_unet, classifier: true, classifier_weight: 0.3, positive_only: true}]"])
    a, b = cfg.models
    assert isinstance(a, ModelSpec) and (a.name, a.tag, a.activation, a.softmax) == ("unet", "a", "softmax", True)
    assert (b.classifier, b.classifier_weight, b.trains_positive_only(False)) == (True, 0.3, True)
    assert (a.classifier, a.classifier_weight, a.positive_only, a.trains_positive_only(True)) == (False, 0.2, None, True)
    assert a["depth"] == 2 and a.get("base_filters") is None and "activation" in a and "classifier" not in a
    assert a.builder_kwargs() == {"depth": 2, "activation": "softmax"}
    assert a == {"name": "unet", "tag": "a", "depth": 2, "activation": "softmax"}
    built = ModelSpec("unet", tag="a", activation="softmax", params={"depth": 2})  # from Python: the same mapping
    assert built == a and built.to_dict() == {"name": "unet", "tag": "a", "activation": "softmax", "depth": 2}


def test_saved_configs_round_trip_exactly_as_written(tmp_path):
    written = {"name": "old", "models": [{"name": "unet", "tag": "u", "base_filters": 4, "depth": 2},
                                         {"name": "encoder_unet", "backbone": "resnet18"}]}
    cfg = config_from_dict(written)
    save_config(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["models"] == written["models"]
    assert config_from_dict(saved).to_dict() == cfg.to_dict()
    assert sk.load_config(cfg, ["seed=3"]).models == cfg.models


@pytest.mark.parametrize("name", sorted(BUILTIN_PARAMS))
def test_the_builtin_key_lists_match_the_builders(name):
    from segkit.models.registry import _BUILDERS

    params = inspect.signature(_BUILDERS[name]).parameters
    assert set(BUILTIN_PARAMS[name]) == set(params) - {"input_shape", "n_classes", "normalisation"}
