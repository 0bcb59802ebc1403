"""Synthetic Landsat-like scenes written exactly in 38-Cloud's (and optionally 95-Cloud's) file layout.

Each scene: smooth multi-scale ground textures (water, vegetation, soil, urban) with per-band DN levels like
Landsat 8 L1 data, clouds of varied size and thickness that are bright in the visible bands and the NIR, a
tilted acquisition footprint with zero no-data margins. Scenes are zero-padded (centred) to a multiple of the
patch size and cut into patches named `<band>_patch_<k>_<row>_by_<col>_<sceneid>.TIF` (uint16 PackBits
bands, uint8 {0,255} GT), with the CSV lists (full, non-empty with the > 80 % non-zero rule, test) and
`Entire_scene_gts/edited_corrected_gts_<scene>.TIF` at the un-padded scene size for test scenes.
"""
from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

import numpy as np

from segkit.data.competitions import cloud38 as fmt
from segkit.data.io import write_tiff
from segkit.storage import atomic_write
from segkit.data.synth.shapes import progress, run_generator
from segkit.errors import ConfigError

NONEMPTY_FRACTION = 0.8  # a patch is "non-empty" when more than this fraction of its pixels is non-zero

# Mean DN (red, green, blue, nir) of each ground class, roughly Landsat 8 L1 levels.
_GROUND = {
    "water": (7200, 8000, 9200, 5800),
    "vegetation": (7600, 8900, 9600, 19000),
    "soil": (12500, 11800, 10900, 16500),
    "urban": (11000, 10800, 10600, 13000),
}
_CLOUD = np.array((30000, 30500, 31500, 29000), np.float32)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean unit-variance noise with features about `scale` pixels wide (bicubic-upsampled grid)."""
    import cv2

    h, w = shape
    gh, gw = max(2, math.ceil(h / scale) + 2), max(2, math.ceil(w / scale) + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    big = cv2.resize(grid, (int((gw - 1) * scale), int((gh - 1) * scale)), interpolation=cv2.INTER_CUBIC)
    oy = int(rng.integers(0, max(1, big.shape[0] - h)))
    ox = int(rng.integers(0, max(1, big.shape[1] - w)))
    out = big[oy: oy + h, ox: ox + w]
    if out.shape != (h, w):  # tiny scenes: pad by reflection
        out = np.pad(out, ((0, h - out.shape[0]), (0, w - out.shape[1])), mode="reflect")
    return (out - out.mean()) / (out.std() + 1e-6)


def fractal_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float, octaves: int = 3) -> np.ndarray:
    """Sum of smooth noise at halving scales (amplitude halving too), normalised to unit variance."""
    total = np.zeros(shape, np.float32)
    for i in range(octaves):
        total += smooth_noise(rng, shape, max(2.0, scale / 2 ** i)) * 0.5 ** i
    return (total - total.mean()) / (total.std() + 1e-6)


def footprint(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of a tilted rectangular acquisition footprint (Landsat's path is ~10-14 degrees off north)."""
    h, w = shape
    angle = math.radians(rng.uniform(9, 14) * rng.choice([-1, 1]))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
    v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
    half_w = w / 2 * rng.uniform(0.80, 0.88)
    half_h = h / 2 * rng.uniform(0.82, 0.90)
    return (np.abs(u) <= half_w) & (np.abs(v) <= half_h)


def make_scene(rng: np.random.Generator, shape: tuple[int, int], patch_size: int,
               cloud_cover: float) -> tuple[np.ndarray, np.ndarray]:
    """One scene: uint16 bands (H, W, 4) red/green/blue/nir with zero no-data margins, and a uint8 {0,1} cloud mask."""
    h, w = shape
    ground_scale = patch_size * rng.uniform(0.5, 1.2)
    terrain = fractal_noise(rng, shape, ground_scale)
    moisture = fractal_noise(rng, shape, ground_scale * 0.7)
    names = list(_GROUND)
    classes = np.full(shape, names.index("soil"), np.uint8)
    classes[moisture > 0.2] = names.index("vegetation")
    classes[(terrain > 0.9) & (moisture <= 0.2)] = names.index("urban")
    classes[terrain < -1.1] = names.index("water")
    levels = np.stack([np.asarray(_GROUND[n], np.float32) * rng.uniform(0.92, 1.08, size=4) for n in names])
    image = levels[classes]
    texture = fractal_noise(rng, shape, patch_size / 8, octaves=2)
    image *= (1.0 + 0.06 * texture)[..., None]

    # Clouds: a thresholded multi-scale field; its excess over the threshold is the optical thickness.
    cloud_scale = patch_size * rng.uniform(0.35, 1.1)
    field = fractal_noise(rng, shape, cloud_scale, octaves=3)
    thr = float(np.quantile(field, 1.0 - cloud_cover)) if cloud_cover > 0 else np.inf
    edge = rng.uniform(0.25, 0.45)  # width of the thin transition, in field units
    alpha = np.clip((field - thr) / edge, 0.0, 1.0)
    alpha = alpha ** 0.6  # thick cores, short thin fringes
    alpha *= np.clip(0.75 + 0.3 * smooth_noise(rng, shape, patch_size * 1.5), 0.5, 1.0)  # some clouds thinner
    puff = fractal_noise(rng, shape, patch_size / 10, octaves=2)
    cloud = _CLOUD * rng.uniform(0.9, 1.2) * (1.0 + 0.08 * puff)[..., None]
    image = image * (1.0 - alpha[..., None]) + cloud * alpha[..., None]
    mask = (alpha > 0.3).astype(np.uint8)

    image += rng.normal(0.0, 120.0, image.shape).astype(np.float32)  # sensor noise
    valid = footprint(rng, shape)
    image[~valid] = 0
    mask[~valid] = 0
    return np.clip(image, 1, 65535).astype(np.uint16) * valid[..., None].astype(np.uint16), mask


def scene_id(rng: np.random.Generator) -> str:
    """A realistic Landsat 8 Collection 1 product id: LC08_L1TP_PPPRRR_YYYYMMDD_YYYYMMDD_01_T1."""
    path, row = int(rng.integers(1, 234)), int(rng.integers(1, 249))
    acq = _dt.date(2013, 4, 11) + _dt.timedelta(days=int(rng.integers(0, 365 * 4)))
    proc = acq + _dt.timedelta(days=int(rng.integers(30, 400)))
    return f"LC08_L1TP_{path:03d}{row:03d}_{acq:%Y%m%d}_{proc:%Y%m%d}_01_T1"


def pad_to_patches(array: np.ndarray, patch_size: int) -> tuple[np.ndarray, int, int]:
    """Zero-pad (H, W, ...) to a multiple of patch_size, centred (the extra pixel goes bottom/right);
    returns the padded array and the number of patch rows and columns."""
    h, w = array.shape[:2]
    n_rows, n_cols = math.ceil(h / patch_size), math.ceil(w / patch_size)
    ph, pw = n_rows * patch_size - h, n_cols * patch_size - w
    pad = [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad), n_rows, n_cols


def _write_csv(path: Path, names: list[str]) -> None:
    with atomic_write(path, newline="") as fh:
        fh.write("name\n")
        fh.writelines(f"{n}\n" for n in names)


def _write_scene_patches(split_dir: Path, split: str, suffix: str, scene: str, image: np.ndarray,
                         mask: np.ndarray | None, patch_size: int) -> tuple[list[str], list[str]]:
    padded, n_rows, n_cols = pad_to_patches(image, patch_size)
    padded_mask = pad_to_patches(mask, patch_size)[0] if mask is not None else None
    names, nonempty = [], []
    for row in range(1, n_rows + 1):
        for col in range(1, n_cols + 1):
            k = (row - 1) * n_cols + col
            name = f"patch_{k}_{row}_by_{col}_{scene}"
            ys, xs = slice((row - 1) * patch_size, row * patch_size), slice((col - 1) * patch_size, col * patch_size)
            patch = padded[ys, xs]
            for b, band in enumerate(fmt.BANDS):
                write_tiff(split_dir / f"{split}_{band}{suffix}" / f"{band}_{name}.TIF", np.ascontiguousarray(patch[..., b]))
            if padded_mask is not None:
                gt = (padded_mask[ys, xs] * 255).astype(np.uint8)
                write_tiff(split_dir / f"{split}_gt{suffix}" / f"gt_{name}.TIF", gt)
            names.append(name)
            if (patch.max(axis=-1) > 0).mean() > NONEMPTY_FRACTION:
                nonempty.append(name)
    return names, nonempty


def generate(
    out: Path,
    seed: int = 0,
    patch_size: int = 384,
    n_train_scenes: int = 6,
    n_test_scenes: int = 2,
    n_additional_scenes: int = 0,
    scene_patches: tuple[float, float] = (3.2, 4.8),
    cloud_cover: tuple[float, float] = (0.08, 0.6),
    quiet: bool = False,
) -> Path:
    """Write a synthetic 38-Cloud dataset under `out` and return its root (= `out`).

    patch_size: side of each patch (384 in the real data; 32-96 for tests and the demo).
    n_train_scenes / n_test_scenes: scenes in 38-Cloud_training / 38-Cloud_test.
    n_additional_scenes: > 0 also writes 95-Cloud's extra training folder and its non-empty list.
    scene_patches: range of scene side lengths, in patches (before padding).
    cloud_cover: range of per-scene cloud fractions (one training and one test scene are kept nearly clear
      of cloud when there are at least three of them, as real data has cloud-free scenes).
    Deterministic for a given seed and arguments. Written into a temporary folder and moved into place,
    so an interrupted run leaves nothing half-written; an existing segkit synthetic dataset is replaced.
    quiet: no progress bar.
    """
    if patch_size < 8:
        raise ConfigError(f"synth: patch_size must be at least 8, got {patch_size}")
    if n_train_scenes < 1 or n_test_scenes < 1 or n_additional_scenes < 0:
        raise ConfigError("synth: need at least one training and one test scene")
    params = {"generator": "segkit.synth.cloud38", "version": 1, "seed": int(seed), "patch_size": int(patch_size),
              "n_train_scenes": n_train_scenes, "n_test_scenes": n_test_scenes,
              "n_additional_scenes": n_additional_scenes, "scene_patches": list(scene_patches),
              "cloud_cover": list(cloud_cover)}
    return run_generator(Path(out), params, lambda root: _generate_into(
        root, seed, patch_size, n_train_scenes, n_test_scenes, n_additional_scenes, scene_patches, cloud_cover, quiet))


def _generate_into(root: Path, seed: int, patch_size: int, n_train_scenes: int, n_test_scenes: int,
                   n_additional_scenes: int, scene_patches: tuple[float, float], cloud_cover: tuple[float, float],
                   quiet: bool = False) -> None:
    rng = np.random.default_rng(seed)
    ids: set[str] = set()

    def new_scene(index: int, count: int) -> tuple[str, np.ndarray, np.ndarray]:
        sid = scene_id(rng)
        while sid in ids:
            sid = scene_id(rng)
        ids.add(sid)
        lo, hi = scene_patches
        shape = (int(patch_size * rng.uniform(lo, hi)), int(patch_size * rng.uniform(lo, hi)))
        cover = 0.0 if (count >= 3 and index == count - 1) else rng.uniform(*cloud_cover)
        image, mask = make_scene(rng, shape, patch_size, cover)
        return sid, image, mask

    train_dir, test_dir = root / fmt.TRAIN_DIR, root / fmt.TEST_DIR
    all_names, all_nonempty = [], []
    for i in progress(range(n_train_scenes), "synth cloud38 train", quiet, unit="scene"):
        sid, image, mask = new_scene(i, n_train_scenes)
        names, nonempty = _write_scene_patches(train_dir, "train", "", sid, image, mask, patch_size)
        all_names += names
        all_nonempty += nonempty
    _write_csv(train_dir / fmt.TRAIN_CSV, all_names)
    _write_csv(root / fmt.NONEMPTY_CSV, sorted(all_nonempty))  # Kaggle's download keeps it at the root

    test_names = []
    for i in progress(range(n_test_scenes), "synth cloud38 test", quiet, unit="scene"):
        sid, image, mask = new_scene(i, n_test_scenes)
        names, _ = _write_scene_patches(test_dir, "test", "", sid, image, None, patch_size)
        test_names += names
        write_tiff(test_dir / fmt.SCENE_GT_DIR / f"{fmt.SCENE_GT_PREFIX}{sid}.TIF", mask * np.uint8(255))
    _write_csv(test_dir / fmt.TEST_CSV, test_names)

    if n_additional_scenes:
        extra_dir = root / fmt.EXTRA_DIR
        extra_names, nonempty95 = [], list(all_nonempty)
        for i in progress(range(n_additional_scenes), "synth 95-cloud extra", quiet, unit="scene"):
            sid, image, mask = new_scene(i, n_additional_scenes)
            names, nonempty = _write_scene_patches(extra_dir, "train", "_additional_to38cloud", sid, image, mask, patch_size)
            extra_names += names
            nonempty95 += nonempty
        _write_csv(extra_dir / fmt.EXTRA_CSV, extra_names)
        _write_csv(root / fmt.NONEMPTY95_CSV, sorted(nonempty95))
