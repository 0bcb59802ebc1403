"""Augmented 384x384x4 training patches per second: the 38-Cloud reference way vs segkit's cache + workers.

(a) baseline, as 38-Cloud's reference generator (Cloud-Net's generators.py) does: one process reads the four
    band TIFFs and the GT of every patch for every batch (tifffile, the reader behind skimage.io.imread for
    .TIF), stacks and scales them, then augments;
(b) segkit: the patches decoded once into the memory-mapped cache (`segkit prepare`, timed separately, a
    one-off), served by SegmentationDataset with Keras worker threads, the same augmentations.
Both are measured in the same run on the same synthetic 384-px data. Target: (b) >= 5x (a).
(b) is what `segkit train` hands to model.fit (`SegmentationDataset.keras_feed()`: on TensorFlow a tf.data pipeline
that builds batches in parallel, elsewhere the PyDataset with Keras worker threads), consumed by a ~zero-compute
Keras model's predict(), so it includes Keras' own per-batch cost. The other lines show the alternatives: Keras'
own PyDataset path (on TensorFlow a single tf.data.from_generator hop), and the generator alone.

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
    ap.add_argument("--repeats", type=int, default=3, help="measurements of (a) and (b); the best of each counts")
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

    def run_baseline() -> float:
        t0 = time.perf_counter()
        count = 0
        for epoch in range(args.epochs):
            for x, _ in baseline_batches(samples, args.batch_size, pipe, epoch):
                count += len(x)
        return count / (time.perf_counter() - t0)

    rates_a = [run_baseline() for _ in range(args.repeats)]
    rate_a = max(rates_a)

    # (b) segkit: cache (one-off) + PyDataset workers driven by Keras' own loop
    t = time.perf_counter()
    cache = prepare(adapter, samples, (384, 384), work / "cache", "bench", quiet=True)
    prep_s = time.perf_counter() - t
    inp = keras.Input((384, 384, 4))
    sink = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(inp))  # consumes batches, ~no compute

    def run(workers: int, processes: bool = False, tf_data: bool = False) -> float:
        ds = SegmentationDataset(cache, np.arange(n), args.batch_size, adapter.normalise, augment=cfg, shuffle=True,
                                 seed=0, workers=workers, use_multiprocessing=processes, max_queue_size=16)
        feed = ds.as_tf_dataset() if tf_data else ds
        sink.predict(feed, verbose=0)  # warm-up: graph tracing, page cache
        t0 = time.perf_counter()
        for _ in range(args.epochs):
            sink.predict(feed, verbose=0)
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
    on_tf = keras.backend.backend() == "tensorflow"
    # what segkit.train feeds model.fit (SegmentationDataset.keras_feed); best of --repeats, as for (a)
    rates_b = [run(args.workers, tf_data=on_tf) for _ in range(args.repeats)]
    rate_b = max(rates_b)
    rate_b1 = run(1)
    rate_bw = run(args.workers)
    rate_bp = run(args.workers, processes=True)

    feed = "tf.data parallel map over the PyDataset's batches" if on_tf else f"PyDataset, {args.workers} worker threads"
    print(f"(a) reference: read 4 band TIFFs + GT per patch, one process      : {rate_a:8.1f} patches/s")
    print(f"(b) segkit training feed: cache + {feed}: {rate_b:8.1f} patches/s")
    print(f"    segkit cache, batches built in the calling thread (no Keras)   : {rate_direct:8.1f} patches/s")
    print(f"    segkit cache + PyDataset through Keras, 1 worker thread         : {rate_b1:8.1f} patches/s")
    print(f"    segkit cache + PyDataset through Keras, {args.workers} worker threads        : {rate_bw:8.1f} patches/s")
    print(f"    segkit cache + PyDataset through Keras, {args.workers} worker processes      : {rate_bp:8.1f} patches/s")
    print(f"(a) runs: {', '.join(f'{r:.1f}' for r in rates_a)}; (b) runs: {', '.join(f'{r:.1f}' for r in rates_b)}")
    print(f"ratio (b)/(a) = {rate_b / rate_a:.1f}x, best of {args.repeats} each (target >= 5x); batch building alone / (a) = "
          f"{rate_direct / rate_a:.1f}x")
    print(f"one-off prepare: {prep_s:.1f} s ({n / prep_s:.0f} patches/s); Keras backend: {keras.backend.backend()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
