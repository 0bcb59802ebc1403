"""Decode every image once into memory-mapped .npy arrays, so training epochs never touch the raw files.

A cache is a folder `<cache_dir>/<name>/` holding images.npy (N, H, W, bands) in the raw dtype, masks.npy
(N, H, W, classes) uint8 {0,1} (absent for test data), and meta.json (ids, source fingerprint, size). It is
built in a temporary sibling folder and renamed into place only when complete, so an interrupted prepare
never leaves a cache that looks complete; a complete cache whose source list and size match is reused.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from segkit.data.io import atomic_dir
from segkit.data.sample import Sample
from segkit.errors import DataError

META = "meta.json"
FORMAT_VERSION = 1


class Cache:
    """A prepared cache opened read-only: `images`, `masks` (or None), `ids`, `len(cache)`."""

    def __init__(self, path: Path, meta: dict) -> None:
        self.path = Path(path)
        self.meta = meta
        self.ids: list[str] = list(meta["ids"])
        self.image_size: tuple[int, int] = tuple(meta["image_size"])  # type: ignore[assignment]
        self.images: np.ndarray = np.load(self.path / "images.npy", mmap_mode="r")
        self.masks: np.ndarray | None = (
            np.load(self.path / "masks.npy", mmap_mode="r") if meta.get("with_masks") else None
        )
        if len(self.images) != len(self.ids) or (self.masks is not None and len(self.masks) != len(self.ids)):
            raise DataError(f"{self.path}: cache arrays do not match its id list; delete the folder and prepare again")

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Cache":
        """Open a complete cache folder; DataError when it is missing or was never finished."""
        path = Path(path)
        try:
            meta = json.loads((path / META).read_text())
        except FileNotFoundError:
            raise DataError(f"{path}: no complete cache here (run `segkit prepare CONFIG`)") from None
        except ValueError:
            raise DataError(f"{path / META}: damaged cache metadata; delete the folder and prepare again") from None
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
    """Hash of what a cache is made from: the adapter, every id and source file (path, size, modification
    time, so regenerated files at the same paths are noticed), the image size, masks or not."""
    h = hashlib.sha256()
    h.update(json.dumps([adapter_name, list(image_size), with_masks, FORMAT_VERSION]).encode())
    for s in samples:
        files = list(s.image) + (list(s.mask) if with_masks else [])
        h.update(json.dumps([s.id, [[f, *_stat(f)] for f in files]]).encode())
    return h.hexdigest()


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)  # not a file (e.g. an RLE source): the path alone identifies it
    return (st.st_size, st.st_mtime_ns)


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
    try:
        existing = Cache.open(dest)
        if existing.meta.get("fingerprint") == fp:
            return existing
    except DataError:
        pass

    with atomic_dir(dest) as tmp:  # a failed rebuild keeps the previous cache
        _fill(adapter, samples, image_size, tmp, with_masks, quiet, workers, name)
        meta = {"version": FORMAT_VERSION, "name": name, "fingerprint": fp, "ids": [s.id for s in samples],
                "image_size": list(image_size), "bands": adapter.bands, "classes": list(adapter.classes),
                "with_masks": with_masks, "adapter": type(adapter).__name__}
        (tmp / META).write_text(json.dumps(meta))
    return Cache.open(dest)


def _fill(adapter, samples: Sequence[Sample], size: tuple[int, int], folder: Path, with_masks: bool,
          quiet: bool, workers: int, name: str) -> None:
    from tqdm.auto import tqdm

    first = adapter.read_image(samples[0])
    _check_image(adapter, samples[0], first)
    n, (h, w) = len(samples), size
    images = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=first.dtype, shape=(n, h, w, adapter.bands))
    masks = (np.lib.format.open_memmap(folder / "masks.npy", mode="w+", dtype=np.uint8,
                                       shape=(n, h, w, len(adapter.classes))) if with_masks else None)

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
        for _ in tqdm(pool.map(load, range(n)), total=n, desc=f"prepare {name}", unit="img", disable=quiet, leave=False):
            pass
    images.flush()
    if masks is not None:
        masks.flush()
    del images, masks
