"""`segkit kernel build`: one self-contained kernel script (the segkit package zipped and base64-embedded, plus
the resolved config) and its kernel-metadata.json, because a kernel push uploads only the code file."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import segkit
from segkit.config import Config
from segkit.presets import model_source
from segkit.storage import atomic_write
from segkit.errors import ConfigError, KaggleError
from segkit.kaggle.config import KaggleConfig, kaggle_config
from segkit.kaggle.credentials import find_credentials, secret_values
from segkit.kaggle.metadata import (METADATA_FILE, kernel_metadata, load_json, stem_slug, title_for, title_warning,
                                    validate_metadata)

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # only for annotations (3.11+)

# The one kernel template (the kind is a parameter) and the fixed part of its metadata, shipped in the package.
SCRIPT_TEMPLATE = "kernel.py"
METADATA_TEMPLATE = "kernel-metadata.json"
BUILD_DIR = Path("build") / "kernels"
KINDS = ("train", "infer")
# Never shipped inside a bundle, whatever sits in the package folder.
EXCLUDED_NAMES = {"kaggle.json", "access_token", "access_token.txt", "credentials.json"}
ZIP_TIME = (2020, 1, 1, 0, 0, 0)  # fixed, so the same sources give the same bundle


@dataclass
class BuiltKernel:
    """A built kernel folder."""

    folder: Path
    code_file: Path
    metadata: dict
    warnings: list[str]


def package_zip(package_dir: Path | None = None) -> bytes:
    """The segkit package source (every file but caches) as deterministic, deflate-compressed zip bytes."""
    package_dir = Path(package_dir or Path(segkit.__file__).parent)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path in sorted(package_dir.rglob("*")):
            rel = path.relative_to(package_dir.parent)
            if (not path.is_file() or "__pycache__" in rel.parts or path.suffix in (".pyc", ".pyo")
                    or path.name in EXCLUDED_NAMES or path.name.startswith(".")):
                continue
            info = zipfile.ZipInfo(rel.as_posix(), ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes())
    return buf.getvalue()


def embedded_literal(data: bytes, width: int = 100) -> str:
    """base64 of data as adjacent string literals, one per line (a valid Python expression)."""
    text = base64.b64encode(data).decode("ascii")
    return "\n".join(f'    "{text[i:i + width]}"' for i in range(0, len(text), width)) or '    ""'


# What each kind of kernel does, for the docstring and the FOLD comment of the built script.
ROLES = {
    "train": ("Checkpoints, history and out-of-fold predictions go to <working>/runs/<run>/.",
              "None trains every fold"),
    "infer": ("Fold checkpoints are found in the attached kernel / dataset / model sources (as "
              "<source>/runs/<run>/<model>/fold_<k>/best.keras); the fold x model x TTA ensemble writes "
              "<working>/submission.csv and validates it.", "inference uses every fold found in the inputs"),
}


def templates_dir() -> Traversable:
    """The folder of kernel templates inside the installed package (a wheel, a checkout or an unpacked bundle)."""
    return resources.files("segkit") / "kernels"


def render_script(template: str, kind: str, cfg: Config, fold: int | None, bundle: bytes) -> str:
    """Fill the kernel template for `kind`: the bundle, the resolved config (JSON) and the fold."""
    digest = hashlib.sha256(bundle).hexdigest()[:16]
    what = f"fold {fold} of run '{cfg.name}'" if fold is not None else f"every fold of run '{cfg.name}'"
    if kind == "infer":
        what = f"fold x model x TTA ensemble of run '{cfg.name}'"
        fold = None
    role, fold_note = ROLES[kind]
    values = {
        "@@KIND_LITERAL@@": repr(kind),
        "@@KIND@@": {"train": "training", "infer": "inference"}[kind],
        "@@DESCRIPTION@@": what,
        "@@ROLE@@": role,
        "@@VERSION@@": segkit.__version__,
        "@@DIGEST@@": digest,
        "@@FOLD@@": repr(fold),
        "@@FOLD_NOTE@@": fold_note,
        "@@CONFIG@@": repr(json.dumps(cfg.to_dict(), sort_keys=True)),
        "@@BUNDLE@@": embedded_literal(bundle),
    }
    missing = [key for key in values if key not in template]
    if missing:
        raise KaggleError(f"kernel template lacks the placeholder(s) {', '.join(missing)}")
    # one pass, so a value that happens to contain a placeholder (a run name, say) is never filled again
    return re.sub(r"@@[A-Z_]+@@", lambda m: values.get(m.group(), m.group()), template)


def resolve_owner(kc: KaggleConfig, owner: str | None = None) -> str:
    """The kernel owner: the argument, kaggle.owner, or the user name of the local credentials."""
    if owner or kc.owner:
        return owner or kc.owner

    try:
        creds = find_credentials()
    except KaggleError:
        creds = None
    if creds is None or not creds.username:
        raise ConfigError("kaggle.owner: not set, and no Kaggle user name is known from KAGGLE_USERNAME or "
                          "kaggle.json; set kaggle.owner (or pass --owner) to your Kaggle user name")
    return creds.username


def build_kernel(
    cfg: Config,
    name: str,
    kind: str = "train",
    fold: int | None = None,
    out_dir: str | Path = BUILD_DIR,
    owner: str | None = None,
    extra_kernel_sources: list[str] = (),
    templates: str | Path | Traversable | None = None,
) -> BuiltKernel:
    """Write <out_dir>/<name>/ with the kernel script and its validated metadata; `name` is the kernel slug.
    `templates` is a folder holding kernel.py and kernel-metadata.json (default: the package's own)."""
    if kind not in KINDS:
        raise ConfigError(f"--kind: '{kind}' is not one of {', '.join(KINDS)}")
    kc = kaggle_config(cfg)
    if fold is not None and not 0 <= fold < cfg.train.folds:
        raise ConfigError(f"--fold: {fold} is outside 0..{cfg.train.folds - 1} (train.folds = {cfg.train.folds})")
    if kind == "infer" and fold is not None:
        raise ConfigError("--fold: an inference kernel ensembles every fold; --fold is for training kernels")
    folder_tpl = templates_dir() if templates is None else templates
    if isinstance(folder_tpl, str):
        folder_tpl = Path(folder_tpl)
    script_tpl = folder_tpl / SCRIPT_TEMPLATE
    meta_tpl = folder_tpl / METADATA_TEMPLATE
    for p in (script_tpl, meta_tpl):
        if not p.is_file():
            raise KaggleError(f"{p}: kernel template not found; reinstall segkit")
    template_meta = load_json(meta_tpl)

    bundle = package_zip()
    script = render_script(script_tpl.read_text(encoding="utf-8"), kind, cfg, fold, bundle)
    check_no_secrets(script, name)
    owner = resolve_owner(kc, owner)
    code_name = str(template_meta.get("code_file") or f"{kind}.py")
    models = preset_sources(cfg, kc) if kind == "train" else []  # inference reads self-describing checkpoints
    meta = kernel_metadata(template_meta, kc, owner, name, title_for(name, kc, cfg.name), code_name,
                           list(extra_kernel_sources), models)
    folder = Path(out_dir) / name
    validate_metadata(meta)  # before writing anything
    with atomic_write(folder / code_name) as fh:
        fh.write(script)
    with atomic_write(folder / METADATA_FILE) as fh:
        json.dump(meta, fh, indent=2)
        fh.write("\n")
    warnings = validate_metadata(meta, folder)
    note = title_warning(kc, cfg.name)
    if note:
        warnings.append(note)
    if kind == "infer" and not meta["kernel_sources"] and not meta["model_sources"]:
        warnings.append("the inference kernel has no kernel or model sources: its fold checkpoints must come "
                        "from a dataset source (or add --kernel-source OWNER/SLUG of the training kernels)")
    return BuiltKernel(folder, folder / code_name, meta, warnings)


def preset_sources(cfg: Config, kc: KaggleConfig) -> list[str]:
    """The model sources a training kernel needs for its models' presets (a kaggle:// handle, a KerasHub preset
    name, a /kaggle/input/models/... path), so they are mounted and nothing downloads; ConfigError naming the
    model for a preset the kernel could not load (a folder on this machine, a download without internet)."""
    out = []
    for i, spec in enumerate(cfg.models):
        preset = spec.params.get("preset")
        if preset:
            source = model_source(str(preset), kc.enable_internet, where=f"models.{i}.preset")
            out += [source] if source else []
    return list(dict.fromkeys(out))


def check_no_secrets(text: str, name: str) -> None:
    """Refuse a kernel that would carry any Kaggle secret found in this environment."""
    for source, value in secret_values():
        if value in text or base64.b64encode(value.encode()).decode() in text:
            raise KaggleError(f"kernel {name}: refusing to build, the script would contain the secret from {source}")


def fold_names(kc: KaggleConfig, run_name: str, folds: list[int]) -> tuple[list[str], str]:
    """Slugs of the per-fold training kernels and of the inference kernel."""
    stem = stem_slug(kc, run_name)
    return [f"{stem}-fold{k}" for k in folds], f"{stem}-infer"


def parse_folds(text: str, n_folds: int) -> list[int]:
    """'0-4', '0,2,3' or '1' -> fold list, each checked against train.folds."""
    out: list[int] = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                out += list(range(lo, hi + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise ConfigError(f"--folds: '{text}' is not like 0-4 or 0,2,3") from None
    bad = [k for k in out if not 0 <= k < n_folds]
    if bad or not out:
        raise ConfigError(f"--folds: {bad or text} outside 0..{n_folds - 1} (train.folds = {n_folds})")
    return list(dict.fromkeys(out))
