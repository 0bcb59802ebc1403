"""Time tuning the post-processing chain on Understanding Clouds-sized OOF (default 5,546 images × 4 labels at
350×525): random but structured float16 probabilities (smooth blobs, ~40 % empty labels), Dice metric, the
default grids plus min areas. Prints wall and CPU seconds per class and in all (CPU seconds, summed over
the two tuning threads, say what an idle 2-core machine needs when divided by ~2). Usage:
    python bench/tune_speed.py [N] [H] [W] [CLASSES]
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def make_class(path: Path, n: int, h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Float16 probabilities (memory-mapped on disk) and uint8 truth with smooth blobs."""
    rng = np.random.default_rng(seed)
    probs = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, h, w))
    truth = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        field = cv2.resize(rng.normal(size=(7, 10)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        empty = rng.random() < 0.4
        truth[i] = 0 if empty else field > 0.8
        noise = cv2.resize(rng.normal(size=(35, 52)).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        logit = (field - 0.8) * (0.5 if empty else 3.0) + 0.7 * noise - (1.5 if empty else 0.0)
        probs[i] = 1 / (1 + np.exp(-logit))
    probs.flush()
    return probs, truth


def main() -> None:
    n, h, w, classes = (int(a) for a in (sys.argv[1:] + ["5546", "350", "525", "4"][len(sys.argv[1:]):]))
    from segkit.config import load_config
    from segkit.data.competitions.clouds import CloudsAdapter
    from segkit.postprocess.tuning import OofClass, tune_class

    cfg = load_config(None, ["postprocess.min_area_grid=[0,5000,10000,15000,20000]"])
    adapter = CloudsAdapter.__new__(CloudsAdapter)  # only its metric is used
    total = cpu = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for c in range(classes):
            probs, truth = make_class(Path(tmp) / f"oof_{c}.npy", n, h, w, c)
            probs = np.asarray(probs, dtype=np.float32)  # as segkit.oof.load_oof_class gives it (float32)
            start, start_cpu = time.perf_counter(), time.process_time()
            row, steps = tune_class(adapter, truth, OofClass(probs, probs, None), cfg, 1.0, h * w)
            took, took_cpu = time.perf_counter() - start, time.process_time() - start_cpu
            total, cpu = total + took, cpu + took_cpu
            print(f"class {c}: {took:.1f} s wall, {took_cpu:.1f} s CPU; " + " → ".join(f"{s:.4f}" for s, _ in steps) + f"; {row}", flush=True)
            del probs, truth
    print(f"tuned {n} images × {classes} classes at {h}×{w} in {total:.1f} s wall, {cpu:.1f} s CPU (all threads; "
          f"the machine's load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
