"""The training pipeline on tiny synthetic 38-Cloud data: resume after a kill, and a submission that
decodes back to the ensemble's predicted masks."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from segkit.config import load_config

TINY_MODEL = "models=[{name: unet, tag: unet, depth: 2, base_filters: 4}]"


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from segkit.data.synth import generate

    return generate("cloud38", tmp_path_factory.mktemp("synth"), seed=3, patch_size=32)


def tiny_overrides(root, tmp_path, epochs=1):
    return [
        f"data.root={root}", "data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}",
        f"output.runs_dir={tmp_path / 'runs'}", f"output.submissions_dir={tmp_path / 'subs'}",
        "train.folds=2", f"train.epochs={epochs}", "train.batch_size=8", "train.workers=1",
        "train.early_stopping_patience=50", "predict.tta=[identity,hflip]", TINY_MODEL, "train.verbose=0",
    ]


def run_cli(args, **kw):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-m", "segkit", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_resume_after_kill_in_second_fold(synth_root, tmp_path):
    overrides = tiny_overrides(synth_root, tmp_path, epochs=6)
    run = tmp_path / "runs" / "demo" / "unet"
    proc = run_cli(["train", "demo", *overrides])
    state = run / "fold_1" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["epoch"] >= 1:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()
    assert (run / "fold_0" / "done.json").is_file()
    assert not (run / "fold_1" / "done.json").is_file()
    fold0_mtime = (run / "fold_0" / "best.keras").stat().st_mtime_ns
    epoch_at_kill = json.loads(state.read_text())["epoch"]

    proc = run_cli(["train", "demo", *overrides])
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "[unet fold 0] already trained, skipping" in out
    assert f"[unet fold 1] resuming after epoch {epoch_at_kill}" in out
    assert (run / "fold_0" / "best.keras").stat().st_mtime_ns == fold0_mtime
    history = pd.read_csv(run / "fold_1" / "history.csv")
    assert list(history["epoch"]) == list(range(1, 7))  # no epoch lost, none repeated
    assert (run / "fold_1" / "done.json").is_file()
    assert (tmp_path / "runs" / "demo" / "postprocess.json").is_file()


def test_tiny_end_to_end_submission_decodes_to_predicted_masks(synth_root, tmp_path):
    from segkit import rle
    from segkit.data.cache import prepare
    from segkit.data.competitions.base import make_adapter
    from segkit.postprocess import apply_chain, load_chain
    from segkit.models.registry import load_model
    from segkit.pipeline import train
    from segkit.predict import predict_probabilities
    from segkit.runs import checkpoint_paths

    cfg = load_config("demo", tiny_overrides(synth_root, tmp_path))
    run_dir = train(cfg, quiet=True)
    for k in range(2):
        fdir = run_dir / "unet" / f"fold_{k}"
        assert (fdir / "best.keras").is_file() and (fdir / "history.csv").is_file()
        assert np.load(fdir / "oof.npy").shape[1:] == (32, 32, 1)
    folds = pd.read_csv(run_dir / "folds.csv")
    assert folds.groupby("group")["fold"].nunique().max() == 1  # no scene on both sides
    # predict in a fresh process, as a user would after training
    proc = run_cli(["-q", "predict", "demo", *tiny_overrides(synth_root, tmp_path)])
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    sub_path = cfg.submission_dir / "submission.csv"
    sub = pd.read_csv(sub_path, keep_default_na=False)
    assert list(sub.columns) == ["id", "EncodedPixels"]

    adapter = make_adapter(cfg.data.competition, cfg.data.root, cfg.data.options)
    samples = adapter.test_samples()
    assert list(sub["id"]) == [s.id for s in samples]
    cache = prepare(adapter, samples, (32, 32), cfg.data.cache_dir, name="cloud38-test-32x32", quiet=True,
                    with_masks=False)
    models = [load_model(p) for p in checkpoint_paths(cfg)]
    chain = load_chain(cfg, adapter.classes)  # the whole tuned chain: threshold, min area, gate, triplet
    probs = np.concatenate(list(predict_probabilities(models, cache, np.arange(len(samples)), adapter.normalise,
                                                      ["identity", "hflip"], 8, quiet=True)))
    for p, (_, row) in zip(probs, sub.iterrows()):
        expected = apply_chain(p, chain)[..., 0]
        assert np.array_equal(rle.decode(row["EncodedPixels"], (32, 32), order="F"), expected)
