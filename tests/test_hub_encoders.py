"""The MobileNet, DenseNet and MiT encoder U-Nets and SegFormer on KerasHub: tiny backbones saved with KerasHub's
own `save_to_preset` load into every family with the same weights offline; 4 bands keep the RGB kernels
exactly; each model trains a step, predicts on non-square input and reloads with identical predictions."""
import numpy as np
import pytest

import keras

from segkit.errors import ConfigError
from segkit.models.registry import build_model

keras_hub = pytest.importorskip("keras_hub")


def timm_mobilenet_missing() -> str | None:
    """Why the installed KerasHub cannot build the MobileNet family (the oldest supported, 0.18), else None."""
    from segkit.models.encoders import check_timm_mobilenet

    try:
        check_timm_mobilenet()
    except ConfigError as exc:
        return str(exc)
    return None


def skip_old_mobilenet(family: str) -> None:
    why = timm_mobilenet_missing() if family == "mobilenet" else None
    if why:
        pytest.skip(why)


def tiny_mobilenet():
    return keras_hub.models.MobileNetBackbone(
        stackwise_expansion=[[8], [16], [16], [16]], stackwise_num_blocks=[1, 1, 1, 1],
        stackwise_num_filters=[[8], [8], [16], [16]], stackwise_kernel_size=[[3], [3], [3], [3]],
        stackwise_num_strides=[[2], [2], [1], [2]], stackwise_se_ratio=[[None], [0.25], [None], [0.25]],
        stackwise_activation=[["relu"], ["hard_swish"], ["hard_swish"], ["hard_swish"]],
        stackwise_padding=[[1], [1], [1], [1]], output_num_filters=None, depthwise_filters=8, depthwise_stride=2,
        depthwise_residual=False, last_layer_filter=16, squeeze_and_excite=0.5, input_num_filters=8,
        image_shape=(None, None, 3))


def tiny_densenet():
    return keras_hub.models.DenseNetBackbone(stackwise_num_repeats=[1, 1, 1, 1], growth_rate=4,
                                             image_shape=(None, None, 3))


def tiny_mit(heads=(1, 1, 1, 1), depths=(1, 1, 1, 1)):
    """KerasHub's own MiT, as a MiT preset holds it (square: KerasHub's MiT takes square images only)."""
    return keras_hub.models.MiTBackbone(
        layerwise_depths=list(depths), hidden_dims=[8, 16, 24, 32], image_shape=(64, 64, 3), num_layers=4,
        layerwise_num_heads=list(heads), layerwise_sr_ratios=[4, 2, 1, 1], max_drop_path_rate=0.1,
        layerwise_patch_sizes=[7, 3, 3, 3], layerwise_strides=[4, 2, 2, 2])


BACKBONES = {"mobilenet": tiny_mobilenet, "densenet": tiny_densenet, "mit": tiny_mit}


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """{family: (preset directory, the backbone's weights in order)} saved with KerasHub's save_to_preset."""
    root = tmp_path_factory.mktemp("presets")
    out = {}
    for seed, (family, make) in enumerate(BACKBONES.items()):
        if family == "mobilenet" and timm_mobilenet_missing():
            continue
        keras.utils.set_random_seed(seed)
        backbone = make()
        backbone.save_to_preset(str(root / family))
        out[family] = (root / family, [w.numpy() for w in backbone.weights])
    return out


def assert_same_weights_rgb_kept(original, loaded, bands):
    """Every weight equal, but the image-reading kernel: RGB exact, extra bands the RGB mean."""
    assert 0 < len(loaded) <= len(original)  # DenseNet's final BatchNorm comes after its deepest feature
    changed = 0
    for a, b in zip(original, loaded):
        if a.shape == b.shape:
            np.testing.assert_array_equal(a, b)
            continue
        changed += 1
        assert a.ndim == 4 and a.shape[2] == 3 and b.shape == a.shape[:2] + (bands,) + a.shape[3:]
        np.testing.assert_array_equal(b[:, :, :3], a)
        for band in range(3, bands):
            np.testing.assert_allclose(b[:, :, band], a.mean(axis=2), rtol=1e-6, atol=1e-7)
    assert changed == (0 if bands == 3 else 1)


def encoder_weights(model):
    return [w.numpy() for w in model.get_layer("encoder").weights]


CASES = [("mobilenet_unet", "mobilenet", {"decoder_filters": [8, 8, 4]}),
         ("densenet_unet", "densenet", {"decoder_filters": [8, 8, 4]}),
         ("mit_unet", "mit", {"decoder_filters": [8, 8, 4]}),
         ("segformer", "mit", {"projection_filters": 8})]


@pytest.mark.parametrize("name, family, params", CASES, ids=[c[0] for c in CASES])
def test_preset_loads_with_rgb_kernels_trains_and_reloads(presets, tmp_path, name, family, params):
    skip_old_mobilenet(family)
    path, original = presets[family]
    shape = (32, 64, 4)  # non-square, KerasHub's MiT preset included (segkit's MiT takes any H x W)
    model = build_model({"name": name, "preset": str(path), **params}, shape, 1)
    assert_same_weights_rgb_kept(original, encoder_weights(model), 4)

    rng = np.random.default_rng(0)
    x = rng.random((2, *shape)).astype("float32")
    y = (x[..., :1] > 0.5).astype("float32")
    model.compile(keras.optimizers.Adam(1e-3), loss="binary_crossentropy", run_eagerly=True)  # no graph trace: fast
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    pred = model.predict(x, verbose=0)
    assert pred.shape == (2, *shape[:2], 1) and pred.dtype == np.float32
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(pred, again.predict(x, verbose=0))


@pytest.mark.parametrize("name, family", [("mobilenet_unet", "mobilenet")])
def test_three_band_preset_keeps_every_weight(presets, name, family):
    skip_old_mobilenet(family)
    path, original = presets[family]
    model = build_model({"name": name, "preset": str(path), "decoder_filters": [4]}, (64, 64, 3), 1)
    assert_same_weights_rgb_kept(original, encoder_weights(model), 3)


def test_segformer_preset_brings_its_mlp_decoder_and_gives_keras_hubs_features(tmp_path):
    """A KerasHub SegFormer preset: its MiT and MLP decoder weights all load; on a square RGB image segkit's
    fused features are KerasHub's SegFormerBackbone's (so its pretrained weights mean what they meant)."""
    keras.utils.set_random_seed(5)
    mit = tiny_mit(heads=(1, 2, 3, 4), depths=(1, 2, 1, 1))
    hub = keras_hub.models.SegFormerBackbone(image_encoder=mit, projection_filters=8)
    hub.save_to_preset(str(tmp_path / "segformer"))
    for v in hub.weights:  # moving statistics away from 0 and 1, so that they are seen to load
        if "moving" in v.path:
            v.assign(np.random.default_rng(1).random(v.shape).astype("float32") + 0.5)
    hub.save_to_preset(str(tmp_path / "segformer"))
    model = build_model({"name": "segformer", "preset": str(tmp_path / "segformer")}, (64, 64, 3), 2)
    assert_decoder_and_encoder_loaded(hub, model, 3)
    assert model.get_layer("segformer_fuse").filters == 8
    x = np.random.default_rng(0).random((2, 64, 64, 3)).astype("float32")
    fused = keras.Model(model.inputs, model.get_layer("segformer_fuse_relu").output)(x)
    np.testing.assert_allclose(np.asarray(fused), np.asarray(hub(x, training=False)), rtol=1e-4, atol=1e-5)
    four = build_model({"name": "segformer", "preset": str(tmp_path / "segformer")}, (32, 64, 4), 2)
    assert_decoder_and_encoder_loaded(hub, four, 4)


def assert_decoder_and_encoder_loaded(hub, model, bands):
    assert_same_weights_rgb_kept([w.numpy() for w in hub.image_encoder.weights], encoder_weights(model), bands)
    head = [model.get_layer(f"segformer_linear{i}") for i in range(4)]
    head += [model.get_layer("segformer_fuse"), model.get_layer("segformer_fuse_bn")]
    theirs = [*hub.mlp_blocks, *[la for la in hub.linear_fuse.layers if la.weights]]
    for a, b in zip(theirs, head, strict=True):
        for u, v in zip(a.get_weights(), b.get_weights(), strict=True):
            np.testing.assert_array_equal(u, v)


def test_segkit_mit_is_keras_hubs_on_square_images_and_takes_any_other():
    from segkit.models.encoders import adapt_kernel
    from segkit.models.mit import mit_from_hub

    keras.utils.set_random_seed(2)
    hub = tiny_mit(heads=(1, 2, 3, 4), depths=(1, 2, 1, 1))
    x = np.random.default_rng(0).random((2, 64, 64, 3)).astype("float32")
    ours = mit_from_hub(hub, (64, 64, 3), None)(x)
    theirs = keras.Model(hub.inputs, list(hub.pyramid_outputs.values()))(x)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    wide = mit_from_hub(hub, (32, 96, 5), lambda k, n: adapt_kernel(k, n, [0, 1, 2]))
    assert [tuple(o.shape) for o in wide(np.zeros((1, 32, 96, 5), "float32"))] == [
        (1, 8, 24, 8), (1, 4, 12, 16), (1, 2, 6, 24), (1, 1, 3, 32)]


def test_segkit_mit_keeps_rows_and_columns_apart_on_non_square_images():
    """A wide image transposed, through the same MiT with every convolution kernel transposed, gives the
    transposed features: attention is the same over a permuted grid, so only a reshape that mixed H and W
    (as a square-only MiT would) could break this."""
    from segkit.models.mit import build_mit

    keras.utils.set_random_seed(3)
    wide = build_mit((32, 96, 2), [8, 16, 24, 32], [1, 1, 1, 1], num_heads=[1, 2, 3, 4])
    tall = build_mit((96, 32, 2), [8, 16, 24, 32], [1, 1, 1, 1], num_heads=[1, 2, 3, 4])
    for a, b in zip(wide.weights, tall.weights):
        value = a.numpy()
        b.assign(value.transpose(1, 0, *range(2, value.ndim)) if value.ndim == 4 else value)
    x = np.random.default_rng(0).random((2, 32, 96, 2)).astype("float32")
    for a, b in zip(wide(x), tall(x.transpose(0, 2, 1, 3))):
        np.testing.assert_allclose(np.asarray(a).transpose(0, 2, 1, 3), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_mit_and_segformer_take_non_square_images():
    for name, params in (("mit_unet", {"decoder_filters": [8, 8, 4]}), ("segformer", {"projection_filters": 8})):
        model = build_model({"name": name, **params}, (32, 64, 3), 1)
        assert model.predict(np.zeros((1, 32, 64, 3), "float32"), verbose=0).shape == (1, 32, 64, 1)


def test_named_backbones_build_with_random_weights_and_any_family_takes_any():
    from segkit.models.encoders import BACKBONES as NAMES

    assert {"mobilenet_v3_small_050", "densenet121", "mit_b0"} <= set(NAMES)
    if timm_mobilenet_missing():  # the oldest KerasHub: a one-line error naming what is needed
        with pytest.raises(ConfigError, match="needs a keras-hub whose MobileNetBackbone"):
            build_model({"name": "mobilenet_unet", "backbone": "mobilenet_v3_small_050"}, (32, 32, 4), 2)
        return
    model = build_model({"name": "mobilenet_unet", "backbone": "mobilenet_v3_small_050", "decoder_filters": [4],
                         "classifier": True}, (32, 32, 4), 2)
    assert [tuple(o.shape) for o in model.outputs] == [(None, 32, 32, 2), (None, 2)]
    first = [la for la in model.get_layer("encoder").layers if isinstance(la, keras.layers.Conv2D)][0]
    assert first.kernel.shape[2] == 4


def test_bad_parameters_say_which_key():
    with pytest.raises(ConfigError, match="backbone: segformer takes a MiT backbone"):
        build_model({"name": "segformer", "backbone": "resnet18"}, (32, 32, 3), 1)
    with pytest.raises(ConfigError, match="divisible by 2\\*\\*depth = 32"):
        build_model({"name": "segformer"}, (48, 48, 3), 1)
    with pytest.raises(ConfigError, match="did you mean 'mit_b5'"):
        build_model({"name": "mit_unet", "backbone": "mit_b9"}, (32, 32, 3), 1)
    with pytest.raises(ConfigError, match="unknown densenet_unet key 'projection_filters'"):
        build_model({"name": "densenet_unet", "projection_filters": 8}, (32, 32, 3), 1)


def test_segformer_preset_names_the_keras_hub_version_it_needs(monkeypatch, tmp_path):
    monkeypatch.delattr(keras_hub.models, "SegFormerBackbone")
    with pytest.raises(ConfigError, match=r"^segformer: the preset '.*' needs keras-hub >= 0\.17 \(installed "):
        build_model({"name": "segformer", "preset": str(tmp_path)}, (32, 32, 3), 1)
    model = build_model({"name": "segformer", "projection_filters": 8}, (32, 32, 3), 1)  # random weights: no need
    assert model.output.shape[1:] == (32, 32, 1)


def test_the_spec_knows_the_new_models_without_keras():
    from segkit.modelspec import ModelSpec

    spec = ModelSpec.of({"name": "segformer", "preset": "/kaggle/input/mit/keras/b0/1", "projection_filters": 64})
    assert spec.builder_kwargs()["projection_filters"] == 64
    with pytest.raises(ConfigError, match="did you mean 'backbone'"):
        ModelSpec.of({"name": "mit_unet", "backbon": "mit_b1"})


DECODER_PARAMS = {"fpn": {"pyramid_filters": 8, "segmentation_filters": 4},
                  "unet_plus_plus": {"decoder_filters": [8, 8, 4, 4, 4]},
                  "deeplabv3_plus": {"aspp_filters": 8, "atrous_rates": [1, 2], "low_level_filters": 4,
                                     "decoder_filters": 8}}
DECODER_CASES = [("fpn", "mit"), ("unet_plus_plus", "mit"), ("deeplabv3_plus", "mit"), ("fpn", "densenet"),
                 ("unet_plus_plus", "densenet"), ("deeplabv3_plus", "mobilenet")]


@pytest.mark.parametrize("name, family", DECODER_CASES, ids=[f"{n}-{f}" for n, f in DECODER_CASES])
def test_every_decoder_reads_the_new_families_on_non_square_images(presets, name, family):
    skip_old_mobilenet(family)
    path, original = presets[family]
    model = build_model({"name": name, "preset": str(path), **DECODER_PARAMS[name]}, (32, 64, 4), 2)
    assert_same_weights_rgb_kept(original, encoder_weights(model), 4)
    x = np.random.default_rng(0).random((1, 32, 64, 4)).astype("float32")
    assert model.predict(x, verbose=0).shape == (1, 32, 64, 2)
