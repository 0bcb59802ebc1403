"""TGS Salt Identification Challenge: one salt mask per 101x101 seismic image, column-major RLE, IoU-precision metric.

Facts this adapter relies on (checked on the real training files in ../shared/fixtures/tgs and public copies of
the competition data; ../shared/notes/formats.md):
- Images are 101x101 PNGs stored as 8-bit RGB with three equal channels (read as RGB, 3 bands, so a pretrained
  3-band encoder takes them as they are).
- Masks are 101x101 PNGs, 16-bit grey with values {0, 65535}; an empty mask is stored as 8-bit zeros: binarised
  with `> 0` at their stored depth.
- train.csv is `id,rle_mask`; ids are 10 hex digits (`575d24d81d`), an empty mask is a blank field (about 40 %
  of the rows). RLE: 1-indexed `start length` pairs, **column-major** (every real row decodes with order F to its
  PNG; row-major matches only the empty and symmetric masks). A run may end exactly on pixel 10,201
  (`a266a2a9df,5051 5151`: columns 50-100 all salt).
- depths.csv is `id,z` for the train and test images (22,000 rows); z (the depth) is kept in each sample's
  meta and not fed to the model.
- sample_submission.csv is `id,rle_mask`, one row per test image (18,000 rows); the submission is at 101x101.
- Metric: per image the share of IoU thresholds 0.50, 0.55 ... 0.95 that the mask's IoU exceeds (both empty = 1,
  one empty = 0), mean over images: segkit.evaluate.tgs_iou_from_counts, shared with the folder adapter's
  `metric: tgs_iou`.
- 101 has no factor 2: the model trains at data.image_size (128x128 in the tgs recipe; the cache resizes once)
  and predictions are resized back to the declared 101x101 submission size, as for every competition.

Layout:
    ROOT/train/images/<id>.png
    ROOT/train/masks/<id>.png      (optional when train.csv is used for the masks: data.options.masks: csv)
    ROOT/train.csv                 id,rle_mask
    ROOT/depths.csv                id,z (optional; checked when present)
    ROOT/test/images/<id>.png
    ROOT/sample_submission.csv     id,rle_mask: the test ids in submission order
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from segkit import rle
from segkit.data.competitions.base import Adapter, register_adapter
from segkit.data.competitions.kaggle_files import (
    check_files_exist, check_image_size, check_mask_shape, folder, image_size, read_table,
)
from segkit.data.sample import Sample
from segkit.errors import ConfigError, DataError
from segkit.submission import SubmissionFormat

TRAIN_CSV = "train.csv"
DEPTHS_CSV = "depths.csv"
SAMPLE_CSV = "sample_submission.csv"
REAL_SIZE = (101, 101)
MASK_MODES = ("auto", "png", "csv")
COVERAGE_BINS = 4  # strata: empty, then salt coverage in quarters (top solutions stratified folds by coverage)


def coverage_stratum(text: str, n_pixels: int) -> int:
    """0 for an empty mask, else 1..COVERAGE_BINS by the share of salt pixels (from the RLE's lengths, which
    are checked against the image's `n_pixels`: RLEError when malformed)."""
    _, lengths = rle.parse_runs(text, n_pixels)
    if lengths.size == 0:
        return 0
    share = float(lengths.sum()) / n_pixels
    return 1 + min(int(share * COVERAGE_BINS), COVERAGE_BINS - 1)


def read_mask_png(path: str | Path) -> np.ndarray:
    """A TGS mask PNG (16-bit {0, 65535} or 8-bit zeros) as uint8 {0, 1} (H, W), binarised with > 0."""
    import cv2

    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if Path(path).is_file() else None
    if mask is None:
        raise DataError(f"{path}: mask not found or not a readable PNG")
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    return (mask > 0).astype(np.uint8)


@register_adapter("tgs")
class TgsAdapter(Adapter):
    """TGS Salt: one class (salt), masks from train/masks/*.png or train.csv, scored with TGS' IoU precision.

    Options (config `data.options`):
      masks: "png" (train/masks/<id>.png), "csv" (train.csv decoded column-major) or "auto" (PNGs when the folder
        exists).
      train_dir, test_dir: folder names under the root (each holds images/, train also masks/).
    """

    classes = ("salt",)
    bands = 3
    # one row per image (10 hex digits), column-major RLE at 101x101
    submission_format = SubmissionFormat(header=("id", "rle_mask"), order="F", shape=REAL_SIZE, rows="image",
                                         id_pattern=r"[0-9a-f]{10}")
    # horizontal flips only: depth runs down the image, so a vertical flip or rotation is not a seismic image
    default_tta = ("identity", "hflip")

    def __init__(self, root: str | Path, masks: str = "auto", train_dir: str = "train", test_dir: str = "test") -> None:
        super().__init__(root)
        if masks not in MASK_MODES:
            raise ConfigError(f"data.options.masks: expected one of {', '.join(MASK_MODES)}, got {masks!r}")
        self.require_root()
        self.masks = masks
        self.train_dir, self.test_dir = train_dir, test_dir
        self._size: tuple[int, int] | None = None
        self._size_source = ""

    def _mask_mode(self) -> str:
        if self.masks != "auto":
            return self.masks
        return "png" if (self.root / self.train_dir / "masks").is_dir() else "csv"

    def _first_size(self, path: Path) -> None:
        if self._size is None:
            self._size, self._size_source = image_size(path), path.name

    def _check_size(self, path: str | Path, shape: tuple[int, int] | None = None) -> tuple[int, int]:
        if self._size is None:
            self._first_size(Path(path))
        return check_image_size(path, self._size, self._size_source, REAL_SIZE, shape)

    def depths(self) -> dict[str, float]:
        """{id: z} from depths.csv ({} when there is none); DataError naming the file on a bad header or value."""
        path = self.root / DEPTHS_CSV
        if not path.is_file():
            return {}
        table = read_table(path, ("id", "z"), "depth list")
        try:
            return {i: float(z) for i, z in zip(table["id"], table["z"])}
        except ValueError:
            bad = next(z for z in table["z"] if not _is_number(z))
            raise DataError(f"{path}: depth '{bad}' is not a number (expected id,z rows)") from None

    def train_samples(self) -> list[Sample]:
        """One sample per train.csv row, in its order; stratum = salt coverage (empty, then quarters)."""
        csv_path = self.root / TRAIN_CSV
        table = read_table(csv_path, ("id", "rle_mask"), "training mask list")
        ids = list(table["id"])
        dup = table["id"][table["id"].duplicated()]
        if len(dup):
            raise DataError(f"{csv_path}: id {dup.iloc[0]} has more than one row (one row per image)")
        images = folder(self.root / self.train_dir, "images", "training image")
        check_files_exist(images, [f"{i}.png" for i in ids], "training image (listed in train.csv)")
        mode = self._mask_mode()
        masks = folder(self.root / self.train_dir, "masks", "training mask") if mode == "png" else None
        if masks is not None:
            check_files_exist(masks, [f"{i}.png" for i in ids], "training mask (listed in train.csv)")
        depths = self.depths()
        if depths:
            missing = [i for i in ids if i not in depths]
            if missing:
                raise DataError(f"{self.root / DEPTHS_CSV}: no depth for training id(s) {', '.join(missing[:3])}")
        if not ids:
            raise DataError(f"{csv_path}: training mask list has no rows")
        self._first_size(images / f"{ids[0]}.png")
        n_pixels = self._size[0] * self._size[1]
        samples = []
        for i, text in zip(ids, table["rle_mask"]):
            mask_source = str(masks / f"{i}.png") if masks is not None else str(csv_path)
            meta = {"rle": text, "z": depths.get(i)}
            try:
                stratum = coverage_stratum(text, n_pixels)
            except rle.RLEError as exc:
                raise DataError(f"{csv_path}: id {i}: {exc} (image {self._size[0]}x{self._size[1]})") from None
            samples.append(Sample(i, (str(images / f"{i}.png"),), (mask_source,), group=i, stratum=stratum,
                                  meta=meta))
        return samples

    def sample_submission_path(self) -> Path:
        """sample_submission.csv, which lists the test ids in submission order."""
        return self.root / SAMPLE_CSV

    def test_samples(self) -> list[Sample]:
        """The ids of sample_submission.csv, in its order, with their test/images/<id>.png."""
        table = read_table(self.sample_submission_path(), self.submission_header, "sample submission")
        ids = list(table["id"])
        images = folder(self.root / self.test_dir, "images", "test image")
        check_files_exist(images, [f"{i}.png" for i in ids], "test image")
        depths = self.depths()
        return [Sample(i, (str(images / f"{i}.png"),), group=i, meta={"z": depths.get(i)}) for i in ids]

    def read_image(self, sample: Sample) -> np.ndarray:
        """(H, W, 3) uint8 as stored, checked to have the dataset's size."""
        image = super().read_image(sample)
        self._check_size(sample.image[0], image.shape[:2])
        return image

    def read_mask(self, sample: Sample) -> np.ndarray:
        """(H, W, 1) uint8 {0,1}: the PNG binarised with > 0, or the train.csv row decoded column-major at the
        image's size; checked against the image's size."""
        if not sample.mask:
            raise DataError(f"{sample.image[0]}: test image has no mask")
        shape = self._check_size(sample.image[0])
        source = sample.mask[0]
        if source.endswith(".png"):
            mask = read_mask_png(source)
            check_mask_shape(mask, shape, source, sample.image[0])
        else:
            try:
                mask = rle.decode(sample.meta["rle"], shape, order=self.rle_order)
            except rle.RLEError as exc:
                raise DataError(f"{source}: id {sample.id}: {exc}") from None
        return mask[..., None]

    def score_class(self, truth: np.ndarray, pred: np.ndarray) -> float:
        """TGS Salt's score: mean over images of the share of IoU thresholds 0.50-0.95 passed (both empty = 1)."""
        from segkit.evaluate import tgs_score  # lazy: evaluate imports scipy

        return tgs_score(truth, pred)

    def score_counts(self, inter: np.ndarray, pred_area: np.ndarray, true_area: np.ndarray) -> np.ndarray:
        """The same score from per-image counts (see Adapter.score_counts)."""
        from segkit.evaluate import tgs_iou_from_counts  # lazy: evaluate imports scipy

        return tgs_iou_from_counts(inter, pred_area, true_area)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
