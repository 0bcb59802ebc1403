"""kernel-metadata.json: made from the `kaggle:` config over a template, and checked locally with the same
rules the kaggle client applies before a push (plus the traps it lets through)."""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from segkit.errors import KaggleError
from segkit.kaggle.config import SLUG_RE, KaggleConfig, check_source, machine_shape, slugify

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # only for annotations (3.11+)

METADATA_FILE = "kernel-metadata.json"
LANGUAGES = ("python", "r", "rmarkdown")
KERNEL_TYPES = ("script", "notebook")
BOOL_FIELDS = ("is_private", "enable_gpu", "enable_tpu", "enable_internet")
LIST_FIELDS = ("dataset_sources", "competition_sources", "kernel_sources", "model_sources", "keywords")
# A pinned image (e.g. inherited from a pulled notebook's metadata) is never written: on it a TPU kernel silently
# runs on CPU and a GPU kernel may lack the current CUDA kernels. segkit kernels run on Kaggle's current image.
REFUSED_FIELDS = ("docker_image",)


def stem_slug(kc: KaggleConfig, run_name: str) -> str:
    """The kernel slug stem of a run: kaggle.slug, else the slugified title, else `segkit-<run name>`."""
    return kc.slug or slugify(kc.title) or slugify(f"segkit-{run_name}")


def title_for(slug: str, kc: KaggleConfig, run_name: str) -> str:
    """A title that slugifies back to `slug` (Kaggle derives a new kernel's slug from its title): kaggle.title
    plus the slug's suffix (" fold0", " infer") when the title slugifies to the stem and the slug extends it,
    else the slug with spaces (so overriding only kaggle.slug never keeps a title of another slug)."""
    stem = stem_slug(kc, run_name)
    if kc.title and slugify(kc.title) == stem and slug.startswith(stem):
        return kc.title + slug[len(stem):].replace("-", " ")
    return slug.replace("-", " ")


def title_warning(kc: KaggleConfig, run_name: str) -> str | None:
    """A note when kaggle.title is set but does not slugify to the kernel slug stem (the titles then follow the slug)."""
    stem = stem_slug(kc, run_name)
    if kc.title and slugify(kc.title) != stem:
        return (f"kaggle.title '{kc.title}' does not slugify to the kernel slug '{stem}', so the titles are derived "
                f"from the slug; set kaggle.title to e.g. '{stem.replace('-', ' ')}' (or leave it empty)")
    return None


def kernel_metadata(template: dict, kc: KaggleConfig, owner: str, slug: str, title: str, code_file: str,
                    extra_kernel_sources: list[str] = (), extra_model_sources: list[str] = ()) -> dict[str, Any]:
    """The metadata of one kernel: the template's fixed fields, then the config's settings (the extra kernel and
    model sources added to the configured ones, without repeats). enable_internet is always written (the
    client defaults it to true when absent); a GPU kernel gets machine_shape NvidiaTeslaT4 unless
    kaggle.machine_shape says otherwise; a template pinning a docker_image is refused."""
    for key in REFUSED_FIELDS:
        if key in template:
            raise KaggleError(f"{METADATA_FILE} template: '{key}' pins the kernel's docker image (a TPU kernel then "
                              f"runs on CPU); delete the field from the template")
    comps = kc.competition_sources if kc.competition_sources is not None else ([kc.competition] if kc.competition else [])
    meta = {"id": f"{owner}/{slug}", "title": title, "code_file": code_file,
            "language": template.get("language", "python"), "kernel_type": template.get("kernel_type", "script")}
    meta.update({k: v for k, v in template.items() if k not in meta})
    meta.update({
        "is_private": kc.is_private,
        "enable_gpu": kc.enable_gpu,
        "enable_tpu": kc.enable_tpu,
        "enable_internet": kc.enable_internet,
        "dataset_sources": list(kc.dataset_sources),
        "competition_sources": list(comps),
        "kernel_sources": list(dict.fromkeys([*kc.kernel_sources, *extra_kernel_sources])),
        "model_sources": list(dict.fromkeys([*kc.model_sources, *extra_model_sources])),
        "keywords": list(kc.keywords),
    })
    if machine_shape(kc):
        meta["machine_shape"] = machine_shape(kc)
    if kc.docker_image_pinning_type:
        meta["docker_image_pinning_type"] = kc.docker_image_pinning_type
    if kc.session_timeout_seconds:
        meta["session_timeout_seconds"] = int(kc.session_timeout_seconds)  # sent by segkit (the client's -t)
    return meta


def validate_metadata(meta: dict, folder: str | Path | None = None) -> list[str]:
    """Check metadata with the client's rules; returns warnings (the client's soft checks) and raises
    KaggleError naming the field for anything the client or Kaggle would refuse (the first problem found)."""
    where = f"{Path(folder) / METADATA_FILE}" if folder else METADATA_FILE
    if not isinstance(meta, dict):
        raise KaggleError(f"{where}: expected a JSON object")
    checks = (_image_problems(meta), _id_problems(meta), _code_problems(meta, folder), _flag_problems(meta),
              _source_problems(meta), _setting_problems(meta))
    for problem in itertools.chain.from_iterable(checks):  # lazily: stops at the first
        raise KaggleError(f"{where}: {problem}")
    return []


def _image_problems(meta: dict) -> Iterator[str]:
    """A pinned docker image (a TPU kernel on one silently runs on CPU)."""
    for key in REFUSED_FIELDS:
        if key in meta:
            yield (f"'{key}' pins the kernel's docker image (a TPU kernel on a pinned image silently runs on CPU); "
                   "delete it so the kernel runs on Kaggle's current image")
    if meta.get("enable_tpu") and meta.get("docker_image_pinning_type") == "original":
        yield ("'docker_image_pinning_type' is 'original' on a TPU kernel (a pinned image runs it on CPU); "
               "use 'latest' or leave it out")


def _id_problems(meta: dict) -> Iterator[str]:
    """'id' (owner/kernel-slug) and 'title', which must slugify to the id's slug."""
    kid = meta.get("id")
    if not kid and not meta.get("id_no"):
        yield "'id' (owner/kernel-slug) is required"
    if kid:
        parts = str(kid).split("/")
        if len(parts) != 2 or not all(parts):
            yield f"'id' is '{kid}'; expected owner/kernel-slug (no version)"
        if len(parts[1]) < 5:
            yield f"'id' slug '{parts[1]}' must be at least 5 characters"
        if not SLUG_RE.match(parts[1]):
            yield f"'id' slug '{parts[1]}' may hold only a-z, 0-9 and '-'"
    title = meta.get("title")
    if title is not None and len(str(title)) < 5:
        yield f"'title' '{title}' must be at least 5 characters"
    if title and kid and slugify(str(title)) != str(kid).split("/")[-1].lower():
        slug = str(kid).split("/")[-1]
        yield (f"title '{title}' does not slugify to the id's slug '{slug}': Kaggle would create the kernel under "
               f"another slug; set 'title' to '{slug.replace('-', ' ')}'")


def _code_problems(meta: dict, folder: str | Path | None) -> Iterator[str]:
    """'code_file' (present in the folder when one is given), 'language' and 'kernel_type'."""
    code = meta.get("code_file")
    if not code:
        yield "'code_file' is required"
    if folder is not None and not (Path(folder) / str(code)).is_file():
        yield f"code_file '{code}' not found in {folder}"
    if meta.get("language") not in LANGUAGES:
        yield f"'language' is {meta.get('language')!r}; expected one of {', '.join(LANGUAGES)}"
    if meta.get("kernel_type") not in KERNEL_TYPES:
        yield f"'kernel_type' is {meta.get('kernel_type')!r}; expected one of {', '.join(KERNEL_TYPES)}"


def _flag_problems(meta: dict) -> Iterator[str]:
    """The true/false fields: booleans, enable_internet written explicitly, not both GPU and TPU."""
    for key in BOOL_FIELDS:
        if key in meta and not isinstance(meta[key], bool):
            yield f"'{key}' is {meta[key]!r}; expected true or false (the client crashes on other values)"
    if "enable_internet" not in meta:
        yield "'enable_internet' is missing; the client then turns internet ON (write it explicitly)"
    if meta.get("enable_gpu") and meta.get("enable_tpu"):
        yield "'enable_gpu' and 'enable_tpu' are both true"


def _source_problems(meta: dict) -> Iterator[str]:
    """The list fields, and each dataset / kernel / model / competition source's shape."""
    for key in LIST_FIELDS:
        if key in meta and not (isinstance(meta[key], list) and all(isinstance(v, str) for v in meta[key])):
            yield f"'{key}' must be a list of strings"
    shapes = {"dataset_sources": (2, 3), "kernel_sources": (2, 3), "model_sources": (5, 5)}
    for key, (lo, hi) in shapes.items():
        for src in meta.get(key, []):
            try:
                check_source(key, src, lo, hi)
            except Exception as exc:  # ConfigError phrased for the config; re-home it to the file
                yield str(exc).replace("kaggle.", "", 1)
    for src in meta.get("competition_sources", []):
        if "/" in src or not src:
            yield f"competition source '{src}' must be a competition slug"


def _setting_problems(meta: dict) -> Iterator[str]:
    """session_timeout_seconds, docker_image_pinning_type and machine_shape."""
    timeout = meta.get("session_timeout_seconds")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0):
        yield f"'session_timeout_seconds' is {timeout!r}; expected a positive number of seconds"
    pin = meta.get("docker_image_pinning_type")
    if pin is not None and pin not in ("original", "latest"):
        yield f"'docker_image_pinning_type' is {pin!r}; expected original or latest"
    shape = meta.get("machine_shape")
    if shape is not None and not (isinstance(shape, str) and shape.isalnum()):
        yield f"'machine_shape' is {shape!r}; expected a name like NvidiaTeslaT4"


def load_json(path: str | Path | Traversable) -> dict:
    """A JSON file's content (a path, or a package resource); KaggleError naming the file when it is not
    valid UTF-8 JSON."""
    source = path if hasattr(path, "read_text") else Path(path)
    try:
        return json.loads(source.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KaggleError(f"{path}: not valid JSON ({exc})") from None


def read_metadata(folder: str | Path) -> dict:
    """Load and validate a kernel folder's metadata; KaggleError when missing or invalid."""
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        raise KaggleError(f"{path}: not found; build the kernel first (segkit kernel build)")
    meta = load_json(path)
    validate_metadata(meta, folder)
    return meta
