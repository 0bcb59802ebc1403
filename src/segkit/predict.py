"""Test-time augmentation and fold × architecture ensembles, streamed in batches into the submission."""
from __future__ import annotations

import contextlib
import itertools
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from segkit.config import Config, TilingConfig, check_scales, from_dict
from segkit.data.cache import prepare, resize_image
from segkit.data.competitions.base import adapter_class
from segkit.devices import plan_devices
from segkit.errors import ConfigError, DataError, SubmissionError, unknown_name
from segkit.oof import ensemble_members
from segkit.progress import progress
from segkit.runs import RunDir, checkpoint_folds
from segkit.submission import read_sample_ids, write_rows
from segkit.tiling import ImageCanvas, check_tiling, note_tile_size, predict_canvases

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
_SQUARE_ONLY = {"rot90", "rot270", "transpose"}  # these swap height and width


def _swap(x):
    from keras import ops

    return ops.transpose(x, (0, 2, 1, 3))


def _flip(*axes: int) -> Callable:
    def flip(x):
        from keras import ops

        for axis in axes:
            x = ops.flip(x, axis=axis)
        return x
    return flip


# The built-in TTA entries again as keras.ops on device tensors, for the bulk path (`_tta_net`); an entry of TTA
# replaced or added by a user (numpy functions) runs per augmentation on the host instead.
_DEVICE_TTA: dict[str, tuple[Callable, Callable]] = {
    "identity": (lambda x: x, lambda y: y),
    "hflip": (_flip(2), _flip(2)),
    "vflip": (_flip(1), _flip(1)),
    "hvflip": (_flip(1, 2), _flip(1, 2)),
    "rot90": (lambda x: _swap(_flip(2)(x)), lambda y: _flip(2)(_swap(y))),
    "rot180": (_flip(1, 2), _flip(1, 2)),
    "rot270": (lambda x: _flip(2)(_swap(x)), lambda y: _swap(_flip(2)(y))),
    "transpose": (_swap, _swap),
}
_BUILTIN_TTA = dict(TTA)


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
    check is lifted (every nested functional model's `input_spec`) while the call runs and put back after.
    `tta_net` hands out a model's bulk-TTA net (`_tta_net`), kept on the model across calls (Ensemble and
    tiled inference call `predict_ensemble` once per chunk) so that it is built and compiled once."""

    def __init__(self) -> None:
        self._nets: dict[tuple[int, tuple[int, int]], object] = {}
        self._specs: list[tuple[object, object]] = []

    def _lift(self, model) -> None:
        import keras

        for sub in [model, *(m for m in _all_layers(model) if isinstance(m, keras.Model))]:
            if not any(sub is s for s, _ in self._specs):
                self._specs.append((sub, sub.input_spec))
                sub.input_spec = None

    def get(self, model, size: tuple[int, int]):
        built = tuple(model.input_shape[1:3])
        if built == tuple(size) or built == (None, None):
            return model
        key = (id(model), tuple(size))
        if key not in self._nets:
            import keras

            self._lift(model)
            inp = keras.Input((*size, model.input_shape[-1]), name="image")
            out = model(inp)
            self._nets[key] = keras.Model(inp, out, name=f"{model.name}_{size[0]}x{size[1]}")
        return self._nets[key]

    def tta_net(self, model, size: tuple[int, int], names: Sequence[str]):
        nets = model.__dict__.get("_segkit_tta_nets")
        if nets is None:  # plain attribute: Keras would track a dict of models as sub-layers of the model
            nets = {}
            object.__setattr__(model, "_segkit_tta_nets", nets)
        key = (tuple(int(v) for v in size), tuple(names))
        if key not in nets:
            nets[key] = _tta_net(model, key[0], key[1], self.get)
        self._lift(model)  # its nested nets at other sizes are traced again for a new batch shape
        return nets[key]

    def restore(self) -> None:
        for sub, spec in self._specs:
            sub.input_spec = spec
        self._specs.clear()
        self._nets.clear()


def _tta_net(model, size: tuple[int, int], names: Sequence[str], get: Callable):
    """One Keras model mapping a batch (B, h, w, C) to the sum over the built-in TTA `names` of `model`'s mask
    at (h, w), and of its head output for a two-output model: the variants of one shape are stacked into one
    forward call (B·T images), the inverse transforms and the sum run on the device, and `predict_on_batch`
    compiles it all into one function. rot90 / rot270 / transpose of a non-square batch have the other shape:
    they form a second stack, through the model at (w, h) (`get`)."""

    import keras
    from keras import ops

    from segkit.models.registry import split_outputs  # lazy: models.registry imports keras

    h, w = size
    groups: dict[tuple[int, int], list[str]] = {}
    for name in names:
        groups.setdefault((w, h) if name in _SQUARE_ONLY else (h, w), []).append(name)
    strategy = _tf_strategy(model)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        inp = keras.Input((h, w, model.input_shape[-1]), name="image")
        mask_sum = label_sum = None
        for shape, group in groups.items():
            t = len(group)
            variants = [_DEVICE_TTA[name][0](inp) for name in group]
            mask, label = split_outputs(get(model, shape)(ops.concatenate(variants, axis=0) if t > 1 else variants[0]))
            mask = ops.reshape(ops.cast(mask, "float32"), (t, -1, *shape, mask.shape[-1]))  # variant-major
            for i, name in enumerate(group):
                part = _DEVICE_TTA[name][1](mask[i])
                mask_sum = part if mask_sum is None else mask_sum + part
            if label is not None:
                label = ops.sum(ops.reshape(ops.cast(label, "float32"), (t, -1, label.shape[-1])), axis=0)
                label_sum = label if label_sum is None else label_sum + label
        net = keras.Model(inp, mask_sum if label_sum is None else [mask_sum, label_sum], name=f"{model.name}_tta")
    for setting in ("jit_compile", "run_eagerly"):  # as chosen for the model (segkit.devices, or the user)
        if hasattr(model, setting):
            setattr(net, setting, getattr(model, setting))
    return net


def _tf_strategy(model):
    """The tf.distribute strategy a model was built under when it spans several replicas (TF backend), else
    None."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return None
    strategy = getattr(model, "distribute_strategy", None)
    return strategy if getattr(strategy, "num_replicas_in_sync", 1) > 1 else None


def _replicas(model) -> int:
    """How many devices one prediction splits its batch over: the batch axis of the active JAX
    `keras.distribution` (set before the models were loaded), the replicas of the TF strategy the model was
    built under; 1 otherwise (PyTorch has no supported multi-device path in Keras)."""
    import keras

    if keras.backend.backend() == "jax":
        dist = keras.distribution.distribution()
        if dist is None:
            return 1
        mesh = dist.device_mesh
        return int(dict(zip(mesh.axis_names, mesh.shape)).get(dist.batch_dim_name, 1))
    strategy = _tf_strategy(model)
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def _predict_bulk(net, x: np.ndarray, replicas: int):
    """`net` on the batch `x` (numpy outputs). Over several devices through Keras' `predict`, which splits the
    batch across them (keras.distribution on JAX, the strategy on TF; `predict_on_batch` would not), the batch
    padded with copies of its last image to a multiple of the device count and the padding dropped again."""
    if replicas <= 1:
        return net.predict_on_batch(x)
    n = len(x)
    pad = -n % replicas
    if pad:
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    out = net.predict(x, batch_size=len(x), verbose=0)
    return [o[:n] for o in out] if isinstance(out, (list, tuple)) else out[:n]


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

    On the device, the T augmentations of a batch are stacked into one forward call per model and scale (the
    inverse transforms and their sum stay there too; see `_one_model`), so a call holds at most
    `batch_size` × T images: T times the activations of a plain batch; lower `batch_size` if that does not
    fit. With several devices (a JAX `keras.distribution` set before the models were loaded, or a TF strategy
    they were loaded under) each call's batch, padded to a multiple of the device count, is split across them.
    """
    from segkit.models.registry import has_input_normalisation, split_outputs  # lazy: models.registry imports keras

    scales = check_scales("ensemble scales", scales)
    weights, roles = _ensemble_weights(len(models), weights, positive_only, tta)
    gate_w = np.where(roles, 0.0, weights)
    separate_gate = bool(roles.any()) and gate_w.sum() > 0  # else the gate is the whole ensemble
    raw_input = [has_input_normalisation(m) for m in models]
    scaled = _Scaled()
    starts = range(0, len(indices), batch_size)
    try:
        for start in progress(starts, "predict", quiet=quiet or len(starts) < 2, unit="batch"):
            raw = np.stack([np.asarray(cache.images[i]) for i in indices[start:start + batch_size]])
            yield _ensemble_batch(raw, models, raw_input, normalise, weights, gate_w if separate_gate else None,
                                  tta, scales, scaled, split_outputs)
    finally:
        scaled.restore()


def _ensemble_weights(n: int, weights: Sequence[float] | None, positive_only: Sequence[bool] | None,
                      tta: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The `n` models' weights (default equal) and positive-only flags as arrays; ConfigError unless there is
    one of each per model, the weights are ≥ 0 and not all 0, and every `tta` name is known."""
    weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    roles = np.zeros(n, bool) if positive_only is None else np.asarray(positive_only, dtype=bool)
    if n == 0 or len(weights) != n or len(roles) != n:
        raise ConfigError(f"ensemble: {n} models, {len(weights)} weights and {len(roles)} positive-only flags; "
                          "give one of each per model")
    if not (np.isfinite(weights).all() and (weights >= 0).all() and weights.sum() > 0):
        raise ConfigError(f"ensemble weights: must be numbers ≥ 0, not all 0, got {weights.tolist()}")
    for name in tta:
        if name not in TTA:
            raise unknown_name("ensemble tta", "augmentation", name, TTA)
    return weights, roles


def _ensemble_batch(raw: np.ndarray, models: Sequence, raw_input: list[bool], normalise: Callable,
                    weights: np.ndarray, gate_w: np.ndarray | None, tta: list[str], scales: Sequence[float],
                    scaled: _Scaled, split_outputs: Callable) -> EnsembleBatch:
    """The ensemble on one batch of raw images: each model's TTA × scale mean, weighted by `weights`; the gate
    mixes the models with `gate_w` (None: the gate is the ensemble itself); the classification heads give the
    label. `raw_input[m]` says whether model m normalises in its first layer (else `normalise` first)."""
    per_model = len(tta) * len(scales)
    inputs: dict[bool, np.ndarray] = {}  # raw float32, and normalised for old checkpoints, made once
    total = gate = label = None
    label_w = 0.0
    for m, (model, takes_raw) in enumerate(zip(models, raw_input)):
        if weights[m] == 0:
            continue
        if takes_raw not in inputs:
            inputs[takes_raw] = (raw if takes_raw else np.stack([normalise(im) for im in raw])).astype(np.float32)
        mean, head = _one_model(model, inputs[takes_raw], tta, scales, scaled, split_outputs)
        mean *= np.float32(weights[m] / per_model)
        total = mean if total is None else total + mean
        if gate_w is not None and gate_w[m] > 0:
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
    return EnsembleBatch(probs, gate_probs, label)


def _one_model(model, x: np.ndarray, tta: list[str], scales: list[float], scaled: _Scaled,
               split_outputs: Callable) -> tuple[np.ndarray, np.ndarray | None]:
    """Sums over `scales` × `tta` of one model's mask (at the batch's size) and head output (or None).

    Per scale, the built-in augmentations of the batch run as one compiled call (`_tta_net`): one transfer to
    the device, and only their sum comes back. A scale ≠ 1 is resized on the host (cv2, as OOF and the
    submission resize), so it adds one round trip. TTA entries replaced or added by a user (numpy functions in
    `TTA`) run one by one through `predict_on_batch`."""
    size = x.shape[1:3]
    bulk = [name for name in tta if TTA[name] is _BUILTIN_TTA.get(name)]
    own = [name for name in tta if TTA[name] is not _BUILTIN_TTA.get(name)]
    replicas = _replicas(model)
    total = head = None
    for scale in scales:
        at = scaled_size(model, size, scale)
        xs = resize_batch(x, at)
        outputs = []
        if bulk:
            outputs.append(split_outputs(_predict_bulk(scaled.tta_net(model, at, bulk), xs, replicas)))
        for name in own:
            forward, inverse = TTA[name]
            mask, label = split_outputs(scaled.get(model, at).predict_on_batch(np.ascontiguousarray(forward(xs))))
            outputs.append((inverse(np.asarray(mask, dtype=np.float32)), label))
        part = None
        for mask, label in outputs:
            mask = np.array(mask, dtype=np.float32)  # a writable copy (JAX's are not)
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


def predict_tiled(models: Sequence, canvases: Sequence, normalise: Callable, tta: list[str], batch_size: int,
                  tiling, quiet: bool = False, scales: Sequence[float] = (1.0,),
                  weights: Sequence[float] | None = None,
                  positive_only: Sequence[bool] | None = None) -> Iterator:
    """Tiled inference (`predict.tiling`): a `segkit.tiling.PartPrediction` per part of each canvas
    (`segkit.tiling.Canvas`: an image, or a 38-Cloud scene of patches) at its stored size. The windows of
    every canvas go through one `predict_ensemble` call (TTA, models, weights, scales as without tiling), run
    at `tiling.tile` pixels, and are blended band by band (`segkit.tiling.predict_canvases`). ConfigError (at
    once, before any window is read) when the tile is not a multiple of the models' size step."""
    step = math.lcm(*(size_step(m) for m in models)) if models else 1
    check_tiling(tiling.tile, tiling.overlap, tiling.blend, step)
    if models:
        note_tile_size(tiling.tile, tuple(models[0].input_shape[1:3]))

    def run(source, indices: np.ndarray) -> Iterator[EnsembleBatch]:
        return predict_ensemble(models, source, indices, normalise, tta, batch_size, quiet, scales=scales,
                                weights=weights, positive_only=positive_only)

    return predict_canvases(canvases, tiling.tile, tiling.overlap, tiling.blend, run)


# --- the ensemble of a run, and numpy images through it ---------------------------------------------------

class _Batch:
    """What `predict_ensemble` reads images from (a cache's `images`), for in-memory arrays."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images


class Ensemble:
    """Fold × model × TTA averaging of checkpoints: numpy images in, numpy probabilities out (`sk.Ensemble`);
    `Ensemble.from_run(cfg)` is the ensemble `segkit predict`, `segkit pseudo` and `sk.Run.ensemble` share.

    Images are raw, in the dataset's dtype and range (uint16 for 38-Cloud): the checkpoints normalise them in
    their first layer. Any image size works: images are resized to the models' input and the probabilities
    back to the image's own size, as `segkit predict` does. Batches go through `predict_ensemble`, the
    function behind `segkit predict`, `batch_size` images at a time. `postprocess` (for `predict_masks`):
    a `segkit.postprocess.ChainParams` (what `Run.ensemble` passes) or (thresholds, min_areas) per class.
    `tiling` (`predict.tiling`: a `segkit.config.TilingConfig` or a dict such as `{"tile": 384, "overlap": 0.25}`):
    each image is predicted at its own size with overlapping `tile`-pixel windows blended together
    (`segkit.predict.predict_tiled`), one image in memory at a time, instead of being resized to the input.
    `members`: the run's `segkit.oof.EnsembleMember`s (tag, weight, role) when built by `from_run`.
    """

    def __init__(self, models: Sequence, tta: Sequence[str] = ("identity",), batch_size: int = 8,
                 image_size: Sequence[int] | None = None, normalise=None,
                 postprocess: Any = None, classes: Sequence[str] | None = None,
                 checkpoints: Sequence[Path] = (), scales: Sequence[float] = (1.0,),
                 weights: Sequence[float] | None = None, positive_only: Sequence[bool] | None = None,
                 tiling: Any = None) -> None:
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
        self.members: list = []
        self._normalise = normalise
        self._postprocess = postprocess
        # multi-scale TTA, per-model weights and positive-only roles, as predict_ensemble takes them
        self.scales = check_scales("ensemble scales", scales)
        self.weights = None if weights is None else [float(w) for w in weights]
        self.positive_only = None if positive_only is None else [bool(p) for p in positive_only]
        for name, given in (("weights", self.weights), ("positive_only", self.positive_only)):
            if given is not None and len(given) != len(self.models):
                raise ConfigError(f"ensemble {name}: {len(given)} values for {len(self.models)} models")
        self.tiling = _tiling(tiling, self.models)

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | Path], tta: Sequence[str] = ("identity",),
                         batch_size: int = 8, **kwargs: Any) -> "Ensemble":
        """An ensemble of `.keras` checkpoints (segkit's own, or any model taking raw images)."""
        from segkit.models.registry import load_model  # lazy: models.registry imports keras

        return cls([load_model(p) for p in paths], tta, batch_size, checkpoints=paths, **kwargs)

    @classmethod
    def from_run(cls, cfg: Config, adapter=None, batch_size: int | None = None, scope=None) -> "Ensemble":
        """The run's ensemble as the config says: a checkpoint per trained fold × model tag (`predict.models`),
        their weights and positive-only roles (`segkit.oof.ensemble_members`), the TTA list (`resolve_tta`),
        scales, tiling and, once tuned (or with tuning off), the post-processing chain. `adapter`: the
        competition's over data.root (its classes and normalisation; checkpoints are checked against its
        input shape); None tries `cfg.adapter()` and, without the data, goes on with the competition's known
        classes (arrays can be predicted without the dataset, e.g. a run attached as a Kaggle input).
        `scope`: a context (`segkit.devices` plan) the models are loaded in."""
        from segkit.models.registry import load_model  # lazy: models.registry imports keras

        folds = checkpoint_folds(cfg)
        members = {m.tag: m for m in ensemble_members(cfg)}  # predict.weights (or tuned) and positive-only roles
        tta = resolve_tta(cfg, adapter if adapter is not None else adapter_class(cfg.data.competition))
        if adapter is None:
            try:
                adapter = cfg.adapter()
            except DataError:
                adapter = None
        h, w = cfg.data.image_size
        shape = None if adapter is None else (h, w, adapter.bands)
        with scope if scope is not None else contextlib.nullcontext():
            models = [load_model(f.best, fix=f"retrain that fold: {f.restart_hint()}", expected_shape=shape)
                      for f in folds]
        classes, normalise = _classes_of(cfg, adapter, models[0])
        ens = cls(models, tta, batch_size or cfg.predict.batch_size, (h, w), normalise, _chain_if_tuned(cfg, classes),
                  classes, [f.best for f in folds], scales=cfg.predict.scales,
                  weights=[members[f.tag].weight for f in folds],
                  positive_only=[members[f.tag].positive_only for f in folds], tiling=cfg.predict.tiling)
        ens.members = list(members.values())
        return ens

    def __repr__(self) -> str:
        h, w = self.image_size
        return (f"Ensemble({len(self.models)} models × {len(self.tta)} TTA {self.tta}, input {h}x{w}x{self.bands}, "
                f"batch {self.batch_size})")

    @property
    def postprocess(self):
        """The post-processing `predict_masks` applies (a ChainParams, (thresholds, min_areas) or None)."""
        return self._postprocess

    def stream(self, source, indices: np.ndarray, quiet: bool = True,
               batch_size: int | None = None) -> Iterator[EnsembleBatch]:
        """`predict_ensemble` of this ensemble on source.images[indices] (a segkit cache, or `_Batch`), batch by
        batch at the models' input size."""
        return predict_ensemble(self.models, source, indices, self._normalise_fn, self.tta,
                                batch_size or self.batch_size, quiet, scales=self.scales, weights=self.weights,
                                positive_only=self.positive_only)

    def tiled(self, canvases: Sequence, quiet: bool = True) -> Iterator:
        """`predict_tiled` of this ensemble (its `tiling`) over `segkit.tiling.Canvas`es: a PartPrediction per
        part at its stored size."""
        return predict_tiled(self.models, canvases, self._normalise_fn, self.tta, self.batch_size, self.tiling,
                             quiet, scales=self.scales, weights=self.weights, positive_only=self.positive_only)

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
        if self.tiling is not None:
            for image in images:
                canvas = ImageCanvas(0, image=self._check(np.asarray(image), single=True))
                for part in self.tiled([canvas]):
                    yield part.probs, part.gate_probs, part.label
            return
        chunk: list[np.ndarray] = []
        for image in itertools.chain(images, [None]):  # None: the end, which flushes the last chunk
            if image is not None:
                chunk.append(self._check(np.asarray(image), single=True))
            if chunk and (image is None or len(chunk) == self.batch_size):
                batch = _Batch(np.stack([resize_image(np.asarray(im), self.image_size) for im in chunk]))
                outputs = per_image(self.stream(batch, np.arange(len(chunk)), batch_size=len(chunk)))
                for (p, g, label), im in zip(outputs, chunk):
                    yield (*at_size(p, g, im.shape[:2]), label)
                chunk = []
    def predict_masks(self, images: np.ndarray) -> np.ndarray:
        """Binary uint8 masks (as in the submission) for one image or a batch: the probabilities after the
        run's post-processing chain (threshold, min area, gate, triplet; `segkit.postprocess.apply_chain`)."""
        from segkit.postprocess import ChainParams, apply_chain  # lazy: postprocess imports scipy

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
    if tiling is None:
        return None
    if not isinstance(tiling, TilingConfig):
        if not isinstance(tiling, Mapping):
            raise ConfigError(f"predict.tiling: expected a mapping such as {{tile: 384, overlap: 0.25}}, got {tiling!r}")
        plain = {k: v.item() if isinstance(v, np.generic) else v for k, v in tiling.items()}
        tiling = from_dict(TilingConfig, plain, "predict.tiling")
    check_tiling(tiling.tile, tiling.overlap, tiling.blend, math.lcm(*(size_step(m) for m in models)))
    return tiling


def _classes_of(cfg: Config, adapter, model) -> tuple[list[str], Callable | None]:
    """(class names, image normalisation) of a run's ensemble: the adapter's; without the data (adapter None)
    the competition's classes when they match the model's mask output (else class_0 …), and no
    normalisation."""
    if adapter is not None:
        return list(adapter.classes), adapter.normalise
    n_out = int(model.outputs[0].shape[-1])  # the mask output (first of two with a head)
    known = list(adapter_class(cfg.data.competition).classes)
    return (known if len(known) == n_out else [f"class_{c}" for c in range(n_out)]), None


def _chain_if_tuned(cfg: Config, classes: Sequence[str]):
    """The run's post-processing chain when tuning is off or done (`segkit.postprocess.load_chain`), else None."""
    from segkit.postprocess import load_chain  # lazy: postprocess imports scipy

    if cfg.postprocess.tune is False or RunDir.of(cfg).postprocess.is_file():
        return load_chain(cfg, classes)
    return None


def per_image(batches: Iterable[EnsembleBatch]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """(probs, gate_probs, label) image by image from ensemble batches; gate_probs is probs itself when the
    batch's are (no positive-only model), label None without classification heads."""
    for batch in batches:
        for b, p in enumerate(batch.probs):
            g = p if batch.gate_probs is batch.probs else batch.gate_probs[b]
            yield p, g, None if batch.label is None else batch.label[b]


def at_size(probs: np.ndarray, gate_probs: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One image's probabilities and gate probabilities (h, w, C) resized to (H, W) (bilinear, as the submission
    size and `sk.Ensemble`'s image size need), the gate resized only when it is not the probabilities."""
    p = _to_size(probs, size)
    return p, (p if gate_probs is probs else _to_size(gate_probs, size))


def _to_size(p: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    h, w = int(size[0]), int(size[1])
    if p.shape[:2] == (h, w):
        return np.ascontiguousarray(p, dtype=np.float32)
    return cv2.resize(np.ascontiguousarray(p), (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)


def predict(cfg: Config, quiet: bool = False, out: str | Path | None = None) -> Path:
    """Ensemble every fold checkpoint with TTA over the test set, post-process, and write the competition's
    submission CSV (atomically, row by row); the written file is validated before returning its path."""
    from segkit.postprocess import apply_chain, load_chain  # lazy: postprocess imports scipy

    adapter = cfg.adapter()
    samples = adapter.test_samples()
    if not samples:
        raise DataError(f"{cfg.data.root}: no test samples found for {cfg.data.competition}")
    # checkpoints, post-processing and TTA are checked before the (slow) test cache is built
    # train.devices, at most what this machine has: loaded in its scope, each batch is split across the devices
    plan = plan_devices(cfg.train, cap=True)
    ens = Ensemble.from_run(cfg, adapter, scope=plan.scope())
    chain = ens.postprocess if ens.postprocess is not None else load_chain(cfg, adapter.classes)
    outputs = _test_outputs(cfg, ens, adapter, samples, quiet)
    if not quiet:
        _print_setup(cfg, ens, chain, plan)

    def rows() -> Iterator[tuple[str, str]]:
        for i, p, g, lab in outputs:
            sample = samples[i]
            p, g = at_size(p, g, adapter.submission_size(sample))
            yield from adapter.submission_rows(sample, apply_chain(p, chain, g, lab))

    path = Path(out) if out else cfg.submission_dir / "submission.csv"
    sample = adapter.sample_submission_path()
    sample_ids = None if sample is None else read_sample_ids(sample)[1]
    with plan.scope():  # JAX: the distribution is read by every predict call
        write_rows(path, adapter.submission_format, rows(), sample_ids=sample_ids)
    problems = adapter.check_written(path, samples, sample).problems
    if problems:
        raise SubmissionError(f"{path}: the written submission fails validation:\n  " + "\n  ".join(problems[:10]))
    if not quiet:
        tiling = cfg.predict.tiling
        scales = f" × {len(cfg.predict.scales)} scales" if len(cfg.predict.scales) > 1 else ""
        if tiling is not None:
            scales += f", tiled {tiling.tile} px windows (overlap {tiling.overlap:g}, {tiling.blend})"
        print(f"[predict] {len(samples)} test samples × {len(ens.models)} checkpoints × {len(ens.tta)} TTA{scales} "
              f"-> {path}")
    return path


def _test_outputs(cfg: Config, ens: Ensemble, adapter, samples: Sequence,
                  quiet: bool) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]:
    """(sample index, probs, the gate's probs, the heads' "class present") of every test sample, lazily: the
    test cache at the training size (built now), or tiled windows over each canvas at its stored size (an
    image, or a 38-Cloud scene of patches)."""
    if ens.tiling is not None:
        parts = ens.tiled(adapter.tiling_canvases(samples), quiet)
        return ((part.index, part.probs, part.gate_probs, part.label) for part in parts)
    h, w = cfg.data.image_size
    cache = prepare(adapter, samples, (h, w), cfg.data.cache_dir, name=f"{cfg.data.competition}-test-{h}x{w}",
                    quiet=quiet, with_masks=False)
    return ((i, *out) for i, out in enumerate(per_image(ens.stream(cache, np.arange(len(samples)), quiet))))


def _print_setup(cfg: Config, ens: Ensemble, chain, plan) -> None:
    """predict's opening lines: the post-processing in force, the devices, the ensemble's weights and roles."""
    print(f"[predict] post-processing: {chain.source}", flush=True)
    if plan.n > 1:
        print(f"[predict] {plan.n} × {plan.kind}: each batch of {cfg.predict.batch_size} split across them",
              flush=True)
    members = ens.members
    if len(set(m.weight for m in members)) > 1 or any(m.positive_only for m in members):
        print("[predict] ensemble: " + ", ".join(f"{m.tag} ×{m.weight:g}" + (" (positive-only: masks, not the "
              "gate)" if m.positive_only else "") for m in members), flush=True)
