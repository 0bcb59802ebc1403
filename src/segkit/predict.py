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
    check is lifted (every nested functional model's `input_spec`) while the call runs and put back after.
    `tta_net` hands out a model's bulk-TTA net (`_tta_net`), kept on the model across calls (api.Ensemble and
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
    import contextlib

    import keras
    from keras import ops

    from segkit.models.registry import split_outputs

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
    import math

    from segkit.tiling import check_tiling, predict_canvases

    step = math.lcm(*(size_step(m) for m in models)) if models else 1
    check_tiling(tiling.tile, tiling.overlap, tiling.blend, step)

    def run(source, indices: np.ndarray) -> Iterator[EnsembleBatch]:
        return predict_ensemble(models, source, indices, normalise, tta, batch_size, quiet, scales=scales,
                                weights=weights, positive_only=positive_only)

    return predict_canvases(canvases, tiling.tile, tiling.overlap, tiling.blend, run)


def predict(cfg: Config, quiet: bool = False, out: str | Path | None = None) -> Path:
    """Ensemble every fold checkpoint with TTA over the test set, post-process, and write the competition's
    submission CSV (atomically, row by row); the written file is validated before returning its path."""
    import cv2

    from segkit.data.cache import prepare
    from segkit.data.competitions.base import make_adapter
    from segkit.devices import plan_devices
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
    # train.devices, at most what this machine has: loaded in its scope, each batch is split across the devices
    plan = plan_devices(cfg.train, cap=True)
    with plan.scope():
        models = [load_model(f.best, fix=f"retrain that fold: {f.restart_hint()}",
                             expected_shape=(h, w, adapter.bands)) for f in folds]
    chain = load_chain(cfg, adapter.classes)
    tta = resolve_tta(cfg, adapter)
    ensemble = dict(scales=cfg.predict.scales, weights=[members[f.tag].weight for f in folds],
                    positive_only=[members[f.tag].positive_only for f in folds])
    tiling = cfg.predict.tiling
    if tiling is None:
        cache = prepare(adapter, samples, (h, w), cfg.data.cache_dir, name=f"{cfg.data.competition}-test-{h}x{w}",
                        quiet=quiet, with_masks=False)
    else:  # windows at the stored size over each canvas: an image, or a 38-Cloud scene of patches
        tiled = predict_tiled(models, adapter.tiling_canvases(samples), adapter.normalise, tta,
                              cfg.predict.batch_size, tiling, quiet, **ensemble)
    if not quiet:
        print(f"[predict] post-processing: {chain.source}", flush=True)
        if plan.n > 1:
            print(f"[predict] {plan.n} × {plan.kind}: each batch of {cfg.predict.batch_size} split across them",
                  flush=True)
        if len(set(m.weight for m in members.values())) > 1 or any(m.positive_only for m in members.values()):
            print("[predict] ensemble: " + ", ".join(f"{m.tag} ×{m.weight:g}" + (" (positive-only: masks, not the "
                  "gate)" if m.positive_only else "") for m in members.values()), flush=True)

    def outputs() -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]:
        """(sample index, probs, the gate's probs, the heads' "class present") of every test sample."""
        if tiling is not None:
            for part in tiled:
                yield part.index, part.probs, part.gate_probs, part.label
            return
        batches = predict_ensemble(models, cache, np.arange(len(samples)), adapter.normalise, tta,
                                   cfg.predict.batch_size, quiet, **ensemble)
        i = 0
        for batch in batches:
            for b, p in enumerate(batch.probs):
                g = p if batch.gate_probs is batch.probs else batch.gate_probs[b]  # the gate's probabilities
                lab = None if batch.label is None else batch.label[b]  # the heads' "class present"
                yield i, p, g, lab
                i += 1

    def rows() -> Iterator[tuple[str, str]]:
        for i, p, g, lab in outputs():
            sample = samples[i]
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
    with plan.scope():  # JAX: the distribution is read by every predict call
        write_rows(path, adapter.submission_format, rows(), sample_ids=sample_ids)
    problems = validate_written(path, adapter, samples, sample)
    if problems:
        raise SubmissionError(f"{path}: the written submission fails validation:\n  " + "\n  ".join(problems[:10]))
    if not quiet:
        scales = f" × {len(cfg.predict.scales)} scales" if len(cfg.predict.scales) > 1 else ""
        if tiling is not None:
            scales += f", tiled {tiling.tile} px windows (overlap {tiling.overlap:g}, {tiling.blend})"
        print(f"[predict] {len(samples)} test samples × {len(models)} checkpoints × {len(tta)} TTA{scales} -> {path}")
    return path
