"""The notebook API: configs with keyword overrides, a `Run` over `runs/<name>/`, an `Ensemble` mapping numpy
images to numpy probabilities, submission writing and validation.

    import segkit as sk
    run = sk.Run("cloud38", data={"root": "/kaggle/input/38cloud"}, train={"epochs": 2})
    run.fit(folds=[0])                          # resumable: a second call skips finished folds
    ens = run.ensemble(tta=["identity", "hflip"])
    probs = ens.predict(images)                 # (N, H, W, bands) raw uint16 -> (N, H, W, 1) float32

Every stage goes through the same functions as the CLI (segkit.pipeline, segkit.predict), so a notebook
and `segkit train/tune/predict` write and read the same run folder. TensorFlow is imported on first use.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from segkit import pipeline
from segkit.config import Config, apply_override, config_from_dict, set_key
from segkit.config import load_config as _load_config
from segkit.data.competitions.base import format_for
from segkit.data.synth import generate
from segkit.errors import ConfigError, DataError, SubmissionError
from segkit.predict import Ensemble  # noqa: F401 (sk.Ensemble)
from segkit.runs import RunDir, model_tags
from segkit.submission import validate as validate_file

ConfigLike = Config | str | Path


# --- configs ---------------------------------------------------------------------------------------------

def load_config(config: ConfigLike | None = None, overrides: Sequence[str] = (), /, **settings: Any) -> Config:
    """A config from a built-in name (`"cloud38"`), a YAML path or a Config, with overrides: `key.sub=value`
    strings as on the command line, then keyword settings — a section as a dict merged key by key
    (`train={"epochs": 2}`) or a dotted key (`**{"train.epochs": 2}`). Wrong keys and values are the CLI's
    ConfigErrors ("did you mean ...")."""
    if isinstance(overrides, str):
        overrides = [overrides]
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
        if overrides:
            raw = cfg.to_dict()

            for item in overrides:
                apply_override(raw, item)
            cfg = config_from_dict(raw)
    else:
        cfg = _load_config(config, list(overrides))
    if not settings:
        return cfg
    raw = cfg.to_dict()
    for key, value in _flatten(settings):
        set_key(raw, key, _plain(value))
    return config_from_dict(raw)


def _flatten(settings: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) pairs; non-empty dicts are walked so sections merge key by key."""
    for key, value in settings.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted, value


def _plain(value: Any) -> Any:
    """Python values as YAML would give them: paths as strings, tuples as lists, numpy scalars as numbers."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


# --- runs ------------------------------------------------------------------------------------------------

class Run:
    """A run folder `runs/<name>/` driven from Python: fit (resumable, folds selectable), tune, ensemble,
    write and validate the submission. `quiet=False` prints the same progress as the CLI."""

    def __init__(self, config: ConfigLike, overrides: Sequence[str] = (), /, quiet: bool = False,
                 **settings: Any) -> None:
        self.config: Config = load_config(config, overrides, **settings)
        self.quiet = quiet
        self.submission: Path | None = None  # the last submission written

    @classmethod
    def open(cls, path: str | Path, quiet: bool = False, **settings: Any) -> "Run":
        """An existing run folder (e.g. trained elsewhere and attached as a Kaggle input), with the config saved
        in it; `settings` override it (typically `data={"root": ...}` and `output.submissions_dir`)."""
        rd = RunDir(path)
        saved = rd.read_config()
        if saved is None:
            raise DataError(f"{rd.config}: not found; is {rd.path} a segkit run folder (runs/<name>/)?")
        saved.name = rd.path.name
        saved.output.runs_dir = str(rd.path.parent)
        return cls(saved, quiet=quiet, **settings)

    def __repr__(self) -> str:
        done = sum(len(v) for v in self.folds_done.values())
        total = len(model_tags(self.config)) * self.config.train.folds
        score = self.oof_score
        scored = f", OOF {score:.4f}" if score is not None else ""
        return f"Run({self.name!r} at {self.dir}, {done}/{total} folds trained{scored})"

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def dir(self) -> Path:
        """The run folder."""
        return RunDir.of(self.config).path

    @property
    def folds_done(self) -> dict[str, list[int]]:
        """Finished folds by model tag."""
        rd = RunDir.of(self.config)
        return {t: [k for k in range(self.config.train.folds) if rd.fold(t, k).is_done()]
                for t in model_tags(self.config)}

    @property
    def postprocess(self) -> dict[str, Any] | None:
        """The tuned post-processing (postprocess.json), or None before tuning."""
        rd = RunDir.of(self.config)
        return rd.read_postprocess() if rd.postprocess.is_file() else None

    @property
    def oof_score(self) -> float | None:
        """The competition metric on the out-of-fold predictions after tuning, or None before tuning."""
        pp = self.postprocess
        return float(pp["oof_score_tuned"]) if pp and "oof_score_tuned" in pp else None

    @property
    def adapter(self):
        """The competition adapter over data.root (reads samples, images, masks; knows the submission format)."""
        return self.config.adapter()

    def iter_images(self, split: str = "test", limit: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
        """Yield (id, raw image (H, W, bands)) of the competition's `split` ("test" or "train"), one at a time,
        at their stored size and dtype — what `Ensemble.predict` takes."""
        if split not in ("test", "train"):
            raise ConfigError(f"iter_images: split must be 'test' or 'train', got {split!r}")
        adapter = self.adapter
        samples = adapter.test_samples() if split == "test" else adapter.train_samples()
        for sample in samples[:limit]:
            yield sample.id, adapter.read_image(sample)

    @property
    def submission_path(self) -> Path:
        """Where `write_submission` writes by default."""
        return self.config.submission_dir / "submission.csv"

    def fit(self, folds: int | Sequence[int] | None = None, restart: bool = False,
            restart_fold: int | None = None) -> "Run":
        """Train the folds (`folds`: one, a list, or None for train.train_folds / all), skipping finished folds
        and resuming an interrupted one; once every fold is done the post-processing is tuned. `restart`
        wipes the run first, `restart_fold` retrains fold K. Returns the run."""
        cfg = copy.deepcopy(self.config)
        if folds is not None:
            wanted = [int(folds)] if isinstance(folds, (int, np.integer)) else [int(k) for k in folds]
            cfg.train = dataclasses.replace(cfg.train, train_folds=wanted)
        pipeline.train(cfg, quiet=self.quiet, restart=restart, restart_fold=restart_fold)
        return self

    def tune(self) -> dict[str, Any]:
        """Tune the post-processing chain on the OOF predictions exactly as `segkit tune` does (each step kept
        only when its cross-validated gain is > 0 and > 1 SE); returns postprocess.json's content (per class
        the chain, per step the OOF score, OOF-tuned gain, CV gain ± SE and decision, the all-empty baseline)."""
        return pipeline.tune(self.config, quiet=self.quiet)

    def pseudo(self, **selection: Any) -> dict[str, Any]:
        """Write a pseudo-label round of this run (`segkit pseudo`): the ensemble's confident test images and
        masks under `<run>/pseudo/round_<r>/`; `selection` overrides the `pseudo` section (low, high,
        max_uncertain, gate, round). Returns the round's report (kept images overall and per class). Train on it
        with `Run(config, name=..., train={"pseudo": f"{run.name}/{report['round']}"}).fit()`."""
        cfg = load_config(self.config, pseudo=selection) if selection else self.config
        return pipeline.pseudo(cfg, quiet=self.quiet)

    def report(self, worst: int = 8) -> Path:
        """Write the ablation report (`segkit report`): runs/<name>/report.html with the OOF score of each fold,
        model, the ensemble and each post-processing step, score-versus-threshold curves and the `worst` OOF
        images; prints the table unless quiet. Returns the page's path."""
        if worst < 0:
            raise ConfigError(f"report worst: must be ≥ 0, got {worst}")
        return pipeline.report(self.config, quiet=self.quiet, worst=worst)

    def predict_config(self, tta: Sequence[str] | None = None, models: Sequence[str] | None = None,
                       quiet: bool = True) -> Config:
        """The config predict uses: the run's saved training settings, with `tta` / `models` (tags) if given."""
        cfg = pipeline.run_config(self.config, "predict", quiet=quiet)
        changes = {k: list(v) for k, v in (("tta", tta), ("models", models)) if v is not None}
        if changes:
            cfg.predict = dataclasses.replace(cfg.predict, **changes)
        return cfg

    def ensemble(self, tta: Sequence[str] | None = None, models: Sequence[str] | None = None,
                 batch_size: int | None = None) -> Ensemble:
        """The fold × model × TTA ensemble `segkit predict` uses (default TTA and models from the config),
        as an object whose `predict(images)` maps raw numpy images to probabilities (`Ensemble.from_run`)."""
        return Ensemble.from_run(self.predict_config(tta, models), batch_size=batch_size)

    def write_submission(self, path: str | Path | None = None, tta: Sequence[str] | None = None,
                         models: Sequence[str] | None = None) -> Path:
        """Predict the test set with the ensemble, post-process, write the competition's submission CSV and
        validate it (SubmissionError when invalid); returns its path (default `submission_path`)."""
        cfg = self.predict_config(tta, models, quiet=self.quiet)
        self.submission = pipeline.predict(cfg, quiet=self.quiet, out=path, saved_config=False)
        return self.submission

    def validate(self, path: str | Path | None = None, sample: str | Path | None = None) -> list[str]:
        """The problems of a submission for this run's competition (empty when valid): the declared format,
        each test image's size, and the ids of `sample` (default: the competition's sample submission or test
        list under data.root). `path` defaults to the last written submission."""
        path = Path(path) if path is not None else (self.submission or self.submission_path)
        if not path.is_file():
            raise SubmissionError(f"{path}: submission not found; write it with Run.write_submission()")
        cfg = self.config
        adapter = cfg.adapter()
        samples = adapter.test_samples()
        sample = sample if sample is not None else adapter.sample_submission_path()
        # no sample file (38-Cloud): the ids must still be the test images under data.root
        return adapter.check_written(path, samples, sample).problems


# --- without a run ---------------------------------------------------------------------------------------

def write_submission(config: ConfigLike, path: str | Path | None = None, *, quiet: bool = False,
                     **settings: Any) -> Path:
    """Write and validate the submission of a trained run given by its config (name, YAML path or Config, with
    keyword settings as `load_config`); returns its path."""
    return Run(config, quiet=quiet, **settings).write_submission(path)


def validate(path: str | Path, competition: str, sample: str | Path | None = None) -> list[str]:
    """The problems of a submission CSV for `competition` (empty when valid), checked against its declared
    format and, given `sample`, the ids of the sample submission (38-Cloud: the test patch list)."""
    return validate_file(path, format_for(competition), sample).problems


def synth(name: str, out: str | Path, seed: int = 0, **options: Any) -> Path:
    """Write a small synthetic dataset in the competition's real file layout (`segkit synth`); returns its root."""
    return generate(name, out, seed=seed, **options)
