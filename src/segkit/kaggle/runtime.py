"""What a built kernel runs on Kaggle (or anywhere, with its folders moved by environment variables):
train one fold or all folds into the working folder, or gather fold checkpoints from the attached sources
and write a validated submission.

Folders: SEGKIT_KAGGLE_INPUT (default /kaggle/input: read-only sources), SEGKIT_KAGGLE_WORKING (default
/kaggle/working: the kernel's output), SEGKIT_KAGGLE_SCRATCH (default a temporary folder: caches and
gathered checkpoints, not part of the output)."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import segkit
from segkit import pipeline
from segkit.config import config_from_dict
from segkit.durations import KAGGLE_SESSION_S, KAGGLE_TPU_SESSION_S, kaggle_budget
from segkit.errors import DataError, SegkitError, TrainingError
from segkit.kaggle.config import kaggle_config
from segkit.kaggle.deps import preflight
from segkit.presets import attached, input_dir, missing, preset_kind
from segkit.runs import RunDir, ensembled_tags, find_fold_dirs, fold_source_pattern, model_tags
from segkit.storage import atomic_write


@dataclass
class KernelDirs:
    """The three folders a kernel works with."""

    input: Path
    working: Path
    scratch: Path


def kernel_dirs(environ: dict | None = None) -> KernelDirs:
    """The kernel's folders from SEGKIT_KAGGLE_INPUT / _WORKING / _SCRATCH (Kaggle's layout by default)."""
    env = os.environ if environ is None else environ
    scratch = env.get("SEGKIT_KAGGLE_SCRATCH") or os.path.join(tempfile.gettempdir(), "segkit-scratch")
    return KernelDirs(
        input_dir(env),
        Path(env.get("SEGKIT_KAGGLE_WORKING") or "/kaggle/working"),
        Path(scratch),
    )


def data_root_candidates(dirs: KernelDirs, kc: Any, data_dir: str = "") -> list[Path]:
    """Where the data may sit inside the input folder: the configured data_dir, else each source by the
    old (`input/<slug>`) and newer (`input/competitions/<slug>`, `input/datasets/<owner>/<slug>`) layouts."""
    inp = dirs.input
    if data_dir:
        rel = Path(data_dir)
        return [inp / rel, inp / "competitions" / rel, inp / "datasets" / rel]
    out: list[Path] = []
    comps = kc.competition_sources if kc.competition_sources is not None else ([kc.competition] if kc.competition else [])
    for slug in comps:
        out += [inp / slug, inp / "competitions" / slug]
    for src in kc.dataset_sources:
        owner, slug = src.split("/")[:2]
        out += [inp / slug, inp / "datasets" / owner / slug, inp / "datasets" / slug]
    return out


def resolve_data_root(dirs: KernelDirs, kc: Any, data_dir: str = "") -> Path:
    """The first existing data root candidate; DataError listing the input folder when none exists."""
    cands = data_root_candidates(dirs, kc, data_dir)
    for c in cands:
        if c.is_dir():
            return c
    seen = sorted(p.name for p in dirs.input.iterdir()) if dirs.input.is_dir() else []
    if not cands:
        raise DataError("kaggle.data_dir: not set and the config names no competition or dataset source, "
                        "so the kernel cannot tell where its data is")
    raise DataError(
        f"none of {', '.join(str(c) for c in cands)} exists (input folder {dirs.input} holds: "
        f"{', '.join(seen) or 'nothing'}); set kaggle.data_dir to the data's folder inside the input"
    )


def kernel_config(raw: dict, kind: str, fold: int | None, dirs: KernelDirs):
    """The embedded config with its paths moved into the kernel's folders (and the fold to train)."""
    cfg = config_from_dict(raw)
    kc = kaggle_config(cfg)
    cfg.data.root = str(resolve_data_root(dirs, kc, kc.data_dir))
    cfg.data.cache_dir = str(dirs.scratch / "cache")
    if kind == "train":
        cfg.output.runs_dir = str(dirs.working / "runs")
        cfg.train.train_folds = None if fold is None else [int(fold)]
        if cfg.train.time_budget is None:  # never past the session limit: the kernel would end with no output
            session = kc.session_timeout_seconds or (KAGGLE_TPU_SESSION_S if kc.enable_tpu else KAGGLE_SESSION_S)
            cfg.train.time_budget = round(kaggle_budget(session))
    else:
        cfg.output.runs_dir = str(dirs.scratch / "runs")
    cfg.output.submissions_dir = str(dirs.scratch / "submissions")
    return cfg, kc


def gather_checkpoints(cfg, dirs: KernelDirs) -> Path:
    """Link every fold of every model found in the input into the scratch run folder (copying the split and
    any tuned post-processing); TrainingError naming the missing folds."""
    wanted = ensembled_tags(cfg)
    found = find_fold_dirs(dirs.input, cfg.name, model_tags(cfg))
    missing = [f"{t} fold {k}" for t in wanted for k in range(cfg.train.folds) if (t, k) not in found]
    if missing:
        raise TrainingError(
            f"checkpoints of {', '.join(missing)} not found under {dirs.input} (looked for "
            f"{fold_source_pattern(cfg.name)}); attach the training kernels as kernel sources"
        )
    run = RunDir.of(cfg)
    run.path.mkdir(parents=True, exist_ok=True)
    for (tag, k), src in found.items():
        dst = run.fold(tag, k)
        dst.path.parent.mkdir(parents=True, exist_ok=True)
        dst.wipe()
        dst.path.symlink_to(src.resolve(), target_is_directory=True)
    sources = [RunDir.containing(src) for src in found.values()]
    split_texts = {s.folds.read_text() for s in sources if s.folds.is_file()}
    if len(split_texts) > 1:
        raise TrainingError(f"the training kernels of run '{cfg.name}' used different fold splits; retrain them "
                            "from one config")
    if split_texts:
        with atomic_write(run.folds) as fh:
            fh.write(split_texts.pop())
    for source in sources:
        if source.postprocess.is_file():
            shutil.copyfile(source.postprocess, run.postprocess)
            break
    return run.path


def find_presets(cfg, kc, dirs: KernelDirs) -> dict[int, Path]:
    """The attached copy of every model's preset, by model index, printed (the models load them from there);
    DataError naming the preset and the folders looked in when one is missing (a kernel with internet
    downloads a preset name or handle instead)."""
    found = {}
    for i, spec in enumerate(cfg.models):
        preset, where = spec.params.get("preset"), f"models.{i}.preset"
        if not preset:
            continue
        copy = attached(str(preset), dirs.input, where)
        if copy is None and kc.enable_internet and preset_kind(str(preset)) in ("kaggle", "name", "url"):
            print(f"[segkit kernel] {where}: {preset} is not attached; KerasHub downloads it", flush=True)
            continue
        if copy is None:
            raise missing(str(preset), dirs.input, where)
        if not (copy / "config.json").is_file():
            raise DataError(f"{where}: {copy} (attached for '{preset}') holds no config.json, so it is not a "
                            "KerasHub preset; upload the folder Backbone.save_to_preset wrote")
        print(f"[segkit kernel] {where}: {preset} -> {copy}", flush=True)
        found[i] = copy
    return found


def run_train(raw: dict, fold: int | None, dirs: KernelDirs, quiet: bool = False) -> Path:
    """Train the embedded config (one fold, or all) into <working>/runs/<name>/, with every model's preset
    read from its attached copy."""
    cfg, kc = kernel_config(raw, "train", fold, dirs)
    find_presets(cfg, kc, dirs)  # before any data is read: a missing preset fails at once
    print(f"[segkit kernel] training {'all folds' if fold is None else f'fold {fold}'} of '{cfg.name}' "
          f"on {cfg.data.root} -> {cfg.run_dir}", flush=True)
    return pipeline.train(cfg, quiet=quiet)


def run_infer(raw: dict, dirs: KernelDirs, quiet: bool = False) -> Path:
    """Gather the fold checkpoints, tune post-processing on their OOF predictions when no tuned file came
    with them, predict the test set and write <working>/<submission_file>, validated."""
    cfg, kc = kernel_config(raw, "infer", None, dirs)
    run = RunDir(gather_checkpoints(cfg, dirs))
    if cfg.postprocess.tune and not run.postprocess.is_file():
        pipeline.tune(cfg, quiet=quiet)  # needs the training data and every fold's OOF predictions
    out = dirs.working / kc.submission_file
    pipeline.predict(cfg, quiet=quiet, out=out)  # validates what it writes (against the sample submission if any)
    if run.postprocess.is_file():
        shutil.copyfile(run.postprocess, dirs.working / run.postprocess.name)
    print(f"[segkit kernel] submission written and validated: {out}", flush=True)
    return out


def tpu_backend(raw: dict, environ: dict) -> str | None:
    """On a TPU kernel (kaggle.enable_tpu), set KERAS_BACKEND=jax in `environ` unless it names a backend already:
    TensorFlow and JAX cannot both own the TPU, and Keras 3 with TPUStrategy is broken, so JAX's
    keras.distribution is the TPU path (segkit.devices). Returns the line to print, or None (not a TPU kernel,
    or the backend was chosen by the user)."""
    if not (raw.get("kaggle") or {}).get("enable_tpu") or environ.get("KERAS_BACKEND"):
        return None
    environ["KERAS_BACKEND"] = "jax"
    late = " (too late: keras is imported already)" if "keras" in sys.modules else ""
    return f"[segkit kernel] TPU kernel: KERAS_BACKEND=jax{late}"


def main(kind: str, raw: dict, fold: int | None = None, environ: dict | None = None) -> int:
    """Entry point of a built kernel script; returns the exit code (a SegkitError is printed, not raised)."""
    note = tpu_backend(raw, os.environ if environ is None else environ)  # before anything imports keras
    if note:
        print(note, flush=True)
    dirs = kernel_dirs(environ)
    start = time.time()
    print(f"[segkit kernel] segkit {segkit.__version__} from {Path(segkit.__file__).parent}; "
          f"input {dirs.input}, working {dirs.working}", flush=True)
    dirs.working.mkdir(parents=True, exist_ok=True)
    dirs.scratch.mkdir(parents=True, exist_ok=True)
    try:
        preflight(raw, dirs.input, dirs.scratch, say=lambda line: print(line, flush=True))  # before any work
        if kind == "train":
            run_train(raw, fold, dirs)
        elif kind == "infer":
            run_infer(raw, dirs)
        else:
            raise SegkitError(f"unknown kernel kind '{kind}' (train or infer)")
    except SegkitError as exc:
        print(f"segkit: error: {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"[segkit kernel] done in {(time.time() - start) / 60:.1f} min", flush=True)
    return 0
