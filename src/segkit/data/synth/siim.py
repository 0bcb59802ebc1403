"""Synthetic SIIM-ACR Pneumothorax: chest-like radiographs with a dark, featureless pneumothorax at the outer edge
of a lung, as real DICOM files with JPEG-baseline pixel data, in the real layout: dicom-images-train/<study>/<series>/
<ImageId>.dcm with stage-1 ids (DICOM UIDs), train-rle.csv in its stage-1 form (header `ImageId, EncodedPixels`,
a leading space in values, column-major relative RLE, `-1` for an empty mask, one row per pneumothorax: an image
with one in each lung has two rows), dicom-images-test/<study>/<series>/ID_<9 hex>.dcm and
stage_2_sample_submission.csv (`ImageId,EncodedPixels`, all `-1`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from segkit import rle
from segkit.data.dicom import write_dicom_jpeg
from segkit.data.synth.shapes import check_size, hex_ids, progress, run_generator, smooth_field, to_uint8, write_csv
from segkit.errors import ConfigError

UID_ROOT = "1.2.276.0.7230010.3.1"  # the real ids' prefix: .2 study, .3 series, .4 instance, then 8323329.<n>.<t>.<r>


def draw_chest(rng: np.random.Generator, shape: tuple[int, int], free: bool,
               both_sides: float = 0.25) -> tuple[np.ndarray, list[np.ndarray]]:
    """(grey float image, one binary mask per pneumothorax): a bright body, two darker lungs with rib stripes;
    a pneumothorax is the outer crescent of a lung (the lung minus a smaller copy moved to the middle), black and
    without markings. None when `free`; in both lungs with probability `both_sides`."""
    import cv2

    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = 60 + 120 * np.exp(-(((xx - w / 2) / (0.42 * w)) ** 2) * 2) + 10 * smooth_field(rng, shape, max(h, w) / 6)
    sides = [] if free else ([-1, 1] if rng.random() < both_sides else [int(rng.choice([-1, 1]))])
    masks = []
    for side in (-1, 1):
        centre = (w / 2 + side * w * rng.uniform(0.2, 0.24), h * rng.uniform(0.45, 0.52))
        axes = (w * rng.uniform(0.14, 0.17), h * rng.uniform(0.3, 0.36))
        lung = np.zeros(shape, np.uint8)
        cv2.ellipse(lung, (int(centre[0]), int(centre[1])), (int(axes[0]), int(axes[1])), 0, 0, 360, 1, -1)
        ribs = 12 * np.sin(yy / h * np.pi * rng.uniform(14, 18) + xx / w * side * 3)
        image = np.where(lung > 0, 70 + ribs + 6 * smooth_field(rng, shape, max(h, w) / 10), image)
        if side in sides:
            k = rng.uniform(0.55, 0.8)
            inner = np.zeros(shape, np.uint8)
            shifted = (int(centre[0] - side * axes[0] * (1 - k)), int(centre[1] + axes[1] * (1 - k) * 0.5))
            cv2.ellipse(inner, shifted, (int(axes[0] * k), int(axes[1] * k)), 0, 0, 360, 1, -1)
            ptx = (lung & (1 - inner)).astype(np.uint8)
            if ptx.sum() >= 4:
                masks.append(ptx)
                image = np.where(ptx > 0, 22 + rng.normal(0, 2, shape), image)
    return image + rng.normal(0, 3, shape), masks


def _uids(rng: np.random.Generator, n: int) -> list[tuple[str, str, str]]:
    """`n` distinct (study, series, instance) UIDs in the real ids' form."""
    out: dict[str, tuple[str, str, str]] = {}
    while len(out) < n:
        serial, stamp = int(rng.integers(1000, 14000)), int(rng.integers(1517875000, 1517876000))
        tail = [int(rng.integers(100000, 999999)) for _ in range(3)]
        study, series, instance = (f"{UID_ROOT}.{k}.8323329.{serial}.{stamp}.{t}" for k, t in zip((2, 3, 4), tail))
        out.setdefault(instance, (study, series, instance))
    return sorted(out.values(), key=lambda u: u[2])


def generate(out: Path, seed: int = 0, image_size: int | tuple[int, int] = 64, n_train: int = 16, n_test: int = 6,
             empty_fraction: float = 0.4, quiet: bool = False) -> Path:
    """Write a synthetic SIIM-ACR dataset under `out` and return its root (= `out`).

    image_size: side (or (H, W)) of every DICOM image (1024 in the real data; small by default for tests); the RLEs
    refer to it. empty_fraction: share of training images without a pneumothorax (drawn per image;
    `segkit synth siim --empty-fraction`). Deterministic for a seed; written to a temporary folder and moved into
    place; quiet: no progress bar."""
    h, w = check_size(image_size)
    if n_train < 2 or n_test < 1 or not 0 <= empty_fraction < 1:
        raise ConfigError("synth siim: need >= 2 training and >= 1 test image and 0 <= empty_fraction < 1")
    params = {"generator": "segkit.synth.siim", "version": 1, "seed": int(seed), "image_size": [h, w],
              "n_train": n_train, "n_test": n_test, "empty_fraction": empty_fraction}

    def fill(root: Path) -> None:
        rng = np.random.default_rng(seed)
        train = _uids(rng, n_train)
        test_ids = [f"ID_{i}" for i in hex_ids(rng, n_test, 9)]
        test = [(s, r, i) for (s, r, _), i in zip(_uids(rng, n_test), test_ids)]
        rows = []
        for split, items in (("train", train), ("test", test)):
            for study, series, image_id in progress(items, f"synth siim {split}", quiet):
                image, masks = draw_chest(rng, (h, w), free=rng.random() < empty_fraction)
                folder = root / f"dicom-images-{split}" / study / series
                folder.mkdir(parents=True)
                instance = image_id if split == "train" else series.replace(".3.8323329.", ".4.8323329.", 1)
                write_dicom_jpeg(folder / f"{image_id}.dcm", to_uint8(image), {
                    "SOPInstanceUID": instance, "StudyInstanceUID": study, "SeriesInstanceUID": series,
                    "PatientID": image_id[-12:], "BodyPartExamined": "CHEST", "ViewPosition": "PA"})
                if split == "train":
                    texts = [rle.encode(m, "F", scheme="relative") for m in masks] or [rle.EMPTY["relative"]]
                    rows.extend((image_id, " " + t) for t in texts)
        write_csv(root / "train-rle.csv", ("ImageId", " EncodedPixels"), rows)
        write_csv(root / "stage_2_sample_submission.csv", ("ImageId", "EncodedPixels"),
                  [(i, rle.EMPTY["relative"]) for _, _, i in test])

    return run_generator(Path(out), params, fill)
