"""Competition metrics against hand-computed cases (incl. empty/empty and empty/non-empty)."""
import numpy as np
import pandas as pd
import pytest

from segkit import rle
from segkit.data.competitions.base import adapter_class
from segkit.evaluate import (
    AIRBUS_THRESHOLDS, airbus_f2_image, airbus_score, carvana_score, clouds_score, dice_per_image, iou_matrix,
)


def test_dice_hand_computed():
    truth = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[1, 0], [0, 0]], [[0, 0], [0, 0]]], np.uint8)
    pred = np.array([[[1, 0], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]], [[0, 1], [0, 0]]], np.uint8)
    # 2*1/(2+1); empty/empty = 1; truth only = 0; prediction only = 0
    np.testing.assert_allclose(dice_per_image(truth, pred), [2 / 3, 1.0, 0.0, 0.0])
    assert carvana_score(truth, pred) == pytest.approx((2 / 3 + 1) / 4)
    assert carvana_score(truth[:2], pred[:2]) == pytest.approx(5 / 6)


def test_clouds_mean_over_image_label_pairs():
    truth = np.zeros((2, 2, 3, 4), np.uint8)
    pred = np.zeros((2, 2, 3, 4), np.uint8)
    truth[0, 0, :2, 0] = 1
    pred[0, 0, :1, 0] = 1  # Fish of image 0: 2*1/(2+1) = 2/3
    pred[0, 1, 1, 2] = 1  # Gravel of image 0: predicted on an empty label = 0
    truth[1, :, :, 3] = 1
    pred[1, :, :, 3] = 1  # Sugar of image 1: exact = 1
    truth[1, 0, 0, 1] = 1  # Flower of image 1: missed = 0
    # 8 pairs: 2/3, 1 (empty), 0, 1 (empty), 1 (empty), 0, 1 (empty), 1
    assert clouds_score(truth, pred) == pytest.approx((2 / 3 + 0 + 0 + 5) / 8)


def test_iou_matrix():
    t = np.array([[1, 1, 0, 2]])
    p = np.array([[1, 0, 0, 1]])
    np.testing.assert_allclose(iou_matrix(t, p), [[1 / 3], [1 / 2]])  # {0,1}v{0,3}; {3}v{0,3}


def box(shape, y0, y1, x0, x1, value=1):
    m = np.zeros(shape, np.int64)
    m[y0:y1, x0:x1] = value
    return m


def test_airbus_f2_hand_computed():
    shape = (20, 20)
    assert airbus_f2_image(np.zeros(shape, int), np.zeros(shape, int)) == 1.0  # no ship, no prediction
    assert airbus_f2_image(np.zeros(shape, int), box(shape, 0, 2, 0, 2)) == 0.0  # false ship only
    assert airbus_f2_image(box(shape, 0, 2, 0, 2), np.zeros(shape, int)) == 0.0  # missed ship only
    # IoU 8/10 = 0.8 is above 0.50 .. 0.75 (6 of the 10 thresholds): F2 = 1 there, 0 elsewhere
    assert airbus_f2_image(box(shape, 0, 2, 0, 5), box(shape, 0, 2, 0, 4)) == pytest.approx(0.6)
    # two ships, one found exactly, one false positive: TP 1, FN 1, FP 1 -> 5 / (5 + 4 + 1)
    truth = box(shape, 0, 3, 0, 3, 1) + box(shape, 10, 13, 10, 13, 2)
    pred = box(shape, 0, 3, 0, 3, 1) + box(shape, 15, 18, 0, 3, 2)
    assert airbus_f2_image(truth, pred) == pytest.approx(0.5)


def test_airbus_matching_is_one_to_one():
    """One prediction covering two ships (IoU 0.5 with each) may match only one of them at IoU > 0.3."""
    shape = (10, 10)
    truth = box(shape, 0, 2, 0, 3, 1) + box(shape, 0, 2, 3, 6, 2)
    pred = box(shape, 0, 2, 0, 6, 1)
    assert airbus_f2_image(truth, pred, thresholds=(0.3,)) == pytest.approx(5 / (5 + 4))  # TP 1, FN 1, FP 0
    assert AIRBUS_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_airbus_score_on_the_real_csv(fixtures_dir):
    """The real CSV against itself scores 1; dropping one of 0a1a7f395's 14 ships gives that image
    5*13 / (5*13 + 4) and leaves the other nine at 1."""
    df = pd.read_csv(fixtures_dir / "airbus" / "train_ship_segmentations_v2_subset.csv")
    images = list(dict.fromkeys(df["ImageId"]))
    ships = [[rle.decode(t, (768, 768)) for t in df.loc[df["ImageId"] == i, "EncodedPixels"].dropna()] for i in images]
    assert airbus_score(ships, ships) == 1.0
    dropped = [s[1:] if i == "0a1a7f395.jpg" else s for s, i in zip(ships, images)]
    assert len(dropped[images.index("0a1a7f395.jpg")]) == 13
    assert airbus_score(ships, dropped) == pytest.approx((9 + 65 / 69) / 10)
    # the adapter's tuning metric works on union masks split into connected components
    union_truth = np.stack([np.sum(s, axis=0) if s else np.zeros((768, 768)) for s in ships]).astype(np.uint8)
    score = adapter_class("airbus").score_class(None, union_truth, union_truth)
    assert score == 1.0


def test_adapter_metrics_are_the_competition_metrics():
    rng = np.random.default_rng(1)
    truth = (rng.random((5, 8, 8)) < 0.3).astype(np.uint8)
    pred = (rng.random((5, 8, 8)) < 0.3).astype(np.uint8)
    truth[0] = pred[0] = 0
    assert adapter_class("carvana").score_class(None, truth, pred) == pytest.approx(carvana_score(truth, pred))
    assert adapter_class("clouds").score_class(None, truth, pred) == pytest.approx(
        clouds_score(truth[..., None], pred[..., None]))
    assert adapter_class("airbus").score_class(None, truth, pred) == pytest.approx(airbus_score(truth, pred))
