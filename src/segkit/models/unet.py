"""The U-Net (Ronneberger et al. 2015): double 3×3 convolutions per level, max-pool down, skip concatenations."""
from __future__ import annotations

from typing import Sequence

import keras

from segkit.models.layers import Normalisation, conv_block, per_level, unet_skeleton
from segkit.models.registry import register_model
from segkit.modelspec import decoder_blocks


@register_model("unet")
def unet(
    input_shape: Sequence[int],
    n_classes: int,
    depth: int = 4,
    base_filters: int = 32,
    batch_norm: bool = True,
    dropout: float | Sequence[float] = 0.0,
    upsampling: str = "transpose",
    activation: str = "sigmoid",
    normalisation: Normalisation | None = None,
    classifier: bool = False,
    attention: str | None = None,
    hypercolumn: bool = False,
    deep_supervision: bool | float = False,
) -> keras.Model:
    """A U-Net of `depth` down-samplings (H and W must divide by 2**depth).

    `dropout`: one rate for every block, or depth + 1 rates (encoder levels 0..depth-1, then the bridge; the
    decoder reuses its level's rate). `upsampling`: "transpose" (2×2 transposed conv) or "bilinear" (resize +
    1×1 conv). `activation`: "sigmoid" for binary / multi-label masks, "softmax" for one-hot multi-class.
    The output is float32 (N, H, W, n_classes) probabilities, also under mixed precision.
    `normalisation`: the adapter's per-band (scale, offset), applied by the model's first layer to raw images.
    `classifier`: also output per-class "mask non-empty" probabilities from the bridge (outputs `mask`, `label`).
    Decoder blocks: `attention: scse` after each decoder block; `hypercolumn` concatenates every decoder level,
    resized to the input, before the head; `deep_supervision` (true, or the auxiliary losses' total weight) puts
    an auxiliary head on each decoder level but the last, trained with the mask loss, and kept out of the
    prediction (see segkit.models.layers.DeepSupervision).
    """
    attention, hypercolumn, aux_weight, _ = decoder_blocks(attention, hypercolumn, deep_supervision, where="unet",
                                                           per_level=True)
    rates = per_level(dropout, int(depth), "dropout")

    def block(x, filters, level, name):
        return conv_block(x, filters, name, batch_norm=bool(batch_norm), dropout=rates[level])

    return unet_skeleton(
        input_shape, int(n_classes), block, int(depth), int(base_filters), upsampling, activation, name="unet",
        normalisation=normalisation, classifier=bool(classifier), attention=attention, hypercolumn=hypercolumn,
        aux_weight=aux_weight,
    )
