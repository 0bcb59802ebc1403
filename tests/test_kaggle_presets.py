"""Pretrained presets on Kaggle, offline: a training kernel built for models with a `kaggle://` preset (or a
KerasHub preset name) gets the matching model source in its metadata; at run time it reads the preset from
where Kaggle mounts it under the input folder. A tiny ResNet saved with KerasHub's own `save_to_preset`,
laid out as Kaggle mounts a model source, really trains a fold in a built kernel with its weights."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segkit.config import config_from_dict
from segkit.errors import ConfigError, DataError
from segkit.kaggle.bundle import build_kernel
from segkit.kaggle.config import kaggle_config
from segkit.kaggle.runtime import KernelDirs, find_presets
from segkit.presets import attached, model_source, parse_handle, preset_kind

keras_hub = pytest.importorskip("keras_hub")

HANDLE = "kaggle://someone/tiny-resnet/keras/tiny/1"
MOUNT = Path("models", "someone", "tiny-resnet", "keras", "tiny", "1")  # Kaggle's layout for that handle
RAW = {
    "name": "ptest",
    "seed": 3,
    "data": {"competition": "cloud38", "root": "unused-on-kaggle", "image_size": 32,
             "options": {"nonempty_only": True}},
    "models": [{"name": "resnet_unet", "tag": "res", "preset": HANDLE, "encoder_trainable": False,
                "decoder_filters": [8, 8, 8, 8, 8]}],
    "train": {"folds": 2, "epochs": 1, "batch_size": 4, "workers": 1, "verbose": 0},
    "kaggle": {"owner": "someone", "slug": "segkit-ptest", "dataset_sources": ["someone/cloud38-synth"]},
}


def config(**changes):
    """RAW with top-level sections replaced by `changes`."""
    return config_from_dict({**RAW, **changes})


def tiny_resnet():
    """A small ResNet (KerasHub wants 64 filters in the first stack; stride 32), RGB input like an ImageNet preset."""
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16, 16, 16],
        stackwise_num_blocks=[1, 1, 1, 1], stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
        image_shape=(None, None, 3))


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    """(input folder holding the preset where Kaggle mounts HANDLE, the backbone's weights by layer name)."""
    import keras

    keras.utils.set_random_seed(5)
    backbone = tiny_resnet()
    inp = tmp_path_factory.mktemp("kaggle") / "input"
    backbone.save_to_preset(str(inp / MOUNT))
    return inp, {la.name: la.get_weights() for la in backbone.layers if la.weights}


def test_preset_kinds_handles_and_sources():
    assert [preset_kind(p) for p in (HANDLE, "hf://a/b", "/kaggle/input/x/y", "./mine", "resnet_18_imagenet")] \
        == ["kaggle", "url", "input", "local", "name"]
    handle = parse_handle(HANDLE)
    assert (handle.owner, handle.model, handle.framework, handle.variation, handle.version) == \
        ("someone", "tiny-resnet", "keras", "tiny", "1")
    assert str(handle) == HANDLE and handle.source == "someone/tiny-resnet/keras/tiny/1"
    assert model_source("/kaggle/input/models/o/m/keras/v/3/sub") == "o/m/keras/v/3"
    assert model_source("/kaggle/input/datasets/o/presets/tiny") is None  # a dataset: the user lists its source
    for bad in ("kaggle://o/m/keras", "kaggle://o/m/keras/v/latest", "kaggle://o//keras/v/1"):
        with pytest.raises(ConfigError, match="must look like kaggle://owner/model/framework/variation/version"):
            parse_handle(bad, "models.0.preset")


def test_train_kernel_gets_each_preset_as_a_model_source_once(tmp_path):
    """A handle also listed by the user, a KerasHub preset name (its KerasHub handle) and a path under the
    mounted models folder: each source once, after the user's; the inference kernel gets none."""
    named = keras_hub.models.Backbone.presets["resnet_18_imagenet"]["kaggle_handle"].removeprefix("kaggle://")
    mounted = f"/kaggle/input/{MOUNT.as_posix()}"  # the handle's own mount, written as a path
    cfg = config(models=[RAW["models"][0], {"name": "resnet_unet", "tag": "named", "preset": "resnet_18_imagenet"},
                         {"name": "fpn", "tag": "path", "preset": mounted}],
                 kaggle={**RAW["kaggle"], "model_sources": ["other/m/keras/v/2", "someone/tiny-resnet/keras/tiny/1"]})
    built = build_kernel(cfg, "segkit-ptest-fold0", "train", 0, tmp_path)
    assert built.metadata["model_sources"] == ["other/m/keras/v/2", "someone/tiny-resnet/keras/tiny/1", named]
    assert json.loads((built.folder / "kernel-metadata.json").read_text())["model_sources"] == \
        built.metadata["model_sources"]
    infer = build_kernel(cfg, "segkit-ptest-infer", "infer", None, tmp_path)
    assert infer.metadata["model_sources"] == ["other/m/keras/v/2", "someone/tiny-resnet/keras/tiny/1"]


@pytest.mark.parametrize("preset, match", [
    ("LOCAL", "models.0.preset: '.*' is a folder on this machine, which a Kaggle kernel cannot see; upload it"),
    ("kaggle://someone/tiny-resnet/keras/tiny", "names no version"),
    ("hf://someone/tiny", "the kernel has no internet"),
    ("resnet_18_imagenett", "did you mean 'resnet_18_imagenet'"),
])
def test_presets_a_kernel_cannot_load_are_refused_at_build(tmp_path, preset, match):
    if preset == "LOCAL":
        preset = str(tmp_path / "my_preset")
        (tmp_path / "my_preset").mkdir()
    cfg = config(models=[{**RAW["models"][0], "preset": preset}])
    with pytest.raises(ConfigError, match=match):
        build_kernel(cfg, "segkit-ptest-fold0", "train", 0, tmp_path / "build")
    assert not (tmp_path / "build").exists()
    build_kernel(cfg, "segkit-ptest-infer", "infer", None, tmp_path / "build")  # inference loads no preset


def test_missing_preset_names_the_handle_and_the_folders_looked_in(tmp_path, capsys):
    cfg = config()
    dirs = KernelDirs(tmp_path / "input", tmp_path / "working", tmp_path / "scratch")
    (tmp_path / "input" / "cloud38-synth").mkdir(parents=True)
    with pytest.raises(DataError) as err:
        find_presets(cfg, kaggle_config(cfg), dirs)
    text = str(err.value)
    assert text.startswith(f"models.0.preset: '{HANDLE}' is not attached to this kernel")
    for folder in (dirs.input / MOUNT, dirs.input / "tiny-resnet" / "keras" / "tiny" / "1"):
        assert str(folder) in text
    assert "holds: cloud38-synth" in text and "kaggle.model_sources" in text
    (dirs.input / MOUNT).mkdir(parents=True)  # mounted, but not a KerasHub preset
    with pytest.raises(DataError, match="holds no config.json"):
        find_presets(cfg, kaggle_config(cfg), dirs)
    online = config(kaggle={**RAW["kaggle"], "enable_internet": True})
    (dirs.input / MOUNT).rmdir()
    assert find_presets(online, kaggle_config(online), dirs) == {}  # KerasHub downloads it
    assert "is not attached; KerasHub downloads it" in capsys.readouterr().out


def test_models_read_an_attached_preset_in_either_layout(preset, tmp_path, monkeypatch):
    """The older layout (<input>/<model>/<framework>/<variation>/<version>) too; a preset name finds its KerasHub
    handle's variation at whatever version is attached; off Kaggle (no input folder) nothing is looked up."""
    import shutil

    from segkit.models.encoders import load_preset_backbone

    inp, weights = preset
    old = tmp_path / "tiny-resnet" / "keras" / "tiny" / "1"
    shutil.copytree(inp / MOUNT, old)
    monkeypatch.setenv("SEGKIT_KAGGLE_INPUT", str(tmp_path))
    assert attached(HANDLE) == old
    loaded = load_preset_backbone(HANDLE)
    for name, ws in weights.items():
        for a, b in zip(ws, loaded.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    handle = parse_handle(keras_hub.models.Backbone.presets["resnet_18_imagenet"]["kaggle_handle"])
    other_version = tmp_path / "models" / handle.owner / handle.model / handle.framework / handle.variation / "99"
    other_version.mkdir(parents=True)
    assert attached("resnet_18_imagenet") == other_version
    monkeypatch.setenv("SEGKIT_KAGGLE_INPUT", str(tmp_path / "absent"))
    assert attached(HANDLE) is None


def test_built_kernel_trains_with_the_attached_preset(preset, tmp_path):
    """Build the fold-0 training kernel, run it as Kaggle would (folders moved by SEGKIT_KAGGLE_*): its log names
    the mounted preset, its metadata the model source, and the frozen encoder of the saved best.keras holds the
    preset's weights exactly (RGB kernels of the 4-band input conv, every other layer)."""
    from segkit.data.synth import generate
    from segkit.models.registry import load_model

    inp, weights = preset
    if not (inp / "cloud38-synth").is_dir():
        generate("cloud38", inp / "cloud38-synth", seed=3, patch_size=32, n_train_scenes=2, n_test_scenes=1)
    built = build_kernel(config(), "segkit-ptest-fold0", "train", 0, tmp_path / "build")
    assert built.metadata["model_sources"] == ["someone/tiny-resnet/keras/tiny/1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "SEGKIT_"))}
    env.update(SEGKIT_KAGGLE_INPUT=str(inp), SEGKIT_KAGGLE_WORKING=str(tmp_path / "work"),
               SEGKIT_KAGGLE_SCRATCH=str(tmp_path / "scratch"), TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH="", KAGGLEHUB_CACHE=str(tmp_path / "no-downloads"))
    proc = subprocess.run([sys.executable, str(built.code_file)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"models.0.preset: {HANDLE} -> {inp / MOUNT}" in proc.stdout
    assert not (tmp_path / "no-downloads").exists()
    model = load_model(tmp_path / "work" / "runs" / "ptest" / "res" / "fold_0" / "best.keras", compile=False)
    encoder = {la.name: la.get_weights() for la in model.get_layer("encoder").layers if la.weights}
    assert set(encoder) == set(weights)
    np.testing.assert_array_equal(encoder["conv1_conv"][0][:, :, :3], weights["conv1_conv"][0])
    for name, ws in weights.items():
        if name != "conv1_conv":
            for a, b in zip(ws, encoder[name]):
                np.testing.assert_array_equal(a, b, err_msg=name)
