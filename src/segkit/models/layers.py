"""Building blocks shared by the U-Net family: the input normalisation layer, the encoder/decoder skeleton,
the (Conv → BN → ReLU) × 2 block, up-sampling, the output head.

A U-Net and a FractalNet-U-Net differ only in the block that replaces each double convolution, so both are
built by `unet_skeleton` with their own `block(x, filters, level, name)` function; the encoder U-Net's
decoder uses the same `conv_block` as the U-Net.

Every model starts with `model_input`: the raw image (in the dataset's range, e.g. uint16 digital numbers
given as float32 or uint16) goes through an `InputNormalisation` layer holding the adapter's per-band
scale and offset, so a saved `.keras` file maps raw images to probabilities on its own.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
import numpy as np
from keras import layers, ops

from segkit.errors import ConfigError, unknown_name

UPSAMPLING = ("transpose", "bilinear")
ACTIVATIONS = ("sigmoid", "softmax")

Block = Callable[..., "keras.KerasTensor"]
# per-band (scale, offset): the model computes x * scale + offset on the raw image
Normalisation = tuple[Sequence[float], Sequence[float]]
# BatchNorm's moving statistics keep 90 % of their value per step (PyTorch's default, which segmentation_models_
# pytorch and the Kaggle winners trained with), not Keras' 99 %: with 99 % they lag the fast-changing weights of a
# short run. Measured on real TGS (U-Net depth 4 base 8, 96 px, 8 epochs of 36 steps): at 0.99 the fold's best
# checkpoint scored val Dice 0.44 in inference mode and 0.75 in training mode, and 0.75 in inference mode once its
# statistics were re-estimated on 60 training batches; its first BN layer's moving variance was 9x the real one.
BN_MOMENTUM = 0.9


@keras.saving.register_keras_serializable(package="segkit")
class InputNormalisation(layers.Layer):
    """`float32(x) * scale + offset` per band: the dataset's input scaling, stored in the model's config.

    Always computes in float32 (also under a mixed-precision policy, before the first convolution casts to
    half precision), so raw 16-bit values keep their precision; integer inputs are cast first.
    """

    def __init__(self, scale: Sequence[float], offset: Sequence[float], **kwargs: Any) -> None:
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.scale = [float(v) for v in np.ravel(scale)]
        self.offset = [float(v) for v in np.ravel(offset)]
        if not self.scale or len(self.scale) != len(self.offset):
            raise ConfigError(f"input normalisation: scale {self.scale} and offset {self.offset} need the same, "
                              "non-zero number of values (one per band, or one for all)")
        self._scale = np.asarray(self.scale, np.float32)
        self._offset = np.asarray(self.offset, np.float32)

    def build(self, input_shape) -> None:
        bands = input_shape[-1]
        if len(self.scale) not in (1, bands) and bands is not None:
            raise ConfigError(f"input normalisation: {len(self.scale)} per-band values for {bands}-band images")
        self.built = True

    def call(self, x):
        return ops.add(ops.multiply(ops.cast(x, "float32"), self._scale), self._offset)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}


def model_input(input_shape: Sequence[int], normalisation: Normalisation | None):
    """(inputs, x): the model's image input and, when `normalisation` is given, that input normalised by an
    `InputNormalisation` layer (else the input itself)."""
    inputs = keras.Input(tuple(input_shape), name="image")
    if normalisation is None:
        return inputs, inputs
    scale, offset = normalisation
    return inputs, InputNormalisation(scale, offset, name="input_normalisation")(inputs)


def input_normalisation_of(model) -> InputNormalisation | None:
    """The model's own InputNormalisation layer, or None for a checkpoint saved before segkit had one."""
    for layer in model.layers:
        if isinstance(layer, InputNormalisation):
            return layer
    return None


def conv_block(x, filters: int, name: str, batch_norm: bool = True, dropout: float = 0.0):
    """(Conv 3×3 → [BatchNorm] → ReLU) × 2, with optional dropout after the pair: the U-Net's level block and
    the encoder U-Net's decoder step. The convolution has no bias when BatchNorm follows it."""
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm, name=f"{name}_conv{i}")(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name=f"{name}_drop")(x)
    return x


def check_choice(value: str, choices: Sequence[str], key: str) -> None:
    """ConfigError naming `key` when `value` is not one of `choices`."""
    if value not in choices:
        raise unknown_name(key, "value", value, choices, listed="valid")


def check_input_shape(input_shape: Sequence[int], depth: int, where: str) -> tuple[int, int, int]:
    """(H, W, bands) with H and W divisible by 2**depth, so every skip lines up with its decoder level."""
    if len(input_shape) != 3:
        raise ConfigError(f"{where}: input_shape must be (H, W, bands), got {tuple(input_shape)}")
    h, w, b = (int(v) for v in input_shape)
    step = 2**depth
    if h % step or w % step or min(h, w, b) <= 0:
        raise ConfigError(
            f"{where}: input size {h}x{w} must be positive and divisible by 2**depth = {step} "
            f"(depth {depth}); pick an image_size that is a multiple of {step} or a smaller depth"
        )
    return h, w, b


def per_level(value: float | Sequence[float], depth: int, key: str) -> list[float]:
    """A per-level setting for levels 0..depth (depth = the bridge): a scalar or a list of depth + 1 values."""
    if isinstance(value, (int, float)):
        return [float(value)] * (depth + 1)
    values = [float(v) for v in value]
    if len(values) != depth + 1:
        raise ConfigError(f"{key}: needs depth + 1 = {depth + 1} values (encoder levels and bridge), got {len(values)}")
    return values


def upsample(x, filters: int, mode: str, name: str):
    """Double the spatial size: a learned 2×2 transposed convolution, or bilinear resize + 1×1 convolution."""
    if mode == "transpose":
        return layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"{name}_upconv")(x)
    x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_resize")(x)
    return layers.Conv2D(filters, 1, padding="same", name=f"{name}_upproj")(x)


def output_head(x, n_classes: int, activation: str, name: str = "probabilities"):
    """1×1 convolution to the class channels and the final activation, always in float32.

    The activation layer has dtype float32 so the model's output (and hence losses and saved
    probabilities) stays float32 under a mixed-precision policy. `name` names that layer, hence the output:
    "probabilities" for a one-output model, MASK_OUTPUT beside a classification head.
    """
    check_choice(activation, ACTIVATIONS, "activation")
    if activation == "softmax" and n_classes < 2:
        raise ConfigError("activation: softmax needs n_classes >= 2 (use sigmoid for a single binary mask)")
    x = layers.Conv2D(n_classes, 1, padding="same", name="logits")(x)
    return layers.Activation(activation, dtype="float32", name=name)(x)


MASK_OUTPUT, LABEL_OUTPUT = "mask", "label"  # the two outputs of a model with a classification head


def classifier_head(bottleneck, n_classes: int):
    """Per-class "the mask is non-empty" probabilities (B, n_classes) from the bottleneck features: global
    average pooling → dense → sigmoid (float32, named LABEL_OUTPUT). Also for softmax masks: one sigmoid per
    channel, background included, so the head gates each class on its own."""
    x = layers.GlobalAveragePooling2D(name="label_pool")(bottleneck)
    x = layers.Dense(int(n_classes), name="label_logits")(x)
    return layers.Activation("sigmoid", dtype="float32", name=LABEL_OUTPUT)(x)


def segmentation_model(inputs, features, bottleneck, n_classes: int, activation: str, classifier: bool,
                       name: str) -> keras.Model:
    """The model from its decoder's last features: one output (the mask probabilities, as before) or, with
    `classifier`, two outputs in this order, `mask` (B, H, W, C) and `label` (B, C) from the bottleneck."""
    if not classifier:
        return keras.Model(inputs, output_head(features, n_classes, activation), name=name)
    mask = output_head(features, n_classes, activation, name=MASK_OUTPUT)
    return keras.Model(inputs, [mask, classifier_head(bottleneck, n_classes)], name=name)


def unet_skeleton(
    input_shape: Sequence[int],
    n_classes: int,
    block: Block,
    depth: int,
    base_filters: int,
    upsampling: str,
    activation: str,
    name: str,
    extra_inputs: Callable | None = None,
    normalisation: Normalisation | None = None,
    classifier: bool = False,
) -> keras.Model:
    """Encoder (block + 2×2 max-pool per level), bridge block, decoder (up-sample, concat skip, block).

    `block(x, filters, level, name)` builds one level's block; levels 0..depth-1 are the encoder (and the
    mirrored decoder), level `depth` the bridge. Filters double per level from `base_filters`.
    `extra_inputs(inputs)`, when given, runs once on the input tensor before the network (the FractalNet uses
    it to draw its per-batch drop-path decision) and its result is passed to every block as `context=`.
    `normalisation` (per-band scale, offset) puts an InputNormalisation layer first, so the model takes raw
    images. `classifier` adds the classification head on the bridge (see `segmentation_model`).
    """
    if int(depth) < 1:
        raise ConfigError(f"depth: must be >= 1, got {depth}")
    if int(base_filters) < 1:
        raise ConfigError(f"base_filters: must be >= 1, got {base_filters}")
    check_choice(upsampling, UPSAMPLING, "upsampling")
    h, w, b = check_input_shape(input_shape, depth, name)
    inputs, x = model_input((h, w, b), normalisation)
    context = extra_inputs(inputs) if extra_inputs else None
    kw = {"context": context} if extra_inputs else {}

    skips = []
    for level in range(depth):
        x = block(x, base_filters * 2**level, level, f"enc{level}", **kw)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = bottleneck = block(x, base_filters * 2**depth, depth, "bridge", **kw)
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = upsample(x, filters, upsampling, f"dec{level}")
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = block(x, filters, level, f"dec{level}", **kw)
    return segmentation_model(inputs, x, bottleneck, n_classes, activation, bool(classifier), name)
