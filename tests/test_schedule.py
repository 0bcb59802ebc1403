"""Training schedule and time budget: the LR warm-up / cosine curve stretched to the planned epochs, the late-loss
switch, the validation cadence, durations, the budget's plan and guard under an injected clock, the config keys'
errors, and tiny real runs (`segkit train`) that follow a saved plan and switch the loss."""
import json
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

import segkit.budget as budget
from segkit.budget import BudgetClock, BudgetGuard, Plan, Planner, make_plan
from segkit.durations import parse_duration
from segkit.cli import main
from segkit.config import load_config
from segkit.errors import ConfigError
from segkit.schedule import lr_at, loss_switch_epoch, validates


class ManualClock:
    """A clock a test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_lr_warms_up_then_follows_a_cosine_stretched_to_the_planned_epochs():
    steps = 10
    assert lr_at(0, steps, 8, 1.0, "cosine", 1.0) == pytest.approx(0.01)
    assert lr_at(5, steps, 8, 1.0, "cosine", 1.0) == pytest.approx(0.505)
    assert lr_at(10, steps, 8, 1.0, "cosine", 1.0) == pytest.approx(1.0)
    assert lr_at(80, steps, 8, 1.0, "cosine", 1.0) == pytest.approx(0.01)
    mid8, mid16 = lr_at(45, steps, 8, 1.0, "cosine", 1.0), lr_at(85, steps, 16, 1.0, "cosine", 1.0)
    assert mid8 == pytest.approx(mid16) == pytest.approx(0.505)  # half-way down whatever the length
    assert lr_at(50, steps, 8, 1.0, "plateau", 1.0) == 1.0 == lr_at(0, steps, 8, 1.0, "constant", 0.0)


def test_late_loss_switch_and_validation_cadence():
    assert loss_switch_epoch(10, 0.6) == 6
    assert loss_switch_epoch(2, 0.99) == 1 and loss_switch_epoch(2, 0.01) == 1  # one epoch of each
    assert loss_switch_epoch(1, 0.6) == 1  # a one-epoch run never switches
    assert [e for e in range(7) if validates(e, 7, 3)] == [2, 5, 6]  # every third and the last


@pytest.mark.parametrize("text, seconds", [(90, 90.0), ("90", 90.0), ("30m", 1800.0), ("1h30m", 5400.0),
                                           ("2h", 7200.0), ("1m30s", 90.0), ("45s", 45.0), ("1.5h", 5400.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["30x", "m", "", "-5", 0, True, "1h30"])
def test_bad_durations_name_the_key(bad):
    with pytest.raises(ConfigError, match="train.time_budget"):
        load_config("demo", [f"train.time_budget={bad!s}"] if not isinstance(bad, bool) else ["train.time_budget=true"])


@pytest.mark.parametrize("override, message", [
    ("train.lr_schedule=cosin", "did you mean 'cosine'"),
    ("train.warmup_epochs=-1", "train.warmup_epochs"),
    ("train.late_loss_from=1.0", "train.late_loss_from"),
    ("train.val_every=0", "train.val_every"),
    ("train.late_los=lovasz", "unknown config key"),
    ("train.late_loss=lovaz", "train.late_loss: unknown loss 'lovaz'; did you mean 'lovasz'"),
])
def test_schedule_keys_refuse_typos_and_bad_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", [override])


def test_plan_fits_the_budget_and_caps_at_train_epochs():
    assert make_plan(100, 10, 2, 50).epochs == 4  # 95 s usable / (10 s × 2 folds)
    assert make_plan(100, 10, 2, 3).epochs == 3
    assert make_plan(10, 60, 4, 50).epochs == 1  # at least one epoch per fold
    assert make_plan(100, 10, 2, 50, compile_s=12.5).epochs == 3  # (95 - 2 × 12.5) / 20
    # 0.6 of 10 epochs at 1 s, 4 late-loss epochs at 3 s, two compilations of 1 s: 6 + 12 + 2 = 20 s
    assert make_plan(20, 1, 1, 50, reserve=0, compile_s=1, late_s=3, late_from=0.6).epochs == 10  # 11: 7+12+2


def test_planner_times_the_first_late_loss_epoch_and_plans_again():
    clock, saved = ManualClock(), {}
    planner = Planner(200 / 0.95, 1, 100, lambda: saved.get("data"), lambda d: saved.update(data=d), clock=clock,
                      late_from=0.5)
    for epoch, seconds in enumerate([12.0, 2.0]):  # 10 s of compiling, then 2 s an epoch
        clock.t += seconds
        planner.on_epoch(seconds, epoch)
    assert planner.epochs() == 90  # 2 × 10 s compiling + 90 × 2 s = 200
    for epoch in range(2, 45):
        clock.t += 2
        planner.on_epoch(2.0, epoch)
    assert planner.epochs() == 90 and planner.plan.late_s is None
    clock.t += 16
    planner.on_epoch(16.0, 45)  # the first late-loss epoch: 10 s compiling + 6 s
    assert planner.plan.late_s == 6.0
    # 44 epochs would fit now (22 × 2 + 22 × 6 + 20 = 196 s), but this fold has run 46 already
    assert planner.epochs() == 46
    assert make_plan(200 / 0.95, 2.0, 1, 100, late_from=0.5, compile_s=10, late_s=6.0).epochs == 44


def test_planner_plans_from_the_first_epoch_refines_from_the_second_and_a_resumed_run_keeps_it():
    clock, saved = ManualClock(), {}
    planner = Planner(300, 2, 100, lambda: saved.get("data"), lambda d: saved.update(data=json.loads(json.dumps(d))),
                      clock=clock)
    assert planner.timing() and planner.epochs() == 100
    clock.t += 30
    planner.on_epoch(30.0, 0)  # compiling included
    assert planner.epochs() == 4 and planner.timing()  # 285 / 60
    clock.t += 10
    planner.on_epoch(10.0, 1)
    # 2 folds × 20 s of compiling overhead, then 10 s an epoch: (285 - 40) / 20
    assert planner.epochs() == 12 and not planner.timing()
    assert saved["data"]["spent_s"] == pytest.approx(40.0)
    clock.t += 5000  # time between the runs is not spent
    resumed = Planner(300, 2, 100, lambda: saved["data"], lambda d: None, clock=clock)
    assert resumed.plan == planner.plan and resumed.clock.spent() == pytest.approx(40.0)


def test_guard_stops_the_fold_before_an_epoch_that_would_end_past_the_budget():
    """Real Keras training; the injected clock says each epoch takes 10 s, then 30 s once the plan is made."""
    clock, saved = ManualClock(), {}
    planner = Planner(100, 1, 50, lambda: saved.get("data"), lambda d: saved.update(data=d), clock=clock)

    class Tick(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            clock.t += 10 if epoch < 2 else 30

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.zeros((8, 2), "float32"), np.zeros((8, 1), "float32")
    guard = planner.guard()
    history = model.fit(x, y, epochs=50, verbose=0, callbacks=[Tick(), guard])
    ran = len(history.history["loss"])
    assert planner.epochs() == 9  # 95 s / 10 s
    assert guard.stopped_by_budget and ran < planner.epochs()
    assert planner.clock.spent() <= 100 + 30  # at most one epoch past the budget
    assert planner.clock.spent() + 30 > 100  # and it did not stop while another epoch fitted


def test_budget_clock_carries_spent_seconds():
    clock = ManualClock()
    c = BudgetClock(60, spent=20, clock=clock)
    clock.t += 15
    assert c.spent() == 35 and c.left() == 25


# --- tiny real runs ---------------------------------------------------------------------------------

def overrides(base: Path, name: str, *extra: str) -> list[str]:
    return [
        f"name={name}", f"data.root={base / 'data'}", "data.image_size=32", f"data.cache_dir={base / 'cache'}",
        f"output.runs_dir={base / 'runs'}", f"output.submissions_dir={base / 'subs'}",
        "train.folds=2", "train.batch_size=4", "train.workers=1", "train.verbose=0",
        "train.early_stopping_patience=50", "predict.tta=[identity]", "postprocess.tune=false",
        "models=[{name: unet, tag: unet, depth: 2, base_filters: 4}]", *extra,
    ]


class Interrupted(Exception):
    pass


_GUARD_EPOCH_END = BudgetGuard.on_epoch_end


def ticking_guard(monkeypatch, clock: ManualClock, seconds: float, stop_after: int | None = None) -> None:
    """Every epoch takes `seconds` on the injected clock; the process dies after `stop_after` epochs."""
    original, seen = _GUARD_EPOCH_END, []

    def on_epoch_end(self, epoch, logs=None):
        clock.t += seconds
        seen.append(epoch)
        if stop_after is not None and len(seen) > stop_after:
            raise Interrupted  # before the epoch keeper saved this epoch, as a kill would
        original(self, epoch, logs)

    monkeypatch.setattr(BudgetGuard, "on_epoch_end", on_epoch_end)


def test_budget_run_follows_its_plan_and_a_resumed_run_keeps_it(base, monkeypatch, capsys):
    clock = ManualClock()
    monkeypatch.setattr(budget, "CLOCK", clock)
    args = overrides(base, "budget", "train.epochs=40", "train.time_budget=3m", "train.lr_schedule=cosine",
                     "train.warmup_epochs=0.5")
    ticking_guard(monkeypatch, clock, 7.0, stop_after=4)
    with pytest.raises(Interrupted):
        main(["train", "demo", *args])
    out = capsys.readouterr().out
    run = base / "runs" / "budget"
    plan = Plan.from_dict(json.loads((run / "plan.json").read_text())["plan"])
    assert "time budget 3m00s: 12 epochs × 2 fold(s)" in out  # 171 s / (2 folds × 7 s)
    assert plan.epochs == 12 and plan.refined
    ticking_guard(monkeypatch, clock, 3.0)  # faster now: planning again would give 28 epochs
    assert main(["train", "demo", *args]) == 0
    assert "kept from the run folder" in capsys.readouterr().out
    assert Plan.from_dict(json.loads((run / "plan.json").read_text())["plan"]) == plan
    for k in (0, 1):
        done = json.loads((run / "unet" / f"fold_{k}" / "done.json").read_text())
        assert done["epochs"] == plan.epochs
    lrs = [float(r.split(",")[-1]) for r in (run / "unet" / "fold_1" / "history.csv").read_text().split()[1:]]
    assert len(lrs) == 12 and lrs[-1] < 0.1 * max(lrs)  # the cosine reached its end at the planned length
    spent = json.loads((run / "plan.json").read_text())["spent_s"]
    assert spent == pytest.approx(4 * 7 + 20 * 3)  # the killed epoch was never recorded


def test_late_loss_recompiles_and_only_validated_epochs_have_val_columns(base):
    args = overrides(base, "late", "train.epochs=4", "train.late_loss=lovasz", "train.late_loss_from=0.5",
                     "train.val_every=3")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", "demo", *args, "train.train_folds=[0]"]) == 0
    assert not [w for w in caught if "not available" in str(w.message)]  # Keras' per-epoch "val_dice" warnings
    import pandas as pd

    from segkit.models.registry import load_model

    fold = base / "runs" / "late" / "unet" / "fold_0"
    history = pd.read_csv(fold / "history.csv")
    assert history["val_loss"].notna().tolist() == [False, False, True, True]
    model = load_model(fold / "best.keras")
    assert "lovasz" in json.dumps(keras.saving.serialize_keras_object(model.loss))


def test_early_stopping_and_plateau_count_validated_epochs_only():
    """With train.val_every > 1 the epochs without validation neither count towards patience nor warn."""
    from segkit.train import ValidatedEarlyStopping, ValidatedReduceLROnPlateau

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.1), loss="mse")
    early = ValidatedEarlyStopping(monitor="val_dice", mode="max", patience=2)
    reduce = ValidatedReduceLROnPlateau(monitor="val_dice", mode="max", patience=1, factor=0.5)
    for cb in (early, reduce):
        cb.set_model(model)
        cb.on_train_begin()
    logs = [{"loss": 1.0, "val_dice": 0.5}, {"loss": 0.9}, {"loss": 0.8}, {"loss": 0.7}, {"loss": 0.6, "val_dice": 0.4}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch, log in enumerate(logs):
            for cb in (early, reduce):
                cb.on_epoch_end(epoch, dict(log))
    assert not [w for w in caught if "not available" in str(w.message)]
    assert early.wait == 1 and not model.stop_training  # one validation without improvement, not four epochs
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(0.05)
    early.on_epoch_end(5, {"val_dice": 0.3})
    assert model.stop_training


@pytest.mark.parametrize("kaggle, expected", [
    ({}, 12 * 3600 - 0.15 * 12 * 3600),  # Kaggle's 12 h session less 15 %
    ({"enable_tpu": True, "enable_gpu": False}, 9 * 3600 - 0.15 * 9 * 3600),
    ({"session_timeout_seconds": 3600}, 1800),  # 30 minutes of margin
])
def test_kaggle_training_kernels_default_to_the_session_limit_less_a_margin(tmp_path, kaggle, expected):
    from segkit.kaggle.runtime import KernelDirs, kernel_config

    (tmp_path / "input" / "data").mkdir(parents=True)
    raw = {"name": "k", "data": {"competition": "cloud38"}, "kaggle": {"data_dir": "data", **kaggle}}
    dirs = KernelDirs(tmp_path / "input", tmp_path / "working", tmp_path / "scratch")
    cfg, _ = kernel_config(raw, "train", 0, dirs)
    assert parse_duration(cfg.train.time_budget) == pytest.approx(expected)
    cfg, _ = kernel_config({**raw, "train": {"time_budget": "2h"}}, "train", 0, dirs)
    assert cfg.train.time_budget == "2h"  # a budget the config gives stays
