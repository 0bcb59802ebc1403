"""Understanding Clouds from Satellite Images: four cloud patterns, multi-label, column-major RLE.

Layout:
    ROOT/train_images/<id>.jpg      RGB, 2100x1400
    ROOT/train.csv                  Image_Label,EncodedPixels; Image_Label = <id>.jpg_<Label>; RLE at the
                                    image's size (1400x2100), column-major; an absent label is a blank field
    ROOT/test_images/<id>.jpg
    ROOT/sample_submission.csv      Image_Label,EncodedPixels: 4 rows per test image, in submission order
Submissions are at 350x525 (a quarter of each side).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from segkit.data.competitions.base import Adapter, decode_planes, dice_from_counts, register_adapter
from segkit.data.competitions.kaggle_files import check_files_exist, folder, image_size, ordered_unique, read_table
from segkit.data.sample import Sample
from segkit.errors import DataError
from segkit.submission import SubmissionFormat

TRAIN_CSV = "train.csv"
SAMPLE_CSV = "sample_submission.csv"
LABELS = ("Fish", "Flower", "Gravel", "Sugar")


def split_image_label(value: str, where: str) -> tuple[str, str]:
    """`<id>.jpg_<Label>` -> (`<id>.jpg`, Label), checking the label."""
    image, sep, label = value.rpartition("_")
    if not sep or label not in LABELS:
        raise DataError(f"{where}: '{value}' is not <image>_<label> with a label of {', '.join(LABELS)}")
    return image, label


@register_adapter("clouds")
class CloudsAdapter(Adapter):
    """Understanding Clouds: masks (H, W, 4) in label order Fish, Flower, Gravel, Sugar (sigmoid per label).

    The model trains at `data.image_size` (the cache downsizes once); submissions are written at 350x525.
    Options: train_dir, test_dir (folder names under the root).
    """

    classes = LABELS
    bands = 3
    # one row per image and label `<id>.jpg_<Label>`, column-major RLE at 350x525 (a quarter of each side)
    submission_format = SubmissionFormat(header=("Image_Label", "EncodedPixels"), order="F", shape=(350, 525),
                                         rows="label", labels=LABELS, id_suffix=".jpg")
    default_tta = ("identity", "hflip", "vflip")

    def __init__(self, root: str | Path, train_dir: str = "train_images", test_dir: str = "test_images") -> None:
        super().__init__(root)
        self.require_root()
        self.train_dir, self.test_dir = train_dir, test_dir

    def train_samples(self) -> list[Sample]:
        """One sample per image of train.csv with its four RLEs; stratum = which labels are present (0..15)."""
        csv_path = self.root / TRAIN_CSV
        table = read_table(csv_path, self.submission_header, "training label list")
        runs: dict[str, dict[str, str]] = {}
        for value, text in zip(table["Image_Label"], table["EncodedPixels"]):
            image, label = split_image_label(value, str(csv_path))
            runs.setdefault(image, {})[label] = text
        train_folder = folder(self.root, self.train_dir, "training image")
        check_files_exist(train_folder, list(runs), "training image")
        samples = []
        for image, by_label in runs.items():
            texts = tuple(by_label.get(label, "") for label in LABELS)
            present = sum(1 << i for i, t in enumerate(texts) if t)
            samples.append(Sample(image, (str(train_folder / image),), (str(csv_path),), group=image,
                                  stratum=present, meta={"rle": texts}))
        return samples

    def sample_submission_path(self) -> Path:
        """sample_submission.csv: four rows per test image, in submission order."""
        return self.root / SAMPLE_CSV

    def test_samples(self) -> list[Sample]:
        """The images of sample_submission.csv, in its order."""
        path = self.sample_submission_path()
        table = read_table(path, self.submission_header, "sample submission")
        images = ordered_unique(split_image_label(v, str(path))[0] for v in table["Image_Label"])
        test_folder = folder(self.root, self.test_dir, "test image")
        check_files_exist(test_folder, images, "test image")
        return [Sample(i, (str(test_folder / i),), group=i) for i in images]

    def read_mask(self, sample: Sample) -> np.ndarray:
        """(H, W, 4) uint8 {0,1}: each label's RLE decoded column-major at the image's size."""
        if "rle" not in sample.meta:
            raise DataError(f"{sample.image[0]}: test image has no mask")
        shape = image_size(sample.image[0])
        return decode_planes(sample.meta["rle"], shape, self.rle_order, sample.mask[0],
                             [f"{sample.id}_{label}" for label in LABELS])

    def score_class(self, truth: np.ndarray, pred: np.ndarray) -> float:
        """Understanding Clouds' score for one label: mean Dice over images (both empty = 1)."""
        from segkit.evaluate import carvana_score  # lazy: evaluate imports scipy

        return carvana_score(truth, pred)

    def score_counts(self, inter: np.ndarray, pred_area: np.ndarray, true_area: np.ndarray) -> np.ndarray:
        """The same mean Dice from per-image counts (see Adapter.score_counts)."""
        return dice_from_counts(inter, pred_area, true_area)
