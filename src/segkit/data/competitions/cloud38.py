"""38-Cloud and 95-Cloud (Landsat 8 cloud masks): the official folder layout read into Samples.

Layout (letter case varies between downloads, so every folder, file and CSV is matched case-insensitively):

    ROOT/38-Cloud_training/{train_red,train_green,train_blue,train_nir,train_gt}/<band>_patch_<k>_<row>_by_<col>_<scene>.TIF
    ROOT/38-Cloud_training/training_patches_38-Cloud.csv          (column `name`, every patch)
    ROOT/[38-Cloud_training/]training_patches_38-cloud_nonempty.csv (the > 80 % non-zero patches; Kaggle puts it at ROOT)
    ROOT/38-Cloud_test/{test_red,test_green,test_blue,test_nir}/...,  test_patches_38-Cloud.csv
    ROOT/38-Cloud_test/Entire_scene_gts/edited_corrected_gts_<scene>.TIF
95-Cloud adds (Kaggle "95-Cloud" download, as used by public loaders):
    ROOT/95-cloud_training_only_additional_to38-cloud/train_<band>_additional_to38cloud/...
    ROOT/95-cloud_training_only_additional_to38-cloud/training_patches_95-cloud_additional_to_38-cloud.csv
    ROOT/[...]/training_patches_95-cloud_nonempty.csv            (21,502 non-empty patches of all 75 scenes)
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from segkit.data.competitions.base import Adapter, register_adapter
from segkit.data.io import read_tiff
from segkit.data.sample import Sample
from segkit.errors import ConfigError, DataError
from segkit.submission import SubmissionFormat
from segkit.tiling import GridCanvas

BANDS = ("red", "green", "blue", "nir")  # Landsat 8 B4, B3, B2, B5; the model sees them in this order
TRAIN_DIR = "38-Cloud_training"
TEST_DIR = "38-Cloud_test"
EXTRA_DIR = "95-cloud_training_only_additional_to38-cloud"
TRAIN_CSV = "training_patches_38-Cloud.csv"
NONEMPTY_CSV = "training_patches_38-cloud_nonempty.csv"
TEST_CSV = "test_patches_38-Cloud.csv"
EXTRA_CSV = "training_patches_95-cloud_additional_to_38-cloud.csv"
NONEMPTY95_CSV = "training_patches_95-cloud_nonempty.csv"
SCENE_GT_DIR = "Entire_scene_gts"
SCENE_GT_PREFIX = "edited_corrected_gts_"

_NAME_RE = re.compile(
    r"^(?:(?P<band>red|green|blue|nir|gt)_)?patch_(?P<k>\d+)_(?P<row>\d+)_by_(?P<col>\d+)_(?P<scene>LC08_\w+?)(?:\.tiff?)?$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class PatchName:
    """The parts of a 38-Cloud patch name: patch_<k>_<row>_by_<col>_<scene> (row, col 1-based)."""

    name: str
    k: int
    row: int
    col: int
    scene: str


def parse_patch_name(name: str) -> PatchName:
    """Split a patch name (with or without band prefix and extension) into k, row, col and scene id."""
    base = Path(name.strip()).name
    m = _NAME_RE.match(base)
    if not m:
        raise DataError(f"'{name}': not a 38-Cloud patch name (expected patch_<k>_<row>_by_<col>_LC08_...)")
    stem = base[m.start("k") - len("patch_"): m.end("scene")]
    return PatchName(stem, int(m["k"]), int(m["row"]), int(m["col"]), m["scene"])


def read_patch_list(path: Path) -> list[str]:
    """The `name` column of a 38-Cloud patch CSV (header matched case-insensitively, blank lines skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read patch list ({exc.strerror})") from None
    rows = [ln.strip().strip('"').split(",")[0].strip() for ln in lines]
    rows = [r for r in rows if r]
    if not rows or rows[0].lower() != "name":
        raise DataError(f"{path}: expected a CSV with a 'name' header column")
    names = rows[1:]
    if not names:
        raise DataError(f"{path}: the patch list is empty")
    for n in names:
        parse_patch_name(n)  # fails early, naming the bad entry
    return names


def read_band(path: str | os.PathLike) -> np.ndarray:
    """One single-band TIFF in its stored dtype. OpenCV's libtiff decodes PackBits ~10x faster than
    tifffile without imagecodecs; tifffile is the fallback and the source of clear errors."""
    import cv2

    path = Path(path)
    arr = None
    if path.is_file():
        with _quiet_decoders():
            arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        with _quiet_decoders():
            arr = read_tiff(path)  # raises DataError naming the file when it is missing or corrupt
    if arr.size == 0:
        raise DataError(f"{path}: not a readable TIFF (truncated or without image data)")
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a single-band image, got shape {arr.shape}")
    return arr


@contextlib.contextmanager
def _quiet_decoders():
    """Silence OpenCV's libtiff messages and tifffile's warnings for a damaged file: segkit reports it once,
    naming the file, as a DataError."""
    import cv2

    cv_log = getattr(getattr(cv2, "utils", None), "logging", cv2)  # OpenCV 5: cv2.utils.logging; 4.x: cv2
    tiff_log = logging.getLogger("tifffile")
    old_cv, old_tiff = cv_log.getLogLevel(), tiff_log.level
    cv_log.setLogLevel(0)  # LOG_LEVEL_SILENT
    tiff_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        cv_log.setLogLevel(old_cv)
        tiff_log.setLevel(old_tiff)


def tiff_shape(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of a TIFF from its header only."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            shape = tf.pages[0].shape
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as exc:
        raise DataError(f"{path}: not a readable TIFF ({exc})") from None
    return int(shape[0]), int(shape[1])


class _Folder:
    """A directory whose entries are looked up case-insensitively (one listdir, then dict lookups)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            names = os.listdir(path)
        except FileNotFoundError:
            raise DataError(f"{path}: folder not found") from None
        except NotADirectoryError:
            raise DataError(f"{path}: expected a folder") from None
        self.entries = {n.lower(): n for n in names}

    def get(self, name: str) -> Path | None:
        real = self.entries.get(name.lower())
        return self.path / real if real else None

    def need(self, name: str, what: str = "file") -> Path:
        p = self.get(name)
        if p is None:
            raise DataError(f"{self.path / name}: {what} not found")
        return p


def find_ci(base: Path, name: str, *subdirs: str) -> Path | None:
    """`name` inside `base` or one of its `subdirs`, matched case-insensitively; None when absent."""
    for sub in ("",) + subdirs:
        folder = base
        if sub:
            if not base.is_dir():
                continue
            hit = _Folder(base).get(sub)
            if hit is None or not hit.is_dir():
                continue
            folder = hit
        if folder.is_dir():
            hit = _Folder(folder).get(name)
            if hit is not None:
                return hit
    return None


@register_adapter("cloud38")
class Cloud38Adapter(Adapter):
    """38-Cloud: four uint16 band TIFFs per 384x384 patch, GT {0,255}; the test set is scored per scene.

    Options (config `data.options`):
      nonempty_only: train only on the official non-empty list (> 80 % non-zero patches).
      stratify: read every training GT once to bin its cloud cover into `stratum` (fast with OpenCV:
        ~1 s per 5,000 patches); False leaves stratum 0.
      cover_bins: stratum = 0 for a cloud-free patch, else 1 + floor(cover * cover_bins) (capped).
      band_mean, band_std: per-band statistics (raw units, order red, green, blue, nir) for
        standardising instead of the default division by 65535.
      workers: threads for reading GTs.
    """

    classes = ("cloud",)
    bands = 4
    item_word = "patches"
    # one row per test patch (its name as in test_patches_38-Cloud.csv), column-major RLE at the patch's own
    # size: 384x384 in the real data; `segkit validate --sample` also takes that patch list
    submission_format = SubmissionFormat(header=("id", "EncodedPixels"), order="F", shape=(384, 384),
                                         own_size=True, id_list="name")
    extra_training = False  # 95-Cloud sets this

    def __init__(
        self,
        root: str | Path,
        nonempty_only: bool = True,
        stratify: bool = True,
        cover_bins: int = 4,
        band_mean: list[float] | None = None,
        band_std: list[float] | None = None,
        workers: int = 4,
    ) -> None:
        super().__init__(root)
        self.require_root()
        for key, val in (("band_mean", band_mean), ("band_std", band_std)):
            if val is not None and len(val) != self.bands:
                raise ConfigError(f"data.options.{key}: expected {self.bands} numbers (red, green, blue, nir), got {val!r}")
        if (band_mean is None) != (band_std is None):
            raise ConfigError("data.options.band_mean and band_std: give both or neither")
        if band_std is not None and min(band_std) <= 0:
            raise ConfigError(f"data.options.band_std: every value must be positive, got {band_std!r}")
        if cover_bins < 1:
            raise ConfigError(f"data.options.cover_bins: expected a positive integer, got {cover_bins!r}")
        self.nonempty_only = nonempty_only
        self.stratify = stratify
        self.cover_bins = int(cover_bins)
        self.band_mean = None if band_mean is None else np.asarray(band_mean, np.float32)
        self.band_std = None if band_std is None else np.asarray(band_std, np.float32)
        self.workers = max(1, int(workers))
        self._size_cache: dict[str, tuple[int, int]] = {}

    # --- listing -------------------------------------------------------------------------
    def _subset(self, name: str) -> Path:
        folder = _Folder(self.root).get(name)
        if folder is None or not folder.is_dir():
            raise DataError(f"{self.root / name}: folder not found (is data.root the unpacked dataset?)")
        return folder

    def _nonempty_names(self) -> set[str] | None:
        if not self.nonempty_only:
            return None
        csv = find_ci(self.root, NONEMPTY_CSV, TRAIN_DIR)
        if csv is None:
            raise DataError(
                f"{self.root / NONEMPTY_CSV}: non-empty patch list not found (looked in the root and {TRAIN_DIR}/; "
                "set data.options.nonempty_only=false to use every patch)"
            )
        return {n.lower() for n in read_patch_list(csv)}

    def _samples(self, subset: Path, csv_name: str, split: str, band_suffix: str, with_gt: bool,
                 keep: set[str] | None) -> list[Sample]:
        csv = find_ci(subset, csv_name) or find_ci(self.root, csv_name)
        if csv is None:
            raise DataError(f"{subset / csv_name}: patch list not found")
        names = read_patch_list(csv)
        if keep is not None:
            names = [n for n in names if n.lower() in keep]
            if not names:
                raise DataError(f"{csv}: none of its patches is in the non-empty list")
        parent = _Folder(subset)
        kinds = BANDS + (("gt",) if with_gt else ())
        folders = {b: _Folder(parent.need(f"{split}_{b}{band_suffix}", "band folder")) for b in kinds}
        samples = []
        for name in names:
            pn = parse_patch_name(name)
            paths = {}
            for b in kinds:
                p = folders[b].get(f"{b}_{pn.name}.TIF") or folders[b].get(f"{b}_{pn.name}.TIFF")
                if p is None:
                    raise DataError(f"{folders[b].path / f'{b}_{pn.name}.TIF'}: {b} file of patch '{name}' not found")
                paths[b] = str(p)
            samples.append(Sample(
                id=name,
                image=tuple(paths[b] for b in BANDS),
                mask=(paths["gt"],) if with_gt else (),
                group=pn.scene,
                meta={"k": pn.k, "row": pn.row, "col": pn.col, "scene": pn.scene},
            ))
        return samples

    def train_samples(self) -> list[Sample]:
        """Every labelled patch (or the non-empty ones), grouped by scene, stratified by cloud cover."""
        keep = self._nonempty_names()
        samples = self._samples(self._subset(TRAIN_DIR), TRAIN_CSV, "train", "", True, keep)
        return self._with_strata(samples)

    def test_samples(self) -> list[Sample]:
        """Every test patch in the order of test_patches_38-Cloud.csv (no GT; scenes are scored whole)."""
        return self._samples(self._subset(TEST_DIR), TEST_CSV, "test", "", False, None)

    def scene_gt_dir(self) -> Path:
        """Where the whole-scene test GTs live."""
        return _Folder(self._subset(TEST_DIR)).need(SCENE_GT_DIR, "folder")

    def _with_strata(self, samples: list[Sample]) -> list[Sample]:
        if not self.stratify:
            return samples
        with ThreadPoolExecutor(self.workers) as pool:  # OpenCV releases the GIL while decoding
            covers = list(pool.map(lambda s: float((read_band(s.mask[0]) > 0).mean()), samples))
        return [
            Sample(s.id, s.image, s.mask, s.group, self.cover_stratum(c), {**s.meta, "cover": c})
            for s, c in zip(samples, covers)
        ]

    def cover_stratum(self, cover: float) -> int:
        """0 for a cloud-free patch, else 1 + floor(cover * cover_bins), capped at cover_bins."""
        if cover <= 0:
            return 0
        return 1 + min(int(cover * self.cover_bins), self.cover_bins - 1)

    # --- reading -------------------------------------------------------------------------
    def read_image(self, sample: Sample) -> np.ndarray:
        """(H, W, 4) uint16 in band order red, green, blue, nir."""
        bands = [read_band(p) for p in sample.image]
        shape = bands[0].shape
        for p, b in zip(sample.image, bands):
            if b.shape != shape:
                raise DataError(f"{p}: band is {b.shape[0]}x{b.shape[1]} but {sample.image[0]} is {shape[0]}x{shape[1]}")
        return np.stack(bands, axis=-1)

    def read_mask(self, sample: Sample) -> np.ndarray:
        """GT {0,255} → uint8 {0,1} of shape (H, W, 1), checked against the size of the red band."""
        if not sample.mask:
            raise DataError(f"patch '{sample.id}' has no ground truth (test patches are scored per scene)")
        gt = read_band(sample.mask[0])
        expected = self._band_shape(sample)
        if gt.shape != expected:
            raise DataError(
                f"{sample.mask[0]}: ground truth is {gt.shape[0]}x{gt.shape[1]} but its bands are {expected[0]}x{expected[1]}"
            )
        return (gt > 0).astype(np.uint8)[..., None]

    def _band_shape(self, sample: Sample) -> tuple[int, int]:
        key = sample.image[0]
        if key not in self._size_cache:
            self._size_cache[key] = tiff_shape(key)
        return self._size_cache[key]

    def input_normalisation(self, dtype: np.dtype | type | str) -> tuple[list[float], list[float]]:
        """Raw DN → model input: /65535 (Cloud-Net's choice), or (x - mean) / std with per-band statistics
        (as scale 1/std, offset -mean/std)."""
        if self.band_mean is not None:
            std = self.band_std.astype(np.float64)
            return (1.0 / std).tolist(), (-self.band_mean.astype(np.float64) / std).tolist()
        return [1.0 / 65535.0] * self.bands, [0.0] * self.bands

    # --- writing -------------------------------------------------------------------------
    def stored_size(self, sample: Sample) -> tuple[int, int]:
        """The patch's size from its red band's header (384x384 in the real data)."""
        return self._band_shape(sample)

    def tiling_canvases(self, samples: list[Sample]) -> list:
        """Tiled inference sees whole scenes: each scene's patches placed by (row, col) on its padded
        (max_row·P) x (max_col·P) grid (as the official evaluation stitches them; an unlisted position reads as
        zeros, the no-data value), predicted with overlapping windows across patch borders and cut back into
        the patches. Scenes in order of first appearance; patches are read one patch row at a time."""
        scenes: dict[str, dict[tuple[int, int], int]] = {}
        for i, s in enumerate(samples):
            pn = parse_patch_name(s.id)
            scenes.setdefault(pn.scene, {})[(pn.row - 1, pn.col - 1)] = i
        canvases = []
        for scene, cells in scenes.items():
            first = samples[next(iter(cells.values()))]
            size, width = self.stored_size(first)
            if size != width:
                raise DataError(f"{first.image[0]}: patch is {size}x{width}; tiling stitches square patches")
            canvases.append(GridCanvas(cells, max(r for r, _ in cells) + 1, max(c for _, c in cells) + 1, size,
                                       lambda i: self.read_image(samples[i]), name=scene))
        return canvases

    def score_class(self, truth: np.ndarray, pred: np.ndarray) -> float:
        """Pooled Jaccard TP / (TP + FP + FN) over every pixel of the stack (1.0 when both are empty)."""
        t = truth.astype(bool)
        p = pred.astype(bool)
        tp = np.count_nonzero(t & p)
        union = np.count_nonzero(t | p)
        return 1.0 if union == 0 else tp / union

    def score_counts(self, inter: np.ndarray, pred_area: np.ndarray, true_area: np.ndarray) -> np.ndarray:
        """The same pooled Jaccard from per-image counts (see Adapter.score_counts)."""
        tp = np.sum(inter, axis=-1)
        union = np.sum(np.asarray(pred_area, dtype=np.float64) + true_area - inter, axis=-1)
        return np.where(union == 0, 1.0, tp / np.maximum(union, 1))


@register_adapter("cloud95")
class Cloud95Adapter(Cloud38Adapter):
    """95-Cloud: 38-Cloud's 18 training scenes plus 57 more in 95-cloud_training_only_additional_to38-cloud/;
    the test set is 38-Cloud's. With nonempty_only it needs training_patches_95-cloud_nonempty.csv."""

    extra_training = True

    def _nonempty_names(self) -> set[str] | None:
        if not self.nonempty_only:
            return None
        csv = find_ci(self.root, NONEMPTY95_CSV, EXTRA_DIR, TRAIN_DIR)
        if csv is None:
            raise DataError(
                f"{self.root / NONEMPTY95_CSV}: 95-Cloud non-empty patch list not found (looked in the root, "
                f"{EXTRA_DIR}/ and {TRAIN_DIR}/; set data.options.nonempty_only=false to use every patch)"
            )
        return {n.lower() for n in read_patch_list(csv)}

    def train_samples(self) -> list[Sample]:
        """38-Cloud's training patches plus 95-Cloud's additional ones, filtered by the 95-Cloud non-empty list."""
        keep = self._nonempty_names()
        samples: list[Sample] = []
        train_dir = _Folder(self.root).get(TRAIN_DIR)
        if train_dir is not None and train_dir.is_dir():
            samples += self._samples(train_dir, TRAIN_CSV, "train", "", True, keep)
        samples += self._samples(self._subset(EXTRA_DIR), EXTRA_CSV, "train", "_additional_to38cloud", True, keep)
        return self._with_strata(samples)


def scene_gt_path(gt_dir: Path, scene: str) -> Path:
    """The whole-scene GT of `scene` in `gt_dir` (edited_corrected_gts_<scene>.TIF, any case)."""
    folder = _Folder(Path(gt_dir))
    for ext in (".TIF", ".TIFF"):
        p = folder.get(f"{SCENE_GT_PREFIX}{scene}{ext}")
        if p is not None:
            return p
    raise DataError(f"{Path(gt_dir) / (SCENE_GT_PREFIX + scene + '.TIF')}: scene ground truth not found")


def scenes_of(names: Iterable[str]) -> dict[str, list[PatchName]]:
    """Patch names grouped by scene id, in first-seen order."""
    out: dict[str, list[PatchName]] = {}
    for n in names:
        pn = parse_patch_name(n)
        out.setdefault(pn.scene, []).append(pn)
    return out
