"""Typed run configuration: YAML files merged with `key.sub=value` overrides, checked key by key."""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from segkit.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs"


@dataclass
class DataConfig:
    """Where the data is and how it is fed to the model."""

    competition: str = "cloud38"
    root: str = "data/38-Cloud"
    options: dict[str, Any] = field(default_factory=dict)  # adapter keywords, checked by the adapter
    image_size: list[int] = field(default_factory=lambda: [384, 384])  # model input (H, W)
    cache_dir: str = "cache"
    max_train_samples: int | None = None  # a quick subset for smoke runs
    synth: dict[str, Any] = field(default_factory=dict)  # keywords for the synthetic data the demo writes


@dataclass
class AugmentConfig:
    """Probabilities of each training augmentation (0 disables it)."""

    hflip: float = 0.5
    vflip: float = 0.5
    rot90: float = 0.5
    shift_scale_rotate: float = 0.3
    brightness_contrast: float = 0.3


@dataclass
class TrainConfig:
    """K-fold training settings."""

    folds: int = 5
    train_folds: list[int] | None = None  # train only these folds (e.g. one per Kaggle kernel)
    epochs: int = 40
    batch_size: int = 8
    learning_rate: float = 1e-3
    loss: str = "bce_dice"
    metrics: list[str] = field(default_factory=lambda: ["dice", "iou"])
    early_stopping_patience: int = 8
    reduce_lr_patience: int = 3
    reduce_lr_factor: float = 0.5
    steps_per_epoch: int | None = None
    workers: int = 2  # PyDataset worker threads (JAX/torch backends; TensorFlow builds batches with tf.data)
    use_multiprocessing: bool = False
    mixed_precision: str | None = None  # "mixed_float16" or "mixed_bfloat16"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    verbose: int = 1


@dataclass
class PostprocessConfig:
    """Binarisation and clean-up of probabilities, tuned per class on out-of-fold predictions."""

    tune: bool = True
    threshold: float = 0.5  # used when tune is false
    min_area: int = 0
    threshold_grid: list[float] = field(default_factory=lambda: [round(0.05 * i, 2) for i in range(2, 19)])
    min_area_grid: list[int] = field(default_factory=lambda: [0])


@dataclass
class PredictConfig:
    """Test-time augmentation and ensembling."""

    tta: list[str] | None = None  # None: the competition's default
    batch_size: int = 8
    models: list[str] | None = None  # model tags to ensemble; None: all trained


@dataclass
class OutputConfig:
    """Where runs and submissions go."""

    runs_dir: str = "runs"
    submissions_dir: str = "submissions"


@dataclass
class Config:
    """A whole run: one competition, one or more model architectures, K folds each."""

    name: str = "run"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    models: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "unet"}])
    train: TrainConfig = field(default_factory=TrainConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    kaggle: dict[str, Any] = field(default_factory=dict)  # checked by segkit.kaggle

    @property
    def run_dir(self) -> Path:
        return Path(self.output.runs_dir) / self.name

    @property
    def submission_dir(self) -> Path:
        return Path(self.output.submissions_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- loading -------------------------------------------------------------------------------

def resolve_config_path(path_or_name: str | Path) -> Path:
    """A config path, or a bare name looked up in the repo's configs/ folder."""
    p = Path(path_or_name)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"):
        if cand.is_file():
            return cand
    known = sorted(c.stem for c in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
    raise ConfigError(f"{path_or_name}: config file not found (built-in configs: {', '.join(known) or 'none'})")


def load_config(path_or_name: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config (with optional `base:` inheritance), apply `key.sub=value` overrides, validate."""
    raw: dict[str, Any] = _load_yaml_tree(resolve_config_path(path_or_name)) if path_or_name else {}
    for item in overrides:
        apply_override(raw, item)
    return from_dict(Config, raw, "")


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Validate a plain dict (e.g. a saved resolved config) into a Config."""
    return from_dict(Config, raw, "")


def _load_yaml_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise ConfigError(f"{path}: 'base' inheritance loops back to itself")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base:
        parent = _load_yaml_tree(resolve_config_path(path.parent / base if (path.parent / base).is_file() else base), seen + (path,))
        raw = deep_merge(parent, raw)
    return raw


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Merge `update` into a copy of `base`, recursing into mappings."""
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (`1e-3`, `[1,2]`, `null`)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key.sub=value")
    key, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, parts[: i + 1])
            continue
        nxt = node.get(part)
        if nxt is None:
            nxt = [] if part == "models" else {}
            node[part] = nxt
        node = nxt
    last = parts[-1]
    if isinstance(node, list):
        idx = int(last) if last.isdigit() else None
        if idx is None or idx >= len(node):
            raise ConfigError(f"override '{key}': no item {last} in a list of {len(node)}")
        node[idx] = value
    else:
        node[last] = value


def _list_item(node: list, part: str, path: list[str]) -> Any:
    if not part.isdigit():
        raise ConfigError(f"override '{'.'.join(path)}': '{part}' must be a list index")
    idx = int(part)
    if idx == len(node):
        node.append({})
    if idx >= len(node):
        raise ConfigError(f"override '{'.'.join(path)}': no item {idx} in a list of {len(node)}")
    return node[idx]


def _where(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def from_dict(cls: type, raw: Any, path: str) -> Any:
    """Build dataclass `cls` from a mapping, naming any unknown key and its closest valid spelling."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{_where(path, close[0])}'?" if close else ""
            raise ConfigError(f"{_where(path, str(key))}: unknown config key{hint}")
        kwargs[key] = _coerce(hints[key], value, _where(path, key))
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} does not fit {tp}")
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, (int, float, str)) and item_tp is int and where.endswith("image_size"):
            value = [value, value]  # a square size may be given as one number
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(item_tp, v, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def check_kwargs(func: Callable, kwargs: dict, where: str, skip: tuple[str, ...] = ("self",)) -> None:
    """Raise ConfigError naming the key (and the closest valid one) for any keyword `func` does not take."""
    params = inspect.signature(func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n in params if n not in skip]
    for key in kwargs:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{where}.{close[0]}'?" if close else ""
            raise ConfigError(f"{where}.{key}: unknown key{hint} (valid: {', '.join(valid) or 'none'})")


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from segkit.data.io import atomic_write

    with atomic_write(path) as fh:
        yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False)
