"""Throughput of segkit's models on the visible devices: training and inference images/s, TFLOP/s, % of peak.

For U-Net (base 32, depth 4) and FractalNet-U-Net (C = 3, segkit's default base 16) on 384×384×4 inputs, every
combination of float32 / mixed precision, XLA on / off and one device / all visible devices (data-parallel:
keras.distribution.DataParallel on JAX, MirroredStrategy on TensorFlow, through segkit.devices as train does),
after warm-up steps that are not timed; each timed loop ends on numpy outputs, so the device has finished.
Mixed precision is segkit's automatic choice for the device (bfloat16 on CPU). Achieved TFLOP/s come from the
layer-counted forward FLOPs (segkit.models.cost; training ≈ 3 × forward), "% peak" against the vendor's dense
16-bit peak of the device (PEAK_TFLOPS, also for float32 rows). The feed column is the images/s of segkit's real
training feed alone (SegmentationDataset with the default train.augment: tf.data on TensorFlow, the PyDataset
with train.workers threads elsewhere): when it is below the training rate the feed, not the device, is the
bottleneck. Runs on CPU too; `--quick` makes it small (32×32, fewer steps) for a smoke test. Needs no
TensorFlow under KERAS_BACKEND=jax.

    KERAS_BACKEND=jax python bench/gpu.py [--size 384] [--batch 8] [--steps 10] [--warmup 3] [--quick]
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402

# Dense (no sparsity) bf16/fp16 tensor peaks in TFLOP/s, vendor figures (shared/notes/devices.md); H200 is the
# H100 SXM's chip with more memory. Matched against the device's name.
PEAK_TFLOPS = [
    (r"\bH200\b", 989.0), (r"\bH100\b", 989.0), (r"\bA100\b", 312.0), (r"\bV100\b", 125.0),
    (r"\bP100\b", 18.7), (r"\bT4\b", 65.0), (r"\bL4\b", 121.0), (r"TPU v5 ?(lite|e)\b", 197.0),
]
MODELS = {"unet": {"name": "unet", "base_filters": 32}, "fractal": {"name": "fractal_unet", "columns": 3}}
LABELS = {"unet": "U-Net base 32", "fractal": "FractalNet-U-Net C=3"}


def peak_tflops(name: str) -> float | None:
    """The table's peak for a device name ('NVIDIA H100 80GB HBM3', 'Tesla T4', 'TPU v5 lite'), else None."""
    for pattern, peak in PEAK_TFLOPS:
        if re.search(pattern, name, re.IGNORECASE):
            return peak
    return None


def mixed_policy(kind: str, name: str, cap: tuple[int, int] | None) -> str:
    """The mixed policy to measure: segkit's automatic choice for the device (segkit.devices), and on devices
    where that is float32 (CPU, consumer Pascal) bfloat16 on CPU / float16 on a GPU, so the row still says
    what mixed precision gives there."""
    from segkit.devices import choose_precision

    policy = choose_precision(kind, name, cap)
    if policy == "float32":
        return "mixed_bfloat16" if kind == "cpu" else "mixed_float16"
    return policy


def plan(devices, n: int, precision: str, xla: bool):
    """segkit's DevicePlan over the first `n` devices: its scope builds the model data-parallel across them
    (keras.distribution.DataParallel on JAX, MirroredStrategy on TensorFlow), as `segkit train` does."""
    from segkit.devices import plan_devices

    return plan_devices(SimpleNamespace(devices=n, mixed_precision=precision, jit_compile=xla), devices=devices)


def timed(fn, warmup: int, steps: int) -> float:
    """Seconds per call of `fn` over `steps` calls after `warmup` untimed ones (fn returns host data)."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def measure(model_key: str, precision: str, xla: bool, n_dev: int, args, backend: str, devices) -> dict:
    """Training and inference images/s of one configuration, and the model's forward FLOPs per image."""
    import keras

    from segkit.losses import get_loss
    from segkit.models.cost import forward_flops
    from segkit.models.registry import build_model, set_precision

    shape = (args.size, args.size, args.bands)
    batch = args.batch * n_dev
    rng = np.random.default_rng(0)
    x = rng.random((batch,) + shape).astype("float32")
    y = (rng.random((batch, args.size, args.size, 1)) > 0.5).astype("float32")
    set_precision(precision)
    strategy_tf = backend == "tensorflow" and n_dev > 1
    try:
        with plan(devices, n_dev, precision, xla).scope():
            model = build_model(MODELS[model_key], shape, 1)
            model.compile(keras.optimizers.Adam(1e-3), loss=get_loss("bce_dice"), jit_compile=xla)
            flops = forward_flops(model)
            if strategy_tf:  # train_on_batch would give every replica the whole batch: fit splits it
                import tensorflow as tf

                data = tf.data.Dataset.from_tensors((x, y)).repeat()
                model.fit(data, steps_per_epoch=args.warmup, epochs=1, verbose=0)
                start = time.perf_counter()
                model.fit(data, steps_per_epoch=args.steps, epochs=1, verbose=0)
                train_s = (time.perf_counter() - start) / args.steps
            else:
                train_s = timed(lambda: model.train_on_batch(x, y), args.warmup, args.steps)
            if n_dev > 1:  # predict splits the batch over the devices (predict_on_batch does not)
                infer_s = timed(lambda: model.predict(x, batch_size=batch, verbose=0), args.warmup, args.steps)
            else:
                infer_s = timed(lambda: model.predict_on_batch(x), args.warmup, args.steps)
    finally:
        set_precision(None)
        keras.backend.clear_session()
    return {"flops": flops, "train": batch / train_s, "infer": batch / infer_s, "batch": batch}


def feed_rate(args, backend: str, n_batches: int) -> float:
    """Images/s of segkit's training feed alone: random uint16 images and masks through SegmentationDataset
    with the default augmentations, as train builds it (`keras_feed`: tf.data on TensorFlow; the PyDataset
    read by train.workers threads, as Keras' worker pool does, elsewhere)."""
    from segkit.config import AugmentConfig, TrainConfig
    from segkit.data.generator import SegmentationDataset

    tc = TrainConfig()
    rng = np.random.default_rng(1)
    n = args.batch * 4
    cache = SimpleNamespace(images=rng.integers(0, 65535, (n, args.size, args.size, args.bands), dtype=np.uint16),
                            masks=(rng.random((n, args.size, args.size, 1)) > 0.5).astype(np.uint8))
    ds = SegmentationDataset(cache, np.arange(n), args.batch, augment=AugmentConfig(), shuffle=True, seed=0,
                             workers=tc.workers, use_multiprocessing=False)
    feed, _ = ds.keras_feed()
    if backend == "tensorflow":
        it = iter(feed.repeat())
        next(it)
        start = time.perf_counter()
        for _ in range(n_batches):
            np.asarray(next(it)[0])
        return n_batches * args.batch / (time.perf_counter() - start)
    with ThreadPoolExecutor(max(1, tc.workers)) as pool:
        list(pool.map(lambda i: ds[i % len(ds)], range(tc.workers)))  # warm-up: one pipeline per thread
        start = time.perf_counter()
        list(pool.map(lambda i: ds[i % len(ds)], range(n_batches)))
        return n_batches * args.batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--bands", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8, help="images per device and step")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (tracing, compilation)")
    ap.add_argument("--models", default="unet,fractal", help="comma list of: " + ", ".join(MODELS))
    ap.add_argument("--precisions", default="float32,mixed", help="comma list of float32, mixed")
    ap.add_argument("--xla", default="on,off", help="comma list of on, off")
    ap.add_argument("--quick", action="store_true", help="smoke test: 32x32, batch 2, 2 steps after 1 warm-up")
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.steps, args.warmup = min(args.size, 32), min(args.batch, 2), 2, 1
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        ap.error(f"--models: unknown {unknown}; known: {', '.join(MODELS)}")

    import keras

    backend = keras.backend.backend()
    from segkit.devices import list_devices

    devices = list_devices(backend)
    kind, name, cap = devices[0].kind, devices[0].name, devices[0].compute_capability
    mixed = mixed_policy(kind, name, cap)
    peak = peak_tflops(name)
    counts = [1] + ([len(devices)] if len(devices) > 1 else [])
    capability = f" (compute capability {cap[0]}.{cap[1]})" if cap else ""
    peak_note = f"peak {peak:g} TFLOP/s dense 16-bit per device" if peak else "no peak known (% peak: -)"
    print(f"backend {backend}; {len(devices)} × {kind} '{name}'{capability}; {peak_note}")
    print(f"input {args.size}x{args.size}x{args.bands}, batch {args.batch} per device, {args.steps} timed steps "
          f"after {args.warmup} warm-up; mixed = {mixed}; {os.cpu_count()} CPUs", flush=True)
    feed = feed_rate(args, backend, n_batches=max(4, args.steps))
    print(f"training feed alone (SegmentationDataset, default augmentations): {feed:.1f} images/s", flush=True)

    header = ("model", "precision", "XLA", "devices", "batch", "train img/s", "train TFLOP/s", "% peak",
              "infer img/s", "infer TFLOP/s", "% peak", "bottleneck")
    rows = []
    for model_key in models:
        for prec in args.precisions.split(","):
            for xla in args.xla.split(","):
                for n_dev in counts:
                    policy = "float32" if prec == "float32" else mixed
                    cells = [LABELS[model_key], policy, xla, str(n_dev)]
                    try:
                        r = measure(model_key, policy, xla == "on", n_dev, args, backend, devices)
                    except Exception as exc:  # a configuration the backend cannot run: say so, go on
                        rows.append(cells + ["-"] * 7 + [f"failed: {type(exc).__name__}: {str(exc)[:80]}"])
                        print(" | ".join(rows[-1]), flush=True)
                        continue
                    tf_train = 3 * r["flops"] * r["train"] / 1e12
                    tf_infer = r["flops"] * r["infer"] / 1e12
                    pk = peak * n_dev if peak else None
                    pct = (lambda t: f"{100 * t / pk:.1f}") if pk else (lambda t: "-")
                    rows.append(cells + [str(r["batch"]), f"{r['train']:.1f}", f"{tf_train:.3f}", pct(tf_train),
                                         f"{r['infer']:.1f}", f"{tf_infer:.3f}", pct(tf_infer),
                                         "feed" if feed < r["train"] else "device"])
                    print(" | ".join(rows[-1]), flush=True)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print()
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
