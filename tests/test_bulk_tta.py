"""Bulk TTA (predict._one_model): every augmentation of a batch in one stacked call on the device gives the
probabilities of predicting each augmentation alone, flipping it back in numpy and averaging; the stacked calls
stay within batch_size × T images; with several devices the batch is split across them.

The reference below never uses segkit's transforms: it flips with explicit numpy calls the outputs of
`model.predict_on_batch` on explicitly flipped inputs, resizing with cv2 for the other scales.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from segkit.models.layers import InputNormalisation
from segkit.predict import TTA, predict_ensemble, scaled_size

REPO = Path(__file__).resolve().parents[1]
BANDS, CLASSES = 3, 2
ALL = ["identity", "hflip", "vflip", "hvflip", "rot90", "rot180", "rot270", "transpose"]
FLIPS = ["identity", "hflip", "vflip", "hvflip", "rot180"]

# name -> (forward, inverse) on (B, H, W, C), written out with numpy's own calls (np.rot90 turns H towards W)
REFERENCE = {
    "identity": (lambda x: x, lambda y: y),
    "hflip": (lambda x: np.flip(x, 2), lambda y: np.flip(y, 2)),
    "vflip": (lambda x: np.flip(x, 1), lambda y: np.flip(y, 1)),
    "hvflip": (lambda x: np.flip(x, (1, 2)), lambda y: np.flip(y, (1, 2))),
    "rot90": (lambda x: np.rot90(x, 1, (1, 2)), lambda y: np.rot90(y, 1, (2, 1))),
    "rot180": (lambda x: np.rot90(x, 2, (1, 2)), lambda y: np.rot90(y, 2, (2, 1))),
    "rot270": (lambda x: np.rot90(x, 3, (1, 2)), lambda y: np.rot90(y, 3, (2, 1))),
    "transpose": (lambda x: np.swapaxes(x, 1, 2), lambda y: np.swapaxes(y, 1, 2)),
}


class Recorder(keras.layers.Layer):
    """Passes its input through and notes the shape (and JAX sharding) of every concrete batch it sees: the
    batches of the model's forward calls when the model runs eagerly."""

    def __init__(self, seen: list | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen = [] if seen is None else seen

    def call(self, x):
        if isinstance(x.shape[0], int):  # not Keras' symbolic build (None) nor JAX's shape inference
            sharding = getattr(x, "sharding", None)
            self.seen.append((tuple(x.shape), None if sharding is None else len(sharding.device_set)))
        return x


def conv_model(seed: int, head: bool = False, record: bool = False, old: bool = False) -> keras.Model:
    """A small fully convolutional net of any input size (random fixed weights: 3×3 'same' convolutions see
    the border, so every flip and turn gives other probabilities); `head` adds the classification head; `old`
    leaves out the InputNormalisation layer (a checkpoint of an older segkit: predict normalises for it)."""
    inp = keras.Input((None, None, BANDS))
    x = Recorder(name="recorder")(inp) if record else inp
    x = keras.layers.Rescaling(1 / 255)(x) if old else InputNormalisation([1 / 255] * BANDS, [0.0] * BANDS)(x)
    f = keras.layers.Conv2D(6, 3, padding="same", activation="tanh")(x)
    mask = keras.layers.Conv2D(CLASSES, 3, padding="same", activation="sigmoid", name="mask")(f)
    outputs = mask
    if head:
        pooled = keras.layers.GlobalAveragePooling2D()(f)
        outputs = [mask, keras.layers.Dense(CLASSES, activation="sigmoid", name="label")(pooled)]
    model = keras.Model(inp, outputs)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.6, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def reference(model, raw: np.ndarray, tta: list[str], scales=(1.0,)):
    """The mean over tta × scales, one predict_on_batch per augmentation, flipped back and resized in numpy."""
    import cv2

    from segkit.models.registry import split_outputs

    x = raw.astype(np.float32)
    h, w = x.shape[1:3]
    total, label = 0.0, 0.0
    for scale in scales:
        sh, sw = scaled_size(model, (h, w), scale)
        xs = np.stack([cv2.resize(im, (sw, sh), interpolation=cv2.INTER_LINEAR) for im in x])
        for name in tta:
            forward, inverse = REFERENCE[name]
            mask, lab = split_outputs(model.predict_on_batch(np.ascontiguousarray(forward(xs))))
            mask = np.ascontiguousarray(inverse(np.asarray(mask, np.float64)))
            total = total + np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)
                                      for m in mask])
            if lab is not None:
                label = label + np.asarray(lab, np.float64)
    n = len(tta) * len(scales)
    return total / n, (None if np.isscalar(label) else label / n)


def run(models, raw, tta, batch_size=2, **kw):
    def normalise(image):  # for `old` models only; those divide by 255 themselves, too
        return image

    batches = list(predict_ensemble(models, SimpleNamespace(images=raw), np.arange(len(raw)), normalise, tta,
                                    batch_size, quiet=True, **kw))
    label = None if batches[0].label is None else np.concatenate([b.label for b in batches])
    return np.concatenate([b.probs for b in batches]), label


def images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, BANDS)).astype(np.uint8)


@pytest.mark.parametrize("h, w, tta", [(32, 32, ALL), (32, 64, ALL), (32, 64, FLIPS)])
def test_bulk_matches_one_call_per_augmentation(h, w, tta):
    """Square and non-square batches (rot90 / transpose of a 32×64 batch: a second stack at 64×32), five
    images in batches of two."""
    model = conv_model(1)
    raw = images(5, h, w)
    got, label = run([model], raw, tta)
    want, _ = reference(model, raw, tta)
    assert got.shape == (5, h, w, CLASSES) and got.dtype == np.float32 and label is None
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the check has teeth: each augmentation alone gives other probabilities
    one = [reference(model, raw, [t])[0] for t in tta[:3]]
    assert min(np.abs(a - b).max() for k, a in enumerate(one) for b in one[k + 1:]) > 1e-3


def test_bulk_with_scales_and_a_classification_head():
    """Two scales (1.5: the batch resized to 64×96 and back) and a two-output model: mask and head averaged."""
    model = conv_model(2, head=True)
    raw = images(3, 32, 64, seed=1)
    tta = ["identity", "hflip", "rot90", "transpose"]
    got, label = run([model], raw, tta, scales=(1.0, 1.5))
    want, want_label = reference(model, raw, tta, scales=(1.0, 1.5))
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(label, want_label, atol=1e-5)
    assert label.shape == (3, CLASSES) and label.dtype == np.float32
    assert np.abs(reference(model, raw, tta)[0] - want).max() > 1e-3  # the second scale counts


def test_two_models_with_weights_and_an_own_tta_entry(monkeypatch):
    """An augmentation added to TTA by a user (numpy functions) runs beside the bulk ones; weights apply; a
    checkpoint without the normalisation layer gets normalised input."""
    monkeypatch.setitem(TTA, "flip_w_twice", (lambda x: x[:, :, ::-1], lambda y: y[:, :, ::-1]))
    models = [conv_model(3, old=True), conv_model(4, head=True)]
    raw = images(4, 32, 32, seed=2)
    tta = ["identity", "rot90", "flip_w_twice"]
    got, label = run(models, raw, tta, batch_size=3, weights=[1.0, 3.0])
    each = [reference(m, raw, ["identity", "rot90", "hflip"]) for m in models]  # the user's entry is an hflip
    np.testing.assert_allclose(got, (each[0][0] + 3 * each[1][0]) / 4, atol=1e-5)
    np.testing.assert_allclose(label, each[1][1], atol=1e-5)


@pytest.mark.parametrize("h, w, groups", [(32, 32, 1), (32, 64, 2)])
def test_one_stacked_call_per_shape_within_batch_size_times_t(h, w, groups):
    """The model (run eagerly, so a layer sees each call's concrete batch) gets one call per batch, scale and
    shape group, each of at most batch_size × T images, and every image × augmentation exactly once."""
    model = conv_model(5, record=True)
    model.run_eagerly = True
    seen = model.get_layer("recorder").seen
    raw = images(5, h, w, seed=3)
    batch_size, scales = 2, (1.0, 1.5)
    got, _ = run([model], raw, ALL, batch_size=batch_size, scales=scales)
    sizes = [shape[0] for shape, _ in seen]
    assert len(sizes) == 3 * len(scales) * groups  # batches of 2, 2, 1
    assert max(sizes) <= batch_size * len(ALL)
    assert sum(sizes) == len(raw) * len(ALL) * len(scales)
    if groups == 2:  # the turned variants ran at (w, h), the others at (h, w)
        assert {shape[1:3] for shape, _ in seen if shape[1] < shape[2]} and {
            shape[1:3] for shape, _ in seen if shape[1] > shape[2]}
    seen.clear()
    np.testing.assert_allclose(got, reference(model, raw, ALL, scales)[0], atol=1e-5)


@pytest.mark.skipif(os.environ.get("SEGKIT_TEST_DEVICES") != "2" or keras.backend.backend() != "jax",
                    reason="needs JAX with two (simulated) devices: run by test_bulk_tta_on_jax")
def test_jax_data_parallel_splits_the_batch():
    """Under keras.distribution.DataParallel over two devices each stacked call is sharded over both, an odd
    batch is padded to an even one (3 images × 4 augmentations -> 16) and trimmed, and the probabilities are
    those of a single device."""
    import jax

    assert len(jax.devices()) == 2
    raw = images(5, 32, 32, seed=4)
    plain = conv_model(6, head=True)
    want, want_label = reference(plain, raw, ALL[:4])
    keras.distribution.set_distribution(keras.distribution.DataParallel())
    try:
        model = conv_model(6, head=True, record=True)  # built (and its weights placed) under the distribution
        model.run_eagerly = True
        got, label = run([model], raw, ALL[:4], batch_size=3)
        seen = model.get_layer("recorder").seen
    finally:
        keras.distribution.set_distribution(None)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(label, want_label, atol=1e-5)
    assert [shape[0] for shape, _ in seen] == [16, 8] and all(devices == 2 for _, devices in seen)  # 3 -> 4


RUNNER = """
import sys
import keras
import pytest
assert keras.backend.backend() == "jax", keras.backend.backend()
print(f"backend={keras.backend.backend()}")
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-m", "not jax and not slow", sys.argv[1]]))
"""


@pytest.mark.jax
def test_bulk_tta_on_jax():
    """This file again under JAX with two simulated CPU devices (the data-parallel test runs there)."""
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "SEGKIT_TEST_DEVICES": "2"}
    proc = subprocess.run([sys.executable, "-c", RUNNER, __file__], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert "backend=jax" in proc.stdout and " passed" in last and "skipped" not in last, proc.stdout[-2000:]


TF_STRATEGY = """
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
sys_path = __import__("sys").path.insert(0, "tests")
from test_bulk_tta import ALL, conv_model, images, reference, run
from segkit.predict import _replicas
raw = images(5, 32, 32, seed=5)
want, want_label = reference(conv_model(7, head=True), raw, ALL[:4])
strategy = tf.distribute.MirroredStrategy(tf.config.list_logical_devices("CPU"))
with strategy.scope():
    model = conv_model(7, head=True, record=True)
model.run_eagerly = True
assert _replicas(model) == 2
got, label = run([model], raw, ALL[:4], batch_size=3)
np.testing.assert_allclose(got, want, atol=1e-5)
np.testing.assert_allclose(label, want_label, atol=1e-5)
sizes = sorted(shape[0] for shape, _ in model.get_layer("recorder").seen)
assert sizes == [4, 4, 8, 8], sizes  # each call (3 -> 4 images x 4 = 16, and 8) split over two replicas
print("split ok")
"""


@pytest.mark.slow
def test_tf_mirrored_strategy_splits_the_batch():
    """TensorFlow with two logical CPU devices: a model built under MirroredStrategy gets each stacked call
    split over both replicas (Keras' predict), with a single device's probabilities."""
    pytest.importorskip("tensorflow")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", TF_STRATEGY], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "split ok" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-4000:]


PREDICT_CLI = r'''
import sys
from segkit.cli import main
sys.exit(main(sys.argv[1:]))
'''


@pytest.mark.slow  # a backend start-up per command and a real (tiny) fold
@pytest.mark.jax
def test_segkit_predict_on_two_jax_devices_writes_the_one_device_submission(tmp_path):
    """`segkit predict` on two devices (JAX DataParallel over two simulated CPU devices: train.devices auto, as
    saved with the run) splits each batch across them and writes the very submission one device writes."""
    pytest.importorskip("jax")
    from segkit.data.synth import generate

    root = generate("cloud38", tmp_path / "synth", seed=4, patch_size=32)
    common = [f"data.root={root}", "data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}",
              f"output.runs_dir={tmp_path / 'runs'}", "train.folds=2", "train.epochs=1",
              "train.batch_size=4", "train.workers=1", "train.verbose=0", "predict.batch_size=5",
              "predict.tta=[identity,hflip,rot90]", "models=[{name: unet, tag: unet, depth: 2, base_filters: 4}]"]
    one_device = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    two_devices = dict(one_device, XLA_FLAGS="--xla_force_host_platform_device_count=2")

    def segkit(env, *args):
        proc = subprocess.run([sys.executable, "-c", PREDICT_CLI, *args, *common], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    segkit(two_devices, "train", "demo")
    out = segkit(two_devices, "predict", "demo", f"--out={tmp_path / 'two.csv'}")
    assert "[predict] 2 × cpu: each batch of 5 split across them" in out
    out = segkit(one_device, "predict", "demo", f"--out={tmp_path / 'one.csv'}")
    assert "split across" not in out
    one, two = (tmp_path / "one.csv").read_text(), (tmp_path / "two.csv").read_text()
    assert one == two and len(one.splitlines()) > 2
