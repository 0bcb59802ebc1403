"""SIIM-ACR Pneumothorax Segmentation: chest radiographs in DICOM, one binary mask per image, relative RLE.

Layout (the stage-1 download; stage-2 file names accepted too):
    ROOT/dicom-images-train/<study>/<series>/<ImageId>.dcm   nested folders; an image is found by its file stem
    ROOT/train-rle.csv (or stage_2_train.csv)                 ImageId,EncodedPixels; several rows per image
    ROOT/dicom-images-test/<study>/<series>/<ImageId>.dcm
    ROOT/stage_2_sample_submission.csv (or sample_submission.csv)   the test ids in submission order

Facts relied on (shared/notes/formats.md, pinned from public copies of the data and top solutions):
- DICOM 1024x1024, MONOCHROME2, 8-bit, pixel data JPEG-baseline compressed (transfer syntax 1.2.840.10008.1.2.4.50):
  pydicom decodes it through Pillow (pylibjpeg or GDCM also can); see segkit.data.dicom.
- The RLE is *relative* (segkit.rle scheme="relative"): the first start is the 0-based absolute index of the first
  foreground pixel (0 is legal), every later start the count of background pixels since the end of the previous run,
  lengths as usual; pixel order column-major (the official helpers run on the transposed mask); the accumulated end
  is bounded by the image (1024*1024), not each value. An empty mask is `-1`. The official helper's quirks (dropping
  a run that reaches the last pixel, foreground 255) are not ported.
- Stage-1 train-rle.csv has the header `ImageId, EncodedPixels` (a space after the comma) and a leading space in
  values; an image with several pneumothoraces has several rows: the training mask is their union.
- The submission is `ImageId,EncodedPixels`, one row per image (all predicted masks of an image combined), `-1` when
  empty; the stage-2 sample lists 3,205 ids `ID_` + 9 hex digits, all `-1`; stage 2 still used the relative scheme.
  Stage-1 ids (DICOM UIDs, `1.2.276.0.7230010.3.1.4.…`) are accepted as well.
- The metric is the mean over images of Dice, 1 when truth and prediction are both empty (the competition's
  evaluation page; the default Adapter.score_class).
Inferred, not checked on real files: the stage-2 file names (stage_2_train.csv, stage_2_sample_submission.csv) and
the study/series folder names (any nesting is searched).
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from segkit import rle
from segkit.data.competitions.base import Adapter, fraction_option, register_adapter
from segkit.data.competitions.kaggle_files import folder, ordered_unique, read_table
from segkit.data.dicom import dicom_size, find_dicoms, read_dicom
from segkit.data.sample import Sample
from segkit.errors import DataError
from segkit.submission import SubmissionFormat

TRAIN_CSVS = ("train-rle.csv", "stage_2_train.csv")
SAMPLE_CSVS = ("stage_2_sample_submission.csv", "sample_submission.csv")
HEADER = ("ImageId", "EncodedPixels")
SIZE = (1024, 1024)
ID_PATTERN = r"ID_[0-9a-fA-F]{9}|[0-9]+(\.[0-9]+)+"  # stage 2: ID_ + 9 hex; stage 1: the DICOM UID


@register_adapter("siim")
class SiimAdapter(Adapter):
    """SIIM-ACR: one greyscale band (uint8 from the DICOM pixels), one class; masks are the union of an image's rows.

    Options (config `data.options`):
      empty_fraction: share of pneumothorax-free training images to keep (most real images have none); chosen by
        a hash of the image id, so the subset is stable.
      train_dir, test_dir: the DICOM folders under the root (searched recursively).
      train_csv, sample: file names under the root (default: the first of the known names that exists).
    """

    classes = ("pneumothorax",)
    bands = 1
    # one row per image, column-major relative RLE at 1024x1024, `-1` for an empty mask; ids: stage 2's or stage 1's
    submission_format = SubmissionFormat(header=HEADER, order="F", shape=SIZE, rows="image", scheme="relative",
                                         id_pattern=ID_PATTERN)
    default_tta = ("identity", "hflip")  # a radiograph is left-right mirrored at most, never upside down

    def __init__(self, root: str | Path, empty_fraction: float = 1.0, train_dir: str = "dicom-images-train",
                 test_dir: str = "dicom-images-test", train_csv: str = "", sample: str = "") -> None:
        super().__init__(root)
        self.empty_fraction = fraction_option(empty_fraction)
        self.require_root()
        self.train_dir, self.test_dir = train_dir, test_dir
        self.train_csv, self.sample = train_csv, sample

    def score_class(self, truth: np.ndarray, pred: np.ndarray) -> float:
        """SIIM-ACR's score: mean Dice over images (both empty = 1).
        The Adapter default (score_counts too); overridden only to name the metric."""
        return super().score_class(truth, pred)

    def _first_existing(self, given: str, names: tuple[str, ...], what: str) -> Path:
        for name in (given,) if given else names:
            if (self.root / name).is_file():
                return self.root / name
        raise DataError(f"{self.root / (given or names[0])}: {what} not found"
                        + ("" if given else f" (nor {', '.join(names[1:])})"))

    def train_samples(self) -> list[Sample]:
        """One sample per image of the training CSV (in its order) with the RLEs of all its rows; images whose rows
        are all `-1` have none. Stratum = number of rows with runs (0, 1, 2+)."""
        csv_path = self._first_existing(self.train_csv, TRAIN_CSVS, "training RLE list")
        table = read_table(csv_path, HEADER, "training RLE list")
        runs: dict[str, list[str]] = {}
        for image, text in zip(table["ImageId"], table["EncodedPixels"]):
            if not image:
                raise DataError(f"{csv_path}: a row without ImageId")
            runs.setdefault(image, [])
            if text and text != rle.EMPTY["relative"]:
                runs[image].append(text)
        files = find_dicoms(folder(self.root, self.train_dir, "training DICOM"), "training image")
        keep = [i for i, texts in runs.items() if texts or self._keep_empty(i)]
        _check_found(self.root / self.train_dir, keep, files, "training image")
        return [Sample(i, (str(files[i]),), (str(csv_path),), group=i, stratum=min(len(runs[i]), 2),
                       meta={"rle": tuple(runs[i])}) for i in keep]

    def _keep_empty(self, image_id: str) -> bool:
        return zlib.crc32(image_id.encode()) / 2**32 < self.empty_fraction

    def sample_submission_path(self) -> Path:
        """The sample submission (stage 2's when present): one row per test image, in submission order."""
        return self._first_existing(self.sample, SAMPLE_CSVS, "sample submission")

    def test_samples(self) -> list[Sample]:
        """The images of the sample submission, in its order, found by id under the test DICOM folder."""
        table = read_table(self.sample_submission_path(), HEADER, "sample submission")
        images = ordered_unique(table["ImageId"])
        files = find_dicoms(folder(self.root, self.test_dir, "test DICOM"), "test image")
        _check_found(self.root / self.test_dir, images, files, "test image")
        return [Sample(i, (str(files[i]),), group=i) for i in images]

    def read_image(self, sample: Sample) -> np.ndarray:
        """(H, W, 1) uint8: the DICOM pixels, decoded through pydicom."""
        return read_dicom(sample.image[0])[..., None]

    def stored_size(self, sample: Sample) -> tuple[int, int]:
        """(H, W) = the DICOM's (Rows, Columns), from its header."""
        return dicom_size(sample.image[0])

    def read_mask(self, sample: Sample) -> np.ndarray:
        """(H, W, 1) uint8 {0,1}: the union of the image's rows, each decoded column-major with relative starts
        at the image's size."""
        if "rle" not in sample.meta:
            raise DataError(f"{sample.image[0]}: test image has no mask")
        shape = self.stored_size(sample)
        mask = np.zeros(shape, np.uint8)
        for k, text in enumerate(sample.meta["rle"], start=1):
            try:
                mask |= rle.decode(text, shape, order=self.rle_order, scheme=self.submission_format.scheme)
            except rle.RLEError as exc:
                raise DataError(f"{sample.mask[0]}: {sample.id}, row {k} of the image: {exc}") from None
        return mask[..., None]


def _check_found(where: Path, ids: list[str], files: dict[str, Path], what: str) -> None:
    """DataError naming the first ids that have no `<id>.dcm` under `where`."""
    missing = [i for i in ids if i not in files]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"{where}: no {what} file {', '.join(m + '.dcm' for m in missing[:3])}{more} "
                        f"(searched every sub-folder)")
