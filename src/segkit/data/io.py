"""Image and mask readers and writers (TIFF, JPEG, PNG, GIF).

Atomic writes live in `segkit.storage`; their names are re-exported here for code that imported them from this
module.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from segkit.errors import DataError
from segkit.storage import (  # noqa: F401  (re-exported)
    TMP_TAG, atomic_dir, atomic_save_npy, atomic_write, storage_error, sweep_stale, temp_prefix, writing,
)


def read_tiff(path: str | os.PathLike) -> np.ndarray:
    """Read a TIFF into a numpy array, raising DataError naming the file when it is missing or corrupt."""
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return tifffile.imread(path)
    except Exception as exc:  # tifffile raises many kinds for a damaged file
        raise DataError(f"{path}: not a readable TIFF ({exc})") from None


def write_tiff(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a single-band uint8/uint16 TIFF with PackBits compression (as 38-Cloud's patches are), atomically.
    OpenCV encodes it, so no extra codec package is needed."""
    import cv2

    ok, buf = cv2.imencode(".tif", np.ascontiguousarray(array), [cv2.IMWRITE_TIFF_COMPRESSION, 32773])
    if not ok:
        raise DataError(f"{path}: cannot encode a {array.dtype} array of shape {array.shape} as TIFF")
    with atomic_write(path, "wb") as fh:
        fh.write(buf.tobytes())


def read_image(path: str | os.PathLike, grayscale: bool = False) -> np.ndarray:
    """Read a JPEG/PNG/GIF/TIFF as (H, W, 3) RGB uint8 (or (H, W) with grayscale=True)."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() in (".tif", ".tiff"):
        return read_tiff(path)
    if path.suffix.lower() == ".gif":
        ok, frames = cv2.imreadmulti(str(path))
        if not ok or not frames:
            img = _read_gif_pil(path)
        else:
            img = frames[0]
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if img.ndim == 3 else img
    else:
        flag = cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR
        img = cv2.imread(str(path), flag)
        if img is None:
            raise DataError(f"{path}: not a readable image")
        if img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if grayscale and img.ndim == 3:
        img = img[..., 0] if np.all(img[..., :1] == img) else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    return img


def _read_gif_pil(path: Path) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise DataError(f"{path}: OpenCV cannot read this GIF and Pillow is not installed") from None
    try:
        with Image.open(path) as im:
            return np.array(im.convert("L"))
    except Exception as exc:
        raise DataError(f"{path}: not a readable GIF ({exc})") from None


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an RGB or grey uint8 image (format from the extension) atomically."""
    import cv2

    path = Path(path)
    arr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 and image.shape[2] == 3 else image
    ok, buf = cv2.imencode(path.suffix or ".png", arr)
    if not ok:
        raise DataError(f"{path}: cannot encode image as {path.suffix}")
    with atomic_write(path, "wb") as fh:
        fh.write(buf.tobytes())
