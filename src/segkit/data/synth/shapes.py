"""Drawing and writing helpers shared by the synthetic Kaggle-format generators (Carvana, Clouds, Airbus)."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

from segkit.progress import progress as show_progress
from segkit.storage import atomic_dir, atomic_write
from segkit.errors import ConfigError, DataError

T = TypeVar("T")
MARKER = ".segkit_synth.json"  # the generator's arguments; the same arguments again reuse the folder


def check_size(size, name: str = "image_size", minimum: int = 16) -> tuple[int, int]:
    """(H, W) from one number or two, each at least `minimum`."""
    if isinstance(size, (int, np.integer)):
        size = (size, size)
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ConfigError(f"synth: {name} must be (height, width), got {size!r}") from None
    if h < minimum or w < minimum:
        raise ConfigError(f"synth: {name} must be at least {minimum}x{minimum}, got {h}x{w}")
    return h, w


def hex_ids(rng: np.random.Generator, n: int, length: int) -> list[str]:
    """`n` distinct lower-case hex ids of `length` characters, sorted (Kaggle ids look like this)."""
    ids: set[str] = set()
    while len(ids) < n:
        ids.add("".join(rng.choice(list("0123456789abcdef"), size=length)))
    return sorted(ids)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-variance noise with features about `scale` pixels wide (upsampled random grid)."""
    import cv2

    h, w = shape
    gh, gw = max(2, int(np.ceil(h / scale)) + 1), max(2, int(np.ceil(w / scale)) + 1)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / (field.std() + 1e-6)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Clip a float image to [0, 255] and round to uint8."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_jpeg(path: Path, rgb: np.ndarray, quality: int = 95) -> None:
    """An RGB uint8 image as a JPEG."""
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError(f"{path}: cannot encode JPEG")
    path.write_bytes(buf.tobytes())


def write_gif_mask(path: Path, mask: np.ndarray) -> None:
    """A binary mask as a palette GIF (index 0 black, 1 white), the way Carvana stores its masks."""
    from PIL import Image

    image = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254)
    image.save(path, format="GIF")


def progress(items: Iterable[T], desc: str, quiet: bool = False, unit: str = "image") -> Iterator[T]:
    """`items` with progress on stderr (none when quiet); synthetic data at real sizes takes minutes."""
    return show_progress(list(items), desc, quiet=quiet, unit=unit)


def write_csv(path: Path, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A small CSV (LF endings, no quoting needed for Kaggle ids and RLEs)."""
    lines = [",".join(header)] + [",".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def dataset_folder(out: Path, params: dict) -> Iterator[Path | None]:
    """Yield a temporary folder to fill, then move it to `out`; yield None when `out` already holds a synthetic
    dataset made with the same `params`. An existing folder that is not a segkit synthetic dataset (and not
    empty) is never replaced."""
    out = Path(out)
    marker = out / MARKER
    if marker.is_file():
        with contextlib.suppress(ValueError, OSError):
            if json.loads(marker.read_text()) == params:
                yield None
                return
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"synth: {out} exists and is not a segkit synthetic dataset; choose an empty --out")
    with atomic_dir(out) as tmp:
        yield tmp
        with atomic_write(tmp / MARKER) as fh:
            json.dump(params, fh)


def run_generator(out: Path, params: dict, fill: Callable[[Path], None]) -> Path:
    """Write a dataset with `fill(folder)` atomically under `out` (or reuse it) and return `out`."""
    with dataset_folder(out, params) as folder:
        if folder is not None:
            fill(folder)
    return Path(out)
