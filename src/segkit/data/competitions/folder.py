"""Any folder of images and masks (Oxford-IIIT Pet trimaps, iSAID semantic masks, the Weizmann database ...).

Layout:
    ROOT/images/<name>.<jpg|png|tif>
    ROOT/masks/<name>.png             one grey value per class (0 = background), or
    ROOT/masks/<class>/<name>.png     one binary mask per class (nonzero = class)
    ROOT/test/<name>.<ext>            optional: images to predict
A mask is matched to its image by file stem. Submissions have one row per image (`<stem>`) for one class, or
one row per image and class (`<stem>_<class>`) for several, RLE at the image's own size.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from segkit import rle
from segkit.data.competitions.base import Adapter, dice_from_counts, register_adapter
from segkit.data.competitions.kaggle_files import IMAGE_EXTENSIONS, check_mask_shape, image_size, list_images
from segkit.data.io import read_image
from segkit.data.sample import Sample
from segkit.errors import ConfigError, DataError, unknown_name
from segkit.submission import SubmissionFormat


def read_any(path: str | Path) -> np.ndarray:
    """An image as stored: (H, W, bands) with grey kept as one band, 16-bit kept as uint16, colour as RGB(A)."""
    import cv2

    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff", ".gif"):
        image = read_image(path)
    else:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.is_file() else None
        if image is None:
            image = read_image(path)  # raises DataError naming the file
        elif image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return image[..., None] if image.ndim == 2 else image


METRICS = ("dice", "tgs_iou")


@register_adapter("folder")
class FolderAdapter(Adapter):
    """images/ + masks/ in either mask layout; the classes and bands are found from the files.

    Options (config `data.options`):
      classes: class names. Grey-value masks: with `values`, names for them; without, names for the non-zero
        grey values found (sorted). Sub-folder masks: which sub-folders, in this order (default: all, sorted).
      values: grey value of each class in grey-value masks (e.g. [1, 3] for Pet trimaps' pet and border);
        default: every non-zero value found in the masks (read once when the adapter is made).
      images_dir, masks_dir, test_dir: folder names under the root.
      rle_order: "F" (Kaggle's usual column-major) or "C".
      metric: what post-processing is tuned on, per class: "dice" (mean Dice over images, default) or "tgs_iou"
        (TGS Salt's mean over images of the share of IoU thresholds 0.50-0.95 passed).
    """

    # each image's own size; the instance sets the pixel order and, for several classes, `<stem>_<class>` rows
    submission_format = SubmissionFormat(header=("id", "EncodedPixels"), order="F", shape=None)
    default_tta = ("identity", "hflip")

    def __init__(self, root: str | Path, classes: list[str] | None = None, values: list[int] | None = None,
                 images_dir: str = "images", masks_dir: str = "masks", test_dir: str = "test",
                 rle_order: str = "F", metric: str = "dice") -> None:
        super().__init__(root)
        if rle_order not in rle.ORDERS:
            raise ConfigError(f"data.options.rle_order: expected 'F' or 'C', got {rle_order!r}")
        if metric not in METRICS:
            raise unknown_name("data.options.metric", "metric", metric, METRICS)
        self.metric = metric
        self.images_dir = self.root / images_dir
        self.masks_dir = self.root / masks_dir
        self.test_dir = self.root / test_dir
        if not self.images_dir.is_dir():
            raise DataError(f"{self.images_dir}: images folder not found")
        self._images = list_images(self.images_dir)
        if not self._images:
            raise DataError(f"{self.images_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.bands = self._bands_of(self._images[0])
        self.layout = self._find_layout()
        if self.layout == "folders":
            found = sorted(p.name for p in self.masks_dir.iterdir() if p.is_dir())
            wanted = list(classes) if classes else found
            unknown = [c for c in wanted if c not in found]
            if unknown:
                raise ConfigError(f"data.options.classes: no mask sub-folder {', '.join(unknown)} in {self.masks_dir} "
                                  f"(has {', '.join(found)})")
            if values is not None:
                raise ConfigError("data.options.values: only for grey-value masks; these masks are in sub-folders")
            self.classes = tuple(wanted)
            self.values: tuple[int, ...] = ()
        else:
            if values is None:
                values = self._scan_values()
            values = [int(v) for v in values]
            if not values or any(not 0 < v < 65536 for v in values) or len(set(values)) != len(values):
                raise ConfigError(f"data.options.values: expected distinct grey values > 0, got {values!r}")
            if classes is not None and len(classes) != len(values):
                raise ConfigError(f"data.options.classes: {len(classes)} names for {len(values)} grey values {values}")
            self.values = tuple(values)
            default_names = ("foreground",) if len(values) == 1 else tuple(f"class_{v}" for v in values)
            self.classes = tuple(classes) if classes else default_names
        several = len(self.classes) > 1
        self.submission_format = dataclasses.replace(
            type(self).submission_format, order=rle_order, rows="label" if several else "image",
            labels=self.classes if several else ())

    # --- layout --------------------------------------------------------------------------
    @staticmethod
    def _bands_of(path: Path) -> int:
        image = read_any(path)
        return image.shape[2]

    def _find_layout(self) -> str:
        if not self.masks_dir.is_dir():
            raise DataError(f"{self.masks_dir}: masks folder not found")
        if any(p.is_dir() for p in self.masks_dir.iterdir()):
            return "folders"
        return "values"

    def _mask_file(self, folder: Path, stem: str) -> Path | None:
        for ext in (".png", ".gif", ".tif", ".tiff", ".bmp", ".jpg"):
            p = folder / f"{stem}{ext}"
            if p.is_file():
                return p
        return None

    def _scan_values(self) -> list[int]:
        found: set[int] = set()
        for p in self.masks_dir.iterdir():
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                found.update(int(v) for v in np.unique(self._read_grey(p)))
        found.discard(0)
        if not found:
            raise DataError(f"{self.masks_dir}: every mask is empty (all zero); give data.options.values")
        return sorted(found)

    @staticmethod
    def _read_grey(path: Path) -> np.ndarray:
        import cv2

        grey = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # keeps 16-bit values and palette indices as grey
        if grey is None:
            return read_image(path, grayscale=True)
        if grey.ndim == 3:
            if not (grey[..., :1] == grey).all():
                raise DataError(f"{path}: colour mask; expected one grey value per class")
            grey = grey[..., 0]
        return grey

    # --- samples -------------------------------------------------------------------------
    def train_samples(self) -> list[Sample]:
        """Every image with its mask file(s); an image without a mask is an error naming it."""
        samples = []
        for p in self._images:
            if self.layout == "folders":
                files = [self._mask_file(self.masks_dir / c, p.stem) for c in self.classes]
            else:
                files = [self._mask_file(self.masks_dir, p.stem)]
            if any(f is None for f in files):
                raise DataError(f"{self.masks_dir}: no mask for image {p.name} (expected a file named {p.stem}.png)")
            samples.append(Sample(p.stem, (str(p),), tuple(str(f) for f in files), group=p.stem))
        return samples

    def test_samples(self) -> list[Sample]:
        """Images of the test folder, sorted by name (none when there is no test folder)."""
        if not self.test_dir.is_dir():
            return []
        return [Sample(p.stem, (str(p),), group=p.stem) for p in list_images(self.test_dir)]

    def read_image(self, sample: Sample) -> np.ndarray:
        """(H, W, bands) in the stored dtype."""
        image = read_any(sample.image[0])
        if image.shape[2] != self.bands:
            raise DataError(f"{sample.image[0]}: {image.shape[2]} bands, but {self._images[0].name} has {self.bands}")
        return image

    # --- scoring -------------------------------------------------------------------------
    def score_class(self, truth: np.ndarray, pred: np.ndarray) -> float:
        """data.options.metric over a stack of masks (N, H, W): mean Dice (both empty = 1) or TGS' IoU precision."""
        n = len(truth)
        t = truth.reshape(n, -1).astype(bool)
        p = pred.reshape(n, -1).astype(bool)
        return float(self.score_counts((t & p).sum(1), p.sum(1), t.sum(1)))

    def score_counts(self, inter: np.ndarray, pred_area: np.ndarray, true_area: np.ndarray) -> np.ndarray:
        """score_class from per-image counts (see Adapter.score_counts)."""
        from segkit.evaluate import tgs_iou_from_counts  # lazy: evaluate imports scipy

        fn = tgs_iou_from_counts if self.metric == "tgs_iou" else dice_from_counts
        return fn(inter, pred_area, true_area)

    def read_mask(self, sample: Sample) -> np.ndarray:
        """(H, W, classes) uint8 {0,1}, checked against the image's size."""
        if not sample.mask:
            raise DataError(f"{sample.image[0]}: test image has no mask")
        if self.layout == "folders":
            planes = [(self._read_grey(Path(f)) > 0) for f in sample.mask]
        else:
            grey = self._read_grey(Path(sample.mask[0]))
            planes = [grey == v for v in self.values]
        mask = np.stack(planes, axis=-1).astype(np.uint8)
        check_mask_shape(mask, image_size(sample.image[0]), sample.mask[0], sample.image[0])
        return mask

