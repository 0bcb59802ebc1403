"""Weight averaging of a fold: an exponential moving average of the weights (`train.ema`) or stochastic weight
averaging over the last N epochs or the K best epochs (`train.swa`). Either way the averaged weights become the
fold's `best.keras` (what OOF, tuning and predict use) and the raw best stays beside it as `best_raw.keras`, so the
report can show what averaging changed; done.json records both validation values under "averaging" (an
`AveragingRecord`, segkit.runs: the one shape its writer here and its reader, the report, share).

EMA lives in the optimizer (Keras' `use_ema` / `ema_momentum`, updated inside the compiled train step on every
backend and saved with the optimizer in last.keras, so a resumed fold resumes its average). Validation, early
stopping, LR reduction and the choice of best.keras use the EMA weights (swapped in around Keras' validation
pass with the public `optimizer.finalize_variable_values`, swapped back afterwards); the raw weights are
validated too (history columns `raw_val_*`) and their best kept as best_raw.keras. BatchNorm statistics of the
EMA checkpoint are the run's own moving averages (Keras' EMA covers trainable weights only).

SWA saves the weights at the end of each epoch that can still count (a snapshot file per epoch in the fold
folder, so a resumed fold keeps them), averages them when the fold has finished, and re-estimates the BatchNorm
statistics with a forward pass in training mode over `bn_batches` training batches (cumulative mean of the batch
statistics, as torch's `update_bn`). Validation and early stopping during training use the raw weights.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import keras
import numpy as np

from segkit.config import TrainConfig
from segkit.runs import AveragingRecord, FoldDir

SWA_BN_BATCHES = 100  # default number of training batches for the BatchNorm re-estimation after SWA


def optimizer_options(tc: TrainConfig) -> dict[str, Any]:
    """Keyword arguments for the Keras optimizer: the EMA of the weights when `train.ema` is set."""
    if tc.ema is None:
        return {}
    return {"use_ema": True, "ema_momentum": float(tc.ema), "ema_overwrite_frequency": None}


def swa_setting(swa: dict[str, Any]) -> tuple[str, int, int]:
    """(how, n, bn_batches) of a checked `train.swa` mapping: how is "last" or "best"."""
    how = "last" if "last" in swa else "best"
    return how, int(swa[how]), int(swa.get("bn_batches", SWA_BN_BATCHES))


def make_averager(tc: TrainConfig, fold: FoldDir, monitor: str, mode: str, val_feed: Any,
                  bn_batches: Callable[[int], Iterable[np.ndarray]] | None, state: dict | None) -> "Averager | None":
    """The averaging callback train.ema / train.swa ask for (None when both are off). `val_feed` is the
    validation data as model.evaluate takes it (or a function building it, called when first needed);
    `bn_batches(n)` yields up to n training input batches (SWA's BatchNorm re-estimation); `state` is the fold's
    state.json on resume."""
    saved = (state or {}).get("averaging") or {}
    if tc.ema is not None:
        return EmaAverager(fold, monitor, mode, val_feed, saved, momentum=float(tc.ema))
    if tc.swa is not None:
        how, n, n_bn = swa_setting(tc.swa)
        return SwaAverager(fold, monitor, mode, val_feed, saved, how=how, n=n, n_bn=n_bn, bn_batches=bn_batches)
    return None


def better(value: float | None, than: float | None, mode: str) -> bool:
    """Whether a monitored value improves on `than` (None: nothing yet); mode "max" or "min"."""
    if value is None or not np.isfinite(value):
        return False
    return than is None or (value > than if mode == "max" else value < than)


class Averager(keras.callbacks.Callback):
    """What train.py's epoch keeper asks of an averaging method: the weights to save as best.keras, the state to
    resume from, and, once the fold has finished, the averaged best.keras and its record for done.json."""

    kind = ""

    def __init__(self, fold: FoldDir, monitor: str, mode: str, val_feed: Any) -> None:
        super().__init__()
        self.fold, self.monitor, self.mode = fold, monitor, mode
        self._val_feed = val_feed  # the data, or a function building it when first needed

    @property
    def val_feed(self) -> Any:
        if callable(self._val_feed) and not isinstance(self._val_feed, keras.utils.PyDataset):
            self._val_feed = self._val_feed()
        return self._val_feed

    @contextlib.contextmanager
    def best_weights(self) -> Iterator[None]:
        """Inside the block the model holds the weights best.keras is saved with (during training)."""
        yield

    def state(self) -> dict[str, Any]:
        """What state.json keeps so a resumed fold continues the average."""
        return {}

    def commit(self) -> None:
        """Called once state.json is written: files the saved state no longer refers to may go."""

    def finish(self, model: keras.Model, best: float | None) -> dict[str, Any]:
        """Make best.keras hold the averaged weights (the raw best as best_raw.keras); the done.json record
        (an AveragingRecord's to_json)."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Called once done.json is written: delete what only resuming needed."""

    def evaluate(self, model: keras.Model) -> dict[str, float]:
        """The validation metrics of the model's current weights (no callbacks, no progress bar)."""
        logs = {k: float(v) for k, v in model.evaluate(self.val_feed, verbose=0, return_dict=True).items()}
        for key in list(logs):  # a model with the classification head: mask metrics under their plain names
            name = key[len("mask_"):]
            if key.startswith("mask_") and name != "loss" and name not in logs:
                logs[name] = logs.pop(key)
        return logs

    def _monitored(self, logs: dict[str, float]) -> float | None:
        name = self.monitor[len("val_"):] if self.monitor.startswith("val_") else self.monitor
        return logs.get(name)


# --- EMA -------------------------------------------------------------------------------------------

class EmaAverager(Averager):
    """train.ema: Keras validates the EMA weights (val_*), this callback the raw ones (raw_val_*)."""

    kind = "ema"

    def __init__(self, fold: FoldDir, monitor: str, mode: str, val_feed: Any, saved: dict, momentum: float) -> None:
        super().__init__(fold, monitor, mode, val_feed)
        self.momentum = momentum
        self.raw_best: float | None = saved.get("raw_best")
        self._raw: list | None = None  # the raw trainable values while the EMA weights are swapped in
        self._fitting = False

    def on_train_begin(self, logs=None) -> None:
        self._fitting = True

    def on_train_end(self, logs=None) -> None:
        self._fitting = False

    def on_test_begin(self, logs=None) -> None:
        if self._fitting:
            self._swap_in(self.model)

    def on_test_end(self, logs=None) -> None:
        self._swap_out(self.model)

    def _swap_in(self, model) -> None:
        optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # under a LossScaleOptimizer
        if self._raw is not None or not getattr(optimizer, "use_ema", False):
            return
        if int(keras.ops.convert_to_numpy(optimizer.iterations)) == 0:
            return  # no step taken yet: the average holds nothing
        self._raw = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
        optimizer.finalize_variable_values(model.trainable_variables)  # public: copies the EMA into the model
        for var in model.trainable_variables:  # own buffers (on JAX the assign shares the average's array, which
            var.assign(keras.ops.copy(var))  # an evaluate would then free with the model's)

    def _swap_out(self, model) -> None:
        if self._raw is None:
            return
        for var, value in zip(model.trainable_variables, self._raw):
            var.assign(value)
        self._raw = None

    @contextlib.contextmanager
    def best_weights(self) -> Iterator[None]:
        self._swap_in(self.model)
        try:
            yield
        finally:
            self._swap_out(self.model)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if logs is None:
            return
        raw = self.evaluate(self.model)
        logs.update({f"raw_val_{k}": v for k, v in raw.items()})
        value = self._monitored(raw)
        if better(value, self.raw_best, self.mode) or not self.fold.best_raw.is_file():
            self.raw_best = value if better(value, self.raw_best, self.mode) else self.raw_best
            save_model(self.model, self.fold.best_raw)

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "raw_best": self.raw_best}

    def finish(self, model: keras.Model, best: float | None) -> dict[str, Any]:
        """best.keras already holds the best EMA weights (saved during training)."""
        return AveragingRecord(self.kind, self.monitor, val_raw=self.raw_best, val_averaged=best,
                               momentum=self.momentum).to_json()


# --- SWA -------------------------------------------------------------------------------------------

def update_pool(pool: Sequence[dict], entry: dict, how: str, n: int, mode: str) -> tuple[list[dict], list[dict]]:
    """The epochs SWA keeps after `entry` ({"epoch", "value"}) joins `pool`, and those it drops: "last" keeps
    the n most recent epochs; "best" keeps the n best by the monitored value (ties: the earlier epoch stays;
    an epoch without a value never enters)."""
    if how == "last":
        ordered = sorted([*pool, entry], key=lambda e: e["epoch"])
        return ordered[-n:], ordered[:-n]
    if how != "best":
        raise ValueError(f"unknown SWA selection {how!r}")
    if entry.get("value") is None or not np.isfinite(entry["value"]):
        return list(pool), []
    sign = -1.0 if mode == "max" else 1.0
    ranked = sorted([*pool, entry], key=lambda e: (sign * e["value"], e["epoch"]))
    kept = sorted(ranked[:n], key=lambda e: e["epoch"])
    return kept, ranked[n:]


def average_weight_files(paths: Sequence[Path]) -> list[np.ndarray]:
    """The element-wise mean of the weight lists saved in `paths` (float64 accumulation, each weight back in
    its own dtype; a non-float weight, such as a random-seed state, is taken from the last file)."""
    total: list[np.ndarray] | None = None
    last: list[np.ndarray] = []
    for path in paths:
        with np.load(path) as data:
            last = [data[f"arr_{i}"] for i in range(len(data.files))]
        if total is None:
            total = [np.zeros(w.shape, np.float64) for w in last]
        for acc, w in zip(total, last):
            if np.issubdtype(w.dtype, np.floating):
                acc += w
    if total is None:
        raise ValueError("no weights to average")
    return [(acc / len(paths)).astype(w.dtype) if np.issubdtype(w.dtype, np.floating) else w
            for acc, w in zip(total, last)]


def batchnorm_layers(model: keras.Model) -> list:
    """Every trainable BatchNormalization layer of a model, nested models included."""
    found, stack = [], [model]
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            if layer.trainable:
                found.append(layer)
        stack.extend(getattr(layer, "layers", None) or [])
    return found


def reestimate_batchnorm(model: keras.Model, batches: Iterable[np.ndarray]) -> int:
    """Recompute BatchNorm moving statistics for the model's current weights: a forward pass in training mode
    over `batches`, each layer's momentum set so the moving statistics become the cumulative mean of the batch
    statistics. Returns the number of batches used (0 when the model has no BatchNorm layer)."""
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    used = 0
    try:
        for x in batches:
            used += 1
            for layer in layers:
                layer.momentum = 1.0 - 1.0 / used  # first batch replaces, then a running mean
            model(keras.ops.convert_to_tensor(x), training=True)
    finally:
        for layer, m in zip(layers, momenta):
            layer.momentum = m
    return used


class SwaAverager(Averager):
    """train.swa: snapshots of the epochs that can still count, averaged when the fold has finished."""

    kind = "swa"

    def __init__(self, fold: FoldDir, monitor: str, mode: str, val_feed: Any, saved: dict, how: str, n: int,
                 n_bn: int, bn_batches: Callable[[int], Iterable[np.ndarray]] | None) -> None:
        super().__init__(fold, monitor, mode, val_feed)
        self.how, self.n, self.n_bn, self.bn_batches = how, n, n_bn, bn_batches
        self.pool: list[dict] = [dict(e) for e in saved.get("pool", [])]
        self._dropped: list[dict] = []

    def on_train_begin(self, logs=None) -> None:
        # an interrupted finish may have left the averaged weights as best.keras: the raw best goes back
        if self.fold.best_raw.is_file():
            os.replace(self.fold.best_raw, self.fold.best)
        keep = {self.fold.snapshot(e["epoch"]) for e in self.pool}
        for path in self.fold.snapshots():
            if path not in keep:  # written by an epoch a killed run never recorded
                path.unlink(missing_ok=True)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        value = (logs or {}).get(self.monitor)
        entry = {"epoch": epoch + 1, "value": None if value is None else float(value)}
        kept, dropped = update_pool(self.pool, entry, self.how, self.n, self.mode)
        if entry in kept:
            save_weights_file(self.model, self.fold.snapshot(entry["epoch"]))
        self.pool, self._dropped = kept, [e for e in dropped if e is not entry]

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "pool": self.pool}

    def commit(self) -> None:
        for e in self._dropped:
            self.fold.snapshot(e["epoch"]).unlink(missing_ok=True)
        self._dropped = []

    def finish(self, model: keras.Model, best: float | None) -> dict[str, Any]:
        record = AveragingRecord(self.kind, self.monitor, val_raw=best, val_averaged=None, how=self.how, n=self.n,
                                 epochs=[e["epoch"] for e in self.pool])
        paths = [self.fold.snapshot(e["epoch"]) for e in self.pool]
        if not paths or not all(p.is_file() for p in paths):
            record.skipped = "no epoch snapshots to average"
            return record.to_json()
        model.set_weights(average_weight_files(paths))
        batches = self.bn_batches(self.n_bn) if (self.bn_batches is not None and self.n_bn > 0) else ()
        record.bn_batches = reestimate_batchnorm(model, batches)
        record.val_averaged = self._monitored(self.evaluate(model))
        if not self.fold.best_raw.is_file():  # a rerun after a killed finish: best_raw already holds the raw best
            os.replace(self.fold.best, self.fold.best_raw)
        save_model(model, self.fold.best)
        return record.to_json()

    def cleanup(self) -> None:
        for path in self.fold.snapshots():
            path.unlink(missing_ok=True)


# --- files ---------------------------------------------------------------------------------------

def save_model(model: keras.Model, path: Path) -> None:
    """Save a .keras checkpoint atomically (temporary sibling, then rename)."""
    tmp = FoldDir.temp_for(path)
    model.save(tmp)
    os.replace(tmp, path)


def save_weights_file(model: keras.Model, path: Path) -> None:
    """Save the model's weights (trainable and not, in `model.weights` order) as an .npz, atomically."""
    tmp = FoldDir.temp_for(path)
    with open(tmp, "wb") as fh:
        np.savez(fh, *model.get_weights())
    os.replace(tmp, path)
