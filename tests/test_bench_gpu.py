"""bench/gpu.py runs end to end on CPU in --quick mode and prints its table (figures not asserted: speed is
the machine's); under JAX it runs with TensorFlow absent and data-parallel over two simulated devices."""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench" / "gpu.py"
HEADER = ["model", "precision", "XLA", "devices", "batch", "train img/s", "train TFLOP/s", "% peak", "infer img/s",
          "infer TFLOP/s", "% peak", "bottleneck"]


def rows(stdout: str) -> list[list[str]]:
    """The final table's rows, split into cells (the header checked)."""
    lines = stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("model "))
    assert [c.strip() for c in lines[head].split("|")] == HEADER
    return [[c.strip() for c in line.split("|")] for line in lines[head + 2:] if "|" in line]


def check_row(row: list[str], devices: str) -> None:
    model, precision, xla, n, batch, train, train_tf, _, infer, infer_tf, _, bottleneck = row
    assert model == "U-Net base 32" and precision == "float32" and n == devices, row
    assert int(batch) == 2 * int(devices)
    assert float(train) > 0 and float(infer) > 0 and float(train_tf) > 0 and float(infer_tf) > 0, row
    assert bottleneck in ("feed", "device"), row


def test_quick_run_prints_the_table():
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--models", "unet", "--precisions", "float32",
                           "--xla", "off"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"training feed alone .*: [\d.]+ images/s", proc.stdout), proc.stdout
    assert "input 32x32x4, batch 2 per device" in proc.stdout
    (row,) = rows(proc.stdout)
    check_row(row, "1")
    assert row[2] == "off"


RUNNER = """
import runpy, sys
sys.modules["tensorflow"] = None  # as on a machine without TensorFlow: any import of it fails
sys.argv = [sys.argv[1], "--quick", "--models", "unet", "--precisions", "float32", "--xla", "on"]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.jax
def test_quick_run_on_jax_without_tensorflow_on_two_devices():
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(BENCH)], cwd=REPO, capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "backend jax; 2 × cpu" in proc.stdout
    one, both = rows(proc.stdout)
    check_row(one, "1")
    check_row(both, "2")


def test_peak_table_matches_device_names():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989
    assert bench.peak_tflops("Tesla T4") == 65 and bench.peak_tflops("NVIDIA L4") == 121
    assert bench.peak_tflops("NVIDIA A100-SXM4-40GB") == 312 and bench.peak_tflops("Tesla V100-SXM2-16GB") == 125
    assert bench.peak_tflops("Tesla P100-PCIE-16GB") == 18.7 and bench.peak_tflops("TPU v5 lite") == 197
    assert bench.peak_tflops("NVIDIA L40S") is None and bench.peak_tflops("cpu") is None
    assert bench.mixed_policy("gpu", "Tesla T4", (7, 5)) == "mixed_float16"
    assert bench.mixed_policy("gpu", "NVIDIA H100", None) == "mixed_bfloat16"
