"""Segmentation losses by name, written with `keras.ops` only so every backend runs them.

Every loss takes `y_true` of the model's output shape (N, H, W, C) with values in {0, 1} and `y_pred`
probabilities (the models end in sigmoid or softmax), and returns one value per image (so sample weights
work); Keras averages them over the batch. Each class is registered with Keras, so a model compiled with
one of them saves and reloads with `keras.models.load_model(path)` and no `custom_objects`.

Names for `get_loss` (also the `train.loss` config key):

sigmoid outputs (binary or multi-label masks, one channel per class)
    bce             binary cross-entropy, mean over pixels and classes
    dice            1 − soft Dice, per image and class (smooth 1), mean over classes
    jaccard         1 − soft Jaccard (IoU), per image and class (smooth 1), mean over classes
    bce_dice        bce + dice (the Carvana winners' recipe)
    bce_jaccard     bce + jaccard
    focal           binary focal loss (gamma 2; alpha balancing off by default)
    lovasz          Lovász hinge, per image and class (on the logits recovered from the probabilities)
softmax outputs (multi-class, y_true one-hot over all n_classes channels, background included)
    cce             categorical cross-entropy, mean over pixels
    cce_dice        cce + dice
    categorical_focal   categorical focal loss (gamma 2)
    lovasz_softmax  Lovász-softmax, per image, averaged over the classes present in the image
"dice" and "jaccard" work for both output kinds.
"""
from __future__ import annotations

import difflib
from typing import Any

import keras
from keras import ops

from segkit.errors import ConfigError

EPSILON = 1e-7


# --- per-image loss functions (y_true, y_pred: (N, H, W, C) float32) ------------------------------

def _as_float(y_true, y_pred):
    return ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")


def _pixel_axes(x) -> tuple[int, ...]:
    return tuple(range(1, len(x.shape) - 1))


def _all_but_batch(x) -> tuple[int, ...]:
    return tuple(range(1, len(x.shape)))


def binary_crossentropy(y_true, y_pred):
    """Mean binary cross-entropy per image over pixels and classes."""
    y_true, y_pred = _as_float(y_true, y_pred)
    p = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
    bce = -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
    return ops.mean(bce, axis=_all_but_batch(bce))


def soft_dice_loss(y_true, y_pred, smooth: float = 1.0):
    """1 − mean over classes of (2·|T∩P| + s) / (|T| + |P| + s), per image; empty truth and prediction → 0."""
    y_true, y_pred = _as_float(y_true, y_pred)
    axes = _pixel_axes(y_true)
    inter = ops.sum(y_true * y_pred, axis=axes)
    total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    return 1.0 - ops.mean((2.0 * inter + smooth) / (total + smooth), axis=-1)


def soft_jaccard_loss(y_true, y_pred, smooth: float = 1.0):
    """1 − mean over classes of (|T∩P| + s) / (|T| + |P| − |T∩P| + s), per image."""
    y_true, y_pred = _as_float(y_true, y_pred)
    axes = _pixel_axes(y_true)
    inter = ops.sum(y_true * y_pred, axis=axes)
    total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    return 1.0 - ops.mean((inter + smooth) / (total - inter + smooth), axis=-1)


def binary_focal_loss(y_true, y_pred, gamma: float = 2.0, alpha: float | None = None):
    """Mean of −α_t (1 − p_t)^γ log p_t per image (Lin et al.); α_t = α for positives, 1 − α for negatives."""
    y_true, y_pred = _as_float(y_true, y_pred)
    p = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
    p_t = y_true * p + (1.0 - y_true) * (1.0 - p)
    loss = -ops.power(1.0 - p_t, gamma) * ops.log(p_t)
    if alpha is not None:
        loss = loss * (y_true * alpha + (1.0 - y_true) * (1.0 - alpha))
    return ops.mean(loss, axis=_all_but_batch(loss))


def categorical_crossentropy(y_true, y_pred):
    """Mean over pixels of −Σ_c t_c log p_c (one-hot truth, softmax probabilities)."""
    y_true, y_pred = _as_float(y_true, y_pred)
    p = ops.clip(y_pred, EPSILON, 1.0)
    cce = -ops.sum(y_true * ops.log(p), axis=-1)
    return ops.mean(cce, axis=_all_but_batch(cce))


def categorical_focal_loss(y_true, y_pred, gamma: float = 2.0):
    """Mean over pixels of −Σ_c t_c (1 − p_c)^γ log p_c."""
    y_true, y_pred = _as_float(y_true, y_pred)
    p = ops.clip(y_pred, EPSILON, 1.0)
    loss = -ops.sum(y_true * ops.power(1.0 - p, gamma) * ops.log(p), axis=-1)
    return ops.mean(loss, axis=_all_but_batch(loss))


def _flatten_per_class(x):
    """(N, H, W, C) → (N, C, H·W)."""
    n_pix = 1
    for d in x.shape[1:-1]:
        n_pix *= int(d)
    return ops.reshape(ops.transpose(x, (0, 3, 1, 2)), (-1, int(x.shape[-1]), n_pix))


def _lovasz_weights(gt_sorted):
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. errors sorted in decreasing order."""
    gts = ops.sum(gt_sorted, axis=-1, keepdims=True)
    intersection = gts - ops.cumsum(gt_sorted, axis=-1)
    union = gts + ops.cumsum(1.0 - gt_sorted, axis=-1)  # >= 1 everywhere, so no division by zero
    jaccard = 1.0 - intersection / union
    return ops.concatenate([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], axis=-1)


def _lovasz_sorted(errors, gt):
    """Σ_i f(e_(i)) · g_i over errors sorted in decreasing order (last axis)."""
    order = ops.argsort(-errors, axis=-1)
    errors_sorted = ops.take_along_axis(errors, order, axis=-1)
    gt_sorted = ops.take_along_axis(gt, order, axis=-1)
    weights = ops.stop_gradient(_lovasz_weights(gt_sorted))
    return errors_sorted, weights


def lovasz_hinge_loss(y_true, y_pred):
    """Lovász hinge (Berman et al. 2018) per image and class, mean over classes.

    The models output probabilities, so the logits are recovered as log(p / (1 − p)) with p clipped to
    [1e-7, 1 − 1e-7]. An image with an empty mask costs relu(its largest hinge error), as in the reference.
    """
    y_true, y_pred = _as_float(y_true, y_pred)
    p = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
    logits = _flatten_per_class(ops.log(p) - ops.log(1.0 - p))
    gt = _flatten_per_class(y_true)
    errors = 1.0 - logits * (2.0 * gt - 1.0)
    errors_sorted, weights = _lovasz_sorted(errors, gt)
    per_class = ops.sum(ops.relu(errors_sorted) * weights, axis=-1)
    return ops.mean(per_class, axis=-1)


def lovasz_softmax_loss(y_true, y_pred):
    """Lovász-softmax per image over the classes present in it (errors |t_c − p_c|)."""
    y_true, y_pred = _as_float(y_true, y_pred)
    gt = _flatten_per_class(y_true)
    prob = _flatten_per_class(y_pred)
    errors_sorted, weights = _lovasz_sorted(ops.abs(gt - prob), gt)
    per_class = ops.sum(errors_sorted * weights, axis=-1)
    present = ops.cast(ops.sum(gt, axis=-1) > 0, "float32")
    return ops.sum(per_class * present, axis=-1) / ops.maximum(ops.sum(present, axis=-1), 1.0)


# --- Keras loss objects (serialisable) ----------------------------------------------------------

class _SegmentationLoss(keras.losses.Loss):
    """Base: a per-image loss function plus its keyword parameters, saved in the config."""

    default_name = ""

    def __init__(self, name: str | None = None, **kwargs):
        super().__init__(name=name or self.default_name, **kwargs)

    def _params(self) -> dict[str, Any]:
        return {}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._params()}


@keras.saving.register_keras_serializable(package="segkit")
class BinaryCrossentropy(_SegmentationLoss):
    """Binary cross-entropy (sigmoid outputs)."""

    default_name = "bce"

    def call(self, y_true, y_pred):
        return binary_crossentropy(y_true, y_pred)


@keras.saving.register_keras_serializable(package="segkit")
class DiceLoss(_SegmentationLoss):
    """1 − soft Dice per image and class."""

    default_name = "dice"

    def __init__(self, smooth: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.smooth = float(smooth)

    def _params(self):
        return {"smooth": self.smooth}

    def call(self, y_true, y_pred):
        return soft_dice_loss(y_true, y_pred, self.smooth)


@keras.saving.register_keras_serializable(package="segkit")
class JaccardLoss(DiceLoss):
    """1 − soft Jaccard per image and class."""

    default_name = "jaccard"

    def call(self, y_true, y_pred):
        return soft_jaccard_loss(y_true, y_pred, self.smooth)


@keras.saving.register_keras_serializable(package="segkit")
class BceDiceLoss(_SegmentationLoss):
    """bce_weight · BCE + overlap_weight · (1 − soft Dice)."""

    default_name = "bce_dice"

    def __init__(self, bce_weight: float = 1.0, overlap_weight: float = 1.0, smooth: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.bce_weight, self.overlap_weight, self.smooth = float(bce_weight), float(overlap_weight), float(smooth)

    def _params(self):
        return {"bce_weight": self.bce_weight, "overlap_weight": self.overlap_weight, "smooth": self.smooth}

    def _overlap(self, y_true, y_pred):
        return soft_dice_loss(y_true, y_pred, self.smooth)

    def call(self, y_true, y_pred):
        return self.bce_weight * binary_crossentropy(y_true, y_pred) + self.overlap_weight * self._overlap(
            y_true, y_pred
        )


@keras.saving.register_keras_serializable(package="segkit")
class BceJaccardLoss(BceDiceLoss):
    """bce_weight · BCE + overlap_weight · (1 − soft Jaccard)."""

    default_name = "bce_jaccard"

    def _overlap(self, y_true, y_pred):
        return soft_jaccard_loss(y_true, y_pred, self.smooth)


@keras.saving.register_keras_serializable(package="segkit")
class FocalLoss(_SegmentationLoss):
    """Binary focal loss."""

    default_name = "focal"

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)

    def _params(self):
        return {"gamma": self.gamma, "alpha": self.alpha}

    def call(self, y_true, y_pred):
        return binary_focal_loss(y_true, y_pred, self.gamma, self.alpha)


@keras.saving.register_keras_serializable(package="segkit")
class LovaszHingeLoss(_SegmentationLoss):
    """Lovász hinge (sigmoid outputs)."""

    default_name = "lovasz"

    def call(self, y_true, y_pred):
        return lovasz_hinge_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package="segkit")
class CategoricalCrossentropy(_SegmentationLoss):
    """Categorical cross-entropy (softmax outputs, one-hot truth)."""

    default_name = "cce"

    def call(self, y_true, y_pred):
        return categorical_crossentropy(y_true, y_pred)


@keras.saving.register_keras_serializable(package="segkit")
class CceDiceLoss(BceDiceLoss):
    """cce_weight · CCE + overlap_weight · (1 − soft Dice) (softmax outputs)."""

    default_name = "cce_dice"

    def call(self, y_true, y_pred):
        return self.bce_weight * categorical_crossentropy(y_true, y_pred) + self.overlap_weight * self._overlap(
            y_true, y_pred
        )


@keras.saving.register_keras_serializable(package="segkit")
class CategoricalFocalLoss(_SegmentationLoss):
    """Categorical focal loss (softmax outputs)."""

    default_name = "categorical_focal"

    def __init__(self, gamma: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.gamma = float(gamma)

    def _params(self):
        return {"gamma": self.gamma}

    def call(self, y_true, y_pred):
        return categorical_focal_loss(y_true, y_pred, self.gamma)


@keras.saving.register_keras_serializable(package="segkit")
class LovaszSoftmaxLoss(_SegmentationLoss):
    """Lovász-softmax (softmax outputs, one-hot truth)."""

    default_name = "lovasz_softmax"

    def call(self, y_true, y_pred):
        return lovasz_softmax_loss(y_true, y_pred)


LOSSES: dict[str, type[_SegmentationLoss]] = {
    cls.default_name: cls
    for cls in (
        BinaryCrossentropy, DiceLoss, JaccardLoss, BceDiceLoss, BceJaccardLoss, FocalLoss, LovaszHingeLoss,
        CategoricalCrossentropy, CceDiceLoss, CategoricalFocalLoss, LovaszSoftmaxLoss,
    )
}
SOFTMAX_ONLY = ("cce", "cce_dice", "categorical_focal", "lovasz_softmax")


def loss_names() -> list[str]:
    """Every name `get_loss` accepts."""
    return sorted(LOSSES)


def get_loss(name: str, n_classes: int = 1, **params: Any) -> keras.losses.Loss:
    """The loss called `name` (see the module docstring), with optional parameters (e.g. smooth, gamma).

    Unknown names or parameters raise ConfigError with the closest valid one; a softmax-only loss with
    n_classes < 2 is a ConfigError too (a single-channel softmax is constant).
    """
    if name not in LOSSES:
        close = difflib.get_close_matches(str(name), list(LOSSES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"train.loss: unknown loss '{name}'{hint} (known: {', '.join(loss_names())})")
    if name in SOFTMAX_ONLY and n_classes < 2:
        raise ConfigError(f"train.loss: '{name}' is for softmax outputs with n_classes >= 2, got n_classes={n_classes}")
    cls = LOSSES[name]
    valid = list(cls()._params())
    for key in params:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"train.loss.{key}: unknown parameter of '{name}'{hint} (valid: {', '.join(valid) or 'none'})")
    return cls(**params)
