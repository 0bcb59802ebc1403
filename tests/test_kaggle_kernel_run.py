"""The built kernels really run: with /kaggle's folders moved by environment variables, two training kernels
(one fold each) train on a tiny synthetic 38-Cloud dataset, and the inference kernel, given their outputs as
sources, writes a submission that `segkit validate` accepts."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from segkit.cli import main
from segkit.config import config_from_dict
from segkit.errors import DataError, TrainingError
from segkit.kaggle.bundle import build_kernel
from segkit.kaggle.config import KaggleConfig
from segkit.kaggle.runtime import KernelDirs, gather_checkpoints, resolve_data_root
from segkit.runs import find_fold_dirs

RAW = {
    "name": "ktest",
    "seed": 3,
    "data": {"competition": "cloud38", "root": "unused-on-kaggle", "image_size": 32,
             "options": {"nonempty_only": True}},
    "models": [{"name": "unet", "tag": "unet", "depth": 2, "base_filters": 4}],
    "train": {"folds": 2, "epochs": 8, "batch_size": 4, "workers": 1, "verbose": 0, "learning_rate": 0.01,
              "early_stopping_patience": 9, "reduce_lr_patience": 9},
    # threshold 0.5, no gate, no triplet: a 3-epoch model's probabilities straddle 0.5, so the masks are partial
    # (a tuned 0.3 fills every patch, a tuned gate empties them), and the kernel's submission is compared with a
    # local prediction on masks that depend on every probability
    "postprocess": {"threshold_grid": [0.5], "min_area_grid": [0], "gate": "none", "triplet": False},
    "predict": {"tta": ["identity", "hflip"], "batch_size": 16},
    "kaggle": {"owner": "someone", "slug": "segkit-ktest", "dataset_sources": ["someone/cloud38-synth"]},
}


def start_kernel(script: Path, inp: Path, working: Path, scratch: Path, cwd: Path) -> subprocess.Popen:
    """Run a built kernel script as Kaggle would, with its folders moved by the SEGKIT_KAGGLE_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "SEGKIT_"))}
    env.update(SEGKIT_KAGGLE_INPUT=str(inp), SEGKIT_KAGGLE_WORKING=str(working), SEGKIT_KAGGLE_SCRATCH=str(scratch),
               TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", PYTHONPATH="")
    return subprocess.Popen([sys.executable, str(script)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> str:
    """Wait for a kernel; its stdout, or a failure showing the end of its output."""
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return out


@pytest.fixture(scope="module")
def kernel_runs(tmp_path_factory):
    """Build and run fold 0, fold 1 and the inference kernel once for the module."""
    from segkit.data.synth import generate

    base = tmp_path_factory.mktemp("kernels")
    inp = base / "input"
    generate("cloud38", inp / "cloud38-synth", seed=3, patch_size=32, n_train_scenes=3, n_test_scenes=1)
    cfg = config_from_dict(RAW)
    procs = {}
    for k in (0, 1):  # the fold kernels run side by side, as they do on Kaggle
        built = build_kernel(cfg, f"segkit-ktest-fold{k}", "train", k, base / "build")
        procs[k] = start_kernel(built.code_file, inp, base / f"work{k}", base / f"scratch{k}", base)
    runs = {k: finish(p) for k, p in procs.items()}
    for k in (0, 1):
        shutil.copytree(base / f"work{k}", inp / f"segkit-ktest-fold{k}")  # a kernel's output as a source
    built = build_kernel(cfg, "segkit-ktest-infer", "infer", None, base / "build",
                         extra_kernel_sources=["someone/segkit-ktest-fold0", "someone/segkit-ktest-fold1"])
    runs["infer"] = finish(start_kernel(built.code_file, inp, base / "work_infer", base / "scratch_infer", base))
    return base, runs


def test_training_kernels_train_their_fold_into_working(kernel_runs):
    base, runs = kernel_runs
    for k in (0, 1):
        assert "segkit-bundle-" in runs[k]  # the embedded package ran, not the installed one
        fdir = base / f"work{k}" / "runs" / "ktest" / "unet" / f"fold_{k}"
        for name in ("best.keras", "history.csv", "oof.npy", "oof_index.npy", "done.json"):
            assert (fdir / name).is_file(), name
        assert len(pd.read_csv(fdir / "history.csv")) == RAW["train"]["epochs"]
        other = base / f"work{k}" / "runs" / "ktest" / "unet" / f"fold_{1 - k}"
        assert not other.exists()
        assert not (base / f"work{k}" / "cache").exists()  # caches stay out of the kernel output


def test_inference_kernel_writes_a_valid_submission(kernel_runs, capsys):
    base, runs = kernel_runs
    sub = base / "work_infer" / "submission.csv"
    assert sub.is_file()
    assert main(["validate", "--competition", "cloud38", str(sub)]) == 0
    test_ids = pd.read_csv(base / "input" / "cloud38-synth" / "38-Cloud_test" / "test_patches_38-Cloud.csv")
    rows = pd.read_csv(sub, keep_default_na=False)
    assert list(rows.columns) == ["id", "EncodedPixels"]
    assert len(rows) == len(test_ids)
    assert (base / "work_infer" / "postprocess.json").is_file()  # tuned on the two folds' OOF
    assert "submission written and validated" in runs["infer"]


def test_inference_kernel_submission_is_a_local_predict_of_the_same_run(kernel_runs, tmp_path):
    """The two fold kernels' outputs put together in a local run folder, tuned and predicted with the local
    `segkit tune` / `segkit predict`: the same post-processing and the very same submission, row by row."""
    import json

    from segkit.config import save_config

    base, _ = kernel_runs
    for k in (0, 1):
        shutil.copytree(base / f"work{k}" / "runs" / "ktest" / "unet" / f"fold_{k}",
                        tmp_path / "runs" / "ktest" / "unet" / f"fold_{k}")
    cfg = config_from_dict({**RAW, "data": {**RAW["data"], "root": str(base / "input" / "cloud38-synth"),
                                            "cache_dir": str(tmp_path / "cache")},
                            "output": {"runs_dir": str(tmp_path / "runs"), "submissions_dir": str(tmp_path / "subs")}})
    save_config(cfg, tmp_path / "ktest.yaml")
    assert main(["-q", "tune", str(tmp_path / "ktest.yaml")]) == 0
    assert main(["-q", "predict", str(tmp_path / "ktest.yaml")]) == 0
    kernel = json.loads((base / "work_infer" / "postprocess.json").read_text())
    local = json.loads((tmp_path / "runs" / "ktest" / "postprocess.json").read_text())
    assert kernel["classes"] == local["classes"]
    mine = pd.read_csv(tmp_path / "subs" / "ktest" / "submission.csv", keep_default_na=False)
    theirs = pd.read_csv(base / "work_infer" / "submission.csv", keep_default_na=False)
    assert list(mine["id"]) == list(theirs["id"])
    different = [i for i, a, b in zip(mine["id"], mine["EncodedPixels"], theirs["EncodedPixels"]) if a != b]
    assert not different, f"{len(different)} of {len(mine)} rows differ, e.g. {different[:3]}"
    partial = [r for r in mine["EncodedPixels"] if r not in ("", f"1 {32 * 32}")]
    assert partial, "every mask empty or full: the comparison would say little"


def make_fold(root: Path, name: str, tag: str, k: int, done: bool = True) -> Path:
    fdir = root / "runs" / name / tag / f"fold_{k}"
    fdir.mkdir(parents=True)
    (fdir / "best.keras").write_bytes(b"x")
    if done:
        (fdir / "done.json").write_text("{}")
    return fdir


def test_find_fold_dirs_across_source_layouts(tmp_path):
    a = make_fold(tmp_path / "segkit-ktest-fold0", "ktest", "unet", 0)
    b = make_fold(tmp_path / "kernels" / "someone" / "segkit-ktest-fold1", "ktest", "unet", 1)
    make_fold(tmp_path / "other", "another-run", "unet", 0)
    make_fold(tmp_path / "partial", "ktest", "unet", 0, done=False)
    found = find_fold_dirs(tmp_path, "ktest", ["unet"])
    assert found == {("unet", 0): a, ("unet", 1): b}


def test_gather_names_the_missing_folds(tmp_path):
    cfg = config_from_dict({**RAW, "output": {"runs_dir": str(tmp_path / "scratch" / "runs")}})
    make_fold(tmp_path / "input" / "segkit-ktest-fold0", "ktest", "unet", 0)
    dirs = KernelDirs(tmp_path / "input", tmp_path / "working", tmp_path / "scratch")
    with pytest.raises(TrainingError, match="checkpoints of unet fold 1 not found"):
        gather_checkpoints(cfg, dirs)
    src1 = make_fold(tmp_path / "input" / "segkit-ktest-fold1", "ktest", "unet", 1)
    run_dir = gather_checkpoints(cfg, dirs)
    assert (run_dir / "unet" / "fold_1").resolve() == src1.resolve()


def test_data_root_in_old_and_new_input_layouts(tmp_path):
    kc = KaggleConfig(competition="some-comp", dataset_sources=["owner/ds-slug"])
    dirs = KernelDirs(tmp_path, tmp_path / "w", tmp_path / "s")
    (tmp_path / "datasets" / "owner" / "ds-slug").mkdir(parents=True)
    assert resolve_data_root(dirs, kc) == tmp_path / "datasets" / "owner" / "ds-slug"
    (tmp_path / "competitions" / "some-comp").mkdir(parents=True)
    assert resolve_data_root(dirs, kc) == tmp_path / "competitions" / "some-comp"
    (tmp_path / "mine" / "data").mkdir(parents=True)
    assert resolve_data_root(dirs, kc, "mine/data") == tmp_path / "mine" / "data"
    with pytest.raises(DataError, match="set kaggle.data_dir"):
        resolve_data_root(dirs, kc, "absent")
    with pytest.raises(DataError, match="kaggle.data_dir: not set"):
        resolve_data_root(dirs, KaggleConfig())
