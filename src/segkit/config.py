"""Typed run configuration: YAML files merged with `key.sub=value` overrides, checked key by key."""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml

from segkit.data.competitions.base import Adapter, make_adapter
from segkit.devices import check_devices_setting, check_jit_setting, check_precision_setting
from segkit.errors import ConfigError, check_kwargs, did_you_mean, unknown_name  # noqa: F401 (check_kwargs re-exported)
from segkit.durations import parse_duration
from segkit.modelspec import ModelSpec
from segkit.storage import atomic_write
from segkit.tiling import check_tiling

LR_SCHEDULES = ("plateau", "cosine", "constant")  # train.lr_schedule (segkit.schedule runs them)

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # only for annotations (3.11+)

BUILTIN_CONFIGS = "configs"  # folder of built-in configs inside the segkit package


# --- range checks: every config dataclass checks its values when it is built, from YAML or in Python -----

class _Checked:
    """Mixin for the config dataclasses: on construction, coerce each field to its declared type and check
    its range, so `TrainConfig(epochs=0)` fails as loudly as `train.epochs: 0` in a YAML file."""

    SECTION: ClassVar[str] = ""  # where the section sits in a config, for error messages

    def __post_init__(self) -> None:
        hints = _type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(hints[f.name], getattr(self, f.name), _where(self.SECTION, f.name)))
        self.check()

    def check(self) -> None:
        """Raise ConfigError naming the key of the first value out of its range."""

    def _key(self, name: str) -> str:
        return _where(self.SECTION, name)


def _at_least(where: str, value: float | None, low: float) -> None:
    if value is not None and not value >= low:  # `not >=` also refuses NaN
        raise ConfigError(f"{where}: must be ≥ {low}, got {value!r}")


def _positive(where: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{where}: must be a number > 0, got {value!r}")


def _probability(where: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(f"{where}: must be a probability in [0, 1], got {value!r}")


def _not_empty(where: str, value: Any) -> None:
    if not value:
        raise ConfigError(f"{where}: must not be empty")


@dataclass
class DataConfig(_Checked):
    """Where the data is and how it is fed to the model."""

    SECTION: ClassVar[str] = "data"

    competition: str = "cloud38"
    root: str = "data/38-Cloud"
    options: dict[str, Any] = field(default_factory=dict)  # adapter keywords, checked by the adapter
    image_size: list[int] = field(default_factory=lambda: [384, 384])  # model input (H, W)
    cache_dir: str = "cache"
    max_train_samples: int | None = None  # a quick subset for smoke runs
    synth: dict[str, Any] = field(default_factory=dict)  # keywords for the synthetic data the demo writes

    def check(self) -> None:
        _not_empty(self._key("competition"), self.competition)
        _not_empty(self._key("cache_dir"), self.cache_dir)
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ConfigError(f"{self._key('image_size')}: expected one positive size or [height, width], "
                              f"got {self.image_size!r}")
        _at_least(self._key("max_train_samples"), self.max_train_samples, 1)


@dataclass
class AugmentConfig(_Checked):
    """Probabilities of each training augmentation (0 disables it)."""

    SECTION: ClassVar[str] = "train.augment"

    hflip: float = 0.5
    vflip: float = 0.5
    rot90: float = 0.5
    shift_scale_rotate: float = 0.3
    brightness_contrast: float = 0.3

    def check(self) -> None:
        for f in dataclasses.fields(self):
            _probability(self._key(f.name), getattr(self, f.name))


@dataclass
class TrainConfig(_Checked):
    """K-fold training settings."""

    SECTION: ClassVar[str] = "train"

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
    # data-parallel devices: auto (every visible GPU/TPU, else CPU) or a count; batch_size is per device
    devices: Any = "auto"
    # auto (from the device: GPU cc ≥ 8 / TPU mixed_bfloat16, other GPUs mixed_float16, CPU float32),
    # float32 (also null / off), mixed_float16 or mixed_bfloat16 — see segkit.devices
    mixed_precision: Any = "auto"
    jit_compile: Any = "auto"  # XLA for the train step: auto (JAX; TF on one GPU/TPU), true, false
    # flips, 90° rotations and brightness/contrast of train.augment in the train step on the device (keras.ops)
    # instead of the CPU feed; shift_scale_rotate stays on the CPU
    augment_on_device: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    verbose: int | None = None  # Keras fit verbosity; None: 1 (bars) on a terminal, 2 (a line an epoch) in logs
    ema: float | None = None  # momentum of the weights' exponential moving average (e.g. 0.999); null: off
    swa: dict[str, Any] | None = None  # {last: N} or {best: K} (+ bn_batches: 100); null: off
    # a pseudo-label round added to every fold's training side: `<run>/<round>` (e.g. demo/1) or a round folder
    pseudo: str | None = None
    # train every model (unless its spec says `positive_only: false`) on the images with a non-empty mask only
    positive_only: bool = False
    # learning rate (segkit.schedule): plateau (ReduceLROnPlateau), cosine (down to 1 % at the last planned epoch)
    # or constant; warmup_epochs: linear warm-up from 1 % over that many (possibly fractional) epochs
    lr_schedule: str = "plateau"
    warmup_epochs: float = 0.0
    # a second loss for the last part of training (e.g. lovasz after bce, as TGS top solutions did), from
    # late_loss_from (a share of the epochs); null: train.loss throughout
    late_loss: str | None = None
    late_loss_from: float = 0.6
    val_every: int = 1  # validate every N epochs (and always the last)
    # wall-clock budget for training every fold × model: seconds or "30m" / "1h30m" (segkit.budget); null: off
    time_budget: Any = None

    def check(self) -> None:
        _at_least(self._key("folds"), self.folds, 2)
        self.devices = check_devices_setting(self.devices, self._key("devices"))
        check_precision_setting(self.mixed_precision, self._key("mixed_precision"))  # null stays null (old runs)
        check_jit_setting(self.jit_compile, self._key("jit_compile"))
        if self.pseudo is not None and not self.pseudo.strip():
            raise ConfigError(f"{self._key('pseudo')}: give a round as <run>/<round> (e.g. demo/1) or a round "
                              "folder (runs/demo/pseudo/round_1), or null")
        if self.train_folds is not None:
            _not_empty(self._key("train_folds"), self.train_folds)
            bad = [k for k in self.train_folds if not 0 <= k < self.folds]
            if bad:
                raise ConfigError(f"{self._key('train_folds')}: folds {bad} outside 0..{self.folds - 1} "
                                  f"(train.folds = {self.folds})")
        for name in ("epochs", "batch_size", "workers", "steps_per_epoch"):
            _at_least(self._key(name), getattr(self, name), 1)
        _positive(self._key("learning_rate"), self.learning_rate)
        _not_empty(self._key("loss"), self.loss)
        _at_least(self._key("early_stopping_patience"), self.early_stopping_patience, 0)
        _at_least(self._key("reduce_lr_patience"), self.reduce_lr_patience, 0)
        if not 0 < self.reduce_lr_factor < 1:
            raise ConfigError(f"{self._key('reduce_lr_factor')}: must be in (0, 1) (the factor that multiplies "
                              f"the learning rate on a plateau), got {self.reduce_lr_factor!r}")
        if self.verbose is not None and self.verbose not in (0, 1, 2):
            raise ConfigError(f"{self._key('verbose')}: must be 0, 1 or 2 (as Keras fit), got {self.verbose!r}")
        self._check_averaging()
        self._check_schedule()

    def _check_schedule(self) -> None:
        """lr_schedule one of LR_SCHEDULES; warmup ≥ 0; late_loss_from in (0, 1); val_every ≥ 1;
        time_budget a duration (kept as given, parsed by segkit.durations)."""
        if self.lr_schedule not in LR_SCHEDULES:
            raise unknown_name(self._key("lr_schedule"), "learning-rate schedule", self.lr_schedule, LR_SCHEDULES)
        _at_least(self._key("warmup_epochs"), self.warmup_epochs, 0)
        if self.late_loss is not None:
            _not_empty(self._key("late_loss"), self.late_loss.strip())
            from segkit.losses import parse  # lazy: losses imports keras (only when a late loss is set)

            try:
                parse(self.late_loss)
            except ConfigError as exc:  # its message names train.loss
                raise ConfigError(str(exc).replace("train.loss", self._key("late_loss"), 1)) from None
        if not 0 < self.late_loss_from < 1:
            raise ConfigError(f"{self._key('late_loss_from')}: must be a share of the epochs in (0, 1) (when "
                              f"train.late_loss takes over), got {self.late_loss_from!r}")
        _at_least(self._key("val_every"), self.val_every, 1)
        parse_duration(self.time_budget, self._key("time_budget"))

    def _check_averaging(self) -> None:
        """train.ema in (0, 1); train.swa one of {last: N} / {best: K} (N, K ≥ 1) with optional bn_batches ≥ 0;
        not both."""
        if self.ema is not None and not 0 < self.ema < 1:
            raise ConfigError(f"{self._key('ema')}: must be a momentum in (0, 1) such as 0.999 (the weight of the "
                              f"old average at each step), or null for off; got {self.ema!r}")
        if self.swa is None:
            return
        where = self._key("swa")
        how = [k for k in ("last", "best") if k in self.swa]
        unknown = [k for k in self.swa if k not in ("last", "best", "bn_batches")]
        if unknown:
            hint = did_you_mean(str(unknown[0]), ["last", "best", "bn_batches"], cutoff=0.5,
                                show=lambda close: f"{where}.{close}")
            raise ConfigError(f"{where}.{unknown[0]}: unknown key{hint} (valid: last, best, bn_batches)")
        if len(how) != 1:
            raise ConfigError(f"{where}: give exactly one of {{last: N}} (average the last N epochs) or {{best: K}} "
                              f"(average the K best epochs by the monitor), got {self.swa!r}")
        for key in (*how, "bn_batches"):
            value = self.swa.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key in how else 0):
                low = 1 if key in how else 0
                raise ConfigError(f"{where}.{key}: must be an integer ≥ {low}, got {value!r}")
        if self.ema is not None:
            raise ConfigError(f"{where}: train.ema is set too; average the weights one way (set train.ema=null or "
                              "train.swa=null)")


@dataclass
class PostprocessConfig(_Checked):
    """Binarisation and clean-up of probabilities, tuned per class on out-of-fold predictions."""

    SECTION: ClassVar[str] = "postprocess"

    tune: bool = True
    threshold: float = 0.5  # used when tune is false
    min_area: int = 0
    threshold_grid: list[float] = field(default_factory=lambda: [round(0.05 * i, 2) for i in range(2, 19)])
    min_area_grid: list[int] = field(default_factory=lambda: [0])
    # empty-mask gate: none | topk (mean of the top-k probabilities) | area (pixels above the threshold) |
    # label (classification head) | auto (the best of those available on OOF, none when no gate helps)
    gate: str = "auto"
    gate_topk_grid: list[float] = field(default_factory=lambda: [0.001, 0.005, 0.01, 0.02, 0.05, 0.1])  # k / pixels
    gate_cut_grid: list[float] | None = None  # cuts for topk/label gates; None: between the OOF scores
    triplet: bool = True  # bottom threshold + min area + top threshold that top_k pixels must pass
    top_threshold_grid: list[float] = field(default_factory=lambda: [round(0.05 * i, 2) for i in range(10, 20)])
    top_k: int = 1  # submission pixels that must pass the top threshold
    # keep a step only when its cross-validated gain (tuned on the other folds, scored on the held-out one) is
    # > 0 and > 1 SE; false: keep every step that improves the OOF it is tuned on (overfits; for comparison)
    crossval: bool = True

    def check(self) -> None:
        _probability(self._key("threshold"), self.threshold)
        _at_least(self._key("min_area"), self.min_area, 0)
        _not_empty(self._key("threshold_grid"), self.threshold_grid)
        for i, t in enumerate(self.threshold_grid):
            _probability(self._key(f"threshold_grid.{i}"), t)
        _not_empty(self._key("min_area_grid"), self.min_area_grid)
        for i, a in enumerate(self.min_area_grid):
            _at_least(self._key(f"min_area_grid.{i}"), a, 0)
        gates = ("none", "topk", "area", "label", "auto")
        if self.gate not in gates:
            raise unknown_name(self._key("gate"), "gate", self.gate, gates)
        _not_empty(self._key("gate_topk_grid"), self.gate_topk_grid)
        for i, f in enumerate(self.gate_topk_grid):
            if not 0 < f <= 1:
                raise ConfigError(f"{self._key(f'gate_topk_grid.{i}')}: must be a fraction of the image's pixels "
                                  f"in (0, 1], got {f!r}")
        if self.gate_cut_grid is not None:
            _not_empty(self._key("gate_cut_grid"), self.gate_cut_grid)
            for i, c in enumerate(self.gate_cut_grid):
                _probability(self._key(f"gate_cut_grid.{i}"), c)
        _not_empty(self._key("top_threshold_grid"), self.top_threshold_grid)
        for i, t in enumerate(self.top_threshold_grid):
            _probability(self._key(f"top_threshold_grid.{i}"), t)
        _at_least(self._key("top_k"), self.top_k, 1)


@dataclass
class TilingConfig(_Checked):
    """Tiled inference (`predict.tiling`): windows of `tile` pixels overlapping by `overlap` of a tile, blended
    with a weight falling off toward the window edges ("gaussian") or flat ("uniform"). The tile is checked
    against the models' size step when they are loaded (segkit.tiling.check_tiling)."""

    SECTION: ClassVar[str] = "predict.tiling"

    tile: int = 384
    overlap: float = 0.25
    blend: str = "gaussian"

    def check(self) -> None:
        check_tiling(self.tile, self.overlap, self.blend, where=self.SECTION)


def check_scales(where: str, scales: Any) -> list[float]:
    """The multi-scale TTA factors as floats, each in [0.25, 4] (1.0 = the trained size): the one rule for
    `predict.scales`, `segkit.predict.predict_ensemble` and `sk.Ensemble`; ConfigError naming `where`.i."""
    _not_empty(where, scales)
    out = []
    for i, scale in enumerate(scales):
        try:
            value = math.nan if isinstance(scale, (bool, str)) else float(scale)
        except (TypeError, ValueError):
            value = math.nan
        if not 0.25 <= value <= 4:
            raise ConfigError(f"{where}.{i}: must be a scale factor in [0.25, 4] (1.0 = the trained size), "
                              f"got {scale!r}")
        out.append(value)
    return out


@dataclass
class PredictConfig(_Checked):
    """Test-time augmentation and ensembling."""

    SECTION: ClassVar[str] = "predict"

    tta: list[str] | None = None  # None: the competition's default
    batch_size: int = 8
    models: list[str] | None = None  # model tags to ensemble; None: all trained
    scales: list[float] = field(default_factory=lambda: [1.0])  # multi-scale TTA, e.g. [0.75, 1.0, 1.25]
    weights: dict[str, float] | None = None  # ensemble weight per model tag; None: equal
    tune_weights: bool = False  # choose the weights per model tag on the OOF predictions (`segkit tune`)
    tiling: TilingConfig | None = None  # tiled inference at the images' stored size; None: off

    def check(self) -> None:
        _at_least(self._key("batch_size"), self.batch_size, 1)
        for name in ("tta", "models"):  # None means the default; an empty list would predict nothing
            if getattr(self, name) is not None:
                _not_empty(self._key(name), getattr(self, name))
        check_scales(self._key("scales"), self.scales)
        if self.weights is not None:
            _not_empty(self._key("weights"), self.weights)
            for tag, weight in self.weights.items():
                if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0 \
                        or not math.isfinite(weight):
                    raise ConfigError(f"{self._key(f'weights.{tag}')}: must be a number ≥ 0, got {weight!r}")
            self.weights = {str(t): float(w) for t, w in self.weights.items()}
            if not any(self.weights.values()):
                raise ConfigError(f"{self._key('weights')}: every weight is 0; give one model a weight > 0")
            if self.tune_weights:
                raise ConfigError(f"{self._key('weights')}: set together with predict.tune_weights: true (which "
                                  "chooses them on OOF); drop one of the two")


@dataclass
class PseudoConfig(_Checked):
    """Which test images `segkit pseudo` keeps as pseudo-labels: every pixel (and head label) of every class
    below `low` or above `high`, up to `max_uncertain` of an image's pixels per class in between."""

    SECTION: ClassVar[str] = "pseudo"

    low: float = 0.05
    high: float = 0.95
    max_uncertain: float = 0.0  # fraction of an image's pixels per class allowed in [low, high]
    gate: bool = True  # the run's gate (classifier head, tuned gate) must agree with each mask's emptiness
    round: int | None = None  # the round written; None: 1 + the round the run itself trained on (else 1)

    def check(self) -> None:
        _probability(self._key("low"), self.low)
        _probability(self._key("high"), self.high)
        if not self.low < self.high:
            raise ConfigError(f"{self._key('low')}: must be below pseudo.high ({self.high!r}), got {self.low!r}")
        if not 0 <= self.max_uncertain < 1:
            raise ConfigError(f"{self._key('max_uncertain')}: must be a fraction in [0, 1), got "
                              f"{self.max_uncertain!r}")
        _at_least(self._key("round"), self.round, 1)


@dataclass
class OutputConfig(_Checked):
    """Where runs and submissions go."""

    SECTION: ClassVar[str] = "output"

    runs_dir: str = "runs"
    submissions_dir: str = "submissions"

    def check(self) -> None:
        _not_empty(self._key("runs_dir"), self.runs_dir)
        _not_empty(self._key("submissions_dir"), self.submissions_dir)


@dataclass
class Config(_Checked):
    """A whole run: one competition, one or more model architectures, K folds each."""

    name: str = "run"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    models: list[ModelSpec] = field(default_factory=lambda: [ModelSpec()])  # typed when the config loads
    train: TrainConfig = field(default_factory=TrainConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    kaggle: dict[str, Any] = field(default_factory=dict)  # checked by segkit.kaggle

    def check(self) -> None:
        if not self.name or self.name in (".", "..") or "/" in self.name or "\\" in self.name:
            raise ConfigError(f"name: {self.name!r} cannot name a run folder; use letters, digits, '-' or '_'")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed: must be in 0..2**32-1, got {self.seed}")
        _not_empty("models", self.models)
        check_ensemble_roles(self, range(len(self.models)))

    @property
    def run_dir(self) -> Path:
        return Path(self.output.runs_dir) / self.name

    @property
    def submission_dir(self) -> Path:
        return Path(self.output.submissions_dir) / self.name

    def adapter(self) -> Adapter:
        """The competition's adapter for this config's data (competition, root and options)."""
        return make_adapter(self.data.competition, self.data.root, self.data.options)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (what config.yaml holds); model specs as written."""
        return {f.name: [spec.to_dict() for spec in self.models] if f.name == "models"
                else copy.deepcopy(dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v)
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}


# --- loading -------------------------------------------------------------------------------

def builtin_configs() -> dict[str, Traversable]:
    """The configs shipped inside the segkit package, by name (file name without .yaml)."""
    folder = resources.files("segkit") / BUILTIN_CONFIGS
    if not folder.is_dir():
        return {}
    entries = sorted((e for e in folder.iterdir() if e.name.endswith(".yaml")), key=lambda e: e.name)
    return {e.name[: -len(".yaml")]: e for e in entries}


def resolve_config_path(path_or_name: str | Path) -> Path | Traversable:
    """A config file: an existing path, or a bare name (`demo`, `cloud38.yaml`) of a built-in config."""
    p = Path(path_or_name)
    if p.is_file():
        return p
    builtin = builtin_configs()
    if len(p.parts) == 1:  # a bare name, never a path that happens to end like a built-in one
        found = builtin.get(p.name[: -len(".yaml")] if p.name.endswith(".yaml") else p.name)
        if found is not None:
            return found
    raise ConfigError(f"{path_or_name}: config file not found; give a YAML file or a built-in config name "
                      f"({', '.join(builtin) or 'none installed'})")


def load_config(path_or_name: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config (file or built-in name, with optional `base:` inheritance), apply `key.sub=value`
    overrides, validate types and ranges."""
    raw: dict[str, Any] = _load_yaml_tree(resolve_config_path(path_or_name)) if path_or_name else {}
    for item in overrides:
        apply_override(raw, item)
    return from_dict(Config, raw, "")


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Validate a plain dict (e.g. a saved resolved config) into a Config."""
    return from_dict(Config, raw, "")


def read_yaml(source: Path | Traversable) -> Any:
    """Parse a YAML file; ConfigError naming the file for an unreadable, binary or malformed one."""
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the config file ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not a UTF-8 YAML file (byte {exc.start} is not text); "
                          "give a YAML config") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = exc.problem or exc.context or "syntax error"
        raise ConfigError(f"{source}: not valid YAML{where}: {what}") from None
    except yaml.YAMLError as exc:  # e.g. control characters: not a text file
        raise ConfigError(f"{source}: not a UTF-8 YAML file ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML (nested too deeply)") from None


def _load_yaml_tree(source: Path | Traversable, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    if str(source) in seen:
        raise ConfigError(f"{source}: 'base' inheritance loops back to itself")
    raw = read_yaml(source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping (key: value lines) at the top level, "
                          f"got a {type(raw).__name__}")
    base = raw.pop("base", None)
    if base:
        if not isinstance(base, str):
            raise ConfigError(f"{source}: 'base' must be a config file or built-in name, got {base!r}")
        parent = getattr(source, "parent", None)  # a sibling file first, then a path or a built-in name
        sibling = parent / base if parent is not None else None
        target = sibling if sibling is not None and sibling.is_file() else resolve_config_path(base)
        raw = deep_merge(_load_yaml_tree(target, seen + (str(source),)), raw)
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
    set_key(raw, key, value)


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted `key` (`train.epochs`, `models.0.depth`) of a raw config mapping to a Python value in place,
    creating sections on the way (as an override does; the value is checked when the config is built)."""
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, parts[: i + 1])
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override '{key}': '{'.'.join(parts[:i])}' is a value, not a section")
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
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override '{key}': '{'.'.join(parts[:-1])}' is a value, not a section")


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
    hints = _type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            hint = did_you_mean(key, names, cutoff=0.5, show=lambda close: _where(path, close))
            raise ConfigError(f"{_where(path, str(key))}: unknown config key{hint}")
        kwargs[key] = _coerce(hints[key], value, _where(path, key))
    return cls(**kwargs)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is ModelSpec:
        return ModelSpec.of(value, where)
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else from_dict(tp, value, where)
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


def check_ensemble_roles(cfg: "Config", indices: Any, what: str = "") -> None:
    """ConfigError when every model among `cfg.models[indices]` is positive-only and none has a classification
    head: nothing would then tell an empty image from a non-empty one (the positive-only models never saw one)."""
    specs = [cfg.models[i] for i in indices]
    po = [s.trains_positive_only(cfg.train.positive_only) for s in specs]
    heads = [s.classifier for s in specs]
    if specs and all(po) and not any(heads):
        key = "train.positive_only" if cfg.train.positive_only else "models.0.positive_only"
        raise ConfigError(f"{key}: every {what}model trains on non-empty masks only and none has a classification "
                          "head, so nothing can gate empty images; keep one model normal (models.<i>.positive_only: "
                          "false) or give one classifier: true")


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    with atomic_write(path) as fh:
        yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False)
