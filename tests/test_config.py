"""Config loading, overrides, range checks and the errors a typo, a bad value or a bad file gets."""
import dataclasses
import importlib.metadata
import subprocess
import sys

import pytest
import yaml

from segkit.cli import main
from segkit.config import (AugmentConfig, Config, DataConfig, PostprocessConfig, TrainConfig, builtin_configs,
                           config_from_dict, load_config, save_config)
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


def assert_holds(cfg, written, where: str = "") -> None:
    """Every value written in a config file is the value of that key in the loaded config (an image size N
    reads as [N, N]; a model's mapping may gain defaults)."""
    if isinstance(written, dict):
        for key, value in written.items():
            here = f"{where}.{key}" if where else str(key)
            assert_holds(cfg[key] if isinstance(cfg, dict) else getattr(cfg, key), value, here)
    elif isinstance(written, list) and isinstance(cfg, list):
        assert len(cfg) == len(written), where
        for i, (c, w) in enumerate(zip(cfg, written)):
            assert_holds(c, w, f"{where}.{i}")
    elif where == "data.image_size" and isinstance(written, int):
        assert cfg == [written, written], where
    else:
        assert cfg == written and type(cfg) in (type(written), float), (where, cfg, written)


@pytest.mark.parametrize("name", sorted(builtin_configs()))
def test_builtin_configs_load(name, tmp_path):
    """Each shipped config loads with the values written in it, and through save_config comes back equal."""
    cfg = load_config(name)
    written = written_values(name)
    assert_holds(cfg, written)
    assert written["name"] == cfg.name
    save_config(cfg, tmp_path / "config.yaml")
    assert config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text())) == cfg


def written_values(name: str) -> dict:
    """The values a built-in config file writes, its `base:` config's first (mappings merged, others replaced)."""
    raw = yaml.safe_load(builtin_configs()[name].read_text())
    base = raw.pop("base", None)
    if base is None:
        return raw

    def merge(a, b):
        return {**a, **{k: merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
                        for k, v in b.items()}}
    return merge(written_values(base.removesuffix(".yaml")), raw)


def test_cli_prints_config_error_without_traceback(tmp_path):
    p = write(tmp_path, "trian:\n  epochs: 1\n")
    res = subprocess.run([sys.executable, "-m", "segkit", "train", str(p)], capture_output=True, text=True)
    assert res.returncode == 1
    assert "trian: unknown config key; did you mean 'train'" in res.stderr
    assert "Traceback" not in res.stderr


# --- built-in configs, found from anywhere ------------------------------------------------------------

def test_builtin_configs_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    names = set(builtin_configs())
    assert {"demo", "cloud38", "cloud95", "carvana", "clouds", "airbus", "folder", "kaggle_example"} <= names
    assert load_config("demo").name == "demo"
    assert load_config("cloud38.yaml") == load_config("cloud38")
    with pytest.raises(ConfigError, match=r"nope: config file not found.*built-in config name \(.*cloud38.*demo"):
        load_config("nope")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "elsewhere" / "demo.yaml")  # a missing path is never taken for a built-in name


def test_a_local_file_wins_over_a_builtin_name_and_base_resolves_builtin_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "name: mine\n", "demo.yaml")
    assert load_config("demo.yaml").name == "mine"
    child = write(tmp_path, "base: cloud95\nname: child\ntrain: {epochs: 2}\n", "child.yaml")
    cfg = load_config(child)
    parent = load_config("cloud95")
    assert (cfg.name, cfg.train.epochs) == ("child", 2)
    assert cfg.data == parent.data and cfg.models == parent.models  # cloud95 itself inherits from cloud38


def test_base_loop_is_an_error(tmp_path):
    write(tmp_path, "base: b.yaml\n", "a.yaml")
    write(tmp_path, "base: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="inheritance loops back"):
        load_config(tmp_path / "a.yaml")


# --- files that are not YAML configs --------------------------------------------------------------------

def test_binary_config_file_names_the_file(tmp_path):
    p = tmp_path / "weights.yaml"
    p.write_bytes(b"\x89HDF\r\n\x1a\n\xff\xfe\x00\x01" * 8)
    with pytest.raises(ConfigError, match=r"weights.yaml: not a UTF-8 YAML file"):
        load_config(p)
    p.write_bytes(b"name: a\x00b\n")  # valid UTF-8 but a control character: not text either
    with pytest.raises(ConfigError, match=r"weights.yaml: not a UTF-8 YAML file"):
        load_config(p)


def test_yaml_syntax_error_gives_the_line(tmp_path):
    p = write(tmp_path, "name: a\ntrain:\n  epochs: 3\n  batch_size: [1, 2\n")
    with pytest.raises(ConfigError, match=r"c.yaml: not valid YAML at line \d+, column \d+") as info:
        load_config(p)
    assert "\n" not in str(info.value)
    p = write(tmp_path, "name: a\n  bad: indent\n")
    with pytest.raises(ConfigError, match=r"c.yaml: not valid YAML at line 2, column 6"):
        load_config(p)


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just words\n", "str"), ("3\n", "int")])
def test_top_level_must_be_a_mapping(tmp_path, text, kind):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"c.yaml: expected a mapping .* at the top level, got a {kind}"):
        load_config(p)


def test_override_below_a_value_is_an_error():
    with pytest.raises(ConfigError, match=r"override 'name.x': 'name' is a value, not a section"):
        load_config(None, ["name=a", "name.x=1"])


# --- ranges ------------------------------------------------------------------------------------------

RANGE_CASES = [
    ("train.epochs=0", r"train\.epochs: must be ≥ 1, got 0"),
    ("train.epochs=-3", r"train\.epochs: must be ≥ 1, got -3"),
    ("train.batch_size=0", r"train\.batch_size: must be ≥ 1, got 0"),
    ("predict.batch_size=0", r"predict\.batch_size: must be ≥ 1, got 0"),
    ("predict.tta=[]", r"predict\.tta: must not be empty"),
    ("train.folds=1", r"train\.folds: must be ≥ 2, got 1"),
    ("train.train_folds=[0,3]", r"train\.train_folds: folds \[3\] outside 0\.\.2"),
    ("train.learning_rate=0", r"train\.learning_rate: must be a number > 0, got 0\.0"),
    ("train.learning_rate=-1e-3", r"train\.learning_rate: must be a number > 0"),
    ("train.learning_rate=.inf", r"train\.learning_rate: must be a number > 0, got inf"),
    ("train.augment.hflip=1.5", r"train\.augment\.hflip: must be a probability in \[0, 1\], got 1\.5"),
    ("train.augment.brightness_contrast=-0.1", r"train\.augment\.brightness_contrast: must be a probability"),
    ("postprocess.threshold=1.2", r"postprocess\.threshold: must be a probability in \[0, 1\], got 1\.2"),
    ("postprocess.threshold_grid=[0.3,1.5]", r"postprocess\.threshold_grid\.1: must be a probability"),
    ("postprocess.threshold_grid=[]", r"postprocess\.threshold_grid: must not be empty"),
    ("postprocess.min_area=-1", r"postprocess\.min_area: must be ≥ 0, got -1"),
    ("postprocess.min_area_grid=[0,-5]", r"postprocess\.min_area_grid\.1: must be ≥ 0, got -5"),
    ("train.early_stopping_patience=-1", r"train\.early_stopping_patience: must be ≥ 0"),
    ("train.reduce_lr_patience=-1", r"train\.reduce_lr_patience: must be ≥ 0"),
    ("train.reduce_lr_factor=1", r"train\.reduce_lr_factor: must be in \(0, 1\)"),
    ("train.reduce_lr_factor=0", r"train\.reduce_lr_factor: must be in \(0, 1\)"),
    ("train.steps_per_epoch=0", r"train\.steps_per_epoch: must be ≥ 1, got 0"),
    ("train.workers=0", r"train\.workers: must be ≥ 1, got 0"),
    ("train.verbose=3", r"train\.verbose: must be 0, 1 or 2"),
    ("data.image_size=0", r"data\.image_size: expected one positive size or \[height, width\]"),
    ("data.image_size=[64,64,3]", r"data\.image_size: expected one positive size or \[height, width\]"),
    ("data.max_train_samples=0", r"data\.max_train_samples: must be ≥ 1, got 0"),
    ("seed=-1", r"seed: must be in 0\.\.2\*\*32-1, got -1"),
    ("name=../x", r"name: '\.\./x' cannot name a run folder"),
    ("models=[]", r"models: must not be empty"),
]


@pytest.mark.parametrize("override, message", RANGE_CASES)
def test_values_out_of_range_are_refused_from_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["train.folds=3", override])


def test_values_out_of_range_are_refused_from_yaml(tmp_path):
    p = write(tmp_path, "train:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match=r"^train\.epochs: must be ≥ 1, got 0$"):
        load_config(p)
    p = write(tmp_path, "postprocess:\n  threshold: 2\n")
    with pytest.raises(ConfigError, match=r"^postprocess\.threshold: must be a probability in \[0, 1\], got 2\.0$"):
        load_config(p)


def test_configs_built_in_python_are_checked_too():
    with pytest.raises(ConfigError, match=r"^train\.epochs: must be ≥ 1, got 0$"):
        Config(train=TrainConfig(epochs=0))
    with pytest.raises(ConfigError, match=r"^train\.augment\.vflip: must be a probability"):
        AugmentConfig(vflip=2.0)
    with pytest.raises(ConfigError, match=r"^postprocess\.threshold: must be a probability"):
        PostprocessConfig(threshold=-0.5)
    with pytest.raises(ConfigError, match=r"^train\.batch_size: expected an integer, got 'eight'"):
        TrainConfig(batch_size="eight")
    with pytest.raises(ConfigError, match=r"^train\.epochs: must be ≥ 1, got 0$"):
        Config(train={"epochs": 0})  # a plain mapping is validated like YAML
    with pytest.raises(ConfigError, match=r"^train\.epochs: must be ≥ 1"):
        dataclasses.replace(TrainConfig(), epochs=0)
    cfg = Config(data=DataConfig(image_size=64), train={"epochs": 3})
    assert cfg.data.image_size == [64, 64] and cfg.train.epochs == 3 and isinstance(cfg.train, TrainConfig)


def test_builtin_configs_are_all_in_range():
    """The shipped configs' values are usable, checked here by hand rather than by the loader's own checks."""
    from segkit.data.competitions.base import adapter_class
    from segkit.models.registry import model_names
    from segkit.predict import TTA

    assert len(builtin_configs()) >= 10
    for name in builtin_configs():
        cfg = load_config(name)
        adapter_class(cfg.data.competition)  # a known competition
        h, w = cfg.data.image_size
        assert h > 0 and w > 0 and h % 16 == 0 and w % 16 == 0, (name, cfg.data.image_size)  # U-Net strides
        t = cfg.train
        assert 2 <= t.folds <= 10 and t.epochs >= 1 and t.batch_size >= 1 and 0 < t.learning_rate < 0.1, name
        pp = cfg.postprocess
        assert all(0 < x < 1 for x in [pp.threshold, *pp.threshold_grid]), name
        assert all(a >= 0 for a in [pp.min_area, *pp.min_area_grid]), name
        assert set(cfg.predict.tta or []) <= set(TTA), name
        assert all(m["name"] in model_names() for m in cfg.models), name
        assert len({m.get("tag", m["name"]) for m in cfg.models}) == len(cfg.models), name  # tags tell folds apart


# --- through the CLI: one line, no traceback, nothing run -----------------------------------------------

@pytest.mark.parametrize("make_args, message", [
    (lambda d: ["train", "demo", "train.epochs=0"], "segkit: error: train.epochs: must be ≥ 1, got 0"),
    (lambda d: ["train", "demo", "train.batch_size=0"], "segkit: error: train.batch_size: must be ≥ 1, got 0"),
    (lambda d: ["predict", "demo", "postprocess.threshold=1.5"], "segkit: error: postprocess.threshold: must be a probability"),
    (lambda d: ["train", str(binary_file(d))], "segkit: error: {d}/bin.yaml: not a UTF-8 YAML file"),
    (lambda d: ["train", str(write(d, "a: [1\n", "bad.yaml"))], "segkit: error: {d}/bad.yaml: not valid YAML at line 2"),
    (lambda d: ["train", str(write(d, "- 1\n", "list.yaml"))], "segkit: error: {d}/list.yaml: expected a mapping"),
    (lambda d: ["train", "no-such-config"], "segkit: error: no-such-config: config file not found"),
])
def test_cli_refuses_bad_configs_in_one_line(tmp_path, monkeypatch, capsys, make_args, message):
    monkeypatch.chdir(tmp_path)
    assert main(make_args(tmp_path)) != 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message.format(d=tmp_path)), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "demo_out").exists()  # refused before anything ran


def binary_file(folder):
    p = folder / "bin.yaml"
    p.write_bytes(bytes(range(256)) * 4)
    return p


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"segkit {importlib.metadata.version('segkit')}"


def test_overrides_may_follow_options_anywhere():
    """`key=value` overrides after an option (`--restart-fold 1 train.epochs=2`) reach the config; a stray
    word that is not an override is still refused."""
    from segkit.cli import build_parser, parse_args

    parser = build_parser()
    args = parse_args(parser, ["train", "demo", "--restart-fold", "1", "train.epochs=2", "seed=3"])
    assert args.config == "demo" and args.restart_fold == 1
    assert args.overrides == ["train.epochs=2", "seed=3"]
    args = parse_args(parser, ["kernel", "push-folds", "--config", "demo", "name=x", "--folds", "0-1", "train.folds=2"])
    assert args.config == ["demo", "name=x", "train.folds=2"]
    with pytest.raises(SystemExit):
        parse_args(parser, ["train", "demo", "--restart-fold", "1", "oops"])


def test_one_did_you_mean_helper_names_the_closest_known_name():
    """Every "unknown name" error comes from one helper: where, what, the closest known name, the list."""
    from segkit.errors import did_you_mean, unknown_name

    err = unknown_name("predict.tta", "augmentation", "hfilp", ["identity", "hflip", "vflip"])
    assert isinstance(err, ConfigError)
    assert str(err) == ("predict.tta: unknown augmentation 'hfilp'; did you mean 'hflip'? "
                        "(known: identity, hflip, vflip)")
    assert did_you_mean("zzz", ["hflip"]) == ""
    assert did_you_mean("epoch", ["epochs"], show=lambda c: f"train.{c}") == "; did you mean 'train.epochs'?"
