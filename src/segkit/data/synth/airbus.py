"""Synthetic Airbus Ship Detection: bright ships (rotated rectangles) on a dark sea, many images ship-free, in
the real layout (train_v2/, train_ship_segmentations_v2.csv with one column-major row per ship and one blank
row per ship-free image, test_v2/, sample_submission_v2.csv). Optionally a share of the ships is small and faint
(`faint`), and a share of the images carries the sea clutter of the real satellite tiles (`clutter`: whitecaps,
cloud veils, a coast with bright buildings and piers) — the hard cases on which post-processing and empty-mask
gating matter: a segmentation model answers such clutter with weak false ships."""
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
CLUTTER_KINDS = ("whitecaps", "cloud", "coast")


def add_clutter(rng: np.random.Generator, image: np.ndarray, occupied: np.ndarray) -> np.ndarray:
    """`image` with one kind of clutter drawn over it, never within 3 pixels of a ship (`occupied`: the union of
    the ships; a cloud veil may thin out over one, as real clouds do, but leaves it visible): whitecaps (streaks
    of foam along the wind, the size of small ships), a cloud veil (a smooth translucent white field), or a coast
    (land over one side, with bright ship-sized rectangles — buildings and piers). A coast that would cover a
    ship is drawn as whitecaps instead."""
    keep_out = ndimage.binary_dilation(occupied, iterations=3)
    kind = CLUTTER_KINDS[int(rng.integers(len(CLUTTER_KINDS)))]
    coast = _coast(rng, image, keep_out) if kind == "coast" else None
    if coast is not None:
        image, alpha, tone = coast
    elif kind == "cloud":
        alpha, tone = _cloud_veil(rng, image.shape[:2])
        alpha[keep_out] = np.minimum(alpha[keep_out], 0.5)
    else:
        alpha, tone = _whitecaps(rng, image.shape[:2])
    if kind != "cloud":
        alpha[keep_out] = 0
    return image * (1 - alpha[..., None]) + tone * alpha[..., None]


def _coast(rng: np.random.Generator, image: np.ndarray,
           keep_out: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(image with land over one side, alpha of its buildings and piers, their tone), or None when the land
    would reach `keep_out`."""
    import cv2

    h, w = keep_out.shape
    side = min(h, w)
    direction = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    along = ((xx - w / 2) * np.cos(direction) + (yy - h / 2) * np.sin(direction)) / side
    along += 0.08 * smooth_field(rng, (h, w), side / 3)
    land = along > rng.uniform(0.15, 0.4)
    if (land & keep_out).any() or not land.any():
        return None
    ground = np.array([95, 90, 72], np.float32) + 18 * smooth_field(rng, (h, w), side / 12)[..., None]
    image = np.where(land[..., None], ground + rng.normal(0, 5, (h, w, 3)), image)
    buildings = np.zeros((h, w), np.uint8)
    land_y, land_x = np.nonzero(land)
    for _ in range(int(rng.integers(3, 12))):
        length = rng.uniform(0.03, 0.15) * side
        size = (length, max(2.0, length * rng.uniform(0.2, 0.6)))
        at = int(rng.integers(len(land_y)))
        box = cv2.boxPoints(((float(land_x[at]), float(land_y[at])), size, rng.uniform(0, 180)))
        cv2.fillPoly(buildings, [np.round(box).astype(np.int32)], 1)
    # piers reach a little out to sea: buildings may cross the shore line
    near_land = ndimage.binary_dilation(land, iterations=max(2, side // 40))
    return image, ((buildings > 0) & near_land).astype(np.float32), rng.uniform(150, 225)


def _whitecaps(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
    """(alpha, tone) of foam streaks along one wind direction, the size of small ships."""
    import cv2

    h, w = shape
    side = min(h, w)
    layer = np.zeros((h, w), np.float32)
    wind = rng.uniform(0, 180)
    for _ in range(int(rng.integers(6, 30))):
        length = rng.uniform(0.015, 0.07) * side
        axes = (max(1, int(round(length / 2))), max(1, int(round(length * rng.uniform(0.12, 0.4) / 2))))
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.ellipse(layer, centre, axes, wind + rng.normal(0, 12), 0, 360, float(rng.uniform(0.35, 1.0)), -1)
    return cv2.GaussianBlur(layer, (0, 0), max(0.6, side / 300)), rng.uniform(110, 220)


def _cloud_veil(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
    """(alpha, tone) of a smooth translucent white field."""
    field = smooth_field(rng, shape, min(shape) / rng.uniform(1.5, 4))
    alpha = np.clip((field - rng.uniform(-0.5, 1.0)) * rng.uniform(0.3, 0.8), 0, 0.85).astype(np.float32)
    return alpha, rng.uniform(180, 240)


def draw_scene(rng: np.random.Generator, shape: tuple[int, int], max_ships: int,
               ship_free: float, faint: float = 0.0, clutter: float = 0.0) -> tuple[np.ndarray, list[np.ndarray]]:
    """(RGB float image, one binary mask per ship). Ships never touch, not even diagonally, so connected
    components of their union give back exactly the ships. faint: share of the ships drawn small (4-9 % of the
    image side instead of 10-25 %) and faint (18-40 grey levels above the sea instead of ~150-200); clutter: share
    of the images (with or without ships) that get `add_clutter`. With both 0 the random stream is the one of
    earlier versions (same data for a seed)."""
    import cv2

    h, w = shape
    sea = np.array([25, 45, 70], np.float32) + 8 * smooth_field(rng, shape, max(h, w) / 5)[..., None]
    image = sea + rng.normal(0, 4, (h, w, 3))
    ships: list[np.ndarray] = []
    occupied = np.zeros(shape, bool)
    if rng.random() >= ship_free:
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
    if clutter > 0 and rng.random() < clutter:
        image = add_clutter(rng, image, occupied)
    return image, ships


def generate(out: Path, seed: int = 0, image_size: int | tuple[int, int] = 64, n_train: int = 16, n_test: int = 6,
             max_ships: int = 4, ship_free: float = 0.35, faint: float = 0.0, clutter: float = 0.0,
             quiet: bool = False) -> Path:
    """Write a synthetic Airbus dataset under `out` and return its root (= `out`).

    image_size: side (or (H, W)) of every image (768 in the real data; small by default for tests); the CSV
    refers to it. max_ships: ships per image at most; ship_free: share of images without a ship (drawn per image,
    so a seeded run's share is near it; `segkit synth airbus --empty-fraction`); faint: share of the ships drawn
    small and faint (`--faint`); clutter: share of the images with whitecaps, a cloud veil or a coast
    (`--clutter`). Deterministic for a seed; written to a temporary folder and moved into place; quiet: no progress bar."""
    h, w = check_size(image_size)
    if n_train < 2 or n_test < 1 or max_ships < 1 or not 0 <= ship_free < 1:
        raise ConfigError("synth airbus: need >= 2 training and >= 1 test image, max_ships >= 1, 0 <= ship_free < 1")
    if not 0 <= faint <= 1:
        raise ConfigError(f"synth airbus: faint must be a share in [0, 1], got {faint!r}")
    if not 0 <= clutter <= 1:
        raise ConfigError(f"synth airbus: clutter must be a share in [0, 1], got {clutter!r}")
    params = {"generator": "segkit.synth.airbus", "version": 1, "seed": int(seed), "image_size": [h, w],
              "n_train": n_train, "n_test": n_test, "max_ships": max_ships, "ship_free": ship_free}
    if faint:  # only when set, so datasets written before the option are still reused
        params["faint"] = float(faint)
    if clutter:
        params["clutter"] = float(clutter)

    def fill(root: Path) -> None:
        rng = np.random.default_rng(seed)
        ids = [f"{i}.jpg" for i in hex_ids(rng, n_train + n_test, 9)]
        rng.shuffle(ids)
        train_ids, test_ids = sorted(ids[:n_train]), sorted(ids[n_train:])
        (root / "train_v2").mkdir()
        (root / "test_v2").mkdir()
        rows = []
        for image_id in progress(train_ids, "synth airbus train", quiet):
            image, ships = draw_scene(rng, (h, w), max_ships, ship_free, faint, clutter)
            write_jpeg(root / "train_v2" / image_id, to_uint8(image))
            rows.extend((image_id, rle.encode(s, order="F")) for s in ships)
            if not ships:
                rows.append((image_id, ""))
        for image_id in progress(test_ids, "synth airbus test", quiet):
            image, _ = draw_scene(rng, (h, w), max_ships, ship_free, faint, clutter)
            write_jpeg(root / "test_v2" / image_id, to_uint8(image))
        write_csv(root / "train_ship_segmentations_v2.csv", ("ImageId", "EncodedPixels"), rows)
        write_csv(root / "sample_submission_v2.csv", ("ImageId", "EncodedPixels"), [(i, "1 2") for i in test_ids])

    return run_generator(Path(out), params, fill)
