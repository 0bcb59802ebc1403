"""Every zoo model a config can name, saved as segkit saves a checkpoint, reloads in a fresh interpreter that
imports nothing of segkit but `segkit.models` (as the README tells users), with plain `keras.models.load_model`,
and predicts exactly what it predicted before saving — on a non-square image, with the decoder blocks on."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from segkit.models.registry import build_model

SHAPE = (32, 64, 3)
PLAIN = {"backbone": "plain", "depth": 3, "base_filters": 4}
ZOO = {
    "unet_blocks": {"name": "unet", "depth": 3, "base_filters": 4, "attention": "scse", "hypercolumn": True,
                    "deep_supervision": True, "dropout": 0.1},
    "fpn": {"name": "fpn", **PLAIN, "pyramid_filters": 8, "segmentation_filters": 8, "attention": "scse"},
    "unet_plus_plus": {"name": "unet_plus_plus", **PLAIN, "deep_supervision": True},
    "deeplabv3_plus": {"name": "deeplabv3_plus", **PLAIN, "aspp_filters": 8, "low_level_filters": 4,
                       "decoder_filters": 8, "atrous_rates": [1, 2]},
    "mit_unet": {"name": "mit_unet", "decoder_filters": [8, 8, 4], "classifier": True},
    "segformer": {"name": "segformer", "projection_filters": 8},
}

LOAD = """
import sys, numpy as np
import segkit.models  # registers segkit's layers, losses and metrics; nothing else of segkit
import keras
x = np.load(sys.argv[1])
for path in sys.argv[2:]:
    out = keras.models.load_model(path).predict(x, verbose=0)
    np.save(path + ".npy", np.concatenate([np.asarray(o).reshape(len(x), -1) for o in (out if isinstance(out, list) else [out])], axis=1))
print(sorted(m for m in sys.modules if m.startswith("segkit.")))
"""


def test_every_zoo_model_reloads_in_a_fresh_process_with_only_segkit_models(tmp_path):
    x = np.random.default_rng(0).random((2, *SHAPE)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    expected = {}
    for key, spec in ZOO.items():
        model = build_model(spec, SHAPE, 2)
        model.compile(optimizer="adam", loss="binary_crossentropy")
        out = model.predict(x, verbose=0)
        outs = out if isinstance(out, list) else [out]
        assert outs[0].shape == (2, *SHAPE[:2], 2)
        expected[key] = np.concatenate([np.asarray(o).reshape(len(x), -1) for o in outs], axis=1)
        model.save(tmp_path / f"{key}.keras")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path / "x.npy"),
                           *[str(tmp_path / f"{key}.keras") for key in ZOO]],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded_modules = eval(done.stdout.strip().splitlines()[-1])
    assert "segkit.api" not in loaded_modules and "segkit.train" not in loaded_modules
    for key in ZOO:
        np.testing.assert_array_equal(np.load(tmp_path / f"{key}.keras.npy"), expected[key], err_msg=key)
