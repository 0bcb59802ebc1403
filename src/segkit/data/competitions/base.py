"""What every competition adapter provides, and the registry that finds adapters by name."""
from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from typing import Callable, ClassVar, Iterator, Mapping, Sequence

import numpy as np

from segkit import rle
from segkit.data.competitions.kaggle_files import image_size
from segkit.data.io import read_image
from segkit.data.sample import Sample
from segkit.errors import ConfigError, DataError, SubmissionError, check_kwargs, unknown_name
from segkit.submission import SubmissionCheck, SubmissionFormat, validate
from segkit.tiling import ImageCanvas


class Adapter:
    """Reads one competition's raw files into Samples and turns predicted masks into its submission rows.

    Images come back in their raw dtype as (H, W, bands); masks as uint8 {0, 1} (H, W, classes).
    Subclasses set the class attributes and implement the methods that raise NotImplementedError.
    `submission_format` (a segkit.submission.SubmissionFormat) declares the competition's submission once:
    the writer, the validator and predict all read it.
    """

    name: ClassVar[str] = ""
    classes: ClassVar[tuple[str, ...]] = ("foreground",)
    bands: ClassVar[int] = 3
    item_word: ClassVar[str] = "images"  # what its samples are, in logs ("patches" where they are cut from scenes)
    submission_format: ClassVar["SubmissionFormat"]
    default_tta: ClassVar[tuple[str, ...]] = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270")

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def require_root(self) -> None:
        """DataError unless the dataset folder exists (for adapters that need it from construction on)."""
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset folder not found")

    # --- reading -------------------------------------------------------------------------
    def train_samples(self) -> list[Sample]:
        """All labelled samples, in a stable order."""
        raise NotImplementedError

    def test_samples(self) -> list[Sample]:
        """All samples the submission must cover, in submission order."""
        raise NotImplementedError

    def read_image(self, sample: Sample) -> np.ndarray:
        """The raw image (H, W, bands) in its stored dtype; by default one RGB file (JPEG/PNG/GIF) as uint8."""
        return read_image(sample.image[0])

    def read_mask(self, sample: Sample) -> np.ndarray:
        """The ground truth as uint8 {0, 1} of shape (H, W, classes)."""
        raise NotImplementedError

    def input_normalisation(self, dtype: np.dtype | type | str) -> tuple[list[float], list[float]]:
        """Per-band (scale, offset) taking raw images of `dtype` to model input as `x * scale + offset`.

        The model holds them in its first layer (so a checkpoint takes raw images); default: divide by the
        integer dtype's maximum (/255 for uint8, /65535 for uint16), float images unchanged.
        """
        dtype = np.dtype(dtype)
        scale = 1.0 / float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0
        return [scale] * self.bands, [0.0] * self.bands

    def normalise(self, image: np.ndarray) -> np.ndarray:
        """Raw image → float32 model input in numpy, the same `x * scale + offset` as the model's own layer;
        only needed for checkpoints saved by older segkit versions, which lack that layer."""
        scale, offset = self.input_normalisation(image.dtype)
        return image.astype(np.float32) * np.asarray(scale, np.float32) + np.asarray(offset, np.float32)

    # --- writing -------------------------------------------------------------------------
    def sample_submission_path(self) -> Path | None:
        """The competition's sample_submission.csv (fixes row ids and order), or None when it has none."""
        return None

    @property
    def submission_header(self) -> tuple[str, str]:
        """The submission's two column names (from `submission_format`)."""
        return self.submission_format.header

    @property
    def rle_order(self) -> str:
        """The competition's RLE pixel order, "C" or "F" (from `submission_format`)."""
        return self.submission_format.order

    def submission_size(self, sample: Sample) -> tuple[int, int]:
        """(H, W) that the submission's RLE refers to for this sample: the declared shape, or the sample's
        own size when the format declares sizes per image."""
        fmt = self.submission_format
        if fmt.shape is not None and not fmt.own_size:
            return fmt.shape
        return self.stored_size(sample)

    def check_written(self, path: str | os.PathLike, samples: Sequence[Sample],
                      sample: str | os.PathLike | None = None) -> SubmissionCheck:
        """Validate a submission written for `samples` (`segkit predict`, `Run.validate`): the declared format,
        each image's runs bounded by the size this adapter encodes it at (exact even for per-image sizes), and
        the ids of `sample` or, without a sample file, the samples' ids (the test images under data.root)."""
        fmt = self.submission_format
        shapes = None
        if fmt.shape is None or fmt.own_size:
            shapes = {s.id: tuple(self.submission_size(s)) for s in samples}
        test_ids = [s.id for s in samples] if sample is None else None
        return validate(path, fmt, sample, test_ids, shapes=shapes, test_root=self.root)

    def stored_size(self, sample: Sample) -> tuple[int, int]:
        """(H, W) of the sample's stored image, from its header (no pixels read)."""
        return image_size(sample.image[0])

    def tiling_canvases(self, samples: list[Sample]) -> list:
        """What tiled inference (`predict.tiling`) predicts whole, as `segkit.tiling.Canvas`es whose parts are
        indices into `samples`: by default each sample's image at its stored size, read when its first window
        is and dropped after its last (one image in memory at a time). 38-Cloud stitches patches into scenes."""
        return [ImageCanvas(i, self.stored_size(s), lambda s=s: self.read_image(s), name=s.id)
                for i, s in enumerate(samples)]

    def submission_rows(self, sample: Sample, mask: np.ndarray) -> Iterator[tuple[str, str]]:
        """Rows (id, rle) for one test sample as the format declares them; `mask` is uint8 (H, W, classes)
        at submission_size."""
        yield from self.submission_format.rows_for(sample.id, mask)

    def score_class(self, truth: np.ndarray, pred: np.ndarray) -> float:
        """The competition's metric for one class over a stack of masks (N, H, W); higher is better.
        Post-processing is tuned per class on it. Default: mean Dice per image, empty/empty = 1."""
        from segkit.evaluate import dice_per_image  # lazy: evaluate imports scipy

        return float(dice_per_image(truth, pred).mean())

    @classmethod
    def metric_name(cls) -> str:
        """The metric's name for logs and reports: the first line of the adapter's score_class docstring (so
        every adapter names its own metric there)."""
        doc = cls.score_class.__doc__
        return doc.strip().splitlines()[0] if doc else ""

    def score_counts(self, inter: np.ndarray, pred_area: np.ndarray, true_area: np.ndarray) -> np.ndarray:
        """`score_class` from per-image pixel counts (..., N) — intersection, predicted and true area —
        reduced over the last axis; lets post-processing tuning score a candidate without its masks. An
        adapter whose metric is not a function of these counts overrides score_class only (then unused)."""
        return dice_from_counts(inter, pred_area, true_area)


def decode_planes(texts: Sequence[str], shape: tuple[int, int], order: str, file: Path | str,
                  labels: Sequence[str]) -> np.ndarray:
    """(H, W, len(texts)) uint8 {0, 1}: one RLE per class decoded at `shape`, for competitions that give each
    class its own row; a bad RLE is a DataError naming `file` and that class's `labels` entry."""
    planes = []
    for label, text in zip(labels, texts):
        try:
            planes.append(rle.decode(text, shape, order=order))
        except rle.RLEError as exc:
            raise DataError(f"{file}: {label}: {exc}") from None
    return np.stack(planes, axis=-1)


def fraction_option(value: object, key: str = "data.options.empty_fraction") -> float:
    """An adapter option that is a share in [0, 1]; ConfigError naming the key otherwise."""
    if not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{key}: expected a number in [0, 1], got {value!r}")
    return float(value)


def dice_from_counts(inter: np.ndarray, pred_area: np.ndarray, true_area: np.ndarray) -> np.ndarray:
    """Mean Dice over images (last axis) from per-image counts; 1 where both masks are empty."""
    from segkit.evaluate import dice_of_counts  # lazy: evaluate imports scipy

    return dice_of_counts(inter, pred_area, true_area).mean(axis=-1)


_ADAPTERS: dict[str, type[Adapter]] = {}
_MODULES = {
    "cloud38": "cloud38",
    "cloud95": "cloud38",
    "carvana": "carvana",
    "clouds": "clouds",
    "airbus": "airbus",
    "siim": "siim",
    "severstal": "severstal",
    "tgs": "tgs",
    "folder": "folder",
}


def register_adapter(name: str) -> Callable[[type[Adapter]], type[Adapter]]:
    """Class decorator: make an adapter findable by `name` in configs."""

    def deco(cls: type[Adapter]) -> type[Adapter]:
        fmt = getattr(cls, "submission_format", None)
        if fmt is None:
            raise TypeError(f"adapter {cls.__name__} declares no submission_format")
        cls.submission_format = dataclasses.replace(fmt, competition=name)
        cls.name = name
        _ADAPTERS[name] = cls
        return cls

    return deco


def adapter_class(name: str) -> type[Adapter]:
    """The adapter class registered under `name` (imports its module on first use)."""
    if name not in _ADAPTERS and name in _MODULES:
        importlib.import_module(f"segkit.data.competitions.{_MODULES[name]}")
    if name not in _ADAPTERS:
        raise unknown_name("data.competition", "competition", name, sorted(_MODULES))
    return _ADAPTERS[name]


def format_for(competition: str | SubmissionFormat) -> SubmissionFormat:
    """The submission format `competition` declares (a format is returned as it is)."""
    if isinstance(competition, SubmissionFormat):
        return competition
    try:
        cls = adapter_class(competition)
    except ConfigError as exc:
        raise SubmissionError(str(exc).replace("data.competition: ", "")) from None
    return cls.submission_format


def check_submission(path: str | os.PathLike, competition: str | SubmissionFormat,
                     sample: str | os.PathLike | None = None,
                     shapes: Mapping[str, tuple[int, int]] | None = None) -> SubmissionCheck:
    """`segkit.submission.validate` for a competition given by name (`segkit validate`, `segkit submit`)."""
    return validate(path, format_for(competition), sample, shapes=shapes)


def validate_submission(path: str | os.PathLike, competition: str | SubmissionFormat,
                        sample: str | os.PathLike | None = None,
                        shapes: Mapping[str, tuple[int, int]] | None = None) -> list[str]:
    """The problems of a submission CSV for a competition given by name (empty when valid)."""
    return check_submission(path, competition, sample, shapes).problems


def make_adapter(name: str, root: str | Path, options: dict | None = None) -> Adapter:
    """Build the adapter for `name`, checking `options` against its constructor's keywords."""
    cls = adapter_class(name)
    options = dict(options or {})
    check_kwargs(cls.__init__, options, "data.options", skip=("self", "root"))
    return cls(root, **options)
