"""The competition metrics at the edges mutation testing found unchecked (`make mutate`): IoU exactly on a
threshold (the metrics count IoU *above* it), stacks of several images, empty inputs, shape mismatches and
ships given as lists of masks. Every expected value is worked by hand from the metric's definition."""
import numpy as np
import pytest

from segkit.evaluate import (
    AIRBUS_THRESHOLDS, airbus_f2_image, airbus_score, carvana_score, clouds_score, dice_per_image, iou_matrix,
    label_objects, tgs_iou_from_counts, tgs_score,
)


def stripe(rows: int, shape=(10, 10)) -> np.ndarray:
    """A mask whose first `rows` rows are foreground (10 pixels a row)."""
    m = np.zeros(shape, np.uint8)
    m[:rows] = 1
    return m


@pytest.mark.parametrize("inter,union,passed", [
    (5, 10, 0),  # IoU 0.50 is not above 0.50
    (11, 20, 1),  # 0.55: above 0.50 only
    (3, 5, 2),  # 0.60: above 0.50, 0.55
    (13, 20, 3),  # 0.65
    (7, 10, 4),  # 0.70
    (3, 4, 5),  # 0.75
    (4, 5, 6),  # 0.80
    (17, 20, 7),  # 0.85
    (9, 10, 8),  # 0.90
    (19, 20, 9),  # 0.95: above every threshold but 0.95
    (20, 20, 10),  # 1.0
    (1, 100, 0),  # far below
    (1, 1, 10),  # one pixel, found
    (0, 1, 0),  # one pixel, missed
])
def test_tgs_counts_only_thresholds_the_iou_exceeds(inter, union, passed):
    """TGS per image: the share of 0.50, 0.55 ... 0.95 that the IoU exceeds; IoU equal to one does not count."""
    true_area = union  # the prediction inside the truth: IoU = inter / true_area
    assert tgs_iou_from_counts(np.array([inter]), np.array([inter]), np.array([true_area])) == \
        pytest.approx(passed / 10)


def test_tgs_score_at_iou_one_half_and_on_a_stack():
    truth = np.stack([stripe(4), stripe(2), stripe(0), stripe(0), stripe(5)])
    pred = np.stack([stripe(2), stripe(2), stripe(0), stripe(3), stripe(4)])
    # IoU 20/40 = 0.5 -> 0; exact -> 1; both empty -> 1; truth empty, prediction not -> 0; 40/50 = 0.8 -> 0.6
    assert tgs_score(truth, pred) == pytest.approx((0 + 1 + 1 + 0 + 0.6) / 5)
    assert tgs_score(truth[:1], pred[:1]) == 0.0
    assert tgs_score(pred[3:4], truth[3:4]) == 0.0  # prediction empty, truth not
    with pytest.raises(ValueError, match=r"differ in shape: \(5, 10, 10\) vs \(5, 5, 10\)"):
        tgs_score(truth, pred[:, :5])


def test_tgs_counts_reduce_over_the_last_axis_only():
    """Per-image counts (..., N): one score per leading index, the mean over the N images."""
    inter = np.array([[10, 0], [5, 10]])
    area = np.array([[10, 0], [10, 10]])
    # row 0: exact (1) and both empty (1); row 1: IoU 0.5 (0) and exact (1)
    np.testing.assert_allclose(tgs_iou_from_counts(inter, area, area), [1.0, 0.5])


def test_dice_of_a_stack_and_its_mismatch():
    truth = np.stack([stripe(4), stripe(0), stripe(1), stripe(3)])
    pred = np.stack([stripe(2), stripe(0), stripe(0), stripe(3)])
    # 2*20/(40+20); both empty 1; truth only 0; exact 1
    np.testing.assert_allclose(dice_per_image(truth, pred), [2 / 3, 1, 0, 1])
    assert carvana_score(truth, pred) == pytest.approx((2 / 3 + 2) / 4)
    with pytest.raises(ValueError, match=r"differ in shape: \(4, 10, 10\) vs \(4, 10, 5\)"):
        dice_per_image(truth, pred[:, :, :5])
    # nonzero values of any size are foreground
    assert dice_per_image(truth * 255, pred.astype(np.float32) * 0.5)[0] == pytest.approx(2 / 3)


def test_clouds_labels_are_the_last_axis():
    truth = np.zeros((1, 4, 4, 2), np.uint8)
    pred = np.zeros_like(truth)
    truth[0, :2, :, 0] = 1  # label 0: 8 pixels
    pred[0, :1, :, 0] = 1  # 4 of them: Dice 2*4/12
    pred[0, 3, 3, 1] = 1  # label 1: predicted on an empty label, 0
    assert clouds_score(truth, pred) == pytest.approx((2 / 3 + 0) / 2)


def test_iou_matrix_without_objects_and_with_gaps_in_labels():
    empty = np.zeros((3, 3), np.int64)
    one = np.zeros((3, 3), np.int64)
    one[0, 0] = 1
    assert iou_matrix(empty, one).shape == (0, 1)
    assert iou_matrix(one, empty).shape == (1, 0)
    labels = np.zeros((3, 3), np.int64)
    labels[0, 0], labels[2, 2] = 1, 3  # label 2 absent: a row of zeros, no division by zero
    np.testing.assert_allclose(iou_matrix(labels, one), [[1.0], [0.0], [0.0]])


def test_airbus_counts_ious_above_each_threshold_only():
    """One ship, one prediction at IoU exactly 0.5: no threshold is passed (matches need IoU > t)."""
    truth, pred = np.zeros((4, 10), np.int64), np.zeros((4, 10), np.int64)
    truth[:2] = 1  # 20 pixels
    pred[:1] = 1  # 10 of them: IoU 0.5
    assert airbus_f2_image(truth, pred) == 0.0
    pred[1, :5] = 1  # 15 of 20: IoU 0.75 passes 0.50 .. 0.70 (5 of 10)
    assert airbus_f2_image(truth, pred) == pytest.approx(0.5)
    assert airbus_f2_image(truth, pred, thresholds=(0.75,)) == 0.0
    assert airbus_f2_image(truth, pred, thresholds=(0.7, 0.74)) == 1.0


def test_airbus_f2_weights_misses_four_times_false_ships():
    """F2 = 5TP / (5TP + 4FN + FP): a missed ship costs four times a false one."""
    shape = (20, 20)
    truth = np.zeros(shape, np.int64)
    truth[0:3, 0:3], truth[10:13, 10:13], truth[0:3, 10:13] = 1, 2, 3
    pred = np.zeros(shape, np.int64)
    pred[0:3, 0:3] = 7  # any positive labels, with gaps
    pred[15:18, 0:3] = 9  # a false ship
    # TP 1, FN 2, FP 1
    assert airbus_f2_image(truth, pred) == pytest.approx(5 / (5 + 8 + 1))
    # TP 1, FN 0, FP 2: the two other ships are false ones now
    # swapped: TP 1, FN 1, FP 2
    assert airbus_f2_image(pred, truth) == pytest.approx(5 / (5 + 4 + 2))
    assert airbus_f2_image(truth[:, :10], pred[:, :10]) == pytest.approx(5 / (5 + 0 + 1))  # TP 1, FP 1


def test_airbus_score_over_images_of_ship_lists_and_union_masks():
    a = np.zeros((6, 6), np.uint8)
    a[0:2, 0:2] = 1
    b = np.zeros((6, 6), np.uint8)
    b[4:6, 4:6] = 1
    # image 1: two ships as a list of masks, both found; image 2: no ship, one predicted; image 3: none, none
    truth = [[a, b], [], []]
    pred = [[b, a], [a], []]
    assert airbus_score(truth, pred) == pytest.approx((1 + 0 + 1) / 3)
    # a union mask (H, W) is split into ships by connected components (8-connected: diagonal pixels join)
    union = (a + b).astype(np.uint8)
    assert airbus_score([union], [[a, b]]) == 1.0
    assert airbus_score([union], [[a]]) == pytest.approx(5 / (5 + 4))
    diagonal = np.eye(3, dtype=np.uint8)
    assert label_objects(diagonal).max() == 1
    with pytest.raises(ValueError, match="2 true images but 1 predicted"):
        airbus_score(truth[:2], pred[:1])


def test_airbus_overlapping_ship_masks_give_the_pixel_to_the_later_ship():
    first = np.zeros((4, 8), np.uint8)
    first[:, 0:5] = 1  # 20 pixels
    second = np.zeros((4, 8), np.uint8)
    second[:, 4:8] = 1  # 16 pixels, column 4 shared: it belongs to the second ship
    pred_first = np.zeros((4, 8), np.uint8)
    pred_first[:, 0:4] = 1  # the first ship without the shared column: exact
    assert airbus_score([[first, second]], [[pred_first, second]]) == 1.0


def test_airbus_thresholds_are_the_rounded_grid():
    assert AIRBUS_THRESHOLDS[0] == 0.5 and AIRBUS_THRESHOLDS[-1] == 0.95 and len(AIRBUS_THRESHOLDS) == 10


def test_one_pixel_ships_and_images_without_pixels():
    truth = np.zeros((5, 5), np.int64)
    truth[0, 0], truth[4, 4] = 1, 2  # two ships of one pixel each
    pred = np.zeros((5, 5), np.int64)
    pred[0, 0] = 1
    assert airbus_f2_image(truth, truth) == 1.0
    assert airbus_f2_image(truth, pred) == pytest.approx(5 / (5 + 4))  # TP 1, FN 1
    assert iou_matrix(np.zeros((0, 3), np.int64), np.zeros((0, 3), np.int64)).shape == (0, 0)


def test_iou_of_a_label_absent_from_both_images_is_zero_without_warnings():
    import warnings

    labels = np.zeros((3, 3), np.int64)
    labels[0, 0], labels[2, 2] = 1, 3  # label 2 in neither image: union 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = iou_matrix(labels, labels)
    assert got.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]


def test_label_images_of_any_numeric_dtype():
    """Label images read as floats (an image reader's default) score as their integer labels."""
    truth = np.zeros((4, 4), np.float32)
    truth[0, 0:2] = 1.0  # ship 1: 2 pixels
    truth[3, 3] = 2.0    # ship 2: 1 pixel
    pred = np.zeros((4, 4), np.float64)
    pred[0, 0:2] = 5.0   # ship 1 exactly (label 5: labels need not be 1..n)
    # IoU 1 with ship 1, nothing for ship 2: 1 TP, 1 FN at every threshold -> 5 / (5 + 4) each
    assert airbus_f2_image(truth, pred) == pytest.approx(5 / 9)
    assert iou_matrix(truth, (pred > 0).astype(np.float32)).tolist() == [[1.0], [0.0]]


def test_counts_in_small_integer_dtypes_do_not_wrap():
    """Counts given as uint8 (a 16 x 16 mask's areas fit): 200 + 100 pixels must not wrap around 256."""
    from segkit.evaluate import dice_of_counts

    inter, pred_area, true_area = np.uint8([100]), np.uint8([200]), np.uint8([100])
    assert dice_of_counts(inter, pred_area, true_area).tolist() == [pytest.approx(2 * 100 / 300)]
    # IoU 100 / 200 = 0.5: above no threshold
    assert tgs_iou_from_counts(inter, pred_area, true_area) == 0.0
    # IoU 100 / 160 = 0.625: above 0.50, 0.55 and 0.60 -> 3 of 10
    assert tgs_iou_from_counts(np.uint8([100]), np.uint8([160]), np.uint8([100])) == pytest.approx(0.3)


def test_airbus_score_of_no_images_is_one():
    assert airbus_score([], []) == 1.0
