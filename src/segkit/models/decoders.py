"""Decoders over any encoder: FPN, U-Net++ and DeepLabV3+ (registry names `fpn`, `unet_plus_plus`, `deeplabv3_plus`).

Every decoder here reads one thing from its encoder: the feature maps by stride, `{stride: features}`, from
`encoder_features` — the plain conv encoder (`backbone: plain`, the U-Net's own encoder: (Conv → BN → ReLU) × 2
and a 2×2 max-pool per level, features at strides 1, 2, …, 2**depth) or a KerasHub backbone (`backbone:
resnet34`, …, or `preset:`, see segkit.models.encoders; features at strides 2 … 32, N-band input adapted). An
encoder family added to segkit.models.encoders (its `random_backbone` / `BACKBONES`, or any KerasHub backbone
with `pyramid_outputs` given as a preset) plugs into every decoder with no change here.

The decoder blocks are options of every decoder (see segkit.models.layers.segmentation_model): `attention:
scse` after each decoder stage, `hypercolumn: true` (decoder stages resized and concatenated before the head),
`deep_supervision: true` (auxiliary heads on the decoder stages, trained with the mask loss, left out of the
prediction), `dropout` (spatial dropout before the head), and the classification head `classifier: true` on
the deepest feature.
"""
from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import layers

from segkit.errors import ConfigError, unknown_name
from segkit.models.encoders import BACKBONES, hub_encoder
from segkit.models.layers import (BN_MOMENTUM, Normalisation, attend, check_choice, check_input_shape, conv_block,
                                  model_input, segmentation_model, upsample)
from segkit.models.registry import register_model
from segkit.modelspec import decoder_blocks

PLAIN = "plain"
_PLAIN_DEFAULTS = {"depth": 4, "base_filters": 32, "batch_norm": True}


def encoder_features(input_shape: Sequence[int], normalisation: Normalisation | None, backbone: str = "resnet34",
                     preset: str | None = None, rgb_bands: Sequence[int] = (0, 1, 2), encoder_trainable: bool = True,
                     depth: int | None = None, base_filters: int | None = None, batch_norm: bool | None = None,
                     where: str = "decoder"):
    """(inputs, {stride: features}) of the encoder a spec names, wrapped as the nested model "encoder".

    `depth`, `base_filters`, `batch_norm` shape the plain encoder (defaults 4, 32, true) and are an error with
    a KerasHub backbone, which has its own; `preset` replaces `backbone`."""
    plain_keys = {"depth": depth, "base_filters": base_filters, "batch_norm": batch_norm}
    if preset or backbone != PLAIN:
        given = [k for k, v in plain_keys.items() if v is not None]
        if given:
            raise ConfigError(f"{where}.{given[0]}: shapes the plain encoder only (backbone: plain); the KerasHub "
                              f"{'preset' if preset else 'backbone ' + repr(backbone)} has its own")
        if not preset and backbone not in BACKBONES:
            raise unknown_name(f"{where}.backbone", "backbone", backbone, [PLAIN, *BACKBONES])
        return hub_encoder(input_shape, backbone, preset, rgb_bands, encoder_trainable, normalisation, where=where)
    depth, base, bn = (_PLAIN_DEFAULTS[k] if v is None else v for k, v in plain_keys.items())
    depth, base = int(depth), int(base)
    if depth < 1:
        raise ConfigError(f"{where}.depth: must be >= 1, got {depth}")
    if base < 1:
        raise ConfigError(f"{where}.base_filters: must be >= 1, got {base}")
    h, w, bands = check_input_shape(input_shape, depth, where)
    image = keras.Input((h, w, bands), name="encoder_image")
    x, outs = image, []
    for level in range(depth + 1):
        x = conv_block(x, base * 2**level, f"enc{level}" if level < depth else "bridge", batch_norm=bool(bn))
        outs.append(x)
        if level < depth:
            x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    encoder = keras.Model(image, outs, name="encoder")
    encoder.trainable = bool(encoder_trainable)
    inputs, x = model_input((h, w, bands), normalisation)
    return inputs, dict(zip((2**level for level in range(depth + 1)), encoder(x)))


def conv_bn_relu(x, filters: int, kernel: int, name: str, batch_norm: bool = True, dilation: int = 1):
    """Conv (no bias before BatchNorm) → BatchNorm (momentum BN_MOMENTUM, as every segkit block) → ReLU."""
    x = layers.Conv2D(int(filters), kernel, padding="same", dilation_rate=dilation, use_bias=not batch_norm,
                      name=f"{name}_conv")(x)
    if batch_norm:
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}: must be a whole number >= 1, got {value!r}")
    return value


def _doubling(strides: list[int], where: str) -> None:
    """ConfigError unless each feature map is half the size of the one before (the decoders step by 2)."""
    for a, b in zip(strides, strides[1:]):
        if b != 2 * a:
            raise ConfigError(f"{where}: the encoder's feature strides {strides} do not double level by level")


# --- FPN ----------------------------------------------------------------------------------------------------

@register_model("fpn")
def fpn(
    input_shape: Sequence[int],
    n_classes: int,
    backbone: str = "resnet34",
    preset: str | None = None,
    rgb_bands: Sequence[int] = (0, 1, 2),
    encoder_trainable: bool = True,
    depth: int | None = None,
    base_filters: int | None = None,
    batch_norm: bool | None = None,
    pyramid_filters: int = 256,
    segmentation_filters: int = 128,
    attention: str | None = None,
    hypercolumn: bool = False,
    deep_supervision: bool | float = False,
    dropout: float = 0.0,
    activation: str = "sigmoid",
    normalisation: Normalisation | None = None,
    classifier: bool = False,
) -> keras.Model:
    """Feature Pyramid Network with the semantic-segmentation head of Panoptic FPN (Kirillov et al. 2019), as
    segmentation_models_pytorch's FPN.

    Top-down pathway over the encoder features at strides >= 4 (the deepest alone if it has none): a 1×1
    lateral conv to `pyramid_filters` each, the coarser level up-sampled ×2 (nearest) and added. Each pyramid
    level then goes through (3×3 conv `segmentation_filters` → BN → ReLU → bilinear ×2) until stride 4 (one
    conv for the stride-4 level itself); the levels are summed, and the head's logits are resized ×4 to the
    input. `hypercolumn: true` concatenates the levels instead of summing them; `attention: scse` follows each
    level's segmentation block; `deep_supervision` puts an auxiliary head on each level's segmentation block.
    """
    attention, hypercolumn, aux_weight, dropout = decoder_blocks(attention, hypercolumn, deep_supervision, dropout,
                                                                 where="fpn")
    pyramid = _positive_int(pyramid_filters, "fpn.pyramid_filters")
    segment = _positive_int(segmentation_filters, "fpn.segmentation_filters")
    inputs, feats = encoder_features(input_shape, normalisation, backbone, preset, rgb_bands, encoder_trainable,
                                     depth, base_filters, batch_norm, where="fpn")
    strides = sorted(feats)
    levels = [s for s in strides if s >= 4] or strides[-1:]
    _doubling(levels, "fpn")
    finest, deepest = levels[0], levels[-1]
    x = layers.Conv2D(pyramid, 1, name=f"fpn_lateral{deepest}")(feats[deepest])
    pyramid_levels = {deepest: x}
    for s in reversed(levels[:-1]):
        up = layers.UpSampling2D(2, name=f"fpn_up{s}")(x)
        lateral = layers.Conv2D(pyramid, 1, name=f"fpn_lateral{s}")(feats[s])
        x = pyramid_levels[s] = layers.Add(name=f"fpn_p{s}")([up, lateral])
    segments = []
    for s in reversed(levels):
        y = pyramid_levels[s]
        n_up = (s // finest).bit_length() - 1
        for i in range(max(1, n_up)):
            y = conv_bn_relu(y, segment, 3, f"fpn_seg{s}_{i}")
            if i < n_up:
                y = layers.UpSampling2D(2, interpolation="bilinear", name=f"fpn_seg{s}_{i}_up")(y)
        segments.append((finest, attend(y, attention, f"fpn_seg{s}")))
    parts = [t for _, t in segments]
    if len(parts) == 1:
        merged = parts[0]
    elif hypercolumn:
        merged = layers.Concatenate(name="hypercolumn")(parts)
    else:
        merged = layers.Add(name="fpn_merge")(parts)
    return segmentation_model(inputs, merged, feats[strides[-1]], int(n_classes), activation, bool(classifier), "fpn",
                              stride=finest, aux=segments, aux_weight=aux_weight, dropout=dropout)


# --- U-Net++ ------------------------------------------------------------------------------------------------

@register_model("unet_plus_plus")
def unet_plus_plus(
    input_shape: Sequence[int],
    n_classes: int,
    backbone: str = "resnet34",
    preset: str | None = None,
    rgb_bands: Sequence[int] = (0, 1, 2),
    encoder_trainable: bool = True,
    depth: int | None = None,
    base_filters: int | None = None,
    batch_norm: bool | None = None,
    decoder_filters: Sequence[int] | None = None,
    decoder_batch_norm: bool = True,
    upsampling: str = "transpose",
    attention: str | None = None,
    hypercolumn: bool = False,
    deep_supervision: bool | float = False,
    dropout: float = 0.0,
    activation: str = "sigmoid",
    normalisation: Normalisation | None = None,
    classifier: bool = False,
) -> keras.Model:
    """U-Net++ (Zhou et al. 2018): nested, densely connected skips.

    With the encoder's features X(i,0) at strides s_0 < … < s_L, node X(i,j) = block(concat(X(i,0), …,
    X(i,j−1), up(X(i+1,j−1)))) for i + j <= L, the block being the U-Net's (3×3 conv → BN → ReLU) × 2; the
    output comes from X(0,L), then (for the KerasHub encoders, whose finest feature is at stride 2) up-sampling
    steps without skip to the input size. `decoder_filters`: the widths from the deepest level up (level i of
    the nest has one width; the last is reused), default the plain encoder's own widths, else
    (256, 128, 64, 32, 16). `deep_supervision` puts the auxiliary heads on the top row X(0,1) … X(0,L−1) (the
    paper's), `hypercolumn` concatenates the decoding path X(L−1,1), X(L−2,2), … X(0,L) resized to the input.
    """
    attention, hypercolumn, aux_weight, dropout = decoder_blocks(attention, hypercolumn, deep_supervision, dropout,
                                                                 where="unet_plus_plus")
    check_choice(upsampling, ("transpose", "bilinear"), "upsampling")
    inputs, feats = encoder_features(input_shape, normalisation, backbone, preset, rgb_bands, encoder_trainable,
                                     depth, base_filters, batch_norm, where="unet_plus_plus")
    strides = sorted(feats)
    _doubling(strides, "unet_plus_plus")
    last = len(strides) - 1
    if decoder_filters is None:
        plain = backbone == PLAIN and not preset
        filters = [int(feats[s].shape[-1]) for s in reversed(strides[:-1])] if plain else [256, 128, 64, 32, 16]
    else:
        filters = [int(f) for f in decoder_filters]
    if not filters or min(filters) < 1:
        raise ConfigError(f"unet_plus_plus.decoder_filters: needs widths >= 1, got {decoder_filters}")

    def width(step: int) -> int:  # step 0 = the deepest decoder level
        return filters[min(step, len(filters) - 1)]

    bn = bool(decoder_batch_norm)
    nodes = {(i, 0): feats[s] for i, s in enumerate(strides)}
    for j in range(1, last + 1):
        for i in range(last - j + 1):
            name, w = f"x{i}_{j}", width(last - 1 - i)
            up = upsample(nodes[(i + 1, j - 1)], w, upsampling, name)
            x = layers.Concatenate(name=f"{name}_concat")([up, *(nodes[(i, k)] for k in range(j))])
            nodes[(i, j)] = attend(conv_block(x, w, name, batch_norm=bn), attention, name)
    stages = [(strides[i], nodes[(i, last - i)]) for i in reversed(range(last))] or [(strides[0], nodes[(0, 0)])]
    aux = [(strides[0], nodes[(0, j)]) for j in range(1, last)]
    x, stride, step = stages[-1][1], strides[0], last
    if stride > 1 and last:
        aux.append((stride, x))  # X(0,L) is a decoder stage too when up-sampling steps follow
    while stride > 1:
        stride //= 2
        w = width(step)
        x = upsample(x, w, upsampling, f"dec{stride}")
        x = attend(conv_block(x, w, f"dec{stride}", batch_norm=bn), attention, f"dec{stride}")
        stages.append((stride, x))
        step += 1
    return segmentation_model(inputs, x, feats[strides[-1]], int(n_classes), activation, bool(classifier),
                              "unet_plus_plus", stages=stages, hypercolumn=hypercolumn, aux=aux, aux_weight=aux_weight,
                              dropout=dropout)


# --- DeepLabV3+ ---------------------------------------------------------------------------------------------

@register_model("deeplabv3_plus")
def deeplabv3_plus(
    input_shape: Sequence[int],
    n_classes: int,
    backbone: str = "resnet34",
    preset: str | None = None,
    rgb_bands: Sequence[int] = (0, 1, 2),
    encoder_trainable: bool = True,
    depth: int | None = None,
    base_filters: int | None = None,
    batch_norm: bool | None = None,
    aspp_filters: int = 256,
    atrous_rates: Sequence[int] = (6, 12, 18),
    low_level_filters: int = 48,
    decoder_filters: int = 256,
    attention: str | None = None,
    hypercolumn: bool = False,
    deep_supervision: bool | float = False,
    dropout: float = 0.0,
    activation: str = "sigmoid",
    normalisation: Normalisation | None = None,
    classifier: bool = False,
) -> keras.Model:
    """DeepLabV3+ (Chen et al. 2018): atrous spatial pyramid pooling on the deepest feature, a low-level skip.

    ASPP: a 1×1 conv, one 3×3 conv per rate of `atrous_rates` (dilated) and image pooling (global average →
    1×1 conv, broadcast back), each `aspp_filters` wide with BN and ReLU, concatenated and projected by a 1×1
    conv. The encoders are not dilated, so ASPP runs on the deepest feature (stride 32 on the KerasHub
    backbones, 2**depth on the plain encoder). Decoder: ASPP up-sampled (bilinear) to the stride-4 feature
    (the finest one for a shallower encoder), concatenated with that feature reduced to `low_level_filters`
    by a 1×1 conv, two 3×3 convs of `decoder_filters`, the head, logits resized ×4 to the input.
    `attention: scse` follows ASPP and the decoder convs; `deep_supervision` puts an auxiliary head on the ASPP
    output; `hypercolumn` concatenates the up-sampled ASPP output beside the decoder's before the head.
    """
    attention, hypercolumn, aux_weight, dropout = decoder_blocks(attention, hypercolumn, deep_supervision, dropout,
                                                                 where="deeplabv3_plus")
    aspp = _positive_int(aspp_filters, "deeplabv3_plus.aspp_filters")
    low_filters = _positive_int(low_level_filters, "deeplabv3_plus.low_level_filters")
    dec_filters = _positive_int(decoder_filters, "deeplabv3_plus.decoder_filters")
    rates = list(atrous_rates) if isinstance(atrous_rates, (list, tuple)) else [atrous_rates]
    for r in rates:
        _positive_int(r, "deeplabv3_plus.atrous_rates")
    inputs, feats = encoder_features(input_shape, normalisation, backbone, preset, rgb_bands, encoder_trainable,
                                     depth, base_filters, batch_norm, where="deeplabv3_plus")
    strides = sorted(feats)
    deepest = strides[-1]
    high = feats[deepest]
    branches = [conv_bn_relu(high, aspp, 1, "aspp_1x1")]
    branches += [conv_bn_relu(high, aspp, 3, f"aspp_rate{r}", dilation=r) for r in rates]
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(high)
    pooled = conv_bn_relu(pooled, aspp, 1, "aspp_pool")
    pooled = layers.UpSampling2D(tuple(int(d) for d in high.shape[1:3]), name="aspp_pool_broadcast")(pooled)
    x = layers.Concatenate(name="aspp_concat")([*branches, pooled])
    x = attend(conv_bn_relu(x, aspp, 1, "aspp_project"), attention, "aspp")
    stages = [(deepest, x)]
    lows = [s for s in strides if s < deepest]
    if lows:
        low = 4 if 4 in lows else max(s for s in lows if s <= 4) if min(lows) <= 4 else min(lows)
        y = layers.UpSampling2D(deepest // low, interpolation="bilinear", name="aspp_upsample")(x)
        skip = conv_bn_relu(feats[low], low_filters, 1, "low_level")
        y = layers.Concatenate(name="decoder_concat")([y, skip])
        y = conv_bn_relu(y, dec_filters, 3, "decoder1")
        y = attend(conv_bn_relu(y, dec_filters, 3, "decoder2"), attention, "decoder")
        stages.append((low, y))
    stride, x = stages[-1]
    return segmentation_model(inputs, x, high, int(n_classes), activation, bool(classifier), "deeplabv3_plus",
                              stride=stride, stages=stages, hypercolumn=hypercolumn, aux_weight=aux_weight,
                              dropout=dropout)
