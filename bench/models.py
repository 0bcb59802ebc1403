"""Model cost: parameters, forward FLOPs (counted from the layers) and CPU forward images/s.

Prints, per input size (256² and 384² by default, 4 bands), one row for every decoder × encoder of the zoo —
decoders U-Net (`unet` on the plain encoder, `encoder_unet` on a KerasHub one), FPN, U-Net++, DeepLabV3+;
encoders the plain conv encoder (base 32, depth 4), ResNet34 and EfficientNet-B0 (random weights) — then the
classic rows (U-Net / FractalNet-U-Net widths) and the FractalNet-U-Net / U-Net cost ratios at equal width (a
3-column block costs ≈ 3.4 U-Net blocks). Throughput is wall-clock on this machine: compare rows of one run only.

    .venv/bin/python bench/models.py [--sizes 256 384] [--batch 2] [--steps 2] [--skip-speed]
        [--decoders unet fpn ...] [--encoders plain resnet34 ...] [--only zoo|classic|all]
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


DECODERS = {  # label: registry name on the plain encoder, on a KerasHub one
    "U-Net": ("unet", "encoder_unet"),
    "FPN": ("fpn", "fpn"),
    "U-Net++": ("unet_plus_plus", "unet_plus_plus"),
    "DeepLabV3+": ("deeplabv3_plus", "deeplabv3_plus"),
}
DECODER_KEYS = {"unet": "U-Net", "fpn": "FPN", "unet_plus_plus": "U-Net++", "deeplabv3_plus": "DeepLabV3+"}
ENCODERS = ["plain", "resnet34", "efficientnet_b0"]
PLAIN = {"depth": 4, "base_filters": 32}


def zoo_spec(decoder: str, encoder: str) -> dict:
    """The model spec of one decoder × encoder cell (registry defaults for the decoder's own widths)."""
    on_plain, on_hub = DECODERS[DECODER_KEYS[decoder]]
    if encoder == "plain":
        return {"name": on_plain, **PLAIN} if on_plain == "unet" else {"name": on_plain, "backbone": "plain", **PLAIN}
    return {"name": on_hub, "backbone": encoder}


def forward_speed(model, x, steps: int) -> float:
    """Images per second of inference-mode forward passes, after one warm-up batch."""
    model.predict_on_batch(x)
    start = time.perf_counter()
    for _ in range(steps):
        model.predict_on_batch(x)
    return steps * len(x) / (time.perf_counter() - start)


def row(label: str, spec: dict, shape: tuple, x, args, keras) -> tuple[float, float]:
    """Print one row (params, GFLOPs, img/s) and return (FLOPs, img/s)."""
    from segkit.models.cost import forward_flops
    from segkit.models.registry import build_model

    model = build_model(spec, shape, 1)
    flops = forward_flops(model)
    speed = float("nan") if args.skip_speed else forward_speed(model, x, args.steps)
    print(f"{label:36s} {model.count_params() / 1e6:10.2f} {flops / 1e9:8.1f} {speed:8.2f}", flush=True)
    del model
    keras.backend.clear_session()
    return flops, speed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 384])
    ap.add_argument("--size", type=int, help="one size (the old flag; same as --sizes N)")
    ap.add_argument("--bands", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--skip-speed", action="store_true", help="parameters and FLOPs only")
    ap.add_argument("--decoders", nargs="+", default=list(DECODER_KEYS), choices=list(DECODER_KEYS))
    ap.add_argument("--encoders", nargs="+", default=ENCODERS)
    ap.add_argument("--only", choices=["zoo", "classic", "all"], default="all")
    args = ap.parse_args()
    sizes = [args.size] if args.size else args.sizes

    import logging

    import keras

    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notes: one predict function per model

    for size in sizes:
        shape = (size, size, args.bands)
        x = np.random.default_rng(0).random((args.batch,) + shape).astype("float32")
        print(f"\nbackend {keras.backend.backend()}, input {shape}, batch {args.batch}, {os.cpu_count()} CPUs "
              "(shared machine: throughput is indicative)")
        print(f"{'model':36s} {'params (M)':>10s} {'GFLOPs':>8s} {'img/s':>8s}")
        if args.only in ("zoo", "all"):
            for decoder in args.decoders:
                for encoder in args.encoders:
                    row(f"{DECODER_KEYS[decoder]} / {encoder}", zoo_spec(decoder, encoder), shape, x, args, keras)
        if args.only in ("classic", "all"):
            flops, speeds = {}, {}
            for label, spec in MODELS:
                flops[label], speeds[label] = row(label, spec, shape, x, args, keras)
            for c in (2, 3):
                ratio = flops[f"FractalNet-U-Net C={c} base 32"] / flops["U-Net base 32"]
                time_ratio = speeds["U-Net base 32"] / speeds[f"FractalNet-U-Net C={c} base 32"]
                print(f"FractalNet-U-Net C={c} / U-Net at equal width (base 32): FLOP ratio {ratio:.2f}, "
                      f"measured CPU time ratio {time_ratio:.2f}")


if __name__ == "__main__":
    main()
