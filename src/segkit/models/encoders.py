"""U-Net decoders on KerasHub backbones (ResNet, EfficientNet), with N-band input for pretrained weights.

Without `preset` the backbone is built from the architecture tables below with random weights, so nothing
is downloaded. With `preset` — a KerasHub preset name (downloaded by KerasHub, e.g. "resnet_50_imagenet"), a
Kaggle model handle ("kaggle://owner/model/keras/variation/version") or a local preset directory
(`Backbone.save_to_preset` output) — the architecture and the weights come from the preset; on Kaggle a preset
attached as a model source is read from its mount (segkit.presets). When the image has other than 3 bands, the
backbone is rebuilt for that many bands and every weight copied; the convolution that reads the image keeps
its RGB kernels exactly (for the bands named by `rgb_bands`, first three by default, R G B in that order)
and each extra band gets the mean of the three RGB kernels; a single band gets their sum (a grey image
then gives the response the RGB image of the same grey would).

The decoder follows the encoder's feature pyramid: starting from the deepest feature it doubles the size
back to the input's, concatenating the backbone feature of the same stride where there is one, each step
followed by (3×3 Conv → BatchNorm → ReLU) × 2 (the U-Net's `conv_block`). Inputs go to the backbone as the
model's InputNormalisation layer leaves them (the adapter's scaling); KerasHub's ImageNet scaling is not
applied.
"""
from __future__ import annotations

import inspect
import os
from typing import Any, Sequence

import keras
import numpy as np
from keras import layers

from segkit.errors import ConfigError, did_you_mean, unknown_name
from segkit.models.layers import (Normalisation, attend, check_choice, check_input_shape, conv_block, model_input,
                                  segmentation_model, upsample)
from segkit.models.mit import build_mit, is_hub_mit, mit_from_hub
from segkit.models.registry import register_model
from segkit.modelspec import decoder_blocks
from segkit.presets import HANDLE_SHAPE, attached

# Architectures of KerasHub's converted timm checkpoints (same hyper-parameters as their presets).
_RESNET = {
    "resnet18": ([2, 2, 2, 2], "basic_block", False),
    "resnet34": ([3, 4, 6, 3], "basic_block", False),
    "resnet50": ([3, 4, 6, 3], "bottleneck_block", False),
    "resnet101": ([3, 4, 23, 3], "bottleneck_block", False),
    "resnet152": ([3, 8, 36, 3], "bottleneck_block", False),
    "resnet_v2_50": ([3, 4, 6, 3], "bottleneck_block", True),
    "resnet_v2_101": ([3, 4, 23, 3], "bottleneck_block", True),
}
_EFFICIENTNET_BASE = {
    "stackwise_kernel_sizes": [3, 3, 5, 3, 5, 5, 3],
    "stackwise_num_repeats": [1, 2, 2, 3, 3, 4, 1],
    "stackwise_input_filters": [32, 16, 24, 40, 80, 112, 192],
    "stackwise_output_filters": [16, 24, 40, 80, 112, 192, 320],
    "stackwise_expansion_ratios": [1, 6, 6, 6, 6, 6, 6],
    "stackwise_strides": [1, 2, 2, 2, 1, 2, 1],
    "stackwise_block_types": ["v1"] * 7,
    "stackwise_squeeze_and_excite_ratios": [0.25] * 7,
    "min_depth": None,
    "include_stem_padding": True,
    "use_depth_divisor_as_min_depth": True,
    "cap_round_filter_decrease": True,
    "stem_conv_padding": "valid",
    "batch_norm_momentum": 0.9,
    "batch_norm_epsilon": 1e-5,
    "dropout": 0,
    "projection_activation": None,
}
_EFFICIENTNET = {  # width, depth coefficient
    "efficientnet_b0": (1.0, 1.0),
    "efficientnet_b1": (1.0, 1.1),
    "efficientnet_b2": (1.1, 1.2),
    "efficientnet_b3": (1.2, 1.4),
    "efficientnet_b4": (1.4, 1.8),
    "efficientnet_b5": (1.6, 2.2),
}
_MOBILENET = {  # timm architecture of KerasHub's MobileNetV3 presets (keras_hub's timm converter holds the tables)
    "mobilenet_v3_small_050": "mobilenetv3_small_050",
    "mobilenet_v3_small_100": "mobilenetv3_small_100",
    "mobilenet_v3_large_100": "mobilenetv3_large_100",
}
_DENSENET = {"densenet121": [6, 12, 24, 16], "densenet169": [6, 12, 32, 32], "densenet201": [6, 12, 48, 32]}
_MIT = {  # MixTransformer (SegFormer's encoder, segkit.models.mit): hidden dims, depths per stage
    "mit_b0": ([32, 64, 160, 256], [2, 2, 2, 2]),
    "mit_b1": ([64, 128, 320, 512], [2, 2, 2, 2]),
    "mit_b2": ([64, 128, 320, 512], [3, 4, 6, 3]),
    "mit_b3": ([64, 128, 320, 512], [3, 4, 18, 3]),
    "mit_b4": ([64, 128, 320, 512], [3, 8, 27, 3]),
    "mit_b5": ([64, 128, 320, 512], [3, 6, 40, 3]),
}
BACKBONES = sorted(_RESNET) + sorted(_EFFICIENTNET) + sorted(_MOBILENET) + sorted(_DENSENET) + sorted(_MIT)
FAMILIES = {"resnet": sorted(_RESNET), "efficientnet": sorted(_EFFICIENTNET), "mobilenet": sorted(_MOBILENET),
            "densenet": sorted(_DENSENET), "mit": sorted(_MIT)}


def _hub():
    import keras_hub

    return keras_hub


def check_timm_mobilenet(name: str = "mobilenet") -> None:
    """ConfigError unless the installed KerasHub builds MobileNetV3 from timm's settings (its MobileNetBackbone
    takes `stackwise_padding` and the timm converter exists): KerasHub 0.18's older MobileNetBackbone cannot."""
    hub = _hub()
    try:
        from keras_hub.src.utils.timm.convert_mobilenet import convert_backbone_config  # noqa: F401
        params = inspect.signature(hub.models.MobileNetBackbone.__init__).parameters
    except (ImportError, AttributeError):
        params = {}
    if "stackwise_padding" not in params:
        raise ConfigError(f"backbone: {name} needs a keras-hub whose MobileNetBackbone builds timm's MobileNetV3 "
                          f"(0.32 does; installed {hub.__version__} does not): pip install -U keras-hub")


def random_backbone(name: str, image_shape: Sequence[int]):
    """A KerasHub backbone `name` (see BACKBONES) with random weights for (H, W, bands) images."""
    hub = _hub()
    if name in _RESNET:
        blocks, block_type, pre_activation = _RESNET[name]
        return hub.models.ResNetBackbone(
            input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
            stackwise_num_blocks=blocks, stackwise_num_strides=[1, 2, 2, 2], block_type=block_type,
            use_pre_activation=pre_activation, image_shape=tuple(image_shape),
        )
    if name in _EFFICIENTNET:
        width, depth = _EFFICIENTNET[name]
        return efficientnet_backbone(width, depth, input_shape=tuple(image_shape), **_EFFICIENTNET_BASE)
    if name in _MOBILENET:
        check_timm_mobilenet(name)
        from keras_hub.src.utils.timm.convert_mobilenet import convert_backbone_config

        return hub.models.MobileNetBackbone(image_shape=tuple(image_shape),
                                            **convert_backbone_config({"architecture": _MOBILENET[name]}))
    if name in _DENSENET:
        return hub.models.DenseNetBackbone(stackwise_num_repeats=_DENSENET[name], image_shape=tuple(image_shape))
    if name in _MIT:
        return build_mit(image_shape, *_MIT[name])
    raise unknown_name("backbone", "backbone", name, BACKBONES)


def efficientnet_backbone(width: float, depth: float, **kwargs: Any):
    """KerasHub's EfficientNetBackbone with one width and depth coefficient for every stack, across KerasHub
    versions (before 0.19 they are scalar `width_coefficient` / `depth_coefficient`, later per-stack lists)."""
    import inspect

    cls = _hub().models.EfficientNetBackbone
    if "width_coefficient" in inspect.signature(cls.__init__).parameters:
        return cls(width_coefficient=width, depth_coefficient=depth, **kwargs)
    stacks = len(kwargs["stackwise_kernel_sizes"])
    return cls(stackwise_width_coefficients=[width] * stacks, stackwise_depth_coefficients=[depth] * stacks, **kwargs)


def load_preset_backbone(preset: str):
    """The backbone of a KerasHub preset name, Kaggle handle (kaggle://...) or local preset directory, with its
    weights; a preset attached to a Kaggle kernel is loaded from its mount under the input folder (no download)."""
    hub = _hub()
    preset = str(attached(preset) or preset)
    local = os.path.isdir(os.path.expanduser(str(preset)))
    if local:
        preset = os.path.expanduser(str(preset))
        if not os.path.isfile(os.path.join(preset, "config.json")):
            raise ConfigError(f"preset: {preset} is a folder but not a KerasHub preset (no config.json in it)")
    elif "://" not in str(preset):
        known = sorted(hub.models.Backbone.presets)
        if preset not in known:
            hint = did_you_mean(preset, known)
            raise ConfigError(f"preset: '{preset}' is neither a local preset directory nor a KerasHub preset{hint}")
    try:
        return hub.models.Backbone.from_preset(preset)
    except Exception as exc:  # network or file problems: say what was tried
        where = "local preset directory" if local else "KerasHub preset (downloads unless cached)"
        raise ConfigError(
            f"preset: could not load {where} '{preset}': {exc}. Offline, attach the preset as a Kaggle model "
            f"source and write its handle ({HANDLE_SHAPE}) or give its directory"
        ) from exc


def adapt_kernel(kernel: np.ndarray, bands: int, rgb_bands: Sequence[int]) -> np.ndarray:
    """A (kh, kw, 3, out) RGB kernel turned into (kh, kw, bands, out).

    Bands `rgb_bands` get the R, G, B kernels unchanged; every other band the mean of the three; one band
    alone gets their sum.
    """
    if bands == 1:
        return kernel.sum(axis=2, keepdims=True)
    out = np.empty(kernel.shape[:2] + (bands,) + kernel.shape[3:], dtype=kernel.dtype)
    out[:] = kernel.mean(axis=2, keepdims=True)
    for rgb, band in enumerate(rgb_bands):
        out[:, :, band] = kernel[:, :, rgb]
    return out


def rebuild_for_bands(backbone, image_shape: Sequence[int], rgb_bands: Sequence[int]):
    """The same backbone for (H, W, bands) images, weights copied and the image-reading convolution adapted.

    Rebuilding with a concrete H and W also gives the decoder static feature shapes. A KerasHub MiT becomes
    segkit's MiT (segkit.models.mit), which takes any H × W and reloads.
    """
    bands = int(image_shape[-1])
    if is_hub_mit(backbone):
        return mit_from_hub(backbone, image_shape, lambda kernel, n: adapt_kernel(kernel, n, rgb_bands))
    config = dict(backbone.get_config())
    key = "image_shape" if "image_shape" in config else "input_shape"
    if key not in config:
        raise ConfigError(f"preset: cannot change the input shape of a {type(backbone).__name__}")
    shape = list(config[key] or (None, None, 3))
    if shape[-1] not in (3, bands):
        raise ConfigError(f"preset: N-band adaptation needs an RGB backbone, this one takes {shape[-1]} bands")
    config.pop("dtype", None)  # follow the global (possibly mixed) precision policy
    config[key] = tuple(int(v) for v in image_shape)
    new = type(backbone).from_config(config)
    old_layers = [la for la in backbone.layers if la.weights]
    new_layers = [la for la in new.layers if la.weights]
    # matched in order by class (layers may have generated names, numbered afresh per build)
    if [type(la) for la in old_layers] != [type(la) for la in new_layers]:
        raise ConfigError(f"preset: could not match the layers of the rebuilt {type(backbone).__name__}")
    for old, fresh in zip(old_layers, new_layers):
        weights = old.get_weights()
        targets = [w.shape for w in fresh.get_weights()]
        adapted = []
        for w, shape in zip(weights, targets):
            if w.shape != tuple(shape):
                if w.ndim != 4 or w.shape[2] != 3 or tuple(shape) != w.shape[:2] + (bands,) + w.shape[3:]:
                    raise ConfigError(f"preset: unexpected weight shape change in layer {old.name}: "
                                      f"{w.shape} -> {tuple(shape)}")
                w = adapt_kernel(w, bands, rgb_bands)
            adapted.append(w)
        fresh.set_weights(adapted)
    return new


def _stride_features(backbone, height: int) -> dict[int, Any]:
    """Backbone features by stride (2, 4, …): the pyramid outputs (their stride read from their height, since
    MiT numbers its levels from stride 4 as P1), plus a stride-2 map when they have none; a backbone without
    pyramid outputs (MobileNet) gives the last layer output at each stride."""
    pyramid = getattr(backbone, "pyramid_outputs", None) or {}
    feats = {_stride_of(height, int(tensor.shape[1])): tensor for tensor in pyramid.values()}
    if pyramid and 2 in feats:
        return feats
    stem = (layers.Activation, layers.ReLU, layers.Conv2D, layers.BatchNormalization)
    for layer in backbone.layers:  # in order, so the deepest output at a stride is the last one kept
        if (pyramid and not isinstance(layer, stem)) or isinstance(layer, layers.ZeroPadding2D):
            continue  # with a pyramid (ResNets start theirs at stride 4) only the stem's stride-2 map
        try:
            out = layer.output
        except (AttributeError, ValueError):
            continue
        if isinstance(out, (list, tuple)) or len(out.shape) != 4 or not out.shape[1]:
            continue
        stride = _stride_of(height, int(out.shape[1]))
        if abs(height / stride - out.shape[1]) < 1 and (stride == 2 if pyramid else stride > 1):
            feats[stride] = out
    return feats


def check_rgb_bands(rgb_bands: Sequence[int], bands: int) -> list[int]:
    """`rgb_bands` as ints, or a ConfigError unless they are three distinct bands of the image (which must have
    1 or at least 3 bands to take an RGB backbone's weights)."""
    rgb_bands = [int(b) for b in rgb_bands]
    if bands == 2 or (bands >= 3 and (len(rgb_bands) != 3 or len(set(rgb_bands)) != 3
                                      or not all(0 <= b < bands for b in rgb_bands))):
        raise ConfigError(f"rgb_bands: need three distinct band indices below {bands} (and 1 or >= 3 bands), "
                          f"got {rgb_bands} for {bands} bands")
    return rgb_bands


def hub_encoder(input_shape: Sequence[int], backbone: str = "resnet34", preset: str | None = None,
                rgb_bands: Sequence[int] = (0, 1, 2), encoder_trainable: bool = True,
                normalisation: Normalisation | None = None, where: str = "encoder_unet"):
    """(inputs, {stride: features}) of a KerasHub backbone (`backbone` from BACKBONES with random weights, or a
    `preset` with its weights, adapted to the image's bands) wrapped as the nested model "encoder" after the
    model's input (and InputNormalisation): the features every decoder reads, strides 2, 4, … up to the
    deepest (32 for the built-in backbones), which H and W must divide."""
    h, w, bands = check_input_shape(input_shape, 0, where)
    rgb_bands = check_rgb_bands(rgb_bands, bands)
    if preset:
        hub_backbone = rebuild_for_bands(load_preset_backbone(preset), (h, w, bands), rgb_bands)
    else:
        hub_backbone = random_backbone(backbone, (h, w, bands))
    feats = _stride_features(hub_backbone, h)
    deepest = max(feats)
    check_input_shape((h, w, bands), int(np.log2(deepest)), where)

    strides = sorted(feats)
    encoder = keras.Model(hub_backbone.inputs, [feats[s] for s in strides], name="encoder")
    encoder.trainable = bool(encoder_trainable)
    inputs, x = model_input((h, w, bands), normalisation)
    outs = encoder(x)
    return inputs, dict(zip(strides, outs if isinstance(outs, (list, tuple)) else [outs]))
def _stride_of(height: int, size: int) -> int:
    """The power-of-two stride of a feature `size` high from a `height` image (rounded, so a 48 px image's
    2 px stride-32 map reads 32 and the size check names the deepest stride)."""
    return 2 ** int(round(np.log2(height / size)))


@register_model("encoder_unet")
def encoder_unet(
    input_shape: Sequence[int],
    n_classes: int,
    backbone: str = "resnet34",
    preset: str | None = None,
    rgb_bands: Sequence[int] = (0, 1, 2),
    decoder_filters: Sequence[int] = (256, 128, 64, 32, 16),
    decoder_batch_norm: bool = True,
    upsampling: str = "transpose",
    encoder_trainable: bool = True,
    activation: str = "sigmoid",
    normalisation: Normalisation | None = None,
    classifier: bool = False,
    dropout: float = 0.0,
    attention: str | None = None,
    hypercolumn: bool = False,
    deep_supervision: bool | float = False,
) -> keras.Model:
    """U-Net decoder on a KerasHub backbone (`backbone` from BACKBONES, random weights) or a `preset`.

    H and W must divide by the backbone's deepest stride (32 for the built-in backbones). `decoder_filters`
    are the decoder's widths from the deepest step up (the last one is reused if the pyramid is deeper).
    `encoder_trainable=False` freezes the backbone (its BatchNorms then run in inference mode).
    `normalisation`: the adapter's per-band (scale, offset), applied by the model's first layer to raw images.
    `classifier`: also output per-class "mask non-empty" probabilities from the deepest backbone feature
    (outputs `mask`, `label`). Decoder blocks: `dropout` (spatial dropout before the head), `attention: scse`
    after each decoder step, `hypercolumn`, `deep_supervision` (as for the U-Net).
    """
    attention, hypercolumn, aux_weight, dropout = decoder_blocks(attention, hypercolumn, deep_supervision, dropout,
                                                                 where="encoder_unet")
    check_choice(upsampling, ("transpose", "bilinear"), "upsampling")
    inputs, by_stride = hub_encoder(input_shape, backbone, preset, rgb_bands, encoder_trainable, normalisation)
    deepest = max(by_stride)
    x = by_stride[deepest]
    stride, step = deepest, 0
    filters = list(decoder_filters)
    if not filters:
        raise ConfigError("decoder_filters: needs at least one width")
    stages = []
    while stride > 1:
        stride //= 2
        width = int(filters[min(step, len(filters) - 1)])
        x = upsample(x, width, upsampling, f"dec{stride}")
        if stride in by_stride:
            x = layers.Concatenate(name=f"dec{stride}_concat")([x, by_stride[stride]])
        x = attend(conv_block(x, width, f"dec{stride}", batch_norm=bool(decoder_batch_norm)), attention, f"dec{stride}")
        stages.append((stride, x))
        step += 1
    return segmentation_model(inputs, x, by_stride[deepest], int(n_classes), activation, bool(classifier),
                              "encoder_unet", stages=stages, hypercolumn=hypercolumn, aux_weight=aux_weight,
                              dropout=dropout)


@register_model("resnet_unet")
def resnet_unet(input_shape: Sequence[int], n_classes: int, backbone: str = "resnet34", preset: str | None = None,
                rgb_bands: Sequence[int] = (0, 1, 2), decoder_filters: Sequence[int] = (256, 128, 64, 32, 16),
                decoder_batch_norm: bool = True, upsampling: str = "transpose", encoder_trainable: bool = True,
                activation: str = "sigmoid", normalisation: Normalisation | None = None,
                classifier: bool = False, dropout: float = 0.0, attention: str | None = None,
                hypercolumn: bool = False, deep_supervision: bool | float = False) -> keras.Model:
    """`encoder_unet` with a ResNet (resnet18/34/50/101/152, resnet_v2_50/101) by default."""
    return encoder_unet(**{k: v for k, v in locals().items()})


@register_model("efficientnet_unet")
def efficientnet_unet(input_shape: Sequence[int], n_classes: int, backbone: str = "efficientnet_b0",
                      preset: str | None = None, rgb_bands: Sequence[int] = (0, 1, 2),
                      decoder_filters: Sequence[int] = (256, 128, 64, 32, 16), decoder_batch_norm: bool = True,
                      upsampling: str = "transpose", encoder_trainable: bool = True,
                      activation: str = "sigmoid", normalisation: Normalisation | None = None,
                      classifier: bool = False, dropout: float = 0.0, attention: str | None = None,
                      hypercolumn: bool = False, deep_supervision: bool | float = False) -> keras.Model:
    """`encoder_unet` with an EfficientNet (efficientnet_b0 … b5) by default."""
    return encoder_unet(**{k: v for k, v in locals().items()})
