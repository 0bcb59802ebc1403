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
