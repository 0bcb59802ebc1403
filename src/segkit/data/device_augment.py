"""Augmentation inside the training step, on the device (`train.augment_on_device: true`), for when the CPU feed
cannot keep up with a fast GPU: horizontal / vertical flips, 90° rotations and brightness/contrast of
`train.augment`, with its probabilities, written in `keras.ops` (TensorFlow, JAX and PyTorch backends).

The CPU albumentations pipeline (segkit.data.augment) stays the default and the reference; with this on, the feed
keeps only what the device does not (shift_scale_rotate). `attach(model, ...)` wraps the model's own `train_step`
so each training batch (x, y[, w]) is transformed before the forward pass — image and mask by the same flips and
rotation, brightness/contrast on the image only — and nothing else changes: `predict` and `evaluate` never
augment, and nothing is added to the model's layers, weights or config, so a saved checkpoint is the plain model.

Randomness is stateless: the draws of a step are a function of (seed, the optimizer's step counter, replica),
so a resumed fold continues the sequence, and no random-state variable enters the checkpoint.
"""
from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

N_DRAWS = 7  # per image: hflip, vflip, rot90, rot90's k, brightness_contrast, alpha, beta
BRIGHTNESS_LIMIT = CONTRAST_LIMIT = 0.1  # as segkit.data.augment's BrightnessContrast


def device_part(augment) -> dict[str, float]:
    """The probabilities of the augmentations this module runs on the device (the rest stays on the CPU)."""
    return {name: float(getattr(augment, name)) for name in ("hflip", "vflip", "rot90", "brightness_contrast")}


def cpu_part(augment):
    """`augment` (an AugmentConfig) without what runs on the device: the CPU feed's share."""
    import dataclasses

    return dataclasses.replace(augment, **{name: 0.0 for name in device_part(augment)})


def augment_batch(x, y, draws, probs: dict[str, float], value_range: Sequence[float] | None = None):
    """(x, y) of one batch, transformed per image by `draws` (B, N_DRAWS) uniform numbers in [0, 1): flips and
    a 90° rotation (k from 0..3, as albumentations' RandomRotate90; 0 or 2 for non-square images) applied alike to
    x (B, H, W, bands) and every (B, H, W, ·) tensor of y (a tensor, list or dict; others pass unchanged), then
    brightness/contrast on x only: alpha·x + beta·mean(x) per image, alpha ∈ 1 ± 0.1, beta ∈ ± 0.1, zeros stay
    zero, clipped to `value_range` (the raw dtype's range) when given."""
    h, w = x.shape[1], x.shape[2]
    square = h is not None and h == w

    def flag(col, p):
        return ops.cast(draws[:, col] < p, "bool")

    hflip, vflip, rot = flag(0, probs.get("hflip", 0)), flag(1, probs.get("vflip", 0)), flag(2, probs.get("rot90", 0))
    k = ops.where(rot, ops.cast(ops.floor(draws[:, 3] * 4.0), "int32") % 4, 0)
    if not square:
        k = (k // 2) * 2  # a quarter turn would change the shape: half turns only

    def geometric(t):
        if len(t.shape) != 4 or t.shape[1] != h or t.shape[2] != w:
            return t
        t = _where(hflip, ops.flip(t, axis=2), t)
        t = _where(vflip, ops.flip(t, axis=1), t)
        if probs.get("rot90", 0) > 0:
            half = ops.flip(ops.flip(t, axis=1), axis=2)
            t_new = _where(k == 2, half, t)
            if square:
                quarter = ops.flip(ops.transpose(t, (0, 2, 1, 3)), axis=1)  # np.rot90(., 1, axes=(1, 2))
                three = ops.flip(ops.transpose(t, (0, 2, 1, 3)), axis=2)  # np.rot90(., 3, axes=(1, 2))
                t_new = _where(k == 1, quarter, _where(k == 3, three, t_new))
            t = t_new
        return t

    x = geometric(x)
    y = _map_structure(geometric, y)
    if probs.get("brightness_contrast", 0) > 0:
        on = ops.cast(flag(4, probs["brightness_contrast"]), x.dtype)
        alpha = 1.0 + on * (draws[:, 5] * 2.0 - 1.0) * CONTRAST_LIMIT
        beta = on * (draws[:, 6] * 2.0 - 1.0) * BRIGHTNESS_LIMIT
        mean = ops.mean(x, axis=(1, 2, 3))
        out = x * alpha[:, None, None, None] + (beta * mean)[:, None, None, None]
        if value_range is not None:
            out = ops.clip(out, float(value_range[0]), float(value_range[1]))
        x = ops.where(ops.equal(x, 0), ops.zeros_like(x), out)
    return x, y


def _where(cond, a, b):
    return ops.where(ops.reshape(cond, (-1, 1, 1, 1)), a, b)


def _map_structure(fn, y):
    if isinstance(y, dict):
        return {key: fn(v) for key, v in y.items()}
    if isinstance(y, (list, tuple)):
        return type(y)(fn(v) for v in y)
    return fn(y)


def uniform_draws(n, seed: int, step, replica=0):
    """(n, N_DRAWS) uniform numbers in [0, 1), a pure function of (seed, step, replica): the stateless
    generator of each backend (the step may be a traced tensor inside the compiled train step)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        pair = tf.stack([tf.cast(seed, tf.int64) + 7919 * tf.cast(replica, tf.int64), tf.cast(step, tf.int64)])
        return tf.random.stateless_uniform(tf.stack([tf.cast(n, tf.int32), N_DRAWS]), seed=pair)
    if backend == "jax":
        import jax

        key = jax.random.fold_in(jax.random.PRNGKey(seed), ops.cast(step, "int32"))
        return jax.random.uniform(key, (int(n), N_DRAWS))
    if backend == "torch":
        import torch

        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(ops.convert_to_numpy(step)))
        return ops.convert_to_tensor(torch.rand((int(n), N_DRAWS), generator=gen).numpy())
    raise ValueError(f"augment_on_device: backend {backend!r} not supported")


def attach(model, augment, seed: int, value_range: Sequence[float] | None = None) -> None:
    """Make `model.fit` augment every training batch on the device (see the module's docstring): the model's
    `train_step` is wrapped on this instance only, so a checkpoint, a reloaded model and `predict` are unaffected.
    Call after `compile` (and again after loading a checkpoint to resume). `augment` is an AugmentConfig."""
    probs = device_part(augment)
    inner = model.train_step
    backend = keras.backend.backend()

    def transformed(data, step, replica=0):
        x, y, w = keras.utils.unpack_x_y_sample_weight(data)
        draws = uniform_draws(ops.shape(x)[0], seed, step, replica)
        x, y = augment_batch(x, y, draws, probs, value_range)
        return keras.utils.pack_x_y_sample_weight(x, y, w)

    if backend == "jax":
        def train_step(state, data):
            return inner(state, transformed(data, state[2][_iterations_index(model.optimizer)]))
    elif backend == "tensorflow":
        def train_step(data):
            import tensorflow as tf

            context = tf.distribute.get_replica_context()
            replica = context.replica_id_in_sync_group if context is not None else 0
            return inner(transformed(data, model.optimizer.iterations, replica))
    else:
        def train_step(data):
            return inner(transformed(data, model.optimizer.iterations))

    model.train_step = train_step


def _iterations_index(optimizer: Any) -> int:
    """Where the optimizer's step counter sits in `optimizer.variables` (JAX's train step gets them as a list)."""
    target = optimizer.iterations
    for i, v in enumerate(optimizer.variables):
        if v is target or getattr(v, "path", None) == getattr(target, "path", object()):
            return i
    raise RuntimeError("augment_on_device: the optimizer's iteration counter is not among its variables")
