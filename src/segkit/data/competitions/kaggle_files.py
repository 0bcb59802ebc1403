"""Helpers shared by the Kaggle competition adapters: RLE tables, sample submissions, image sizes, file lists."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from segkit.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif")


def read_table(path: Path, columns: tuple[str, ...], what: str) -> "pd.DataFrame":  # noqa: F821
    """A CSV as strings (an empty field stays "", CRLF endings and stray spaces stripped), checked to hold
    `columns`; DataError names the file and what is wrong."""
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: {what} is not a readable CSV ({exc})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: {what} lacks column(s) {', '.join(missing)} (has {', '.join(df.columns)})")
    for c in columns:
        df[c] = df[c].str.strip()
    return df


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image from its header only (Pillow reads no pixels for this)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    return int(h), int(w)


def folder(root: Path, name: str, what: str) -> Path:
    """root/name, which must be a folder."""
    path = root / name
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found (is data.root the unpacked dataset?)")
    return path


def check_files_exist(folder_path: Path, names: Iterable[str], what: str) -> None:
    """DataError naming the first missing files when any of `names` is not in `folder_path` (one listdir)."""
    present = set(os.listdir(folder_path))
    missing = [n for n in names if n not in present]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"{folder_path}: {what} {', '.join(missing[:3])}{more} not found")


def list_images(folder_path: Path) -> list[Path]:
    """Image files of a folder, sorted by name."""
    return sorted(p for p in folder_path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def ordered_unique(values: Iterable[str]) -> list[str]:
    """Distinct values in order of first appearance."""
    return list(dict.fromkeys(values))


def check_mask_shape(mask: np.ndarray, expected: tuple[int, int], source: str, image: str) -> None:
    """DataError when a mask's (H, W) differs from its image's."""
    if mask.shape[:2] != tuple(expected):
        raise DataError(f"{source}: mask is {mask.shape[0]}x{mask.shape[1]} but image {image} is "
                        f"{expected[0]}x{expected[1]}")


def check_image_size(path: str | os.PathLike, expected: tuple[int, int], first: str, real: tuple[int, int],
                     shape: tuple[int, int] | None = None) -> tuple[int, int]:
    """The (H, W) of image `path` (`shape` when already known, else from its header), which must equal the size
    `expected` of the dataset's first image `first` (competitions whose images all share the `real` size);
    DataError naming the file and both sizes otherwise, so no RLE is decoded at a wrong size."""
    got = tuple(shape) if shape is not None else image_size(path)
    if got != tuple(expected):
        raise DataError(f"{path}: image is {got[0]}x{got[1]}, but {first} is {expected[0]}x{expected[1]}; every "
                        f"image of this competition has one size ({real[0]}x{real[1]} in the real data)")
    return got  # type: ignore[return-value]
