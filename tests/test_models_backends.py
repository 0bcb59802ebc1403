"""The model, loss and metric tests again under another Keras backend (JAX), in a subprocess, since the
backend is fixed when keras is first imported. CI runs it; select it alone with `-m jax`."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL_TESTS = ["tests/test_unet.py", "tests/test_fractal.py", "tests/test_encoders.py", "tests/test_losses.py",
               "tests/test_decoders.py",
               # two KerasHub families (a CNN and the MiT transformer) of the four: CI's time budget
               "tests/test_hub_encoders.py::test_preset_loads_with_rgb_kernels_trains_and_reloads[densenet_unet]",
               "tests/test_hub_encoders.py::test_preset_loads_with_rgb_kernels_trains_and_reloads[segformer]",
               "tests/test_ensemble_analytic.py",
               # the classification head's loss wiring and a two-output U-Net training step (the CLI run is TF's)
               "tests/test_classifier_head.py::test_classifier_loss_and_its_weight_in_the_compiled_loss",
               "tests/test_classifier_head.py::test_every_family_builds_with_the_head_and_trains_a_step[unet]"]

RUNNER = """
import sys
import keras
import pytest
assert keras.backend.backend() == sys.argv[1], keras.backend.backend()
print(f"backend={keras.backend.backend()}")
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[2:]]))
"""


@pytest.mark.jax
@pytest.mark.parametrize("backend", ["jax"])
def test_model_tests_pass_on_other_backend(backend):
    pytest.importorskip(backend)
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", RUNNER, backend, *MODEL_TESTS], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert f"backend={backend}" in proc.stdout
    assert " passed" in proc.stdout.strip().splitlines()[-1], proc.stdout[-2000:]
