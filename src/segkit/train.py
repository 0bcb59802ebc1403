"""K-fold training: per model and fold a best checkpoint, history, out-of-fold probabilities; resumable.

A fold records the settings that shape its weights (segkit.runs.fold_fingerprint); a rerun with other such
settings refuses instead of silently reusing folds trained with the old ones."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Sequence

import keras
import numpy as np

from segkit.averaging import Averager, make_averager, optimizer_options
from segkit.budget import Planner
from segkit.config import Config
from segkit.data import device_augment
from segkit.data.generator import SegmentationDataset
from segkit.devices import DevicePlan, plan_devices
from segkit.durations import parse_duration
from segkit.errors import ConfigError, TrainingError
from segkit.losses import compile_args, get_loss
from segkit.metrics import get_metrics
from segkit.models.registry import build_model, has_classifier, load_model, set_precision
from segkit.modelspec import ModelSpec
from segkit.predict import predict_ensemble, resolve_tta
from segkit.schedule import LrSchedule, loss_switch_epoch, validates
from segkit.storage import atomic_save_npy, atomic_write, sweep_stale
from segkit.runs import RESTART_HINT, FoldDir, RunData, RunDir, changed_keys, fold_fingerprint, model_tags, \
    open_run_data, pseudo_round_of


def folds_to_train(cfg: Config) -> list[int]:
    """The folds this invocation trains (all, or train.train_folds)."""
    wanted = cfg.train.train_folds if cfg.train.train_folds is not None else list(range(cfg.train.folds))
    bad = [k for k in wanted if not 0 <= k < cfg.train.folds]
    if bad:
        raise ConfigError(f"train.train_folds: folds {bad} outside 0..{cfg.train.folds - 1}")
    return list(wanted)


def train(cfg: Config, quiet: bool = False, restart: bool = False, restart_fold: int | None = None) -> Path:
    """Train every model of the config on its folds, skipping finished folds and resuming an interrupted one.

    `restart` wipes the run folder first; `restart_fold` wipes fold K of every model (and the tuned
    post-processing, which no longer describes the run). A run whose folds were trained with other weight
    settings than `cfg` gives now is refused with a TrainingError naming the changed keys. Returns the run folder.
    """
    rd = RunDir.of(cfg)
    tags = model_tags(cfg)
    wanted = folds_to_train(cfg)
    if restart_fold is not None and not 0 <= restart_fold < cfg.train.folds:
        raise ConfigError(f"--restart-fold: fold {restart_fold} outside 0..{cfg.train.folds - 1} "
                          f"(train.folds = {cfg.train.folds})")
    own = pseudo_round_of(cfg)
    if own is not None and rd.path.resolve() in own.path.resolve().parents:
        raise ConfigError(f"train.pseudo: {cfg.train.pseudo!r} is a round of this run ({rd.path}); train a new run "
                          f"on it: name={cfg.name}_p{own.round or 1} train.pseudo={cfg.train.pseudo}")
    if restart and rd.path.exists():
        if not quiet:
            print(f"[train] --restart: deleting {rd.path}")
        rd.wipe()
    run = open_run_data(cfg, quiet=quiet, pseudo=True)
    ids = [s.id for s in run.samples]
    fingerprints = {tag: fold_fingerprint(cfg, tag, ids, run.folds, run.pseudo) for tag in tags}
    check_trained_with(cfg, rd, fingerprints, skip_fold=restart_fold)
    if restart_fold is not None:
        if not quiet:
            print(f"[train] --restart-fold {restart_fold}: deleting fold {restart_fold} of {', '.join(tags)}")
        for tag in tags:
            rd.fold(tag, restart_fold).wipe()
        rd.postprocess.unlink(missing_ok=True)
        rd.weights.unlink(missing_ok=True)  # tuned ensemble weights (predict.tune_weights) describe it no more
    rd.write_config(cfg)  # only now: every trained fold agrees with it
    plan = plan_devices(cfg.train)
    if not quiet:
        print(f"[train] devices: {plan.describe(cfg.train.batch_size)}", flush=True)
        if plan.note:
            print(f"[train] note: {plan.note}", flush=True)
    planner = make_planner(cfg, rd, len(tags) * len(wanted), quiet=quiet)
    for spec, tag in zip(cfg.models, tags):
        for k in wanted:
            fold = rd.fold(tag, k)
            if fold.is_done():
                if not quiet:
                    print(f"[{tag} fold {k}] already trained, skipping")
                continue
            train_fold(cfg, run, spec, tag, k, fingerprints[tag], quiet=quiet, plan=plan, planner=planner)
    if not quiet:
        print_fold_table(rd, tags, wanted)
    return rd.path


def make_planner(cfg: Config, rd: RunDir, units: int, quiet: bool = False) -> Planner | None:
    """The time budget's planner (segkit.budget) when train.time_budget is set, with the plan a resumed run saved."""
    budget = parse_duration(cfg.train.time_budget, "train.time_budget")
    if budget is None:
        return None
    say = None if quiet else (lambda text: print(f"[train] {text}", flush=True))
    return Planner(budget, units, cfg.train.epochs, rd.read_plan, rd.write_plan, say=say,
                   late_from=cfg.train.late_loss_from if cfg.train.late_loss else None)


def planned_epochs(cfg: Config, rd: RunDir) -> int:
    """The epochs a fold of this run trains: the time budget's saved plan, else train.epochs."""
    saved = rd.read_plan() if cfg.train.time_budget is not None else None
    return int(saved["plan"]["epochs"]) if saved and saved.get("plan") else cfg.train.epochs


def check_trained_with(cfg: Config, rd: RunDir, fingerprints: dict[str, dict], skip_fold: int | None = None) -> None:
    """TrainingError naming every weight setting (and `train.epochs`) on which an existing fold differs from
    the config, with the ways out; folds that record no settings (older segkit) are trusted, and `skip_fold`
    (about to be retrained) is not looked at."""
    changes: dict[str, list[str]] = {}
    epochs = planned_epochs(cfg, rd)
    for tag, new in fingerprints.items():
        for k in range(cfg.train.folds):
            if k == skip_fold:
                continue
            fold = rd.fold(tag, k)
            old = fold.read_fingerprint()
            found = changed_keys(old, new) if old is not None else []
            found += _epoch_change(fold, epochs)
            for change in found:
                changes.setdefault(change, []).append(str(fold.path.relative_to(rd.path)))
    if changes:
        listed = "; ".join(f"{c} ({', '.join(where)})" for c, where in changes.items())
        raise TrainingError(
            f"{rd.path}: trained with other settings than the config gives now: {listed}. Keep the old settings, "
            f"or train a new run (name=...), wipe this one (`segkit train --restart CONFIG ...`), or retrain one fold "
            f"({RESTART_HINT.format(k='K')})")


def _epoch_change(fold: FoldDir, epochs: int) -> list[str]:
    """A fold that ran for other epochs than `train.epochs` asks for: a finished fold that ran every epoch
    of a different count, or one that stopped early after more epochs than now allowed. An unfinished fold
    simply resumes up to the new count (unless it is already past it)."""
    if fold.is_done():
        done = fold.read_done()
        ran, early = int(done["epochs"]), bool(done.get("stopped_early"))
    else:
        state = fold.read_state()
        if state is None:
            return []
        ran, early = int(state["epoch"]), bool(state.get("stopped"))
        if not early and ran <= epochs:
            return []
    if ran == epochs or (early and ran < epochs):
        return []
    how = "stopped early after" if early else "ran"
    return [f"train.epochs: {epochs} asked, the fold {how} {ran}"]


def train_fold(cfg: Config, run: RunData, spec: ModelSpec, tag: str, k: int, fingerprint: dict, quiet: bool = False,
               plan: DevicePlan | None = None, planner: Planner | None = None) -> None:
    """Train one model on one fold (resuming from its last finished epoch) and write its OOF predictions.

    `plan` (segkit.devices; made from cfg.train when None) gives the devices, precision and XLA setting: the
    model is built or loaded and trained inside its distribution scope on batches of train.batch_size per
    device; the OOF predictions are written on one device, from best.keras."""
    fold = RunDir.of(cfg).fold(tag, k)
    state = fold.read_state()
    fold.write_fingerprint(fingerprint)
    sweep_stale(fold.path)  # checkpoints / OOF half-written by a killed process
    tc = cfg.train
    plan = plan or plan_devices(tc)
    set_precision(plan.precision)
    keras.utils.set_random_seed(cfg.seed + 1000 * k)
    train_idx = np.flatnonzero(run.folds != k)
    val_idx = np.flatnonzero(run.folds == k)
    fit_val_idx = val_idx  # what Keras validates on (early stopping); OOF is written for all of val_idx
    po = spec.trains_positive_only(tc.positive_only)
    if po:  # train.positive_only: train and validate on the images with a non-empty mask only
        train_idx, fit_val_idx = positive_only_split(run, spec, train_idx, val_idx, tag, k)
    n_true = len(train_idx)
    train_cache, train_idx = run.training_source(  # + pseudo-labelled images, training side only
        train_idx, nonempty_only=po, skip_first=spec.softmax)
    n_pseudo = len(train_idx) - n_true
    if not quiet:
        extra = f" (+{n_pseudo} pseudo-labelled)" if run.pseudo is not None else ""
        only = f" (non-empty masks only; OOF on all {len(val_idx)})" if po else ""
        print(f"[{tag} fold {k}] {n_true} train{extra} / {len(fit_val_idx)} val {run.adapter.item_word}{only} "
              f"(fold {k + 1} of {tc.folds})", flush=True)
    common = dict(workers=tc.workers, use_multiprocessing=tc.use_multiprocessing)
    batch = plan.global_batch(tc.batch_size)  # train.batch_size per device
    cpu_augment = device_augment.cpu_part(tc.augment) if tc.augment_on_device else tc.augment
    train_ds = SegmentationDataset(train_cache, train_idx, batch, augment=cpu_augment, shuffle=True,
                                   seed=cfg.seed + k, pad_to=plan.batch_multiple(training=True), **common)
    val_ds = SegmentationDataset(run.cache, fit_val_idx, batch, augment=None, shuffle=False, seed=0,
                                 pad_to=plan.batch_multiple(training=False), **common)
    with plan.scope():  # variables on every device; fit splits each batch across them
        model, keeper, averager = _fit_fold(cfg, run, spec, tag, k, fold, state, plan, train_ds, val_ds, quiet,
                                            planner)
        averaging = averager.finish(model, keeper.best) if averager else None  # best.keras: the averaged weights
    best = (load_model(fold.best, fix=f"retrain the fold: {fold.restart_hint()}") if fold.best.is_file()
            else model)
    write_oof(cfg, run, best, val_idx, fold, quiet=quiet)
    fold.write_json(fold.done, {"fold": k, "model": tag, "best": keeper.best, "monitor": keeper.monitor,
                                "epochs": keeper.epoch, "stopped_early": keeper.stopped, "n_val": int(len(val_idx)),
                                "n_train": int(n_true), "n_pseudo": int(n_pseudo),
                                "positive_only": po, "n_val_fit": int(len(fit_val_idx)),
                                "classifier": has_classifier(best), "devices": plan.record(tc.batch_size),
                                **({"averaging": averaging} if averaging else {})})
    if averager:
        averager.cleanup()  # SWA's epoch snapshots
    fold.last.unlink(missing_ok=True)  # the resume point is no longer needed; the best checkpoint stays
    keras.backend.clear_session()


def _fit_fold(cfg: Config, run: RunData, spec: ModelSpec, tag: str, k: int, fold: FoldDir, state: dict | None,
              plan: DevicePlan, train_ds, val_ds, quiet: bool, planner: Planner | None = None):
    """Build (or load, to resume) and compile the fold's model and fit it: (model, epoch keeper, averager)."""
    tc = cfg.train
    compile_with = _compiler(cfg, run, spec, plan)
    model = _resume_or_build(cfg, run, spec, tag, k, fold, state, plan, compile_with, quiet)
    head = has_classifier(model)
    monitor = "val_dice" if "dice" in tc.metrics else "val_loss"
    mode = "max" if monitor != "val_loss" else "min"
    early = ValidatedEarlyStopping(monitor=monitor, mode=mode, patience=tc.early_stopping_patience)
    reduce = ValidatedReduceLROnPlateau(monitor=monitor, mode=mode, patience=tc.reduce_lr_patience,
                                               factor=tc.reduce_lr_factor, verbose=0)
    averager = make_averager(tc, fold, monitor, mode, val_feed=lambda: _eval_feed(val_ds, head), state=state,
                             bn_batches=lambda n: _input_batches(train_ds, tc.epochs, n))  # train.ema / train.swa
    keeper = EpochKeeper(fold, monitor, mode, early, reduce, state, averaging=averager)
    initial_epoch = state["epoch"] if state else 0
    total = planner.epochs() if planner else tc.epochs
    if initial_epoch < total and not (state or {}).get("stopped"):
        train_ds.epoch = initial_epoch  # a resumed fold sees the augmentations it would have seen
        train_feed, feed_callbacks = train_ds.keras_feed()
        val_feed, _ = val_ds.keras_feed()
        if head:  # the mask target feeds both outputs; the head's loss reduces it to "mask non-empty"
            train_feed, val_feed = mask_to_both_outputs(train_feed), mask_to_both_outputs(val_feed)
        if not quiet:
            print(f"[{tag} fold {k}] compiling… (the first epoch includes it)", flush=True)
        steps = tc.steps_per_epoch or len(train_ds)
        lr = LrSchedule(tc.learning_rate, tc.lr_schedule, tc.warmup_epochs, total, steps) \
            if tc.lr_schedule != "plateau" or tc.warmup_epochs else None
        callbacks = [MaskMetricNames(), *feed_callbacks, *([lr] if lr else []), *([averager] if averager else []),
                     early, *([reduce] if tc.lr_schedule == "plateau" else []),
                     *([planner.guard()] if planner else []), keeper]
        fit = dict(x=train_feed, validation_data=val_feed, steps_per_epoch=tc.steps_per_epoch,
                   shuffle=False,  # the dataset shuffles itself, per (seed, epoch)
                   callbacks=callbacks, verbose=fit_verbosity(tc.verbose, quiet))
        fit_phases(model, fit, initial_epoch, tc, planner, lr,
                   recompile=lambda loss: compile_with(model, loss, model.optimizer), loaded=bool(state))
    return model, keeper, averager


def _compiler(cfg: Config, run: RunData, spec: ModelSpec, plan: DevicePlan):
    """compile_with(model, loss, optimizer): compile a fold's model with train.metrics (and the classifier
    head's loss weight when it has one) under the plan's XLA setting."""
    tc = cfg.train
    n_classes = len(run.adapter.classes)

    def compile_with(model, loss: str, optimizer) -> None:
        model.compile(optimizer=optimizer,
                      **compile_args(get_loss(loss, n_classes),
                                     get_metrics(tc.metrics, n_classes, activation=spec.activation),
                                     classifier_weight=spec.classifier_weight if has_classifier(model) else None),
                      jit_compile=plan.jit_compile)

    return compile_with


def _resume_or_build(cfg: Config, run: RunData, spec: ModelSpec, tag: str, k: int, fold: FoldDir,
                     state: dict | None, plan: DevicePlan, compile_with, quiet: bool):
    """The fold's model: its last checkpoint when resuming (`state`), else built and compiled with train.loss;
    with train.augment_on_device the augmentations attached to its train step."""
    tc = cfg.train
    if state:
        try:
            model = load_model(fold.last, raw_input=True, fix=f"retrain the fold: {fold.restart_hint()}",
                               expected_shape=(*cfg.data.image_size, run.adapter.bands))
        except TrainingError as exc:
            raise TrainingError(f"{exc} (or delete {fold.last} to restart the fold from scratch)") from None
        model.jit_compile = plan.jit_compile  # the checkpoint's compile config holds the saving machine's choice
        if not quiet:
            print(f"[{tag} fold {k}] resuming after epoch {state['epoch']}")
    else:
        h, w = cfg.data.image_size
        model = build_model(spec, (h, w, run.adapter.bands), len(run.adapter.classes),
                            where=f"models.{cfg.models.index(spec)}",
                            normalisation=run.adapter.input_normalisation(run.cache.images.dtype))
        compile_with(model, tc.loss, keras.optimizers.Adam(tc.learning_rate, **optimizer_options(tc)))  # + train.ema
    if tc.augment_on_device:  # flips / rot90 / brightness-contrast inside the train step; not in the checkpoint
        dtype = run.cache.images.dtype
        device_augment.attach(model, tc.augment, seed=cfg.seed + 1000 * k,
                              value_range=(np.iinfo(dtype).min, np.iinfo(dtype).max)
                              if np.issubdtype(dtype, np.integer) else None)
    return model


def fit_phases(model, fit: dict, epoch: int, tc, planner: Planner | None, lr: LrSchedule | None,
               recompile, loaded: bool = False) -> None:
    """model.fit in segments: up to the time budget's plan (its first epoch alone, to time it), train.loss up
    to the late-loss switch then train.late_loss (recompiled, same optimizer), validating every
    train.val_every epochs and the last. The epoch keeper carries early stopping's state across segments."""
    current = None if loaded and tc.late_loss else tc.loss  # a resumed late phase recompiles its loss
    while True:
        total = planner.epochs() if planner else tc.epochs
        if epoch >= total:
            return
        switch = loss_switch_epoch(total, tc.late_loss_from) if tc.late_loss else total
        loss = tc.late_loss if tc.late_loss and epoch >= switch else tc.loss
        if loss != current:
            if current is not None or loaded:
                recompile(loss)
            current = loss
        end = switch if epoch < switch else total
        timing = planner is not None and planner.timing()
        if timing:
            end = epoch + 1  # the budget's plan times this epoch, validation included
        if lr:
            lr.total_epochs = total
        checked = [e + 1 for e in range(epoch, end) if timing or validates(e, total, tc.val_every)]
        model.fit(epochs=end, initial_epoch=epoch, validation_freq=checked or [0], **fit)
        if model.stop_training:
            return
        epoch = end


def positive_only_split(run: RunData, spec: ModelSpec, train_idx: np.ndarray, val_idx: np.ndarray, tag: str,
                        k: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices of a positive-only fold: the samples of each side whose mask is non-empty in any
    class (softmax models: any class but channel 0, the background); TrainingError when a side has none."""
    background = spec.softmax
    sides = []
    for name, idx in (("training", train_idx), ("validation", val_idx)):
        kept = idx[nonempty_masks(run.cache.masks, idx, skip_first=background)]
        if not len(kept):
            raise TrainingError(f"train.positive_only: fold {k} of {tag} has no {name} image with a non-empty mask; "
                                f"use fewer folds (train.folds) or train {tag} on every image "
                                "(models.<i>.positive_only: false)")
        sides.append(kept)
    return sides[0], sides[1]


def nonempty_masks(masks, indices: np.ndarray, skip_first: bool = False, chunk: int = 64) -> np.ndarray:
    """For each of `indices`, whether masks[i] (H, W, C) has a positive pixel in any channel (from channel 1
    with `skip_first`), read `chunk` masks at a time from the memory-mapped cache."""
    out = np.zeros(len(indices), bool)
    for s in range(0, len(indices), chunk):
        part = np.stack([np.asarray(masks[i]) for i in indices[s:s + chunk]])
        if skip_first:
            part = part[..., 1:]
        out[s:s + chunk] = part.reshape(len(part), -1).any(axis=1)
    return out


def fit_verbosity(setting: int | None, quiet: bool = False) -> int:
    """Keras fit's `verbose`: 0 when quiet, else train.verbose, else 1 (progress bar) on a terminal and 2 (one
    line per epoch, no ANSI bars) when stdout goes to a log."""
    if quiet:
        return 0
    if setting is not None:
        return int(setting)
    return 1 if sys.stdout.isatty() else 2


def print_fold_table(rd: RunDir, tags: Sequence[str], folds: Sequence[int]) -> None:
    """The end-of-training table: per model and fold the epochs run and the best monitored value."""
    rows = []
    for tag in tags:
        for k in folds:
            fold = rd.fold(tag, k)
            if fold.is_done():
                done = fold.read_done()
                best = done["best"]
                rows.append((tag, str(k), str(done["epochs"]), str(done.get("monitor", "")),
                             "-" if best is None else f"{best:.4f}"))
    if not rows:
        return
    head = ("model", "fold", "epochs", "monitor", "best")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print("[train] finished folds:")
    for r in [head, *rows]:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)))


def write_oof(cfg: Config, run: RunData, model, val_idx: np.ndarray, fold: FoldDir, quiet: bool = False) -> None:
    """Out-of-fold probabilities of the validation samples (float16, with their sample indices), streamed batch
    by batch into a memory-mapped .npy that is moved into place when complete; for a model with the
    classification head also its "class present" probabilities (N_val, C) float16, averaged over the same TTA."""
    tta = resolve_tta(cfg, run.adapter)
    h, w = run.cache.images.shape[1:3]
    out = np.lib.format.open_memmap(fold.oof_tmp, mode="w+", dtype=np.float16,
                                    shape=(len(val_idx), h, w, len(run.adapter.classes)))
    labels = []
    pos = 0
    for batch in predict_ensemble([model], run.cache, val_idx, run.adapter.normalise, tta, cfg.predict.batch_size,
                                  quiet=quiet, scales=cfg.predict.scales):  # as predict: TTA × scales
        out[pos:pos + len(batch.probs)] = batch.probs
        pos += len(batch.probs)
        if batch.label is not None:
            labels.append(batch.label)
    out.flush()
    del out
    os.replace(fold.oof_tmp, fold.oof)
    if labels:
        atomic_save_npy(fold.oof_label, np.concatenate(labels).astype(np.float16))
    else:
        fold.oof_label.unlink(missing_ok=True)
    atomic_save_npy(fold.oof_index, val_idx.astype(np.int64))


def mask_to_both_outputs(feed):
    """A training feed of (x, mask[, weight]) batches turned into (x, {"mask": mask, "label": mask}[, weight])
    for a model with the classification head (segkit.losses.ClassifierLoss reduces the mask to "class present"
    itself): a tf.data pipeline is mapped, a PyDataset wrapped."""
    if isinstance(feed, keras.utils.PyDataset):
        return _BothOutputs(feed)
    return feed.map(lambda x, y, *w: (x, {"mask": y, "label": y}, *w))


class _BothOutputs(keras.utils.PyDataset):
    """A PyDataset of (x, mask) batches serving (x, {"mask": mask, "label": mask}), epochs passed through."""

    def __init__(self, inner: keras.utils.PyDataset) -> None:
        super().__init__(workers=inner.workers, use_multiprocessing=inner.use_multiprocessing,
                         max_queue_size=inner.max_queue_size)
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int):
        x, y, *w = self.inner[index]
        return (x, {"mask": y, "label": y}, *w)

    def on_epoch_end(self) -> None:
        self.inner.on_epoch_end()


class _OnValidatedEpochs:
    """Mixin for Keras' monitoring callbacks: act only on the epochs that validated (train.val_every), so their
    patience counts validations and the other epochs neither count nor warn "metric not available"."""

    best = None  # Keras 3.5's EarlyStopping sets its own `best` only at the first epoch that validated

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if logs and self.monitor in logs:
            super().on_epoch_end(epoch, logs)


class ValidatedEarlyStopping(_OnValidatedEpochs, keras.callbacks.EarlyStopping):
    """EarlyStopping on the epochs that validated only."""


class ValidatedReduceLROnPlateau(_OnValidatedEpochs, keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau on the epochs that validated only."""


class MaskMetricNames(keras.callbacks.Callback):
    """Logs the mask metrics of a two-output model (Keras names them `mask_dice`, `val_mask_dice`, …) under
    the plain names (`dice`, `val_dice`) that early stopping, the LR schedule, EpochKeeper and history.csv use,
    so a model with the classification head is monitored like one without. Must come first among the
    callbacks: they share the epoch's logs dict. One-output models' logs pass unchanged."""

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if not logs:
            return
        for key in list(logs):
            for prefix in ("", "val_"):
                name = key[len(prefix) + len("mask_"):]
                if key.startswith(f"{prefix}mask_") and name != "loss" and f"{prefix}{name}" not in logs:
                    logs[f"{prefix}{name}"] = logs.pop(key)


class EpochKeeper(keras.callbacks.Callback):
    """Keras callback saving, after every epoch, the best checkpoint, a resumable last checkpoint, the
    early-stopping / LR-reduction state and the history CSV, all atomically, so a killed run resumes."""

    def __init__(self, fold: FoldDir, monitor: str, mode: str, early, reduce, state: dict | None,
                 averaging: Averager | None = None) -> None:
        super().__init__()
        self.fold, self.monitor, self.mode = fold, monitor, mode
        self.averaging = averaging  # train.ema / train.swa: what best.keras holds, its resume state
        self.early, self.reduce = early, reduce
        self.state = state
        self.history: list[dict] = list(state["history"]) if state else []
        self.best = state["best"] if state else None
        self.epoch = state["epoch"] if state else 0
        self.stopped = bool(state.get("stopped")) if state else False

    def on_train_begin(self, logs=None) -> None:
        if not self.state:
            return
        for cb, key in ((self.early, "early"), (self.reduce, "reduce")):
            for attr, value in self.state.get(key, {}).items():
                if value is not None:
                    setattr(cb, attr, value)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = {k: float(v) for k, v in (logs or {}).items()}
        if "learning_rate" not in logs:  # Keras 3 logs it already (ReduceLROnPlateau); one column either way
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.history.append({"epoch": epoch + 1, **logs})
        value = logs.get(self.monitor)
        improved = value is not None and (
            self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        )
        if improved or not self.fold.best.is_file():
            self.best = value if improved else self.best
            with self.averaging.best_weights() if self.averaging else contextlib.nullcontext():
                _save_model(self.model, self.fold.best)
        self.epoch = epoch + 1
        self.stopped = bool(getattr(self.model, "stop_training", False))
        _save_model(self.model, self.fold.last)
        state = {
            "epoch": self.epoch,
            "best": self.best,
            "history": self.history,
            "stopped": self.stopped,
            "early": {"wait": int(self.early.wait), "best": _num(self.early.best),
                      "stopped_epoch": int(self.early.stopped_epoch)},
            "reduce": {"wait": int(self.reduce.wait), "best": _num(self.reduce.best),
                       "cooldown_counter": int(self.reduce.cooldown_counter)},
        }
        if self.averaging:
            state["averaging"] = self.averaging.state()
        write_history_csv(self.fold.history, self.history)
        self.fold.write_json(self.fold.state, state)
        self.state = state  # the next fit segment (segkit.train.fit_phases) restores early stopping from it
        if self.averaging:
            self.averaging.commit()  # files the written state no longer refers to


def _eval_feed(val_ds, head: bool):
    """The validation data as model.evaluate takes it (weight averaging validates outside fit's own pass)."""
    feed, _ = val_ds.keras_feed()
    return mask_to_both_outputs(feed) if head else feed


def _input_batches(train_ds, epoch: int, n: int):
    """Up to n input batches of the training data as it is fed in `epoch` (SWA's BatchNorm re-estimation)."""
    for i in range(min(n, len(train_ds))):
        batch = train_ds.batch(i, epoch)
        yield batch[0] if isinstance(batch, tuple) else batch


def _num(x) -> float | None:
    return None if x is None else float(x)


def _save_model(model, path: Path) -> None:
    tmp = FoldDir.temp_for(path)
    model.save(tmp)
    os.replace(tmp, path)


def write_history_csv(path: Path, history: Sequence[dict]) -> None:
    """The per-epoch log as CSV (rewritten whole, atomically, so a resumed fold has no duplicate rows)."""
    import pandas as pd  # lazy: pandas is heavy and only the history CSV needs it

    with atomic_write(path) as fh:
        pd.DataFrame(list(history)).to_csv(fh, index=False)
