"""segkit's MixTransformer (MiT), SegFormer's encoder, on feature maps of any height and width.

KerasHub's MiTBackbone works on token sequences and recovers the grid as H = W = sqrt(tokens), so it takes
square images only, and its transformer block's config drops `sr_ratio`, so a model holding its layers does
not reload. This MiT is the same network layer for layer — overlapping patch embedding (a strided convolution
and LayerNorm), transformer blocks with sequence-reduced attention and a Mix-FFN (Dense, 3×3 depthwise
convolution, GELU, Dense), a LayerNorm per level — but every block works on the (B, H, W, C) map, so any
H × W goes through, and every layer saves its whole config. `mit_from_hub` copies a KerasHub MiT's weights
into it (a KerasHub preset, or a local preset directory), so KerasHub's pretrained MiTs load unchanged:
on a square image both give the same features.

Attention and projection dropout are 0, as in the SegFormer paper's code (KerasHub uses 0.1 for both).
"""
from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
from keras import layers, ops

from segkit.errors import ConfigError

MIT_DEFAULTS = {"num_heads": (1, 2, 5, 8), "sr_ratios": (8, 4, 2, 1), "patch_sizes": (7, 3, 3, 3),
                "strides": (4, 2, 2, 2), "drop_path_rate": 0.1}
LN_EPSILON = {"embed": 1e-5, "block": 1e-6, "level": 1e-5}  # as KerasHub's MiT and the SegFormer paper's code


@keras.saving.register_keras_serializable(package="segkit")
class DropPath(layers.Layer):
    """Stochastic depth: in training, drops a sample's residual branch with probability `rate`."""

    def __init__(self, rate: float = 0.0, seed: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = ops.cast(keras.random.uniform((ops.shape(x)[0], 1, 1, 1), seed=self.seed_generator) >= self.rate,
                        x.dtype)
        return x * keep / (1.0 - self.rate)

    def get_config(self) -> dict:
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="segkit")
class MixTransformerBlock(layers.Layer):
    """One MiT block on a (B, H, W, C) map: x + attention(LN(x)), then x + Mix-FFN(LN(x)).

    The attention's keys and values come from the map shrunk `sr_ratio` times by a strided convolution
    (SegFormer's sequence reduction); the sublayers are made in KerasHub's order, so weights copy in order.
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int = 1, drop_path: float = 0.0, **kwargs: Any):
        super().__init__(**kwargs)
        if dim % num_heads:
            raise ConfigError(f"backbone: MiT width {dim} does not divide into {num_heads} heads")
        self.dim, self.num_heads, self.sr_ratio, self.drop_path_rate = int(dim), int(num_heads), int(sr_ratio), \
            float(drop_path)
        self.norm1 = layers.LayerNormalization(epsilon=LN_EPSILON["block"], name="norm1")
        self.q = layers.Dense(dim, name="q")
        self.k = layers.Dense(dim, name="k")
        self.v = layers.Dense(dim, name="v")
        self.proj = layers.Dense(dim, name="proj")
        if self.sr_ratio > 1:
            self.sr = layers.Conv2D(dim, self.sr_ratio, strides=self.sr_ratio, name="sr")
            self.sr_norm = layers.LayerNormalization(epsilon=LN_EPSILON["embed"], name="sr_norm")
        self.drop_path = DropPath(self.drop_path_rate, name="drop_path")
        self.norm2 = layers.LayerNormalization(epsilon=LN_EPSILON["block"], name="norm2")
        self.fc1 = layers.Dense(4 * dim, name="fc1")
        self.dwconv = layers.DepthwiseConv2D(3, padding="same", name="dwconv")
        self.fc2 = layers.Dense(dim, name="fc2")

    def build(self, input_shape):
        shape = tuple(input_shape)
        self.norm1.build(shape)
        for dense in (self.q, self.k, self.v, self.proj):
            dense.build(shape)
        if self.sr_ratio > 1:
            self.sr.build(shape)
            self.sr_norm.build(shape)
        self.norm2.build(shape)
        self.fc1.build(shape)
        self.dwconv.build(shape[:-1] + (4 * self.dim,))
        self.fc2.build(shape[:-1] + (4 * self.dim,))
        super().build(input_shape)

    def _heads(self, tokens):
        """(B, N, C) → (B, heads, N, C / heads)."""
        return ops.transpose(ops.reshape(tokens, (ops.shape(tokens)[0], -1, self.num_heads,
                                                  self.dim // self.num_heads)), (0, 2, 1, 3))

    def attention(self, x):
        """Sequence-reduced multi-head self-attention of a (B, H, W, C) map."""
        shape = ops.shape(x)
        q = self._heads(ops.reshape(self.q(x), (shape[0], -1, self.dim)))
        source = self.sr_norm(self.sr(x)) if self.sr_ratio > 1 else x
        source = ops.reshape(source, (shape[0], -1, self.dim))
        k, v = self._heads(self.k(source)), self._heads(self.v(source))
        scale = (self.dim // self.num_heads) ** -0.5
        weights = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * scale, axis=-1)
        out = ops.reshape(ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3)), shape)
        return self.proj(out)

    def call(self, x, training=None):
        x = x + self.drop_path(self.attention(self.norm1(x)), training=training)
        ffn = self.fc2(ops.gelu(self.dwconv(self.fc1(self.norm2(x)))))
        return x + self.drop_path(ffn, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def forward_macs(self) -> int:
        """Multiply-accumulates of one call on its (built) input, for segkit.models.cost: the q/k/v/output
        projections, the sequence-reducing convolution, the two attention products and the Mix-FFN."""
        _, h, w, c = self.input.shape
        n, r = h * w, self.sr_ratio
        m = (h // r) * (w // r)
        attention = n * c * c + 2 * m * c * c + n * c * c + 2 * n * m * c + (m * r * r * c * c if r > 1 else 0)
        return int(attention + n * c * 4 * c + n * 9 * 4 * c + n * 4 * c * c)

    def get_config(self) -> dict:
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads, "sr_ratio": self.sr_ratio,
                "drop_path": self.drop_path_rate}


def build_mit(image_shape: Sequence[int], hidden_dims: Sequence[int], depths: Sequence[int],
              num_heads: Sequence[int] = MIT_DEFAULTS["num_heads"],
              sr_ratios: Sequence[int] = MIT_DEFAULTS["sr_ratios"],
              patch_sizes: Sequence[int] = MIT_DEFAULTS["patch_sizes"],
              strides: Sequence[int] = MIT_DEFAULTS["strides"],
              drop_path_rate: float = MIT_DEFAULTS["drop_path_rate"], name: str = "mit") -> keras.Model:
    """A MixTransformer for (H, W, bands) images with random weights: a model whose outputs are its levels'
    maps (strides 4, 8, 16, 32 by default), also kept as `pyramid_outputs` {"P1": …} with `hidden_dims`."""
    levels = len(hidden_dims)
    if not (len(depths) == len(num_heads) == len(sr_ratios) == len(patch_sizes) == len(strides) == levels):
        raise ConfigError(f"backbone: MiT settings need one value per level ({levels}) each")
    rates = np.linspace(0.0, float(drop_path_rate), int(sum(depths))) if sum(depths) else []
    image = keras.Input(tuple(int(v) for v in image_shape), name=f"{name}_image")
    x, outputs, block = image, [], 0
    for i in range(levels):
        x = layers.ZeroPadding2D(patch_sizes[i] // 2, name=f"{name}_embed{i}_pad")(x)
        x = layers.Conv2D(int(hidden_dims[i]), patch_sizes[i], strides=strides[i], name=f"{name}_embed{i}_conv")(x)
        x = layers.LayerNormalization(epsilon=LN_EPSILON["embed"], name=f"{name}_embed{i}_norm")(x)
        for k in range(int(depths[i])):
            x = MixTransformerBlock(int(hidden_dims[i]), int(num_heads[i]), int(sr_ratios[i]), float(rates[block]),
                                    name=f"{name}_block{i}_{k}")(x)
            block += 1
        x = layers.LayerNormalization(epsilon=LN_EPSILON["level"], name=f"{name}_level{i}_norm")(x)
        outputs.append(x)
    model = keras.Model(image, outputs, name=name)
    model.pyramid_outputs = {f"P{i + 1}": out for i, out in enumerate(outputs)}
    model.hidden_dims = [int(d) for d in hidden_dims]
    return model


def is_hub_mit(backbone: Any) -> bool:
    """Whether `backbone` is a KerasHub MiTBackbone (what a MiT preset loads as)."""
    return type(backbone).__name__ == "MiTBackbone"


def mit_from_hub(hub_mit: Any, image_shape: Sequence[int], adapt_kernel) -> keras.Model:
    """segkit's MiT for (H, W, bands) images with a KerasHub MiTBackbone's architecture and weights; the
    image-reading kernel goes through `adapt_kernel(kernel, bands)` when the bands differ from the hub's."""
    cfg = hub_mit.get_config()
    mit = build_mit(image_shape, cfg["hidden_dims"], cfg["layerwise_depths"], cfg["layerwise_num_heads"],
                    cfg["layerwise_sr_ratios"], cfg["layerwise_patch_sizes"], cfg["layerwise_strides"],
                    cfg["max_drop_path_rate"])
    source = [v.numpy() for v in hub_mit.weights]
    target = mit.weights
    if len(source) != len(target):
        raise ConfigError(f"preset: the MiT preset has {len(source)} weights, segkit's MiT of its settings "
                          f"{len(target)}")
    for i, (value, variable) in enumerate(zip(source, target)):
        if i == 0 and value.shape != tuple(variable.shape):
            value = adapt_kernel(value, int(image_shape[-1]))
        if value.shape != tuple(variable.shape):
            raise ConfigError(f"preset: MiT weight {variable.path}: the preset's is {value.shape}, "
                              f"expected {tuple(variable.shape)}")
        variable.assign(value)
    return mit
