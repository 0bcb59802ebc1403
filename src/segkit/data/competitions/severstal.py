"""Severstal: Steel Defect Detection: four defect classes on steel strip images, column-major RLE per class.

Facts this adapter relies on (checked on public copies of the competition data; ../shared/notes/formats.md):
- Images are JPEGs of (H, W) = (256, 1600), stored with three channels; classes are ClassId 1-4.
- RLE: `start length` pairs, 1-indexed, column-major (numpy "F", top to bottom, then right) over the image,
  pairs sorted and disjoint; an absent class is a blank field.
- train.csv comes in two real forms, both read here to the same masks:
    competition period  `ImageId_ClassId,EncodedPixels`: 4 rows per image, ids `0002cc93b.jpg_1` ... `_4`,
                        blank when the class is absent;
    current download    `ImageId,ClassId,EncodedPixels`: one row per image and present class (all regions of
                        one class share one RLE; 7,095 rows over 6,666 images); defect-free images are absent.
  So the training images are the files of train_images/, and an image without a row is defect-free.
- The competition-period sample_submission.csv is `ImageId_ClassId,EncodedPixels`, 4 rows per test image (values
  `1 1`); the submission follows the header of the sample given. The current download's sample layout was not
  seen: a sample with another header is refused, naming the header found.
- Image ids are nine hex digits + ".jpg" (`0002cc93b.jpg`).
- Metric: mean Dice over (image, class) pairs, both empty = 1 (per class: mean Dice over images; every class has
  the same images, so the mean over classes is the mean over pairs).
- Defects of different classes rarely overlap; the masks are kept as four independent planes (sigmoid per class).

Layout:
    ROOT/train_images/<id>.jpg     256x1600
    ROOT/train.csv                 either form above
    ROOT/test_images/<id>.jpg
    ROOT/sample_submission.csv     ImageId_ClassId,EncodedPixels: 4 rows per test image, in submission order
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from segkit.data.competitions.base import Adapter, decode_planes, register_adapter
from segkit.data.competitions.kaggle_files import (
    check_files_exist, check_image_size, folder, image_size, list_images, ordered_unique, read_table,
)
from segkit.data.sample import Sample
from segkit.errors import DataError
from segkit.submission import SubmissionFormat

TRAIN_CSV = "train.csv"
SAMPLE_CSV = "sample_submission.csv"
CLASSES = ("1", "2", "3", "4")
PERIOD_HEADER = ("ImageId_ClassId", "EncodedPixels")
LONG_HEADER = ("ImageId", "ClassId", "EncodedPixels")
REAL_SIZE = (256, 1600)


def read_train_csv(path: Path) -> dict[str, dict[str, str]]:
    """{image: {class: rle}} from train.csv in either real form (only present classes kept); DataError naming
    the file and line for an unknown header, a bad class, a duplicate row or a period-form image lacking rows."""
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path}: training label list not found")
    try:
        header = tuple(c.strip() for c in pd.read_csv(path, nrows=0).columns)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: training label list is not a readable CSV ({exc})") from None
    if set(LONG_HEADER) <= set(header):
        table = read_table(path, LONG_HEADER, "training label list")
        pairs = zip(table["ImageId"], table["ClassId"], table["EncodedPixels"])
        form = "ImageId,ClassId,EncodedPixels"
    elif set(PERIOD_HEADER) <= set(header):
        table = read_table(path, PERIOD_HEADER, "training label list")
        pairs = (_split_period_id(v, path, i) + (t,)
                 for i, (v, t) in enumerate(zip(table["ImageId_ClassId"], table["EncodedPixels"])))
        form = "ImageId_ClassId,EncodedPixels"
    else:
        raise DataError(f"{path}: header is {','.join(header) or '(empty)'}; expected Severstal's "
                        f"{','.join(PERIOD_HEADER)} (competition period) or {','.join(LONG_HEADER)} (current download)")
    runs: dict[str, dict[str, str]] = {}
    listed: dict[str, set[str]] = {}
    for i, (image, class_id, text) in enumerate(pairs):
        if class_id not in CLASSES:
            raise DataError(f"{path}, line {i + 2}: ClassId '{class_id}' of {image}; expected one of "
                            f"{', '.join(CLASSES)}")
        seen = listed.setdefault(image, set())
        if class_id in seen:
            raise DataError(f"{path}, line {i + 2}: a second row for {image} class {class_id}; one row per image "
                            f"and class ({form})")
        seen.add(class_id)
        by_class = runs.setdefault(image, {})
        if text:
            by_class[class_id] = text
    if form.startswith("ImageId_ClassId"):
        for image, seen in listed.items():
            if len(seen) != len(CLASSES):
                lacking = [c for c in CLASSES if c not in seen]
                raise DataError(f"{path}: {image} lacks rows for class(es) {', '.join(lacking)}; the "
                                f"{form} form has 4 rows per image")
    return runs


def _split_period_id(value: str, path: Path, i: int) -> tuple[str, str]:
    image, sep, class_id = value.rpartition("_")
    if not sep or not image:
        raise DataError(f"{path}, line {i + 2}: '{value}' is not <image>_<ClassId> (e.g. 0002cc93b.jpg_1)")
    return image, class_id


@register_adapter("severstal")
class SeverstalAdapter(Adapter):
    """Severstal: masks (H, W, 4) in ClassId order 1-4, one sigmoid plane per class.

    All images of a dataset share one size (256x1600 in the real data; synthetic sets may be smaller); an image
    of another size is refused, so an RLE is never decoded at the wrong size. Submissions are at 256x1600.
    Options: train_dir, test_dir (folder names under the root).
    """

    classes = CLASSES
    bands = 3
    # one row per image and class `<id>.jpg_<ClassId>`, column-major RLE at 256x1600
    submission_format = SubmissionFormat(header=PERIOD_HEADER, order="F", shape=REAL_SIZE, rows="label",
                                         labels=CLASSES, id_suffix=".jpg", id_pattern=r"[0-9a-f]{9}\.jpg")
    default_tta = ("identity", "hflip", "vflip")

    def __init__(self, root: str | Path, train_dir: str = "train_images", test_dir: str = "test_images") -> None:
        super().__init__(root)
        self.require_root()
        self.train_dir, self.test_dir = train_dir, test_dir
        self._size: tuple[int, int] | None = None
        self._size_source = ""

    def dataset_size(self) -> tuple[int, int]:
        """(H, W) every image of this dataset has: the first training image's (256x1600 in the real data)."""
        if self._size is None:
            images = list_images(folder(self.root, self.train_dir, "training image"))
            if not images:
                raise DataError(f"{self.root / self.train_dir}: no training images")
            self._size, self._size_source = image_size(images[0]), images[0].name
        return self._size

    def _check_size(self, path: str | Path, shape: tuple[int, int] | None = None) -> tuple[int, int]:
        return check_image_size(path, self.dataset_size(), self._size_source, REAL_SIZE, shape)

    def train_samples(self) -> list[Sample]:
        """Every image of train_images/ with its four RLEs from train.csv (blank = class absent; an image without
        rows is defect-free); stratum = which classes are present (0..15)."""
        csv_path = self.root / TRAIN_CSV
        runs = read_train_csv(csv_path)
        train_folder = folder(self.root, self.train_dir, "training image")
        check_files_exist(train_folder, list(runs), "training image (listed in train.csv)")
        samples = []
        for p in list_images(train_folder):
            by_class = runs.get(p.name, {})
            texts = tuple(by_class.get(c, "") for c in CLASSES)
            present = sum(1 << i for i, t in enumerate(texts) if t)
            samples.append(Sample(p.name, (str(p),), (str(csv_path),), group=p.name, stratum=present,
                                  meta={"rle": texts}))
        if not samples:
            raise DataError(f"{train_folder}: no training images")
        return samples

    def sample_submission_path(self) -> Path:
        """sample_submission.csv: four rows per test image, in submission order."""
        return self.root / SAMPLE_CSV

    def test_samples(self) -> list[Sample]:
        """The images of sample_submission.csv, in its order (its header must be ImageId_ClassId,EncodedPixels)."""
        path = self.sample_submission_path()
        table = read_table(path, (), "sample submission")
        if tuple(table.columns) != PERIOD_HEADER:
            raise DataError(f"{path}: header is {','.join(table.columns)}; segkit writes Severstal submissions as "
                            f"the competition-period sample, {','.join(PERIOD_HEADER)} with 4 rows per image "
                            f"(<id>.jpg_1 ... _4): give that sample")
        fmt = self.submission_format
        images = []
        for i, value in enumerate(table["ImageId_ClassId"]):
            split = fmt.split_label(value)
            if split is None:
                raise DataError(f"{path}, line {i + 2}: '{value}' is not <image>_<ClassId> with ClassId 1-4")
            images.append(split[0])
        images = ordered_unique(images)
        test_folder = folder(self.root, self.test_dir, "test image")
        check_files_exist(test_folder, images, "test image")
        return [Sample(i, (str(test_folder / i),), group=i) for i in images]

    def read_image(self, sample: Sample) -> np.ndarray:
        """(H, W, 3) uint8, checked to have the dataset's size."""
        image = super().read_image(sample)
        self._check_size(sample.image[0], image.shape[:2])
        return image

    def read_mask(self, sample: Sample) -> np.ndarray:
        """(H, W, 4) uint8 {0,1}: each class's RLE decoded column-major at the image's size."""
        if "rle" not in sample.meta:
            raise DataError(f"{sample.image[0]}: test image has no mask")
        shape = self._check_size(sample.image[0])
        try:
            return decode_planes(sample.meta["rle"], shape, self.rle_order, sample.mask[0],
                                 [f"{sample.id} class {class_id}" for class_id in CLASSES])
        except DataError as exc:
            if tuple(shape) == REAL_SIZE or not self._fits_real_size(sample):
                raise
            raise DataError(f"{sample.image[0]}: image is {shape[0]}x{shape[1]}, not Severstal's "
                            f"{REAL_SIZE[0]}x{REAL_SIZE[1]}, so its mask's RLE does not fit it ({exc}); use the "
                            "competition's images as they are") from None

    def _fits_real_size(self, sample: Sample) -> bool:
        """Whether the sample's RLEs decode at the real images' size (then a wrong image size is to blame)."""
        try:
            decode_planes(sample.meta["rle"], REAL_SIZE, self.rle_order, sample.mask[0], list(CLASSES))
        except DataError:
            return False
        return True

    def score_class(self, truth: np.ndarray, pred: np.ndarray) -> float:
        """Severstal's score for one defect class: mean Dice over images (both empty = 1).
        The Adapter default (score_counts too); overridden only to name the metric."""
        return super().score_class(truth, pred)
