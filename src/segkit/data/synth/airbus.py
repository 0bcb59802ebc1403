"""Synthetic Airbus Ship Detection: bright ships (rotated rectangles) on a dark sea, many images ship-free, in
the real layout (train_v2/, train_ship_segmentations_v2.csv with one column-major row per ship and one blank
row per ship-free image, test_v2/, sample_submission_v2.csv). Optionally a share of the ships is small and faint
(`faint`), the hard cases on which post-processing and empty-mask gating matter."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from segkit import rle
from segkit.data.synth.shapes import (
    check_size, hex_ids, progress, run_generator, smooth_field, to_uint8, write_csv, write_jpeg,
)
from segkit.errors import ConfigError


# a faint ship: this share of the usual length, and its tone this far above the local sea (bright ones: ~150-200)
FAINT_LENGTH = (0.04, 0.09)
FAINT_TONE = (18.0, 40.0)


def draw_scene(rng: np.random.Generator, shape: tuple[int, int], max_ships: int,
               ship_free: float, faint: float = 0.0) -> tuple[np.ndarray, list[np.ndarray]]:
    """(RGB float image, one binary mask per ship). Ships never touch, not even diagonally, so connected
    components of their union give back exactly the ships. faint: share of the ships drawn small (4-9 % of the
    image side instead of 10-25 %) and faint (18-40 grey levels above the sea instead of ~150-200); with 0 the
    random stream is the one of earlier versions (same data for a seed)."""
    import cv2

    h, w = shape
    sea = np.array([25, 45, 70], np.float32) + 8 * smooth_field(rng, shape, max(h, w) / 5)[..., None]
    image = sea + rng.normal(0, 4, (h, w, 3))
    ships: list[np.ndarray] = []
    if rng.random() >= ship_free:
        occupied = np.zeros(shape, bool)
        for _ in range(int(rng.integers(1, max_ships + 1))):
            is_faint = faint > 0 and rng.random() < faint
            for _ in range(20):
                length = rng.uniform(*(FAINT_LENGTH if is_faint else (0.1, 0.25))) * min(h, w)
                width = max(2.5, length * rng.uniform(0.2, 0.35))
                centre = (rng.uniform(length / 2, w - length / 2), rng.uniform(length / 2, h - length / 2))
                box = cv2.boxPoints((centre, (length, width), rng.uniform(0, 180)))
                ship = np.zeros(shape, np.uint8)
                cv2.fillPoly(ship, [np.round(box).astype(np.int32)], 1)
                if ship.sum() >= 6 and not (ndimage.binary_dilation(ship, iterations=2) & occupied).any():
                    break
            else:
                continue
            occupied |= ship.astype(bool)
            ships.append(ship)
            if is_faint:  # a little brighter than the sea around it
                tone = sea[ship > 0].mean(axis=0) + rng.uniform(*FAINT_TONE)
            else:
                tone = rng.uniform(190, 240)
            image = np.where(ship[..., None] > 0, tone + rng.normal(0, 6, (h, w, 3)), image)
    return image, ships


def generate(out: Path, seed: int = 0, image_size: int | tuple[int, int] = 64, n_train: int = 16, n_test: int = 6,
             max_ships: int = 4, ship_free: float = 0.35, faint: float = 0.0, quiet: bool = False) -> Path:
    """Write a synthetic Airbus dataset under `out` and return its root (= `out`).

    image_size: side (or (H, W)) of every image (768 in the real data; small by default for tests); the CSV
    refers to it. max_ships: ships per image at most; ship_free: share of images without a ship (drawn per image,
    so a seeded run's share is near it; `segkit synth airbus --empty-fraction`); faint: share of the ships drawn
    small and faint (`--faint`). Deterministic for a seed; written to a temporary folder and moved into place; quiet: no progress bar."""
    h, w = check_size(image_size)
    if n_train < 2 or n_test < 1 or max_ships < 1 or not 0 <= ship_free < 1:
        raise ConfigError("synth airbus: need >= 2 training and >= 1 test image, max_ships >= 1, 0 <= ship_free < 1")
    if not 0 <= faint <= 1:
        raise ConfigError(f"synth airbus: faint must be a share in [0, 1], got {faint!r}")
    params = {"generator": "segkit.synth.airbus", "version": 1, "seed": int(seed), "image_size": [h, w],
              "n_train": n_train, "n_test": n_test, "max_ships": max_ships, "ship_free": ship_free}
    if faint:  # only when set, so datasets written before the option are still reused
        params["faint"] = float(faint)

    def fill(root: Path) -> None:
        rng = np.random.default_rng(seed)
        ids = [f"{i}.jpg" for i in hex_ids(rng, n_train + n_test, 9)]
        rng.shuffle(ids)
        train_ids, test_ids = sorted(ids[:n_train]), sorted(ids[n_train:])
        (root / "train_v2").mkdir()
        (root / "test_v2").mkdir()
        rows = []
        for image_id in progress(train_ids, "synth airbus train", quiet):
            image, ships = draw_scene(rng, (h, w), max_ships, ship_free, faint)
            write_jpeg(root / "train_v2" / image_id, to_uint8(image))
            rows.extend((image_id, rle.encode(s, order="F")) for s in ships)
            if not ships:
                rows.append((image_id, ""))
        for image_id in progress(test_ids, "synth airbus test", quiet):
            image, _ = draw_scene(rng, (h, w), max_ships, ship_free, faint)
            write_jpeg(root / "test_v2" / image_id, to_uint8(image))
        write_csv(root / "train_ship_segmentations_v2.csv", ("ImageId", "EncodedPixels"), rows)
        write_csv(root / "sample_submission_v2.csv", ("ImageId", "EncodedPixels"), [(i, "1 2") for i in test_ids])

    return run_generator(Path(out), params, fill)
