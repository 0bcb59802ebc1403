"""The `kaggle:` section of a run config: which competition, which kernel, which machine, which sources."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from segkit.config import from_dict
from segkit.data.competitions.base import adapter_class
from segkit.errors import ConfigError

# Kaggle competition slugs of the competitions segkit has an adapter for (slug -> adapter name).
# 38-Cloud and 95-Cloud are Kaggle *datasets*, not competitions: they have no slug here.
KNOWN_COMPETITIONS = {
    "carvana-image-masking-challenge": "carvana",
    "understanding_cloud_organization": "clouds",
    "airbus-ship-detection": "airbus",
    "severstal-steel-defect-detection": "severstal",
    "tgs-salt-identification-challenge": "tgs",
    "siim-acr-pneumothorax-segmentation": "siim",
}


@dataclass
class KaggleConfig:
    """Where a run meets Kaggle: the competition, the kernels that train and predict, their machine and inputs."""

    competition: str = ""  # Kaggle competition slug (for submit and as a competition source)
    code_competition: bool = False  # submissions must come from a kernel (no file upload)
    owner: str = ""  # kernel owner (Kaggle user name); default: the credentials' user name
    slug: str = ""  # kernel slug stem; fold kernels add "-fold<k>", the inference kernel "-infer"
    title: str = ""  # kernel title stem (slugifies to `slug`); default from the slug
    is_private: bool = True
    enable_gpu: bool = True
    enable_tpu: bool = False
    # None: NvidiaTeslaT4 (Kaggle's "GPU T4 x2"; training uses both, train.devices: auto) when enable_gpu is on;
    # NvidiaTeslaP100, NvidiaL4, NvidiaH100 …; TPU kernels: TpuV5E8 with enable_tpu (and KERAS_BACKEND=jax)
    machine_shape: str | None = None
    enable_internet: bool = False  # code competitions require false; a segkit bundle needs no internet
    dataset_sources: list[str] = field(default_factory=list)  # owner/dataset[/version]
    competition_sources: list[str] | None = None  # None: [competition] when one is set
    kernel_sources: list[str] = field(default_factory=list)  # owner/kernel (checkpoints for inference)
    # owner/model/framework/variation/version; a training kernel also gets its models' presets (segkit.presets)
    model_sources: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)
    docker_image_pinning_type: str | None = None  # "original" or "latest" (never "original" on a TPU)
    session_timeout_seconds: int | None = None
    data_dir: str = ""  # data root inside the kernel's input folder; "" guesses from the first source
    submission_file: str = "submission.csv"  # the inference kernel's output file (code competitions)
    retries: int = 5  # attempts after a 429 / 5xx / network failure
    backoff_seconds: float = 2.0  # first wait; doubles each retry
    max_backoff_seconds: float = 60.0
    poll_seconds: float = 30.0  # status / score polling interval (grows up to max_backoff_seconds)
    timeout_minutes: float = 720.0  # give up waiting for a kernel or a score after this long


SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]*[a-z0-9]$")
DEFAULT_GPU_SHAPE = "NvidiaTeslaT4"  # what a GPU kernel gets unless kaggle.machine_shape says otherwise


def machine_shape(kc: KaggleConfig) -> str | None:
    """The machine a kernel asks for: kaggle.machine_shape, else NvidiaTeslaT4 (two T4s) for a GPU kernel."""
    return kc.machine_shape or (DEFAULT_GPU_SHAPE if kc.enable_gpu else None)
SOURCE_PARTS = {"dataset_sources": (2, 3), "kernel_sources": (2, 3), "model_sources": (5, 5)}


def slugify(text: str) -> str:
    """Kaggle-style slug: lower case, runs of other characters replaced by one dash."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def kaggle_config(cfg: Any) -> KaggleConfig:
    """The validated `kaggle:` section of a Config (unknown keys are named with their closest spelling)."""
    kc = from_dict(KaggleConfig, cfg.kaggle or {}, "kaggle")
    check(kc)
    return kc


def check(kc: KaggleConfig) -> None:
    """Reject values Kaggle would refuse, naming the key and what is expected."""
    if kc.slug and (len(kc.slug) < 5 or not SLUG_RE.match(kc.slug)):
        raise ConfigError(
            f"kaggle.slug: '{kc.slug}' must be at least 5 characters of a-z, 0-9 and '-' (Kaggle's rule)"
        )
    if kc.title and len(kc.title) < 5:
        raise ConfigError(f"kaggle.title: '{kc.title}' must be at least 5 characters (Kaggle's rule)")
    if kc.owner and not re.match(r"^[A-Za-z0-9_-]+$", kc.owner):
        raise ConfigError(f"kaggle.owner: '{kc.owner}' is not a Kaggle user name")
    if kc.docker_image_pinning_type not in (None, "original", "latest"):
        raise ConfigError(
            f"kaggle.docker_image_pinning_type: '{kc.docker_image_pinning_type}' must be 'original' or 'latest'"
        )
    if kc.machine_shape is not None and not re.match(r"^[A-Za-z][A-Za-z0-9]+$", kc.machine_shape):
        raise ConfigError(f"kaggle.machine_shape: '{kc.machine_shape}' is not a machine name like NvidiaTeslaT4")
    if kc.machine_shape and kc.machine_shape.startswith("Nvidia") and not kc.enable_gpu:
        raise ConfigError(f"kaggle.machine_shape: {kc.machine_shape} is a GPU; set kaggle.enable_gpu: true")
    if kc.machine_shape and kc.machine_shape.startswith("Tpu") and not kc.enable_tpu:
        raise ConfigError(f"kaggle.machine_shape: {kc.machine_shape} is a TPU; set kaggle.enable_tpu: true "
                          "(and kaggle.enable_gpu: false)")
    if kc.enable_gpu and kc.enable_tpu:
        raise ConfigError("kaggle.enable_tpu: a kernel gets a GPU or a TPU, not both")
    if kc.enable_tpu and kc.docker_image_pinning_type == "original":
        raise ConfigError("kaggle.docker_image_pinning_type: 'original' pins the kernel's docker image, and a TPU "
                          "kernel on a pinned image silently runs on CPU; use 'latest' or leave it unset")
    if kc.code_competition and kc.enable_internet:
        raise ConfigError("kaggle.enable_internet: code competitions require kernels without internet; set it false")
    for key, (lo, hi) in SOURCE_PARTS.items():
        for src in getattr(kc, key):
            check_source(key, src, lo, hi)
    for src in kc.competition_sources or []:
        if not src or "/" in src:
            raise ConfigError(f"kaggle.competition_sources: '{src}' must be a competition slug")
    if kc.session_timeout_seconds is not None and kc.session_timeout_seconds <= 0:
        raise ConfigError("kaggle.session_timeout_seconds: must be > 0 (the kernel's maximum run time in seconds)")
    for key in ("retries",):
        if getattr(kc, key) < 0:
            raise ConfigError(f"kaggle.{key}: must be >= 0")
    for key in ("backoff_seconds", "max_backoff_seconds", "poll_seconds", "timeout_minutes"):
        if getattr(kc, key) <= 0:
            raise ConfigError(f"kaggle.{key}: must be > 0")


def check_source(key: str, src: str, lo: int, hi: int) -> None:
    """One `owner/slug[/...]` source reference, with the shape the client requires."""
    parts = str(src).split("/")
    if not (lo <= len(parts) <= hi) or not all(parts):
        shape = {
            "dataset_sources": "owner/dataset-slug[/version]",
            "kernel_sources": "owner/kernel-slug[/version]",
            "model_sources": "owner/model/framework/variation/version",
        }[key]
        raise ConfigError(f"kaggle.{key}: '{src}' must look like {shape}")
    if key == "kernel_sources" and len(parts[1]) < 5:
        raise ConfigError(f"kaggle.kernel_sources: '{src}': a kernel slug needs at least 5 characters")
    if key == "model_sources" and not parts[4].isdigit():
        raise ConfigError(f"kaggle.model_sources: '{src}': the last part must be a version number")


def adapter_name_for(competition: str, fmt: str | None = None, cfg: Any = None) -> str:
    """The name of the segkit adapter (and submission format) for a Kaggle competition slug: `fmt` if given, the config's
    data.competition when the config names this competition, a known slug, or an adapter name itself."""
    if fmt:
        return fmt
    if cfg is not None and (cfg.kaggle or {}).get("competition") == competition:
        return cfg.data.competition
    if competition in KNOWN_COMPETITIONS:
        return KNOWN_COMPETITIONS[competition]

    try:
        adapter_class(competition)  # an adapter name given as the competition
        return competition
    except ConfigError:
        pass
    raise ConfigError(
        f"competition '{competition}': cannot tell its submission format; pass --format ADAPTER "
        f"(known slugs: {', '.join(sorted(KNOWN_COMPETITIONS))})"
    )


adapter_for = adapter_name_for  # the older name, kept for callers outside the package
