"""The run folder `runs/<name>/`: the one module that knows its layout and file names.

    runs/<name>/config.yaml          the resolved config the weights were trained with
                folds.csv            the fold split (id, group, stratum, fold)
                postprocess.json     thresholds / minimum areas tuned on the out-of-fold predictions
                weights.json         ensemble weights per model tag tuned on OOF (predict.tune_weights)
                plan.json            the time budget's epoch plan and the seconds spent (train.time_budget)
                metrics.json plots/ evaluation/   reports (the demo)
                report.html          the ablation report (segkit report): tables and plots in one page
                <tag>/fold_<k>/      best.keras, last.keras (resume point), state.json, history.csv,
                                     best_raw.keras + swa_epoch_<e>.npz (weight averaging, the snapshots
                                     only until the fold is done),
                                     oof.npy, oof_index.npy, oof_label.npy (classification head),
                                     fingerprint.json, done.json
                pseudo/round_<r>/    a pseudo-label round (`segkit pseudo`): ids.csv, cache/ (test images +
                                     binarised masks, like the training cache), report.json (written last)

Train, post-processing, predict, the demo and the Kaggle runtime ask this module for paths; reading a damaged
run file raises a TrainingError naming the file and the fix.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from segkit.config import Config, load_config, save_config
from segkit.data.cache import Cache, StackedCache, prepare
from segkit.data.folds import assign_folds
from segkit.errors import ConfigError, DataError, SegkitError, TrainingError
from segkit.storage import atomic_write, temp_prefix

_CONFIG = "config.yaml"
_FOLDS = "folds.csv"
_POSTPROCESS = "postprocess.json"
_WEIGHTS = "weights.json"
_METRICS = "metrics.json"
_PLAN = "plan.json"
_REPORT = "report.html"
_FOLD_PREFIX = "fold_"
_BEST, _LAST = "best.keras", "last.keras"
_DONE, _STATE, _FINGERPRINT = "done.json", "state.json", "fingerprint.json"
_ROUND_PREFIX = "round_"

# How to retrain one fold (options go before CONFIG, overrides after it); messages fill in the fold.
RESTART_HINT = "`segkit train --restart-fold {k} CONFIG [key=value ...]`"


@dataclass
class AveragingRecord:
    """What weight averaging (train.ema / train.swa, segkit.averaging) did to a fold, as the fold's done.json
    keeps it under "averaging": written by the averager when the fold finishes, read by the report. The monitored
    validation value of the raw best weights and of the averaged ones, and the method's settings. Fields an
    older done.json lacks read as None (kind as "averaging")."""

    kind: str  # "ema" | "swa"
    monitor: str | None  # the Keras validation metric both values are of
    val_raw: float | None
    val_averaged: float | None
    momentum: float | None = None  # EMA
    how: str | None = None  # SWA: "last" (the last n epochs) or "best" (the n best)
    n: int | None = None  # SWA: how many epochs
    epochs: list[int] | None = None  # SWA: the epochs averaged
    skipped: str | None = None  # SWA: why nothing was averaged
    bn_batches: int | None = None  # SWA: training batches the BatchNorm statistics were re-estimated on

    def to_json(self) -> dict[str, Any]:
        """The done.json record, its keys in the order segkit has always written them."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.momentum is not None:
            out["momentum"] = self.momentum
        if self.how is not None:
            out[self.how] = self.n
        out["monitor"] = self.monitor
        if self.epochs is not None:
            out["epochs"] = list(self.epochs)
        out.update(val_raw=self.val_raw, val_averaged=self.val_averaged)
        if self.skipped is not None:
            out["skipped"] = self.skipped
        if self.bn_batches is not None:
            out["bn_batches"] = self.bn_batches
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "AveragingRecord":
        """A done.json record back; a missing or non-numeric value reads as None."""
        how = next((h for h in AVERAGING_HOWS if h in data), None)
        epochs = data.get("epochs")
        return cls(kind=str(data.get("kind") or "averaging"), monitor=_text_or_none(data.get("monitor")),
                   val_raw=_number_or_none(data.get("val_raw")), val_averaged=_number_or_none(data.get("val_averaged")),
                   momentum=_number_or_none(data.get("momentum")), how=how,
                   n=None if how is None or _number_or_none(data[how]) is None else int(data[how]),
                   epochs=[int(e) for e in epochs if _is_number(e)] if isinstance(epochs, list) else None,
                   skipped=_text_or_none(data.get("skipped")),
                   bn_batches=None if _number_or_none(data.get("bn_batches")) is None else int(data["bn_batches"]))

    def settings(self) -> dict[str, Any]:
        """The method's settings and outcome beyond the two validation values (momentum; SWA's last/best n,
        why it skipped, BatchNorm batches), in done.json's order, those recorded only."""
        found = {"momentum": self.momentum, **({self.how: self.n} if self.how else {}), "skipped": self.skipped,
                 "bn_batches": self.bn_batches}
        return {key: value for key, value in found.items() if value is not None}


AVERAGING_HOWS = ("last", "best")  # train.swa's selections, the record's key for SWA's n


class FoldDir:
    """One fold of one model: `runs/<name>/<tag>/fold_<k>/` and the files in it."""

    def __init__(self, path: str | Path, tag: str, k: int) -> None:
        self.path, self.tag, self.k = Path(path), tag, int(k)

    def __repr__(self) -> str:
        return f"FoldDir({self.path})"

    @property
    def best(self) -> Path:
        return self.path / _BEST

    @property
    def last(self) -> Path:
        return self.path / _LAST

    @property
    def best_raw(self) -> Path:
        """With weight averaging (train.ema / train.swa): the best raw-weight checkpoint, kept for comparison
        while best.keras holds the averaged weights."""
        return self.path / "best_raw.keras"

    def snapshot(self, epoch: int) -> Path:
        """SWA: the weights at the end of epoch `epoch` (1-based), an .npz deleted once the fold is done."""
        return self.path / f"swa_epoch_{int(epoch):04d}.npz"

    def snapshots(self) -> list[Path]:
        """Every SWA epoch snapshot in the fold folder."""
        return sorted(self.path.glob("swa_epoch_*.npz"))

    @property
    def state(self) -> Path:
        return self.path / _STATE

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def oof(self) -> Path:
        return self.path / "oof.npy"

    @property
    def oof_index(self) -> Path:
        return self.path / "oof_index.npy"

    @property
    def oof_label(self) -> Path:
        """The classification head's OOF probabilities (N_val, C) float16, rows as in `oof_index`; only for
        models with `classifier: true`."""
        return self.path / "oof_label.npy"

    @property
    def oof_tmp(self) -> Path:
        """Where OOF probabilities stream to before they are moved to `oof`."""
        return self.temp_for(self.oof)

    @property
    def done(self) -> Path:
        return self.path / _DONE

    @property
    def fingerprint(self) -> Path:
        return self.path / _FINGERPRINT

    @staticmethod
    def temp_for(path: Path) -> Path:
        """A hidden sibling to write `path` to before moving it into place: segkit's temporary name (swept after
        a crash by segkit.storage.sweep_stale), ending in the original suffix as Keras and NumPy need."""
        return path.with_name(f"{temp_prefix(path.stem)}w.tmp{path.suffix}")

    def is_done(self) -> bool:
        """True once the fold has finished (checkpoint and OOF predictions written)."""
        return self.done.is_file()

    def restart_hint(self) -> str:
        return RESTART_HINT.format(k=self.k)

    def read_done(self) -> dict[str, Any]:
        """The finished fold's summary; TrainingError naming the file when it is damaged."""
        return _read_json(self.done, f"delete it and run {self.restart_hint()} to retrain this fold",
                          need=("epochs", "best"))

    def read_averaging(self) -> AveragingRecord | None:
        """The finished fold's weight-averaging record (done.json's "averaging"), None when it averaged nothing;
        a record without its monitor names the fold's."""
        done = self.read_done()
        data = done.get("averaging")
        if not isinstance(data, dict) or not data:
            return None
        record = AveragingRecord.from_json(data)
        if record.monitor is None:
            record.monitor = _text_or_none(done.get("monitor"))
        return record

    def read_oof(self) -> tuple[np.ndarray, np.ndarray]:
        """The fold's out-of-fold probabilities, memory-mapped (N_val, H, W, C), and the sample index of each row
        (N_val,) int64: the one reader of oof.npy (ensemble averaging, tuning and the report go through it).
        TrainingError naming the fold and the fix when missing or damaged."""
        if not self.oof.is_file():
            raise TrainingError(f"{self.path}: no out-of-fold predictions; finish training first (segkit train)")
        try:
            probs = np.load(self.oof, mmap_mode="r")
            index = np.load(self.oof_index)
        except (OSError, ValueError) as exc:
            raise TrainingError(f"{self.path}: out-of-fold predictions unreadable ({_short(exc)[:120]}); "
                                f"run {self.restart_hint()}") from None
        if index.ndim != 1 or probs.ndim != 4 or len(index) != len(probs):
            raise TrainingError(f"{self.oof_index}: does not match {self.oof.name}; run {self.restart_hint()}")
        return probs, index.astype(np.int64)

    def read_oof_label(self, n_rows: int) -> np.ndarray:
        """The classification head's OOF probabilities (N_val, C) float32, rows as in read_oof's; TrainingError
        when unreadable or not `n_rows` long."""
        try:
            label = np.load(self.oof_label)
        except (OSError, ValueError) as exc:
            raise TrainingError(f"{self.oof_label}: unreadable ({_short(exc)[:120]}); "
                                f"run {self.restart_hint()}") from None
        if label.ndim != 2 or len(label) != n_rows:
            raise TrainingError(f"{self.oof_label}: shape {label.shape} does not match the fold's {n_rows} OOF "
                                f"rows; run {self.restart_hint()}")
        return label.astype(np.float32)

    def read_state(self) -> dict[str, Any] | None:
        """The resume point (state.json beside last.keras), or None when there is none to resume from."""
        if not (self.state.is_file() and self.last.is_file()):
            return None
        return _read_json(self.state, f"delete {self.last} to restart this fold from scratch, or run "
                          f"{self.restart_hint()}", need=("epoch", "best", "history"))

    def read_fingerprint(self) -> dict[str, Any] | None:
        """The settings this fold was trained with, or None for a fold that records none (not started, or
        written by an older segkit)."""
        if not self.fingerprint.is_file():
            return None
        data = _read_json(self.fingerprint, f"delete it (the fold is then trusted) or run {self.restart_hint()}")
        return data.get("settings", data)

    def write_json(self, path: Path, data: dict[str, Any]) -> None:
        """Write one of this fold's JSON files atomically."""
        with atomic_write(path) as fh:
            json.dump(data, fh)

    def write_fingerprint(self, settings: dict[str, Any]) -> None:
        """Record the settings that shape this fold's weights."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_json(self.fingerprint, {"settings": settings})

    def wipe(self) -> None:
        """Delete the fold's folder (or the link to it) so it trains again from scratch."""
        if self.path.is_symlink() or self.path.is_file():
            self.path.unlink()
        elif self.path.exists():
            shutil.rmtree(self.path)


class PseudoRoundDir:
    """One pseudo-label round `runs/<name>/pseudo/round_<r>/`: the kept test ids (ids.csv), their images and
    binarised masks as a segkit cache (cache/, memory-mapped like the training set's) and report.json, written
    last, so a round without it is incomplete."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        found = re.fullmatch(rf"{_ROUND_PREFIX}(\d+)", self.path.name)
        self.round: int | None = int(found.group(1)) if found else None

    def __repr__(self) -> str:
        return f"PseudoRoundDir({self.path})"

    @property
    def ids(self) -> Path:
        return self.path / "ids.csv"

    @property
    def report(self) -> Path:
        return self.path / "report.json"

    @property
    def cache(self) -> Path:
        """The cache folder (segkit.data.cache.prepare(..., cache_dir=path, name=cache_name))."""
        return self.path / self.cache_name

    cache_name = "cache"

    def is_complete(self) -> bool:
        return self.report.is_file()

    @property
    def source(self) -> "RunDir":
        """The run the round was written from (`runs/<name>/` above `pseudo/round_<r>/`)."""
        return RunDir(self.path.parent.parent)

    def read_report(self) -> dict[str, Any]:
        """The round's report; TrainingError naming the file when it is damaged."""
        return _read_json(self.report, "run `segkit pseudo CONFIG` again to rewrite the round",
                          need=("n_kept", "classes", "digest"))

    def write_report(self, data: dict[str, Any]) -> None:
        with atomic_write(self.report) as fh:
            json.dump(data, fh, indent=2)

    def write_ids(self, rows: dict[str, Sequence]) -> None:
        """Save the kept ids (and per-class columns) as CSV, atomically."""
        import pandas as pd

        with atomic_write(self.ids) as fh:
            pd.DataFrame(rows).to_csv(fh, index=False)


@dataclass
class PseudoData:
    """A pseudo-label round opened for training: its folder, report and cache."""

    round: PseudoRoundDir
    report: dict[str, Any]
    cache: Any

    @property
    def summary(self) -> str:
        """What the round's content is, for fingerprints: its size and digest."""
        return f"{int(self.report['n_kept'])} images, sha1 {self.report['digest']}"


class RunDir:
    """A run folder `runs/<name>/`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def of(cls, cfg: Config) -> "RunDir":
        """The run folder of a config (`output.runs_dir/name`)."""
        return cls(cfg.run_dir)

    @classmethod
    def containing(cls, fold_path: str | Path) -> "RunDir":
        """The run folder a fold folder belongs to."""
        return cls(Path(fold_path).parent.parent)

    def __repr__(self) -> str:
        return f"RunDir({self.path})"

    @property
    def config(self) -> Path:
        return self.path / _CONFIG

    @property
    def folds(self) -> Path:
        return self.path / _FOLDS

    @property
    def postprocess(self) -> Path:
        return self.path / _POSTPROCESS

    @property
    def weights(self) -> Path:
        """Ensemble weights per model tag chosen on the OOF predictions (predict.tune_weights)."""
        return self.path / _WEIGHTS

    @property
    def metrics(self) -> Path:
        return self.path / _METRICS

    @property
    def report(self) -> Path:
        """The ablation report (`segkit report`): one self-contained HTML page."""
        return self.path / _REPORT

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    @property
    def evaluation(self) -> Path:
        return self.path / "evaluation"

    @property
    def pseudo(self) -> Path:
        """The folder of the run's pseudo-label rounds."""
        return self.path / "pseudo"

    @property
    def kaggle(self) -> Path:
        """The run's Kaggle state: what was pushed and submitted (reruns resume from it) and kernel logs."""
        return self.path / "kaggle"

    @property
    def kaggle_pushes(self) -> Path:
        """Kernel versions pushed by `segkit kernel push-folds` (a rerun waits on them instead of pushing)."""
        return self.kaggle / "pushes.json"

    @property
    def kaggle_submissions(self) -> Path:
        """Submissions made by `segkit submit` (a rerun waits on them instead of submitting)."""
        return self.kaggle / "submissions.json"

    @property
    def kaggle_logs(self) -> Path:
        """Logs of the run's kernels that failed on Kaggle."""
        return self.kaggle / "logs"

    def pseudo_round(self, r: int) -> PseudoRoundDir:
        return PseudoRoundDir(self.pseudo / f"{_ROUND_PREFIX}{int(r)}")

    def pseudo_rounds(self) -> list[PseudoRoundDir]:
        """The pseudo-label rounds written from this run (complete or not), in round order."""
        found = [PseudoRoundDir(p) for p in self.pseudo.glob(f"{_ROUND_PREFIX}*")] if self.pseudo.is_dir() else []
        return sorted((r for r in found if r.round is not None), key=lambda r: r.round)

    def fold(self, tag: str, k: int) -> FoldDir:
        return FoldDir(self.path / tag / f"{_FOLD_PREFIX}{int(k)}", tag, k)

    def wipe(self) -> None:
        """Delete the whole run folder (`segkit train --restart`)."""
        if self.path.is_symlink():
            self.path.unlink()
        elif self.path.exists():
            shutil.rmtree(self.path)

    # --- the fold split ---------------------------------------------------------------------

    def read_folds(self, samples: Sequence, n_folds: int) -> np.ndarray | None:
        """The saved split for these samples, or None when there is none yet; TrainingError naming folds.csv
        when it is damaged or was made for other samples or another fold count."""
        import pandas as pd

        path = self.folds
        if not path.is_file():
            return None
        fix = "delete it (a new split is made) or run `segkit train --restart CONFIG ...`, or use a new name=..."
        try:
            frame = pd.read_csv(path, dtype={"id": str})
        except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise TrainingError(f"{path}: not a readable fold split ({_short(exc)}); {fix}") from None
        missing = [c for c in ("id", "fold") if c not in frame.columns]
        if missing:
            raise TrainingError(f"{path}: columns {missing} missing (has {list(frame.columns)}); {fix}")
        if len(frame) != len(samples):
            raise TrainingError(f"{path}: {len(frame)} rows, the data has {len(samples)} training samples; {fix}")
        ids = [s.id for s in samples]
        if list(frame["id"]) != ids:
            bad = next(i for i, (a, b) in enumerate(zip(frame["id"], ids)) if a != b)
            raise TrainingError(f"{path}: row {bad + 2} has id '{frame['id'][bad]}', the data has '{ids[bad]}' "
                                f"there (split for other samples); {fix}")
        folds = pd.to_numeric(frame["fold"], errors="coerce")
        if folds.isna().any() or not folds.between(0, n_folds - 1).all() or (folds % 1 != 0).any():
            raise TrainingError(f"{path}: 'fold' must hold integers 0..{n_folds - 1} (train.folds={n_folds}); {fix}")
        folds = folds.to_numpy().astype(np.int64)
        if len(np.unique(folds)) != n_folds:
            raise TrainingError(f"{path}: split into {len(np.unique(folds))} folds, train.folds is {n_folds}; {fix}")
        return folds

    def write_folds(self, samples: Sequence, folds: np.ndarray) -> None:
        """Save the split as CSV (id, group, stratum, fold), atomically."""
        import pandas as pd

        frame = pd.DataFrame({"id": [s.id for s in samples], "group": [s.group for s in samples],
                              "stratum": [s.stratum for s in samples], "fold": folds})
        with atomic_write(self.folds) as fh:
            frame.to_csv(fh, index=False)

    # --- post-processing --------------------------------------------------------------------

    def read_postprocess(self, classes: Sequence[str] | None = None) -> dict[str, Any]:
        """The tuned post-processing; TrainingError naming postprocess.json when it is damaged or was tuned
        for another set of classes."""
        fix = "delete it and run `segkit tune CONFIG` to tune it again"
        data = _read_json(self.postprocess, fix, need=("classes",))
        rows = data["classes"]
        ok = isinstance(rows, list) and rows and all(
            isinstance(c, dict) and _is_number(c.get("threshold")) and _is_number(c.get("min_area")) for c in rows)
        if not ok:
            raise TrainingError(f"{self.postprocess}: 'classes' must list {{threshold, min_area}} per class; {fix}")
        if classes is not None and len(rows) != len(classes):
            raise TrainingError(f"{self.postprocess}: tuned for {len(rows)} classes, the data has {len(classes)}; "
                                f"{fix}")
        return data

    def read_weights(self) -> dict[str, Any]:
        """The tuned ensemble weights ({"weights": {tag: w}, ...}); TrainingError naming weights.json when it is
        missing or damaged."""
        fix = "run `segkit tune CONFIG` to tune the weights again, or set predict.tune_weights=false"
        data = _read_json(self.weights, fix, need=("weights",))
        w = data["weights"]
        if not (isinstance(w, dict) and w and all(_is_number(v) and v >= 0 for v in w.values())
                and any(v > 0 for v in w.values())):
            raise TrainingError(f"{self.weights}: 'weights' must map model tags to numbers ≥ 0; {fix}")
        return data

    def write_weights(self, data: dict[str, Any]) -> None:
        """Save tuned ensemble weights atomically."""
        with atomic_write(self.weights) as fh:
            json.dump(data, fh, indent=2)

    def write_postprocess(self, data: dict[str, Any]) -> None:
        """Save tuned post-processing atomically."""
        with atomic_write(self.postprocess) as fh:
            json.dump(data, fh, indent=2)

    # --- the saved config -------------------------------------------------------------------

    def read_config(self) -> Config | None:
        """The config saved with the run, or None when there is none."""
        if not self.config.is_file():
            return None
        try:
            return load_config(self.config)
        except SegkitError as exc:
            raise TrainingError(f"{self.config}: not a valid saved config ({_short(exc)}); delete it to use the "
                                "given config as it is") from None

    def write_config(self, cfg: Config) -> None:
        """Save the resolved config beside the weights it describes."""
        save_config(cfg, self.config)

    @property
    def plan(self) -> Path:
        return self.path / _PLAN

    def read_plan(self) -> dict[str, Any] | None:
        """The time budget's saved plan and seconds spent (segkit.budget), or None before the first epoch."""
        if not self.plan.is_file():
            return None
        return _read_json(self.plan, f"delete {self.plan} to plan the budget again", need=("spent_s",))

    def write_plan(self, data: dict[str, Any]) -> None:
        """Save the time budget's plan and seconds spent atomically."""
        with atomic_write(self.plan) as fh:
            json.dump(data, fh, indent=2)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """Save a run report as metrics.json, atomically."""
        with atomic_write(self.metrics) as fh:
            json.dump(metrics, fh, indent=2)


@dataclass
class RunData:
    """What every stage of a run needs: the adapter, training samples, their cache and fold split."""

    adapter: Any
    samples: list
    cache: Any
    folds: np.ndarray
    pseudo: PseudoData | None = None  # a pseudo-label round (train.pseudo): training side only

    def training_source(self, train_idx: np.ndarray, nonempty_only: bool = False,
                        skip_first: bool = False) -> tuple[Any, np.ndarray]:
        """(cache, indices) a fold trains on: the training cache and `train_idx`, plus, with a pseudo-label round,
        every pseudo image (only those with a non-empty mask when `nonempty_only`, channel 0 — a softmax model's
        background — left out with `skip_first`) as indices past the training samples of a stacked view.
        Validation and OOF use `cache` and the fold split alone, so pseudo images never enter them."""
        if self.pseudo is None:
            return self.cache, train_idx

        extra = np.arange(len(self.pseudo.cache), dtype=np.int64)
        if nonempty_only:
            masks = self.pseudo.cache.masks
            extra = extra[[bool(np.asarray(masks[i])[..., int(skip_first):].any()) for i in extra]]
        return StackedCache(self.cache, self.pseudo.cache), np.concatenate(
            [np.asarray(train_idx, dtype=np.int64), len(self.cache) + extra])


def pseudo_round_of(cfg: Config) -> PseudoRoundDir | None:
    """The round `train.pseudo` names (None when unset): `<run>/<r>` or `<run>/round_<r>` is round r of run
    `<run>` under output.runs_dir, anything else a round folder's path."""
    spec = cfg.train.pseudo
    if spec is None:
        return None
    found = re.fullmatch(rf"([^/\\]+)[/\\](?:{_ROUND_PREFIX})?(\d+)", spec.strip())
    if found and not Path(spec).is_dir():
        return RunDir(Path(cfg.output.runs_dir) / found.group(1)).pseudo_round(int(found.group(2)))
    return PseudoRoundDir(spec)


def open_pseudo(cfg: Config, cache: Any) -> PseudoData | None:
    """The pseudo-label round `train.pseudo` names, opened and checked against the training cache (image size,
    bands, classes, dtype); one-line TrainingError naming train.pseudo for a missing, incomplete, empty or
    mismatched round."""
    rnd = pseudo_round_of(cfg)
    if rnd is None:
        return None
    where = f"train.pseudo: {cfg.train.pseudo!r}"
    if not rnd.is_complete():
        what = "incomplete (no report.json)" if rnd.path.is_dir() else "not found"
        raise TrainingError(f"{where}: pseudo-label round {rnd.path} {what}; write it with `segkit pseudo CONFIG "
                            "name=<source run>` (then train.pseudo=<source run>/<round>), or set train.pseudo=null")
    report = rnd.read_report()
    if int(report["n_kept"]) == 0:
        raise TrainingError(f"{where}: round {rnd.path} kept no image; loosen pseudo.low / pseudo.high / "
                            "pseudo.max_uncertain and run `segkit pseudo` again, or set train.pseudo=null")
    try:
        pcache = Cache.open(rnd.cache)
    except DataError as exc:
        raise TrainingError(f"{where}: {_short(exc)} (run `segkit pseudo CONFIG` again to rewrite the round)") from None
    mine = (tuple(cache.images.shape[1:]), str(cache.images.dtype), tuple(cache.masks.shape[1:]))
    theirs = (tuple(pcache.images.shape[1:]), str(pcache.images.dtype), tuple(pcache.masks.shape[1:]))
    if mine != theirs:
        raise TrainingError(f"{where}: round {rnd.path} holds images {theirs[0]} {theirs[1]} / masks {theirs[2]}, "
                            f"the training cache {mine[0]} {mine[1]} / {mine[2]}; write the round with the same "
                            "data settings (data.image_size, data.competition)")
    return PseudoData(rnd, report, pcache)


def open_run_data(cfg: Config, quiet: bool = False, pseudo: bool = False) -> RunData:
    """Read the competition's training list, prepare its cache and load the run's fold split (made and saved
    on first use, so a resumed run keeps its folds); with `pseudo` (training) also the pseudo-label round
    train.pseudo names, which `RunData.training_source` adds to each fold's training side."""
    adapter = cfg.adapter()
    samples = adapter.train_samples()
    if cfg.data.max_train_samples:
        samples = samples[: cfg.data.max_train_samples]
    if not samples:
        raise DataError(f"{cfg.data.root}: no training samples found for {cfg.data.competition}")
    h, w = cfg.data.image_size
    cache = prepare(adapter, samples, (h, w), cfg.data.cache_dir, name=f"{cfg.data.competition}-train-{h}x{w}",
                    with_masks=True, quiet=quiet)
    rounds = open_pseudo(cfg, cache) if pseudo else None  # refused before anything is written
    run = RunDir.of(cfg)
    folds = run.read_folds(samples, cfg.train.folds)
    if folds is None:
        folds = assign_folds(samples, cfg.train.folds, cfg.seed, quiet=quiet)
        run.write_folds(samples, folds)
    return RunData(adapter, samples, cache, folds, rounds)


def model_tags(cfg: Config) -> list[str]:
    """The folder name of each architecture in the config, in order."""
    from segkit.models.registry import model_tag  # lazy: models.registry imports keras

    tags = [model_tag(spec, i) for i, spec in enumerate(cfg.models)]
    if len(set(tags)) != len(tags):
        raise ConfigError(f"models: two entries share a tag ({tags}); give each a distinct 'tag'")
    return tags


def all_folds_done(cfg: Config) -> bool:
    """True when every fold of every model has finished (OOF predictions written)."""
    run = RunDir.of(cfg)
    return all(run.fold(t, k).is_done() for t in model_tags(cfg) for k in range(cfg.train.folds))


def ensembled_tags(cfg: Config) -> list[str]:
    """The model tags predict ensembles (predict.models, or every model)."""
    tags = model_tags(cfg)
    wanted = cfg.predict.models or tags
    unknown = [t for t in wanted if t not in tags]
    if unknown:
        raise ConfigError(f"predict.models: no model tagged {unknown} in this config (tags: {tags})")
    return list(wanted)


def checkpoint_folds(cfg: Config) -> list[FoldDir]:
    """The fold folders of every fold of every ensembled model, each with its best checkpoint; a missing
    checkpoint is an error."""
    run = RunDir.of(cfg)
    folds = [run.fold(t, k) for t in ensembled_tags(cfg) for k in range(cfg.train.folds)]
    missing = [str(f.best) for f in folds if not f.best.is_file()]
    if missing:
        raise TrainingError(f"missing fold checkpoints: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
                            " — run `segkit train` first")
    return folds


def checkpoint_paths(cfg: Config) -> list[Path]:
    """Best checkpoints of every fold of every ensembled model; a missing one is an error."""
    return [f.best for f in checkpoint_folds(cfg)]


def find_fold_dirs(root: Path, name: str, tags: list[str], max_depth: int = 5) -> dict[tuple[str, int], Path]:
    """Fold folders of run `name` with a best checkpoint (`<...>/<name>/<tag>/fold_<k>/best.keras`) anywhere up to
    max_depth below root (Kaggle mounts kernel outputs, datasets and models at different depths); a finished fold
    wins over an unfinished one."""
    found: dict[tuple[str, int], Path] = {}
    for depth in range(max_depth + 1):
        pattern = "/".join(["*"] * depth + [name, "*", f"{_FOLD_PREFIX}*", _BEST])
        for ckpt in sorted(Path(root).glob(pattern)):
            fdir = ckpt.parent
            tag, k = fdir.parent.name, fdir.name[len(_FOLD_PREFIX):]
            if tag not in tags or not k.isdigit():
                continue
            key = (tag, int(k))
            better = key not in found or (FoldDir(fdir, tag, int(k)).is_done()
                                          and not FoldDir(found[key], tag, int(k)).is_done())
            if better:
                found[key] = fdir
    return found


def fold_source_pattern(name: str) -> str:
    """How a fold checkpoint is looked for inside the Kaggle input (for messages)."""
    return f"<source>/runs/{name}/<model>/{_FOLD_PREFIX}<k>/{_BEST}"


# --- what shapes the weights ----------------------------------------------------------------

TRAIN_WEIGHT_KEYS = ("folds", "loss", "metrics", "learning_rate", "batch_size", "augment", "steps_per_epoch",
                     "mixed_precision", "early_stopping_patience", "reduce_lr_patience", "reduce_lr_factor")
DATA_WEIGHT_KEYS = ("competition", "options", "image_size", "max_train_samples")
# Weight-shaping train keys added after runs already existed: in the fingerprint only when set away from their
# default, so folds trained before a key existed stay valid.
TRAIN_WEIGHT_KEYS_IF_SET: tuple[str, ...] = ("pseudo", "ema", "swa", "positive_only", "augment_on_device",
                                             "lr_schedule", "warmup_epochs", "late_loss", "late_loss_from",
                                             "val_every", "time_budget")


def weight_settings(cfg: Config, tag: str | None = None) -> dict[str, Any]:
    """The settings that shape trained weights, flat by dotted key (`train.loss`, `models.unet`); `epochs`
    is left out (a finished fold is checked against it separately). One model's spec when `tag` is given."""
    out: dict[str, Any] = {"seed": cfg.seed}
    d = cfg.to_dict()
    for key in DATA_WEIGHT_KEYS:
        out[f"data.{key}"] = d["data"][key]
    tags = model_tags(cfg)
    for t, spec in zip(tags, cfg.models):
        if tag is None or t == tag:
            out[f"models.{t}"] = spec.to_dict()
    for key in TRAIN_WEIGHT_KEYS:
        out[f"train.{key}"] = d["train"][key]
    if out["train.mixed_precision"] == "auto":  # the default, as null was before auto existed: folds trained
        out["train.mixed_precision"] = None  # with the old default stay valid, and auto on any device matches
    defaults = dataclasses.asdict(type(cfg.train)())
    for key in TRAIN_WEIGHT_KEYS_IF_SET:
        if d["train"][key] != defaults[key]:
            out[f"train.{key}"] = d["train"][key]
    return json.loads(json.dumps(out))  # as it reads back from JSON (tuples become lists)


def fold_fingerprint(cfg: Config, tag: str, sample_ids: Sequence[str], folds: np.ndarray,
                     pseudo: PseudoData | None = None) -> dict[str, Any]:
    """What one fold's weights depend on: the weight settings of its model, the training samples and the split,
    and the content of the pseudo-label round it trains on (when any)."""
    out = weight_settings(cfg, tag)
    out["data.samples"] = f"{len(sample_ids)} ids, sha1 {_sha1(chr(10).join(sample_ids))}"
    out["train.split"] = f"sha1 {_sha1(np.asarray(folds, dtype=np.int64).tobytes())}"
    if pseudo is not None:
        out["train.pseudo_data"] = pseudo.summary
    return out


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key: old → new` for each setting that differs."""
    out = []
    for key in [*new, *(k for k in old if k not in new)]:
        a, b = old.get(key, "(unset)"), new.get(key, "(unset)")
        if a != b:
            out.append(f"{key}: {_show(a)} → {_show(b)}")
    return out


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else repr(value)


def _sha1(data: str | bytes) -> str:
    return hashlib.sha1(data.encode() if isinstance(data, str) else data).hexdigest()[:12]


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _number_or_none(x: Any) -> float | None:
    """A JSON number as a float; None for anything else (missing, text, a boolean, NaN)."""
    return float(x) if _is_number(x) and x == x else None


def _text_or_none(x: Any) -> str | None:
    return str(x) if x else None


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:160]


def _read_json(path: Path, fix: str, need: tuple[str, ...] = ()) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise TrainingError(f"{path}: not found; {fix}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise TrainingError(f"{path}: damaged ({_short(exc)}); {fix}") from None
    if not isinstance(data, dict) or any(k not in data for k in need):
        raise TrainingError(f"{path}: damaged (expected a JSON object with {', '.join(need) or 'fields'}); {fix}")
    return data
