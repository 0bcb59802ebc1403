"""More KerasHub encoder families under the U-Net decoder (MobileNetV3, DenseNet, MiT), and SegFormer.

`mobilenet_unet`, `densenet_unet` and `mit_unet` are `encoder_unet` (segkit.models.encoders) with another
default `backbone` and the same keywords; `backbone:` takes any name of `encoders.BACKBONES` on any of them,
and every decoder that reads an encoder's features by stride. Random weights without `preset`, else the
preset's (a KerasHub preset name, a kaggle:// handle or a local preset directory), with the N-band
adaptation of encoders.py.

`segformer` is KerasHub's SegFormer: its MiT backbone (MixTransformer) and all-MLP decoder (KerasHub's
`SegFormerBackbone`), then segkit's head — dropout, 1×1 convolution to the classes at stride 4, bilinear resize
to the input, the activation — and, with `classifier`, the classification head on the fused features.
"""
from __future__ import annotations

import inspect
from typing import Sequence

import keras
from keras import layers

from segkit.errors import ConfigError
from segkit.models.encoders import (_MIT, encoder_unet, load_preset_backbone, random_backbone,
                                    rebuild_for_bands)
from segkit.models.layers import (MASK_OUTPUT, Normalisation, check_choice, check_input_shape,
                                  classifier_head, model_input)
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


def _check_rgb_bands(rgb_bands: Sequence[int], bands: int) -> list[int]:
    rgb_bands = [int(b) for b in rgb_bands]
    if bands == 2 or (bands >= 3 and (len(rgb_bands) != 3 or len(set(rgb_bands)) != 3
                                      or not all(0 <= b < bands for b in rgb_bands))):
        raise ConfigError(f"rgb_bands: need three distinct band indices below {bands} (and 1 or >= 3 bands), "
                          f"got {rgb_bands} for {bands} bands")
    return rgb_bands


def _segformer_classes():
    import keras_hub

    if not hasattr(keras_hub.models, "SegFormerBackbone") or not hasattr(keras_hub.models, "MiTBackbone"):
        raise ConfigError(f"segformer: needs keras-hub >= {SEGFORMER_MIN_KERAS_HUB} (installed "
                          f"{keras_hub.__version__}); pip install -U keras-hub")
    return keras_hub.models.SegFormerBackbone, keras_hub.models.MiTBackbone


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
    """SegFormer: KerasHub's MiT backbone (`backbone` mit_b0 … mit_b5 with random weights, or a `preset`: a
    MiT preset, e.g. mit_b0_ade20k_512, or a SegFormer preset, whose MLP decoder weights load too) and its
    all-MLP decoder of `projection_filters` channels (SegFormer-B0/B1 use 256, B2–B5 768; a SegFormer preset
    brings its own). H and W must divide by 32. `dropout` before the 1×1 classifier convolution (SegFormer's
    0.1); `encoder_trainable=False` freezes the MiT.
    """
    segformer_cls, mit_cls = _segformer_classes()
    check_choice(activation, ("sigmoid", "softmax"), "activation")
    if activation == "softmax" and int(n_classes) < 2:
        raise ConfigError("activation: softmax needs n_classes >= 2 (use sigmoid for a single binary mask)")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"dropout: must be a rate in [0, 1), got {dropout!r}")
    h, w, bands = check_input_shape(input_shape, 5, "segformer")
    rgb_bands = _check_rgb_bands(rgb_bands, bands)
    decoder_from = None
    if preset:
        loaded = load_preset_backbone(preset)
        if isinstance(loaded, segformer_cls):
            decoder_from, loaded = loaded, loaded.image_encoder
            projection_filters = decoder_from.projection_filters
        if not isinstance(loaded, mit_cls):
            raise ConfigError(f"preset: segformer needs a MiT or SegFormer preset, '{preset}' holds a "
                              f"{type(loaded).__name__}")
        mit = rebuild_for_bands(loaded, (h, w, bands), rgb_bands)
    else:
        if backbone not in _MIT:
            raise ConfigError(f"backbone: segformer takes a MiT backbone ({', '.join(sorted(_MIT))}), got "
                              f"'{backbone}'")
        mit = random_backbone(backbone, (h, w, bands))
    if int(projection_filters) < 1:
        raise ConfigError(f"projection_filters: must be >= 1, got {projection_filters}")
    mit.trainable = bool(encoder_trainable)
    hub_model = segformer_cls(image_encoder=mit, projection_filters=int(projection_filters), name="segformer_mlp")
    if decoder_from is not None:  # the preset's MLP decoder: every weight that is not the encoder's
        encoder_ids = {id(v) for v in decoder_from.image_encoder.weights}
        source = [v for v in decoder_from.weights if id(v) not in encoder_ids]
        encoder_ids = {id(v) for v in mit.weights}
        target = [v for v in hub_model.weights if id(v) not in encoder_ids]
        if [tuple(v.shape) for v in source] != [tuple(v.shape) for v in target]:
            raise ConfigError(f"preset: could not match the SegFormer decoder weights of '{preset}'")
        for src, dst in zip(source, target):
            dst.assign(src)

    inputs, x = model_input((h, w, bands), normalisation)
    fused = hub_model(x)  # (B, H/4, W/4, projection_filters)
    x = layers.Dropout(float(dropout), name="head_dropout")(fused) if dropout else fused
    x = layers.Conv2D(int(n_classes), 1, name="logits")(x)
    x = layers.UpSampling2D(h // int(fused.shape[1]), interpolation="bilinear", name="logits_resize")(x)
    if not classifier:
        return keras.Model(inputs, layers.Activation(activation, dtype="float32", name="probabilities")(x),
                           name="segformer")
    mask = layers.Activation(activation, dtype="float32", name=MASK_OUTPUT)(x)
    return keras.Model(inputs, [mask, classifier_head(fused, int(n_classes))], name="segformer")
