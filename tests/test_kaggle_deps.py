"""A kernel checks its dependencies before any work (issue 12): what is missing is listed in one message with how
to attach a wheels dataset; `segkit kernel wheels` downloads the wheels missing from a Kaggle image list (here from
a local folder of wheels built by the test, never the network) and a kernel installs them with pip --no-index."""
import json
import re
import sys
import zipfile
from pathlib import Path

import pytest

from segkit.cli import main
from segkit.errors import SegkitError
from segkit.kaggle import deps, runtime

RAW = {"name": "ktest", "data": {"competition": "cloud38"}, "train": {"folds": 2},
       "kaggle": {"owner": "someone", "slug": "segkit-ktest", "dataset_sources": ["someone/cloud38-synth"]}}


def make_wheel(folder: Path, dist: str, version: str, module: str) -> Path:
    """A minimal pure-Python wheel of `dist` providing `module` (with __version__)."""
    stem = f"{dist.replace('-', '_')}-{version}"
    path = folder / f"{stem}-py3-none-any.whl"
    files = {f"{module}/__init__.py": f"__version__ = {version!r}\n",
             f"{stem}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n",
             f"{stem}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: segkit-test\nRoot-Is-Purelib: true\n"
                                        "Tag: py3-none-any\n"}
    files[f"{stem}.dist-info/RECORD"] = "".join(f"{n},,\n" for n in [*files, f"{stem}.dist-info/RECORD"])
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


def test_minimums_match_requirements_txt():
    text = (Path(__file__).parent.parent / "requirements.txt").read_text()
    pinned = dict(re.findall(r"^([A-Za-z0-9-]+)>=([0-9.]+)", text, re.M))
    for req in deps.REQUIREMENTS:
        assert pinned[req.dist] == req.minimum, req


def test_preflight_with_packages_hidden_lists_them_in_one_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tifffile", None)  # as if the image lacked them
    monkeypatch.setitem(sys.modules, "albumentations", None)
    env = {"SEGKIT_KAGGLE_INPUT": str(tmp_path / "in"), "SEGKIT_KAGGLE_WORKING": str(tmp_path / "w"),
           "SEGKIT_KAGGLE_SCRATCH": str(tmp_path / "s")}
    assert runtime.main("train", RAW, 0, environ=env) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "albumentations>=1.4 (missing), tifffile>=2023.7 (missing)" in err
    assert "segkit kernel wheels" in err and "kaggle.dataset_sources" in err and "no wheels dataset" in err
    assert not (tmp_path / "w" / "runs").exists()  # nothing started


def test_too_old_is_reported_with_the_version_found():
    req = deps.Requirement("keras", ("keras",), "3.5")
    assert deps.problems([req], version_of=lambda r: "3.3.3") == ["keras>=3.5 (found 3.3.3)"]
    assert deps.problems([req], version_of=lambda r: "3.10.0") == []
    assert [r.module for r in deps.needed({}, {"KERAS_BACKEND": "jax"})] == ["keras", "albumentations", "tifffile",
                                                                           "cv2"]


def test_kernel_wheels_downloads_what_the_image_lacks_from_a_local_index(tmp_path, capsys):
    index = tmp_path / "index"
    make_wheel(index, "tifffile", "2099.1", "tifffile")
    make_wheel(index, "keras", "9.9", "keras")  # the image has keras: not downloaded
    image = tmp_path / "kaggle-packages.txt"
    image.write_text("tensorflow==2.18.0\nkeras==3.8.0\nkeras-hub==0.19.0\nalbumentations==1.4.20\n"
                     "opencv-python==4.10.0.84\nnumpy==1.26.4\n")
    out = tmp_path / "wheels"
    rc = main(["kernel", "wheels", "--out", str(out), "--image", str(image), "--pip-arg=--no-index",
               f"--pip-arg=--find-links={index}"])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    assert sorted(p.name for p in out.glob("*.whl")) == ["tifffile-2099.1-py3-none-any.whl"]
    manifest = json.loads((out / deps.WHEELS_MANIFEST).read_text())
    assert manifest["requirements"] == ["tifffile>=2023.7"]
    assert "kaggle datasets create" in stdout
    rc = main(["kernel", "wheels", "--out", str(tmp_path / "w2"), "--image", str(tmp_path / "none.txt")])
    assert rc == 1 and "cannot read the Kaggle image's package list" in capsys.readouterr().err


def test_kernel_installs_missing_packages_from_an_attached_wheels_dataset(tmp_path, monkeypatch):
    fake = deps.Requirement("segkit_fakedep", ("segkit-fakedep",), "1.0")
    inp, scratch = tmp_path / "input", tmp_path / "scratch"
    with pytest.raises(SegkitError, match=r"segkit-fakedep>=1.0 \(missing\)"):
        deps.preflight({}, inp, scratch, reqs=[fake], say=lambda _: None)
    wheels = inp / "datasets" / "someone" / "segkit-wheels"
    make_wheel(wheels, "segkit-fakedep", "1.2", "segkit_fakedep")
    (wheels / deps.WHEELS_MANIFEST).write_text(json.dumps({"requirements": ["segkit-fakedep>=1.0"]}))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the install target goes first; undone after the test
    lines = []
    deps.preflight({}, inp, scratch, reqs=[fake], say=lines.append)
    assert lines == [f"[segkit kernel] installing segkit-fakedep>=1.0 from the wheels dataset {wheels}"]
    assert (scratch / "wheels-site" / "segkit_fakedep" / "__init__.py").is_file()
    assert deps.installed_version(fake) == "1.2"
    too_new = deps.Requirement("segkit_fakedep", ("segkit-fakedep",), "2.0")
    with pytest.raises(SegkitError, match=r"found 1.2\).*lacks them"):
        deps.preflight({}, inp, scratch / "again", reqs=[too_new], say=lambda _: None)
