"""RLE speed against the most-copied public Kaggle kernel code, and the submission writer's memory.

Baselines (measured in the same run, outputs checked identical):
  encoder: pad the flattened mask with zeros, np.where on the differences, ' '.join(str(x) for x in runs)
           (column-major kernels flatten `img.T`);
  decoder: split, np.asarray, then a Python loop `img[lo:hi] = 1` over the runs.
Masks: a car-like 1280x1918 mask (row-major, Carvana), a cloud-like 350x525 mask (column-major, Clouds),
and a noisy prediction: the car mask with 2.5 % of its pixels flipped (> 50,000 runs); then SIIM-ACR's relative
scheme on a pneumothorax-like 1024x1024 mask and a noisy one, against the kernel encoder plus a conversion of its
starts and the official rle2mask (a loop over the runs, accumulating the position).
Targets: encode >= 2x faster; decode at least as fast on the car-like mask, >= 1.5x on the noisy one.

Memory: peak growth (tracemalloc, every Python and numpy allocation) while writing 5,000 Understanding Clouds
test images (20,000 rows) with `write_rows`, in sample order and in shuffled order (the on-disk spool path),
against the common kernel way of collecting every row in a list and writing a pandas DataFrame. Target < 100 MB.

    .venv/bin/python bench/rle.py [--images 5000] [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import timeit
import tracemalloc
from pathlib import Path

import numpy as np

from segkit import rle
from segkit.submission import write_rows

LABELS = ("Fish", "Flower", "Gravel", "Sugar")


# --- the public kernels' code ------------------------------------------------------------------

def kaggle_encode(img: np.ndarray, order: str = "C") -> str:
    """The most-copied Kaggle encoder (column-major versions flatten the transpose)."""
    pixels = (img.T if order == "F" else img).flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def kaggle_encode_relative(img: np.ndarray) -> str:
    """The kernel encoder's runs (column-major) with each start made relative to the previous run's end."""
    runs = [int(x) for x in kaggle_encode(img, "F").split()]
    out, end = [], 0
    for start, length in zip(runs[0::2], runs[1::2]):
        out += [start - 1 - end, length]
        end = start - 1 + length
    return " ".join(map(str, out)) if out else "-1"


def official_rle2mask(rle_text: str, width: int, height: int) -> np.ndarray:
    """SIIM-ACR's official decoder (mask_functions.py), foreground 1 instead of 255, called transposed."""
    mask = np.zeros(width * height, np.uint8)
    array = np.asarray([int(x) for x in rle_text.split()])
    current = 0
    for start, length in zip(array[0::2], array[1::2]):
        current += start
        mask[current:current + length] = 1
        current += length
    return mask.reshape(width, height).T


def kaggle_decode(mask_rle: str, shape: tuple[int, int], order: str = "C") -> np.ndarray:
    """The most-copied Kaggle decoder: a Python loop over the runs."""
    s = mask_rle.split()
    starts, lengths = [np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2])]
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends):
        img[lo:hi] = 1
    return img.reshape(shape, order=order)


# --- masks ---------------------------------------------------------------------------------------

def car_mask(h: int = 1280, w: int = 1918) -> np.ndarray:
    """A car silhouette: body ellipse, cabin, wheels."""
    import cv2

    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (w // 2, int(h * 0.6)), (int(w * 0.38), int(h * 0.16)), 0, 0, 360, 1, -1)
    cv2.ellipse(m, (int(w * 0.46), int(h * 0.47)), (int(w * 0.2), int(h * 0.14)), 0, 180, 360, 1, -1)
    for x in (0.27, 0.73):
        cv2.circle(m, (int(w * x), int(h * 0.72)), int(h * 0.08), 1, -1)
    return m


def cloud_mask(rng: np.random.Generator, h: int = 350, w: int = 525) -> np.ndarray:
    """A few large smooth cloud regions, as Understanding Clouds labels are."""
    import cv2

    grid = rng.standard_normal((6, 9)).astype(np.float32)
    field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return (field > 0.6).astype(np.uint8)


def noisy(mask: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    return mask ^ (rng.random(mask.shape) < rate).astype(np.uint8)


def best_ms(fn, repeat: int) -> float:
    number = 3
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e3


def bench_speed(repeat: int) -> None:
    rng = np.random.default_rng(0)
    cases = [
        ("car-like 1280x1918, row-major", car_mask(), "C"),
        ("cloud-like 350x525, column-major", cloud_mask(rng), "F"),
        ("noisy car prediction 1280x1918, row-major", noisy(car_mask(), 0.025, rng), "C"),
    ]
    print(f"{'mask':44s} {'runs':>8s} | {'encode: ours':>12s} {'kaggle':>8s} {'ratio':>6s} | "
          f"{'decode: ours':>12s} {'loop':>8s} {'ratio':>6s}")
    for name, mask, order in cases:
        text = rle.encode(mask, order)
        assert text == kaggle_encode(mask, order), name
        assert np.array_equal(rle.decode(text, mask.shape, order), kaggle_decode(text, mask.shape, order)), name
        assert np.array_equal(rle.decode(text, mask.shape, order), mask), name
        runs = len(text.split()) // 2
        enc_ours = best_ms(lambda: rle.encode(mask, order), repeat)
        enc_base = best_ms(lambda: kaggle_encode(mask, order), repeat)
        dec_ours = best_ms(lambda: rle.decode(text, mask.shape, order), repeat)
        dec_base = best_ms(lambda: kaggle_decode(text, mask.shape, order), repeat)
        print(f"{name:44s} {runs:8d} | {enc_ours:9.2f} ms {enc_base:5.2f} ms {enc_base / enc_ours:5.2f}x | "
              f"{dec_ours:9.2f} ms {dec_base:5.2f} ms {dec_base / dec_ours:5.2f}x")
    import cv2

    ptx = np.zeros((1024, 1024), np.uint8)
    cv2.ellipse(ptx, (780, 420), (90, 260), 10, 0, 360, 1, -1)
    cv2.ellipse(ptx, (730, 440), (70, 230), 10, 0, 360, 0, -1)  # the crescent at the lung's edge
    for name, mask in (("pneumothorax-like 1024x1024, relative", ptx),
                       ("noisy 1024x1024, relative", noisy(ptx, 0.025, rng))):
        text = rle.encode(mask, "F", scheme="relative")
        assert text == kaggle_encode_relative(mask), name
        assert np.array_equal(rle.decode(text, mask.shape, "F", scheme="relative"), mask), name
        assert np.array_equal(official_rle2mask(text, 1024, 1024), mask), name
        runs = len(text.split()) // 2
        enc_ours = best_ms(lambda: rle.encode(mask, "F", scheme="relative"), repeat)
        enc_base = best_ms(lambda: kaggle_encode_relative(mask), repeat)
        dec_ours = best_ms(lambda: rle.decode(text, mask.shape, "F", scheme="relative"), repeat)
        dec_base = best_ms(lambda: official_rle2mask(text, 1024, 1024), repeat)
        print(f"{name:44s} {runs:8d} | {enc_ours:9.2f} ms {enc_base:5.2f} ms {enc_base / enc_ours:5.2f}x | "
              f"{dec_ours:9.2f} ms {dec_base:5.2f} ms {dec_base / dec_ours:5.2f}x")


# --- memory ----------------------------------------------------------------------------------------

def clouds_rows(ids: list[str], pool: list[np.ndarray]):
    """(Image_Label, rle) rows of every image, each mask encoded on the fly as a predictor would."""
    for i, image_id in enumerate(ids):
        for c, label in enumerate(LABELS):
            yield f"{image_id}_{label}", rle.encode(pool[(i * 4 + c) % len(pool)], "F")


def peak_mb(fn) -> tuple[float, float]:
    tracemalloc.start()
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return (peak - before) / 2**20, elapsed


def bench_memory(n_images: int) -> None:
    import pandas as pd

    rng = np.random.default_rng(1)
    pool = [cloud_mask(rng) for _ in range(32)]
    ids = [f"{i:07x}.jpg" for i in range(n_images)]
    sample_ids = [f"{i}_{lab}" for i in ids for lab in LABELS]
    shuffled = list(ids)
    rng.shuffle(shuffled)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "submission.csv"

        def naive() -> None:
            rows = list(clouds_rows(ids, pool))
            pd.DataFrame(rows, columns=["Image_Label", "EncodedPixels"]).to_csv(out, index=False)

        results = [
            ("write_rows, rows in sample order", lambda: write_rows(out, ("Image_Label", "EncodedPixels"),
                                                                     clouds_rows(ids, pool), sample_ids)),
            ("write_rows, rows shuffled (spooled)", lambda: write_rows(out, ("Image_Label", "EncodedPixels"),
                                                                        clouds_rows(shuffled, pool), sample_ids)),
            ("baseline: list of rows + pandas to_csv", naive),
        ]
        print(f"\nwriting {n_images} Understanding Clouds images ({4 * n_images} rows):")
        for name, fn in results:
            mb, seconds = peak_mb(fn)
            size = out.stat().st_size / 2**20
            print(f"  {name:40s} peak memory growth {mb:8.1f} MB   {seconds:6.1f} s   file {size:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"segkit RLE benchmark (numpy {np.__version__}, {os.cpu_count()} CPUs)\n")
    bench_speed(args.repeat)
    bench_memory(args.images)


if __name__ == "__main__":
    main()
