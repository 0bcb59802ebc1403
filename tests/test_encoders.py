"""Encoder U-Nets on KerasHub backbones: random weights offline, local presets, N-band kernel adaptation."""
import numpy as np
import pytest

import keras

from segkit.errors import ConfigError
from segkit.losses import get_loss
from segkit.metrics import get_metrics
from segkit.models.encoders import efficientnet_backbone
from segkit.models.registry import build_model

keras_hub = pytest.importorskip("keras_hub")


def tiny_resnet():
    """A 4-stack ResNet small enough for a test, RGB input like an ImageNet preset."""
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 64, 64, 64],
        stackwise_num_blocks=[1, 1, 1, 1], stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
        image_shape=(None, None, 3),
    )


def tiny_efficientnet():
    return efficientnet_backbone(
        1.0, 1.0, stackwise_kernel_sizes=[3, 3], stackwise_num_repeats=[1, 1], stackwise_input_filters=[8, 8],
        stackwise_output_filters=[8, 16], stackwise_expansion_ratios=[1, 2],
        stackwise_squeeze_and_excite_ratios=[0.25, 0.25], stackwise_strides=[2, 2],
        stackwise_block_types=["v1", "v1"], input_shape=(None, None, 3),
    )


@pytest.fixture(scope="module")
def resnet_preset(tmp_path_factory):
    keras.utils.set_random_seed(0)
    backbone = tiny_resnet()
    path = tmp_path_factory.mktemp("presets") / "tiny_resnet"
    backbone.save_to_preset(str(path))
    return path, {la.name: la.get_weights() for la in backbone.layers if la.weights}


def encoder_weights(model):
    return {la.name: la.get_weights() for la in model.get_layer("encoder").layers if la.weights}


def test_four_band_preset_keeps_rgb_kernels_and_means_the_extra_band(resnet_preset, tmp_path):
    path, original = resnet_preset
    model = build_model({"name": "encoder_unet", "preset": str(path), "decoder_filters": [16, 8, 8, 4, 4]},
                        (32, 32, 4), 1)
    loaded = encoder_weights(model)
    assert set(loaded) == set(original)
    rgb = original["conv1_conv"][0]
    kernel = loaded["conv1_conv"][0]
    assert rgb.shape == (7, 7, 3, 64) and kernel.shape == (7, 7, 4, 64)
    np.testing.assert_array_equal(kernel[:, :, :3], rgb)
    np.testing.assert_allclose(kernel[:, :, 3], (rgb[:, :, 0] + rgb[:, :, 1] + rgb[:, :, 2]) / 3, rtol=1e-6)
    for name, weights in original.items():  # every other weight is copied unchanged
        if name != "conv1_conv":
            for a, b in zip(weights, loaded[name]):
                np.testing.assert_array_equal(a, b)

    # it trains a few steps with falling loss and reloads with identical predictions
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(0)
    x = rng.random((8, 32, 32, 4)).astype("float32")
    y = (x[..., 3:] > 0.5).astype("uint8")
    model.compile(keras.optimizers.Adam(1e-2), loss=get_loss("bce_dice"), metrics=get_metrics(["dice"]))
    losses = model.fit(x, y, epochs=4, batch_size=4, verbose=0, shuffle=False).history["loss"]
    assert losses[-1] < losses[0], losses
    model.save(tmp_path / "enc.keras")
    again = keras.models.load_model(tmp_path / "enc.keras")
    np.testing.assert_array_equal(model.predict(x, verbose=0), again.predict(x, verbose=0))


def test_band_order_and_single_band(resnet_preset):
    path, original = resnet_preset
    rgb = original["conv1_conv"][0]
    spec = {"name": "resnet_unet", "preset": str(path), "decoder_filters": [4], "rgb_bands": [3, 2, 1]}
    kernel = encoder_weights(build_model(spec, (32, 32, 5), 1))["conv1_conv"][0]
    for rgb_index, band in enumerate([3, 2, 1]):
        np.testing.assert_array_equal(kernel[:, :, band], rgb[:, :, rgb_index])
    for band in (0, 4):
        np.testing.assert_allclose(kernel[:, :, band], rgb.mean(axis=2), rtol=1e-6)
    grey = encoder_weights(build_model({**spec, "rgb_bands": [0, 1, 2]}, (32, 32, 1), 1))["conv1_conv"][0]
    np.testing.assert_allclose(grey[:, :, 0], rgb.sum(axis=2), rtol=1e-6)
    # three bands: the preset's weights unchanged
    same = encoder_weights(build_model({**spec, "rgb_bands": [0, 1, 2]}, (32, 32, 3), 1))["conv1_conv"][0]
    np.testing.assert_array_equal(same, rgb)


def test_efficientnet_preset_four_bands(tmp_path):
    keras.utils.set_random_seed(2)
    backbone = tiny_efficientnet()
    backbone.save_to_preset(str(tmp_path / "tiny_eff"))
    rgb = backbone.get_layer("stem_conv").get_weights()[0]
    model = build_model({"name": "efficientnet_unet", "preset": str(tmp_path / "tiny_eff"),
                         "decoder_filters": [8, 4, 4]}, (32, 32, 4), 1)
    kernel = model.get_layer("encoder").get_layer("stem_conv").get_weights()[0]
    np.testing.assert_array_equal(kernel[:, :, :3], rgb)
    loaded = encoder_weights(model)
    original = {la.name: la.get_weights() for la in backbone.layers if la.weights}
    assert set(loaded) == set(original)
    for name, weights in original.items():
        if name != "stem_conv":
            for a, b in zip(weights, loaded[name]):
                np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(kernel[:, :, 3], rgb.mean(axis=2), rtol=1e-6)
    out = model.predict(np.zeros((2, 32, 32, 4), "float32"), verbose=0)
    assert out.shape == (2, 32, 32, 1) and out.dtype == np.float32


@pytest.mark.parametrize("name, backbone", [("resnet_unet", "resnet18"), ("efficientnet_unet", "efficientnet_b0")])
def test_random_weight_backbones_build_offline(name, backbone):
    model = build_model({"name": name, "backbone": backbone, "decoder_filters": [8]}, (64, 64, 4), 2)
    assert model.output.shape == (None, 64, 64, 2)
    first = [la for la in model.get_layer("encoder").layers if isinstance(la, keras.layers.Conv2D)][0]
    assert first.kernel.shape[2] == 4


@pytest.mark.parametrize(
    "params, shape, match",
    [
        ({"backbone": "resnet19"}, (64, 64, 4), "did you mean 'resnet18'"),
        ({"backbone": "resnet18"}, (48, 48, 4), "divisible by 2\\*\\*depth = 32"),
        ({"preset": "resnet_50_imagenett"}, (64, 64, 4), "did you mean 'resnet_50_imagenet'"),
        ({"rgb_bands": [0, 1, 1]}, (64, 64, 4), "rgb_bands"),
        ({"upsampling": "nearest"}, (64, 64, 4), "upsampling"),
    ],
)
def test_bad_parameters(params, shape, match):
    with pytest.raises(ConfigError, match=match):
        build_model({"name": "encoder_unet", **params}, shape, 1)


def test_folder_that_is_not_a_preset(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        build_model({"name": "encoder_unet", "preset": str(tmp_path)}, (64, 64, 4), 1)


def test_unknown_backbone_and_choice_say_did_you_mean_through_the_one_helper():
    from segkit.models.encoders import BACKBONES, random_backbone
    from segkit.models.layers import check_choice

    with pytest.raises(ConfigError) as err:
        random_backbone("resnet43", (32, 32, 3))
    assert str(err.value) == (f"backbone: unknown backbone 'resnet43'; did you mean 'resnet34'? "
                              f"(known: {', '.join(BACKBONES)})")
    with pytest.raises(ConfigError) as err:
        check_choice("bilinaer", ("transpose", "bilinear"), "upsampling")
    assert str(err.value) == "upsampling: unknown value 'bilinaer'; did you mean 'bilinear'? (valid: transpose, bilinear)"
    check_choice("bilinear", ("transpose", "bilinear"), "upsampling")  # a valid value passes
