"""Where a model's `preset:` lives, for every place that must find it offline.

A preset is a KerasHub preset name (`resnet_50_imagenet`), a Kaggle model handle as KerasHub writes them
(`kaggle://owner/model/framework/variation/version`), a folder under the Kaggle input (`/kaggle/input/...`) or a
local preset folder. A Kaggle kernel (or notebook) sees a Kaggle model attached as a model source, mounted
read-only under its input folder, at `<input>/models/<owner>/<model>/<framework>/<variation>/<version>` (Kaggle's
current layout) or `<input>/<model>/<framework>/<variation>/<version>` (the older one). A preset found there is
loaded from there, so nothing is downloaded. The input folder is SEGKIT_KAGGLE_INPUT when set (a kernel run off
Kaggle, and the tests), else /kaggle/input; off Kaggle it does not exist and KerasHub loads the preset as usual.

Nothing here imports Keras; only a preset *name* needs KerasHub, to read its Kaggle handle."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from segkit.errors import ConfigError, DataError, did_you_mean

KAGGLE_SCHEME = "kaggle://"
KAGGLE_INPUT = "/kaggle/input"
HANDLE_SHAPE = "kaggle://owner/model/framework/variation/version"


@dataclass(frozen=True)
class KaggleHandle:
    """A Kaggle model variation, at one version (None: the newest, which only KerasHub's download can pick)."""

    owner: str
    model: str
    framework: str
    variation: str
    version: str | None = None

    def __str__(self) -> str:
        tail = f"/{self.version}" if self.version else ""
        return f"{KAGGLE_SCHEME}{self.owner}/{self.model}/{self.framework}/{self.variation}{tail}"

    @property
    def source(self) -> str:
        """The kernel-metadata `model_sources` entry: owner/model/framework/variation/version."""
        return f"{self.owner}/{self.model}/{self.framework}/{self.variation}/{self.version}"

    def variation_dirs(self, input_root: Path) -> list[Path]:
        """The folders the variation is mounted in, by Kaggle's current layout, then the older one."""
        return [input_root / "models" / self.owner / self.model / self.framework / self.variation,
                input_root / self.model / self.framework / self.variation]

    def mounts(self, input_root: Path, any_version: bool = False) -> list[Path]:
        """Where an attached copy may sit: the version folder in each layout, or (no version, or `any_version`)
        every numbered version folder found there, newest first."""
        out: list[Path] = []
        for folder in self.variation_dirs(input_root):
            if self.version:
                out.append(folder / self.version)
            if (any_version or not self.version) and folder.is_dir():
                found = [p for p in folder.iterdir() if p.name.isdigit() and p.name != self.version]
                out += sorted(found, key=lambda p: -int(p.name))
        return out


def parse_handle(preset: str, where: str = "preset") -> KaggleHandle | None:
    """The handle of a `kaggle://` preset (None for anything else); ConfigError naming `where` when it does not
    look like kaggle://owner/model/framework/variation[/version]."""
    text = str(preset)
    if not text.startswith(KAGGLE_SCHEME):
        return None
    parts = text[len(KAGGLE_SCHEME):].strip("/").split("/")
    if len(parts) not in (4, 5) or not all(parts) or (len(parts) == 5 and not parts[4].isdigit()):
        raise ConfigError(f"{where}: '{text}' must look like {HANDLE_SHAPE} (the version a number)")
    return KaggleHandle(*parts)


def input_dir(environ: dict | None = None) -> Path:
    """The Kaggle input folder: SEGKIT_KAGGLE_INPUT, else /kaggle/input."""
    env = os.environ if environ is None else environ
    return Path(env.get("SEGKIT_KAGGLE_INPUT") or KAGGLE_INPUT)


def preset_kind(preset: str) -> str:
    """"kaggle" (a kaggle:// handle), "url" (another scheme: hf://, gs://, ...), "input" (a path under
    /kaggle/input), "local" (any other path) or "name" (a KerasHub preset name)."""
    text = str(preset)
    if text.startswith(KAGGLE_SCHEME):
        return "kaggle"
    if "://" in text:
        return "url"
    if text == KAGGLE_INPUT or text.startswith(KAGGLE_INPUT + "/"):
        return "input"
    if "/" in text or os.sep in text or text.startswith(("~", ".")) or os.path.isdir(os.path.expanduser(text)):
        return "local"
    return "name"


def hub_handle(name: str, where: str = "preset") -> KaggleHandle:
    """The Kaggle handle KerasHub downloads preset `name` from; ConfigError (with the closest name) when KerasHub
    has no such preset."""
    import keras_hub

    known = keras_hub.models.Backbone.presets
    if name not in known:
        raise ConfigError(f"{where}: '{name}' is neither a local preset directory nor a KerasHub preset"
                          f"{did_you_mean(name, sorted(known))}")
    handle = parse_handle(str(known[name].get("kaggle_handle") or ""), where)
    if handle is None:
        raise ConfigError(f"{where}: KerasHub {keras_hub.__version__} gives preset '{name}' no Kaggle handle; "
                          f"write the handle yourself ({HANDLE_SHAPE})")
    return handle


def candidates(preset: str, input_root: Path | None = None, where: str = "preset") -> list[Path]:
    """Every folder an attached copy of `preset` may sit in (empty for a local path or another scheme). A preset
    name looks for its KerasHub handle at any version: the kernel's KerasHub may pin another one."""
    root = input_dir() if input_root is None else Path(input_root)
    kind = preset_kind(preset)
    if kind == "kaggle":
        return parse_handle(preset, where).mounts(root)
    if kind == "name":
        return hub_handle(str(preset), where).mounts(root, any_version=True)
    if kind == "input":
        return [root.joinpath(*PurePosixPath(str(preset)).relative_to(KAGGLE_INPUT).parts)]
    return []


def attached(preset: str, input_root: Path | None = None, where: str = "preset") -> Path | None:
    """The attached copy of `preset` in the Kaggle input folder (the first candidate that is a folder), or None
    (off Kaggle: no input folder)."""
    root = input_dir() if input_root is None else Path(input_root)
    if not root.is_dir() or preset_kind(preset) in ("local", "url"):
        return None
    return next((p for p in candidates(preset, root, where) if p.is_dir()), None)


def missing(preset: str, input_root: Path, where: str = "preset") -> DataError:
    """The error for a preset not attached: the handle, the folders looked in and what the input holds."""
    looked = candidates(preset, input_root, where)
    held = sorted(p.name for p in input_root.iterdir()) if input_root.is_dir() else []
    what = f"'{preset}'" if preset_kind(preset) != "name" else f"'{preset}' ({hub_handle(preset, where)})"
    return DataError(
        f"{where}: {what} is not attached to this kernel: looked in {', '.join(map(str, looked)) or 'nothing'} "
        f"(input folder {input_root} holds: {', '.join(held) or 'nothing'}); add it to kaggle.model_sources "
        f"(segkit kernel build adds a kaggle:// preset itself) and check the version and that your account can "
        "see the model")


def model_source(preset: str, internet: bool = False, where: str = "preset") -> str | None:
    """The `model_sources` entry a kernel needs for `preset` (its handle's, or a /kaggle/input/models/... path's),
    None when the kernel needs none (another /kaggle/input path: its source is the user's to list; another scheme
    with internet on). ConfigError for what a kernel cannot load: a local folder, an unversioned handle, another
    scheme without internet."""
    kind = preset_kind(preset)
    if kind == "local":
        raise ConfigError(
            f"{where}: '{preset}' is a folder on this machine, which a Kaggle kernel cannot see; upload it as a "
            f"Kaggle model (kaggle models instances create -p FOLDER) and write preset: {HANDLE_SHAPE} (segkit "
            "attaches it), or upload it as a dataset, list it in kaggle.dataset_sources and write preset: "
            "/kaggle/input/datasets/<owner>/<dataset>/<folder>")
    if kind == "url":
        if internet:
            return None
        raise ConfigError(f"{where}: '{preset}' downloads at run time, and the kernel has no internet "
                          f"(kaggle.enable_internet: false); upload it as a Kaggle model and write preset: "
                          f"{HANDLE_SHAPE}")
    if kind == "input":
        parts = PurePosixPath(str(preset)).relative_to(KAGGLE_INPUT).parts
        if len(parts) >= 6 and parts[0] == "models" and parts[5].isdigit():
            return "/".join(parts[1:6])
        return None
    handle = parse_handle(preset, where) if kind == "kaggle" else hub_handle(str(preset), where)
    if not handle.version:
        raise ConfigError(f"{where}: '{preset}' names no version, and a kernel's model source needs one: write "
                          f"{handle}/<version> (the version number on the model's Kaggle page)")
    return handle.source
