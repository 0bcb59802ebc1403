"""Synthetic Carvana: coloured car silhouettes on a light studio background, in Carvana's real file layout
(train/*.jpg, train_masks/*_mask.gif, train_masks.csv row-major, test/*.jpg, sample_submission.csv,
metadata.csv)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from segkit import rle
from segkit.data.synth.shapes import (
    check_size, hex_ids, progress, run_generator, smooth_field, to_uint8, write_csv, write_gif_mask, write_jpeg,
)
from segkit.errors import ConfigError

VIEWS = 16  # Carvana photographs each car from 16 angles, numbered 01..16


def draw_car(rng: np.random.Generator, shape: tuple[int, int], colour: np.ndarray, view: int,
             profile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One view of a car: (RGB float image, binary mask). The body is a long ellipse with a cabin on top and
    two dark wheels; the view changes its width (side views long, front views short) and mirrors it."""
    import cv2

    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    background = 205 + 12 * smooth_field(rng, shape, max(h, w) / 3)[..., None] - 25 * (yy / h)[..., None]
    image = np.repeat(background, 3, axis=2) + rng.normal(0, 3, (h, w, 3))
    angle = 2 * np.pi * (view - 1) / VIEWS
    half_len = w * (0.16 + 0.22 * abs(np.sin(angle))) * profile[0]
    half_h = h * 0.15 * profile[1]
    cx = w / 2 + rng.uniform(-0.05, 0.05) * w
    cy = h * 0.58 + rng.uniform(-0.04, 0.04) * h
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, (int(cx), int(cy)), (max(2, int(half_len)), max(2, int(half_h))), 0, 0, 360, 1, -1)
    cabin_dx = half_len * 0.25 * (1 if np.cos(angle) >= 0 else -1)
    cv2.ellipse(mask, (int(cx - cabin_dx), int(cy - half_h * 0.8)),
                (max(2, int(half_len * 0.55)), max(2, int(half_h * 0.9))), 0, 180, 360, 1, -1)
    wheels = np.zeros(shape, np.uint8)
    r = max(2, int(half_h * 0.55))
    for sx in (-0.6, 0.6):
        cv2.circle(wheels, (int(cx + sx * half_len), int(cy + half_h * 0.7)), r, 1, -1)
    mask |= wheels
    shade = 1.0 - 0.25 * np.clip((yy - (cy - half_h)) / (2 * half_h + 1), 0, 1)  # lit from above
    body = colour[None, None, :] * shade[..., None] + rng.normal(0, 4, (h, w, 3))
    body[wheels > 0] = 35 + rng.normal(0, 4, (int(wheels.sum()), 3))
    image = np.where(mask[..., None] > 0, body, image)
    # a soft floor shadow under the car (not part of the mask)
    shadow = np.zeros(shape, np.float32)
    cv2.ellipse(shadow, (int(cx), int(cy + half_h * 1.2)), (max(2, int(half_len * 1.05)), max(1, int(half_h * 0.3))),
                0, 0, 360, 1.0, -1)
    image = np.where((shadow > 0)[..., None] & (mask[..., None] == 0), image * 0.8, image)
    return image, mask


def generate(out: Path, seed: int = 0, image_size: tuple[int, int] = (64, 96), n_train_cars: int = 6,
             n_test_cars: int = 2, views: tuple[int, ...] = (1, 5, 9, 13), quiet: bool = False) -> Path:
    """Write a synthetic Carvana dataset under `out` and return its root (= `out`).

    image_size: (H, W) of every image (1280x1918 in the real data; small by default for tests).
    n_train_cars / n_test_cars: cars in train/ and test/; `views`: which of the 16 angles each car gets.
    Deterministic for a seed; written to a temporary folder and moved into place; quiet: no progress bar."""
    h, w = check_size(image_size)
    views = tuple(int(v) for v in views)
    if n_train_cars < 2 or n_test_cars < 1 or not views or any(not 1 <= v <= VIEWS for v in views):
        raise ConfigError("synth carvana: need >= 2 training cars, >= 1 test car and views within 1..16")
    params = {"generator": "segkit.synth.carvana", "version": 1, "seed": int(seed), "image_size": [h, w],
              "n_train_cars": n_train_cars, "n_test_cars": n_test_cars, "views": list(views)}

    def fill(root: Path) -> None:
        rng = np.random.default_rng(seed)
        cars = hex_ids(rng, n_train_cars + n_test_cars, 12)
        rng.shuffle(cars)
        train_cars, test_cars = sorted(cars[:n_train_cars]), sorted(cars[n_train_cars:])
        for sub in ("train", "train_masks", "test"):
            (root / sub).mkdir()
        mask_rows, test_rows, meta_rows = [], [], []
        for split, split_cars in (("train", train_cars), ("test", test_cars)):
            for car in progress(split_cars, f"synth carvana {split}", quiet, unit="car"):
                hue = rng.uniform(0, 1)
                colour = 60 + 150 * np.abs(np.array([np.sin(2 * np.pi * (hue + k / 3)) for k in range(3)]))
                colour *= rng.uniform(0.45, 0.8)  # clearly darker than the studio
                profile = rng.uniform(0.85, 1.15, size=2)
                meta_rows.append((car, str(rng.integers(2007, 2017)), "Synth", f"Model{rng.integers(1, 9)}", "", ""))
                for v in views:
                    name = f"{car}_{v:02d}"
                    image, mask = draw_car(rng, (h, w), colour, v, profile)
                    write_jpeg(root / split / f"{name}.jpg", to_uint8(image))
                    if split == "train":
                        write_gif_mask(root / "train_masks" / f"{name}_mask.gif", mask)
                        mask_rows.append((f"{name}.jpg", rle.encode(mask, order="C")))
                    else:
                        test_rows.append((f"{name}.jpg", "1 1"))
        write_csv(root / "train_masks.csv", ("img", "rle_mask"), mask_rows)
        write_csv(root / "sample_submission.csv", ("img", "rle_mask"), test_rows)
        write_csv(root / "metadata.csv", ("id", "year", "make", "model", "trim1", "trim2"), sorted(meta_rows))

    return run_generator(Path(out), params, fill)
