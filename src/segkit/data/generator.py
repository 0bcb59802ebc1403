"""A keras.utils.PyDataset over a prepared cache: batches of raw (float32), augmented images and masks.

Images stay in the dataset's own range (e.g. 0..65535 for 38-Cloud): the model normalises them in its first
layer, so training, prediction and a checkpoint used on its own all see the same input.

Keras runs `__getitem__` in worker threads (or processes); every batch depends only on (seed, epoch, batch
index), never on call order, so a run is reproducible with any number of workers and differs per epoch.
"""
from __future__ import annotations

import math
import threading
from typing import Sequence

import keras
import numpy as np

from segkit.config import AugmentConfig
from segkit.data import augment as aug


class SegmentationDataset(keras.utils.PyDataset):
    """Batches `(x float32 (B, H, W, bands), y float32 (B, H, W, classes))`, or `x` alone with with_masks=False;
    x holds the raw values as float32 (exact for 8- and 16-bit images).

    cache: a segkit.data.cache.Cache; indices: which of its items to serve; augment: an AugmentConfig (None
    for validation/prediction); shuffle: a new order every epoch; seed: fixes order and augmentations.
    pad_to > 1 (data-parallel training, segkit.devices.DevicePlan.batch_multiple): the last batch is topped up
    to a multiple of pad_to with the epoch's first items, and batches are `(x, y, w)` with sample weight w = 0
    for those repeats (1 otherwise), so every device gets a non-empty, equal share and the loss ignores them.
    """

    def __init__(
        self,
        cache,
        indices: Sequence[int] | np.ndarray,
        batch_size: int,
        augment: AugmentConfig | None = None,
        shuffle: bool = False,
        seed: int = 0,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
        with_masks: bool = True,
        pad_to: int = 1,
    ) -> None:
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        self.cache = cache
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.ndim != 1 or len(self.indices) == 0:
            raise ValueError("SegmentationDataset: indices must be a non-empty 1-D list")
        if batch_size < 1:
            raise ValueError(f"SegmentationDataset: batch_size must be positive, got {batch_size}")
        self.batch_size = int(batch_size)
        self.augment_cfg = augment
        self.shuffle = shuffle
        self.seed = int(seed)
        self.with_masks = with_masks
        self.pad_to = int(pad_to)
        if self.pad_to < 1 or (self.pad_to > 1 and not with_masks):
            raise ValueError(f"SegmentationDataset: pad_to must be ≥ 1 (and 1 without masks), got {pad_to}")
        if with_masks and cache.masks is None:
            raise ValueError("SegmentationDataset: with_masks=True but the cache has no masks")
        self.epoch = 0
        self._local = threading.local()  # one albumentations pipeline per worker thread

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
        return self.batch(index, self.epoch)

    def as_tf_dataset(self, parallel_calls: int | None = None):
        """The same batches as a tf.data pipeline that builds several batches at once and prefetches (TensorFlow
        backend only). Keras feeds a PyDataset to TensorFlow through one Python generator, which on a small
        machine serialises batch building with the training step; this overlaps them. Advance the epoch with
        `epoch_callback()` so augmentations and order still change per epoch."""
        import tensorflow as tf

        x_shape = (None,) + tuple(self.cache.images.shape[1:])

        def load(i):
            return self.batch(int(i), self.epoch)

        if self.pad_to > 1:
            y_shape = (None,) + tuple(self.cache.masks.shape[1:])

            def fn(i):
                x, y, w = tf.numpy_function(load, [i], (tf.float32, tf.float32, tf.float32))
                return tf.ensure_shape(x, x_shape), tf.ensure_shape(y, y_shape), tf.ensure_shape(w, (None,))
        elif self.with_masks:
            y_shape = (None,) + tuple(self.cache.masks.shape[1:])

            def fn(i):
                x, y = tf.numpy_function(load, [i], (tf.float32, tf.float32))
                return tf.ensure_shape(x, x_shape), tf.ensure_shape(y, y_shape)
        else:
            def fn(i):
                return tf.ensure_shape(tf.numpy_function(load, [i], tf.float32), x_shape)

        calls = parallel_calls or tf.data.AUTOTUNE
        data = tf.data.Dataset.range(len(self)).map(fn, num_parallel_calls=calls, deterministic=True)
        return data.prefetch(tf.data.AUTOTUNE)

    def epoch_callback(self) -> keras.callbacks.Callback:
        """A callback that moves this dataset to the next epoch (needed with as_tf_dataset)."""
        return keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs=None: self.on_epoch_end())

    def keras_feed(self) -> tuple[object, list]:
        """What to hand to `model.fit` / `predict` on the current backend, with the callbacks it needs: the
        tf.data pipeline on TensorFlow, the PyDataset itself (Keras' worker threads) elsewhere."""
        if keras.backend.backend() == "tensorflow":
            return self.as_tf_dataset(), [self.epoch_callback()]
        return self, []

    def batch(self, index: int, epoch: int):
        """Batch `index` of `epoch` (a pure function of seed, epoch and index)."""
        order = self.order(epoch)
        items = order[index * self.batch_size: (index + 1) * self.batch_size]
        n_real = len(items)
        if self.pad_to > 1 and n_real % self.pad_to:
            extra = self.pad_to - n_real % self.pad_to
            items = np.concatenate([items, np.resize(order, extra)])  # the epoch's first items (wrapping)
        pipe = self._pipeline()
        cache = self.cache
        x = np.empty((len(items),) + cache.images.shape[1:], np.float32)
        y = np.empty((len(items),) + cache.masks.shape[1:], np.float32) if self.with_masks else None
        for pos, i in enumerate(items):
            image = cache.images[i]
            mask = cache.masks[i] if y is not None else None
            if pipe is not None:
                # raw dtype in, raw dtype out: augmentations never lose 16-bit precision or clip a range
                seed = int(np.random.default_rng([self.seed, epoch, index, pos]).integers(2**31 - 1))
                data = {"image": np.asarray(image)} if y is None else {"image": np.asarray(image), "mask": np.asarray(mask)}
                out = aug.apply(pipe, seed, **data)
                image, mask = out["image"], out.get("mask")
            x[pos] = image  # raw values as float32; the model's first layer normalises them
            if y is not None:
                y[pos] = mask
        if self.pad_to > 1:
            return x, y, (np.arange(len(items)) < n_real).astype(np.float32)
        return x if y is None else (x, y)
