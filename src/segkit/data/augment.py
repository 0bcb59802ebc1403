"""Training augmentations (albumentations), safe for any number of bands, any dtype and any value range.

The pipeline runs on the raw image (uint8, uint16 or float; (H, W, bands)) before normalisation, so 16-bit
Landsat data is never squeezed into 8 bits. Geometric transforms move image and mask together: linear
interpolation for the image, nearest for the mask, zero fill outside the image (like a no-data margin).
Brightness/contrast is segkit's own albumentations transform: albumentations' RandomBrightnessContrast clips
float input to [0, 1] and takes ~60 ms on a 384x384x4 uint16 patch; this one scales around the image mean,
keeps zero (no-data) pixels at zero, clips only to an integer dtype's range, and costs ~2 ms.
"""
from __future__ import annotations

import inspect
import random
import threading
from typing import Any

import albumentations as A
import cv2
import numpy as np

from segkit.config import AugmentConfig

# Names the config may switch on, in the order they are applied.
AUGMENTATIONS = ("hflip", "vflip", "rot90", "shift_scale_rotate", "brightness_contrast")


class BrightnessContrast(A.ImageOnlyTransform):
    """x → alpha·x + beta·mean(x), alpha ∈ 1 ± contrast_limit, beta ∈ ± brightness_limit; zeros (no-data,
    fill) stay zero; float values are never clipped; integer results are rounded and clipped to the dtype."""

    def __init__(self, brightness_limit: float = 0.1, contrast_limit: float = 0.1, p: float = 0.5, **kwargs: Any):
        super().__init__(p=p, **kwargs)
        self.brightness_limit = float(brightness_limit)
        self.contrast_limit = float(contrast_limit)

    def get_params(self) -> dict[str, float]:
        rnd = getattr(self, "py_random", random)  # albumentations >= 2 seeds py_random; 1.x uses `random`
        return {"alpha": 1.0 + rnd.uniform(-self.contrast_limit, self.contrast_limit),
                "beta": rnd.uniform(-self.brightness_limit, self.brightness_limit)}

    def apply(self, img: np.ndarray, alpha: float = 1.0, beta: float = 0.0, **params: Any) -> np.ndarray:
        x = img.astype(np.float32)
        shift = np.float32(beta * float(x.mean()))
        out = x * np.float32(alpha) + shift
        out[img == 0] = 0  # no-data and the geometric transforms' fill stay zero
        if np.issubdtype(img.dtype, np.integer):
            info = np.iinfo(img.dtype)
            out = np.clip(np.rint(out, out=out), info.min, info.max, out=out)
            return out.astype(img.dtype)
        return out.astype(img.dtype, copy=False)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("brightness_limit", "contrast_limit")


def _affine(p: float, shift: float, scale: float, rotate: float) -> A.Affine:
    params = inspect.signature(A.Affine).parameters
    kwargs = dict(scale=(1 - scale, 1 + scale), translate_percent=(-shift, shift), rotate=(-rotate, rotate),
                  interpolation=cv2.INTER_LINEAR, p=p)
    if "fill" in params:  # albumentations >= 2
        kwargs.update(mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0)
    else:  # albumentations 1.4.x
        kwargs.update(mode=cv2.BORDER_CONSTANT, cval=0, cval_mask=0)
    return A.Affine(**kwargs)


def transform(name: str, p: float):
    """The albumentations transform behind one config name, applied with probability p."""
    if name == "hflip":
        return A.HorizontalFlip(p=p)
    if name == "vflip":
        return A.VerticalFlip(p=p)
    if name == "rot90":
        return A.RandomRotate90(p=p)
    if name == "shift_scale_rotate":
        return _affine(p, shift=0.0625, scale=0.1, rotate=20)
    if name == "brightness_contrast":
        return BrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=p)
    raise ValueError(f"unknown augmentation '{name}' (known: {', '.join(AUGMENTATIONS)})")


def build(cfg: AugmentConfig | None, seed: int | None = None):
    """An albumentations Compose for the non-zero probabilities in `cfg` (None when nothing is enabled).
    Call it as `pipe(image=(H, W, bands) raw array, mask=uint8 (H, W, classes))`."""
    if cfg is None:
        return None
    steps = [transform(name, float(getattr(cfg, name))) for name in AUGMENTATIONS if float(getattr(cfg, name)) > 0]
    if not steps:
        return None
    kwargs = {"seed": seed} if "seed" in inspect.signature(A.Compose).parameters else {}
    return A.Compose(steps, **kwargs)


_GLOBAL_RNG_LOCK = threading.Lock()


def apply(pipe, seed: int, **data: np.ndarray) -> dict:
    """Run `pipe` on `data` with draws fixed by `seed`, so each sample's augmentation is reproducible whatever
    thread runs it. Albumentations >= 2 seeds the pipeline itself; 1.x draws from the global `random` and
    numpy generators, so there seeding and drawing are held under one lock."""
    if hasattr(pipe, "set_random_seed"):  # albumentations >= 2
        pipe.set_random_seed(seed)
        return pipe(**data)
    with _GLOBAL_RNG_LOCK:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        return pipe(**data)
