"""Forward cost of a built model, counted layer by layer from its shapes (for benchmarks and model choice)."""
from __future__ import annotations

import math

import keras


def _macs(layer) -> int:
    """Multiply-accumulates of one call of a convolution or dense layer, or of a layer that counts its own
    (`forward_macs`, as segkit's MiT blocks); 0 for everything else."""
    if hasattr(layer, "forward_macs"):
        return layer.forward_macs()
    if isinstance(layer, keras.layers.Conv2DTranspose):
        _, h, w, c_in = layer.input.shape  # every input pixel scatters the whole kernel
        kh, kw = layer.kernel_size
        return h * w * kh * kw * c_in * layer.filters
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        _, h, w, c_out = layer.output.shape
        kh, kw = layer.kernel_size
        return h * w * kh * kw * c_out
    if isinstance(layer, keras.layers.SeparableConv2D):
        _, h, w, c_out = layer.output.shape
        c_in = layer.input.shape[-1]
        kh, kw = layer.kernel_size
        return h * w * (kh * kw * c_in * layer.depth_multiplier + c_in * layer.depth_multiplier * c_out)
    if isinstance(layer, keras.layers.Conv2D):
        _, h, w, c_out = layer.output.shape
        c_in = layer.input.shape[-1]
        kh, kw = layer.kernel_size
        return h * w * kh * kw * (c_in // layer.groups) * c_out
    if isinstance(layer, keras.layers.Dense):
        positions = math.prod(layer.output.shape[1:-1]) if len(layer.output.shape) > 2 else 1
        return positions * layer.input.shape[-1] * layer.units
    return 0


def forward_flops(model: keras.Model) -> int:
    """Forward FLOPs for one image: 2 × the multiply-accumulates of every convolution and dense layer.

    Nested models (an encoder backbone) are counted through; batch norm, activations, pooling and joins
    are left out, as in the usual published counts. The model must have concrete spatial input sizes.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += forward_flops(layer)
        else:
            total += 2 * _macs(layer)
    return int(total)


def uncounted_layers(model: keras.Model) -> list[str]:
    """Names of the layers `forward_flops` cannot see into: custom layers (not nested models) that hold kernels
    (weights of two or more dimensions) but are no convolution or dense layer themselves and do not count their
    own (`forward_macs`) — KerasHub's MobileNetV3 blocks. Non-empty means the count is a lower bound."""
    names = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            names += uncounted_layers(layer)
        elif not _macs(layer) and any(len(w.shape) >= 2 for w in layer.weights):
            names.append(layer.name)
    return names
