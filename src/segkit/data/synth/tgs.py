"""Synthetic TGS Salt Identification: layered seismic sections (horizontal reflectors bent by a smooth field) with
a salt body (a smooth blob, reflector-free and brighter) in most images, about 40 % salt-free, in the real layout:
train/images/<id>.png (8-bit RGB, three equal channels), train/masks/<id>.png (16-bit {0, 65535}; empty masks
8-bit zeros, as in the real files), train.csv (`id,rle_mask`, column-major), depths.csv (`id,z` for train and test),
test/images/ and sample_submission.csv (`id,rle_mask`, `1 1`). Ids are 10 hex digits."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from segkit import rle
from segkit.data.synth.shapes import check_size, hex_ids, progress, run_generator, smooth_field, to_uint8, write_csv
from segkit.errors import ConfigError


def draw_scene(rng: np.random.Generator, shape: tuple[int, int], empty_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(grey float image, mask (H, W) uint8): reflectors everywhere, and with chance 1 - empty_fraction a salt
    body that replaces them with a brighter, flat texture."""
    h, w = shape
    yy = np.arange(h)[:, None].astype(np.float32)
    bend = 0.06 * h * smooth_field(rng, shape, max(h, w) / 1.5)
    period = rng.uniform(0.08, 0.16) * h
    image = 110 + 45 * np.sin(2 * np.pi * (yy + bend) / period) + rng.normal(0, 6, shape)
    mask = np.zeros(shape, np.uint8)
    if rng.random() >= empty_fraction:
        field = smooth_field(rng, shape, max(h, w) / 2.5)
        # a body that grows from below in most sections (salt domes), anywhere in the rest
        gradient = (yy / h - rng.uniform(0.3, 0.8)) * (4.0 if rng.random() < 0.7 else 0.0)
        mask = ((field + gradient) > rng.uniform(0.3, 1.0)).astype(np.uint8)
        if mask.sum() < 0.01 * h * w:
            mask[:] = 0
        image = np.where(mask > 0, 175 + rng.normal(0, 8, shape), image)
    return image, mask


def write_png_rgb(path: Path, grey: np.ndarray) -> None:
    """A grey uint8 image as an 8-bit RGB PNG with three equal channels (how TGS stores its images)."""
    import cv2

    if not cv2.imwrite(str(path), np.repeat(grey[..., None], 3, axis=2)):
        raise OSError(f"{path}: cannot write PNG")


def write_mask_png(path: Path, mask: np.ndarray) -> None:
    """A mask as TGS stores it: 16-bit PNG with {0, 65535}, or 8-bit zeros when empty."""
    import cv2

    data = (mask > 0).astype(np.uint16) * 65535 if mask.any() else np.zeros(mask.shape, np.uint8)
    if not cv2.imwrite(str(path), data):
        raise OSError(f"{path}: cannot write PNG")


def generate(out: Path, seed: int = 0, image_size: int | tuple[int, int] = 101, n_train: int = 16, n_test: int = 6,
             empty_fraction: float = 0.4, quiet: bool = False) -> Path:
    """Write a synthetic TGS Salt dataset under `out` and return its root (= `out`).

    image_size: side (or (H, W)) of every image (101 in the real data, also the default); train.csv refers to it.
    empty_fraction: share of salt-free images (about 40 % in the real data; `--empty-fraction`). Deterministic
    for a seed; written to a temporary folder and moved into place; quiet: no progress bar."""
    h, w = check_size(image_size)
    if n_train < 2 or n_test < 1:
        raise ConfigError("synth tgs: need at least 2 training and 1 test image")
    if not 0 <= empty_fraction < 1:
        raise ConfigError(f"synth tgs: empty_fraction must be a share in [0, 1), got {empty_fraction!r}")
    params = {"generator": "segkit.synth.tgs", "version": 1, "seed": int(seed), "image_size": [h, w],
              "n_train": n_train, "n_test": n_test, "empty_fraction": float(empty_fraction)}

    def fill(root: Path) -> None:
        rng = np.random.default_rng(seed)
        ids = hex_ids(rng, n_train + n_test, 10)
        rng.shuffle(ids)
        train_ids, test_ids = sorted(ids[:n_train]), sorted(ids[n_train:])
        for sub in ("train/images", "train/masks", "test/images"):
            (root / sub).mkdir(parents=True)
        rows = []
        for i in progress(train_ids, "synth tgs train", quiet):
            image, mask = draw_scene(rng, (h, w), empty_fraction)
            write_png_rgb(root / "train" / "images" / f"{i}.png", to_uint8(image))
            write_mask_png(root / "train" / "masks" / f"{i}.png", mask)
            rows.append((i, rle.encode(mask, order="F")))
        for i in progress(test_ids, "synth tgs test", quiet):
            image, _ = draw_scene(rng, (h, w), empty_fraction)
            write_png_rgb(root / "test" / "images" / f"{i}.png", to_uint8(image))
        depths = [(i, str(int(rng.integers(50, 960)))) for i in ids]
        write_csv(root / "train.csv", ("id", "rle_mask"), rows)
        write_csv(root / "depths.csv", ("id", "z"), depths)
        write_csv(root / "sample_submission.csv", ("id", "rle_mask"), [(i, "1 1") for i in test_ids])

    return run_generator(Path(out), params, fill)
