"""Test-time augmentation and fold × architecture ensembles, streamed in batches into the submission."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np

from segkit.config import Config
from segkit.errors import ConfigError, SubmissionError, unknown_name
from segkit.oof import ensemble_members
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


class EnsembleBatch(NamedTuple):
    """One batch of ensemble output. `probs` (B, H, W, C) float32: the weighted mean over every model × TTA ×
    scale; `gate_probs`: the same mean over the models that were not trained positive-only (the very same
    array as `probs` when every model is normal, or when none is); `label` (B, C) float32: the weighted mean
    of the classification heads of the models that have one, else None."""

    probs: np.ndarray
    gate_probs: np.ndarray
    label: np.ndarray | None


def scaled_size(model, size: tuple[int, int], scale: float) -> tuple[int, int]:
    """The input size a model is run at for TTA scale `scale` of (H, W) images: each side times the scale,
    rounded to a multiple of the model's size step (`size_step`), at least one step."""
    if scale == 1.0:
        return int(size[0]), int(size[1])
    step = size_step(model)
    return tuple(max(step, int(round(s * scale / step)) * step) for s in size)  # type: ignore[return-value]


def size_step(model) -> int:
    """What a model's input height and width must be multiples of: the largest down-sampling from its input to
    any of its feature maps (nested backbones included; 1×1 maps of global pooling left out), as a power of two
    that divides the size it was built for (U-Net depth 4: 16; the encoder U-Nets: 32). A model built without a
    fixed size: 32."""
    import math

    h, w = model.input_shape[1:3]
    if h is None or w is None:
        return 32
    factor = 1
    for layer in _all_layers(model):
        try:
            shape = tuple(layer.output.shape)
        except (AttributeError, ValueError, RuntimeError):  # shared layers, layers without one output
            continue
        if len(shape) == 4 and shape[1] and shape[2] and shape[1] < h and (shape[1], shape[2]) != (1, 1):
            factor = max(factor, 2 ** round(math.log2(h / shape[1])))  # 1×1: a global pooling (squeeze-excite)
    both = math.gcd(int(h), int(w))
    return max(1, min(factor, both & -both))  # & -: the largest power of two dividing both sides


def _all_layers(model) -> Iterator:
    for layer in getattr(model, "layers", ()):
        yield layer
        yield from _all_layers(layer)


class _Scaled:
    """The models of one `predict_ensemble` call at other input sizes, sharing their weights: a new Input of
    the size, through the original model as a layer. Keras checks a functional model's input shape, so that
    check is lifted (every nested functional model's `input_spec`) while the call runs and put back after."""

    def __init__(self) -> None:
        self._nets: dict[tuple[int, tuple[int, int]], object] = {}
        self._specs: list[tuple[object, object]] = []

    def get(self, model, size: tuple[int, int]):
        built = tuple(model.input_shape[1:3])
        if built == tuple(size) or built == (None, None):
            return model
        key = (id(model), tuple(size))
        if key not in self._nets:
            import keras

            for sub in [model, *(m for m in _all_layers(model) if isinstance(m, keras.Model))]:
                if not any(sub is s for s, _ in self._specs):
                    self._specs.append((sub, sub.input_spec))
                    sub.input_spec = None
            inp = keras.Input((*size, model.input_shape[-1]), name="image")
            out = model(inp)
            self._nets[key] = keras.Model(inp, out, name=f"{model.name}_{size[0]}x{size[1]}")
        return self._nets[key]

    def restore(self) -> None:
        for sub, spec in self._specs:
            sub.input_spec = spec
        self._specs.clear()
        self._nets.clear()


def resize_batch(batch: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(B, h, w, C) float32 resized bilinearly to (B, H, W, C), image by image (cv2, any channel count)."""
    import cv2

    h, w = int(size[0]), int(size[1])
    if batch.shape[1:3] == (h, w):
        return batch
    out = np.empty((len(batch), h, w, batch.shape[-1]), np.float32)
    for i, im in enumerate(batch):
        out[i] = cv2.resize(np.ascontiguousarray(im, dtype=np.float32), (w, h),
                            interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)
    return out


def predict_ensemble(models: Sequence, cache, indices: np.ndarray, normalise: Callable, tta: list[str],
                     batch_size: int, quiet: bool = False, scales: Sequence[float] = (1.0,),
                     weights: Sequence[float] | None = None,
                     positive_only: Sequence[bool] | None = None) -> Iterator[EnsembleBatch]:
    """Yield, batch by batch, the ensemble of `models` on cache.images[indices] as an `EnsembleBatch`.

    Each model's output is the mean over `tta` × `scales`: at a scale ≠ 1 the batch is resized (bilinear) to
    the scaled size rounded to the model's size step, predicted by the model at that size (same weights) and
    the probabilities resized back before averaging, so memory stays bounded by the batch. Models are then
    averaged with `weights` (default equal); `positive_only` marks models trained on non-empty masks only,
    which shape `probs` but stay out of `gate_probs`. Models with a classification head (two outputs, see
    `segkit.models.registry.split_outputs`) contribute their head to `label`.

    Models get the raw images as float32 (they normalise them in their first layer); `normalise` (the
    adapter's) is applied only for checkpoints saved by older segkit versions without that layer.
    """
    from tqdm import tqdm

    from segkit.models.registry import has_input_normalisation, split_outputs

    n = len(models)
    weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    roles = np.zeros(n, bool) if positive_only is None else np.asarray(positive_only, dtype=bool)
    scales = [float(s) for s in scales]
    if n == 0 or len(weights) != n or len(roles) != n:
        raise ConfigError(f"ensemble: {n} models, {len(weights)} weights and {len(roles)} positive-only flags; "
                          "give one of each per model")
    if not (np.isfinite(weights).all() and (weights >= 0).all() and weights.sum() > 0):
        raise ConfigError(f"ensemble weights: must be numbers ≥ 0, not all 0, got {weights.tolist()}")
    if not scales or not all(0 < s < np.inf for s in scales):
        raise ConfigError(f"ensemble scales: must be numbers > 0, got {scales}")
    for name in tta:
        if name not in TTA:
            raise unknown_name("ensemble tta", "augmentation", name, TTA)
    gate_w = np.where(roles, 0.0, weights)
    separate_gate = bool(roles.any()) and gate_w.sum() > 0  # else the gate is the whole ensemble
    raw_input = [has_input_normalisation(m) for m in models]
    per_model = len(tta) * len(scales)
    scaled = _Scaled()
    starts = range(0, len(indices), batch_size)
    try:
        for start in tqdm(starts, desc="predict", disable=quiet or len(starts) < 2, leave=False):
            idx = indices[start:start + batch_size]
            raw = np.stack([np.asarray(cache.images[i]) for i in idx])
            inputs: dict[bool, np.ndarray] = {}  # raw float32, and normalised for old checkpoints, made once
            total = gate = label = None
            label_w = 0.0
            for m, (model, takes_raw) in enumerate(zip(models, raw_input)):
                if weights[m] == 0:
                    continue
                if takes_raw not in inputs:
                    inputs[takes_raw] = (raw if takes_raw else np.stack([normalise(im) for im in raw])
                                         ).astype(np.float32)
                mean, head = _one_model(model, inputs[takes_raw], tta, scales, scaled, split_outputs)
                mean *= np.float32(weights[m] / per_model)
                total = mean if total is None else total + mean
                if separate_gate and gate_w[m] > 0:
                    gate = mean.copy() if gate is None else gate + mean
                if head is not None:
                    head *= np.float32(weights[m] / per_model)
                    label = head if label is None else label + head
                    label_w += weights[m]
            assert total is not None
            probs = total / np.float32(weights.sum())
            gate_probs = gate / np.float32(gate_w.sum()) if gate is not None else probs
            if label is not None:
                label = label / np.float32(label_w)
            yield EnsembleBatch(probs, gate_probs, label)
    finally:
        scaled.restore()


def _one_model(model, x: np.ndarray, tta: list[str], scales: list[float], scaled: _Scaled,
               split_outputs: Callable) -> tuple[np.ndarray, np.ndarray | None]:
    """Sums over `scales` × `tta` of one model's mask (at the batch's size) and head output (or None)."""
    size = x.shape[1:3]
    total = head = None
    for scale in scales:
        at = scaled_size(model, size, scale)
        xs = resize_batch(x, at)
        net = scaled.get(model, at)
        part = None
        for name in tta:
            forward, inverse = TTA[name]
            mask, label = split_outputs(net.predict_on_batch(np.ascontiguousarray(forward(xs))))
            mask = np.array(inverse(np.asarray(mask, dtype=np.float32)))  # a writable copy (JAX's are not)
            part = mask if part is None else part + mask
            if label is not None:
                label = np.array(label, dtype=np.float32)
                head = label if head is None else head + label
        part = resize_batch(np.ascontiguousarray(part), size)
        total = part if total is None else total + part
    assert total is not None
    return total, head


def predict_probabilities(models: Sequence, cache, indices: np.ndarray, normalise: Callable, tta: list[str],
                          batch_size: int, quiet: bool = False) -> Iterator[np.ndarray]:
    """Yield, batch by batch, probabilities (B, H, W, C) averaged over models × TTA for cache[indices]
    (`predict_ensemble`'s `probs` with equal weights and scale 1)."""
    for batch in predict_ensemble(models, cache, indices, normalise, tta, batch_size, quiet=quiet):
        yield batch.probs


def predict(cfg: Config, quiet: bool = False, out: str | Path | None = None) -> Path:
    """Ensemble every fold checkpoint with TTA over the test set, post-process, and write the competition's
    submission CSV (atomically, row by row); the written file is validated before returning its path."""
    import cv2

    from segkit.data.cache import prepare
    from segkit.data.competitions.base import make_adapter
    from segkit.models.registry import load_model
    from segkit.postprocess import apply_chain, load_chain
    from segkit.submission import read_sample_ids, validate_written, write_rows

    adapter = make_adapter(cfg.data.competition, cfg.data.root, cfg.data.options)
    samples = adapter.test_samples()
    if not samples:
        from segkit.errors import DataError

        raise DataError(f"{cfg.data.root}: no test samples found for {cfg.data.competition}")
    h, w = cfg.data.image_size
    # checkpoints, post-processing and TTA are checked before the (slow) test cache is built
    folds = checkpoint_folds(cfg)
    members = {m.tag: m for m in ensemble_members(cfg)}  # weight and role per model tag
    models = [load_model(f.best, fix=f"retrain that fold: {f.restart_hint()}", expected_shape=(h, w, adapter.bands))
              for f in folds]
    chain = load_chain(cfg, adapter.classes)
    tta = resolve_tta(cfg, adapter)
    cache = prepare(adapter, samples, (h, w), cfg.data.cache_dir, name=f"{cfg.data.competition}-test-{h}x{w}",
                    quiet=quiet, with_masks=False)
    if not quiet:
        print(f"[predict] post-processing: {chain.source}", flush=True)
        if len(set(m.weight for m in members.values())) > 1 or any(m.positive_only for m in members.values()):
            print("[predict] ensemble: " + ", ".join(f"{m.tag} ×{m.weight:g}" + (" (positive-only: masks, not the "
                  "gate)" if m.positive_only else "") for m in members.values()), flush=True)

    def rows() -> Iterator[tuple[str, str]]:
        index = np.arange(len(samples))
        batches = predict_ensemble(models, cache, index, adapter.normalise, tta, cfg.predict.batch_size, quiet,
                                   scales=cfg.predict.scales, weights=[members[f.tag].weight for f in folds],
                                   positive_only=[members[f.tag].positive_only for f in folds])
        i = 0
        for batch in batches:
            for b, p in enumerate(batch.probs):
                g = p if batch.gate_probs is batch.probs else batch.gate_probs[b]  # the gate's probabilities
                lab = None if batch.label is None else batch.label[b]  # the heads' "class present"
                sample = samples[i]
                i += 1
                sh, sw = adapter.submission_size(sample)
                if (sh, sw) != p.shape[:2]:
                    same = g is p
                    p = cv2.resize(p, (sw, sh), interpolation=cv2.INTER_LINEAR).reshape(sh, sw, -1)
                    g = p if same else cv2.resize(g, (sw, sh), interpolation=cv2.INTER_LINEAR).reshape(sh, sw, -1)
                yield from adapter.submission_rows(sample, apply_chain(p, chain, g, lab))

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
        scales = f" × {len(cfg.predict.scales)} scales" if len(cfg.predict.scales) > 1 else ""
        print(f"[predict] {len(samples)} test samples × {len(models)} checkpoints × {len(tta)} TTA{scales} -> {path}")
    return path
