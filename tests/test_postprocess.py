"""Binarisation and small-component removal."""
import numpy as np

from segkit.postprocess import apply, remove_small


def test_remove_small_keeps_large_components_only():
    m = np.zeros((10, 10), np.uint8)
    m[0:2, 0:2] = 1  # 4 px
    m[5:9, 5:9] = 1  # 16 px
    m[0, 9] = 1  # 1 px
    out = remove_small(m, 5)
    assert out.sum() == 16 and out[5:9, 5:9].all()
    assert remove_small(np.zeros((4, 4), np.uint8), 3).sum() == 0


def test_diagonal_pixels_are_one_component():
    m = np.eye(5, dtype=np.uint8)
    assert remove_small(m, 5).sum() == 5


def test_apply_per_class_thresholds_and_areas():
    p = np.zeros((8, 8, 2), np.float32)
    p[0:3, 0:3, 0] = 0.6
    p[6, 6, 0] = 0.9
    p[:, :, 1] = 0.4
    out = apply(p, [0.5, 0.3], [2, 0])
    assert out.dtype == np.uint8 and out.shape == (8, 8, 2)
    assert out[..., 0].sum() == 9  # the lone pixel is removed
    assert out[..., 1].all()
    assert apply(p, [0.7, 0.5], [0, 0]).sum() == 1


def test_grid_search_finds_the_threshold_and_area_that_remove_false_specks():
    from segkit.data.competitions.base import Adapter
    from segkit.postprocess import _grid_search

    rng = np.random.default_rng(0)
    truth = np.zeros((6, 32, 32), np.uint8)
    probs = rng.uniform(0.0, 0.45, (6, 32, 32)).astype(np.float32)
    for i in range(6):
        truth[i, 8:20, 8:20] = 1
        probs[i, 8:20, 8:20] = 0.6  # the object: above 0.5, below 0.7
        probs[i, 26, 2 + i] = 0.9  # a one-pixel false positive per image
    adapter = Adapter(".")  # the default metric: mean Dice per image
    score, threshold, area = _grid_search(adapter, truth, probs, [0.3, 0.5, 0.7], [0, 4], area_scale=1.0)
    assert (threshold, area) == (0.5, 4)
    assert score == 1.0
    plain = adapter.score_class(truth, (probs > 0.5).astype(np.uint8))
    assert plain < 1.0
