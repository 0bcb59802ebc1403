"""More KerasHub encoder families under the U-Net decoder (MobileNetV3, DenseNet, MiT), and SegFormer.

`mobilenet_unet`, `densenet_unet` and `mit_unet` are `encoder_unet` (segkit.models.encoders) with another
default `backbone` and the same keywords; `backbone:` takes any name of `encoders.BACKBONES` on any of them,
and every decoder that reads an encoder's features by stride. Random weights without `preset`, else the
preset's (a KerasHub preset name, a kaggle:// handle or a local preset directory), with the N-band
adaptation of encoders.py.

`segformer` is SegFormer: the MiT (MixTransformer, segkit.models.mit: KerasHub's layer for layer, on any H × W)
and the all-MLP decoder (as KerasHub's `SegFormerBackbone`, whose preset weights it loads), then segkit's head —
dropout, 1×1 convolution to the classes at stride 4, bilinear resize to the input, the activation — and, with
`classifier`, the classification head on the fused features.
"""
from __future__ import annotations

import inspect
from typing import Sequence

import keras
from keras import layers

from segkit.errors import ConfigError
from segkit.models.encoders import (_MIT, check_rgb_bands, encoder_unet, load_preset_backbone, random_backbone,
                                    rebuild_for_bands)
from segkit.models.layers import (MASK_OUTPUT, Normalisation, check_choice, check_input_shape,
                                  classifier_head, model_input)
from segkit.models.mit import is_hub_mit
from segkit.models.registry import register_model

SEGFORMER_MIN_KERAS_HUB = "0.17"


def _family(name: str, default: str, doc: str):
    """A registered `encoder_unet` whose `backbone` defaults to `default`, with encoder_unet's own signature
    (so config keys are checked against it, whatever keywords encoder_unet takes)."""

    def build(input_shape, n_classes, **kwargs):
        kwargs.setdefault("backbone", default)
        return encoder_unet(input_shape, n_classes, **kwargs)

    sig = inspect.signature(encoder_unet)
    build.__signature__ = sig.replace(parameters=[
        p.replace(default=default) if p.name == "backbone" else p for p in sig.parameters.values()])
    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"`encoder_unet` with {doc} by default."
    return register_model(name)(build)


mobilenet_unet = _family("mobilenet_unet", "mobilenet_v3_large_100",
                         "a MobileNetV3 (mobilenet_v3_small_050, mobilenet_v3_small_100, mobilenet_v3_large_100)")
densenet_unet = _family("densenet_unet", "densenet121", "a DenseNet (densenet121, densenet169, densenet201)")
mit_unet = _family("mit_unet", "mit_b0", "a MixTransformer, SegFormer's encoder (mit_b0 … mit_b5)")


def _check_hub_segformer(preset: str) -> None:
    """ConfigError naming the KerasHub version a MiT or SegFormer preset needs, where the installed one lacks
    the classes the preset names."""
    import keras_hub

    if not hasattr(keras_hub.models, "SegFormerBackbone") or not hasattr(keras_hub.models, "MiTBackbone"):
        raise ConfigError(f"segformer: the preset '{preset}' needs keras-hub >= {SEGFORMER_MIN_KERAS_HUB} "
                          f"(installed {keras_hub.__version__}); pip install -U keras-hub")


def _preset_mit(preset: str, image_shape: Sequence[int], rgb_bands: Sequence[int]):
    """(segkit MiT, the KerasHub SegFormerBackbone or None) from a MiT or SegFormer preset."""
    _check_hub_segformer(preset)
    loaded = load_preset_backbone(preset)
    segformer_hub = loaded if type(loaded).__name__ == "SegFormerBackbone" else None
    if segformer_hub is not None:
        loaded = segformer_hub.image_encoder
    if not is_hub_mit(loaded):
        raise ConfigError(f"preset: segformer needs a MiT or SegFormer preset, '{preset}' holds a "
                          f"{type(loaded).__name__}")
    return rebuild_for_bands(loaded, image_shape, rgb_bands), segformer_hub


def _copy_hub_decoder(segformer_hub, head_layers: Sequence, preset: str) -> None:
    """The KerasHub SegFormer preset's all-MLP decoder weights into segkit's head layers (same order)."""
    source = [*segformer_hub.mlp_blocks, *[la for la in segformer_hub.linear_fuse.layers if la.weights]]
    if len(source) != len(head_layers) or any(
            [tuple(w.shape) for w in a.weights] != [tuple(w.shape) for w in b.weights]
            for a, b in zip(source, head_layers)):
        raise ConfigError(f"preset: could not match the SegFormer decoder weights of '{preset}'")
    for src, dst in zip(source, head_layers):
        dst.set_weights(src.get_weights())


def all_mlp_head(levels: Sequence, filters: int, name: str = "segformer") -> tuple:
    """SegFormer's all-MLP decoder: each level projected to `filters` channels by a Dense layer, resized to
    the first (stride-4) level, concatenated deepest first, fused by 1×1 Conv → BatchNorm → ReLU. Returns
    (fused map, the layers with weights in KerasHub's order)."""
    size = int(levels[0].shape[1])
    dense = [layers.Dense(filters, name=f"{name}_linear{i}") for i in range(len(levels))]
    outs = []
    for i, (level, proj) in enumerate(zip(levels, dense)):
        x = proj(level)
        factor = size // int(level.shape[1])
        outs.append(layers.UpSampling2D(factor, interpolation="bilinear", name=f"{name}_resize{i}")(x)
                    if factor > 1 else x)
    x = layers.Concatenate(name=f"{name}_concat")(outs[::-1])
    conv = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_fuse")
    norm = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"{name}_fuse_bn")
    x = layers.Activation("relu", name=f"{name}_fuse_relu")(norm(conv(x)))
    return x, [*dense, conv, norm]


@register_model("segformer")
def segformer(
    input_shape: Sequence[int],
    n_classes: int,
    backbone: str = "mit_b0",
    preset: str | None = None,
    rgb_bands: Sequence[int] = (0, 1, 2),
    projection_filters: int = 256,
    dropout: float = 0.1,
    encoder_trainable: bool = True,
    activation: str = "sigmoid",
    normalisation: Normalisation | None = None,
    classifier: bool = False,
) -> keras.Model:
    """SegFormer: segkit's MiT (`backbone` mit_b0 … mit_b5 with random weights, or a `preset`: a KerasHub
    MiT preset, e.g. mit_b0_ade20k_512, or a SegFormer preset, whose MLP decoder weights load too) and its
    all-MLP decoder of `projection_filters` channels (SegFormer-B0/B1 use 256, B2–B5 768; a SegFormer preset
    brings its own). H and W must divide by 32, square or not. `dropout` before the 1×1 classifier
    convolution (SegFormer's 0.1); `encoder_trainable=False` freezes the MiT.
    """
    check_choice(activation, ("sigmoid", "softmax"), "activation")
    if activation == "softmax" and int(n_classes) < 2:
        raise ConfigError("activation: softmax needs n_classes >= 2 (use sigmoid for a single binary mask)")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"dropout: must be a rate in [0, 1), got {dropout!r}")
    h, w, bands = check_input_shape(input_shape, 5, "segformer")
    rgb_bands = check_rgb_bands(rgb_bands, bands)
    segformer_hub = None
    if preset:
        mit, segformer_hub = _preset_mit(preset, (h, w, bands), rgb_bands)
        if segformer_hub is not None:
            projection_filters = segformer_hub.projection_filters
    elif backbone not in _MIT:
        raise ConfigError(f"backbone: segformer takes a MiT backbone ({', '.join(sorted(_MIT))}), got "
                          f"'{backbone}'")
    else:
        mit = random_backbone(backbone, (h, w, bands))
    if int(projection_filters) < 1:
        raise ConfigError(f"projection_filters: must be >= 1, got {projection_filters}")
    encoder = keras.Model(mit.inputs, mit.outputs, name="encoder")
    encoder.trainable = bool(encoder_trainable)
    inputs, x = model_input((h, w, bands), normalisation)
    fused, head_layers = all_mlp_head(encoder(x), int(projection_filters))  # (B, H/4, W/4, projection_filters)
    if segformer_hub is not None:
        _copy_hub_decoder(segformer_hub, head_layers, preset)
    x = layers.Dropout(float(dropout), name="head_dropout")(fused) if dropout else fused
    x = layers.Conv2D(int(n_classes), 1, name="logits")(x)
    x = layers.UpSampling2D(h // int(fused.shape[1]), interpolation="bilinear", name="logits_resize")(x)
    if not classifier:
        return keras.Model(inputs, layers.Activation(activation, dtype="float32", name="probabilities")(x),
                           name="segformer")
    mask = layers.Activation(activation, dtype="float32", name=MASK_OUTPUT)(x)
    return keras.Model(inputs, [mask, classifier_head(fused, int(n_classes))], name="segformer")
