"""`train.time_budget`: plan the epochs of every fold × model from the first epoch's throughput.

The first epoch of the first fold trained (validation included) is timed; the plan then gives every fold × model
the same number of epochs, `min(train.epochs, what fits)`, with a reserve for writing the out-of-fold predictions
and tuning. The plan is stored in the run folder (`plan.json`, segkit.runs), so a resumed run keeps it, and it
stretches the learning-rate schedule (segkit.schedule). A guard stops a fold when its next epoch would end past
the budget, so a run overshoots by at most one epoch. The clock is injectable (`clock`) for tests.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import keras

from segkit.durations import format_duration
from segkit.schedule import loss_switch_epoch

RESERVE = 0.05  # share of the budget kept for OOF predictions and tuning
CLOCK: Callable[[], float] = time.monotonic  # the budget's clock (tests replace it)


@dataclass
class Plan:
    """The epochs every fold × model trains under the budget, and what they were derived from."""

    budget_s: float
    epoch_s: float  # seconds of the timed first epoch (validation included)
    units: int  # folds × models this run trains
    epochs: int  # planned epochs per fold × model
    max_epochs: int  # train.epochs, the most the plan gives
    refined: bool = False  # re-planned from the second epoch (the first one includes compiling the model)
    late_s: float | None = None  # seconds of an epoch with train.late_loss, once timed (else epoch_s)
    late_from: float | None = None  # train.late_loss_from when there is a late loss
    compile_s: float = 0.0  # what compiling the model adds to its first epoch (once per loss and fold)

    def describe(self) -> str:
        """One line for the log."""
        need = self.cost(self.epochs)
        return (f"time budget {format_duration(self.budget_s)}: {self.epochs} epochs × {self.units} fold(s) × "
                f"model(s) of {self.epoch_s:.1f} s ≈ {format_duration(need)} "
                f"({'from the second epoch' if self.refined else 'from the first epoch, compiling included'})"
                + (f" (capped by train.epochs = {self.max_epochs})" if self.epochs == self.max_epochs else ""))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        return cls(**{k: data[k] for k in ("budget_s", "epoch_s", "units", "epochs", "max_epochs")},
                   refined=bool(data.get("refined", True)), late_s=data.get("late_s"),
                   late_from=data.get("late_from"), compile_s=float(data.get("compile_s", 0.0)))

    def cost(self, epochs: int) -> float:
        """Seconds of `epochs` epochs for every fold × model, compiling included."""
        early = loss_switch_epoch(epochs, self.late_from) if self.late_from is not None else epochs
        compiles = 1 + (early < epochs)
        late = self.late_s if self.late_s is not None else self.epoch_s
        return self.units * (early * self.epoch_s + (epochs - early) * late + compiles * self.compile_s)


def make_plan(budget_s: float, epoch_s: float, units: int, max_epochs: int, reserve: float = RESERVE,
              compile_s: float = 0.0, late_s: float | None = None, late_from: float | None = None,
              refined: bool = False) -> Plan:
    """The most epochs per fold × model (at least 1, at most max_epochs) whose cost (Plan.cost: epochs of
    `epoch_s`, the late-loss ones of `late_s`, and compiling) fits in the budget less the reserve."""
    plan = Plan(float(budget_s), float(epoch_s), int(units), 1, int(max_epochs), refined, late_s, late_from,
                float(compile_s))
    usable = budget_s * (1 - reserve)
    plan.epochs = max([1, *(e for e in range(1, int(max_epochs) + 1) if plan.cost(e) <= usable)])
    return plan


class BudgetClock:
    """Seconds spent against the budget, carried over a resumed run: `spent` (saved before) plus the time since
    this process started training. `clock` is time.monotonic unless a test injects one."""

    def __init__(self, budget_s: float, spent: float = 0.0, clock: Callable[[], float] | None = None) -> None:
        self.budget_s, self.clock = float(budget_s), clock or CLOCK
        self._base, self._start = float(spent), self.clock()

    def spent(self) -> float:
        return self._base + self.clock() - self._start

    def left(self) -> float:
        return self.budget_s - self.spent()


class BudgetGuard(keras.callbacks.Callback):
    """Times every epoch; after each, calls `on_epoch(seconds, epoch)` (the planner records the first one) and
    stops the fold when another epoch of the last one's length would end past the budget."""

    def __init__(self, clock: BudgetClock, on_epoch: Callable[[float, int], None] | None = None) -> None:
        super().__init__()
        self.budget, self.on_epoch = clock, on_epoch
        self._t0 = 0.0
        self.stopped_by_budget = False

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._t0 = self.budget.clock()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        seconds = self.budget.clock() - self._t0
        if self.on_epoch:
            self.on_epoch(seconds, epoch)
        if self.budget.left() < seconds:
            self.model.stop_training = True
            self.stopped_by_budget = True


class Planner:
    """The run's budget: its saved plan (None until the first epoch is timed), the clock carried over resumes,
    and the guard callback every fold trains with. `read` / `write` load and save plan.json (RunDir.read_plan /
    write_plan); `say` prints the plan once made."""

    def __init__(self, budget_s: float, units: int, max_epochs: int, read: Callable[[], dict | None],
                 write: Callable[[dict], None], clock: Callable[[], float] | None = None,
                 say: Callable[[str], None] | None = None, late_from: float | None = None) -> None:
        saved = read() or {}
        self.plan = Plan.from_dict(saved["plan"]) if saved.get("plan") else None
        self.units, self.max_epochs = int(units), int(max_epochs)
        self.clock = BudgetClock(budget_s, float(saved.get("spent_s", 0.0)), clock)
        self._write, self._say = write, say
        self.late_from = late_from  # train.late_loss_from when train.late_loss is set
        if self.plan is not None and say:
            say(f"kept from the run folder: {self.plan.describe()}")

    def timing(self) -> bool:
        """Whether the next epoch is timed for the plan (the first and second epochs of the first fold)."""
        return self.plan is None or not self.plan.refined

    def epochs(self) -> int:
        """The planned epochs per fold × model; train.epochs until the first epoch has been timed."""
        return self.plan.epochs if self.plan else self.max_epochs

    def on_epoch(self, seconds: float, epoch: int) -> None:
        """After every epoch: plan from the first one timed, and save the plan with the seconds spent."""
        plan, what = self.plan, ""
        if plan is None:
            plan = make_plan(self.clock.budget_s, seconds, self.units, self.max_epochs, late_from=self.late_from)
            what = "first epoch"
        elif not plan.refined:  # the first epoch included compiling: plan again from the second
            plan = make_plan(plan.budget_s, seconds, self.units, self.max_epochs, late_from=self.late_from,
                             compile_s=max(plan.epoch_s - seconds, 0.0), refined=True)
            what = f"second epoch {seconds:.1f} s"
        elif (plan.late_from is not None and plan.late_s is None
              and epoch == loss_switch_epoch(plan.epochs, plan.late_from)):  # the first late-loss epoch
            late = max(seconds - plan.compile_s, plan.epoch_s * 0.5)
            plan = make_plan(plan.budget_s, plan.epoch_s, self.units, self.max_epochs, late_from=plan.late_from,
                             compile_s=plan.compile_s, late_s=late, refined=True)
            plan.epochs = max(plan.epochs, epoch + 1)  # the epochs this fold already ran
            what = f"first late-loss epoch {late:.1f} s"
        if what and self._say and (self.plan is None or plan.epochs != self.plan.epochs):
            self._say(f"{what}: {plan.describe()}" if self.plan else plan.describe())
        self.plan = plan
        self._write({"plan": self.plan.to_dict(), "spent_s": self.clock.spent()})

    def guard(self) -> BudgetGuard:
        """The callback that times epochs, plans, records and stops a fold at the budget."""
        return BudgetGuard(self.clock, self.on_epoch)
