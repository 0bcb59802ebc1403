"""TTA + ensemble against models with a known analytic output, the expected probabilities computed in numpy.

Each model is `sigmoid(x·w + a·(W − j) + b·(H − i) + c)` per class at pixel (i, j): a fixed 1×1 convolution
of the normalised bands plus a position ramp. The ramp is built from the input itself with plain Keras layers
(ones = Rescaling(0, offset=1)(x); a 'same'-padded row/column convolution of the ones counts the pixels to the
right of / below each pixel), so it runs on every backend. Because of the ramp the output depends on where a
pixel sits, so every TTA gives a different answer: a forward transform whose inverse is wrong (or an average
weighted wrongly) cannot match. The expected values below never use segkit's transforms; they place each
original pixel in the transformed image by explicit coordinate formulas.
"""
from __future__ import annotations

from types import SimpleNamespace

import keras
import numpy as np
import pytest

from segkit.models.layers import InputNormalisation
from segkit.predict import TTA, predict_probabilities

BANDS, CLASSES = 3, 2
SCALE = 1 / 65535  # the models take raw uint16 images (their first layer divides), like segkit checkpoints


def ramp_model(h: int, w: int, params: dict, raw_input: bool = True) -> keras.Model:
    """The analytic model for (h, w, BANDS) images; `raw_input=False` builds it without InputNormalisation
    (a checkpoint from before segkit had the layer), so it takes normalised images."""
    inp = keras.Input((h, w, BANDS))
    x = InputNormalisation([SCALE] * BANDS, [0.0] * BANDS)(inp) if raw_input else inp
    ones = keras.layers.Rescaling(0.0, offset=1.0)(x)
    right = keras.layers.Conv2D(1, (1, 2 * w - 1), padding="same", use_bias=False)  # pixels j..w-1: w - j
    below = keras.layers.Conv2D(1, (2 * h - 1, 1), padding="same", use_bias=False)  # pixels i..h-1: h - i
    head = keras.layers.Conv2D(CLASSES, 1)
    out = keras.layers.Activation("sigmoid")(head(keras.layers.Concatenate()([x, right(ones), below(ones)])))
    model = keras.Model(inp, out)
    for layer, size in ((right, (1, 2 * w - 1)), (below, (2 * h - 1, 1))):
        kernel = np.zeros(size + (BANDS, 1), np.float32)
        kernel.reshape(-1, BANDS)[max(size) // 2:, 0] = 1.0  # the centre tap and everything after it, band 0
        layer.set_weights([kernel])
    head.set_weights([np.vstack([params["w"], params["a"], params["b"]])[None, None].astype(np.float32),
                      params["c"].astype(np.float32)])
    return model


def position_in_transformed(name: str, h: int, w: int):
    """(i', j', H', W'): where original pixel (i, j) lands in the image that TTA `name` feeds the model
    (np.rot90 turns counter-clockwise), as (h, w) grids, and the transformed image's size."""
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return {
        "identity": (i, j, h, w),
        "hflip": (i, w - 1 - j, h, w),
        "vflip": (h - 1 - i, j, h, w),
        "hvflip": (h - 1 - i, w - 1 - j, h, w),
        "rot90": (w - 1 - j, i, w, h),
        "rot180": (h - 1 - i, w - 1 - j, h, w),
        "rot270": (j, h - 1 - i, w, h),
        "transpose": (j, i, w, h),
    }[name]


def expected_probabilities(raw: np.ndarray, models: list[dict], tta: list[str]) -> np.ndarray:
    """The mean over models × TTA of the analytic output, mapped back to the original pixel grid."""
    x = raw.astype(np.float64) * SCALE
    h, w = raw.shape[1:3]
    total = np.zeros(raw.shape[:3] + (CLASSES,))
    for p in models:
        for name in tta:
            i2, j2, h2, w2 = position_in_transformed(name, h, w)
            logits = (np.einsum("nhwc,ck->nhwk", x, p["w"]) + p["a"] * (w2 - j2)[..., None]
                      + p["b"] * (h2 - i2)[..., None] + p["c"])
            total += 1 / (1 + np.exp(-logits))
    return total / (len(models) * len(tta))


def params(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(0, 2, (BANDS, CLASSES)), "a": rng.uniform(0.2, 0.5, CLASSES) * rng.choice([-1, 1], CLASSES),
            "b": rng.uniform(-0.4, 0.4, CLASSES), "c": rng.normal(0, 1, CLASSES)}


def no_normalise(image):
    raise AssertionError("models with an InputNormalisation layer must get raw images")


def run(models, raw, tta, normalise=no_normalise, batch_size=3):
    cache = SimpleNamespace(images=raw)
    return np.concatenate(list(predict_probabilities(models, cache, np.arange(len(raw)), normalise, tta,
                                                     batch_size, quiet=True)))


@pytest.fixture(scope="module")
def square():
    raw = np.random.default_rng(0).integers(0, 65536, (5, 8, 8, BANDS), dtype=np.uint16)
    ps = [params(1), params(2)]
    return raw, ps, [ramp_model(8, 8, p) for p in ps]


def test_every_tta_and_two_models_match_numpy(square):
    raw, ps, models = square
    tta = list(TTA)
    got = run(models, raw, tta)
    assert got.shape == (5, 8, 8, CLASSES) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected_probabilities(raw, ps, tta), atol=2e-6)
    # the check has teeth: every distinct transform gives other probabilities (hvflip is rot180), and so does
    # each model
    per_tta = {t: expected_probabilities(raw, ps, [t]) for t in tta}
    for k, a in enumerate(tta):
        for b in tta[k + 1:]:
            if {a, b} != {"hvflip", "rot180"}:
                assert np.abs(per_tta[a] - per_tta[b]).max() > 0.01, (a, b)
    assert np.abs(expected_probabilities(raw, ps[:1], tta) - expected_probabilities(raw, ps[1:], tta)).max() > 0.1


@pytest.mark.parametrize("name", ["identity", "hflip", "vflip", "hvflip", "rot90", "rot180", "rot270", "transpose"])
def test_each_tta_alone(square, name):
    raw, ps, models = square
    np.testing.assert_allclose(run(models[:1], raw, [name]), expected_probabilities(raw, ps[:1], [name]), atol=2e-6)


@pytest.mark.parametrize("name, wrong_inverse", [
    ("rot90", lambda y: np.rot90(y, 1, axes=(1, 2))),  # the forward again instead of its inverse
    ("rot270", lambda y: np.rot90(y, 3, axes=(1, 2))),
    ("transpose", lambda y: y[:, ::-1, ::-1].transpose(0, 2, 1, 3)),  # the anti-transpose
    ("hflip", lambda y: y[:, ::-1]),  # flips the other axis
])
def test_a_wrongly_inverted_tta_fails(square, monkeypatch, name, wrong_inverse):
    raw, ps, models = square
    monkeypatch.setitem(TTA, name, (TTA[name][0], wrong_inverse))
    got = run(models, raw, ["identity", name])
    assert np.abs(got - expected_probabilities(raw, ps, ["identity", name])).max() > 0.01


def test_non_square_flips_and_an_old_checkpoint_in_the_ensemble():
    """H ≠ W catches height/width mix-ups; a model without the normalisation layer gets normalised input."""
    raw = np.random.default_rng(3).integers(0, 65536, (4, 6, 10, BANDS), dtype=np.uint16)
    ps = [params(4), params(5)]
    models = [ramp_model(6, 10, ps[0]), ramp_model(6, 10, ps[1], raw_input=False)]
    tta = ["identity", "hflip", "vflip", "hvflip"]
    got = run(models, raw, tta, normalise=lambda im: im.astype(np.float32) * np.float32(SCALE), batch_size=4)
    np.testing.assert_allclose(got, expected_probabilities(raw, ps, tta), atol=2e-6)


# --- weights, roles (positive-only, classification heads) and multi-scale TTA: predict_ensemble ----------------

def head_model(h: int, w: int, params: dict, v: np.ndarray, d: np.ndarray) -> keras.Model:
    """The ramp model with a classification head: outputs [mask, label], label = sigmoid(mean_pixels(x)·v + d)."""
    mask_model = ramp_model(h, w, params)
    inp = mask_model.input
    x = mask_model.get_layer(index=1).output  # the normalised image
    pooled = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(CLASSES, activation="sigmoid", name="label")
    label = dense(pooled)
    dense.set_weights([v.astype(np.float32), d.astype(np.float32)])
    return keras.Model(inp, [mask_model.output, label])


def ensemble(models, raw, tta, **kw):
    from segkit.predict import predict_ensemble

    cache = SimpleNamespace(images=raw)
    return list(predict_ensemble(models, cache, np.arange(len(raw)), no_normalise, tta, 3, quiet=True, **kw))


def test_weights_change_the_average_as_computed_by_hand(square):
    raw, ps, models = square
    tta = ["identity", "rot90"]
    each = [expected_probabilities(raw, [p], tta) for p in ps]
    got = np.concatenate([b.probs for b in ensemble(models, raw, tta, weights=[3.0, 1.0])])
    np.testing.assert_allclose(got, (3 * each[0] + each[1]) / 4, atol=2e-6)
    assert np.abs(got - (each[0] + each[1]) / 2).max() > 0.01  # not the equal mean
    alone = np.concatenate([b.probs for b in ensemble(models, raw, tta, weights=[0.0, 2.0])])
    np.testing.assert_allclose(alone, each[1], atol=2e-6)  # weight 0 drops a model
    batches = ensemble(models, raw, tta)
    assert all(b.gate_probs is b.probs and b.label is None for b in batches)  # no positive-only model, no head
    np.testing.assert_allclose(np.concatenate([b.probs for b in batches]), (each[0] + each[1]) / 2, atol=2e-6)


def test_roles_positive_only_normal_and_head_models(square):
    """probs: every model by weight; gate_probs: the models not trained positive-only; label: the heads only."""
    raw, ps, models = square
    rng = np.random.default_rng(7)
    v, d = rng.normal(0, 3, (BANDS, CLASSES)), rng.normal(0, 1, CLASSES)
    p3 = params(3)
    with_head = head_model(8, 8, p3, v, d)
    tta = ["identity", "hflip", "transpose"]
    each = [expected_probabilities(raw, [p], tta) for p in (*ps, p3)]
    weights, roles = [1.0, 2.0, 3.0], [False, True, False]
    batches = ensemble([models[0], models[1], with_head], raw, tta, weights=weights, positive_only=roles)
    probs = np.concatenate([b.probs for b in batches])
    gate = np.concatenate([b.gate_probs for b in batches])
    label = np.concatenate([b.label for b in batches])
    np.testing.assert_allclose(probs, (each[0] + 2 * each[1] + 3 * each[2]) / 6, atol=2e-6)
    np.testing.assert_allclose(gate, (each[0] + 3 * each[2]) / 4, atol=2e-6)
    x = raw.astype(np.float64) * SCALE
    np.testing.assert_allclose(label, 1 / (1 + np.exp(-(x.mean(axis=(1, 2)) @ v + d))), atol=2e-6)
    assert label.shape == (5, CLASSES) and label.dtype == np.float32
    assert np.abs(gate - probs).max() > 0.01
    # every gate model positive-only except one with weight 0: the gate falls back to the whole ensemble
    batches = ensemble(models, raw, tta, weights=[0.0, 1.0], positive_only=[False, True])
    assert all(b.gate_probs is b.probs for b in batches)


def test_ensemble_arguments_are_checked(square):
    from segkit.errors import ConfigError

    raw, _, models = square
    for kw, says in [({"weights": [1.0]}, "2 models, 1 weights"), ({"weights": [0, 0]}, "not all 0"),
                     ({"weights": [1, -1]}, "≥ 0"), ({"positive_only": [True]}, "positive-only flags"),
                     ({"scales": []}, "scales"), ({"scales": [0.0]}, "scales")]:
        with pytest.raises(ConfigError, match=says):
            ensemble(models, raw, ["identity"], **kw)


def linear_model(h: int, w: int, kernel: np.ndarray, bias: np.ndarray, pool: int = 4) -> keras.Model:
    """A scale-equivariant model: a per-pixel linear map (1×1 convolution, no activation) of the normalised
    image, plus a branch that pools by `pool` and adds zero, so the model's size step is `pool`."""
    inp = keras.Input((h, w, BANDS))
    x = InputNormalisation([SCALE] * BANDS, [0.0] * BANDS)(inp)
    head = keras.layers.Conv2D(CLASSES, 1)
    y = head(x)
    side = keras.layers.UpSampling2D(pool)(keras.layers.MaxPooling2D(pool)(x))
    side = keras.layers.Conv2D(CLASSES, 1, kernel_initializer="zeros", use_bias=False)(side)
    model = keras.Model(inp, keras.layers.Add()([y, side]))
    head.set_weights([kernel[None, None].astype(np.float32), bias.astype(np.float32)])
    return model


def test_multi_scale_tta_with_a_scale_equivariant_model():
    """A per-pixel linear model on a linear ramp image: resizing (bilinear) commutes with the model, so every
    scale gives back the input-size map exactly away from the border (cv2 clamps at the edge). The sizes run
    are multiples of the model's size step; the map comes back at the input size, H ≠ W."""
    from segkit.predict import scaled_size, size_step

    h, w = 16, 24
    rng = np.random.default_rng(11)
    kernel, bias = rng.normal(0, 1, (BANDS, CLASSES)), rng.normal(0, 1, CLASSES)
    model = linear_model(h, w, kernel, bias)
    assert [tuple(spec.shape) for spec in model.input_spec] == [(None, h, w, BANDS)]
    assert size_step(model) == 4
    assert scaled_size(model, (h, w), 0.75) == (12, 16) and scaled_size(model, (h, w), 1.25) == (20, 32)
    assert scaled_size(model, (h, w), 0.1) == (4, 4) and scaled_size(model, (h, w), 1.0) == (16, 24)
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    slopes = rng.uniform(200, 900, (4, BANDS, 2))
    raw = np.stack([1000 + s[:, 0] * i[..., None] + s[:, 1] * j[..., None] for s in slopes])  # (4, h, w, BANDS)
    expected = np.einsum("nhwc,ck->nhwk", raw * SCALE, kernel) + bias
    tta = ["identity", "hflip", "vflip"]
    for scales in ([0.75], [1.25], [0.75, 1.0, 1.25]):
        got = np.concatenate([b.probs for b in ensemble([model], raw.astype(np.float32), tta, scales=scales)])
        assert got.shape == (4, h, w, CLASSES)
        np.testing.assert_allclose(got[:, 2:-2, 2:-2], expected[:, 2:-2, 2:-2], atol=1e-4)
        err = np.abs(got - expected).max()
        assert 1e-3 < err < 0.2 * np.abs(expected).max()  # the border shows that the batch was resized
    # the input check lifted while the model ran at the other sizes is back in force afterwards
    assert [tuple(spec.shape) for spec in model.input_spec] == [(None, h, w, BANDS)]
