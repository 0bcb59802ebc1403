"""Model cost: parameters, forward FLOPs (counted from the layers) and CPU forward images/s.

Prints, per input size (256² and 384² by default, 4 bands), one row for every decoder × encoder of the zoo —
decoders U-Net (`unet` on the plain encoder, `encoder_unet` on a KerasHub one), FPN, U-Net++, DeepLabV3+ and
SegFormer; encoders the plain conv encoder (base 32, depth 4) and one random-weight KerasHub backbone per family
(ResNet34, EfficientNet-B0, MobileNetV3-Large, DenseNet121, MiT-B0) — then the classic rows (U-Net /
FractalNet-U-Net widths) and the FractalNet-U-Net / U-Net cost ratios at equal width (a 3-column block costs ≈ 3.4
U-Net blocks). A cell the registry refuses (SegFormer takes a MiT only) prints "n/a" and the reason. At the end,
one markdown table of every size for the README. Throughput is wall-clock on this machine: compare rows of one
run only.

FLOPs: segkit.models.cost counts convolution and dense layers; on a model whose custom layers hide their conv or
dense layers from it (KerasHub's MobileNetV3 blocks) the TensorFlow graph's convolutions and matrix
products are counted instead (the two counts agree on the others); on other backends such a row shows "≥" (a
lower bound).

    .venv/bin/python bench/models.py [--sizes 256 384] [--batch 2] [--steps 2] [--skip-speed]
        [--decoders unet fpn ...] [--encoders plain resnet34 ...] [--only zoo|classic|all]
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

MODELS = [
    ("U-Net base 32", {"name": "unet", "base_filters": 32}),
    ("U-Net base 64", {"name": "unet", "base_filters": 64}),
    ("FractalNet-U-Net C=2 base 32", {"name": "fractal_unet", "columns": 2, "base_filters": 32}),
    ("FractalNet-U-Net C=3 base 32", {"name": "fractal_unet", "columns": 3, "base_filters": 32}),
    ("FractalNet-U-Net C=3 base 16", {"name": "fractal_unet", "columns": 3, "base_filters": 16}),
]  # the encoder U-Nets are the zoo's "U-Net / resnet34" … rows


DECODERS = {  # key: (label, registry name on the plain encoder, on a KerasHub one)
    "unet": ("U-Net", "unet", "encoder_unet"),
    "fpn": ("FPN", "fpn", "fpn"),
    "unet_plus_plus": ("U-Net++", "unet_plus_plus", "unet_plus_plus"),
    "deeplabv3_plus": ("DeepLabV3+", "deeplabv3_plus", "deeplabv3_plus"),
    "segformer": ("SegFormer", "segformer", "segformer"),
}
ENCODERS = ["plain", "resnet34", "efficientnet_b0", "mobilenet_v3_large_100", "densenet121", "mit_b0"]
PLAIN = {"depth": 4, "base_filters": 32}
PLAIN_SHAPED = {"unet", "fpn", "unet_plus_plus", "deeplabv3_plus"}  # builders that take the plain encoder's keys


@dataclass
class Cost:
    """One model's figures at one size (`flops_bound`: the count is a lower bound)."""

    params: int
    flops: float
    speed: float
    flops_bound: bool = False

    def gflops(self) -> str:
        return f"{'≥' if self.flops_bound else ''}{self.flops / 1e9:.1f}"


def zoo_spec(decoder: str, encoder: str) -> dict:
    """The model spec of one decoder × encoder cell (registry defaults for the decoder's own widths)."""
    _, on_plain, on_hub = DECODERS[decoder]
    if encoder != "plain":
        return {"name": on_hub, "backbone": encoder}
    if on_plain == "unet":
        return {"name": "unet", **PLAIN}
    return {"name": on_plain, "backbone": "plain", **(PLAIN if on_plain in PLAIN_SHAPED else {})}


def forward_speed(model, x, steps: int) -> float:
    """Images per second of inference-mode forward passes, after one warm-up batch."""
    model.predict_on_batch(x)
    start = time.perf_counter()
    for _ in range(steps):
        model.predict_on_batch(x)
    return steps * len(x) / (time.perf_counter() - start)


def graph_flops(model, shape: tuple) -> int:
    """Forward FLOPs for one image from the TensorFlow graph: 2 × the multiply-accumulates of its convolutions
    (plain, depthwise, transposed) and matrix products, wherever they sit in the model (0 for an op whose
    shapes are not static)."""
    import tensorflow as tf

    spec = tf.TensorSpec((1, *shape), tf.float32)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph
    return 2 * sum(_op_macs(op) for op in graph.get_operations())


def _op_macs(op) -> int:
    """Multiply-accumulates of one graph op (0 for other ops and unknown shapes)."""
    kind = op.type
    try:
        if kind == "Conv2D":
            k = op.inputs[1].shape
            return int(np.prod(op.outputs[0].shape[1:]) * k[0] * k[1] * k[2])
        if kind == "DepthwiseConv2dNative":
            k = op.inputs[1].shape
            return int(np.prod(op.outputs[0].shape[1:]) * k[0] * k[1])
        if kind == "Conv2DBackpropInput":  # a transposed conv: every input pixel scatters the whole kernel
            k = op.inputs[1].shape
            return int(np.prod(op.inputs[2].shape[1:]) * k[0] * k[1] * k[2])
        if kind == "MatMul":
            a = op.inputs[0].shape
            return int(np.prod(op.outputs[0].shape) * (a[-2] if op.get_attr("transpose_a") else a[-1]))
        if kind in ("BatchMatMulV2", "BatchMatMulV3"):
            a = op.inputs[0].shape
            return int(np.prod(op.outputs[0].shape) * (a[-2] if op.get_attr("adj_x") else a[-1]))
    except (TypeError, ValueError):  # a dimension unknown until run time
        return 0
    return 0


def count_flops(model, shape: tuple, keras) -> tuple[float, bool]:
    """(forward FLOPs per image, whether that is only a lower bound): segkit's layer count, or the TensorFlow
    graph's where custom layers hide dense layers from it."""
    from segkit.models.cost import forward_flops, uncounted_layers

    flops = forward_flops(model)
    if not uncounted_layers(model):
        return flops, False
    if keras.backend.backend() == "tensorflow":
        return max(flops, graph_flops(model, shape)), False
    return flops, True


def measure(spec: dict, shape: tuple, x, args, keras) -> Cost | str:
    """The Cost of one model, or why it cannot be built (the registry's ConfigError, one line)."""
    from segkit.errors import SegkitError
    from segkit.models.registry import build_model

    try:
        model = build_model(spec, shape, 1)
    except SegkitError as exc:
        return " ".join(str(exc).split())
    try:
        flops, bound = count_flops(model, shape, keras)
        speed = float("nan") if args.skip_speed else forward_speed(model, x, args.steps)
        return Cost(model.count_params(), flops, speed, bound)
    finally:
        del model
        keras.backend.clear_session()


def row(label: str, spec: dict, shape: tuple, x, args, keras) -> Cost | str:
    """Measure one model, print its row (params, GFLOPs, img/s, or n/a and the reason) and return the Cost."""
    cost = measure(spec, shape, x, args, keras)
    if isinstance(cost, str):
        print(f"{label:36s} {'n/a':>10s}  {cost}", flush=True)
    else:
        print(f"{label:36s} {cost.params / 1e6:10.2f} {cost.gflops():>8s} {cost.speed:8.2f}", flush=True)
    return cost


def markdown(results: dict[str, dict[int, Cost | str]], sizes: list[int], skip_speed: bool) -> list[str]:
    """One markdown table for the README: a row per model that builds (params, then GFLOPs and img/s per size),
    then one line per decoder naming the encoders it cannot be built on, with the first reason."""
    cols = [f"GFLOPs {s}²" for s in sizes] + ([] if skip_speed else [f"img/s {s}²" for s in sizes])
    lines = ["| model | params (M) | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    refused: dict[str, tuple[list[str], str]] = {}
    for label, by_size in results.items():
        costs = [c for c in by_size.values() if isinstance(c, Cost)]
        if not costs:
            decoder, _, encoder = label.partition(" / ")
            refused.setdefault(decoder, ([], next(iter(by_size.values()))))[0].append(encoder or decoder)
            continue
        cells = [by_size[s].gflops() if isinstance(by_size.get(s), Cost) else "n/a" for s in sizes]
        if not skip_speed:
            cells += [f"{by_size[s].speed:.1f}" if isinstance(by_size.get(s), Cost) else "n/a" for s in sizes]
        lines.append(f"| {label} | {costs[0].params / 1e6:.2f} | " + " | ".join(cells) + " |")
    if refused:
        lines.append("")
    for decoder, (encoders, reason) in refused.items():
        lines.append(f"n/a: {decoder} on {', '.join(encoders)} — {reason}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 384])
    ap.add_argument("--size", type=int, help="one size (the old flag; same as --sizes N)")
    ap.add_argument("--bands", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--skip-speed", action="store_true", help="parameters and FLOPs only")
    ap.add_argument("--decoders", nargs="+", default=list(DECODERS), choices=list(DECODERS))
    ap.add_argument("--encoders", nargs="+", default=ENCODERS, help="plain or any name of encoders.BACKBONES")
    ap.add_argument("--only", choices=["zoo", "classic", "all"], default="all")
    args = ap.parse_args()
    sizes = [args.size] if args.size else args.sizes

    import logging

    import keras

    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notes: one predict function per model

    models = []
    if args.only in ("zoo", "all"):
        models += [(f"{DECODERS[d][0]} / {e}", zoo_spec(d, e)) for d in args.decoders for e in args.encoders]
    if args.only in ("classic", "all"):
        models += MODELS
    results: dict[str, dict[int, Cost | str]] = {label: {} for label, _ in models}
    for size in sizes:
        shape = (size, size, args.bands)
        x = np.random.default_rng(0).random((args.batch,) + shape).astype("float32")
        print(f"\nbackend {keras.backend.backend()}, input {shape}, batch {args.batch}, {os.cpu_count()} CPUs "
              "(shared machine: throughput is indicative)")
        print(f"{'model':36s} {'params (M)':>10s} {'GFLOPs':>8s} {'img/s':>8s}")
        for label, spec in models:
            results[label][size] = row(label, spec, shape, x, args, keras)
        if args.only in ("classic", "all"):
            fractal_ratios({label: results[label][size] for label, _ in MODELS})
    print(f"\nmarkdown ({args.bands} bands, batch {args.batch}, {os.cpu_count()} CPUs, backend "
          f"{keras.backend.backend()}):\n")
    print("\n".join(markdown(results, sizes, args.skip_speed)))


def fractal_ratios(costs: dict[str, Cost]) -> None:
    """Print the FractalNet-U-Net / U-Net FLOP and measured time ratios at equal width (base 32)."""
    unet = costs["U-Net base 32"]
    for c in (2, 3):
        fractal = costs[f"FractalNet-U-Net C={c} base 32"]
        print(f"FractalNet-U-Net C={c} / U-Net at equal width (base 32): FLOP ratio {fractal.flops / unet.flops:.2f}, "
              f"measured CPU time ratio {unet.speed / fractal.speed:.2f}")


if __name__ == "__main__":
    main()
