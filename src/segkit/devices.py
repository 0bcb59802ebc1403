"""Which devices a run trains on, in which precision, compiled or not: the one module that knows devices.

    plan = plan_devices(cfg.train)        # lists the backend's devices, resolves the three settings
    print(plan.describe(cfg.train.batch_size))
    with plan.scope():                    # JAX keras.distribution.DataParallel / TF MirroredStrategy / nothing
        model = build_or_load(); model.compile(..., jit_compile=plan.jit_compile)
    model.fit(feed with batches of plan.global_batch(cfg.train.batch_size))

- `train.devices: auto | N` (auto: every visible accelerator, else every CPU device the backend lists). Data
  parallel: JAX through `keras.distribution.DataParallel` (also the TPU path), TensorFlow through
  `tf.distribute.MirroredStrategy`; PyTorch has no multi-device path in Keras and uses one device (said once).
  `train.batch_size` is per device: the global batch is N × batch_size. BatchNorm statistics are per device on
  TensorFlow, over the global batch on JAX. Keras before 3.8 sums the replicas' gradients under
  MirroredStrategy and reports one replica's metrics (keras#19891, fixed by keras#20609), so there TensorFlow
  trains on one device (auto says so; an explicit count above 1 is refused).
- `train.mixed_precision: auto` picks from the device (`choose_precision`, a pure function of the device kind,
  name and compute capability): CPU float32; GPU of compute capability ≥ 8 (A100, L4, H100) and TPU
  mixed_bfloat16; other tensor-core or fp16-fast GPUs (T4, V100, P100) mixed_float16.
- `train.jit_compile: auto` (`choose_jit`) is Keras's own auto, resolved here so it can be said: on for JAX and
  for TensorFlow on one GPU; off for TensorFlow on CPU and under MirroredStrategy (Keras turns XLA off with
  tf.distribute), and for PyTorch.

Nothing here imports a backend at module level, so `segkit.config` can check settings with it cheaply.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from segkit.errors import ConfigError, unknown_name

KINDS = ("cpu", "gpu", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
PRECISION_SETTINGS = ("auto", *PRECISIONS)  # plus null / false / "off", read as float32

# Compute capability by GPU model name, for when the backend does not report it.
_KNOWN_CC = {"K80": (3, 7), "P4": (6, 1), "P40": (6, 1), "P100": (6, 0), "V100": (7, 0), "T4": (7, 5),
             "A10": (8, 6), "A10G": (8, 6), "A30": (8, 0), "A40": (8, 6), "A100": (8, 0), "L4": (8, 9),
             "L40": (8, 9), "L40S": (8, 9), "H100": (9, 0), "H200": (9, 0), "B200": (10, 0)}


@dataclass(frozen=True)
class Device:
    """One device as segkit sees it: kind ("cpu", "gpu", "tpu"), the backend's name for it (e.g. "Tesla T4",
    "TPU v5 lite") and, for NVIDIA GPUs, the compute capability (major, minor) when known."""

    kind: str
    name: str = ""
    compute_capability: tuple[int, int] | None = None
    handle: str = field(default="", compare=False)  # the backend's device string ("/device:GPU:0", "gpu:0")


# --- settings (checked by segkit.config) ----------------------------------------------------------

def check_devices_setting(value: Any, where: str = "train.devices") -> int | str:
    """`train.devices` as "auto" or a device count ≥ 1; ConfigError naming the key otherwise."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ConfigError(f"{where}: expected auto (every visible device) or a device count ≥ 1, got {value!r}")


def check_precision_setting(value: Any, where: str = "train.mixed_precision") -> str:
    """`train.mixed_precision` as one of auto, float32, mixed_float16, mixed_bfloat16 (null, false and "off"
    mean float32); ConfigError naming the key (and the closest valid spelling) otherwise."""
    if value is None or value is False or value == "off":
        return "float32"
    if isinstance(value, str) and value in PRECISION_SETTINGS:
        return value
    raise unknown_name(where, "precision", value, [*PRECISION_SETTINGS, "off"])


def check_jit_setting(value: Any, where: str = "train.jit_compile") -> bool | str:
    """`train.jit_compile` as auto, true or false; ConfigError naming the key otherwise."""
    if value == "auto" or isinstance(value, bool):
        return value
    raise ConfigError(f"{where}: expected auto, true or false (XLA compilation of the train step), got {value!r}")


# --- choices (pure functions of an injectable device description) ---------------------------------

def compute_capability_of(name: str) -> tuple[int, int] | None:
    """The compute capability of an NVIDIA GPU from its model name ("Tesla T4", "NVIDIA A100-SXM4-40GB"), or
    None when the name is not one segkit knows."""
    tokens = re.split(r"[^A-Za-z0-9]+", name.upper())
    for token in tokens:
        if token in _KNOWN_CC:
            return _KNOWN_CC[token]
    return None


def choose_precision(kind: str, name: str = "", compute_capability: Sequence[int] | None = None,
                     setting: Any = "auto") -> str:
    """The Keras dtype policy for training on one device kind. An explicit `setting` wins (null/false/"off":
    float32); `auto`: CPU float32; TPU mixed_bfloat16; GPU with compute capability ≥ 8.0 (A100, L4, H100)
    mixed_bfloat16 (fp16 range problems gone, same speed), 7.x (V100, T4) and 6.0 (P100, fast fp16)
    mixed_float16, older or consumer Pascal (6.1, slow fp16) float32. An unknown capability is looked up from
    the name, else mixed_float16 (what every current NVIDIA GPU runs)."""
    setting = check_precision_setting(setting)
    if setting != "auto":
        return setting
    if kind not in KINDS:
        raise ValueError(f"choose_precision: unknown device kind {kind!r} (known: {', '.join(KINDS)})")
    if kind == "cpu":
        return "float32"
    if kind == "tpu":
        return "mixed_bfloat16"
    cc = tuple(compute_capability) if compute_capability else compute_capability_of(name)
    if cc is None:
        return "mixed_float16"
    if cc >= (8, 0):
        return "mixed_bfloat16"
    if cc >= (7, 0) or cc == (6, 0):
        return "mixed_float16"
    return "float32"


def choose_jit(kind: str, backend: str, n_devices: int = 1, setting: Any = "auto") -> bool:
    """Whether the train step is XLA-compiled. An explicit true/false wins; `auto` resolves as Keras's own auto
    (so it can be reported): JAX always; TensorFlow on one GPU/TPU, not on CPU (measured slower there) nor under
    MirroredStrategy (Keras disables XLA with tf.distribute); PyTorch never (eager)."""
    setting = check_jit_setting(setting)
    if setting != "auto":
        return setting
    if backend == "jax":
        return True
    if backend == "tensorflow":
        return kind != "cpu" and n_devices == 1
    return False


MIRRORED_KERAS = (3, 8)  # the first Keras whose MirroredStrategy fit averages gradients and metrics rightly


def resolve_device_count(setting: Any, available: int, backend: str,
                         keras_version: Sequence[int] | None = None, cap: bool = False) -> tuple[int, str | None]:
    """(devices to use, a note to print or None) for `train.devices` given how many devices the backend sees.
    PyTorch always uses one (Keras has no multi-device fit for it), so does TensorFlow with a Keras older than
    3.8 (`keras_version`, default the installed one); a count above what is visible, or an explicit count
    above 1 on such a Keras, is a ConfigError naming the key — unless `cap` (inference: a run trained on more
    devices than this machine has predicts on those it has)."""
    setting = check_devices_setting(setting)
    want = available if setting == "auto" else int(setting)
    if cap:
        want = min(want, available)
    if backend == "torch" and want > 1:
        return 1, (f"train.devices: the PyTorch backend has no multi-device training in Keras (not supported); "
                   f"training uses one of the {available} devices (use KERAS_BACKEND=jax or tensorflow for all)")
    if want > available:
        raise ConfigError(f"train.devices: {want} devices asked but the {backend} backend sees {available}; "
                          f"set train.devices=auto (all) or at most {available}")
    version = tuple(keras_version) if keras_version is not None else _keras_version()
    if backend == "tensorflow" and want > 1 and version[:2] < MIRRORED_KERAS:
        why = (f"Keras {'.'.join(map(str, version))} sums the devices' gradients and reports one device's metrics "
               f"under MirroredStrategy (keras#19891, fixed in {MIRRORED_KERAS[0]}.{MIRRORED_KERAS[1]})")
        if setting != "auto" and not cap:
            raise ConfigError(f"train.devices: {want} TensorFlow devices need Keras ≥ 3.8: {why}; upgrade keras or "
                              "set train.devices=1")
        return 1, f"train.devices: training on one of the {want} devices: {why}; upgrade keras to use all"
    return want, None


# --- what the backend sees --------------------------------------------------------------------------

def list_devices(backend: str | None = None) -> list[Device]:
    """The devices a run can train on with the current Keras backend: every GPU or TPU it sees, else its CPU
    devices (one, unless several are simulated: XLA_FLAGS=--xla_force_host_platform_device_count=N for JAX,
    logical CPU devices for TensorFlow). Initialises the backend's runtime."""
    import keras

    backend = backend or keras.backend.backend()
    if backend == "jax":
        return _jax_devices()
    if backend == "tensorflow":
        return _tf_devices()
    if backend == "torch":
        return _torch_devices()
    return [Device("cpu", "cpu", handle="cpu")]


def _jax_devices() -> list[Device]:
    import jax

    out = []
    for d in jax.devices():
        kind = {"cuda": "gpu", "rocm": "gpu"}.get(d.platform, d.platform)
        cc = getattr(d, "compute_capability", None)
        out.append(Device(kind if kind in KINDS else "cpu", str(getattr(d, "device_kind", d.platform)),
                          _parse_cc(cc), handle=f"{d.platform}:{d.id}"))
    return out


def _tf_devices() -> list[Device]:
    import tensorflow as tf

    for kind in ("TPU", "GPU"):
        logical = tf.config.list_logical_devices(kind)
        if logical:
            physical = tf.config.list_physical_devices(kind)
            out = []
            for i, dev in enumerate(logical):
                details = {}
                if kind == "GPU" and physical:
                    with contextlib.suppress(Exception):
                        details = tf.config.experimental.get_device_details(physical[min(i, len(physical) - 1)])
                out.append(Device(kind.lower(), str(details.get("device_name", dev.name)),
                                  _parse_cc(details.get("compute_capability")), handle=dev.name))
            return out
    return [Device("cpu", "cpu", handle=d.name) for d in tf.config.list_logical_devices("CPU")]


def _torch_devices() -> list[Device]:
    import torch

    if torch.cuda.is_available():
        return [Device("gpu", torch.cuda.get_device_name(i), tuple(torch.cuda.get_device_capability(i)),
                       handle=f"cuda:{i}") for i in range(torch.cuda.device_count())]
    return [Device("cpu", "cpu", handle="cpu")]


def _keras_version() -> tuple[int, ...]:
    import keras

    return tuple(int(p) for p in re.findall(r"\d+", keras.version())[:3])


def _parse_cc(cc: Any) -> tuple[int, int] | None:
    if cc is None or cc == "":
        return None
    if isinstance(cc, str):
        parts = cc.split(".")
        return (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0) if parts[0].isdigit() else None
    return (int(cc[0]), int(cc[1]))


# --- the plan -----------------------------------------------------------------------------------------

@dataclass
class DevicePlan:
    """The resolved device settings of a training run: which devices, the dtype policy, XLA on or off."""

    backend: str
    devices: list[Device]  # the devices used (the first len(devices) the backend lists)
    precision: str
    jit_compile: bool
    available: int = 1
    note: str | None = None  # said once with the plan (e.g. PyTorch's single device)
    _strategy: Any = field(default=None, repr=False)

    @property
    def n(self) -> int:
        """How many devices the batch is split across."""
        return len(self.devices)

    @property
    def kind(self) -> str:
        return self.devices[0].kind

    def global_batch(self, per_device: int) -> int:
        """The batch a step consumes: `train.batch_size` per device times the device count."""
        return int(per_device) * self.n

    def batch_multiple(self, training: bool) -> int:
        """What every batch's size must be a multiple of (the feed pads the last batch up to it): the device
        count for training (an empty replica would feed BatchNorm an empty batch) and, on JAX, for validation
        too (a sharded batch must divide); 1 on one device and for TensorFlow's validation (MirroredStrategy
        splits an uneven batch itself)."""
        if self.n == 1 or (not training and self.backend == "tensorflow"):
            return 1
        return self.n

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Build, load and compile models inside this block so their variables live on every device (TF
        MirroredStrategy, JAX DataParallel); `fit` inside it splits each batch. Nothing on one device."""
        if self.n == 1 or self.backend not in ("tensorflow", "jax"):  # torch: never more than one device
            yield
            return
        if self._strategy is None:
            handles = [d.handle for d in self.devices]
            if self.backend == "tensorflow":
                import tensorflow as tf

                self._strategy = tf.distribute.MirroredStrategy(devices=handles)
            else:
                import keras

                self._strategy = keras.distribution.DataParallel(devices=handles)
        with self._strategy.scope():
            yield

    def describe(self, per_device_batch: int) -> str:
        """The one line a run prints at its start: devices and how the batch is split, precision, XLA."""
        names = sorted({d.name or d.kind for d in self.devices})
        how = {"tensorflow": "MirroredStrategy", "jax": "DataParallel"}.get(self.backend, "") if self.n > 1 else ""
        return (f"{self.n} × {self.kind} ({', '.join(names)}; {self.backend}{' ' + how if how else ''}), "
                f"{self.n} device{'s' if self.n > 1 else ''} × {per_device_batch} = global batch "
                f"{self.global_batch(per_device_batch)}, precision {self.precision}, "
                f"XLA {'on' if self.jit_compile else 'off'}")

    def record(self, per_device_batch: int) -> dict[str, Any]:
        """What a fold writes down about how it was trained (done.json)."""
        return {"backend": self.backend, "kind": self.kind, "n": self.n, "name": self.devices[0].name,
                "batch_per_device": int(per_device_batch), "global_batch": self.global_batch(per_device_batch),
                "precision": self.precision, "jit_compile": self.jit_compile}


def plan_devices(tc: Any, backend: str | None = None, devices: Sequence[Device] | None = None,
                 keras_version: Sequence[int] | None = None, cap: bool = False) -> DevicePlan:
    """The DevicePlan for a TrainConfig (its `devices`, `mixed_precision`, `jit_compile`), on the current Keras
    backend's devices unless `devices` are given (tests, or a caller that listed them already); `keras_version`
    defaults to the installed one; `cap` uses at most the visible devices instead of refusing more (predict)."""
    import keras

    backend = backend or keras.backend.backend()
    seen = list(devices) if devices is not None else list_devices(backend)
    n, note = resolve_device_count(getattr(tc, "devices", "auto"), len(seen), backend, keras_version, cap)
    used = seen[:n]
    first = used[0]
    precision = choose_precision(first.kind, first.name, first.compute_capability,
                                 getattr(tc, "mixed_precision", "auto"))
    jit = choose_jit(first.kind, backend, n, getattr(tc, "jit_compile", "auto"))
    return DevicePlan(backend, used, precision, jit, available=len(seen), note=note)
