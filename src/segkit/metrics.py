"""Dice and IoU metrics on binarised predictions, pooled over every pixel seen in an epoch.

Each metric accumulates per-class true positives, false positives and false negatives over all batches
(so `val_dice` is the Dice of the whole validation set, not a mean of batch scores), scores each class as
2TP / (2TP + FP + FN) (Dice) or TP / (TP + FP + FN) (IoU), 1.0 for a class absent from both truth and
prediction, and reports the mean over classes. Sigmoid outputs are binarised at `threshold`; softmax
outputs by argmax. Names in the training logs are "dice" and "iou".
"""
from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

from segkit.errors import ConfigError, unknown_name


class _OverlapMetric(keras.metrics.Metric):
    """Base: confusion counts per class, scored by `_score`."""

    def __init__(self, n_classes: int = 1, threshold: float = 0.5, activation: str = "sigmoid", name=None, **kw):
        super().__init__(name=name, **kw)
        if activation not in ("sigmoid", "softmax"):
            raise ConfigError(f"metrics: activation must be 'sigmoid' or 'softmax', got '{activation}'")
        self.n_classes, self.threshold, self.activation = int(n_classes), float(threshold), activation
        shape = (self.n_classes,)
        self.tp = self.add_variable(shape=shape, initializer="zeros", name="tp")
        self.fp = self.add_variable(shape=shape, initializer="zeros", name="fp")
        self.fn = self.add_variable(shape=shape, initializer="zeros", name="fn")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(ops.cast(y_true, "float32") > 0.5, "float32")
        y_pred = ops.cast(y_pred, "float32")
        if self.activation == "softmax":
            pred = ops.one_hot(ops.argmax(y_pred, axis=-1), self.n_classes, dtype="float32")
        else:
            pred = ops.cast(y_pred > self.threshold, "float32")
        axes = tuple(range(len(y_pred.shape) - 1))
        self.tp.assign_add(ops.sum(y_true * pred, axis=axes))
        self.fp.assign_add(ops.sum((1.0 - y_true) * pred, axis=axes))
        self.fn.assign_add(ops.sum(y_true * (1.0 - pred), axis=axes))

    def result(self):
        num, den = self._score(self.tp, self.fp, self.fn)
        per_class = ops.where(den > 0, num / ops.maximum(den, 1.0), 1.0)
        return ops.mean(per_class)

    def reset_state(self):
        for v in (self.tp, self.fp, self.fn):
            v.assign(ops.zeros(v.shape, dtype=v.dtype))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "n_classes": self.n_classes,
            "threshold": self.threshold,
            "activation": self.activation,
        }


@keras.saving.register_keras_serializable(package="segkit")
class Dice(_OverlapMetric):
    """Pooled Dice = 2TP / (2TP + FP + FN), mean over classes."""

    def __init__(self, n_classes: int = 1, threshold: float = 0.5, activation: str = "sigmoid", name="dice", **kw):
        super().__init__(n_classes, threshold, activation, name=name, **kw)

    @staticmethod
    def _score(tp, fp, fn):
        return 2.0 * tp, 2.0 * tp + fp + fn


@keras.saving.register_keras_serializable(package="segkit")
class IoU(_OverlapMetric):
    """Pooled IoU (Jaccard) = TP / (TP + FP + FN), mean over classes."""

    def __init__(self, n_classes: int = 1, threshold: float = 0.5, activation: str = "sigmoid", name="iou", **kw):
        super().__init__(n_classes, threshold, activation, name=name, **kw)

    @staticmethod
    def _score(tp, fp, fn):
        return tp, tp + fp + fn


METRICS = {"dice": Dice, "iou": IoU, "jaccard": IoU}


def get_metrics(
    names: Sequence[str], n_classes: int = 1, threshold: float = 0.5, activation: str = "sigmoid"
) -> list[keras.metrics.Metric]:
    """Metric objects for `names` ("dice", "iou"; "jaccard" is an alias logged as "iou").

    Unknown names raise ConfigError with the closest valid one.
    """
    out = []
    for name in names:
        if name not in METRICS:
            raise unknown_name("train.metrics", "metric", name, sorted(METRICS))
        out.append(METRICS[name](n_classes=n_classes, threshold=threshold, activation=activation))
    return out
