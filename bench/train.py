"""Training throughput of the default U-Net (depth 4, base 32) on 384×384×4 patches on this machine.

Runs `train_on_batch` with the default loss (bce_dice) and Adam for a few steps after a warm-up step and
prints images/s. Wall-clock on a possibly shared machine: indicative only.

    .venv/bin/python bench/train.py [--size 384] [--batch 4] [--steps 3] [--precision mixed_bfloat16]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--bands", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--model", default="unet", help="model name from the registry (default parameters)")
    ap.add_argument("--precision", default=None, help="float32 (default), mixed_float16 or mixed_bfloat16")
    args = ap.parse_args()

    import keras

    from segkit.losses import get_loss
    from segkit.metrics import get_metrics
    from segkit.models.cost import forward_flops
    from segkit.models.registry import build_model, set_precision

    set_precision(args.precision)
    shape = (args.size, args.size, args.bands)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch,) + shape).astype("float32")
    y = (rng.random((args.batch, args.size, args.size, 1)) > 0.5).astype("uint8")
    model = build_model({"name": args.model}, shape, 1)
    model.compile(keras.optimizers.Adam(1e-3), loss=get_loss("bce_dice"), metrics=get_metrics(["dice", "iou"]))
    model.train_on_batch(x, y)  # warm-up: tracing and compilation
    start = time.perf_counter()
    for _ in range(args.steps):
        model.train_on_batch(x, y)
    elapsed = time.perf_counter() - start
    ips = args.steps * args.batch / elapsed
    gflops = forward_flops(model) / 1e9
    print(f"backend {keras.backend.backend()}, {os.cpu_count()} CPUs (shared machine: indicative), "
          f"precision {keras.mixed_precision.global_policy().name}")
    print(f"{args.model} default, input {shape}, batch {args.batch}, {args.steps} steps after warm-up: "
          f"{ips:.2f} training images/s ({elapsed / args.steps:.2f} s/step; forward {gflops:.1f} GFLOPs/image, "
          f"≈ {3 * gflops * ips:.0f} GFLOP/s sustained at training ≈ 3× forward)")


if __name__ == "__main__":
    main()
