"""segkit's runtime dependencies as a kernel meets them: a preflight that checks the Kaggle image has them (at
segkit's minimum versions) before any work starts, installing missing ones from an attached wheels dataset
(`pip install --no-index`) when one is there; and `segkit kernel wheels`, which downloads on the user's machine
the wheels missing from a stated Kaggle image, into a folder ready to upload as that dataset.

Nothing here imports the packages it checks (versions come from their installed metadata)."""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from segkit.errors import KaggleError, SegkitError
from segkit.storage import atomic_write

WHEELS_MANIFEST = "segkit-wheels.json"  # marks a wheels folder made by `segkit kernel wheels`


@dataclass(frozen=True)
class Requirement:
    """One runtime dependency: the module imported, the distributions that provide it, the minimum version."""

    module: str
    dists: tuple[str, ...]
    minimum: str
    when: str = ""  # "" always; "tensorflow": the TensorFlow backend; "keras_hub": pretrained encoders

    @property
    def dist(self) -> str:
        return self.dists[0]

    @property
    def spec(self) -> str:
        return f"{self.dist}>={self.minimum}"


# The kernel's share of requirements.txt (a test keeps the minimums equal).
REQUIREMENTS = (
    Requirement("tensorflow", ("tensorflow", "tensorflow-cpu", "tf-nightly"), "2.16", "tensorflow"),
    Requirement("keras", ("keras",), "3.5"),
    Requirement("keras_hub", ("keras-hub", "keras-hub-nightly"), "0.18", "keras_hub"),
    Requirement("albumentations", ("albumentations",), "1.4"),
    Requirement("tifffile", ("tifffile",), "2023.7"),
    Requirement("cv2", ("opencv-python-headless", "opencv-python", "opencv-contrib-python",
                        "opencv-contrib-python-headless"), "4.9"),
)


def version_tuple(text: str) -> tuple:
    """A comparable version: packaging's when installed, else the leading numbers."""
    try:
        from packaging.version import Version

        return (0, Version(text))
    except Exception:  # packaging missing or an odd version string
        return (1, tuple(int(x) for x in re.findall(r"\d+", text.split("+")[0])[:4]))


def installed_version(req: Requirement) -> str | None:
    """The installed version of the requirement, or None when its module cannot be imported."""
    try:
        if importlib.util.find_spec(req.module) is None:
            return None
    except (ImportError, ValueError):
        return None
    for dist in req.dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "0"  # importable but from no known distribution: take it as present, version unknown


def needed(raw_config: dict | None = None, environ: dict | None = None) -> list[Requirement]:
    """The requirements of a kernel: TensorFlow only under the TensorFlow backend, KerasHub only when a model
    uses a pretrained encoder."""
    env = os.environ if environ is None else environ
    backend = env.get("KERAS_BACKEND", "tensorflow")
    text = json.dumps(raw_config or {}).lower()
    uses_hub = any(word in text for word in ('"backbone"', '"encoder"', '"preset"', "keras_hub", "efficientnet",
                                             "resnet"))
    out = []
    for req in REQUIREMENTS:
        if req.when == "tensorflow" and backend != "tensorflow":
            continue
        if req.when == "keras_hub" and not uses_hub:
            continue
        out.append(req)
    return out


def problems(reqs: Iterable[Requirement], version_of: Callable[[Requirement], str | None] = installed_version) -> list[str]:
    """'dist>=min (missing)' / 'dist>=min (found 1.2)' for every requirement not met."""
    out = []
    for req in reqs:
        found = version_of(req)
        if found is None:
            out.append(f"{req.spec} (missing)")
        elif found != "0" and version_tuple(found) < version_tuple(req.minimum):
            out.append(f"{req.spec} (found {found})")
    return out


def find_wheels(input_dir: str | Path, depth: int = 4) -> Path | None:
    """The first folder under input_dir (up to `depth` levels) holding a segkit wheels manifest."""
    root = Path(input_dir)
    if not root.is_dir():
        return None
    level = [root]
    for _ in range(depth + 1):
        for folder in level:
            if (folder / WHEELS_MANIFEST).is_file():
                return folder
        level = sorted(p for folder in level for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
        if not level:
            break
    return None


def install_wheels(wheels: Path, specs: Sequence[str], target: Path) -> None:
    """pip install --no-index from the wheels folder into target (put first on sys.path); SegkitError with
    pip's last lines when it fails."""
    target.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links", str(wheels),
           "--target", str(target), "--quiet", *specs]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).strip().splitlines() or ["pip failed"]
        raise SegkitError(next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1]).strip())
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    importlib.invalidate_caches()


def preflight(raw_config: dict | None, input_dir: str | Path, scratch: str | Path,
              reqs: Sequence[Requirement] | None = None, say: Callable[[str], None] = print) -> None:
    """Check the kernel's dependencies before any work; install what is missing from an attached wheels
    dataset (made by `segkit kernel wheels`) when there is one; else SegkitError listing every missing or too
    old package and how to attach the wheels."""
    reqs = list(needed(raw_config) if reqs is None else reqs)
    bad = problems(reqs)
    if not bad:
        return
    wheels = find_wheels(input_dir)
    if wheels is not None:
        wanted = [r for r in reqs if problems([r])]
        say(f"[segkit kernel] installing {', '.join(r.spec for r in wanted)} from the wheels dataset {wheels}")
        why = ""
        try:
            install_wheels(wheels, [r.spec for r in wanted], Path(scratch) / "wheels-site")
        except SegkitError as exc:
            why = f": pip says {exc}"
        bad = problems(reqs)
        if not bad:
            return
    where = f"the wheels dataset {wheels} lacks them{why}" if wheels else "no wheels dataset is attached"
    raise SegkitError(
        f"this Kaggle image lacks segkit's dependencies: {', '.join(bad)} ({where}). On your machine run "
        "`segkit kernel wheels --out wheels --image kaggle-packages.txt` (the image's `pip list --format=freeze`), "
        "upload the folder as a dataset (`kaggle datasets create -p wheels`), add it to kaggle.dataset_sources "
        "and push the kernel again; it then installs them with pip --no-index"
    )


# --- the user's side: download the wheels -----------------------------------------------------------

def read_image_list(path: str | Path) -> dict[str, str]:
    """name -> version from a `pip list --format=freeze` / `pip freeze` file (names normalised)."""
    out: dict[str, str] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise KaggleError(f"{path}: cannot read the Kaggle image's package list ({exc.strerror})") from None
    for line in lines:
        line = line.split("#")[0].strip()
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:===?|\s@\s.*?)?\s*([0-9][^\s;]*)?", line)
        if m and ("==" in line or " @ " in line):
            out[normalise(m.group(1))] = m.group(2) or "0"
    return out


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def missing_from_image(image: dict[str, str] | None, reqs: Sequence[Requirement] = REQUIREMENTS) -> list[Requirement]:
    """The requirements the image lacks or has too old (all of them without an image list)."""
    if image is None:
        return list(reqs)
    out = []
    for req in reqs:
        found = next((image[normalise(d)] for d in req.dists if normalise(d) in image), None)
        if found is None or (found != "0" and version_tuple(found) < version_tuple(req.minimum)):
            out.append(req)
    return out


def download_wheels(out_dir: str | Path, image: str | Path | None = None, python_version: str = "3.11",
                    platforms: Sequence[str] | None = None, pip_args: Sequence[str] = (),
                    progress: Callable[[str], None] | None = print) -> list[Path]:
    """`pip download` the wheels (no dependencies: the image has those) of segkit's requirements missing from
    the image's package list into out_dir, with a manifest the kernel recognises; the wheel files."""
    say = progress or (lambda _: None)
    out = Path(out_dir)
    listed = read_image_list(image) if image else None
    if listed is None:
        say("warning: no --image list: downloading every dependency (the Kaggle image has most of them)")
    wanted = missing_from_image(listed)
    out.mkdir(parents=True, exist_ok=True)
    if not wanted:
        say("the image has every dependency at segkit's minimum versions: nothing to download")
    else:
        platforms = list(platforms or ["manylinux2014_x86_64", "manylinux_2_28_x86_64"])
        cmd = [sys.executable, "-m", "pip", "download", "--dest", str(out), "--no-deps", "--only-binary=:all:",
               "--python-version", python_version, *[a for p in platforms for a in ("--platform", p)],
               *pip_args, *[r.spec for r in wanted]]
        say(f"downloading {', '.join(r.spec for r in wanted)}")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-6:])
            raise KaggleError(f"pip download of {', '.join(r.spec for r in wanted)} failed (check the network, or "
                              f"--pip-arg for another index):\n{tail}")
    wheels = sorted(out.glob("*.whl"))
    with atomic_write(out / WHEELS_MANIFEST) as fh:
        json.dump({"requirements": [r.spec for r in wanted], "wheels": [w.name for w in wheels],
                   "python_version": python_version}, fh, indent=2)
        fh.write("\n")
    return wheels
