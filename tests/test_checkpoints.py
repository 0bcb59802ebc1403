"""Self-describing checkpoints: the input normalisation is a layer inside the model, so a `.keras` file that
`segkit train` wrote maps raw uint16 images to probabilities with plain Keras in a fresh process; old
checkpoints without that layer still predict; damaged or mismatched checkpoints are one-line TrainingErrors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from segkit.runs import FoldDir

from segkit.data.competitions.base import make_adapter
from segkit.errors import TrainingError
from segkit.losses import get_loss
from segkit.models.layers import InputNormalisation
from segkit.models.registry import (build_model, check_checkpoint_input, has_input_normalisation, load_model,
                                    set_precision)
from segkit.predict import predict_probabilities

P = 32
UINT16 = ([1 / 65535] * 4, [0.0] * 4)
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")

# A fresh interpreter with nothing of segkit imported but `segkit.models`, as the README tells users to do:
# each checkpoint predicts the raw patches cast to float32, then given as uint16.
PLAIN_LOAD = """
import sys, numpy as np
import segkit.models
import keras
x = np.load(sys.argv[1])
for path in sys.argv[2:]:
    model = keras.models.load_model(path)
    assert type(model.loss).__module__ == "segkit.losses", type(model.loss)
    np.save(path + ".npy", np.stack([model.predict(x.astype("float32"), verbose=0), model.predict(x, verbose=0)]))
print("keras_hub" in sys.modules)
"""


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from segkit.data.synth import generate

    return generate("cloud38", tmp_path_factory.mktemp("synth"), seed=5, patch_size=P)


@pytest.fixture(scope="module")
def trained_run(synth_root, tmp_path_factory):
    """A U-Net and a FractalNet-U-Net trained one epoch on fold 0 by `segkit train` (the CLI)."""
    tmp = tmp_path_factory.mktemp("run")
    models = ("models=[{name: unet, tag: unet, depth: 2, base_filters: 4}, "
              "{name: fractal_unet, tag: fractal, columns: 2, depth: 2, base_filters: 4}]")
    args = [f"data.root={synth_root}", f"data.image_size={P}", f"data.cache_dir={tmp / 'cache'}",
            f"output.runs_dir={tmp / 'runs'}", f"output.submissions_dir={tmp / 'subs'}", "train.folds=2",
            "train.train_folds=[0]", "train.epochs=1", "train.batch_size=8", "train.workers=1",
            "train.verbose=0", models]
    proc = subprocess.run([sys.executable, "-m", "segkit", "-q", "train", "demo", *args], env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    paths = {p.parent.parent.name: p for p in (tmp / "runs").rglob("best.keras")}
    assert sorted(paths) == ["fractal", "unet"], paths
    return paths


@pytest.fixture(scope="module")
def raw_patches(synth_root):
    """Four real 4-band uint16 patches as the adapter reads them, and the adapter."""
    adapter = make_adapter("cloud38", synth_root)
    raw = np.stack([adapter.read_image(s) for s in adapter.train_samples()[:4]])
    assert raw.dtype == np.uint16 and raw.shape == (4, P, P, 4) and raw.max() > 1000
    return adapter, raw


@pytest.fixture(scope="module")
def encoder_checkpoint(raw_patches, tmp_path_factory):
    """An encoder U-Net (random KerasHub ResNet-18 backbone, no download) compiled with a segkit loss, saved."""
    adapter, raw = raw_patches
    keras.utils.set_random_seed(0)
    model = build_model({"name": "resnet_unet", "backbone": "resnet18", "decoder_filters": [8]}, (P, P, 4), 1,
                        normalisation=adapter.input_normalisation(raw.dtype))
    model.compile("adam", loss=get_loss("bce_dice", 1))
    path = tmp_path_factory.mktemp("encoder") / "best.keras"
    model.save(path)
    return path, model.predict(raw.astype("float32"), verbose=0)


@pytest.fixture(scope="module")
def fresh_process(trained_run, encoder_checkpoint, raw_patches, tmp_path_factory):
    """{checkpoint path: (2, N, H, W, C)} from plain `keras.models.load_model` in one fresh process."""
    _, raw = raw_patches
    paths = [trained_run["unet"], trained_run["fractal"], encoder_checkpoint[0]]
    x_path = tmp_path_factory.mktemp("x") / "x.npy"
    np.save(x_path, raw)
    proc = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(x_path), *map(str, paths)],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"  # KerasHub was not needed, even for the encoder
    return {p: np.load(f"{p}.npy") for p in paths}


@pytest.mark.parametrize("tag", ["unet", "fractal"])
def test_trained_checkpoint_loads_in_fresh_process_and_takes_raw_uint16(trained_run, raw_patches, fresh_process,
                                                                        tag):
    adapter, raw = raw_patches
    path = trained_run[tag]
    model = load_model(path)
    norm = model.get_layer("input_normalisation")
    assert isinstance(norm, InputNormalisation)
    np.testing.assert_allclose(norm.scale, [1 / 65535] * 4)
    # segkit's own prediction of the cached raw patches (as predict and OOF run it)
    cache = SimpleNamespace(images=raw)
    ours = np.concatenate(list(predict_probabilities([model], cache, np.arange(len(raw)), adapter.normalise,
                                                     ["identity"], 2, quiet=True)))
    theirs = fresh_process[path]
    np.testing.assert_allclose(theirs[0], ours, atol=1e-6)
    np.testing.assert_allclose(theirs[1], ours, atol=1e-6)  # uint16 given as is
    assert ours.shape == (4, P, P, 1) and 0 <= ours.min() and ours.max() <= 1 and ours.std() > 0
    # and it is the network on normalised input: the same weights without the layer, fed adapter.normalise
    spec = ({"name": "unet", "depth": 2, "base_filters": 4} if tag == "unet"
            else {"name": "fractal_unet", "columns": 2, "depth": 2, "base_filters": 4})
    bare = build_model(spec, (P, P, 4), 1)
    bare.set_weights(model.get_weights())
    x = np.stack([adapter.normalise(im) for im in raw])
    np.testing.assert_allclose(bare.predict(x, verbose=0), ours, atol=1e-5)


def test_encoder_unet_checkpoint_loads_with_plain_keras(encoder_checkpoint, fresh_process):
    path, expected = encoder_checkpoint
    np.testing.assert_allclose(fresh_process[path][0], expected, atol=1e-6)
    np.testing.assert_allclose(fresh_process[path][1], expected, atol=1e-6)


def test_old_checkpoint_without_layer_still_predicts_with_adapter_normalisation(raw_patches, tmp_path):
    adapter, raw = raw_patches
    keras.utils.set_random_seed(1)
    spec = {"name": "unet", "depth": 2, "base_filters": 4}
    new = build_model(spec, (P, P, 4), 1, normalisation=adapter.input_normalisation(raw.dtype))
    old = build_model(spec, (P, P, 4), 1)  # as segkit saved models before the layer existed
    old.set_weights(new.get_weights())
    old_path = tmp_path / "unet" / "fold_2" / "last.keras"
    old_path.parent.mkdir(parents=True)
    old.save(old_path)
    loaded = load_model(old_path)
    assert not has_input_normalisation(loaded) and has_input_normalisation(new)
    cache = SimpleNamespace(images=raw)
    run = lambda models: np.concatenate(list(predict_probabilities(  # noqa: E731
        models, cache, np.arange(len(raw)), adapter.normalise, ["identity", "hflip"], 3, quiet=True)))
    expected = run([new])
    np.testing.assert_allclose(run([loaded]), expected, atol=1e-6)
    np.testing.assert_allclose(run([loaded, new]), expected, atol=1e-6)  # old and new in one ensemble
    assert not np.allclose(old.predict(raw.astype("float32"), verbose=0), expected, atol=1e-3)  # raw would be wrong
    # resuming training on raw images from such a checkpoint is refused, with the way out
    with pytest.raises(TrainingError, match=r"last\.keras was saved by an older segkit.*--restart-fold 2"):
        load_model(old_path, raw_input=True, fix=FoldDir(old_path.parent, "unet", 2).restart_hint())


def test_normalisation_layer_matches_adapter_numpy_and_serialises(synth_root):
    adapter = make_adapter("cloud38", synth_root, {"band_mean": [9000, 8000, 7000, 12000],
                                                   "band_std": [2000, 1500, 1800, 3000]})
    scale, offset = adapter.input_normalisation(np.uint16)
    raw = np.random.default_rng(0).integers(0, 65535, (2, 8, 8, 4), dtype=np.uint16)
    layer = InputNormalisation(scale, offset)
    got = keras.ops.convert_to_numpy(layer(raw.astype("float32")))
    np.testing.assert_allclose(got, adapter.normalise(raw), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(got, (raw - np.array([9000, 8000, 7000, 12000.0])) / [2000, 1500, 1800, 3000],
                               rtol=1e-5, atol=1e-5)
    again = InputNormalisation.from_config(json.loads(json.dumps(layer.get_config())))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(again(raw)), got)
    # the default for 8-bit RGB competitions and folders: /255, float images unchanged
    from segkit.data.competitions.base import Adapter

    assert Adapter(synth_root).input_normalisation(np.uint8) == ([1 / 255] * 3, [0.0] * 3)
    assert Adapter(synth_root).input_normalisation(np.float32) == ([1.0] * 3, [0.0] * 3)


def test_mixed_precision_normalises_in_float32():
    try:
        set_precision("mixed_float16")
        model = build_model({"name": "unet", "depth": 1, "base_filters": 2}, (16, 16, 4), 1, normalisation=UINT16)
        norm = model.get_layer("input_normalisation")
        assert norm.compute_dtype == "float32" and norm.output.dtype == "float32"
        assert model.get_layer("enc0_conv1").compute_dtype == "float16"
        x = np.full((1, 16, 16, 4), 65535, np.uint16)
        out = keras.ops.convert_to_numpy(norm(x))
        assert out.dtype == np.float32 and np.all(out == 1.0)  # float16 could not even hold 65535 exactly
    finally:
        set_precision(None)


def test_cost_ignores_the_normalisation_layer():
    from segkit.models.cost import forward_flops

    spec = {"name": "fractal_unet", "columns": 2, "depth": 2, "base_filters": 4}
    with_layer, without = (build_model(spec, (P, P, 4), 1, normalisation=n) for n in (UINT16, None))
    assert forward_flops(with_layer) == forward_flops(without) > 0
    assert with_layer.count_params() == without.count_params()
    assert len(with_layer.layers) == len(without.layers) + 1


# --- damaged and mismatched checkpoints ----------------------------------------------------------------

@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> bytes:
    model = build_model({"name": "unet", "depth": 1, "base_filters": 2}, (P, P, 4), 1, normalisation=UINT16)
    path = tmp_path_factory.mktemp("good") / "m.keras"
    model.save(path)
    return path.read_bytes()


def _zip_without_config(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("notes.txt", "not a model")


@pytest.mark.parametrize("case, what", [
    ("missing", "checkpoint not found"),
    ("empty", r"not a readable Keras checkpoint \(empty\)"),
    ("garbage", r"not a readable Keras checkpoint \(truncated or corrupt\)"),
    ("truncated", r"not a readable Keras checkpoint \(truncated or corrupt\)"),
    ("zip_without_model", r"not a readable Keras checkpoint \("),
])
def test_bad_checkpoint_is_one_line_training_error(good_checkpoint, tmp_path, case, what):
    path = tmp_path / "runs" / "x" / "unet" / "fold_3" / "best.keras"
    path.parent.mkdir(parents=True)
    if case == "empty":
        path.write_bytes(b"")
    elif case == "garbage":
        path.write_bytes(os.urandom(5000))
    elif case == "truncated":
        path.write_bytes(good_checkpoint[: len(good_checkpoint) // 2])
    elif case == "zip_without_model":
        _zip_without_config(path)
    if case != "missing":
        with pytest.raises(Exception) as plain:  # what Keras alone says (for a file that exists)
            keras.models.load_model(path)
        assert not isinstance(plain.value, TrainingError)
    with pytest.raises(TrainingError, match=what) as err:
        load_model(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert "save or train the model again" in message  # no run around it: the generic advice
    # a caller that knows better says what to do instead
    with pytest.raises(TrainingError, match="delete the run"):
        load_model(path, fix="delete the run")


def test_checkpoint_of_wrong_input_shape(good_checkpoint, tmp_path):
    path = tmp_path / "unet" / "fold_1" / "best.keras"
    path.parent.mkdir(parents=True)
    path.write_bytes(good_checkpoint)
    model = load_model(path, expected_shape=(P, P, 4))
    check_checkpoint_input(model, (P, P, 4), path)
    with pytest.raises(TrainingError, match=rf"{P}x{P}x4 images but the config gives 64x64x4.*--restart-fold 1"):
        load_model(path, expected_shape=(64, 64, 4), fix=FoldDir(path.parent, "unet", 1).restart_hint())
    with pytest.raises(TrainingError, match=rf"{P}x{P}x4 images but the config gives {P}x{P}x3"):
        check_checkpoint_input(model, (P, P, 3), path)
