"""segkit.devices: the precision / XLA / device-count choices (pure, the device injected), the new train keys'
checks, the feed's padded last batch, device-side augmentation, and data-parallel training on two devices
simulated on CPU (TensorFlow logical CPUs, JAX --xla_force_host_platform_device_count) in subprocesses, since a
backend's device count is fixed when it initialises."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from segkit.config import AugmentConfig, TrainConfig, load_config
from segkit.data import device_augment
from segkit.data.generator import SegmentationDataset
from segkit.devices import Device, choose_jit, choose_precision, plan_devices, resolve_device_count
from segkit.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


# --- choices, with the device described by hand -------------------------------------------------

@pytest.mark.parametrize("kind,name,cc,expected", [
    ("gpu", "Tesla T4", (7, 5), "mixed_float16"),
    ("gpu", "Tesla V100-SXM2-16GB", (7, 0), "mixed_float16"),
    ("gpu", "Tesla P100-PCIE-16GB", (6, 0), "mixed_float16"),
    ("gpu", "NVIDIA GeForce GTX 1080", (6, 1), "float32"),  # Pascal consumer: fp16 at 1/64 rate
    ("gpu", "NVIDIA A100-SXM4-40GB", (8, 0), "mixed_bfloat16"),
    ("gpu", "NVIDIA L4", (8, 9), "mixed_bfloat16"),
    ("gpu", "NVIDIA H100 80GB HBM3", (9, 0), "mixed_bfloat16"),
    ("gpu", "Tesla T4", None, "mixed_float16"),  # capability from the name
    ("gpu", "NVIDIA A100-SXM4-80GB", None, "mixed_bfloat16"),
    ("gpu", "Some Future GPU", None, "mixed_float16"),
    ("tpu", "TPU v5 lite", None, "mixed_bfloat16"),
    ("cpu", "cpu", None, "float32"),
])
def test_auto_precision_follows_the_device(kind, name, cc, expected):
    assert choose_precision(kind=kind, name=name, compute_capability=cc) == expected


@pytest.mark.parametrize("setting,expected", [("float32", "float32"), (None, "float32"), (False, "float32"),
                                              ("off", "float32"), ("mixed_float16", "mixed_float16"),
                                              ("mixed_bfloat16", "mixed_bfloat16")])
def test_explicit_precision_wins_over_the_device(setting, expected):
    assert choose_precision("gpu", "NVIDIA A100", (8, 0), setting=setting) == expected
    assert choose_precision("cpu", setting=setting) == expected


def test_jit_choice():
    assert choose_jit("gpu", "tensorflow") is True
    assert choose_jit("cpu", "tensorflow") is False  # as segkit trained on CPU before
    assert choose_jit("gpu", "tensorflow", n_devices=2) is False  # Keras turns XLA off under tf.distribute
    assert choose_jit("cpu", "jax") is True and choose_jit("tpu", "jax", n_devices=8) is True
    assert choose_jit("gpu", "torch") is False
    assert choose_jit("cpu", "tensorflow", setting=True) is True
    assert choose_jit("gpu", "jax", setting=False) is False


def test_device_count():
    assert resolve_device_count("auto", 2, "tensorflow", keras_version=(3, 15, 1)) == (2, None)
    assert resolve_device_count(1, 2, "jax") == (1, None)
    n, note = resolve_device_count("auto", 2, "torch")
    assert n == 1 and "not supported" in note and "one" in note
    with pytest.raises(ConfigError, match=r"train\.devices: 3 devices asked .* sees 2"):
        resolve_device_count(3, 2, "tensorflow")
    # Keras < 3.8 gets MirroredStrategy's gradients and metrics wrong (keras#19891): one device, said or refused
    n, note = resolve_device_count("auto", 2, "tensorflow", keras_version=(3, 5, 0))
    assert n == 1 and "keras#19891" in note and "upgrade keras" in note
    with pytest.raises(ConfigError, match=r"train\.devices: 2 TensorFlow devices need Keras ≥ 3\.8"):
        resolve_device_count(2, 2, "tensorflow", keras_version=(3, 5, 0))
    assert resolve_device_count(2, 2, "tensorflow", keras_version=(3, 8, 0)) == (2, None)
    assert resolve_device_count(2, 2, "jax", keras_version=(3, 5, 0)) == (2, None)
    # predict caps: a run trained on two devices predicts on the one this machine has
    assert resolve_device_count(2, 1, "tensorflow", keras_version=(3, 8, 0), cap=True) == (1, None)
    assert resolve_device_count(2, 2, "tensorflow", keras_version=(3, 5, 0), cap=True)[0] == 1


def test_plan_with_injected_devices_says_what_it_chose():
    t4 = Device("gpu", "Tesla T4", (7, 5), handle="/device:GPU:0")
    plan = plan_devices(TrainConfig(batch_size=8), backend="tensorflow", devices=[t4, t4], keras_version=(3, 9))
    assert (plan.n, plan.precision, plan.jit_compile) == (2, "mixed_float16", False)
    line = plan.describe(8)
    assert "2 devices × 8 = global batch 16" in line and "mixed_float16" in line and "XLA off" in line
    assert plan.batch_multiple(training=True) == 2 and plan.batch_multiple(training=False) == 1
    one = plan_devices(TrainConfig(batch_size=8, devices=1), backend="jax",
                       devices=[Device("tpu", "TPU v5 lite")] * 8)
    assert (one.n, one.precision, one.jit_compile, one.global_batch(8)) == (1, "mixed_bfloat16", True, 8)
    assert plan_devices(TrainConfig(), backend="jax", devices=[Device("tpu")] * 8).batch_multiple(False) == 8


@pytest.mark.parametrize("override,key", [
    ("train.devices=0", "train.devices"), ("train.devices=many", "train.devices"),
    ("train.devices=true", "train.devices"), ("train.mixed_precision=mixed_flaot16", "train.mixed_precision"),
    ("train.mixed_precision=16", "train.mixed_precision"), ("train.jit_compile=yes please", "train.jit_compile"),
    ("train.augment_on_device=2", "train.augment_on_device"),
])
def test_bad_device_settings_name_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        load_config("demo", [override])


def test_device_settings_defaults_and_values():
    tc = load_config("demo").train
    assert (tc.devices, tc.mixed_precision, tc.jit_compile, tc.augment_on_device) == ("auto", "auto", "auto", False)
    tc = load_config("demo", ["train.devices=2", "train.mixed_precision=null", "train.jit_compile=false"]).train
    assert (tc.devices, tc.mixed_precision, tc.jit_compile) == (2, None, False)


# --- the feed's last batch ----------------------------------------------------------------------

def tiny_cache(n=13, size=8, bands=2, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((n, size, size, bands)).astype(np.float32)
    return SimpleNamespace(images=images, masks=(images[..., :1] > 0.5).astype(np.uint8))


def test_last_batch_padded_to_the_device_count_with_zero_weights():
    cache = tiny_cache(n=5)
    ds = SegmentationDataset(cache, np.arange(5), batch_size=4, shuffle=True, seed=3, pad_to=2)
    assert len(ds) == 2
    x0, y0, w0 = ds[0]
    x1, y1, w1 = ds[1]
    assert x0.shape[0] == 4 and list(w0) == [1, 1, 1, 1]
    assert x1.shape[0] == 2 and list(w1) == [1, 0]  # one real item, one repeat weighted 0
    order = ds.order(0)
    assert np.array_equal(x1[1], cache.images[order[0]])  # the repeat is the epoch's first item
    plain = SegmentationDataset(cache, np.arange(5), batch_size=4, pad_to=1)[1]
    assert len(plain) == 2 and plain[0].shape[0] == 1  # one device: unchanged (x, y)


# --- device-side augmentation -------------------------------------------------------------------

def encoded_batch(n=16, h=8, w=8, seed=0):
    """Images whose channel 0 is the mask (asymmetric shapes, so every flip / rotation shows) and channel 1
    noise; masks as float32 (B, H, W, 1)."""
    rng = np.random.default_rng(seed)
    masks = (rng.random((n, h, w, 1)) > 0.6).astype(np.float32)
    masks[:, 0, :3] = 1.0  # an L-shaped marker in one corner: no flip or quarter turn leaves it in place
    masks[:, :2, 0] = 1.0
    noise = rng.random((n, h, w, 1)).astype(np.float32) + 2.0
    return np.concatenate([masks, noise], axis=-1), masks


def test_device_augmentation_keeps_image_and_mask_aligned():
    x, y = encoded_batch()
    probs = {"hflip": 0.5, "vflip": 0.5, "rot90": 1.0, "brightness_contrast": 0.0}
    draws = np.random.default_rng(1).random((len(x), device_augment.N_DRAWS)).astype(np.float32)
    xa, ya = (keras.ops.convert_to_numpy(t) for t in device_augment.augment_batch(x, y, draws, probs))
    assert np.array_equal(xa[..., :1], ya)  # the image's mask channel moved exactly as the mask
    changed = [not np.array_equal(xa[i], x[i]) for i in range(len(x))]
    assert 0 < sum(changed) < len(x)  # some images were transformed, not all (k = 0 and no flip happens)
    for i in range(len(x)):  # each result is one of the 8 symmetries of the square, of image and mask alike
        options = [np.rot90(f, r, axes=(0, 1)) for f in (x[i], x[i][:, ::-1]) for r in range(4)]
        assert any(np.array_equal(xa[i], o) for o in options)


def test_device_brightness_contrast_changes_the_image_only():
    x, y = encoded_batch()
    draws = np.random.default_rng(2).random((len(x), device_augment.N_DRAWS)).astype(np.float32)
    probs = {"hflip": 0, "vflip": 0, "rot90": 0, "brightness_contrast": 1.0}
    xa, ya = (keras.ops.convert_to_numpy(t) for t in device_augment.augment_batch(x, y, draws, probs, (0, 3)))
    assert np.array_equal(ya, y)
    assert not np.allclose(xa[..., 1], x[..., 1]) and xa.max() <= 3
    assert np.array_equal(xa == 0, x == 0)  # zero (no-data) pixels stay zero
    alpha = 1 + (draws[:, 5] * 2 - 1) * 0.1
    beta = (draws[:, 6] * 2 - 1) * 0.1
    expected = np.clip(x * alpha[:, None, None, None] + (beta * x.mean(axis=(1, 2, 3)))[:, None, None, None], 0, 3)
    np.testing.assert_allclose(xa[x != 0], expected[x != 0], rtol=1e-5)


def channel0_model(h=8, w=8):
    """A model whose output is its input's channel 0 (a 1×1 convolution fixed to [1, 0], no bias)."""
    inp = keras.Input((h, w, 2))
    conv = keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer="zeros", name="pick")
    model = keras.Model(inp, conv(inp))
    conv.kernel.assign(np.array([1.0, 0.0], np.float32).reshape(1, 1, 2, 1))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mae")
    return model


def test_augment_on_device_runs_in_the_train_step_and_stays_out_of_the_checkpoint(tmp_path):
    x, y = encoded_batch()
    geometric = channel0_model()
    device_augment.attach(geometric, AugmentConfig(hflip=1, vflip=0.5, rot90=1, brightness_contrast=0), seed=5)
    losses = geometric.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False).history["loss"]
    assert max(losses) == 0.0  # image and mask moved together inside fit
    bright = channel0_model()
    device_augment.attach(bright, AugmentConfig(hflip=0, vflip=0, rot90=0, brightness_contrast=1), seed=5)
    assert min(bright.fit(x, y, batch_size=8, epochs=1, verbose=0).history["loss"]) > 0  # x changed, y not
    assert channel0_model().fit(x, y, batch_size=8, epochs=1, verbose=0).history["loss"][0] == 0.0
    bright.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert len(loaded.weights) == len(bright.weights) == 1  # no random state or layer added
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), x[..., :1])  # inert at inference
    assert "train_step" not in vars(loaded)


def test_cpu_feed_keeps_only_what_the_device_does_not():
    cfg = AugmentConfig(hflip=0.5, vflip=0.5, rot90=0.5, shift_scale_rotate=0.3, brightness_contrast=0.3)
    cpu = device_augment.cpu_part(cfg)
    assert (cpu.hflip, cpu.vflip, cpu.rot90, cpu.brightness_contrast, cpu.shift_scale_rotate) == (0, 0, 0, 0, 0.3)


# --- two simulated devices, in subprocesses -----------------------------------------------------

TWO_DEVICES = r'''
import json, os, sys
backend, out = sys.argv[1], sys.argv[2]
if backend == "tensorflow":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
from types import SimpleNamespace
from segkit.config import AugmentConfig, TrainConfig
from segkit.data import device_augment
from segkit.data.generator import SegmentationDataset
from segkit.devices import list_devices, plan_devices
from segkit.losses import compile_args, get_loss
from segkit.metrics import get_metrics
from segkit.models.registry import build_model, load_model

assert keras.backend.backend() == backend
rng = np.random.default_rng(0)
images = rng.random((13, 16, 16, 2)).astype(np.float32)
cache = SimpleNamespace(images=images, masks=(images[..., :1] > 0.5).astype(np.uint8))
spec = {"name": "unet", "depth": 1, "base_filters": 4, "batch_norm": False}
w0 = build_model(spec, (16, 16, 2), 1).get_weights()
result = {"devices": len(list_devices())}
for n in (1, 2):
    keras.utils.set_random_seed(1)
    tc = TrainConfig(devices=n, batch_size=8 // n)
    plan = plan_devices(tc)
    batch = plan.global_batch(tc.batch_size)
    train = SegmentationDataset(cache, np.arange(12), batch, pad_to=plan.batch_multiple(True))
    odd = SegmentationDataset(cache, np.arange(13), batch, shuffle=True, pad_to=plan.batch_multiple(True))
    val = SegmentationDataset(cache, np.arange(13), batch, pad_to=plan.batch_multiple(False))
    with plan.scope():
        model = build_model(spec, (16, 16, 2), 1)
        model.set_weights(w0)
        # Adam as segkit trains: Keras < 3.8 sums the replicas' gradients under MirroredStrategy (keras#20609),
        # a scale Adam's update does not see
        model.compile(optimizer=keras.optimizers.Adam(0.01), jit_compile=plan.jit_compile,
                      **compile_args(get_loss("bce_dice"), get_metrics(["dice"])))
        feed, callbacks = train.keras_feed()
        loss = model.fit(feed, epochs=3, verbose=0, shuffle=False, callbacks=callbacks).history["loss"]
        device_augment.attach(model, AugmentConfig(), seed=3)  # on the device, per replica
        odd_feed, callbacks = odd.keras_feed()  # 13 images: the last batch (5) padded to 6
        model.fit(odd_feed, validation_data=val.keras_feed()[0], epochs=1, verbose=0, callbacks=callbacks)
        pred = model.predict(images[:12], batch_size=batch, verbose=0)
        model.save(os.path.join(out, f"m{n}.keras"))
    result[n] = {"plan": plan.describe(tc.batch_size), "loss": [float(v) for v in loss]}
    np.save(os.path.join(out, f"pred{n}.npy"), pred)
    keras.backend.clear_session()
loaded = load_model(os.path.join(out, "m2.keras"))  # the two-device checkpoint, on one device
np.save(os.path.join(out, "reloaded.npy"), loaded.predict(images[:12], batch_size=5, verbose=0))
json.dump(result, open(os.path.join(out, "result.json"), "w"))
'''


def run_two_devices(backend, tmp_path):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = subprocess.run([sys.executable, "-c", TWO_DEVICES, backend, str(tmp_path)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["devices"] == 2
    assert "1 device × 8 = global batch 8" in result["1"]["plan"]
    assert "2 devices × 4 = global batch 8" in result["2"]["plan"]
    one, two = np.array(result["1"]["loss"]), np.array(result["2"]["loss"])
    assert one[-1] < one[0]  # it learns
    np.testing.assert_allclose(two, one, rtol=1e-4, atol=1e-5)  # same trajectory at the same global batch
    # the same weights on one device, other batches: XLA may fuse differently (seen: 3 of 3,072 values 1 ulp off)
    np.testing.assert_allclose(np.load(tmp_path / "reloaded.npy"), np.load(tmp_path / "pred2.npy"),
                               rtol=1e-6, atol=1e-6)
    return result


OLD_KERAS = "MirroredStrategy needs Keras >= 3.8 (keras#19891); segkit trains on one device there"


@pytest.mark.skipif(resolve_device_count("auto", 2, "tensorflow")[0] == 1, reason=OLD_KERAS)
def test_two_tensorflow_devices_train_like_one(tmp_path):
    result = run_two_devices("tensorflow", tmp_path)
    assert "MirroredStrategy" in result["2"]["plan"]


@pytest.mark.jax
def test_two_jax_devices_train_like_one(tmp_path):
    pytest.importorskip("jax")
    result = run_two_devices("jax", tmp_path)
    assert "DataParallel" in result["2"]["plan"] and "XLA on" in result["2"]["plan"]


CLI_ON_TWO_DEVICES = r'''
import os, sys
if os.environ["KERAS_BACKEND"] == "tensorflow":  # JAX: XLA_FLAGS gives it two host devices
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu[0], [tf.config.LogicalDeviceConfiguration()] * 2)
from segkit.cli import main
sys.exit(main(sys.argv[1:]))
'''


@pytest.mark.slow  # two backend start-ups and a real fold: about a minute of CPU
@pytest.mark.parametrize("backend", [
    pytest.param("tensorflow", marks=pytest.mark.skipif(resolve_device_count("auto", 2, "tensorflow")[0] == 1,
                                                        reason=OLD_KERAS)),
    pytest.param("jax", marks=pytest.mark.jax)])
def test_segkit_train_on_two_devices_resumes_and_writes_oof(tmp_path, backend):
    """`segkit train` through the fold loop on two devices (TF MirroredStrategy / JAX DataParallel) with EMA:
    killed after an epoch, resumed, OOF written; the fold's best checkpoint then predicts on one device."""
    pytest.importorskip(backend)
    from segkit.data.synth import generate
    from segkit.models.registry import load_model

    root = generate("cloud38", tmp_path / "synth", seed=3, patch_size=32)
    overrides = [f"data.root={root}", "data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}",
                 f"output.runs_dir={tmp_path / 'runs'}", "train.folds=2", "train.train_folds=[0]", "train.epochs=4",
                 "train.batch_size=3", "train.devices=2", "train.ema=0.9", "train.workers=1", "train.verbose=0",
                 "train.early_stopping_patience=50", "predict.tta=[identity]",
                 "models=[{name: unet, tag: unet, depth: 2, base_filters: 4}]"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="",
               JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    args = [sys.executable, "-c", CLI_ON_TWO_DEVICES, "train", "demo", *overrides]
    fold = tmp_path / "runs" / "demo" / "unet" / "fold_0"
    proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 500
    while time.time() < deadline and proc.poll() is None:
        state = fold / "state.json"
        if state.is_file() and json.loads(state.read_text())["epoch"] >= 1:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    first = proc.communicate(timeout=60)[0]
    assert proc.returncode == -signal.SIGKILL, first
    assert "[train] devices: 2 × cpu" in first and "2 devices × 3 = global batch 6" in first, first
    how = {"tensorflow": "MirroredStrategy), 2 devices", "jax": "DataParallel), 2 devices"}[backend]
    assert how in first and f"precision float32, XLA {'off' if backend == 'tensorflow' else 'on'}" in first
    epoch = json.loads((fold / "state.json").read_text())["epoch"]
    assert epoch < 4 and not (fold / "done.json").exists()

    second = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"[unet fold 0] resuming after epoch {epoch}" in second.stdout
    done = json.loads((fold / "done.json").read_text())
    assert done["epochs"] == 4 and done["devices"]["n"] == 2 and done["devices"]["global_batch"] == 6
    assert done["averaging"]["kind"] == "ema"
    history = [line.split(",")[0] for line in (fold / "history.csv").read_text().splitlines()[1:]]
    assert history == ["1", "2", "3", "4"]  # no epoch lost or repeated across the kill
    oof, index = np.load(fold / "oof.npy"), np.load(fold / "oof_index.npy")
    assert oof.shape == (len(index), 32, 32, 1) and np.isfinite(oof).all() and 0 <= oof.min() <= oof.max() <= 1
    model = load_model(fold / "best.keras")  # saved under the strategy, loaded here on one CPU device
    x = np.zeros((2, 32, 32, 4), np.float32)
    assert model.predict(x, verbose=0).shape == (2, 32, 32, 1)


def test_auto_precision_on_a_t4_trains_with_float32_outputs_and_loss():
    from segkit.losses import compile_args, get_loss
    from segkit.metrics import get_metrics
    from segkit.models.registry import build_model, set_precision

    t4 = Device("gpu", "Tesla T4", (7, 5))
    plan = plan_devices(TrainConfig(), backend=keras.backend.backend(), devices=[t4])
    assert plan.precision == "mixed_float16"
    try:
        set_precision(plan.precision)
        model = build_model({"name": "unet", "depth": 1, "base_filters": 4}, (8, 8, 2), 1)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), **compile_args(get_loss("bce_dice"),
                                                                             get_metrics(["dice"])))
        x, y = encoded_batch(n=4)
        assert keras.backend.standardize_dtype(model(x).dtype) == "float32"
        assert any(keras.backend.standardize_dtype(layer.compute_dtype) == "float16" for layer in model.layers)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)  # Keras scales fp16 losses
        logs = model.train_on_batch(x, y, return_dict=True)
        assert np.isfinite(logs["loss"]) and 0 <= logs["dice"] <= 1
    finally:
        set_precision(None)
