"""The stages of a run chained for every caller (the CLI, the demo, the Kaggle runtime): train → tune → predict
(→ pseudo → train a new run on the pseudo-labels).

Imports go one way: pipeline → train → predict → postprocess → runs; nothing below imports the pipeline."""
from __future__ import annotations

import copy
from pathlib import Path

from segkit.config import Config
from segkit.oof import tune_weights
from segkit.predict import predict as predict_submission
from segkit.pseudo import pseudo_label
from segkit.report import print_table, write_report
from segkit.runs import DATA_WEIGHT_KEYS, RunDir, all_folds_done, changed_keys, weight_settings


def run_config(cfg: Config, stage: str = "predict", quiet: bool = False) -> Config:
    """The config a stage after training uses: when the run folder holds the config its weights were trained
    with, the settings that shape the weights (seed, data, models, train) come from it, so a user need not
    repeat training overrides; predict, postprocess, output, kaggle and the data's location stay as given.
    Says which config is in use, and which given weight settings it ignores."""
    rd = RunDir.of(cfg)
    saved = rd.read_config()
    if saved is None:
        if not quiet:
            print(f"[{stage}] config: as given (no saved {rd.config})", flush=True)
        return cfg
    merged = copy.deepcopy(cfg)
    merged.seed, merged.models, merged.train = saved.seed, copy.deepcopy(saved.models), copy.deepcopy(saved.train)
    for key in DATA_WEIGHT_KEYS:
        setattr(merged.data, key, copy.deepcopy(getattr(saved.data, key)))
    if not quiet:
        ignored = changed_keys(weight_settings(cfg), weight_settings(merged))
        if cfg.train.epochs != saved.train.epochs:
            ignored.append(f"train.epochs: {cfg.train.epochs} → {saved.train.epochs}")
        note = f"; given values replaced (given → trained): {'; '.join(ignored)}" if ignored else ""
        print(f"[{stage}] config: training settings from {rd.config}, {stage} settings as given{note}", flush=True)
    return merged


def train(cfg: Config, quiet: bool = False, restart: bool = False, restart_fold: int | None = None) -> Path:
    """Train every model's folds (see segkit.train.train), then, once every fold of every model is done, tune
    the post-processing on the out-of-fold predictions. Returns the run folder."""
    from segkit.train import train as train_folds  # lazy: train imports keras

    run_dir = train_folds(cfg, quiet=quiet, restart=restart, restart_fold=restart_fold)
    if all_folds_done(cfg):
        tune(cfg, quiet=quiet, saved_config=False)
        if not quiet:
            print_table(cfg)  # the ablation table; `segkit report CONFIG` adds plots and the worst images
    elif not quiet:
        print("[train] not every fold is trained yet: post-processing is tuned once they are")
    return run_dir


def tune(cfg: Config, quiet: bool = False, saved_config: bool = True) -> dict:
    """Tune post-processing on the run's OOF predictions (with the run's saved training settings unless
    `saved_config` is false) and save it with the run."""
    from segkit.postprocess import tune as tune_postprocess  # lazy: postprocess imports scipy

    if saved_config:
        cfg = run_config(cfg, "tune", quiet)
    if cfg.predict.tune_weights:  # the ensemble weights per model tag first: post-processing tunes on their mix
        tune_weights(cfg, quiet=quiet)
    return tune_postprocess(cfg, quiet=quiet)


def pseudo(cfg: Config, quiet: bool = False, saved_config: bool = True) -> dict:
    """Write a pseudo-label round of the run (segkit.pseudo.pseudo_label: the ensemble's confident test images
    and masks under runs/<name>/pseudo/round_<r>/) with the run's saved training settings unless `saved_config`
    is false. Returns the round's report."""
    if saved_config:
        cfg = run_config(cfg, "pseudo", quiet)
    return pseudo_label(cfg, quiet=quiet)


def report(cfg: Config, quiet: bool = False, worst: int = 8, saved_config: bool = True) -> Path:
    """Write the run's ablation report runs/<name>/report.html (segkit.report.write_report: OOF score of each fold,
    model, the ensemble and each post-processing step, score-versus-threshold curves, the `worst` OOF images) and
    print its table, with the run's saved training settings unless `saved_config` is false. Returns its path."""
    if saved_config:
        cfg = run_config(cfg, "report", quiet)
    return write_report(cfg, worst=worst, quiet=quiet)


def predict(cfg: Config, quiet: bool = False, out: str | Path | None = None, saved_config: bool = True) -> Path:
    """Write the validated submission of the run's fold × model × TTA ensemble (with the run's saved training
    settings unless `saved_config` is false). Returns its path."""
    if saved_config:
        cfg = run_config(cfg, "predict", quiet)
    return predict_submission(cfg, quiet=quiet, out=out)
