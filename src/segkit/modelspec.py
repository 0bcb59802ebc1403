"""One entry of a config's `models:` list, typed and checked when the config loads.

A model spec is the model's name, the keys segkit reads itself (`tag`, `activation`, `classifier`,
`classifier_weight`, `positive_only`) and the builder's other keywords (`depth`, `backbone`, ...). Keys are checked
against the builder's parameters here, without importing Keras, so a typo fails before any cache is built or
run folder written. The spec reads as the mapping it was written as (`spec["depth"]`, `dict(spec)`), and
`to_dict()` gives back exactly the keys given, so saved configs and fold fingerprints stay as they were.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Iterator

from segkit.errors import ConfigError, unknown_name

ACTIVATIONS = ("sigmoid", "softmax")
# keys segkit reads itself; `activation` and `classifier` also go to the builder
SEGKIT_KEYS = ("name", "tag", "classifier_weight", "positive_only")

_BLOCKS = ("attention", "hypercolumn", "deep_supervision")  # decoder blocks every decoder takes (and `dropout`)
_UNET = ("depth", "base_filters", "batch_norm", "dropout", "upsampling", "activation", "classifier", *_BLOCKS)
_FRACTAL = ("columns", "depth", "base_filters", "dropout", "drop_path_local", "global_ratio", "deepest_only",
            "upsampling", "activation", "seed", "classifier", *_BLOCKS)
_ENCODER = ("backbone", "preset", "rgb_bands", "decoder_filters", "decoder_batch_norm", "upsampling",
            "encoder_trainable", "activation", "classifier", "dropout", *_BLOCKS)
# the decoders over any encoder (segkit.models.decoders): the encoder's keys, then the decoder's own
_ANY_ENCODER = ("backbone", "preset", "rgb_bands", "encoder_trainable", "depth", "base_filters", "batch_norm",
                "activation", "classifier", "dropout", *_BLOCKS)
# The built-in builders' keywords (segkit.models; tests/test_modelspec.py checks them against the signatures),
# known here without importing Keras.
BUILTIN_PARAMS: dict[str, tuple[str, ...]] = {
    "unet": _UNET, "fractal_unet": _FRACTAL,
    "encoder_unet": _ENCODER, "resnet_unet": _ENCODER, "efficientnet_unet": _ENCODER,
    "fpn": (*_ANY_ENCODER, "pyramid_filters", "segmentation_filters"),
    "unet_plus_plus": (*_ANY_ENCODER, "decoder_filters", "decoder_batch_norm", "upsampling"),
    "deeplabv3_plus": (*_ANY_ENCODER, "aspp_filters", "atrous_rates", "low_level_filters", "decoder_filters"),
    "mobilenet_unet": _ENCODER, "densenet_unet": _ENCODER, "mit_unet": _ENCODER,
    "segformer": ("backbone", "preset", "rgb_bands", "projection_filters", "dropout", "encoder_trainable",
                  "activation", "classifier"),
}
ATTENTIONS = ("scse",)
AUX_WEIGHT = 0.4  # `deep_supervision: true`: the auxiliary heads' losses weigh 0.4 in all (PSPNet's weight)


def decoder_blocks(attention: Any = None, hypercolumn: Any = False, deep_supervision: Any = False,
                   dropout: Any = None, where: str = "models.0",
                   per_level: bool = False) -> tuple[str | None, bool, float, Any]:
    """(attention, hypercolumn, auxiliary loss weight, dropout) from a spec's decoder-block keys, checked:
    `attention` null or "scse"; `hypercolumn` true/false; `deep_supervision` true/false or the auxiliary heads'
    total loss weight (> 0; true = AUX_WEIGHT); `dropout` a rate in [0, 1) before the head (`per_level`: the
    U-Nets' dropout, which may also be a list of per-level rates, the builder's to check). ConfigError naming
    the key."""
    if attention is not None and attention not in ATTENTIONS:
        if isinstance(attention, str):
            raise unknown_name(f"{where}.attention", "attention", attention, ATTENTIONS, listed="valid")
        raise ConfigError(f"{where}.attention: must be scse or null, got {attention!r}")
    if not isinstance(hypercolumn, bool):
        raise ConfigError(f"{where}.hypercolumn: must be true or false, got {hypercolumn!r}")
    if isinstance(deep_supervision, bool):
        weight = AUX_WEIGHT if deep_supervision else 0.0
    elif isinstance(deep_supervision, (int, float)) and math.isfinite(deep_supervision) and deep_supervision > 0:
        weight = float(deep_supervision)
    else:
        raise ConfigError(f"{where}.deep_supervision: must be true, false or the auxiliary heads' total loss weight "
                          f"(a number > 0; true = {AUX_WEIGHT}), got {deep_supervision!r}")
    if isinstance(dropout, (list, tuple)) and not per_level:
        raise ConfigError(f"{where}.dropout: one rate in [0, 1) for the dropout before the head, got {dropout!r}")
    if dropout is not None and not isinstance(dropout, (list, tuple)):
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ConfigError(f"{where}.dropout: must be a rate in [0, 1), got {dropout!r}")
        dropout = float(dropout)
    return attention, hypercolumn, weight, dropout
_BUILDER_ONLY = ("input_shape", "n_classes", "normalisation")


def model_params(name: str) -> tuple[str, ...] | None:
    """The keywords model `name` takes from a spec (built-in, or registered with segkit.models.register_model);
    None for a name nothing registered."""
    registry = sys.modules.get("segkit.models.registry")  # models registered from Python (keras already loaded)
    builder = getattr(registry, "_BUILDERS", {}).get(name) if registry is not None else None
    if builder is not None:
        import inspect

        params = inspect.signature(builder).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return None  # takes anything: the builder checks
        return tuple(n for n in params if n not in _BUILDER_ONLY and n != "self")
    return BUILTIN_PARAMS.get(name)


def known_models() -> list[str]:
    """Every model name a config may use: the built-in ones and those registered from Python."""
    registry = sys.modules.get("segkit.models.registry")
    return sorted(set(BUILTIN_PARAMS) | set(getattr(registry, "_BUILDERS", {}) if registry is not None else ()))


@dataclass(eq=False)
class ModelSpec(Mapping):
    """One model of the ensemble: its builder `name`, folder `tag` (None: name + index), final `activation`,
    classification head (`classifier`, its loss weight `classifier_weight`), `positive_only` (None: follow
    train.positive_only) and the builder's other keywords in `params`."""

    name: str = "unet"
    tag: str | None = None
    activation: str = "sigmoid"
    classifier: bool = False
    classifier_weight: float = 0.2
    positive_only: bool | None = None
    params: dict[str, Any] = field(default_factory=dict)
    given: tuple[str, ...] | None = field(default=None, repr=False)  # keys written in the config, in order

    def __post_init__(self) -> None:
        if self.given is None:  # built in Python: the name, the fields set away from their defaults, the params
            typed = [f.name for f in fields(self) if f.name not in ("name", "params", "given")]
            self.given = ("name", *(k for k in typed if getattr(self, k) != _DEFAULTS[k]), *self.params)

    @classmethod
    def of(cls, raw: Any, where: str = "models.0") -> "ModelSpec":
        """Check a config's mapping (`{name: unet, depth: 2}`) key by key and type it; ConfigError naming the
        key, with "did you mean" for a mistyped one."""
        if isinstance(raw, ModelSpec):
            return raw
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: expected a mapping such as {{name: unet, depth: 4}}, got {raw!r}")
        raw = {str(k): v for k, v in raw.items()}
        name = raw.get("name")
        if not name or not isinstance(name, str):
            raise ConfigError(f"{where}.name: missing model name (known: {', '.join(known_models())})")
        params = model_params(name)
        if params is None and name not in known_models():
            raise unknown_name(f"{where}.name", "model", name, known_models())
        if params is not None:
            valid = [*SEGKIT_KEYS, *params]
            for key in raw:
                if key not in valid:
                    raise unknown_name(where, f"{name} key", key, valid)
        typed = {k: raw[k] for k in ("tag", "activation", "classifier", "classifier_weight", "positive_only")
                 if k in raw}
        rest = {k: v for k, v in raw.items() if k not in typed and k != "name"}
        spec = cls(name=name, **typed, params=rest, given=tuple(raw))
        spec.check(where)
        return spec

    def check(self, where: str = "models.0") -> None:
        """ConfigError naming the key of the first segkit-read value that is wrong."""
        if self.tag is not None and (not isinstance(self.tag, (str, int)) or isinstance(self.tag, bool)
                                     or not str(self.tag).strip()):
            raise ConfigError(f"{where}.tag: must be a folder name such as unet_a, got {self.tag!r}")
        if self.activation not in ACTIVATIONS:
            raise unknown_name(f"{where}.activation", "activation", self.activation, ACTIVATIONS)
        if not isinstance(self.classifier, bool):
            raise ConfigError(f"{where}.classifier: must be true or false, got {self.classifier!r}")
        weight = self.classifier_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or weight < 0:
            raise ConfigError(f"{where}.classifier_weight: must be a number >= 0 (the weight of the head's BCE in "
                              f"the loss, default 0.2), got {weight!r}")
        if "classifier_weight" in self.given and not self.classifier:
            raise ConfigError(f"{where}.classifier_weight: set but {where}.classifier is not true; add "
                              "classifier: true or drop the weight")
        if self.positive_only is not None and not isinstance(self.positive_only, bool):
            raise ConfigError(f"{where}.positive_only: must be true or false, got {self.positive_only!r}")
        if self.name in BUILTIN_PARAMS:  # a model registered from Python checks its own keys
            decoder_blocks(**{k: self.params[k] for k in (*_BLOCKS, "dropout") if k in self.params}, where=where,
                           per_level=self.name in ("unet", "fractal_unet"))

    def trains_positive_only(self, default: bool = False) -> bool:
        """Whether the model trains on non-empty masks only: its own `positive_only`, else train.positive_only."""
        return default if self.positive_only is None else self.positive_only

    @property
    def softmax(self) -> bool:
        """True for a multi-class model (softmax over classes, channel 0 the background)."""
        return self.activation == "softmax"

    def builder_kwargs(self) -> dict[str, Any]:
        """The keywords its builder takes (the spec less the keys segkit reads itself)."""
        return {k: v for k, v in self.items() if k not in SEGKIT_KEYS}

    def to_dict(self) -> dict[str, Any]:
        """The spec as written in the config: exactly the keys given (saved configs and fingerprints)."""
        return dict(self.items())

    # --- the mapping it was written as --------------------------------------------------------------------
    def _value(self, key: str) -> Any:
        return self.params[key] if key in self.params else getattr(self, key)

    def __getitem__(self, key: str) -> Any:
        if key not in self.given:
            raise KeyError(key)
        return self._value(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.given)

    def __len__(self) -> int:
        return len(self.given)

    def __repr__(self) -> str:
        return f"ModelSpec({self.to_dict()!r})"

    def __deepcopy__(self, memo: dict) -> "ModelSpec":
        import copy

        return ModelSpec.of(copy.deepcopy(self.to_dict(), memo))


_DEFAULTS = {f.name: f.default for f in fields(ModelSpec)}
