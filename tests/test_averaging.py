"""Weight averaging (train.ema, train.swa): the EMA the optimizer keeps equals the closed-form average of the
recorded weight trajectory and Keras validates it (the raw weights too); SWA averages exactly the recorded
weights of the last N / best K epochs; BatchNorm re-estimation gives the cumulative batch statistics; the keys
refuse bad values; tiny CLI runs (one EMA run killed and resumed, one SWA run) end with best.keras holding the
averaged weights, which predict uses, and the raw best beside it."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

import segkit.models  # noqa: F401  (registers segkit's layers, losses and metrics for keras.models.load_model)
from segkit.averaging import (EmaAverager, SwaAverager, average_weight_files, optimizer_options,
                              reestimate_batchnorm, save_model, update_pool)
from segkit.cli import main
from segkit.config import TrainConfig, load_config
from segkit.errors import ConfigError
from segkit.runs import FoldDir, weight_settings

TINY_MODEL = "models=[{name: unet, tag: unet, depth: 2, base_filters: 4}]"


# --- toy models: a 3-input linear unit trained with SGD on MSE -----------------------------------

class Batches(keras.utils.PyDataset):
    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> None:
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, i: int):
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return self.x[s], self.y[s]


def toy_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(16, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3 + 0.1 * rng.normal(size=(16, 1))).astype(np.float32)
    xv = rng.normal(size=(8, 3)).astype(np.float32)
    yv = (xv @ np.array([[1.0], [-2.0], [0.5]]) + 0.3).astype(np.float32)
    return Batches(x, y, 4), Batches(xv, yv, 8)


def toy_model(tc: TrainConfig, lr: float = 0.05):
    keras.utils.set_random_seed(1)
    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Dense(1)(inp))
    model.compile(keras.optimizers.SGD(lr, **optimizer_options(tc)), "mse")
    return model


def mse(weights, feed: Batches) -> float:
    kernel, bias = weights
    return float(np.mean((feed.x @ kernel + bias - feed.y) ** 2))


def ema_of(trajectory: list, m: float) -> list:
    """Keras' EMA: the first step's weights, then avg = m * avg + (1 - m) * w after each step."""
    avg = None
    for w in trajectory:
        avg = [x.astype(np.float64) for x in w] if avg is None else [m * a + (1 - m) * x for a, x in zip(avg, w)]
    return avg


class Recorder(keras.callbacks.Callback):
    """Weights after every step; after every epoch the logs, the raw weights and the weights best.keras gets."""

    def __init__(self, averager=None) -> None:
        super().__init__()
        self.averager = averager
        self.steps, self.epochs = [], []

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.steps.append([w.copy() for w in self.model.get_weights()])

    def on_epoch_end(self, epoch, logs=None) -> None:
        row = {"logs": dict(logs), "raw": self.model.get_weights(), "step": len(self.steps)}
        if isinstance(self.averager, EmaAverager):
            with self.averager.best_weights():
                row["saved"] = self.model.get_weights()
            row["after"] = self.model.get_weights()
        else:
            self.averager.commit()  # as train.py's EpochKeeper does once state.json is written
        self.epochs.append(row)


def test_ema_equals_closed_form_average_and_keras_validates_it(tmp_path):
    tc = TrainConfig(ema=0.8)
    train, val = toy_data()
    model = toy_model(tc)
    fold = FoldDir(tmp_path / "fold_0", "toy", 0)
    fold.path.mkdir()
    averager = EmaAverager(fold, "val_loss", "min", val, {}, momentum=0.8)
    rec = Recorder(averager)
    model.fit(train, validation_data=val, epochs=3, shuffle=False, verbose=0, callbacks=[averager, rec])
    assert len(rec.steps) == 12
    for row in rec.epochs:
        ema = ema_of(rec.steps[: row["step"]], 0.8)
        np.testing.assert_allclose(row["saved"][0], ema[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(row["saved"][1], ema[1], rtol=1e-5, atol=1e-6)
        for raw, after, last in zip(row["raw"], row["after"], rec.steps[row["step"] - 1]):
            np.testing.assert_array_equal(raw, last)  # the raw weights are back after validation
            np.testing.assert_array_equal(after, last)  # ... and after saving the best
        # Keras' val_* are the EMA weights' metrics, raw_val_* the raw weights'
        assert row["logs"]["val_loss"] == pytest.approx(mse(ema, val), rel=1e-4)
        assert row["logs"]["raw_val_loss"] == pytest.approx(mse(row["raw"], val), rel=1e-4)
    assert mse(rec.epochs[0]["saved"], val) != pytest.approx(mse(rec.epochs[0]["raw"], val), rel=1e-3)
    best = min(rec.epochs, key=lambda r: r["logs"]["raw_val_loss"])
    assert averager.raw_best == pytest.approx(best["logs"]["raw_val_loss"])
    kept = keras.models.load_model(fold.best_raw).get_weights()
    np.testing.assert_array_equal(kept[0], best["raw"][0])
    assert averager.state() == {"kind": "ema", "raw_best": averager.raw_best}


def test_ema_resumes_from_the_saved_optimizer(tmp_path):
    """A model saved inside fit (as last.keras is) and fitted on ends with the same average as one fit straight
    through: the EMA lives in the saved optimizer. Dropping the optimizer state restarts it."""
    tc = TrainConfig(ema=0.7)
    train, _ = toy_data(1)
    path = tmp_path / "last.keras"

    class SaveAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                save_model(self.model, path)

    straight = toy_model(tc)
    straight.fit(train, epochs=2, shuffle=False, verbose=0, callbacks=[SaveAfterFirstEpoch()])
    resumed = keras.models.load_model(path)
    assert resumed.optimizer.use_ema and resumed.optimizer.ema_momentum == pytest.approx(0.7)
    resumed.fit(train, epochs=2, initial_epoch=1, shuffle=False, verbose=0)
    # after fit Keras finalises: both models hold their EMA weights
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    fresh = keras.models.load_model(path)
    fresh.compile(keras.optimizers.SGD(0.05, **optimizer_options(tc)), "mse")
    fresh.fit(train, epochs=2, initial_epoch=1, shuffle=False, verbose=0)
    assert not np.allclose(straight.get_weights()[0], fresh.get_weights()[0], rtol=1e-4)


@pytest.mark.parametrize("how", ["last", "best"])
def test_swa_averages_the_recorded_epoch_weights(tmp_path, how):
    tc = TrainConfig(swa={how: 2})
    train, val = toy_data(2)
    model = toy_model(tc, lr=0.3)  # a large step: validation loss goes up and down
    fold = FoldDir(tmp_path / "fold_0", "toy", 0)
    fold.path.mkdir()
    save_model(model, fold.best)  # what EpochKeeper would have saved as the raw best
    averager = SwaAverager(fold, "val_loss", "min", val, {}, how=how, n=2, n_bn=10, bn_batches=None)
    rec = Recorder(averager)
    model.fit(train, validation_data=val, epochs=6, shuffle=False, verbose=0, callbacks=[averager, rec])
    losses = [r["logs"]["val_loss"] for r in rec.epochs]
    expect = [5, 6] if how == "last" else sorted(int(i) + 1 for i in np.argsort(losses, kind="stable")[:2])
    assert [p.name for p in fold.snapshots()] == [f"swa_epoch_{e:04d}.npz" for e in expect]
    record = averager.finish(model, best=min(losses))
    assert record["epochs"] == expect and record[how] == 2 and record["kind"] == "swa"
    mean = [np.mean([rec.epochs[e - 1]["raw"][i] for e in expect], axis=0) for i in range(2)]
    saved = keras.models.load_model(fold.best).get_weights()
    for got, want in zip(saved, mean):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert record["val_averaged"] == pytest.approx(mse(mean, val), rel=1e-4)
    assert record["val_raw"] == min(losses) and record["bn_batches"] == 0  # no BatchNorm layer
    assert fold.best_raw.is_file()
    averager.cleanup()
    assert fold.snapshots() == []


def test_update_pool_keeps_last_n_or_best_k():
    values = [0.5, 0.9, 0.7, 0.9, None, 0.2, 0.95]
    pool: list = []
    for e, v in enumerate(values, 1):
        pool, dropped = update_pool(pool, {"epoch": e, "value": v}, "best", 3, "max")
        assert all(d["epoch"] not in [p["epoch"] for p in pool] for d in dropped)
    assert [p["epoch"] for p in pool] == [2, 4, 7]  # 0.9, 0.9, 0.95: None never enters, 0.7 pushed out
    pool = []
    for e, v in enumerate([0.9, 0.9, 0.8], 1):
        pool, _ = update_pool(pool, {"epoch": e, "value": v}, "best", 1, "max")
    assert [p["epoch"] for p in pool] == [1]  # a tie keeps the earlier epoch
    pool = []
    for e, v in enumerate([0.5, 0.4, 0.45, 0.3], 1):
        pool, _ = update_pool(pool, {"epoch": e, "value": v}, "best", 2, "min")
    assert [p["epoch"] for p in pool] == [2, 4]
    pool = []
    for e, v in enumerate(values, 1):
        pool, dropped = update_pool(pool, {"epoch": e, "value": v}, "last", 2, "max")
    assert [p["epoch"] for p in pool] == [6, 7] and [d["epoch"] for d in dropped] == [5]


def test_batchnorm_reestimation_gives_cumulative_batch_statistics():
    inp = keras.Input((4,))
    bn = keras.layers.BatchNormalization(momentum=0.99)
    model = keras.Model(inp, bn(inp))
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=3.0, scale=2.0, size=(6, 4)).astype(np.float32) for _ in range(3)]
    assert reestimate_batchnorm(model, iter(batches)) == 3
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean),
                               np.mean([b.mean(axis=0) for b in batches], axis=0), rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance),
                               np.mean([b.var(axis=0) for b in batches], axis=0), rtol=1e-4)
    assert bn.momentum == 0.99


def test_average_weight_files_keeps_dtypes(tmp_path):
    a = [np.array([1.0, 2.0], np.float32), np.array([7], np.uint32)]
    b = [np.array([3.0, 5.0], np.float32), np.array([9], np.uint32)]
    for name, ws in (("a.npz", a), ("b.npz", b)):
        np.savez(tmp_path / name, *ws)
    out = average_weight_files([tmp_path / "a.npz", tmp_path / "b.npz"])
    assert out[0].dtype == np.float32 and out[0].tolist() == [2.0, 3.5]
    assert out[1].tolist() == [9]  # not a float: the last file's value


# --- config keys -----------------------------------------------------------------------------------

@pytest.mark.parametrize("override, says", [
    ("train.ema=1.5", "train.ema: must be a momentum in (0, 1)"),
    ("train.ema=0", "train.ema: must be a momentum in (0, 1)"),
    ("train.ema=fast", "train.ema: "),
    ("train.swa=3", "train.swa: expected a mapping"),
    ("train.swa={last: 0}", "train.swa.last: must be an integer ≥ 1"),
    ("train.swa={best: 2.5}", "train.swa.best: must be an integer ≥ 1"),
    ("train.swa={lats: 3}", "train.swa.lats: unknown key; did you mean 'train.swa.last'?"),
    ("train.swa={last: 2, best: 2}", "train.swa: give exactly one of"),
    ("train.swa={best: 2, bn_batches: -1}", "train.swa.bn_batches: must be an integer ≥ 0"),
])
def test_config_keys_refuse_bad_values(capsys, override, says):
    code = main(["train", "demo", override])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and err.startswith("segkit: error: ") and says in err, err


def test_ema_and_swa_are_weight_settings_only_when_set():
    plain = weight_settings(load_config("demo"))
    assert "train.ema" not in plain and "train.swa" not in plain  # runs trained before the keys stay valid
    assert weight_settings(load_config("demo", ["train.ema=0.99"]))["train.ema"] == 0.99
    assert weight_settings(load_config("demo", ["train.swa={best: 3}"]))["train.swa"] == {"best": 3}
    with pytest.raises(ConfigError) as err:
        load_config("demo", ["train.ema=0.9", "train.swa={last: 2}"])
    assert str(err.value) == ("train.swa: train.ema is set too; average the weights one way (set train.ema=null or "
                              "train.swa=null)")


# --- tiny CLI runs -----------------------------------------------------------------------------------

def overrides(base: Path, name: str, *extra: str) -> list[str]:
    return [
        f"name={name}", f"data.root={base / 'data'}", "data.image_size=32", f"data.cache_dir={base / 'cache'}",
        f"output.runs_dir={base / 'runs'}", f"output.submissions_dir={base / 'subs'}",
        "train.folds=2", "train.epochs=2", "train.batch_size=4", "train.workers=1", "train.verbose=2",
        "train.early_stopping_patience=50", "predict.tta=[identity]", "postprocess.tune=false",
        TINY_MODEL, *extra,
    ]


def segkit(*args: str) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-m", "segkit", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def ema_run(base):
    """An EMA run killed after fold 0's first epoch, then resumed to the end: (run folder, what the resume
    point held, the resumed run's log)."""
    args = ["train", "demo", *overrides(base, "ema", "train.ema=0.9")]
    rd = base / "runs" / "ema"
    state = rd / "unet" / "fold_0" / "state.json"
    proc = segkit(*args)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["epoch"] >= 1:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    out, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    saved = json.loads(state.read_text())
    last = keras.models.load_model(rd / "unet" / "fold_0" / "last.keras")
    averages = [v for v in last.optimizer.variables if v.path.endswith("_average")]
    point = {"epoch": saved["epoch"], "averaging": saved.get("averaging"), "use_ema": last.optimizer.use_ema,
             "n_average": len(averages), "n_trainable": len(last.trainable_variables),
             "average_differs": any(not np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(w))
                                    for a, w in zip(averages, last.trainable_variables))}
    proc = segkit(*args)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return rd, point, out


@pytest.fixture(scope="module")
def swa_run(base):
    code = main(["train", "demo", *overrides(base, "swa", "train.swa={best: 2, bn_batches: 2}", "train.verbose=0")])
    assert code == 0
    return base / "runs" / "swa"


def test_ema_fold_resumes_with_its_average(ema_run):
    rd, point, log = ema_run
    assert point["use_ema"] and point["n_average"] == point["n_trainable"] > 0 and point["average_differs"]
    assert point["averaging"]["kind"] == "ema" and point["averaging"]["raw_best"] is not None
    assert f"[unet fold 0] resuming after epoch {point['epoch']}" in log
    import pandas as pd

    history = pd.read_csv(rd / "unet" / "fold_0" / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert {"val_dice", "raw_val_dice", "raw_val_loss"} <= set(history.columns)
    for k in (0, 1):
        done = json.loads((rd / "unet" / f"fold_{k}" / "done.json").read_text())
        avg = done["averaging"]
        assert avg["kind"] == "ema" and avg["momentum"] == 0.9 and avg["monitor"] == "val_dice"
        h = pd.read_csv(rd / "unet" / f"fold_{k}" / "history.csv")
        assert avg["val_averaged"] == pytest.approx(h["val_dice"].max()) == pytest.approx(done["best"])
        assert avg["val_raw"] == pytest.approx(h["raw_val_dice"].max())


def check_predict_uses_averaged(rd: Path, base: Path, name: str) -> None:
    """best.keras (averaged) and best_raw.keras differ; OOF and the ensemble predict use best.keras."""
    import segkit as sk
    from segkit.data.cache import Cache

    folds = [FoldDir(rd / "unet" / f"fold_{k}", "unet", k) for k in (0, 1)]
    for fold in folds:
        assert fold.best.is_file() and fold.best_raw.is_file() and not fold.last.exists() and not fold.snapshots()
        best = keras.models.load_model(fold.best)
        raw = keras.models.load_model(fold.best_raw)
        assert any(not np.array_equal(a, b) for a, b in zip(best.get_weights(), raw.get_weights()))
    run = sk.Run("demo", overrides(base, name), quiet=True)
    ens = run.ensemble(tta=["identity"])
    assert [Path(p) for p in ens.checkpoints] == [f.best for f in folds]
    cache = next(Cache.open(p) for p in (base / "cache").iterdir() if "train" in p.name)
    images = np.asarray(cache.images[:4]).astype(np.float32)
    got = ens.predict(images)
    want = np.mean([keras.models.load_model(f.best).predict_on_batch(images) for f in folds], axis=0)
    raw = np.mean([keras.models.load_model(f.best_raw).predict_on_batch(images) for f in folds], axis=0)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(got - raw).max() > 1e-4
    fold = folds[0]
    idx = np.load(fold.oof_index)
    oof = np.load(fold.oof).astype(np.float32)
    pred = keras.models.load_model(fold.best).predict_on_batch(np.asarray(cache.images[idx[:4]]).astype(np.float32))
    np.testing.assert_allclose(oof[:4], pred, atol=2e-3)  # float16 OOF


def test_ema_run_predicts_with_the_averaged_checkpoint(ema_run, base):
    rd, _, _ = ema_run
    check_predict_uses_averaged(rd, base, "ema")


def test_swa_run_averages_the_best_epochs(swa_run, base):
    rd = swa_run
    import pandas as pd

    from segkit.data.cache import Cache

    cache = next(Cache.open(p) for p in (base / "cache").iterdir() if "train" in p.name)

    for k in (0, 1):
        done = json.loads((rd / "unet" / f"fold_{k}" / "done.json").read_text())
        avg = done["averaging"]
        h = pd.read_csv(rd / "unet" / f"fold_{k}" / "history.csv")
        best2 = sorted(int(e) for e in h.sort_values(["val_dice", "epoch"], ascending=[False, True])["epoch"][:2])
        assert avg["kind"] == "swa" and avg["best"] == 2 and avg["epochs"] == best2
        assert avg["val_raw"] == pytest.approx(h["val_dice"].max()) and avg["bn_batches"] >= 1
        # the recorded value is the averaged best.keras's validation Dice (whole set, threshold 0.5), recomputed
        model = keras.models.load_model(rd / "unet" / f"fold_{k}" / "best.keras")
        idx = np.load(rd / "unet" / f"fold_{k}" / "oof_index.npy")
        pred = np.asarray(model.predict_on_batch(np.asarray(cache.images[idx]).astype(np.float32))) > 0.5
        truth = np.asarray(cache.masks[idx]) > 0
        dice = 2 * np.count_nonzero(pred & truth) / (np.count_nonzero(pred) + np.count_nonzero(truth))
        assert avg["val_averaged"] == pytest.approx(dice, abs=1e-4)
        state = json.loads((rd / "unet" / f"fold_{k}" / "state.json").read_text())
        assert [e["epoch"] for e in state["averaging"]["pool"]] == best2
    check_predict_uses_averaged(rd, base, "swa")
