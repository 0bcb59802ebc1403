"""Building blocks shared by the U-Net family and the other decoders: the input normalisation layer, the
encoder/decoder skeleton, the (Conv → BN → ReLU) × 2 block, up-sampling, the output head, and the decoder blocks
every decoder takes as options: scSE attention, hypercolumns, deep supervision, dropout before the head.

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


def output_head(x, n_classes: int, activation: str, name: str = "probabilities", upsampling: int = 1,
                logits: str = "logits"):
    """1×1 convolution to the class channels and the final activation, always in float32.

    The activation layer has dtype float32 so the model's output (and hence losses and saved
    probabilities) stays float32 under a mixed-precision policy. `name` names that layer, hence the output:
    "probabilities" for a one-output model, MASK_OUTPUT beside a classification head. `upsampling` > 1
    (features at a stride of the input, as FPN's and DeepLabV3+'s) resizes the logits bilinearly to the input
    size before the activation. `logits` names the convolution.
    """
    check_choice(activation, ACTIVATIONS, "activation")
    if activation == "softmax" and n_classes < 2:
        raise ConfigError("activation: softmax needs n_classes >= 2 (use sigmoid for a single binary mask)")
    x = layers.Conv2D(n_classes, 1, padding="same", name=logits)(x)
    if upsampling > 1:
        x = layers.UpSampling2D(int(upsampling), interpolation="bilinear", name=f"{logits}_upsample")(x)
    return layers.Activation(activation, dtype="float32", name=name)(x)


MASK_OUTPUT, LABEL_OUTPUT = "mask", "label"  # the two outputs of a model with a classification head


def classifier_head(bottleneck, n_classes: int):
    """Per-class "the mask is non-empty" probabilities (B, n_classes) from the bottleneck features: global
    average pooling → dense → sigmoid (float32, named LABEL_OUTPUT). Also for softmax masks: one sigmoid per
    channel, background included, so the head gates each class on its own."""
    x = layers.GlobalAveragePooling2D(name="label_pool")(bottleneck)
    x = layers.Dense(int(n_classes), name="label_logits")(x)
    return layers.Activation("sigmoid", dtype="float32", name=LABEL_OUTPUT)(x)


def scse(x, name: str, reduction: int = 16):
    """Concurrent spatial and channel squeeze & excitation (Roy et al. 2018): x·cSE(x) + x·sSE(x), where cSE
    gates each channel from the globally pooled features (1×1 convs C → C/r → C, ReLU then sigmoid) and sSE each
    position from a 1×1 conv to one sigmoid channel."""
    channels = int(x.shape[-1])
    g = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_cse_pool")(x)
    g = layers.Conv2D(max(1, channels // reduction), 1, activation="relu", name=f"{name}_cse_reduce")(g)
    g = layers.Conv2D(channels, 1, activation="sigmoid", name=f"{name}_cse_expand")(g)
    s = layers.Conv2D(1, 1, activation="sigmoid", name=f"{name}_sse")(x)
    return layers.Add(name=f"{name}_scse")([layers.Multiply(name=f"{name}_cse")([x, g]),
                                            layers.Multiply(name=f"{name}_sse_gate")([x, s])])


def attend(x, attention: str | None, name: str):
    """The decoder stage's attention block: scSE for "scse", nothing for None."""
    return scse(x, name) if attention == "scse" else x


def resize_to(x, factor: int, name: str):
    """Bilinear up-sampling by an integer factor (nothing for 1)."""
    if factor == 1:
        return x
    return layers.UpSampling2D(int(factor), interpolation="bilinear", name=name)(x)


@keras.saving.register_keras_serializable(package="segkit")
class DeepSupervision(layers.Layer):
    """The mask output of a deeply supervised model: inputs [main, aux_1, …, aux_K] (probabilities at the input
    size); at inference (and in `predict`, and the saved model's prediction) the main probabilities alone. In
    training, the K auxiliary maps ride along as extra channels of the same output, [main | aux_1 | … | aux_K],
    which `DeepSupervisedModel` splits off again before its compiled loss and metrics see the main part; the
    auxiliary losses (the compiled mask loss on each map) weigh `aux_weights`."""

    def __init__(self, aux_weights: Sequence[float], **kwargs: Any) -> None:
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.aux_weights = [float(w) for w in aux_weights]

    def call(self, inputs, training=None):
        if training:
            return ops.concatenate([ops.cast(t, "float32") for t in inputs], axis=-1)
        return ops.cast(inputs[0], "float32")

    def compute_output_shape(self, input_shapes):
        return tuple(input_shapes[0])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "aux_weights": self.aux_weights}


@keras.saving.register_keras_serializable(package="segkit")
class DeepSupervisedModel(keras.Model):
    """A functional segmentation model with auxiliary heads (a `DeepSupervision` output layer).

    Its outputs are those of the same model without them (the mask, or `mask` and `label`), so `predict`,
    a checkpoint reloaded with plain `keras.models.load_model` and every caller see one mask. Training adds
    Σ_k w_k · loss(mask target, aux_k) to the compiled loss, with the compiled mask loss (the first of a list, or
    the entry of a dict keyed by the mask output's name); the compiled metrics see the main output only. No change to how it is compiled
    or fit.
    """

    def _supervision(self) -> DeepSupervision | None:
        for layer in self.layers:
            if isinstance(layer, DeepSupervision):
                return layer
        return None

    def split_auxiliary(self, y_pred):
        """(y_pred with the main mask only, [(weight, aux map), …]); no auxiliary maps outside training."""
        structured = isinstance(y_pred, (list, tuple))
        mask = y_pred[0] if structured else y_pred
        layer = self._supervision()
        n = int(self.outputs[0].shape[-1])
        if layer is None or mask.shape[-1] == n:
            return y_pred, []
        aux = [(w, mask[..., n * (i + 1):n * (i + 2)]) for i, w in enumerate(layer.aux_weights)]
        main = mask[..., :n]
        return ([main, *y_pred[1:]] if structured else main), aux

    def _mask_loss(self):
        loss = self.loss
        if isinstance(loss, dict):
            loss = loss.get(self.output_names[0])
        elif isinstance(loss, (list, tuple)):
            loss = loss[0] if loss else None
        if loss is None:
            return None
        loss = keras.losses.get(loss)
        return loss if isinstance(loss, keras.losses.Loss) else _mean_loss(loss)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        y_main, aux = self.split_auxiliary(y_pred)
        total = super().compute_loss(x, y, y_main, sample_weight, training=training)
        loss = self._mask_loss() if aux else None
        if loss is None:
            return total
        target, weight = y, sample_weight
        if isinstance(y, dict):
            target = y[self.output_names[0]]
            weight = sample_weight.get(self.output_names[0]) if isinstance(sample_weight, dict) else sample_weight
        elif isinstance(y, (list, tuple)):
            target = y[0]
            weight = sample_weight[0] if isinstance(sample_weight, (list, tuple)) else sample_weight
        for w, pred in aux:
            total = total + w * ops.cast(loss(target, pred, sample_weight=weight), "float32")
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(x, y, self.split_auxiliary(y_pred)[0], sample_weight)


def _mean_loss(fn):
    """A plain loss function (what a loss name compiles to) as a Loss-like callable taking sample weights:
    the mean of its per-pixel values, weighted, as Keras' "sum over batch size" reduction."""

    def loss(target, pred, sample_weight=None):
        values = ops.cast(fn(target, pred), "float32")
        if sample_weight is not None:
            weight = ops.cast(sample_weight, "float32")
            while len(weight.shape) < len(values.shape):
                weight = ops.expand_dims(weight, -1)
            values = values * weight
        return ops.mean(values)

    return loss


Stage = tuple[int, Any]  # (stride, features) of one decoder stage


def segmentation_model(inputs, features, bottleneck, n_classes: int, activation: str, classifier: bool,
                       name: str, stride: int = 1, stages: Sequence[Stage] = (), hypercolumn: bool = False,
                       aux: Sequence[Stage] | None = None, aux_weight: float = 0.0,
                       dropout: float = 0.0) -> keras.Model:
    """The model from its decoder's last features (at `stride` of the input): one output (the mask
    probabilities, as before) or, with `classifier`, two outputs in this order, `mask` (B, H, W, C) and `label`
    (B, C) from the bottleneck.

    The decoder blocks: `hypercolumn` concatenates every decoder stage of `stages` ((stride, features), deepest
    first, the last one `features`), resized to `stride`, before the head; `dropout` (> 0) puts a spatial
    dropout before the head; `aux_weight` > 0 puts an auxiliary head (1×1 conv, bilinear resize to the input,
    activation) on each stage of `aux` (default: `stages` but the last) whose losses weigh `aux_weight` in all
    during training (see DeepSupervision); the model is then a DeepSupervisedModel with the same outputs.
    """
    stages = list(stages)
    if hypercolumn and len(stages) > 1:
        parts = [resize_to(t, s // stride, f"hypercolumn{i}_resize") for i, (s, t) in enumerate(stages)]
        features = layers.Concatenate(name="hypercolumn")(parts)
    if dropout:
        features = layers.SpatialDropout2D(float(dropout), name="head_dropout")(features)
    out = MASK_OUTPUT if classifier else "probabilities"
    aux = list(stages[:-1] if aux is None else aux) if aux_weight > 0 else []
    model_class = keras.Model
    if not aux:
        mask = output_head(features, n_classes, activation, out, upsampling=stride)
    else:
        main = output_head(features, n_classes, activation, f"{out}_main", upsampling=stride)
        heads = [output_head(t, n_classes, activation, f"aux{i}_probabilities", upsampling=s, logits=f"aux{i}_logits")
                 for i, (s, t) in enumerate(aux)]
        mask = DeepSupervision([aux_weight / len(aux)] * len(aux), name=out)([main, *heads])
        model_class = DeepSupervisedModel
    if not classifier:
        return model_class(inputs, mask, name=name)
    return model_class(inputs, [mask, classifier_head(bottleneck, n_classes)], name=name)


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
    attention: str | None = None,
    hypercolumn: bool = False,
    aux_weight: float = 0.0,
) -> keras.Model:
    """Encoder (block + 2×2 max-pool per level), bridge block, decoder (up-sample, concat skip, block).

    `block(x, filters, level, name)` builds one level's block; levels 0..depth-1 are the encoder (and the
    mirrored decoder), level `depth` the bridge. Filters double per level from `base_filters`.
    `extra_inputs(inputs)`, when given, runs once on the input tensor before the network (the FractalNet uses
    it to draw its per-batch drop-path decision) and its result is passed to every block as `context=`.
    `normalisation` (per-band scale, offset) puts an InputNormalisation layer first, so the model takes raw
    images. `classifier` adds the classification head on the bridge (see `segmentation_model`).
    `attention` ("scse") follows each decoder block; `hypercolumn` and `aux_weight` (deep supervision) work on
    the decoder's levels, see `segmentation_model`.
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
    stages = []
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = upsample(x, filters, upsampling, f"dec{level}")
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = attend(block(x, filters, level, f"dec{level}", **kw), attention, f"dec{level}")
        stages.append((2**level, x))
    return segmentation_model(inputs, x, bottleneck, n_classes, activation, bool(classifier), name, stages=stages,
                              hypercolumn=hypercolumn, aux_weight=aux_weight)
