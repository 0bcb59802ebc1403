"""The model checks again under KERAS_BACKEND=jax, in a subprocess (the backend is fixed at keras import).

A lean subset of test_unet / test_fractal / test_encoders / test_losses: each model is built, trained a
few steps with falling loss, saved to .keras and reloaded with identical predictions; the fractal join's
drop-path and the N-band kernel adaptation are checked on the JAX arrays too.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.jax
@pytest.mark.parametrize("backend", ["jax"])
def test_models_on_other_backend(backend, tmp_path):
    pytest.importorskip(backend)
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    assert f"backend={backend}" in proc.stdout and "all model checks passed" in proc.stdout, proc.stdout


# --- what the subprocess runs -----------------------------------------------------------------------

def _fit_save_reload(model, x, y, workdir, name, loss="bce_dice"):
    import keras
    import numpy as np

    from segkit.losses import get_loss
    from segkit.metrics import get_metrics

    model.compile(keras.optimizers.Adam(1e-2), loss=get_loss(loss), metrics=get_metrics(["dice", "iou"]))
    losses = model.fit(x, y, epochs=3, batch_size=4, verbose=0, shuffle=False).history["loss"]
    assert losses[-1] < losses[0], (name, losses)
    path = Path(workdir) / f"{name}.keras"
    model.save(path)
    again = keras.models.load_model(path)
    np.testing.assert_array_equal(np.asarray(model(x, training=False)), np.asarray(again(x, training=False)))
    print(f"{name}: loss {losses[0]:.4f} -> {losses[-1]:.4f}, reload identical")
    return again


def _run_checks(workdir: str) -> None:
    import keras
    import numpy as np

    from segkit.losses import get_loss
    from segkit.models.fractal import FractalJoin, deepest_column_model
    from segkit.models.registry import build_model

    print(f"backend={keras.backend.backend()}")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)

    # losses: hand values of test_losses
    t = np.array([1, 1, 0, 0], "float32").reshape(1, 1, 4, 1)
    p = np.array([0.5, 1, 0, 0.5], "float32").reshape(1, 1, 4, 1)
    assert abs(float(get_loss("dice")(t, p)) - 0.2) < 1e-6
    logits = np.array([2.0, 0.5, -1.0])
    probs = (1 / (1 + np.exp(-logits))).astype("float32").reshape(1, 1, 3, 1)
    assert abs(float(get_loss("lovasz")(np.array([1, 0, 1], "float32").reshape(1, 1, 3, 1), probs)) - 1.25) < 1e-4

    x = rng.random((8, 16, 16, 4)).astype("float32")
    y = (x[..., :1] > 0.5).astype("uint8")
    _fit_save_reload(build_model({"name": "unet", "depth": 1, "base_filters": 4}, (16, 16, 4), 1), x, y,
                     workdir, "unet")

    fractal = build_model({"name": "fractal_unet", "columns": 2, "depth": 1, "base_filters": 4, "seed": 1},
                          (16, 16, 4), 1)
    sampler = fractal.get_layer("drop_path")
    joins = [(la, len(la.input) - 1) for la in fractal.layers if isinstance(la, FractalJoin)]
    n_global = 0
    for _ in range(40):
        decision = sampler(x[:2], training=True)
        is_global, column = bool(np.asarray(decision)[0, 0]), int(np.asarray(decision)[0, 1])
        n_global += is_global
        for join, k in joins:
            w = np.asarray(join.path_weights(decision, k))
            assert (w > 0).sum() >= 1 and abs(w.sum() - 1) < 1e-6
            if is_global:
                assert (w > 0).sum() == 1 and w[column] == 1.0
    assert 5 < n_global < 35, n_global
    trained = _fit_save_reload(fractal, x, y, workdir, "fractal_unet")
    deep = deepest_column_model(trained)
    assert not np.allclose(np.asarray(deep(x, training=False)), np.asarray(trained(x, training=False)))

    import keras_hub

    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 64, 64, 64],
        stackwise_num_blocks=[1, 1, 1, 1], stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
        image_shape=(None, None, 3),
    )
    backbone.save_to_preset(str(Path(workdir) / "tiny_resnet"))
    rgb = backbone.get_layer("conv1_conv").get_weights()[0]
    x32 = rng.random((8, 32, 32, 4)).astype("float32")
    y32 = (x32[..., 3:] > 0.5).astype("uint8")
    enc = build_model({"name": "encoder_unet", "preset": str(Path(workdir) / "tiny_resnet"),
                       "decoder_filters": [8, 8, 4, 4, 4]}, (32, 32, 4), 1)
    kernel = enc.get_layer("encoder").get_layer("conv1_conv").get_weights()[0]
    np.testing.assert_array_equal(kernel[:, :, :3], rgb)
    np.testing.assert_allclose(kernel[:, :, 3], rgb.mean(axis=2), rtol=1e-6)
    _fit_save_reload(enc, x32, y32, workdir, "encoder_unet")
    print("all model checks passed")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    _run_checks(sys.argv[1])
