"""Losses and metrics against values worked out by hand, including empty masks."""
import math

import numpy as np
import pytest

from segkit.errors import ConfigError
from segkit.losses import get_loss, loss_names
from segkit.metrics import get_metrics


def img(values, classes=1):
    """A single (1, 1, W, C) image from per-pixel rows of class values."""
    return np.asarray(values, dtype="float32").reshape(1, 1, -1, classes)


def value(name, y_true, y_pred, n_classes=1, **params):
    return float(np.asarray(get_loss(name, n_classes, **params)(y_true, y_pred)))


T = img([1, 1, 0, 0])
P = img([0.5, 1.0, 0.0, 0.5])


def test_bce_hand_value():
    # -(ln 0.8 + ln 0.6) / 2
    assert value("bce", img([1, 0]), img([0.8, 0.4])) == pytest.approx((0.22314355 + 0.51082562) / 2, abs=1e-6)


def test_dice_and_jaccard_hand_values():
    # |T∩P| = 1.5, |T| + |P| = 4, smooth 1
    assert value("dice", T, P) == pytest.approx(1 - 4 / 5, abs=1e-6)
    assert value("jaccard", T, P) == pytest.approx(1 - 2.5 / 3.5, abs=1e-6)
    bce = -(math.log(0.5) + math.log(1 - 1e-7) + math.log(1 - 1e-7) + math.log(0.5)) / 4
    assert value("bce_dice", T, P) == pytest.approx(bce + 0.2, abs=1e-5)
    assert value("bce_jaccard", T, P) == pytest.approx(bce + 1 - 2.5 / 3.5, abs=1e-5)


def test_empty_masks():
    empty = img([0, 0, 0, 0])
    assert value("dice", empty, empty) == pytest.approx(0.0, abs=1e-7)
    assert value("jaccard", empty, empty) == pytest.approx(0.0, abs=1e-7)
    half = img([0.5] * 4)
    # (0 + 1) / (0 + 2 + 1) for both
    assert value("dice", empty, half) == pytest.approx(2 / 3, abs=1e-6)
    assert value("jaccard", empty, half) == pytest.approx(2 / 3, abs=1e-6)
    assert value("bce", empty, empty) == pytest.approx(-math.log(1 - 1e-7), abs=1e-6)


def test_multi_label_dice_averages_classes():
    # class 0 as above (Dice 0.8), class 1 empty in truth and prediction (Dice 1)
    t = np.stack([T[..., 0], np.zeros_like(T[..., 0])], axis=-1)
    p = np.stack([P[..., 0], np.zeros_like(P[..., 0])], axis=-1)
    assert value("dice", t, p) == pytest.approx(1 - 0.9, abs=1e-6)


def test_loss_is_per_image_mean_over_batch():
    t = np.concatenate([T, img([0, 0, 0, 0])])
    p = np.concatenate([P, img([0.5] * 4)])
    assert value("dice", t, p) == pytest.approx((0.2 + 2 / 3) / 2, abs=1e-6)


def test_focal_hand_value():
    # p_t = 0.8, 0.6: -(0.2² ln 0.8 + 0.4² ln 0.6) / 2
    expected = (0.04 * 0.22314355 + 0.16 * 0.51082562) / 2
    assert value("focal", img([1, 0]), img([0.8, 0.4])) == pytest.approx(expected, abs=1e-6)
    # alpha 0.25 weighs the positive by 0.25 and the negative by 0.75
    expected_a = (0.25 * 0.04 * 0.22314355 + 0.75 * 0.16 * 0.51082562) / 2
    assert value("focal", img([1, 0]), img([0.8, 0.4]), alpha=0.25) == pytest.approx(expected_a, abs=1e-6)


def sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, dtype="float64")))


def test_lovasz_hinge_hand_value():
    # logits 2, 0.5, -1 with truth 1, 0, 1 → hinge errors -1, 1.5, 2; sorted 2 (fg), 1.5 (bg), -1 (fg)
    # Jaccard losses along the order 1/2, 2/3, 1 → weights 1/2, 1/6, 1/3 → 2·1/2 + 1.5·1/6 + 0 = 1.25
    p = img(sigmoid([2.0, 0.5, -1.0]))
    assert value("lovasz", img([1, 0, 1]), p) == pytest.approx(1.25, abs=1e-4)
    # empty truth: errors 3, 1.5, 0 → weights 1, 0, 0 → 3
    assert value("lovasz", img([0, 0, 0]), p) == pytest.approx(3.0, abs=1e-4)


def test_categorical_losses_hand_values():
    t = img([1, 0, 0, 0, 0, 1], classes=3)
    p = img([0.7, 0.2, 0.1, 0.1, 0.3, 0.6], classes=3)
    assert value("cce", t, p, 3) == pytest.approx((0.35667494 + 0.51082562) / 2, abs=1e-6)
    focal = (0.09 * 0.35667494 + 0.16 * 0.51082562) / 2
    assert value("categorical_focal", t, p, 3) == pytest.approx(focal, abs=1e-6)


def test_lovasz_softmax_hand_value():
    # class 0: errors .2 (fg), .3 (bg) → sorted .3, .2, weights 1/2, 1/2 → 0.25
    # class 1: errors .2 (bg), .3 (fg) → sorted .3, .2, weights 1, 0 → 0.3
    t = img([1, 0, 0, 1], classes=2)
    p = img([0.8, 0.2, 0.3, 0.7], classes=2)
    assert value("lovasz_softmax", t, p, 2) == pytest.approx(0.275, abs=1e-6)


def test_unknown_loss_and_parameter_are_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'bce_dice'"):
        get_loss("bce_dise")
    with pytest.raises(ConfigError, match="did you mean 'smooth'"):
        get_loss("dice", smoth=2)
    with pytest.raises(ConfigError, match="n_classes"):
        get_loss("cce", 1)
    assert {"bce", "dice", "jaccard", "bce_dice", "focal", "lovasz", "cce", "cce_dice"} <= set(loss_names())


def test_metrics_pooled_hand_counts():
    dice, iou = get_metrics(["dice", "iou"])
    assert (dice.name, iou.name) == ("dice", "iou")
    t, p = img([1, 1, 0, 0]), img([0.9, 0.2, 0.7, 0.1])  # TP 1, FP 1, FN 1
    for m in (dice, iou):
        m.update_state(t, p)
    assert float(dice.result()) == pytest.approx(2 / 4)
    assert float(iou.result()) == pytest.approx(1 / 3)
    # a second batch with TP 2 adds to the pooled counts: TP 3, FP 1, FN 1
    for m in (dice, iou):
        m.update_state(img([1, 1, 0, 0]), img([0.6, 0.8, 0.4, 0.0]))
    assert float(dice.result()) == pytest.approx(6 / 8)
    assert float(iou.result()) == pytest.approx(3 / 5)
    for m in (dice, iou):
        m.reset_state()
        m.update_state(img([0, 0, 0, 0]), img([0.1, 0.2, 0.3, 0.4]))  # nothing anywhere: perfect
        assert float(m.result()) == pytest.approx(1.0)


def test_metrics_softmax_argmax_and_unknown_name():
    (dice,) = get_metrics(["dice"], n_classes=2, activation="softmax")
    # pixel 0 right (class 0), pixel 1 wrong (true 1, predicted 0): class 0 TP1 FP1, class 1 FN1
    dice.update_state(img([1, 0, 0, 1], classes=2), img([0.8, 0.2, 0.6, 0.4], classes=2))
    assert float(dice.result()) == pytest.approx((2 / 3 + 0.0) / 2)
    with pytest.raises(ConfigError, match="did you mean 'iou'"):
        get_metrics(["iuo"])
