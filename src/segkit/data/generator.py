"""A keras.utils.PyDataset over a prepared cache: batches of normalised, augmented images and masks.

Keras runs `__getitem__` in worker threads (or processes); every batch depends only on (seed, epoch, batch
index), never on call order, so a run is reproducible with any number of workers and differs per epoch.
"""
from __future__ import annotations

import math
import threading
from typing import Callable, Sequence

import keras
import numpy as np

from segkit.config import AugmentConfig
from segkit.data import augment as aug


class SegmentationDataset(keras.utils.PyDataset):
    """Batches `(x float32 (B, H, W, bands), y float32 (B, H, W, classes))`, or `x` alone with with_masks=False.

    cache: a segkit.data.cache.Cache; indices: which of its items to serve; normalise: raw image → float32
    (the adapter's); augment: an AugmentConfig (None for validation/prediction); shuffle: a new order every
    epoch; seed: fixes order and augmentations.
    """

    def __init__(
        self,
        cache,
        indices: Sequence[int] | np.ndarray,
        batch_size: int,
        normalise: Callable[[np.ndarray], np.ndarray],
        augment: AugmentConfig | None = None,
        shuffle: bool = False,
        seed: int = 0,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
        with_masks: bool = True,
    ) -> None:
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        self.cache = cache
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.ndim != 1 or len(self.indices) == 0:
            raise ValueError("SegmentationDataset: indices must be a non-empty 1-D list")
        if batch_size < 1:
            raise ValueError(f"SegmentationDataset: batch_size must be positive, got {batch_size}")
        self.batch_size = int(batch_size)
        self.normalise = normalise
        self.augment_cfg = augment
        self.shuffle = shuffle
        self.seed = int(seed)
        self.with_masks = with_masks
        if with_masks and cache.masks is None:
            raise ValueError("SegmentationDataset: with_masks=True but the cache has no masks")
        self.epoch = 0
        self._local = threading.local()  # one albumentations pipeline per worker thread
        dtype = cache.images.dtype
        self._scale = float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The item order of one epoch (a fixed permutation per (seed, epoch) when shuffling)."""
        if not self.shuffle:
            return self.indices
        return np.random.default_rng([self.seed, epoch]).permutation(self.indices)

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def _pipeline(self):
        pipe = getattr(self._local, "pipe", None)
        if pipe is None and self.augment_cfg is not None:
            pipe = self._local.pipe = aug.build(self.augment_cfg, seed=self.seed)
        return pipe

    def __getitem__(self, index: int):
        if index < 0 or index >= len(self):
            raise IndexError(index)
        epoch = self.epoch
        items = self.order(epoch)[index * self.batch_size: (index + 1) * self.batch_size]
        pipe = self._pipeline()
        xs, ys = [], []
        for pos, i in enumerate(items):
            image = np.asarray(self.cache.images[i])
            mask = np.asarray(self.cache.masks[i]) if self.with_masks else None
            if pipe is not None:
                image, mask = self._augment(pipe, image, mask, [self.seed, epoch, index, pos])
            xs.append(self.normalise(image))
            if mask is not None:
                ys.append(mask)
        x = np.stack(xs).astype(np.float32, copy=False)
        if not self.with_masks:
            return x
        return x, np.stack(ys).astype(np.float32)

    def _augment(self, pipe, image: np.ndarray, mask: np.ndarray | None, key: list[int]):
        """Augment in [0, 1] float space, then return to the raw dtype so `normalise` sees raw values."""
        aug.reseed(pipe, int(np.random.default_rng(key).integers(2**31 - 1)))
        raw_dtype = image.dtype
        x = image.astype(np.float32) / self._scale
        if mask is None:
            out = pipe(image=x)
            y = None
        else:
            out = pipe(image=x, mask=mask)
            y = out["mask"]
        x = out["image"] * self._scale
        if np.issubdtype(raw_dtype, np.integer):
            info = np.iinfo(raw_dtype)
            x = np.clip(np.rint(x), info.min, info.max).astype(raw_dtype)
        return x, y
