"""The kit's numpy Dice is written once (`evaluate.dice_of_counts`): from masks, from pixel counts, and as the
default adapter metric, every caller gets the same numbers, 1 where both masks are empty."""
import numpy as np
import pytest

from segkit.data.competitions.base import Adapter, dice_from_counts
from segkit.evaluate import dice_of_counts, dice_per_image


def test_one_numpy_dice_from_masks_and_from_counts():
    rng = np.random.default_rng(0)
    truth, pred = rng.random((5, 6, 7)) > 0.6, rng.random((5, 6, 7)) > 0.5
    truth[0], pred[0] = False, False  # both empty: 1
    truth[1], pred[1] = True, False  # one empty: 0
    t, p = truth.reshape(5, -1), pred.reshape(5, -1)
    inter, p_area, t_area = (t & p).sum(1), p.sum(1), t.sum(1)
    expected = [1.0, 0.0] + [2 * i / (a + b) for i, a, b in zip(inter[2:], p_area[2:], t_area[2:])]
    np.testing.assert_allclose(dice_of_counts(inter, p_area, t_area), expected)
    np.testing.assert_allclose(dice_per_image(truth, pred), expected)
    assert dice_from_counts(inter, p_area, t_area) == pytest.approx(np.mean(expected))
    assert Adapter.score_class(None, truth, pred) == pytest.approx(np.mean(expected))
