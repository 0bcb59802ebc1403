"""Synthetic Severstal Steel Defect Detection: streaked grey steel with four kinds of defect (dark pits, short bright
vertical marks, long bright scratches, large dark patches; ClassId 1-4, never overlapping), about half the images
defect-free, in the real layout: train_images/, train.csv (the current download's long form
`ImageId,ClassId,EncodedPixels` with one row per image and present class, or the competition-period form
`ImageId_ClassId,EncodedPixels` with four rows per image: `train_form`), test_images/ and the competition-period
sample_submission.csv (four rows per test image, `1 1`). RLEs are column-major at the image size."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from segkit import rle
from segkit.data.competitions.severstal import CLASSES, LONG_HEADER, PERIOD_HEADER
from segkit.data.synth.shapes import (
    check_size, hex_ids, progress, run_generator, smooth_field, to_uint8, write_csv, write_jpeg,
)
from segkit.errors import ConfigError

FORMS = ("long", "period")
CLASS_P = (0.15, 0.05, 0.65, 0.15)  # class 3 is by far the most common in the real data, class 2 the rarest


def _defect(class_index: int, rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
    """(mask, grey tone) of one defect of class `class_index` (0-based) somewhere in an image of `shape`."""
    import cv2

    h, w = shape
    mask = np.zeros(shape, np.uint8)
    thick = max(2, h // 32)
    if class_index == 0:  # pits: a cluster of small dark dots
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.1, 0.9) * w
        for _ in range(int(rng.integers(4, 9))):
            y, x = cy + rng.normal(0, h / 8), cx + rng.normal(0, h / 4)
            cv2.circle(mask, (int(x), int(y)), max(1, thick // 2 + 1), 1, -1)
        return mask, 35.0
    if class_index == 1:  # a short bright vertical mark
        x = int(rng.uniform(0.05, 0.95) * w)
        y0 = int(rng.uniform(0, 0.4) * h)
        cv2.line(mask, (x, y0), (x, y0 + int(rng.uniform(0.4, 0.6) * h)), 1, thick + 1)
        return mask, 235.0
    if class_index == 2:  # a long bright scratch, at a shallow angle
        x0 = int(rng.uniform(0, 0.5) * w)
        length = rng.uniform(0.3, 0.5) * w
        y0 = rng.uniform(0.2, 0.8) * h
        y1 = np.clip(y0 + rng.uniform(-0.3, 0.3) * h, 0, h - 1)
        cv2.line(mask, (x0, int(y0)), (int(x0 + length), int(y1)), 1, thick)
        return mask, 210.0
    # large dark patch
    centre = (int(rng.uniform(0.2, 0.8) * w), int(rng.uniform(0.3, 0.7) * h))
    axes = (int(rng.uniform(0.08, 0.18) * w), int(rng.uniform(0.25, 0.45) * h))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return mask, 15.0


def draw_scene(rng: np.random.Generator, shape: tuple[int, int], defect_free: float) -> tuple[np.ndarray, np.ndarray]:
    """(RGB float image, masks (H, W, 4)): steel with 0 (share `defect_free`), 1 or 2 defect classes, disjoint."""
    h, w = shape
    xx = np.arange(w)[None, :]
    steel = 115 + 10 * smooth_field(rng, shape, max(h, w) / 6) + 5 * np.sin(xx * rng.uniform(0.3, 0.8))
    grey = steel + rng.normal(0, 3, shape)
    masks = np.zeros((h, w, len(CLASSES)), np.uint8)
    if rng.random() >= defect_free:
        n_classes = 1 if rng.random() < 0.8 else 2
        taken = np.zeros(shape, bool)
        for c in rng.choice(len(CLASSES), size=n_classes, replace=False, p=CLASS_P):
            for _ in range(20):
                mask, tone = _defect(int(c), rng, shape)
                if mask.sum() >= 4 and not (mask.astype(bool) & taken).any():
                    break
            else:
                continue
            taken |= mask.astype(bool)
            masks[..., c] = mask
            grey = np.where(mask > 0, tone + rng.normal(0, 4, shape), grey)
    return np.repeat(grey[..., None], 3, axis=2), masks


def generate(out: Path, seed: int = 0, image_size: int | tuple[int, int] = (64, 400), n_train: int = 16,
             n_test: int = 6, empty_fraction: float = 0.45, train_form: str = "long", quiet: bool = False) -> Path:
    """Write a synthetic Severstal dataset under `out` and return its root (= `out`).

    image_size: (H, W) of every image (256x1600 in the real data; small by default for tests, same 1:6.25
    shape); train.csv refers to it. empty_fraction: share of images without any defect (about 47 % in the real
    data; `segkit synth severstal --empty-fraction`). train_form: "long" (`ImageId,ClassId,EncodedPixels`, the
    current download) or "period" (`ImageId_ClassId,EncodedPixels`, the competition's own); the images and masks
    of a seed are the same in both. Deterministic for a seed; written to a temporary folder and moved into place;
    quiet: no progress bar."""
    h, w = check_size(image_size)
    if n_train < 2 or n_test < 1:
        raise ConfigError("synth severstal: need at least 2 training and 1 test image")
    if not 0 <= empty_fraction < 1:
        raise ConfigError(f"synth severstal: empty_fraction must be a share in [0, 1), got {empty_fraction!r}")
    if train_form not in FORMS:
        raise ConfigError(f"synth severstal: train_form must be one of {', '.join(FORMS)}, got {train_form!r}")
    params = {"generator": "segkit.synth.severstal", "version": 1, "seed": int(seed), "image_size": [h, w],
              "n_train": n_train, "n_test": n_test, "empty_fraction": float(empty_fraction), "train_form": train_form}

    def fill(root: Path) -> None:
        rng = np.random.default_rng(seed)
        ids = [f"{i}.jpg" for i in hex_ids(rng, n_train + n_test, 9)]
        rng.shuffle(ids)
        train_ids, test_ids = sorted(ids[:n_train]), sorted(ids[n_train:])
        (root / "train_images").mkdir()
        (root / "test_images").mkdir()
        rows = []
        for image_id in progress(train_ids, "synth severstal train", quiet):
            image, masks = draw_scene(rng, (h, w), empty_fraction)
            write_jpeg(root / "train_images" / image_id, to_uint8(image))
            for c, class_id in enumerate(CLASSES):
                text = rle.encode(masks[..., c], order="F")
                if train_form == "period":
                    rows.append((f"{image_id}_{class_id}", text))
                elif text:
                    rows.append((image_id, class_id, text))
        for image_id in progress(test_ids, "synth severstal test", quiet):
            image, _ = draw_scene(rng, (h, w), empty_fraction)
            write_jpeg(root / "test_images" / image_id, to_uint8(image))
        write_csv(root / "train.csv", PERIOD_HEADER if train_form == "period" else LONG_HEADER, rows)
        write_csv(root / "sample_submission.csv", PERIOD_HEADER,
                  [(f"{i}_{c}", "1 1") for i in test_ids for c in CLASSES])

    return run_generator(Path(out), params, fill)
