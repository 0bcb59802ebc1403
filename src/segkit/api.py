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
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from segkit.config import Config, config_from_dict, set_key
from segkit.config import load_config as _load_config
from segkit.errors import ConfigError, DataError
from segkit.runs import RunDir, model_tags

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
            from segkit.config import apply_override

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


# --- ensembles -------------------------------------------------------------------------------------------

class _Batch:
    """What `predict_probabilities` reads images from (a cache's `images`), for in-memory arrays."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images


class Ensemble:
    """Fold × model × TTA averaging of checkpoints: numpy images in, numpy probabilities out.

    Images are raw, in the dataset's dtype and range (uint16 for 38-Cloud): the checkpoints normalise them in
    their first layer. Any image size works: images are resized to the models' input and the probabilities
    back to the image's own size, as `segkit predict` does. Batches go through `predict_ensemble`, the
    function behind `segkit predict`, `batch_size` images at a time. `postprocess` (for `predict_masks`):
    a `segkit.postprocess.ChainParams` (what `Run.ensemble` passes) or (thresholds, min_areas) per class.
    `tiling` (`predict.tiling`: a `segkit.config.TilingConfig` or a dict such as `{"tile": 384, "overlap": 0.25}`):
    each image is predicted at its own size with overlapping `tile`-pixel windows blended together
    (`segkit.predict.predict_tiled`), one image in memory at a time, instead of being resized to the input.
    """

    def __init__(self, models: Sequence, tta: Sequence[str] = ("identity",), batch_size: int = 8,
                 image_size: Sequence[int] | None = None, normalise=None,
                 postprocess: Any = None, classes: Sequence[str] | None = None,
                 checkpoints: Sequence[Path] = (), scales: Sequence[float] = (1.0,),
                 weights: Sequence[float] | None = None, positive_only: Sequence[bool] | None = None,
                 tiling: Any = None) -> None:
        from segkit.predict import TTA

        if not models:
            raise ConfigError("ensemble: no models given")
        unknown = [t for t in tta if t not in TTA]
        if unknown or not tta:
            raise ConfigError(f"ensemble tta: unknown augmentations {unknown or '(none given)'} "
                              f"(known: {', '.join(TTA)})")
        if batch_size < 1:
            raise ConfigError(f"ensemble batch_size: must be ≥ 1, got {batch_size}")
        self.models = list(models)
        self.tta = list(tta)
        self.batch_size = int(batch_size)
        shape = tuple(self.models[0].input_shape[1:])
        self.image_size: tuple[int, int] = tuple(int(v) for v in (image_size or shape[:2]))  # type: ignore
        self.bands = int(shape[2])
        self.classes = list(classes) if classes is not None else None
        self.checkpoints = [Path(p) for p in checkpoints]
        self._normalise = normalise
        self._postprocess = postprocess
        # multi-scale TTA, per-model weights and positive-only roles, as predict_ensemble takes them
        self.scales = [float(s) for s in scales]
        self.weights = None if weights is None else [float(w) for w in weights]
        self.positive_only = None if positive_only is None else [bool(p) for p in positive_only]
        for name, given in (("weights", self.weights), ("positive_only", self.positive_only)):
            if given is not None and len(given) != len(self.models):
                raise ConfigError(f"ensemble {name}: {len(given)} values for {len(self.models)} models")
        if not self.scales or not all(0 < s <= 4 for s in self.scales):
            raise ConfigError(f"ensemble scales: must be numbers in (0, 4], got {self.scales}")
        self.tiling = _tiling(tiling, self.models)

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | Path], tta: Sequence[str] = ("identity",),
                         batch_size: int = 8, **kwargs: Any) -> "Ensemble":
        """An ensemble of `.keras` checkpoints (segkit's own, or any model taking raw images)."""
        from segkit.models.registry import load_model

        return cls([load_model(p) for p in paths], tta, batch_size, checkpoints=paths, **kwargs)

    def __repr__(self) -> str:
        h, w = self.image_size
        return (f"Ensemble({len(self.models)} models × {len(self.tta)} TTA {self.tta}, input {h}x{w}x{self.bands}, "
                f"batch {self.batch_size})")

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities float32 (H, W, C) for one raw image (H, W, bands), or (N, H, W, C) for a batch
        (N, H, W, bands), at the images' own size."""
        images = self._check(images)
        single = images.ndim == 3
        if single:  # as it comes (no copy into a batch array: a tiled 6000 x 6000 image's is 137 MB a class)
            return next(self.iter_predict(images[None]))
        batch = images
        out = None
        for i, p in enumerate(self.iter_predict(batch)):
            if out is None:
                out = np.empty((len(batch), *p.shape), np.float32)
            out[i] = p
        assert out is not None
        return out

    __call__ = predict

    def iter_predict(self, images: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Yield (H, W, C) float32 probabilities image by image for an iterable of raw (H, W, bands) images
        (a batch array, a memory map, a generator reading files; sizes may differ): only `batch_size`
        images are held at once."""
        for probs, _, _ in self._iter_ensemble(images):
            yield probs

    def _iter_ensemble(self, images: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray, Any]]:
        """Yield (probs, gate_probs, label) image by image at the images' own size, from `predict_ensemble`
        (gate_probs is probs itself when no model is positive-only; label is None without heads)."""
        from segkit.predict import predict_ensemble

        if self.tiling is not None:
            yield from self._iter_tiled(images)
            return
        chunk: list[np.ndarray] = []

        def flush() -> Iterator[tuple[np.ndarray, np.ndarray, Any]]:
            from segkit.data.cache import resize_image

            sizes = [im.shape[:2] for im in chunk]
            batch = _Batch(np.stack([resize_image(np.asarray(im), self.image_size) for im in chunk]))
            out = next(predict_ensemble(self.models, batch, np.arange(len(chunk)), self._normalise_fn, self.tta,
                                        len(chunk), quiet=True, scales=self.scales, weights=self.weights,
                                        positive_only=self.positive_only))
            for i, size in enumerate(sizes):
                p = _to_size(out.probs[i], size)
                g = p if out.gate_probs is out.probs else _to_size(out.gate_probs[i], size)
                yield p, g, None if out.label is None else out.label[i]

        for image in images:
            image = self._check(np.asarray(image), single=True)
            chunk.append(image)
            if len(chunk) == self.batch_size:
                yield from flush()
                chunk = []
        if chunk:
            yield from flush()

    def _iter_tiled(self, images: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray, Any]]:
        """`_iter_ensemble` with tiled inference: each image one canvas, predicted whole at its own size."""
        from segkit.predict import predict_tiled
        from segkit.tiling import ImageCanvas

        for image in images:
            canvas = ImageCanvas(0, image=self._check(np.asarray(image), single=True))
            for part in predict_tiled(self.models, [canvas], self._normalise_fn, self.tta, self.batch_size,
                                      self.tiling, quiet=True, scales=self.scales, weights=self.weights,
                                      positive_only=self.positive_only):
                yield part.probs, part.gate_probs, part.label

    def predict_masks(self, images: np.ndarray) -> np.ndarray:
        """Binary uint8 masks (as in the submission) for one image or a batch: the probabilities after the
        run's post-processing chain (threshold, min area, gate, triplet; `segkit.postprocess.apply_chain`)."""
        from segkit.postprocess import ChainParams, apply_chain

        if self._postprocess is None:
            raise ConfigError("ensemble: no post-processing known (build it with Run.ensemble after tuning, or "
                              "pass postprocess=(thresholds, min_areas))")
        chain = self._postprocess
        if not isinstance(chain, ChainParams):
            thresholds, areas = chain
            chain = ChainParams.plain(thresholds, areas)
        images = self._check(images)
        single = images.ndim == 3
        masks = [apply_chain(p, chain, g, lab) for p, g, lab in self._iter_ensemble(images[None] if single else images)]
        return masks[0] if single else np.stack(masks)

    def _normalise_fn(self, image: np.ndarray) -> np.ndarray:
        if self._normalise is None:
            raise DataError("ensemble: a checkpoint without the input normalisation layer (older segkit) needs "
                            "the competition's normalisation; point data.root at the dataset, or retrain it")
        return self._normalise(image)

    def _check(self, images: Any, single: bool = False) -> np.ndarray:
        images = np.asarray(images)
        ndims = (3,) if single else (3, 4)
        if images.ndim not in ndims or images.shape[-1] != self.bands or min(images.shape[:-1], default=0) < 1:
            want = "(H, W, bands)" if single else "(H, W, bands) or (N, H, W, bands)"
            raise DataError(f"ensemble: expected images shaped {want} with {self.bands} bands, got {images.shape}")
        if images.dtype.kind not in "uif" or images.dtype == np.float16:
            raise DataError(f"ensemble: expected raw images of an integer or float32/64 dtype, got {images.dtype}")
        return images


def _tiling(tiling: Any, models: Sequence):
    """A TilingConfig from `tiling` (None, a TilingConfig or a dict of its keys), its tile checked against the
    models' size step (ConfigError naming predict.tiling.<key>)."""
    import math

    from segkit.config import TilingConfig, from_dict
    from segkit.predict import size_step
    from segkit.tiling import check_tiling

    if tiling is None:
        return None
    if not isinstance(tiling, TilingConfig):
        if not isinstance(tiling, Mapping):
            raise ConfigError(f"predict.tiling: expected a mapping such as {{tile: 384, overlap: 0.25}}, got {tiling!r}")
        tiling = from_dict(TilingConfig, {k: _plain(v) for k, v in tiling.items()}, "predict.tiling")
    check_tiling(tiling.tile, tiling.overlap, tiling.blend, math.lcm(*(size_step(m) for m in models)))
    return tiling


def _to_size(p: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Probabilities (h, w, C) resized to (H, W), bilinear as `segkit predict` resizes to the submission size."""
    import cv2

    h, w = int(size[0]), int(size[1])
    if p.shape[:2] == (h, w):
        return np.ascontiguousarray(p, dtype=np.float32)
    return cv2.resize(np.ascontiguousarray(p), (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)


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
        from segkit.data.competitions.base import make_adapter

        cfg = self.config
        return make_adapter(cfg.data.competition, cfg.data.root, cfg.data.options)

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
        from segkit.pipeline import train

        cfg = copy.deepcopy(self.config)
        if folds is not None:
            wanted = [int(folds)] if isinstance(folds, (int, np.integer)) else [int(k) for k in folds]
            cfg.train = dataclasses.replace(cfg.train, train_folds=wanted)
        train(cfg, quiet=self.quiet, restart=restart, restart_fold=restart_fold)
        return self

    def tune(self) -> dict[str, Any]:
        """Tune the per-class threshold and minimum area on the OOF predictions; returns postprocess.json's
        content (per class: threshold, min_area, OOF scores before and after)."""
        from segkit.pipeline import tune

        return tune(self.config, quiet=self.quiet)

    def pseudo(self, **selection: Any) -> dict[str, Any]:
        """Write a pseudo-label round of this run (`segkit pseudo`): the ensemble's confident test images and
        masks under `<run>/pseudo/round_<r>/`; `selection` overrides the `pseudo` section (low, high,
        max_uncertain, gate, round). Returns the round's report (kept images overall and per class). Train on it
        with `Run(config, name=..., train={"pseudo": f"{run.name}/{report['round']}"}).fit()`."""
        from segkit.pipeline import pseudo

        cfg = load_config(self.config, pseudo=selection) if selection else self.config
        return pseudo(cfg, quiet=self.quiet)

    def report(self, worst: int = 8) -> Path:
        """Write the ablation report (`segkit report`): runs/<name>/report.html with the OOF score of each fold,
        model, the ensemble and each post-processing step, score-versus-threshold curves and the `worst` OOF
        images; prints the table unless quiet. Returns the page's path."""
        from segkit.pipeline import report

        if worst < 0:
            raise ConfigError(f"report worst: must be ≥ 0, got {worst}")
        return report(self.config, quiet=self.quiet, worst=worst)

    def predict_config(self, tta: Sequence[str] | None = None, models: Sequence[str] | None = None,
                       quiet: bool = True) -> Config:
        """The config predict uses: the run's saved training settings, with `tta` / `models` (tags) if given."""
        from segkit.pipeline import run_config

        cfg = run_config(self.config, "predict", quiet=quiet)
        changes = {k: list(v) for k, v in (("tta", tta), ("models", models)) if v is not None}
        if changes:
            cfg.predict = dataclasses.replace(cfg.predict, **changes)
        return cfg

    def ensemble(self, tta: Sequence[str] | None = None, models: Sequence[str] | None = None,
                 batch_size: int | None = None) -> Ensemble:
        """The fold × model × TTA ensemble `segkit predict` uses (default TTA and models from the config),
        as an object whose `predict(images)` maps raw numpy images to probabilities."""
        from segkit.data.competitions.base import adapter_class, make_adapter
        from segkit.models.registry import load_model
        from segkit.predict import resolve_tta
        from segkit.oof import ensemble_members
        from segkit.runs import checkpoint_folds

        cfg = self.predict_config(tta, models)
        names = resolve_tta(cfg, adapter_class(cfg.data.competition))
        folds = checkpoint_folds(cfg)
        paths = [f.best for f in folds]
        members = {m.tag: m for m in ensemble_members(cfg)}  # predict.weights (or tuned) and positive-only roles
        loaded = [load_model(p) for p in paths]
        try:  # the data is not needed to predict arrays (e.g. a run attached as a Kaggle input)
            adapter = make_adapter(cfg.data.competition, cfg.data.root, cfg.data.options)
            classes, normalise = list(adapter.classes), adapter.normalise
        except DataError:
            n_out = int(loaded[0].outputs[0].shape[-1])  # the mask output (first of two with a head)
            known = list(adapter_class(cfg.data.competition).classes)
            classes, normalise = (known if len(known) == n_out else [f"class_{c}" for c in range(n_out)]), None
        postprocess = None
        if cfg.postprocess.tune is False or RunDir.of(cfg).postprocess.is_file():
            from segkit.postprocess import load_chain

            postprocess = load_chain(cfg, classes)
        h, w = cfg.data.image_size
        return Ensemble(loaded, names, batch_size or cfg.predict.batch_size, (h, w), normalise, postprocess,
                        classes, paths, scales=cfg.predict.scales, weights=[members[f.tag].weight for f in folds],
                        positive_only=[members[f.tag].positive_only for f in folds], tiling=cfg.predict.tiling)

    def write_submission(self, path: str | Path | None = None, tta: Sequence[str] | None = None,
                         models: Sequence[str] | None = None) -> Path:
        """Predict the test set with the ensemble, post-process, write the competition's submission CSV and
        validate it (SubmissionError when invalid); returns its path (default `submission_path`)."""
        from segkit.pipeline import predict

        cfg = self.predict_config(tta, models, quiet=self.quiet)
        self.submission = predict(cfg, quiet=self.quiet, out=path, saved_config=False)
        return self.submission

    def validate(self, path: str | Path | None = None, sample: str | Path | None = None) -> list[str]:
        """The problems of a submission for this run's competition (empty when valid): the declared format,
        each test image's size, and the ids of `sample` (default: the competition's sample submission or test
        list under data.root). `path` defaults to the last written submission."""
        from segkit.data.competitions.base import make_adapter
        from segkit.submission import validate_written

        path = Path(path) if path is not None else (self.submission or self.submission_path)
        if not path.is_file():
            from segkit.errors import SubmissionError

            raise SubmissionError(f"{path}: submission not found; write it with Run.write_submission()")
        cfg = self.config
        adapter = make_adapter(cfg.data.competition, cfg.data.root, cfg.data.options)
        samples = adapter.test_samples()
        sample = sample if sample is not None else adapter.sample_submission_path()
        problems = validate_written(path, adapter, samples, sample)
        if sample is None:  # no sample file (38-Cloud): the ids must still be the test images under data.root
            problems += _id_problems(path, adapter.submission_format, [s.id for s in samples], cfg.data.root)
        return problems


def _id_problems(path: Path, fmt, test_ids: list[str], root: str) -> list[str]:
    """A submission's image ids against the test images: which have no row, which are not test images."""
    from segkit.submission import read_sample

    images = {fmt.image_of(i) for i in read_sample(path).ids}
    missing = [i for i in test_ids if i not in images]
    extra = sorted(images - set(test_ids))
    out = []
    if missing:
        out.append(f"{path}: {len(missing)} of the {len(test_ids)} test images under {root} have no row "
                   f"(first: {missing[0]}); predict every test image")
    if extra:
        out.append(f"{path}: {len(extra)} ids are not test images under {root} (first: {extra[0]})")
    return out


# --- without a run ---------------------------------------------------------------------------------------

def write_submission(config: ConfigLike, path: str | Path | None = None, *, quiet: bool = False,
                     **settings: Any) -> Path:
    """Write and validate the submission of a trained run given by its config (name, YAML path or Config, with
    keyword settings as `load_config`); returns its path."""
    return Run(config, quiet=quiet, **settings).write_submission(path)


def validate(path: str | Path, competition: str, sample: str | Path | None = None) -> list[str]:
    """The problems of a submission CSV for `competition` (empty when valid), checked against its declared
    format and, given `sample`, the ids of the sample submission (38-Cloud: the test patch list)."""
    from segkit.submission import validate_submission

    return validate_submission(path, competition, sample)


def synth(name: str, out: str | Path, seed: int = 0, **options: Any) -> Path:
    """Write a small synthetic dataset in the competition's real file layout (`segkit synth`); returns its root."""
    from segkit.data.synth import generate

    return generate(name, out, seed=seed, **options)
