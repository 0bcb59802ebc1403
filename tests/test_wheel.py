"""segkit as a user gets it: an sdist, a wheel built from it, installed into a fresh venv outside the checkout,
and the main commands run from an empty folder (built-in configs and the kernel template come from the wheel)."""
import csv
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.root=data", "data.cache_dir=cache", "output.runs_dir=runs", "output.submissions_dir=subs",
        "data.image_size=32", "models=[{name: unet, tag: unet, depth: 2, base_filters: 4}]", "train.folds=2",
        "train.epochs=1", "train.batch_size=16", "data.max_train_samples=24", "predict.tta=[identity]",
        "postprocess.threshold_grid=[0.4, 0.5]", "postprocess.min_area_grid=[0]"]
PACKAGE_DATA = {"segkit/configs/demo.yaml", "segkit/configs/cloud38.yaml", "segkit/kernels/kernel.py",
                "segkit/kernels/kernel-metadata.json"}


def run(cmd: list, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def source_copy(dest: Path) -> Path:
    """The files a build reads, copied so the build never writes build/ or egg-info into the checkout."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    return dest


def fresh_venv(path: Path) -> Path:
    """A venv without pip whose only extra import path is the site-packages holding the installed dependencies.
    A path listed in a .pth file is added as it is: the .pth files inside it (segkit's editable finder) do not
    run, so `segkit` can come only from what is installed into this venv."""
    run([sys.executable, "-m", "venv", "--without-pip", path], cwd=path.parent)
    python = path / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=path).stdout.strip()
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    Path(purelib, "_segkit_test_dependencies.pth").write_text("".join(f"{d}\n" for d in deps))
    return python


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None or importlib.util.find_spec("pip") is None,
                    reason="building the wheel offline (--no-build-isolation) needs setuptools and pip in this venv")
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    # sdist, then a wheel from the sdist: both must carry the configs and the kernel template
    src = source_copy(tmp_path / "src-copy")
    sdist = Path(run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
                      "print(b.build_sdist(sys.argv[1]))", tmp_path / "dist"], cwd=src).stdout.strip().splitlines()[-1])
    with tarfile.open(tmp_path / "dist" / sdist) as tf:
        in_sdist = {n.split("/src/", 1)[-1] for n in tf.getnames()}  # segkit-X/src/segkit/... -> segkit/...
    assert PACKAGE_DATA <= in_sdist
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", tmp_path / "wheels", tmp_path / "dist" / sdist], cwd=tmp_path)
    (wheel,) = (tmp_path / "wheels").glob("segkit-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert PACKAGE_DATA <= names
    assert not any(n.startswith(("configs/", "kernels/", "tests/")) for n in names)

    python = fresh_venv(tmp_path / "venv")
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", wheel], cwd=tmp_path)
    where = run([python, "-c", "import segkit, importlib.resources as r; print(segkit.__file__); "
                 "print(r.files('segkit') / 'configs')"], cwd=tmp_path).stdout.split()
    assert all(Path(w).is_relative_to(tmp_path / "venv") for w in where), where  # the wheel, not src/

    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{tmp_path / 'venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    segkit = tmp_path / "venv" / "bin" / "segkit"

    version = run([segkit, "--version"], work, env).stdout.strip()
    assert version == f"segkit {wheel.name.split('-')[1]}"
    run([segkit, "synth", "cloud38", "--out", "data", "--patch-size", "32"], work, env)
    run([segkit, "train", "demo", *TINY], work, env)
    assert sorted(p.name for p in (work / "runs" / "demo" / "unet").glob("fold_*/best.keras")) == ["best.keras"] * 2
    run([segkit, "predict", "demo", *TINY], work, env)
    with open(work / "subs" / "demo" / "submission.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["id", "EncodedPixels"] and len(rows) > 1
    run([segkit, "kernel", "build", "segkit-wheel-test", "--config", "demo", "kaggle.owner=someone",
         "--out", "kernels"], work, env)
    script = work / "kernels" / "segkit-wheel-test" / "train.py"
    assert script.is_file() and (script.parent / "kernel-metadata.json").is_file()
    compile(script.read_text(), str(script), "exec")
    assert sorted(p.name for p in work.iterdir()) == ["cache", "data", "kernels", "runs", "subs"]
