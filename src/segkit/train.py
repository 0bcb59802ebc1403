"""K-fold training: per model and fold a best checkpoint, history, out-of-fold probabilities; resumable."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import keras
import numpy as np

from segkit.config import Config, save_config
from segkit.data.io import atomic_save_npy, atomic_write
from segkit.errors import TrainingError


@dataclass
class RunData:
    """What every stage of a run needs: the adapter, training samples, their cache and fold split."""

    adapter: object
    samples: list
    cache: object
    folds: np.ndarray


def open_run_data(cfg: Config, quiet: bool = False) -> RunData:
    """Read the competition's training list, prepare its cache and load (or make) the fold split."""
    from segkit.data.cache import prepare
    from segkit.data.competitions.base import make_adapter
    from segkit.data.folds import load_or_assign_folds
    from segkit.errors import DataError

    adapter = make_adapter(cfg.data.competition, cfg.data.root, cfg.data.options)
    samples = adapter.train_samples()
    if cfg.data.max_train_samples:
        samples = samples[: cfg.data.max_train_samples]
    if not samples:
        raise DataError(f"{cfg.data.root}: no training samples found for {cfg.data.competition}")
    h, w = cfg.data.image_size
    cache = prepare(adapter, samples, (h, w), cfg.data.cache_dir, name=f"{cfg.data.competition}-train-{h}x{w}", with_masks=True,
                    quiet=quiet)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    folds = load_or_assign_folds(cfg.run_dir / "folds.csv", samples, cfg.train.folds, cfg.seed)
    return RunData(adapter, samples, cache, folds)


def fold_dir(cfg: Config, tag: str, fold: int) -> Path:
    """Where one fold of one model keeps its checkpoints, history and OOF predictions."""
    return cfg.run_dir / tag / f"fold_{fold}"


def model_tags(cfg: Config) -> list[str]:
    """The folder name of each architecture in the config, in order."""
    from segkit.models.registry import model_tag

    tags = [model_tag(spec, i) for i, spec in enumerate(cfg.models)]
    if len(set(tags)) != len(tags):
        raise TrainingError(f"models: two entries share a tag ({tags}); give each a distinct 'tag'")
    return tags


def folds_to_train(cfg: Config) -> list[int]:
    """The folds this invocation trains (all, or train.train_folds)."""
    wanted = cfg.train.train_folds if cfg.train.train_folds is not None else list(range(cfg.train.folds))
    bad = [k for k in wanted if not 0 <= k < cfg.train.folds]
    if bad:
        from segkit.errors import ConfigError

        raise ConfigError(f"train.train_folds: folds {bad} outside 0..{cfg.train.folds - 1}")
    return list(wanted)


def train(cfg: Config, quiet: bool = False) -> Path:
    """Train every model of the config on its folds, skipping finished folds and resuming an interrupted one.
    When every fold of every model is done, tune post-processing on the out-of-fold predictions."""
    run = open_run_data(cfg, quiet=quiet)
    save_config(cfg, cfg.run_dir / "config.yaml")
    tags = model_tags(cfg)
    for spec, tag in zip(cfg.models, tags):
        for k in folds_to_train(cfg):
            fdir = fold_dir(cfg, tag, k)
            if (fdir / "done.json").is_file():
                if not quiet:
                    print(f"[{tag} fold {k}] already trained, skipping")
                continue
            train_fold(cfg, run, spec, tag, k, quiet=quiet)
    if all_folds_done(cfg):
        from segkit.postprocess import tune

        tune(cfg, run=run, quiet=quiet)
    return cfg.run_dir


def all_folds_done(cfg: Config) -> bool:
    """True when every fold of every model has finished (OOF predictions written)."""
    return all((fold_dir(cfg, t, k) / "done.json").is_file() for t in model_tags(cfg) for k in range(cfg.train.folds))


def train_fold(cfg: Config, run: RunData, spec: dict, tag: str, k: int, quiet: bool = False) -> None:
    """Train one model on one fold (resuming from its last finished epoch) and write its OOF predictions."""
    from segkit.data.generator import SegmentationDataset
    from segkit.losses import get_loss
    from segkit.metrics import get_metrics
    from segkit.models.registry import build_model, load_model, set_precision

    fdir = fold_dir(cfg, tag, k)
    fdir.mkdir(parents=True, exist_ok=True)
    tc = cfg.train
    set_precision(tc.mixed_precision)
    keras.utils.set_random_seed(cfg.seed + 1000 * k)
    train_idx = np.flatnonzero(run.folds != k)
    val_idx = np.flatnonzero(run.folds == k)
    n_classes = len(run.adapter.classes)
    common = dict(workers=tc.workers, use_multiprocessing=tc.use_multiprocessing)
    train_ds = SegmentationDataset(run.cache, train_idx, tc.batch_size, augment=tc.augment, shuffle=True,
                                   seed=cfg.seed + k, **common)
    val_ds = SegmentationDataset(run.cache, val_idx, tc.batch_size, augment=None, shuffle=False, seed=0, **common)

    state_path = fdir / "state.json"
    last_path = fdir / "last.keras"
    state = json.loads(state_path.read_text()) if state_path.is_file() and last_path.is_file() else None
    if state:
        model = load_model(last_path, raw_input=True)
        if not quiet:
            print(f"[{tag} fold {k}] resuming after epoch {state['epoch']}")
    else:
        h, w = cfg.data.image_size
        model = build_model(spec, (h, w, run.adapter.bands), n_classes, where=f"models.{cfg.models.index(spec)}",
                            normalisation=run.adapter.input_normalisation(run.cache.images.dtype))
        model.compile(
            optimizer=keras.optimizers.Adam(tc.learning_rate),
            loss=get_loss(tc.loss, n_classes),
            metrics=get_metrics(tc.metrics, n_classes, activation=spec.get("activation", "sigmoid")),
        )
    monitor = "val_dice" if "dice" in tc.metrics else "val_loss"
    mode = "max" if monitor != "val_loss" else "min"
    early = keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=tc.early_stopping_patience)
    reduce = keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode=mode, patience=tc.reduce_lr_patience,
                                               factor=tc.reduce_lr_factor, verbose=0)
    keeper = EpochKeeper(fdir, monitor, mode, early, reduce, state)
    initial_epoch = state["epoch"] if state else 0
    if initial_epoch < tc.epochs and not (state or {}).get("stopped"):
        train_ds.epoch = initial_epoch  # a resumed fold sees the augmentations it would have seen
        train_feed, feed_callbacks = train_ds.keras_feed()
        val_feed, _ = val_ds.keras_feed()
        model.fit(
            train_feed,
            validation_data=val_feed,
            epochs=tc.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=tc.steps_per_epoch,
            shuffle=False,  # the dataset shuffles itself, per (seed, epoch)
            callbacks=[*feed_callbacks, early, reduce, keeper],
            verbose=0 if quiet else tc.verbose,
        )
    best = load_model(fdir / "best.keras") if (fdir / "best.keras").is_file() else model
    write_oof(cfg, run, best, val_idx, fdir, quiet=quiet)
    with atomic_write(fdir / "done.json") as fh:
        json.dump({"fold": k, "model": tag, "best": keeper.best, "monitor": monitor,
                   "epochs": keeper.epoch, "n_val": int(len(val_idx))}, fh)
    if last_path.is_file():
        last_path.unlink()  # resume point no longer needed; best.keras stays
    keras.backend.clear_session()


def write_oof(cfg: Config, run: RunData, model, val_idx: np.ndarray, fdir: Path, quiet: bool = False) -> None:
    """Out-of-fold probabilities of the validation samples (float16, with their sample indices), streamed batch
    by batch into a memory-mapped .npy that is moved into place when complete."""
    from segkit.predict import predict_probabilities, resolve_tta

    tta = resolve_tta(cfg, run.adapter)
    h, w = run.cache.images.shape[1:3]
    tmp = fdir / ".oof.tmp.npy"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                    shape=(len(val_idx), h, w, len(run.adapter.classes)))
    pos = 0
    for probs in predict_probabilities([model], run.cache, val_idx, run.adapter.normalise, tta,
                                       cfg.predict.batch_size, quiet=quiet):
        out[pos:pos + len(probs)] = probs
        pos += len(probs)
    out.flush()
    del out
    os.replace(tmp, fdir / "oof.npy")
    atomic_save_npy(fdir / "oof_index.npy", val_idx.astype(np.int64))


class EpochKeeper(keras.callbacks.Callback):
    """Keras callback saving, after every epoch, the best checkpoint, a resumable last checkpoint, the
    early-stopping / LR-reduction state and the history CSV, all atomically, so a killed run resumes."""

    def __init__(self, fdir: Path, monitor: str, mode: str, early, reduce, state: dict | None) -> None:
        super().__init__()
        self.fdir, self.monitor, self.mode = fdir, monitor, mode
        self.early, self.reduce = early, reduce
        self.state = state
        self.history: list[dict] = list(state["history"]) if state else []
        self.best = state["best"] if state else None
        self.epoch = state["epoch"] if state else 0

    def on_train_begin(self, logs=None) -> None:
        if not self.state:
            return
        for cb, key in ((self.early, "early"), (self.reduce, "reduce")):
            for attr, value in self.state.get(key, {}).items():
                if value is not None:
                    setattr(cb, attr, value)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = {k: float(v) for k, v in (logs or {}).items()}
        logs["lr"] = float(self.model.optimizer.learning_rate)
        self.history.append({"epoch": epoch + 1, **logs})
        value = logs.get(self.monitor)
        improved = value is not None and (
            self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        )
        if improved or not (self.fdir / "best.keras").is_file():
            self.best = value if improved else self.best
            _save_model(self.model, self.fdir / "best.keras")
        self.epoch = epoch + 1
        _save_model(self.model, self.fdir / "last.keras")
        state = {
            "epoch": self.epoch,
            "best": self.best,
            "history": self.history,
            "stopped": bool(getattr(self.model, "stop_training", False)),
            "early": {"wait": int(self.early.wait), "best": _num(self.early.best),
                      "stopped_epoch": int(self.early.stopped_epoch)},
            "reduce": {"wait": int(self.reduce.wait), "best": _num(self.reduce.best),
                       "cooldown_counter": int(self.reduce.cooldown_counter)},
        }
        write_history_csv(self.fdir / "history.csv", self.history)
        with atomic_write(self.fdir / "state.json") as fh:
            json.dump(state, fh)


def _num(x) -> float | None:
    return None if x is None else float(x)


def _save_model(model, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def write_history_csv(path: Path, history: Sequence[dict]) -> None:
    """The per-epoch log as CSV (rewritten whole, atomically, so a resumed fold has no duplicate rows)."""
    import pandas as pd

    with atomic_write(path) as fh:
        pd.DataFrame(list(history)).to_csv(fh, index=False)


def clear_fold(cfg: Config, tag: str, k: int) -> None:
    """Forget one fold's results so it trains again from scratch."""
    shutil.rmtree(fold_dir(cfg, tag, k), ignore_errors=True)
