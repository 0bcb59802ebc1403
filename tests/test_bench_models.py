"""bench/models.py prints a row per decoder × encoder (n/a with the reason where the registry refuses one) and its
markdown table; FLOPs hidden inside custom layers (KerasHub's MobileNetV3 blocks) are counted from the TensorFlow
graph, which agrees with the layer count where both see everything (segkit's MiT included)."""
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest
from conftest import load_bench

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench" / "models.py"


def bench_module():
    return load_bench("models")


def test_zoo_run_prints_rows_na_and_markdown():
    proc = subprocess.run([sys.executable, str(BENCH), "--skip-speed", "--sizes", "64", "--only", "zoo",
                           "--decoders", "unet", "segformer", "--encoders", "plain", "mit_b0"],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "| model | params (M) | GFLOPs 64² |" in out
    for label in ("U-Net / plain", "U-Net / mit_b0", "SegFormer / mit_b0"):
        (line,) = [row for row in out.splitlines() if row.startswith(f"| {label} |")]
        params, gflops = (float(c) for c in line.strip("|").split("|")[1:3])
        assert params > 0 and gflops > 0, line
    assert "SegFormer / plain" in out and "n/a  backbone: segformer takes a MiT backbone" in out
    assert "n/a: SegFormer on plain — backbone: segformer takes a MiT backbone" in out


def test_graph_count_matches_the_layer_count_and_sees_into_mit():
    pytest.importorskip("tensorflow")
    from segkit.models.cost import forward_flops, uncounted_layers
    from segkit.models.registry import build_model

    bench = bench_module()
    unet = build_model({"name": "unet", "depth": 2, "base_filters": 4}, (32, 32, 3), 1)
    assert not uncounted_layers(unet)
    assert bench.graph_flops(unet, (32, 32, 3)) == forward_flops(unet) > 0
    assert bench.count_flops(unet, (32, 32, 3), keras) == (forward_flops(unet), False)
    # segkit's MiT blocks count their own projections, attention products and Mix-FFN: exactly the graph's count
    segformer = build_model({"name": "segformer", "backbone": "mit_b0", "projection_filters": 8}, (64, 96, 3), 1)
    assert not uncounted_layers(segformer)
    assert bench.graph_flops(segformer, (64, 96, 3)) == forward_flops(segformer) > 0


def test_markdown_table_and_refused_cells():
    bench = bench_module()
    cost = bench.Cost(2_500_000, 3.25e9, 10.0)
    results = {"U-Net / plain": {64: cost, 96: cost}, "SegFormer / plain": {64: "no MiT", 96: "no MiT"},
               "SegFormer / resnet34": {64: "no MiT", 96: "no MiT"},
               "FPN / mit_b0": {64: bench.Cost(1_000_000, 2e9, 5.0, flops_bound=True), 96: "too small"}}
    lines = bench.markdown(results, [64, 96], skip_speed=False)
    assert lines[0] == "| model | params (M) | GFLOPs 64² | GFLOPs 96² | img/s 64² | img/s 96² |"
    assert "| U-Net / plain | 2.50 | 3.2 | 3.2 | 10.0 | 10.0 |" in lines
    assert "| FPN / mit_b0 | 1.00 | ≥2.0 | n/a | 5.0 | n/a |" in lines
    assert lines[-1] == "n/a: SegFormer on plain, resnet34 — no MiT"
