"""The decoders over any encoder (FPN, U-Net++, DeepLabV3+) and the decoder blocks (scSE, hypercolumn, deep
supervision, dropout) on them and on the U-Net family: tiny models, one training step each."""
import numpy as np
import pytest

import keras

from segkit.errors import ConfigError
from segkit.losses import compile_args, get_loss
from segkit.metrics import get_metrics
from segkit.models.layers import DeepSupervisedModel
from segkit.models.registry import build_model, has_classifier, split_outputs
from segkit.modelspec import ModelSpec

keras_hub = pytest.importorskip("keras_hub")

H, W = 32, 64  # non-square; both divide by 32, the KerasHub encoders' deepest stride
PLAIN = {"backbone": "plain", "depth": 3, "base_filters": 4}
SMALL = {  # tiny decoder widths
    "fpn": {"pyramid_filters": 8, "segmentation_filters": 4},
    "unet_plus_plus": {"decoder_filters": [8, 8, 4, 4, 4]},
    "deeplabv3_plus": {"aspp_filters": 8, "atrous_rates": [2, 4], "low_level_filters": 4, "decoder_filters": 8},
}


@pytest.fixture(scope="module")
def tiny_resnet_preset(tmp_path_factory):
    """A 4-stage ResNet (64 filters in the stem and first stage, as KerasHub requires, then 8) saved as a local
    KerasHub preset (RGB, as ImageNet ones)."""
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 8, 8, 8],
        stackwise_num_blocks=[1, 1, 1, 1], stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
        image_shape=(None, None, 3),
    )
    path = tmp_path_factory.mktemp("presets") / "tiny_resnet"
    backbone.save_to_preset(str(path))
    return str(path)


def targets(rng, n, softmax, batch=2):
    cls = rng.integers(0, n, (batch, H, W))
    return np.eye(n, dtype="float32")[cls] if softmax else (cls[..., None] == np.arange(1, n + 1)).astype("float32")


def compile_model(model, n, activation, head, loss="bce_dice", eager=True):
    """Compiled with segkit's loss and metrics; one step of a tiny model traces far slower than it runs, so it
    runs eagerly unless `eager=False` (the deep-supervision test checks the traced step)."""
    model.compile(keras.optimizers.Adam(1e-3),
                  **compile_args(get_loss(loss, n), get_metrics(["dice"], n, activation=activation),
                                 0.5 if head else None),
                  run_eagerly=eager)


# every decoder on the plain encoder and on a KerasHub ResNet (a local preset, adapted to 4 bands); both output
# kinds, with and without the classification head
CASES = [
    ("fpn", "plain", "sigmoid", 1, False),
    ("fpn", "resnet", "softmax", 3, True),
    ("unet_plus_plus", "plain", "softmax", 3, True),
    ("unet_plus_plus", "resnet", "sigmoid", 2, False),
    ("deeplabv3_plus", "plain", "sigmoid", 2, True),
    ("deeplabv3_plus", "resnet", "softmax", 3, False),
]


@pytest.mark.parametrize("name, encoder, activation, n, head", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_decoder_trains_saves_and_reloads_on_non_square_input(name, encoder, activation, n, head, tiny_resnet_preset,
                                                              tmp_path):
    keras.utils.set_random_seed(0)
    enc = PLAIN if encoder == "plain" else {"preset": tiny_resnet_preset}
    model = build_model({"name": name, **enc, **SMALL[name], "activation": activation, "classifier": head},
                        (H, W, 4), n)
    assert has_classifier(model) == head
    assert [tuple(o.shape) for o in model.outputs] == [(None, H, W, n)] + ([(None, n)] if head else [])
    if encoder == "resnet":  # the preset's RGB kernels kept, a fourth band added
        assert model.get_layer("encoder").get_layer("conv1_conv").kernel.shape == (7, 7, 4, 64)

    rng = np.random.default_rng(0)
    x = rng.random((2, H, W, 4)).astype("float32")
    y = targets(rng, n, activation == "softmax")
    compile_model(model, n, activation, head)
    logs = model.train_on_batch(x, {"mask": y, "label": y} if head else y, return_dict=True)
    assert np.isfinite(logs["loss"])
    mask = np.asarray(split_outputs(model(x, training=False))[0])
    assert mask.shape == (2, H, W, n) and mask.dtype == np.float32 and 0 <= mask.min() <= mask.max() <= 1
    if activation == "softmax":
        np.testing.assert_allclose(mask.sum(-1), 1, atol=1e-5)

    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(mask, np.asarray(split_outputs(again(x, training=False))[0]))


# --- the decoder blocks change the graph as they say ---------------------------------------------------------

def layer_names(model):
    return {la.name for la in model.layers}


BLOCK_MODELS = [
    ({"name": "unet", "depth": 2, "base_filters": 4}, 2),  # decoder stages
    ({"name": "fractal_unet", "depth": 2, "base_filters": 4, "columns": 2}, 2),
    ({"name": "fpn", **PLAIN, **SMALL["fpn"]}, 2),  # pyramid levels at strides 4, 8
    ({"name": "unet_plus_plus", **PLAIN, **SMALL["unet_plus_plus"]}, 6),  # nest nodes (3 levels: 3 + 2 + 1)
    ({"name": "deeplabv3_plus", **PLAIN, **SMALL["deeplabv3_plus"]}, 2),  # ASPP, decoder
]


@pytest.mark.parametrize("spec, stages", BLOCK_MODELS, ids=[s["name"] for s, _ in BLOCK_MODELS])
def test_blocks_change_the_graph(spec, stages):
    shape = (H, W, 3)
    plain = build_model(spec, shape, 2)
    base = layer_names(plain)
    bns = [la for la in plain.layers if isinstance(la, keras.layers.BatchNormalization)]
    assert bns and all(la.momentum == pytest.approx(0.9) for la in bns)  # segkit's BN_MOMENTUM in every decoder

    scse = build_model({**spec, "attention": "scse"}, shape, 2)
    added = layer_names(scse) - base
    assert len([n for n in added if n.endswith("_scse")]) == stages  # one scSE block per decoder stage
    assert len(added) == 7 * stages  # pool, reduce, expand, sSE conv, two gates, the sum
    assert scse.count_params() > plain.count_params()

    hyper = build_model({**spec, "hypercolumn": True}, shape, 2)
    assert "hypercolumn" in layer_names(hyper)
    concat = hyper.get_layer("hypercolumn")
    assert len(concat.input) >= 2
    assert hyper.get_layer("logits").input.shape[-1] > plain.get_layer("logits").input.shape[-1]

    drop = build_model({**spec, "dropout": 0.3} if spec["name"] not in ("unet", "fractal_unet") else spec, shape, 2)
    if spec["name"] not in ("unet", "fractal_unet"):  # the U-Nets' dropout stays in their blocks
        assert isinstance(drop.get_layer("head_dropout"), keras.layers.SpatialDropout2D)
        assert drop.count_params() == plain.count_params()

    deep = build_model({**spec, "deep_supervision": True}, shape, 2)
    assert isinstance(deep, DeepSupervisedModel) and not isinstance(plain, DeepSupervisedModel)
    assert len(deep.outputs) == 1 and deep.output_names == plain.output_names == ["probabilities"]
    aux = [n for n in layer_names(deep) if n.startswith("aux") and n.endswith("_probabilities")]
    assert len(aux) >= 1
    x = np.random.default_rng(0).random((1, H, W, 3)).astype("float32")
    assert tuple(deep(x, training=False).shape) == (1, H, W, 2)
    assert tuple(deep(x, training=True).shape) == (1, H, W, 2 * (1 + len(aux)))  # main | aux maps, training only


def test_deep_supervision_adds_the_weighted_auxiliary_losses_in_training_only(tmp_path):
    """Graph-mode training step (not eager): the training loss is the main loss plus 0.6 × the mean of the
    auxiliary heads' losses; evaluation and prediction see the main output alone; a reloaded checkpoint keeps
    both behaviours with plain keras.models.load_model."""
    keras.utils.set_random_seed(0)
    model = build_model({"name": "unet", "depth": 2, "base_filters": 4, "deep_supervision": 0.6}, (H, W, 3), 1)
    rng = np.random.default_rng(1)
    x = rng.random((2, H, W, 3)).astype("float32")
    y = targets(rng, 1, False)
    loss = get_loss("bce_dice")
    packed = np.asarray(model(x, training=True))
    main, aux = packed[..., :1], [packed[..., 1:2]]  # depth 2: one auxiliary head (level 1)
    expected = float(loss(y, main)) + 0.6 * float(loss(y, aux[0]))
    compile_model(model, 1, "sigmoid", False, eager=False)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["loss"] == pytest.approx(expected, rel=1e-4)

    prediction = model.predict(x, verbose=0)
    assert prediction.shape == (2, H, W, 1)
    evaluated = model.evaluate(x, y, verbose=0, return_dict=True)
    assert evaluated["loss"] == pytest.approx(float(loss(y, prediction)), rel=1e-4)  # no auxiliary term

    model.save(tmp_path / "ds.keras")
    again = keras.models.load_model(tmp_path / "ds.keras")
    assert isinstance(again, DeepSupervisedModel) and len(again.outputs) == 1
    np.testing.assert_array_equal(prediction, again.predict(x, verbose=0))
    again.run_eagerly = True  # (the graph-mode step is checked above; this one only needs the reloaded wiring)
    packed = np.asarray(again(x, training=True))
    expected = float(loss(y, packed[..., :1])) + 0.6 * float(loss(y, packed[..., 1:2]))
    assert again.train_on_batch(x, y, return_dict=True)["loss"] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("weighted", [False, True])
def test_deep_supervision_takes_a_keras_loss_name(weighted):
    """Compiled by hand with a Keras loss name (a plain function, no sample_weight argument): the auxiliary
    heads get the same loss, weighted by the sample weights as Keras weights the main one."""
    keras.utils.set_random_seed(0)
    model = build_model({"name": "unet", "depth": 2, "base_filters": 4, "deep_supervision": 0.5}, (H, W, 3), 1)
    rng = np.random.default_rng(2)
    x = rng.random((2, H, W, 3)).astype("float32")
    y = targets(rng, 1, False)
    sw = rng.random((2, H, W)).astype("float32") if weighted else None  # per pixel
    packed = np.asarray(model(x, training=True))
    bce = keras.losses.BinaryCrossentropy()
    expected = float(bce(y, packed[..., :1], sample_weight=sw)) + 0.5 * float(bce(y, packed[..., 1:2], sample_weight=sw))
    model.compile(keras.optimizers.SGD(0.0), loss="binary_crossentropy", run_eagerly=True)
    assert model.train_on_batch(x, y, sample_weight=sw, return_dict=True)["loss"] == pytest.approx(expected, rel=1e-4)


def test_deep_supervision_with_the_classification_head():
    keras.utils.set_random_seed(0)
    model = build_model({"name": "unet", "depth": 2, "base_filters": 4, "deep_supervision": True,
                         "classifier": True}, (H, W, 3), 2)
    assert has_classifier(model) and model.output_names == ["mask", "label"]
    rng = np.random.default_rng(2)
    x = rng.random((2, H, W, 3)).astype("float32")
    y = targets(rng, 2, False)
    compile_model(model, 2, "sigmoid", True)
    packed, label = model(x, training=True)
    loss = get_loss("bce_dice", 2)
    logs = model.train_on_batch(x, {"mask": y, "label": y}, return_dict=True)
    aux = 0.4 * float(loss(y, np.asarray(packed)[..., 2:4]))
    assert logs["mask_loss"] == pytest.approx(float(loss(y, np.asarray(packed)[..., :2])), rel=1e-4)
    assert logs["loss"] in (pytest.approx(logs["mask_loss"] + 0.5 * logs["label_loss"] + aux, rel=1e-4),
                            pytest.approx(logs["mask_loss"] + logs["label_loss"] + aux, rel=1e-4))  # Keras 3.5
    mask, label = split_outputs(model.predict_on_batch(x))
    assert mask.shape == (2, H, W, 2) and label.shape == (2, 2)


def test_encoder_unet_takes_the_blocks(tiny_resnet_preset):
    spec = {"name": "resnet_unet", "preset": tiny_resnet_preset, "decoder_filters": [8, 4]}
    plain = build_model(spec, (H, W, 3), 1)
    model = build_model({**spec, "attention": "scse", "hypercolumn": True, "deep_supervision": True,
                         "dropout": 0.2}, (H, W, 3), 1)
    names = layer_names(model) - layer_names(plain)
    assert {"hypercolumn", "head_dropout", "dec1_scse", "dec16_scse", "aux0_probabilities"} <= names
    assert isinstance(model, DeepSupervisedModel) and len(model.outputs) == 1
    assert len(model.get_layer("hypercolumn").input) == 5  # the decoder steps at strides 16, 8, 4, 2, 1


# --- specs: typos and bad values fail when the config loads ---------------------------------------------------

@pytest.mark.parametrize("raw, match", [
    ({"name": "fpn", "hypercolumns": True}, "did you mean 'hypercolumn'"),
    ({"name": "unet_plus_plus", "deep_supervison": True}, "did you mean 'deep_supervision'"),
    ({"name": "deeplabv3_plus", "atrous_rate": [6]}, "did you mean 'atrous_rates'"),
    ({"name": "unet", "attention": "sce"}, r"models.0.attention: unknown attention 'sce'; did you mean 'scse'"),
    ({"name": "fpn", "deep_supervision": "yes"}, "deep_supervision: must be true, false or"),
    ({"name": "encoder_unet", "hypercolumn": 1}, "hypercolumn: must be true or false"),
    ({"name": "fpn", "dropout": 1.5}, r"dropout: must be a rate in \[0, 1\)"),
    ({"name": "resnet_unet", "dropout": [0.1, 0.2]}, "dropout: one rate in"),  # the U-Nets' per-level lists only
])
def test_block_and_decoder_keys_are_checked_at_config_load(raw, match):
    with pytest.raises(ConfigError, match=match):
        ModelSpec.of(raw)
    ModelSpec.of({"name": "unet", "dropout": [0.1] * 5, "attention": "scse", "deep_supervision": 0.3})  # valid


@pytest.mark.parametrize("params, match", [
    ({"backbone": "plian"}, "did you mean 'plain'"),
    ({"backbone": "resnet18", "depth": 3}, "fpn.depth: shapes the plain encoder only"),
    ({**PLAIN, "depth": 4}, "divisible by 2\\*\\*depth = 16"),
    ({**PLAIN, "pyramid_filters": 0}, "pyramid_filters: must be a whole number >= 1"),
])
def test_bad_decoder_parameters_are_config_errors(params, match):
    with pytest.raises(ConfigError, match=match):
        build_model({"name": "fpn", **params}, (40, 40, 3), 1)
