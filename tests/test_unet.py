"""U-Net: structure, bad parameters, a few training steps with falling loss, .keras save/reload."""
import numpy as np
import pytest

import keras

from segkit.errors import ConfigError
from segkit.losses import get_loss
from segkit.metrics import get_metrics
from segkit.models.registry import build_model, load_model, set_precision


def tiny_data(n=8, size=32, bands=4, seed=0):
    """Images whose first band is thresholded into the mask: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, size, size, bands)).astype("float32")
    return x, (x[..., :1] > 0.5).astype("uint8")


def train_and_reload(model, tmp_path, loss="bce_dice", n_classes=1, activation="sigmoid", data=None):
    """Fit a few epochs (loss must fall), save to .keras, reload with plain keras, compare predictions."""
    x, y = tiny_data() if data is None else data
    model.compile(
        keras.optimizers.Adam(1e-2),
        loss=get_loss(loss, n_classes),
        metrics=get_metrics(["dice", "iou"], n_classes, activation=activation),
    )
    hist = model.fit(x, y, epochs=4, batch_size=4, verbose=0, shuffle=False)
    losses = hist.history["loss"]
    assert losses[-1] < losses[0], losses
    assert "dice" in hist.history and "iou" in hist.history
    path = tmp_path / "model.keras"
    model.save(path)
    again = keras.models.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), again.predict(x, verbose=0))
    assert type(again.loss).__name__ == type(model.loss).__name__
    return again


def test_unet_trains_saves_and_reloads(tmp_path):
    keras.utils.set_random_seed(1)
    model = build_model({"name": "unet", "depth": 2, "base_filters": 4}, (32, 32, 4), 1)
    assert model.output.shape == (None, 32, 32, 1)
    assert sum(type(la) is keras.layers.Conv2D for la in model.layers) == 2 * 5 + 1  # 5 blocks + the head
    assert sum(type(la) is keras.layers.Conv2DTranspose for la in model.layers) == 2
    train_and_reload(model, tmp_path)
    # the registry's loader gives the same model too
    np.testing.assert_array_equal(
        load_model(tmp_path / "model.keras").predict(tiny_data()[0], verbose=0),
        model.predict(tiny_data()[0], verbose=0),
    )


def test_unet_bilinear_softmax_no_batchnorm(tmp_path):
    keras.utils.set_random_seed(2)
    spec = {"name": "unet", "depth": 2, "base_filters": 4, "upsampling": "bilinear", "activation": "softmax",
            "batch_norm": False, "dropout": [0.0, 0.1, 0.2]}
    model = build_model(spec, (32, 32, 3), 2)
    assert not any(isinstance(la, keras.layers.BatchNormalization) for la in model.layers)
    assert sum(isinstance(la, keras.layers.Dropout) for la in model.layers) == 3  # levels 1, 2 (bridge), dec 1
    x, y = tiny_data(bands=3)
    onehot = np.concatenate([1 - y, y], axis=-1)
    out = model.predict(x[:2], verbose=0)
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-5)
    train_and_reload(model, tmp_path, loss="cce_dice", n_classes=2, activation="softmax", data=(x, onehot))


def test_mixed_precision_output_is_float32():
    try:
        set_precision("mixed_bfloat16")
        model = build_model({"name": "unet", "depth": 1, "base_filters": 2}, (16, 16, 4), 1)
        assert model.get_layer("enc0_conv1").compute_dtype == "bfloat16"
        out = model(np.zeros((1, 16, 16, 4), "float32"))
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
    finally:
        set_precision(None)
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.parametrize(
    "spec, shape, match",
    [
        ({"name": "unet", "depth": 3}, (36, 36, 4), "divisible by 2\\*\\*depth = 8"),
        ({"name": "unet", "upsampling": "bilinaer"}, (32, 32, 4), "did you mean 'bilinear'"),
        ({"name": "unet", "activation": "softmax"}, (32, 32, 4), "n_classes >= 2"),
        ({"name": "unet", "dropout": [0.1, 0.2]}, (32, 32, 4), "depth \\+ 1 = 5"),
        ({"name": "unet", "base_filter": 8}, (32, 32, 4),
                     "models.0: unknown unet key 'base_filter'; did you mean 'base_filters'"),
        ({"name": "unett"}, (32, 32, 4), "did you mean 'unet'"),
    ],
)
def test_bad_parameters_are_config_errors(spec, shape, match):
    with pytest.raises(ConfigError, match=match):
        build_model(spec, shape, 1)
    with pytest.raises(ConfigError, match="did you mean 'mixed_float16'"):
        set_precision("mixed_float61")


def test_forward_flops_counts_layers_by_hand():
    from segkit.models.cost import forward_flops

    x = keras.Input((16, 16, 4))
    y = keras.layers.Conv2D(8, 3, padding="same")(x)  # 16·16·9·4·8 MACs
    y = keras.layers.MaxPooling2D(2)(y)
    y = keras.layers.Conv2DTranspose(4, 2, strides=2)(y)  # 8·8 input pixels · 2·2·8·4
    y = keras.layers.Dense(3)(y)  # 16·16 positions · 4·3
    model = keras.Model(x, y)
    assert forward_flops(model) == 2 * (16 * 16 * 9 * 4 * 8 + 8 * 8 * 4 * 8 * 4 + 16 * 16 * 4 * 3)


def test_uncounted_layers_names_custom_layers_that_hide_kernels():
    from segkit.models.cost import forward_flops, uncounted_layers

    class Hidden(keras.layers.Layer):  # a dense layer forward_flops cannot see (as KerasHub's MiT blocks)
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = keras.layers.Dense(4)

        def call(self, x):
            return self.inner(x)

    x = keras.Input((8, 8, 3))
    y = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 1)(x))
    model = keras.Model(x, Hidden(name="hidden")(y))
    assert uncounted_layers(model) == ["hidden"]
    assert forward_flops(model) == 2 * 8 * 8 * 3 * 4  # the conv only: a lower bound
    assert uncounted_layers(keras.Model(x, y)) == []


@pytest.mark.parametrize(
    "spec, params_m, gflops",  # the hand-derived figures of shared/notes/models.md, 384×384×4 input
    [
        ({"name": "unet", "base_filters": 64}, 31.0, 217),
        ({"name": "fractal_unet", "columns": 3, "base_filters": 16}, 6.5, 46),
        ({"name": "fractal_unet", "columns": 3, "base_filters": 32}, 25.8, 183),
    ],
)
def test_model_cost_matches_hand_derived_figures(spec, params_m, gflops):
    from segkit.models.cost import forward_flops

    model = build_model(spec, (384, 384, 4), 1)
    assert model.count_params() / 1e6 == pytest.approx(params_m, rel=0.01)
    assert forward_flops(model) / 1e9 == pytest.approx(gflops, rel=0.01)


def test_every_batchnorm_of_the_u_nets_keeps_90_percent():
    for name in ("unet", "fractal_unet"):
        model = build_model({"name": name, "depth": 2, "base_filters": 4}, (32, 32, 1), 1)
        bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        assert bns and all(layer.momentum == pytest.approx(0.9) for layer in bns), name


def test_batchnorm_statistics_follow_a_short_run(name="unet"):
    """After 40 steps the first BatchNorm's moving statistics describe its input as the trained weights give it
    (momentum 0.9): at Keras' 0.99 they still hold 67 % of their initial (0, 1) and inference-mode predictions
    of a short run are far from training-mode ones (real TGS: val Dice 0.44 vs 0.75)."""
    keras.utils.set_random_seed(0)
    model = build_model({"name": name, "depth": 2, "base_filters": 4}, (32, 32, 1), 1)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(layer.momentum == pytest.approx(0.9) for layer in bns)
    rng = np.random.default_rng(0)
    x = (rng.random((16, 32, 32, 1)) * 200 + 50).astype("float32")  # raw range: first conv outputs far from (0, 1)
    y = (x > 150).astype("float32")
    model.compile(keras.optimizers.Adam(1e-4), loss="binary_crossentropy")
    model.fit(x, y, epochs=40, batch_size=16, verbose=0, shuffle=False)
    first = bns[0]
    feed = keras.Model(model.inputs, first.input)
    seen = keras.ops.convert_to_numpy(feed(x, training=False))
    mean, var = seen.mean(axis=(0, 1, 2)), seen.var(axis=(0, 1, 2))
    moving_mean, moving_var = (keras.ops.convert_to_numpy(v) for v in (first.moving_mean, first.moving_variance))
    # 0.9**40 = 1.5 % of the initial statistics is left (0.99**40: 67 %), plus the lag behind the changing weights
    np.testing.assert_allclose(moving_mean, mean, rtol=0.25, atol=1e-3 * np.abs(mean).max())
    np.testing.assert_allclose(moving_var, var, rtol=0.25)
