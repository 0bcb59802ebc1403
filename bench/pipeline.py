"""Augmented 384x384x4 training patches per second: the 38-Cloud reference way vs segkit's cache + workers.

(a) baseline, as 38-Cloud's reference generator (Cloud-Net's generators.py) does: one process reads the four
    band TIFFs and the GT of every patch for every batch (tifffile, the reader behind skimage.io.imread for
    .TIF), stacks and scales them, then augments;
(b) segkit: the patches decoded once into the memory-mapped cache (`segkit prepare`, timed separately, a
    one-off), served by SegmentationDataset with Keras worker threads, the same augmentations.
Both are measured in the same run on the same synthetic 384-px data. Target: (b) >= 5x (a).
(b) is consumed by a ~zero-compute Keras model's predict(), so it includes Keras' own per-batch cost (with the
TensorFlow backend a tf.data.from_generator hop); the line "batches built in the calling thread" is the
generator alone. Try KERAS_BACKEND=jax to see the Keras overhead without tf.data.

    .venv/bin/python bench/pipeline.py [--scenes 3] [--epochs 2] [--batch-size 8] [--workers 4]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402


def baseline_batches(samples, batch_size: int, pipe, seed: int):
    """The reference loop: per batch, per patch, read 4 band TIFFs + GT, stack, /65535, augment."""
    import tifffile

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(samples))
    for start in range(0, len(order), batch_size):
        xs, ys = [], []
        for i in order[start: start + batch_size]:
            s = samples[i]
            image = np.stack([tifffile.imread(p) for p in s.image], axis=-1).astype(np.float32) / 65535.0
            mask = (tifffile.imread(s.mask[0]) > 0).astype(np.uint8)[..., None]
            out = pipe(image=image, mask=mask)
            xs.append(out["image"])
            ys.append(out["mask"].astype(np.float32))
        yield np.stack(xs), np.stack(ys)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=3, help="synthetic training scenes of 384-px patches")
    ap.add_argument("--epochs", type=int, default=2, help="passes over the patches per measurement")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=4, help="Keras PyDataset worker threads for (b)")
    ap.add_argument("--keep", type=Path, default=None, help="write the data here instead of a temporary folder")
    args = ap.parse_args(argv)

    import keras

    from segkit.config import AugmentConfig
    from segkit.data import augment
    from segkit.data.cache import prepare
    from segkit.data.competitions.base import make_adapter
    from segkit.data.generator import SegmentationDataset
    from segkit.data.synth.cloud38 import generate

    work = args.keep or Path(tempfile.mkdtemp(prefix="segkit-bench-"))
    t = time.perf_counter()
    root = generate(work / "data", seed=0, patch_size=384, n_train_scenes=args.scenes, n_test_scenes=1)
    print(f"synthetic data: {time.perf_counter() - t:.1f} s -> {root}")
    adapter = make_adapter("cloud38", root, {"nonempty_only": False, "stratify": False})
    samples = adapter.train_samples()
    n = len(samples)
    cfg = AugmentConfig()  # the default training augmentations
    print(f"{n} patches of 384x384x4 uint16, batch {args.batch_size}, {args.epochs} passes each, "
          f"augmentations {cfg}, {os.cpu_count()} CPUs visible")

    # (a) baseline
    pipe = augment.build(cfg, seed=0)
    t = time.perf_counter()
    count = 0
    for epoch in range(args.epochs):
        for x, _ in baseline_batches(samples, args.batch_size, pipe, epoch):
            count += len(x)
    rate_a = count / (time.perf_counter() - t)

    # (b) segkit: cache (one-off) + PyDataset workers driven by Keras' own loop
    t = time.perf_counter()
    cache = prepare(adapter, samples, (384, 384), work / "cache", "bench", quiet=True)
    prep_s = time.perf_counter() - t
    inp = keras.Input((384, 384, 4))
    sink = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(inp))  # consumes batches, ~no compute

    def run(workers: int, processes: bool = False) -> float:
        ds = SegmentationDataset(cache, np.arange(n), args.batch_size, adapter.normalise, augment=cfg, shuffle=True,
                                 seed=0, workers=workers, use_multiprocessing=processes, max_queue_size=16)
        sink.predict(ds, verbose=0)  # warm-up: graph tracing, page cache
        t0 = time.perf_counter()
        for _ in range(args.epochs):
            sink.predict(ds, verbose=0)
            ds.on_epoch_end()
        return args.epochs * n / (time.perf_counter() - t0)

    direct = SegmentationDataset(cache, np.arange(n), args.batch_size, adapter.normalise, augment=cfg, shuffle=True,
                                 seed=0)
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        for i in range(len(direct)):
            direct[i]
        direct.on_epoch_end()
    rate_direct = args.epochs * n / (time.perf_counter() - t0)
    rate_b1 = run(1)
    rate_b = run(args.workers)
    rate_bp = run(args.workers, processes=True)

    print(f"(a) reference: read 4 band TIFFs + GT per patch, one process : {rate_a:8.1f} patches/s")
    print(f"    segkit cache, batches built in the calling thread         : {rate_direct:8.1f} patches/s")
    print(f"    segkit cache + PyDataset through Keras, 1 worker          : {rate_b1:8.1f} patches/s")
    print(f"(b) segkit cache + PyDataset through Keras, {args.workers} worker threads : {rate_b:8.1f} patches/s")
    print(f"(b') segkit cache + PyDataset through Keras, {args.workers} worker processes: {rate_bp:8.1f} patches/s")
    print(f"ratio (b)/(a) = {rate_b / rate_a:.1f}x (target >= 5x); best segkit path through Keras / (a) = "
          f"{max(rate_b1, rate_b, rate_bp) / rate_a:.1f}x; batch building alone / (a) = {rate_direct / rate_a:.1f}x")
    print(f"one-off prepare: {prep_s:.1f} s ({n / prep_s:.0f} patches/s); Keras backend: {keras.backend.backend()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
