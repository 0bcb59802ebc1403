"""What a fold's training does epoch by epoch: the learning-rate schedule (`train.lr_schedule`, `warmup_epochs`),
the loss phases (`train.late_loss` from `train.late_loss_from`) and the validation cadence (`train.val_every`).

The schedule is stretched over the epochs the fold will run — `train.epochs`, or the time budget's plan
(segkit.budget) once the first epoch has been timed — so a budget that allows 30 epochs anneals over 30."""
from __future__ import annotations

import math

import keras

from segkit.config import LR_SCHEDULES as SCHEDULES  # noqa: F401  (the allowed names live with the config)



def lr_at(step: float, steps_per_epoch: int, total_epochs: int, base_lr: float, schedule: str,
          warmup_epochs: float, floor: float = 0.01) -> float:
    """The learning rate at training `step` (0-based, counted over the whole fold): linear warm-up from
    `floor`·base over `warmup_epochs`, then constant ("plateau", "constant") or half a cosine from base down to
    `floor`·base at the end of `total_epochs` ("cosine")."""
    warm = warmup_epochs * steps_per_epoch
    if warm > 0 and step < warm:
        return base_lr * (floor + (1 - floor) * step / warm)
    if schedule != "cosine":
        return base_lr
    total = max(total_epochs * steps_per_epoch - warm, 1)
    t = min(max(step - warm, 0) / total, 1.0)
    return base_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


class LrSchedule(keras.callbacks.Callback):
    """Sets the optimizer's learning rate before every batch from `lr_at`; `total_epochs` may be changed while
    training (the time budget's plan). Not used for "plateau" without warm-up (ReduceLROnPlateau alone)."""

    def __init__(self, base_lr: float, schedule: str, warmup_epochs: float, total_epochs: int,
                 steps_per_epoch: int) -> None:
        super().__init__()
        self.base_lr, self.schedule, self.warmup = float(base_lr), schedule, float(warmup_epochs)
        self.total_epochs, self.steps_per_epoch = int(total_epochs), max(int(steps_per_epoch), 1)
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch = epoch

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        step = self._epoch * self.steps_per_epoch + batch
        if self.schedule == "plateau" and step >= self.warmup * self.steps_per_epoch:
            return  # after the warm-up ReduceLROnPlateau owns the rate
        lr = lr_at(step, self.steps_per_epoch, self.total_epochs, self.base_lr, self.schedule, self.warmup)
        self.model.optimizer.learning_rate.assign(lr)


def loss_switch_epoch(total_epochs: int, late_from: float) -> int:
    """The first epoch (0-based) trained with train.late_loss: `late_from` of the run, at least one epoch of
    each loss when the run has two or more."""
    if total_epochs < 2:
        return total_epochs
    return min(max(int(round(late_from * total_epochs)), 1), total_epochs - 1)


def validates(epoch: int, total_epochs: int, every: int) -> bool:
    """Whether epoch (0-based) is validated: every `every`-th epoch and always the last."""
    return (epoch + 1) % every == 0 or epoch + 1 >= total_epochs
