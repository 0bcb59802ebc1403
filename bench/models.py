"""Model cost at 384×384×4: parameters, forward FLOPs (counted from the layers) and CPU forward images/s.

Prints one row per model and the FractalNet-U-Net / U-Net cost ratios at equal width (a 3-column block
costs ≈ 3.4 U-Net blocks). Throughput is wall-clock on this machine: compare rows of one run only.

    .venv/bin/python bench/models.py [--size 384] [--batch 2] [--steps 2] [--skip-speed]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

MODELS = [
    ("U-Net base 32", {"name": "unet", "base_filters": 32}),
    ("U-Net base 64", {"name": "unet", "base_filters": 64}),
    ("FractalNet-U-Net C=2 base 32", {"name": "fractal_unet", "columns": 2, "base_filters": 32}),
    ("FractalNet-U-Net C=3 base 32", {"name": "fractal_unet", "columns": 3, "base_filters": 32}),
    ("FractalNet-U-Net C=3 base 16", {"name": "fractal_unet", "columns": 3, "base_filters": 16}),
    ("ResNet34 encoder U-Net", {"name": "encoder_unet", "backbone": "resnet34"}),
    ("EfficientNet-B0 encoder U-Net", {"name": "encoder_unet", "backbone": "efficientnet_b0"}),
]


def forward_speed(model, x, steps: int) -> float:
    """Images per second of inference-mode forward passes, after one warm-up batch."""
    model.predict_on_batch(x)
    start = time.perf_counter()
    for _ in range(steps):
        model.predict_on_batch(x)
    return steps * len(x) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--bands", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--skip-speed", action="store_true", help="parameters and FLOPs only")
    args = ap.parse_args()

    import logging

    import keras

    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notes: one predict function per model
    from segkit.models.cost import forward_flops
    from segkit.models.registry import build_model

    shape = (args.size, args.size, args.bands)
    x = np.random.default_rng(0).random((args.batch,) + shape).astype("float32")
    print(f"backend {keras.backend.backend()}, input {shape}, batch {args.batch}, {os.cpu_count()} CPUs "
          "(shared machine: throughput is indicative)")
    print(f"{'model':32s} {'params (M)':>10s} {'GFLOPs':>8s} {'img/s':>8s}")
    flops, speeds = {}, {}
    for label, spec in MODELS:
        model = build_model(spec, shape, 1)
        flops[label] = forward_flops(model)
        speed = speeds[label] = float("nan") if args.skip_speed else forward_speed(model, x, args.steps)
        print(f"{label:32s} {model.count_params() / 1e6:10.2f} {flops[label] / 1e9:8.1f} {speed:8.2f}", flush=True)
        del model
        keras.backend.clear_session()
    for c in (2, 3):
        ratio = flops[f"FractalNet-U-Net C={c} base 32"] / flops["U-Net base 32"]
        time_ratio = speeds["U-Net base 32"] / speeds[f"FractalNet-U-Net C={c} base 32"]
        print(f"FractalNet-U-Net C={c} / U-Net at equal width (base 32): FLOP ratio {ratio:.2f}, "
              f"measured CPU time ratio {time_ratio:.2f}")


if __name__ == "__main__":
    main()
