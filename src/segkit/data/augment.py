"""Training augmentations (albumentations), safe for any number of bands.

The pipeline works on float32 images scaled to [0, 1] (the generator divides the raw integer image by its
dtype's maximum first and converts back afterwards), because albumentations' colour transforms assume that
range for float input and clip to it. Geometric transforms move image and mask together: linear
interpolation for the image, nearest for the mask, zero fill outside the image (like a no-data margin).
"""
from __future__ import annotations

import inspect

import cv2
import numpy as np

from segkit.config import AugmentConfig

# Names the config may switch on, in the order they are applied.
AUGMENTATIONS = ("hflip", "vflip", "rot90", "shift_scale_rotate", "brightness_contrast")


def _affine(p: float, shift: float, scale: float, rotate: float):
    import albumentations as A

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
    import albumentations as A

    if name == "hflip":
        return A.HorizontalFlip(p=p)
    if name == "vflip":
        return A.VerticalFlip(p=p)
    if name == "rot90":
        return A.RandomRotate90(p=p)
    if name == "shift_scale_rotate":
        return _affine(p, shift=0.0625, scale=0.1, rotate=20)
    if name == "brightness_contrast":
        return A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=p)
    raise ValueError(f"unknown augmentation '{name}' (known: {', '.join(AUGMENTATIONS)})")


def build(cfg: AugmentConfig | None, seed: int | None = None):
    """An albumentations Compose for the non-zero probabilities in `cfg` (None when nothing is enabled).
    Call it as `pipe(image=float32 (H, W, bands) in [0, 1], mask=uint8 (H, W, classes))`."""
    import albumentations as A

    if cfg is None:
        return None
    steps = [transform(name, float(getattr(cfg, name))) for name in AUGMENTATIONS if float(getattr(cfg, name)) > 0]
    if not steps:
        return None
    kwargs = {"seed": seed} if "seed" in inspect.signature(A.Compose).parameters else {}
    return A.Compose(steps, **kwargs)


def reseed(pipe, seed: int) -> None:
    """Make the next call of `pipe` draw from a stream fixed by `seed` (reproducible per sample and epoch)."""
    if hasattr(pipe, "set_random_seed"):  # albumentations >= 2
        pipe.set_random_seed(seed)
    else:  # albumentations 1.x draws from the global `random` and numpy generators
        import random

        random.seed(seed)
        np.random.seed(seed % 2**32)
