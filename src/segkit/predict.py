"""Test-time augmentation and fold × architecture ensembles, streamed in batches into the submission."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from segkit.config import Config
from segkit.errors import ConfigError, SubmissionError, unknown_name
from segkit.runs import checkpoint_folds

# name -> (forward, inverse) on batches (B, H, W, C)
TTA: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "identity": (lambda x: x, lambda y: y),
    "hflip": (lambda x: x[:, :, ::-1], lambda y: y[:, :, ::-1]),
    "vflip": (lambda x: x[:, ::-1], lambda y: y[:, ::-1]),
    "hvflip": (lambda x: x[:, ::-1, ::-1], lambda y: y[:, ::-1, ::-1]),
    "rot90": (lambda x: np.rot90(x, 1, axes=(1, 2)), lambda y: np.rot90(y, -1, axes=(1, 2))),
    "rot180": (lambda x: np.rot90(x, 2, axes=(1, 2)), lambda y: np.rot90(y, -2, axes=(1, 2))),
    "rot270": (lambda x: np.rot90(x, 3, axes=(1, 2)), lambda y: np.rot90(y, -3, axes=(1, 2))),
    "transpose": (lambda x: x.transpose(0, 2, 1, 3), lambda y: y.transpose(0, 2, 1, 3)),
}
_SQUARE_ONLY = {"rot90", "rot270", "transpose"}


def resolve_tta(cfg: Config, adapter) -> list[str]:
    """The TTA list of the config (or the competition's default), checked against the input shape."""
    names = list(cfg.predict.tta if cfg.predict.tta is not None else adapter.default_tta)
    if not names:
        names = ["identity"]
    h, w = cfg.data.image_size
    for name in names:
        if name not in TTA:
            raise unknown_name("predict.tta", "augmentation", name, TTA)
        if name in _SQUARE_ONLY and h != w:
            raise ConfigError(f"predict.tta: '{name}' needs a square input, data.image_size is {h}x{w}")
    return names


def predict_probabilities(models: Sequence, cache, indices: np.ndarray, normalise: Callable, tta: list[str],
                          batch_size: int, quiet: bool = False) -> Iterator[np.ndarray]:
    """Yield, batch by batch, probabilities (B, H, W, C) averaged over models × TTA for cache[indices].

    Models get the raw images as float32 (they normalise them in their first layer); `normalise` (the
    adapter's) is applied only for checkpoints saved by older segkit versions without that layer.
    """
    from tqdm import tqdm

    from segkit.models.registry import has_input_normalisation

    raw_input = [has_input_normalisation(m) for m in models]
    starts = range(0, len(indices), batch_size)
    for start in tqdm(starts, desc="predict", disable=quiet or len(starts) < 2, leave=False):
        idx = indices[start:start + batch_size]
        raw = np.stack([np.asarray(cache.images[i]) for i in idx])
        inputs: dict[bool, np.ndarray] = {}  # raw float32, and normalised for old checkpoints, made once
        total = None
        for model, takes_raw in zip(models, raw_input):
            if takes_raw not in inputs:
                inputs[takes_raw] = (raw if takes_raw else np.stack([normalise(im) for im in raw])).astype(np.float32)
            x = inputs[takes_raw]
            for name in tta:
                forward, inverse = TTA[name]
                p = np.asarray(model.predict_on_batch(np.ascontiguousarray(forward(x))), dtype=np.float32)
                p = inverse(p)
                total = p if total is None else total + p
        yield total / (len(models) * len(tta))


def predict(cfg: Config, quiet: bool = False, out: str | Path | None = None) -> Path:
    """Ensemble every fold checkpoint with TTA over the test set, post-process, and write the competition's
    submission CSV (atomically, row by row); the written file is validated before returning its path."""
    import cv2

    from segkit.data.cache import prepare
    from segkit.data.competitions.base import make_adapter
    from segkit.models.registry import load_model
    from segkit.postprocess import apply, load_postprocess
    from segkit.submission import read_sample_ids, validate_written, write_rows

    adapter = make_adapter(cfg.data.competition, cfg.data.root, cfg.data.options)
    samples = adapter.test_samples()
    if not samples:
        from segkit.errors import DataError

        raise DataError(f"{cfg.data.root}: no test samples found for {cfg.data.competition}")
    h, w = cfg.data.image_size
    # checkpoints, post-processing and TTA are checked before the (slow) test cache is built
    models = [load_model(f.best, fix=f"retrain that fold: {f.restart_hint()}", expected_shape=(h, w, adapter.bands))
              for f in checkpoint_folds(cfg)]
    thresholds, min_areas, source = load_postprocess(cfg, adapter.classes)
    tta = resolve_tta(cfg, adapter)
    cache = prepare(adapter, samples, (h, w), cfg.data.cache_dir, name=f"{cfg.data.competition}-test-{h}x{w}",
                    quiet=quiet, with_masks=False)
    if not quiet:
        print(f"[predict] post-processing: {source}", flush=True)

    def rows() -> Iterator[tuple[str, str]]:
        index = np.arange(len(samples))
        batches = predict_probabilities(models, cache, index, adapter.normalise, tta, cfg.predict.batch_size, quiet)
        i = 0
        for probs in batches:
            for p in probs:
                sample = samples[i]
                i += 1
                sh, sw = adapter.submission_size(sample)
                if (sh, sw) != p.shape[:2]:
                    p = cv2.resize(p, (sw, sh), interpolation=cv2.INTER_LINEAR).reshape(sh, sw, -1)
                yield from adapter.submission_rows(sample, apply(p, thresholds, min_areas))

    path = Path(out) if out else cfg.submission_dir / "submission.csv"
    sample = adapter.sample_submission_path()
    sample_ids = None
    if sample is not None:
        sample_ids = read_sample_ids(sample)[1]
    write_rows(path, adapter.submission_format, rows(), sample_ids=sample_ids)
    problems = validate_written(path, adapter, samples, sample)
    if problems:
        raise SubmissionError(f"{path}: the written submission fails validation:\n  " + "\n  ".join(problems[:10]))
    if not quiet:
        print(f"[predict] {len(samples)} test samples × {len(models)} checkpoints × {len(tta)} TTA -> {path}")
    return path
