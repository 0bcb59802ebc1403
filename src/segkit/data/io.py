"""Image and mask readers and writers (TIFF, JPEG, PNG, GIF) and atomic file writes."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from segkit.errors import DataError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside `path` and move it into place only if the block succeeds,
    so a crash never leaves a half-written file and an existing file is never lost."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _file_mode(path))
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `dest` that replaces `dest` only if the block succeeds, so
    readers see the old folder or the complete new one, never a half-written one; on failure `dest` is
    left as it was."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
        if dest.exists():  # move the old one aside, swap the new one in, then delete the old one
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, old / "stale")
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _file_mode(path: Path) -> int:
    """The mode a plain open() would give (umask applied), or the existing file's mode."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save an array as .npy atomically."""
    with atomic_write(path, "wb") as fh:
        np.save(fh, array)


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
