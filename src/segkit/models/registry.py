"""Models by name: `build_model({"name": "unet", ...}, input_shape, n_classes)`."""
from __future__ import annotations

import importlib
from typing import Any, Callable

from segkit.config import check_kwargs
from segkit.errors import ConfigError

_BUILDERS: dict[str, Callable[..., Any]] = {}
# name -> module under segkit.models that registers it (imported on first use)
_MODULES = {
    "unet": "unet",
    "fractal_unet": "fractal",
    "encoder_unet": "encoders",
    "resnet_unet": "encoders",
    "efficientnet_unet": "encoders",
}


def register_model(name: str, module: str | None = None) -> Callable:
    """Decorator for a builder `f(input_shape, n_classes, **params) -> keras.Model`."""

    def deco(fn: Callable) -> Callable:
        _BUILDERS[name] = fn
        return fn

    return deco


def model_names() -> list[str]:
    """Every model name a config may use."""
    _import_all()
    return sorted(_BUILDERS)


def _import_all() -> None:
    for mod in set(_MODULES.values()) | {"encoders"}:
        try:
            importlib.import_module(f"segkit.models.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"segkit.models.{mod}":
                raise


def build_model(spec: dict[str, Any], input_shape: tuple[int, int, int], n_classes: int, where: str = "models.0"):
    """Build the model a config entry describes; unknown names or parameters are ConfigErrors."""
    spec = dict(spec)
    name = spec.pop("name", None)
    spec.pop("tag", None)
    if not name:
        raise ConfigError(f"{where}.name: missing model name")
    if name not in _BUILDERS:
        if name in _MODULES:
            importlib.import_module(f"segkit.models.{_MODULES[name]}")
        else:
            _import_all()
    if name not in _BUILDERS:
        import difflib

        close = difflib.get_close_matches(name, list(_BUILDERS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{where}.name: unknown model '{name}'{hint} (known: {', '.join(sorted(_BUILDERS))})")
    builder = _BUILDERS[name]
    check_kwargs(builder, spec, where, skip=("input_shape", "n_classes"))
    return builder(input_shape, n_classes, **spec)


def load_model(path, compile: bool = True):
    """Load a saved `.keras` model after registering every segkit layer, loss and metric.

    Plain `keras.models.load_model(path)` works as well once the defining modules are imported; this helper
    imports them all first, so callers need not know which architecture a checkpoint holds.
    """
    import keras

    _import_all()
    importlib.import_module("segkit.losses")
    importlib.import_module("segkit.metrics")
    try:  # registers KerasHub's layers, which encoder U-Nets may contain
        importlib.import_module("keras_hub")
    except ImportError:
        pass
    return keras.models.load_model(path, compile=compile)


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
        import difflib

        close = difflib.get_close_matches(policy, PRECISIONS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"train.mixed_precision: unknown policy '{policy}'{hint} (valid: {', '.join(PRECISIONS)})")
    keras.mixed_precision.set_global_policy(policy)


def model_tag(spec: dict[str, Any], index: int) -> str:
    """A stable folder name for one architecture of the ensemble (its `tag`, else name + index)."""
    return str(spec.get("tag") or f"{spec.get('name', 'model')}{index}")
