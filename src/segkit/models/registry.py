"""Models by name: `build_model({"name": "unet", ...}, input_shape, n_classes)`."""
from __future__ import annotations

import importlib
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

from segkit.errors import TrainingError, check_kwargs, unknown_name
from segkit.models.layers import input_normalisation_of
from segkit.modelspec import ModelSpec

_BUILDERS: dict[str, Callable[..., Any]] = {}  # filled by the architecture modules segkit.models imports


def register_model(name: str) -> Callable:
    """Decorator for a builder `f(input_shape, n_classes, **params, normalisation=None) -> keras.Model`."""

    def deco(fn: Callable) -> Callable:
        _BUILDERS[name] = fn
        return fn

    return deco


def model_names() -> list[str]:
    """Every model name a config may use."""
    return sorted(_BUILDERS)


def build_model(spec: ModelSpec | dict[str, Any], input_shape: tuple[int, int, int], n_classes: int, where: str = "models.0",
                normalisation: tuple[Sequence[float], Sequence[float]] | None = None):
    """Build the model a config entry describes; unknown names or parameters are ConfigErrors.

    `normalisation` (the adapter's per-band scale and offset, `adapter.input_normalisation(dtype)`) becomes
    the model's first layer, so the model — and its saved checkpoint — takes raw images.
    `classifier: true` gives every family the classification head (outputs `mask` and `label`, see
    `split_outputs`); `classifier_weight` is the loss's business (segkit.losses.compile_args), not the builder's.
    """
    spec = ModelSpec.of(spec, where)
    if spec.name not in _BUILDERS:
        raise unknown_name(f"{where}.name", "model", spec.name, _BUILDERS)
    builder = _BUILDERS[spec.name]
    kwargs = spec.builder_kwargs()
    check_kwargs(builder, kwargs, where, skip=("input_shape", "n_classes", "normalisation"))
    return builder(input_shape, n_classes, **kwargs, normalisation=normalisation)


def split_outputs(pred: Any) -> tuple[Any, Any]:
    """(mask, label or None) from a model's prediction: a plain (B, H, W, C) array (no classification head),
    a list/tuple `[mask, label]` as `predict_on_batch` returns for a two-output model, or a dict keyed by the
    output names `mask` and `label`."""
    if isinstance(pred, dict):
        if "mask" in pred:
            return pred["mask"], pred.get("label")
        values = list(pred.values())
        return (values[0], None) if len(values) == 1 else (values[0], values[1])
    if isinstance(pred, (list, tuple)):
        if len(pred) == 1:
            return pred[0], None
        if len(pred) == 2:
            return pred[0], pred[1]
        raise ValueError(f"split_outputs: expected 1 or 2 model outputs, got {len(pred)}")
    return pred, None


def has_classifier(model) -> bool:
    """True when the model has the classification head (two outputs: `mask`, `label`)."""
    return len(model.outputs) == 2 and any(layer.name == "label" for layer in model.layers)


def retrain_hint(path: str | Path) -> str:
    """What to do about a bad checkpoint when the caller did not say (callers inside a run say which fold to
    retrain)."""
    return "save or train the model again"


def load_model(path: str | Path, compile: bool = True, raw_input: bool = False, fix: str | None = None,
               expected_shape: Sequence[int] | None = None):
    """Load a saved `.keras` model after registering every segkit layer, loss and metric.

    Plain `keras.models.load_model(path)` works as well after `import segkit.models`; this helper also
    turns a missing, empty, truncated or corrupt file into a TrainingError naming the file and the fix.
    `raw_input=True` (resuming training on raw images) also refuses a checkpoint written before segkit put
    the input normalisation inside the model; without it such a model loads and `has_input_normalisation`
    tells the caller to normalise its input (as `predict_probabilities` does). `fix`: what the error
    messages tell the user to do (default: `retrain_hint(path)`). `expected_shape` (H, W, bands), when
    given, is checked with `check_checkpoint_input`.
    """
    import keras

    # every architecture, loss and metric is registered already: importing this module ran segkit.models
    try:  # registers KerasHub's layers, which encoder U-Nets on other KerasHub versions may contain
        importlib.import_module("keras_hub")
    except ImportError:
        pass
    path = Path(path)
    fix = fix or retrain_hint(path)
    if not path.is_file():
        raise TrainingError(f"{path}: checkpoint not found; {fix}")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        what = "empty" if path.stat().st_size == 0 else "truncated or corrupt"
        raise TrainingError(f"{path} is not a readable Keras checkpoint ({what}); {fix}")
    try:
        model = keras.models.load_model(path, compile=compile)
    except Exception as exc:  # a damaged archive or config: keras' own message, on one line, with the file
        detail = " ".join(str(exc).split())[:300]
        raise TrainingError(f"{path} is not a readable Keras checkpoint ({type(exc).__name__}: {detail}); "
                            f"{fix}") from exc
    if raw_input and not has_input_normalisation(model):
        raise TrainingError(f"{path} was saved by an older segkit without the input normalisation layer, so "
                            f"training cannot resume from it on raw images; delete it or {fix}")
    if expected_shape is not None:
        check_checkpoint_input(model, expected_shape, path, fix)
    return model


def has_input_normalisation(model) -> bool:
    """True when the model normalises raw images itself (its first layers hold an InputNormalisation);
    False for checkpoints saved by older segkit versions, whose input the caller must normalise."""
    return input_normalisation_of(model) is not None


def check_checkpoint_input(model, expected: Sequence[int], path: str | Path, fix: str | None = None) -> None:
    """TrainingError when a loaded checkpoint does not take (H, W, bands) images as the config says
    (`data.image_size` and the competition's bands); None in the model's shape matches anything."""
    fix = fix or retrain_hint(path)
    got = tuple(model.input_shape[1:])
    expected = tuple(int(v) for v in expected)
    if len(got) != len(expected) or any(g is not None and g != e for g, e in zip(got, expected)):
        shape = "x".join("?" if g is None else str(g) for g in got)
        raise TrainingError(
            f"{path}: the checkpoint takes {shape} images but the config gives {'x'.join(map(str, expected))} "
            "(data.image_size × bands); predict with the config the run was trained with "
            f"(runs/<name>/config.yaml) or {fix}"
        )


PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def set_precision(policy: str | None) -> None:
    """Set Keras's global dtype policy for models built afterwards (None = "float32").

    "mixed_float16" (GPUs with tensor cores) or "mixed_bfloat16" (TPUs, recent GPUs/CPUs) compute in half
    precision and keep variables in float32; segkit models still output float32 probabilities because their
    final activation layer is float32. With "mixed_float16", `model.compile` wraps the optimizer in a
    LossScaleOptimizer by itself.
    """
    import keras

    policy = policy or "float32"
    if policy not in PRECISIONS:
        raise unknown_name("train.mixed_precision", "policy", policy, PRECISIONS)
    keras.mixed_precision.set_global_policy(policy)


def model_tag(spec: ModelSpec | dict[str, Any], index: int) -> str:
    """A stable folder name for one architecture of the ensemble (its `tag`, else name + index)."""
    return str(spec.get("tag") or f"{spec.get('name', 'model')}{index}")
