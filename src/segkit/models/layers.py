"""Building blocks shared by the U-Net family: the encoder/decoder skeleton, up-sampling, the output head.

A U-Net and a FractalNet-U-Net differ only in the block that replaces each double convolution, so both are
built by `unet_skeleton` with their own `block(x, filters, level, name)` function.
"""
from __future__ import annotations

from typing import Callable, Sequence

import keras
from keras import layers

from segkit.errors import ConfigError

UPSAMPLING = ("transpose", "bilinear")
ACTIVATIONS = ("sigmoid", "softmax")

Block = Callable[..., "keras.KerasTensor"]


def check_choice(value: str, choices: Sequence[str], key: str) -> None:
    """ConfigError naming `key` when `value` is not one of `choices`."""
    if value not in choices:
        import difflib

        close = difflib.get_close_matches(str(value), list(choices), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{key}: unknown value '{value}'{hint} (valid: {', '.join(choices)})")


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


def output_head(x, n_classes: int, activation: str):
    """1×1 convolution to the class channels and the final activation, always in float32.

    The activation layer has dtype float32 so the model's output (and hence losses and saved
    probabilities) stays float32 under a mixed-precision policy.
    """
    check_choice(activation, ACTIVATIONS, "activation")
    if activation == "softmax" and n_classes < 2:
        raise ConfigError("activation: softmax needs n_classes >= 2 (use sigmoid for a single binary mask)")
    x = layers.Conv2D(n_classes, 1, padding="same", name="logits")(x)
    return layers.Activation(activation, dtype="float32", name="probabilities")(x)


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
) -> keras.Model:
    """Encoder (block + 2×2 max-pool per level), bridge block, decoder (up-sample, concat skip, block).

    `block(x, filters, level, name)` builds one level's block; levels 0..depth-1 are the encoder (and the
    mirrored decoder), level `depth` the bridge. Filters double per level from `base_filters`.
    `extra_inputs(inputs)`, when given, runs once on the input tensor before the network (the FractalNet uses
    it to draw its per-batch drop-path decision) and its result is passed to every block as `context=`.
    """
    if int(depth) < 1:
        raise ConfigError(f"depth: must be >= 1, got {depth}")
    if int(base_filters) < 1:
        raise ConfigError(f"base_filters: must be >= 1, got {base_filters}")
    check_choice(upsampling, UPSAMPLING, "upsampling")
    h, w, b = check_input_shape(input_shape, depth, name)
    inputs = keras.Input((h, w, b), name="image")
    context = extra_inputs(inputs) if extra_inputs else None
    kw = {"context": context} if extra_inputs else {}

    x = inputs
    skips = []
    for level in range(depth):
        x = block(x, base_filters * 2**level, level, f"enc{level}", **kw)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = block(x, base_filters * 2**depth, depth, "bridge", **kw)
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = upsample(x, filters, upsampling, f"dec{level}")
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = block(x, filters, level, f"dec{level}", **kw)
    outputs = output_head(x, n_classes, activation)
    return keras.Model(inputs, outputs, name=name)
