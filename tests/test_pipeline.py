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


# Runs `segkit ARGS` with two test-only hooks on the fold trainer's epoch callback (segkit.train.EpochKeeper):
# SEGKIT_TEST_KILL_AFTER=N ends the process with os._exit (no clean-up, as kill -9) right after epoch N's
# checkpoint and state are written; SEGKIT_TEST_DUMP=PATH saves, when a fold resumes, the model's weights and
# optimizer variables as fit starts from them.
HOOKED = """
import os, sys
import numpy as np
import keras
import segkit.train as t
from segkit.cli import main

kill_after = int(os.environ.get("SEGKIT_TEST_KILL_AFTER", 0))
dump = os.environ.get("SEGKIT_TEST_DUMP")
end, begin = t.EpochKeeper.on_epoch_end, t.EpochKeeper.on_train_begin

def on_epoch_end(self, epoch, logs=None):
    end(self, epoch, logs)
    if epoch + 1 == kill_after:
        os._exit(137)

def on_train_begin(self, logs=None):
    begin(self, logs)
    if dump and self.state:
        arrays = [keras.ops.convert_to_numpy(v) for v in self.model.weights]
        arrays += [keras.ops.convert_to_numpy(v) for v in self.model.optimizer.variables]
        np.savez(dump, *arrays, n_weights=len(self.model.weights))

t.EpochKeeper.on_epoch_end, t.EpochKeeper.on_train_begin = on_epoch_end, on_train_begin
sys.exit(main(sys.argv[1:]))
"""


def run_hooked(args, **env):
    full = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **{k: str(v) for k, v in env.items()})
    return subprocess.run([sys.executable, "-c", HOOKED, *args], env=full, capture_output=True, text=True,
                          timeout=600)


def checkpoint_arrays(path):
    """A checkpoint's weights and its optimizer's variables (step count, Adam moments, …) as numpy arrays."""
    import keras

    import segkit.models  # noqa: F401  (registers segkit's layers, losses and metrics with Keras)

    model = keras.models.load_model(path)
    return ([keras.ops.convert_to_numpy(v) for v in model.weights],
            [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables])


def test_resumed_fold_starts_from_its_checkpoint_and_ends_as_an_unbroken_run(synth_root, tmp_path):
    """Killed right after epoch 2 of 4, fold 0 resumes from last.keras with its weights and optimizer state
    exactly (as fit starts), and ends with the weights, OOF and history of the same run never interrupted."""
    fold_args = ["train.train_folds=[0]", "train.verbose=0"]
    broken = ["train", "demo", *tiny_overrides(synth_root, tmp_path / "broken", epochs=4), *fold_args]
    whole = ["train", "demo", *tiny_overrides(synth_root, tmp_path / "whole", epochs=4), *fold_args]
    fold = tmp_path / "broken" / "runs" / "demo" / "unet" / "fold_0"

    killed = run_hooked(broken, SEGKIT_TEST_KILL_AFTER=2)
    assert killed.returncode == 137, killed.stdout + killed.stderr
    assert json.loads((fold / "state.json").read_text())["epoch"] == 2 and not (fold / "done.json").exists()
    weights, optimizer = checkpoint_arrays(fold / "last.keras")
    assert any(o.size > 1 and np.abs(o).max() > 0 for o in optimizer)  # Adam's moments, not a fresh optimizer

    resumed = run_hooked(broken, SEGKIT_TEST_DUMP=tmp_path / "start.npz")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "[unet fold 0] resuming after epoch 2" in resumed.stdout
    start = np.load(tmp_path / "start.npz")
    n = int(start["n_weights"])
    got = [start[f"arr_{i}"] for i in range(len(start.files) - 1)]
    assert len(got[:n]) == len(weights) and len(got[n:]) == len(optimizer)
    for a, b in zip(got, weights + optimizer):
        np.testing.assert_array_equal(a, b)

    uninterrupted = run_hooked(whole)
    assert uninterrupted.returncode == 0, uninterrupted.stdout + uninterrupted.stderr
    other = tmp_path / "whole" / "runs" / "demo" / "unet" / "fold_0"
    for a, b in zip(checkpoint_arrays(fold / "best.keras")[0], checkpoint_arrays(other / "best.keras")[0]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.load(fold / "oof.npy").astype(np.float32),
                               np.load(other / "oof.npy").astype(np.float32), atol=1e-3)
    h1, h2 = pd.read_csv(fold / "history.csv"), pd.read_csv(other / "history.csv")
    assert list(h1["epoch"]) == [1, 2, 3, 4] and list(h1.columns) == list(h2.columns)
    np.testing.assert_allclose(h1.to_numpy(float), h2.to_numpy(float), rtol=1e-5, atol=1e-6)


def test_tiny_end_to_end_submission_decodes_to_predicted_masks(synth_root, tmp_path):
    from segkit import rle
    from segkit.data.cache import prepare
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

    adapter = cfg.adapter()
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
