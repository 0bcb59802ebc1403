"""FractalNet-U-Net: a U-Net whose every double-conv block is a FractalNet block (Larsson et al. 2016).

A block of C columns follows the expansion rule f_1(z) = conv(z), f_{C+1}(z) = join(f_C(f_C(z)), conv(z)),
flattened as in the paper: a join merges every column that meets at that depth, so the last join of a block
has C inputs. Column j (0 = deepest) holds 2^(C−1−j) conv units; the block holds 2^C − 1. A conv unit is
Conv 3×3 → Dropout → BatchNorm → ReLU (the authors' order) and a join is the element-wise **mean** of its
inputs. Skips between encoder and decoder stay concatenations.

Drop-path (training only). One `DropPathSampler` per network draws, once per batch, whether the batch is
*global* (probability `global_ratio`) and which column is kept; every join of the network reads that same
draw. In a global batch each join keeps only the chosen column's input (a join the chosen column does not
reach keeps the plain mean; its output is discarded further on, and it keeps BatchNorm statistics sane).
In a local batch each join drops each input independently with probability `drop_path_local`, keeping one
at random when all would go. At inference every join averages all inputs, or, with `deepest_only`, passes
the deepest column alone (`deepest_column_model` turns a trained model into that sub-network).
Randomness comes from `keras.random` with `SeedGenerator`s, so TensorFlow, JAX and PyTorch all run it.
"""
from __future__ import annotations

import zlib
from typing import Any, Sequence

import keras
from keras import layers, ops

from segkit.errors import ConfigError
from segkit.models.layers import BN_MOMENTUM, Normalisation, check_choice, per_level, unet_skeleton
from segkit.models.registry import register_model
from segkit.modelspec import decoder_blocks

INFERENCE_MODES = ("mean", "deepest")


@keras.saving.register_keras_serializable(package="segkit")
class DropPathSampler(layers.Layer):
    """Draws one drop-path decision per batch for the whole network: (is_global, column), shape (N, 2).

    The input only ties the draw to the batch (its batch size); the same row is repeated for every image.
    At inference it returns zeros, which the joins ignore.
    """

    def __init__(self, columns: int, global_ratio: float = 0.5, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.columns, self.global_ratio, self.seed = int(columns), float(global_ratio), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        batch = ops.shape(x)[0]
        if not training:
            return ops.zeros((batch, 2), dtype="float32")
        is_global = ops.cast(keras.random.uniform((), seed=self.seed_generator) < self.global_ratio, "float32")
        column = ops.cast(
            keras.random.randint((), 0, self.columns, seed=self.seed_generator), "float32"
        )
        row = ops.stack([is_global, column])
        return ops.broadcast_to(ops.expand_dims(row, 0), (batch, 2))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "columns": self.columns, "global_ratio": self.global_ratio,
                "seed": self.seed}


@keras.saving.register_keras_serializable(package="segkit")
class FractalJoin(layers.Layer):
    """Element-wise mean of the columns meeting here, with drop-path in training.

    Called on `[decision, x_0, …, x_{k−1}]` where `decision` is the network's `DropPathSampler` output and
    x_j is column j's tensor (0 = deepest).
    """

    def __init__(self, drop_prob: float = 0.15, inference: str = "mean", seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        check_choice(inference, INFERENCE_MODES, "inference")
        self.drop_prob, self.inference, self.seed = float(drop_prob), inference, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def path_weights(self, decision, k: int):
        """Weights (k,) of this batch's inputs in training: 1/kept for kept inputs, 0 for dropped ones."""
        is_global = decision[0, 0] > 0.5
        column = ops.cast(decision[0, 1], "int32")
        keep = ops.cast(keras.random.uniform((k,), seed=self.seed_generator) >= self.drop_prob, "float32")
        fallback = ops.one_hot(keras.random.randint((), 0, k, seed=self.seed_generator), k, dtype="float32")
        local = ops.where(ops.sum(keep) > 0, keep, fallback)
        chosen = ops.where(column < k, ops.one_hot(column, k, dtype="float32"), ops.ones((k,), "float32"))
        keep = ops.where(is_global, chosen, local)
        return keep / ops.sum(keep)

    def call(self, inputs, training=None):
        decision, *columns = inputs
        k = len(columns)
        if not training:
            if self.inference == "deepest":
                return columns[0]
            out = columns[0]
            for x in columns[1:]:
                out = out + x
            return out / k
        weights = ops.cast(self.path_weights(ops.cast(decision, "float32"), k), columns[0].dtype)
        out = columns[0] * weights[0]
        for j in range(1, k):
            out = out + columns[j] * weights[j]
        return out

    def compute_output_shape(self, input_shapes):
        return input_shapes[1]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "drop_prob": self.drop_prob, "inference": self.inference,
                "seed": self.seed}


class _BlockBuilder:
    """Builds one fractal block, naming conv units `<block>_col<j>_<i>` (column j, i-th unit down it)."""

    def __init__(self, name, filters, columns, dropout, context, drop_prob, inference, seed):
        self.name, self.filters, self.dropout, self.context = name, filters, dropout, context
        self.drop_prob, self.inference, self.seed = drop_prob, inference, seed
        self.units_in_column = [0] * columns
        self.n_joins = 0

    def unit(self, x, column: int):
        prefix = f"{self.name}_col{column}_{self.units_in_column[column]}"
        self.units_in_column[column] += 1
        x = layers.Conv2D(self.filters, 3, padding="same", name=f"{prefix}_conv")(x)
        if self.dropout > 0:
            x = layers.Dropout(self.dropout, name=f"{prefix}_drop")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{prefix}_bn")(x)
        return layers.Activation("relu", name=f"{prefix}_relu")(x)

    def join(self, columns: list):
        if len(columns) == 1:
            return columns[0]
        seed = None if self.seed is None else self.seed + 64 * (zlib.crc32(self.name.encode()) % 100_000) + self.n_joins
        layer = FractalJoin(self.drop_prob, self.inference, seed=seed, name=f"{self.name}_join{self.n_joins}")
        self.n_joins += 1
        return layer([self.context, *columns])

    def columns(self, z, c: int) -> list:
        """The c column tensors of f_c(z) before its last join, deepest first."""
        if c == 1:
            return [self.unit(z, 0)]
        inner = self.join(self.columns(z, c - 1))
        return self.columns(inner, c - 1) + [self.unit(z, c - 1)]


def fractal_block(x, filters: int, columns: int, name: str, context, dropout: float = 0.0,
                  drop_prob: float = 0.15, inference: str = "mean", seed: int | None = None):
    """A C-column fractal block on `x` (2^C − 1 conv units); `context` is the network's DropPathSampler output."""
    builder = _BlockBuilder(name, filters, columns, dropout, context, drop_prob, inference, seed)
    return builder.join(builder.columns(x, columns))


@register_model("fractal_unet")
def fractal_unet(
    input_shape: Sequence[int],
    n_classes: int,
    columns: int = 3,
    depth: int = 4,
    base_filters: int = 16,
    dropout: float | Sequence[float] = 0.0,
    drop_path_local: float = 0.15,
    global_ratio: float = 0.5,
    deepest_only: bool = False,
    upsampling: str = "transpose",
    activation: str = "sigmoid",
    seed: int | None = None,
    normalisation: Normalisation | None = None,
    classifier: bool = False,
    attention: str | None = None,
    hypercolumn: bool = False,
    deep_supervision: bool | float = False,
) -> keras.Model:
    """FractalNet-U-Net with `columns` columns per block (see the module docstring).

    `dropout`: one rate for every conv unit, or depth + 1 rates (encoder levels, then the bridge; decoder
    blocks reuse their level's rate); the paper's CIFAR schedule is 0, .1, .2, .3, .4. `drop_path_local`:
    local drop probability p per join input; `global_ratio`: share of batches in global mode.
    `deepest_only`: at inference keep only the deepest column. With base_filters 16 and 3 columns it costs
    about as much as a base-32 U-Net (a 3-column block costs ≈ 3.4 U-Net blocks of equal width).
    `normalisation`: the adapter's per-band (scale, offset), applied by the model's first layer to raw images.
    `classifier`: also output per-class "mask non-empty" probabilities from the bridge (outputs `mask`, `label`).
    `attention`, `hypercolumn`, `deep_supervision`: the decoder blocks, as for the U-Net.
    """
    attention, hypercolumn, aux_weight, _ = decoder_blocks(attention, hypercolumn, deep_supervision,
                                                           where="fractal_unet", per_level=True)
    columns, depth = int(columns), int(depth)
    if not 1 <= columns <= 6:
        raise ConfigError(f"columns: must be between 1 and 6, got {columns}")
    for key, p in (("drop_path_local", drop_path_local), ("global_ratio", global_ratio)):
        if not 0.0 <= float(p) <= 1.0:
            raise ConfigError(f"{key}: must be a probability in [0, 1], got {p}")
    rates = per_level(dropout, depth, "dropout")
    inference = "deepest" if deepest_only else "mean"

    def sampler(inputs):
        return DropPathSampler(columns, float(global_ratio), seed=seed, name="drop_path")(inputs)

    def block(x, filters, level, name, context):
        return fractal_block(x, filters, columns, name, context, dropout=rates[level],
                             drop_prob=float(drop_path_local), inference=inference, seed=seed)

    return unet_skeleton(input_shape, int(n_classes), block, depth, int(base_filters), upsampling, activation,
                         name="fractal_unet", extra_inputs=sampler, normalisation=normalisation,
                         classifier=bool(classifier), attention=attention, hypercolumn=hypercolumn,
                         aux_weight=aux_weight)


def set_join_inference(model: keras.Model, mode: str) -> keras.Model:
    """A copy of a trained FractalNet-U-Net whose joins use `mode` at inference ("mean" or "deepest").

    "deepest" gives the paper's deepest-column sub-network; the weights are shared by copy.
    """
    check_choice(mode, INFERENCE_MODES, "inference")
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"].endswith("FractalJoin"):
            layer["config"]["inference"] = mode
    copy = model.__class__.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def deepest_column_model(model: keras.Model) -> keras.Model:
    """The deepest-column-only sub-network of a trained FractalNet-U-Net (same weights)."""
    return set_join_inference(model, "deepest")
