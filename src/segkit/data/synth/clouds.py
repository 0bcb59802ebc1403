"""Synthetic Understanding Clouds: dark ocean scenes with four cloud patterns in rectangular regions (as the
real labels are drawn), a black no-data band outside every label, in the real layout (train_images/, train.csv
column-major at the image size with four rows per image, test_images/, sample_submission.csv). Options for
benchmarks: the share of images without any label (`empty_fraction`) and of regions drawn small and faint
(`faint`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from segkit import rle
from segkit.data.competitions.clouds import LABELS
from segkit.data.synth.shapes import (
    check_size, hex_ids, progress, run_generator, smooth_field, to_uint8, write_csv, write_jpeg,
)
from segkit.errors import ConfigError

# each pattern: a tint and a texture, so a tiny model can tell them apart
_TINT = {"Fish": (235, 235, 235), "Flower": (235, 205, 95), "Gravel": (205, 105, 165), "Sugar": (105, 205, 225)}


def _texture(label: str, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    if label == "Fish":  # long streaks
        return 0.75 + 0.25 * (np.sin((xx + 0.5 * yy) * 0.9) > 0)
    if label == "Flower":  # rings of open cells
        return 0.8 + 0.2 * (np.sin(xx * 0.8) * np.sin(yy * 0.8) > 0)
    if label == "Gravel":  # fine speckle
        return 0.7 + 0.3 * (rng.random(shape) < 0.6)
    return np.full(shape, 0.9)  # Sugar: an even haze


REGIONS = (0, 1, 2, 3)
REGION_P = (0.1, 0.35, 0.35, 0.2)  # how many labelled regions a scene has
FAINT_SIZE = ((0.12, 0.3), (0.1, 0.22))  # a faint region's height, width as shares of the image's
FAINT_ALPHA = (0.2, 0.35)  # how much of the cloud pattern shows over the ocean in a faint region


def draw_scene(rng: np.random.Generator, shape: tuple[int, int], empty_fraction: float | None = None,
               faint: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(RGB float image, masks (H, W, 4)) of one scene: 0-3 non-overlapping labelled rectangles and maybe a
    black no-data band on the left or right that no label covers. empty_fraction: chance of a scene with no
    label (None: 10 %, the default mix); faint: share of regions drawn small and faint (the pattern blended
    20-35 % over the ocean). With both unset the random stream is the one of earlier versions."""
    h, w = shape
    ocean = np.array([45, 60, 85], np.float32) + 10 * smooth_field(rng, shape, max(h, w) / 4)[..., None]
    image = ocean + rng.normal(0, 4, (h, w, 3))
    masks = np.zeros((h, w, len(LABELS)), np.uint8)
    band = np.zeros(shape, bool)
    if rng.random() < 0.5:
        width = int(rng.uniform(0.05, 0.15) * w)
        band[:, :width] = True
        if rng.random() < 0.5:
            band = band[:, ::-1]
    taken = band.copy()
    if empty_fraction is None:
        n_regions = rng.choice(REGIONS, p=REGION_P)
    else:
        p = np.asarray(REGION_P[1:]) / sum(REGION_P[1:])
        n_regions = 0 if rng.random() < empty_fraction else rng.choice(REGIONS[1:], p=p)
    for label_index in rng.permutation(len(LABELS))[:n_regions]:
        is_faint = faint > 0 and rng.random() < faint
        (ha, hb), (wa, wb) = FAINT_SIZE if is_faint else ((0.25, 0.6), (0.2, 0.45))
        for _ in range(20):  # a few tries to find a free spot
            rh, rw = max(2, int(rng.uniform(ha, hb) * h)), max(2, int(rng.uniform(wa, wb) * w))
            y0, x0 = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
            region = np.zeros(shape, bool)
            region[y0:y0 + rh, x0:x0 + rw] = True
            if not (region & taken).any():
                break
        else:
            continue
        label = LABELS[label_index]
        taken |= region
        masks[..., label_index] = region
        cloud = np.array(_TINT[label], np.float32) * _texture(label, rng, shape)[..., None]
        if is_faint:
            alpha = rng.uniform(*FAINT_ALPHA)
            cloud = alpha * cloud + (1 - alpha) * image
        image = np.where(region[..., None], cloud + rng.normal(0, 5, (h, w, 3)), image)
    image[band] = 0
    return image, masks


def generate(out: Path, seed: int = 0, image_size: tuple[int, int] = (64, 96), n_train: int = 16,
             n_test: int = 6, empty_fraction: float | None = None, faint: float = 0.0,
             quiet: bool = False) -> Path:
    """Write a synthetic Understanding Clouds dataset under `out` and return its root (= `out`).

    image_size: (H, W) of every image (1400x2100 in the real data; small by default for tests). train.csv
    refers to this size, as the real one refers to 1400x2100. empty_fraction: share of images without any label
    (drawn per image; None: the default mix, 10 % empty and each label missing from most images); faint: share of
    the labelled regions drawn small and faint. Deterministic for a seed; written to a
    temporary folder and moved into place; quiet: no progress bar."""
    h, w = check_size(image_size)
    if n_train < 2 or n_test < 1:
        raise ConfigError("synth clouds: need at least 2 training and 1 test image")
    if empty_fraction is not None and not 0 <= empty_fraction < 1:
        raise ConfigError(f"synth clouds: empty_fraction must be a share in [0, 1), got {empty_fraction!r}")
    if not 0 <= faint <= 1:
        raise ConfigError(f"synth clouds: faint must be a share in [0, 1], got {faint!r}")
    params = {"generator": "segkit.synth.clouds", "version": 1, "seed": int(seed), "image_size": [h, w],
              "n_train": n_train, "n_test": n_test}
    if empty_fraction is not None:  # only when set, so datasets written before the options are still reused
        params["empty_fraction"] = float(empty_fraction)
    if faint:
        params["faint"] = float(faint)

    def fill(root: Path) -> None:
        rng = np.random.default_rng(seed)
        ids = [f"{i}.jpg" for i in hex_ids(rng, n_train + n_test, 7)]
        rng.shuffle(ids)
        train_ids, test_ids = sorted(ids[:n_train]), sorted(ids[n_train:])
        (root / "train_images").mkdir()
        (root / "test_images").mkdir()
        train_rows, sample_rows = [], []
        for image_id in progress(train_ids, "synth clouds train", quiet):
            image, masks = draw_scene(rng, (h, w), empty_fraction, faint)
            write_jpeg(root / "train_images" / image_id, to_uint8(image))
            for c, label in enumerate(LABELS):
                train_rows.append((f"{image_id}_{label}", rle.encode(masks[..., c], order="F")))
        for image_id in progress(test_ids, "synth clouds test", quiet):
            image, _ = draw_scene(rng, (h, w), empty_fraction, faint)
            write_jpeg(root / "test_images" / image_id, to_uint8(image))
            sample_rows.extend((f"{image_id}_{label}", "1 1") for label in LABELS)
        write_csv(root / "train.csv", ("Image_Label", "EncodedPixels"), train_rows)
        write_csv(root / "sample_submission.csv", ("Image_Label", "EncodedPixels"), sample_rows)

    return run_generator(Path(out), params, fill)
