"""Carvana Image Masking Challenge: one car per image, row-major RLE at 1918x1280.

Layout:
    ROOT/train/<car>_<view>.jpg           RGB, 1918x1280 (16 views per car)
    ROOT/train_masks/<car>_<view>_mask.gif  and/or  ROOT/train_masks.csv (img,rle_mask; row-major)
    ROOT/test/<car>_<view>.jpg
    ROOT/sample_submission.csv            (img,rle_mask): the test list, in submission order
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from segkit import rle
from segkit.data.competitions.base import Adapter, dice_from_counts, register_adapter
from segkit.data.competitions.kaggle_files import (
    check_files_exist, check_mask_shape, folder, image_size, list_images, read_table,
)
from segkit.data.io import read_image
from segkit.data.sample import Sample
from segkit.errors import ConfigError, DataError
from segkit.submission import SubmissionFormat

MASKS_CSV = "train_masks.csv"
SAMPLE_CSV = "sample_submission.csv"
MASK_MODES = ("auto", "gif", "csv")


@register_adapter("carvana")
class CarvanaAdapter(Adapter):
    """Carvana: binary car masks, grouped by car so no car's views straddle a fold split.

    Options (config `data.options`):
      masks: "gif" (train_masks/*_mask.gif), "csv" (train_masks.csv), or "auto" (GIFs when the folder exists).
      train_dir, test_dir, masks_dir: folder names under the root.
    """

    classes = ("car",)
    bands = 3
    # one row per image `<car>_<view>.jpg`, row-major RLE at full resolution (every image is 1918x1280)
    submission_format = SubmissionFormat(header=("img", "rle_mask"), order="C", shape=(1280, 1918),
                                         id_suffix=".jpg")
    default_tta = ("identity", "hflip")

    def __init__(self, root: str | Path, masks: str = "auto", train_dir: str = "train", test_dir: str = "test",
                 masks_dir: str = "train_masks") -> None:
        super().__init__(root)
        if masks not in MASK_MODES:
            raise ConfigError(f"data.options.masks: expected one of {', '.join(MASK_MODES)}, got {masks!r}")
        self.require_root()
        self.masks = masks
        self.train_dir, self.test_dir, self.masks_dir = train_dir, test_dir, masks_dir

    @staticmethod
    def car_id(image_name: str) -> str:
        """The car of an image name `<car>_<view>.jpg`."""
        return Path(image_name).stem.rsplit("_", 1)[0]

    def _mask_mode(self) -> str:
        if self.masks != "auto":
            return self.masks
        return "gif" if (self.root / self.masks_dir).is_dir() else "csv"

    def train_samples(self) -> list[Sample]:
        """Every training image with its mask source (GIF file or train_masks.csv row), grouped by car."""
        images = list_images(folder(self.root, self.train_dir, "training image"))
        if not images:
            raise DataError(f"{self.root / self.train_dir}: no training images")
        mode = self._mask_mode()
        samples = []
        if mode == "gif":
            masks_folder = folder(self.root, self.masks_dir, "training mask")
            names = [f"{p.stem}_mask.gif" for p in images]
            check_files_exist(masks_folder, names, "mask")
            for p, name in zip(images, names):
                samples.append(Sample(p.name, (str(p),), (str(masks_folder / name),), group=self.car_id(p.name)))
        else:
            csv_path = self.root / MASKS_CSV
            table = read_table(csv_path, ("img", "rle_mask"), "training mask list")
            runs = dict(zip(table["img"], table["rle_mask"]))
            missing = [p.name for p in images if p.name not in runs]
            if missing:
                raise DataError(f"{csv_path}: no row for training image(s) {', '.join(missing[:3])}")
            for p in images:
                samples.append(Sample(p.name, (str(p),), (str(csv_path),), group=self.car_id(p.name),
                                      meta={"rle": runs[p.name]}))
        return samples

    def sample_submission_path(self) -> Path:
        """sample_submission.csv, which lists the test images in submission order."""
        return self.root / SAMPLE_CSV

    def test_samples(self) -> list[Sample]:
        """The images of sample_submission.csv, in its order."""
        table = read_table(self.sample_submission_path(), self.submission_header, "sample submission")
        test_folder = folder(self.root, self.test_dir, "test image")
        names = list(table["img"])
        check_files_exist(test_folder, names, "test image")
        return [Sample(n, (str(test_folder / n),), group=self.car_id(n)) for n in names]

    def read_mask(self, sample: Sample) -> np.ndarray:
        """(H, W, 1) uint8 {0,1}: the GIF binarised (> 0), or the CSV row decoded row-major at the image size."""
        if not sample.mask:
            raise DataError(f"{sample.image[0]}: test image has no mask")
        shape = image_size(sample.image[0])
        if "rle" in sample.meta:
            try:
                mask = rle.decode(sample.meta["rle"], shape, order=self.rle_order)
            except rle.RLEError as exc:
                raise DataError(f"{sample.mask[0]}: row {sample.id}: {exc}") from None
        else:
            mask = (read_image(sample.mask[0], grayscale=True) > 0).astype(np.uint8)
            check_mask_shape(mask, shape, sample.mask[0], sample.image[0])
        return mask[..., None]

    def score_class(self, truth: np.ndarray, pred: np.ndarray) -> float:
        """Carvana's score: mean Dice over images (both empty = 1)."""
        from segkit.evaluate import carvana_score  # lazy: evaluate imports scipy

        return carvana_score(truth, pred)

    def score_counts(self, inter: np.ndarray, pred_area: np.ndarray, true_area: np.ndarray) -> np.ndarray:
        """The same mean Dice from per-image counts (see Adapter.score_counts)."""
        return dice_from_counts(inter, pred_area, true_area)
