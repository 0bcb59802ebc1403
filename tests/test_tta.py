"""Every TTA transform is undone exactly by its inverse, and pixel positions line up again."""
import numpy as np
import pytest

from segkit.config import load_config
from segkit.errors import ConfigError
from segkit.predict import TTA, resolve_tta


@pytest.mark.parametrize("name", sorted(TTA))
def test_inverse_restores_orientation(name):
    x = np.random.default_rng(0).random((2, 6, 6, 3))
    forward, inverse = TTA[name]
    assert np.array_equal(inverse(forward(x)), x)
    # a position-dependent "model" (identity on the pixels) maps back to the original pixel grid
    y = forward(x)[..., :1]
    assert np.array_equal(inverse(y), x[..., :1])


def test_transforms_really_move_pixels():
    x = np.arange(16, dtype=float).reshape(1, 4, 4, 1)
    assert TTA["hflip"][0](x)[0, 0, 0, 0] == 3
    assert TTA["vflip"][0](x)[0, 0, 0, 0] == 12
    assert TTA["rot90"][0](x)[0, 0, 0, 0] == 3


class _Adapter:
    default_tta = ("identity", "hflip")


def test_resolve_tta_checks_names_and_shapes():
    cfg = load_config(None, ["predict.tta=[identity,hflp]"])
    with pytest.raises(ConfigError, match="did you mean 'hflip'"):
        resolve_tta(cfg, _Adapter())
    cfg = load_config(None, ["predict.tta=[rot90]", "data.image_size=[32,64]"])
    with pytest.raises(ConfigError, match="square"):
        resolve_tta(cfg, _Adapter())
    assert resolve_tta(load_config(None, []), _Adapter()) == ["identity", "hflip"]


@pytest.mark.parametrize("spec, step", [
    ({"name": "unet", "depth": 2, "base_filters": 4}, 4),
    ({"name": "fractal_unet", "depth": 3, "base_filters": 4, "columns": 2}, 8),
    ({"name": "efficientnet_unet"}, 32),  # squeeze-excite's 1×1 maps are no down-sampling
])
def test_size_step_of_segkit_models(spec, step):
    """Multi-scale TTA runs each model at sizes that are multiples of its size step."""
    from segkit.models.registry import build_model
    from segkit.predict import scaled_size, size_step

    model = build_model(spec, (64, 64, 3), 1)
    assert size_step(model) == step
    h, w = scaled_size(model, (64, 64), 0.75)
    assert h == w and h % step == 0 and abs(h - 48) <= step / 2
