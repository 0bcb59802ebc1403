"""Decode every image once into memory-mapped .npy arrays, so training epochs never touch the raw files.

A cache is a folder `<cache_dir>/<name>/` holding images.npy (N, H, W, bands) in the raw dtype, masks.npy
(N, H, W, classes) uint8 {0,1} (absent for test data), and meta.json (ids, source fingerprint, size). It is
built in a temporary sibling folder and renamed into place only when complete, so an interrupted prepare
never leaves a cache that looks complete; a complete cache whose sources and size match is reused. The arrays'
disk space is reserved before decoding (a full disk is an error at once, never a bus error later), and every
.npy file is checked against meta.json (header shape and dtype, file size) before it is mapped, so a torn or
damaged cache is rebuilt by `prepare` and refused with a clear error elsewhere.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from segkit.progress import progress
from segkit.storage import atomic_dir, storage_error
from segkit.data.sample import Sample
from segkit.errors import DataError, StorageError

META = "meta.json"
FORMAT_VERSION = 1


class Cache:
    """A prepared cache opened read-only: `images`, `masks` (or None), `ids`, `len(cache)`."""

    def __init__(self, path: Path, meta: dict) -> None:
        self.path = Path(path)
        self.meta = meta
        self.ids: list[str] = list(meta["ids"])
        self.image_size: tuple[int, int] = tuple(meta["image_size"])  # type: ignore[assignment]
        problem = damage(self.path, meta)
        if problem:
            raise DataError(f"{self.path}: cache damaged ({problem}); run `segkit prepare CONFIG` to rebuild it")
        self.images: np.ndarray = np.load(self.path / "images.npy", mmap_mode="r")
        self.masks: np.ndarray | None = (
            np.load(self.path / "masks.npy", mmap_mode="r") if meta.get("with_masks") else None
        )

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Cache":
        """Open a complete cache folder; DataError when it is missing or was never finished."""
        path = Path(path)
        try:
            meta = json.loads((path / META).read_text())
        except FileNotFoundError:
            raise DataError(f"{path}: no complete cache here (run `segkit prepare CONFIG`)") from None
        except (ValueError, UnicodeDecodeError):
            raise DataError(f"{path / META}: damaged cache metadata; delete the folder and prepare again") from None
        except OSError as exc:
            raise DataError(f"{path / META}: cannot read the cache metadata ({exc.strerror})") from None
        if not isinstance(meta, dict) or not all(k in meta for k in ("ids", "image_size", "bands", "classes")):
            raise DataError(f"{path / META}: damaged cache metadata; delete the folder and prepare again")
        if meta.get("version") != FORMAT_VERSION:
            raise DataError(f"{path}: cache written by another segkit version; delete the folder and prepare again")
        return cls(path, meta)

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict:
        # pickled (e.g. into worker processes) as its path: the memory maps are reopened, never copied
        return {"path": str(self.path), "meta": self.meta}

    def __setstate__(self, state: dict) -> None:
        self.__init__(Path(state["path"]), state["meta"])

    @property
    def bands(self) -> int:
        return int(self.images.shape[-1])

    def __repr__(self) -> str:
        return f"Cache({self.path}, n={len(self)}, images={self.images.shape}:{self.images.dtype}, masks={'yes' if self.masks is not None else 'no'})"


def fingerprint(samples: Sequence[Sample], image_size: tuple[int, int], with_masks: bool, adapter_name: str) -> str:
    """Hash of what a cache is made from: the adapter, every id and source file, the image size, masks or not.

    Each file counts by path, size, modification time and a hash of its first and last KiB, so a file rewritten
    in place is noticed even when its size and mtime were restored (`touch -r`); reading 2 KiB per file keeps this
    fast for tens of thousands of files."""
    h = hashlib.sha256()
    h.update(json.dumps([adapter_name, list(image_size), with_masks, FORMAT_VERSION]).encode())
    per_sample = [list(s.image) + (list(s.mask) if with_masks else []) for s in samples]
    unique = list(dict.fromkeys(f for files in per_sample for f in files))
    with ThreadPoolExecutor(8) as pool:  # file opens and reads release the GIL
        sig = dict(zip(unique, pool.map(file_signature, unique)))
    for s, files in zip(samples, per_sample):
        h.update(json.dumps([s.id, [[f, *sig[f]] for f in files]]).encode())
    return h.hexdigest()


def file_signature(path: str, edge: int = 1024) -> tuple[int, int, str]:
    """(size, mtime in ns, hash of the first and last `edge` bytes) of a file; (-1, -1, "") for a source that
    is not a file (e.g. an RLE row), so the path alone identifies it."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return (-1, -1, "")
    if not stat.S_ISREG(st.st_mode):
        return (st.st_size, st.st_mtime_ns, "")
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as fh:
            digest.update(fh.read(edge))
            if st.st_size > edge:
                fh.seek(max(edge, st.st_size - edge))
                digest.update(fh.read(edge))
    except OSError:
        return (st.st_size, st.st_mtime_ns, "")  # unreadable: reading the sources will say so clearly
    return (st.st_size, st.st_mtime_ns, digest.hexdigest())


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from a .npy file's header, without mapping it; DataError if unreadable."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy file ({exc})") from None
    if fortran:
        raise DataError(f"{path}: Fortran-ordered array; a cache holds C-ordered arrays")
    return tuple(shape), np.dtype(dtype), offset


def check_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype | str | None = None) -> str | None:
    """Why the .npy at `path` is not a complete (shape, dtype) array (None when it is): missing, unreadable
    header, other shape or dtype, or a file size that does not match its header (torn or truncated)."""
    try:
        got_shape, got_dtype, offset = npy_header(path)
    except DataError as exc:
        return f"{path.name} {str(exc).split(': ', 1)[1]}"
    if got_shape != tuple(shape):
        return f"{path.name} holds shape {got_shape}, expected {tuple(shape)}"
    if dtype is not None and got_dtype != np.dtype(dtype):
        return f"{path.name} holds {got_dtype}, expected {np.dtype(dtype)}"
    expected = offset + int(np.prod(got_shape)) * got_dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        return f"{path.name} is {size} bytes, expected {expected} (truncated or torn)"
    return None


def damage(path: Path, meta: dict) -> str | None:
    """Why the cache folder `path` does not match its meta.json (None when its arrays are complete)."""
    n, (h, w) = len(meta["ids"]), meta["image_size"]
    problem = check_npy(path / "images.npy", (n, h, w, int(meta["bands"])), meta.get("dtype"))
    if problem is None and meta.get("with_masks"):
        problem = check_npy(path / "masks.npy", (n, h, w, len(meta["classes"])), np.uint8)
    return problem


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) → size (H, W): area averaging when shrinking, bilinear when enlarging; dtype kept."""
    import cv2

    h, w = size
    if image.shape[:2] == (h, w):
        return image
    interp = cv2.INTER_AREA if h * w < image.shape[0] * image.shape[1] else cv2.INTER_LINEAR
    chans = image.shape[2]
    # OpenCV resizes at most 4 channels at a time reliably for every dtype; go in chunks of 4.
    parts = [cv2.resize(np.ascontiguousarray(image[..., i: i + 4]), (w, h), interpolation=interp) for i in range(0, chans, 4)]
    parts = [p[..., None] if p.ndim == 2 else p for p in parts]
    return np.concatenate(parts, axis=-1).astype(image.dtype, copy=False)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) uint8 → size with nearest-neighbour, so labels stay {0, 1}."""
    import cv2

    h, w = size
    if mask.shape[:2] == (h, w):
        return mask
    out = np.stack([cv2.resize(np.ascontiguousarray(mask[..., c]), (w, h), interpolation=cv2.INTER_NEAREST)
                    for c in range(mask.shape[2])], axis=-1)
    return out


def _check_image(adapter, sample: Sample, image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != adapter.bands:
        raise DataError(f"{sample.image[0]}: expected an image with {adapter.bands} bands, got shape {image.shape}")


def prepare(
    adapter,
    samples: Sequence[Sample],
    image_size: tuple[int, int] | Sequence[int],
    cache_dir: str | os.PathLike,
    name: str,
    with_masks: bool | None = None,
    quiet: bool = False,
    workers: int = 4,
) -> Cache:
    """Decode `samples` with `adapter` into `<cache_dir>/<name>/` (resized to image_size) and open it.

    with_masks: store masks too (default: when every sample has mask sources).
    Reuses an existing complete cache built from the same sources at the same size.
    """
    image_size = (int(image_size[0]), int(image_size[1]))
    if not samples:
        raise DataError(f"prepare '{name}': the sample list is empty")
    if with_masks is None:
        with_masks = all(s.mask for s in samples)
    dest = Path(cache_dir) / name
    fp = fingerprint(samples, image_size, with_masks, type(adapter).__name__)
    if dest.exists():
        try:
            existing = Cache.open(dest)
            if existing.meta.get("fingerprint") == fp:
                return existing
        except DataError as exc:
            reason = str(exc).split(": ", 1)[-1]
            print(f"segkit: note: cache {dest} unusable ({reason}); rebuilding", file=sys.stderr)

    with atomic_dir(dest) as tmp:  # a failed rebuild keeps the previous cache
        _fill(adapter, samples, image_size, tmp, with_masks, quiet, workers, name)
        dtype = npy_header(tmp / "images.npy")[1]
        meta = {"version": FORMAT_VERSION, "name": name, "fingerprint": fp, "ids": [s.id for s in samples],
                "image_size": list(image_size), "bands": adapter.bands, "classes": list(adapter.classes),
                "with_masks": with_masks, "adapter": type(adapter).__name__, "dtype": np.dtype(dtype).str}
        problem = damage(tmp, meta)  # never rename a torn array into place
        if problem:
            raise DataError(f"{dest}: the cache just written is incomplete ({problem}); run prepare again")
        (tmp / META).write_text(json.dumps(meta))
    return Cache.open(dest)


def _fill(adapter, samples: Sequence[Sample], size: tuple[int, int], folder: Path, with_masks: bool,
          quiet: bool, workers: int, name: str) -> None:
    first = adapter.read_image(samples[0])
    _check_image(adapter, samples[0], first)
    n, (h, w) = len(samples), size
    dest = folder.parent / name
    arrays = [("images.npy", first.dtype, (n, h, w, adapter.bands))]
    if with_masks:
        arrays.append(("masks.npy", np.dtype(np.uint8), (n, h, w, len(adapter.classes))))
    needed = sum(int(np.prod(shape)) * np.dtype(dt).itemsize + 4096 for _, dt, shape in arrays)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise _no_space(dest, needed, free)
    maps = []
    for fname, dt, shape in arrays:
        maps.append(np.lib.format.open_memmap(folder / fname, mode="w+", dtype=dt, shape=shape))
        _reserve(folder / fname, dest, needed)
    images, masks = maps[0], (maps[1] if with_masks else None)

    def load(i: int) -> int:
        s = samples[i]
        img = first if i == 0 else adapter.read_image(s)
        _check_image(adapter, s, img)
        if img.dtype != first.dtype:
            raise DataError(f"{s.image[0]}: dtype {img.dtype} differs from the first image's {first.dtype}")
        if masks is not None:
            m = adapter.read_mask(s)
            if m.shape[:2] != img.shape[:2]:
                raise DataError(f"{(s.mask or s.image)[0]}: mask is {m.shape[0]}x{m.shape[1]} but its image is "
                                f"{img.shape[0]}x{img.shape[1]}")
            masks[i] = resize_mask(m, size)
        images[i] = resize_image(img, size)
        return i

    with ThreadPoolExecutor(max(1, workers)) as pool:  # decoders (OpenCV, libjpeg) release the GIL
        for _ in progress(pool.map(load, range(n)), f"prepare {name}", total=n, quiet=quiet, unit="img"):
            pass
    images.flush()
    if masks is not None:
        masks.flush()
    del images, masks, maps


def _no_space(dest: Path, needed: int, free: int) -> StorageError:
    mb = 1024 * 1024
    return StorageError(f"{dest}: no space left on device while writing the cache (needs {needed / mb:.1f} MB, "
                        f"{free / mb:.1f} MB free); free some space or set data.cache_dir to another disk")


def _reserve(path: Path, dest: Path, needed: int) -> None:
    """Allocate every block of the (sparse) file at `path` now, so that writing through its memory map can never
    hit a full disk (a bus error); zeros are written where the platform has no posix_fallocate."""
    size = path.stat().st_size
    try:
        with open(path, "r+b") as fh:
            if hasattr(os, "posix_fallocate"):
                try:
                    os.posix_fallocate(fh.fileno(), 0, size)
                    return
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # the file system cannot: write zeros
                        raise
            block = bytes(1 << 20)
            offset = npy_header(path)[2]  # keep the .npy header; zero only the data that follows it
            fh.seek(offset)
            for start in range(offset, size, len(block)):
                fh.write(block[: min(len(block), size - start)])
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(dest, needed, shutil.disk_usage(path.parent).free) from None
        raise storage_error(dest, exc) from None


class _StackedArray:
    """Read-only row access to two arrays one after the other (shape, dtype, `a[i]` for an integer i)."""

    def __init__(self, first: np.ndarray, second: np.ndarray) -> None:
        if first.shape[1:] != second.shape[1:] or first.dtype != second.dtype:
            raise DataError(f"cannot stack arrays {first.shape}:{first.dtype} and {second.shape}:{second.dtype}")
        self.first, self.second = first, second
        self.shape = (len(first) + len(second), *first.shape[1:])
        self.dtype = first.dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i):
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        n = len(self.first)
        return self.first[i] if i < n else self.second[i - n]


class StackedCache:
    """Two caches with masks seen as one (items of `first`, then those of `second`), without copying: what a
    fold trains on when pseudo-labelled images join the training set. Offers what the generator reads
    (`images`, `masks`, `ids`, `len`)."""

    def __init__(self, first: Cache, second: Cache) -> None:
        if first.masks is None or second.masks is None:
            raise DataError("StackedCache: both caches need masks")
        self.first, self.second = first, second
        self.images = _StackedArray(first.images, second.images)
        self.masks = _StackedArray(first.masks, second.masks)
        self.ids = [*first.ids, *second.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict:
        return {"first": self.first, "second": self.second}  # each cache pickles as its path

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["first"], state["second"])

    def __repr__(self) -> str:
        return f"StackedCache({self.first.path} + {self.second.path}, n={len(self)})"
