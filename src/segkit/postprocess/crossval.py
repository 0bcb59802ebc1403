"""Cross-validated post-processing: each step of the chain is judged on images it was not tuned on.

For each fold k the step is tuned on the OOF of the other folds and applied to fold k; the step's
cross-validated (CV) gain is the mean over folds of (fold k's score after the step − before it), both chains
tuned on the other folds, with its standard error: the larger of std/√K over the K folds and a paired
bootstrap over the held-out images (each image scored with the chain its own fold tuned; `BOOTSTRAP` resamples),
since K values alone (2-3 folds) can make the SE small by chance. A step is kept only when its CV gain is > 0
and > 1 SE (`RULE`); else it stays neutral. Steps are judged in chain order, each on top of the steps kept before
it, and the chain in force is tuned on all OOF with the kept steps only. Every fold search reuses the
statistics the full tables computed once (`ClassTables.subset`), so cross-validation costs no new pass over
the pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

from segkit.postprocess.search import (ClassTables, TableView, search_gate, search_min_area, search_threshold,
                                       search_triplet)

STEPS = ("threshold", "min area", "gate", "triplet")
RULE = ("A post-processing step is kept only if it also helps on images it was not tuned on: for each fold it "
        "is tuned on the other folds' out-of-fold predictions and scored on that fold, and the mean gain over "
        "folds must be positive by more than one standard error (over the folds or over the images, whichever "
        "is larger). Otherwise the step stays neutral (threshold "
        "0.5, no min area, no gate, no triplet): the 'OOF gain', tuned and scored on the same images, always "
        "looks at least as good and is what overfits.")
MIN_FOLD_IMAGES = 3  # a held-out fold with fewer images cannot judge a step
RANDOM_FOLDS = 5  # folds of the seeded random split used when the run's folds cannot be used
BOOTSTRAP = 200  # resamples of the held-out images for the paired bootstrap SE of a step's gain


@dataclass
class State:
    """One class's chain in OOF units: bottom threshold, min area (OOF pixels), gate (kind, k in OOF pixels,
    cut; an area gate's cut in OOF pixels) and top threshold."""

    threshold: float = 0.5
    area: int = 0
    gate: dict[str, Any] | None = None
    top: float | None = None


@dataclass
class StepRecord:
    """The evidence for one step of one class: in-sample (OOF-tuned) gain, per-fold held-out gains, their
    mean and SE, how many candidate values the search scored on all OOF, and the decision."""

    step: str
    oof_gain: float = 0.0
    fold_gains: list[float] = field(default_factory=list)
    boot_se: float = 0.0  # paired bootstrap SE of the gain over the held-out images
    tried: int = 0
    kept: bool = False
    reason: str = ""
    state: State = field(default_factory=State)  # the chain on all OOF after this step (before it when dropped)
    candidate: State | None = None  # the step tuned on all OOF on top of the chain before it (kept or not)

    @property
    def cv_gain(self) -> float | None:
        return float(np.mean(self.fold_gains)) if self.fold_gains else None

    @property
    def cv_se(self) -> float | None:
        return max(standard_error(self.fold_gains), self.boot_se) if self.fold_gains else None


@dataclass
class Context:
    """What the step searches need: grids (areas in OOF pixels), gate kinds, gate cut grid and the top-k ks."""

    grid: Sequence[float]
    areas: Sequence[int]
    tops: Sequence[float]
    kinds: Sequence[str]
    cut_grid: Sequence[float] | None
    triplet: bool


@dataclass
class CrossVal:
    """The outcome for one class: the final state (tuned on all OOF with the kept steps), the records, the
    folds used and, per fold, the held-out scores of the all-empty prediction and of the CV chain."""

    state: State
    records: list[StepRecord]
    folds_source: str
    n_folds: int
    fold_empty: list[float] = field(default_factory=list)
    fold_plain: list[float] = field(default_factory=list)
    fold_final: list[float] = field(default_factory=list)


def standard_error(values: Sequence[float]) -> float:
    """std / √K of K values (ddof 1; 0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0


def judge(gains: Sequence[float], se_floor: float = 0.0) -> tuple[bool, str]:
    """The rule: kept when the mean gain is > 0 and > 1 SE (the folds' SE, or `se_floor` — the paired
    bootstrap SE over images — when larger) → (kept, reason)."""
    if not len(gains):
        return False, "cannot be judged out of sample (too few images)"
    mean, se = float(np.mean(gains)), max(standard_error(gains), se_floor)
    if mean <= 0:
        return False, f"CV gain {mean:+.4f} ≤ 0"
    if mean <= se:
        return False, f"CV gain {mean:+.4f} within noise (SE {se:.4f})"
    return True, f"CV gain {mean:+.4f} > SE {se:.4f}"


def max_cuts(n_images: int) -> int:
    """Gate cut candidates per score that n images support: one per 5 images, between 8 and 256."""
    return int(min(256, max(8, n_images // 5)))


def choose_folds(folds: np.ndarray | None, n: int, seed: int = 0) -> tuple[np.ndarray | None, str]:
    """The fold of each image to cross-validate over → (folds or None when nothing can be judged, source):
    the run's folds when every one holds ≥ MIN_FOLD_IMAGES images, else a seeded random split into up to
    RANDOM_FOLDS folds of ≥ MIN_FOLD_IMAGES images each."""
    if folds is not None:
        folds = np.asarray(folds)
        ids, counts = np.unique(folds, return_counts=True)
        if len(ids) >= 2 and counts.min() >= MIN_FOLD_IMAGES:
            return folds, f"the run's {len(ids)} training folds"
    k = min(RANDOM_FOLDS, n // MIN_FOLD_IMAGES)
    if k < 2:
        return None, f"{n} images: too few to judge any step out of sample"
    order = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[order] = np.arange(n) % k
    return out, f"a seeded random split into {k} folds"


def keep_images(tab, state: State) -> np.ndarray:
    """The images the chain does not declare empty (gate, then top threshold), as apply_chain decides."""
    keep = tab.top_keep(state.top).copy()
    g = state.gate
    if g is not None:
        if g["kind"] == "topk":
            score = tab.topk_means[tab.topk_ks.index(int(g["k"]))]
        elif g["kind"] == "area":
            score = tab.area_above(state.threshold)
        else:
            score = tab.label
        keep &= score > float(g["cut"])
    return keep


def image_stats(tab, state: State) -> np.ndarray:
    """Per-image statistics (N, S) of the chain `state` on the tables' images (declared-empty rows replaced)."""
    stats = tab.stats(state.threshold, [state.area])[0]
    return np.where(keep_images(tab, state)[:, None], stats, tab.scorer.empty)


def paired_bootstrap_se(tab, tests: Sequence, before: Sequence[State], after: Sequence[State],
                        seed: int = 0) -> float:
    """SE of (score after − score before) over the pooled held-out images, each fold's images under that
    fold's chains, by resampling the images `BOOTSTRAP` times (works for any metric of per-image statistics)."""
    if not tests:
        return 0.0
    idx = np.concatenate([te.idx for te in tests])
    a = np.concatenate([image_stats(te, s) for te, s in zip(tests, after)])
    b = np.concatenate([image_stats(te, s) for te, s in zip(tests, before)])
    if np.array_equal(a, b):
        return 0.0
    root = tab.parent if isinstance(tab, TableView) else tab  # the held-out views index the root's images
    scorer = root.scorer.subset(idx)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(idx), size=(BOOTSTRAP, len(idx)))
    diffs = []
    for p in picks:
        sub = scorer.subset(p)
        diffs.append(float(sub.reduce(a[p]) - sub.reduce(b[p])))
    return float(np.std(diffs, ddof=1))


def chain_score(tab, state: State) -> float:
    """The class's score on the tables' images with the chain `state`."""
    return tab.score(state.threshold, state.area, keep_images(tab, state))


def run_step(step: str, tab, state: State, ctx: Context, cuts: int, tried: list[int] | None = None) -> State:
    """Tune one step on the tables' images on top of `state` → the new state."""
    if step == "threshold":
        _, b = search_threshold(tab, ctx.grid, tried=tried)
        return replace(state, threshold=b)
    if step == "min area":
        _, b, a = search_min_area(tab, ctx.grid, ctx.areas, state.threshold, tried=tried)
        return replace(state, threshold=b, area=a)
    if step == "gate":
        _, gate, _ = search_gate(tab, state.threshold, state.area, ctx.kinds, ctx.cut_grid, cuts, tried=tried)
        return replace(state, gate=gate)
    _, b, a, top = search_triplet(tab, ctx.grid, ctx.areas, ctx.tops, state.threshold,
                                  keep_images(tab, replace(state, top=None)), tried=tried)
    return replace(state, threshold=b, area=a, top=top)


def not_searched(step: str, ctx: Context) -> str:
    """Why a step is not searched at all ('' when it is)."""
    if step == "min area" and not any(a > 0 for a in ctx.areas):
        return "not searched (postprocess.min_area_grid has no area > 0)"
    if step == "gate" and not ctx.kinds:
        return "not searched (postprocess.gate: none)"
    if step == "triplet" and not ctx.triplet:
        return "not searched (postprocess.triplet: false)"
    return ""


def crossval_chain(tab: ClassTables, folds: np.ndarray | None, ctx: Context, folds_source: str = "",
                   keep_rule: Callable[[Sequence[float], float], tuple[bool, str]] | None = None) -> CrossVal:
    """Judge the steps in chain order by cross-validation over `folds` (None: nothing can be judged, every
    step stays neutral) and tune the chain on all of `tab`'s images with the kept steps. `keep_rule(fold_gains,
    oof_gain)` replaces the CV rule (e.g. the in-sample rule of `postprocess.crossval: false`)."""
    ids = [] if folds is None else sorted(set(int(f) for f in np.unique(folds)))
    train = [tab.subset(np.flatnonzero(folds != k)) for k in ids]
    test = [tab.subset(np.flatnonzero(folds == k)) for k in ids]
    full, per_fold = State(), [State() for _ in ids]
    out = CrossVal(full, [], folds_source, len(ids))
    out.fold_empty = [float(v.scorer.reduce(v.scorer.empty)) for v in test]
    out.fold_plain = [chain_score(v, State()) for v in test]
    for step in STEPS:
        rec = StepRecord(step)
        out.records.append(rec)
        why = not_searched(step, ctx)
        if why:
            rec.reason, rec.state = why, full
            continue
        tried: list[int] = []
        cand = run_step(step, tab, full, ctx, max_cuts(tab.n), tried)
        rec.tried, rec.candidate = int(sum(tried)), cand
        rec.oof_gain = chain_score(tab, cand) - chain_score(tab, full)
        cands = [run_step(step, tr, s, ctx, max_cuts(tr.n)) for tr, s in zip(train, per_fold)]
        rec.fold_gains = [chain_score(te, c) - chain_score(te, s) for te, c, s in zip(test, cands, per_fold)]
        rec.boot_se = paired_bootstrap_se(tab, test, per_fold, cands)
        rec.kept, rec.reason = (keep_rule or (lambda g, _: judge(g, rec.boot_se)))(rec.fold_gains, rec.oof_gain)
        if rec.kept:
            full, per_fold = cand, cands
        rec.state = full
    out.state = full
    out.fold_final = [chain_score(te, s) for te, s in zip(test, per_fold)]
    return out


def in_sample_rule(fold_gains: Sequence[float], oof_gain: float) -> tuple[bool, str]:
    """The rule of `postprocess.crossval: false`: keep a step whenever it improves the OOF it is tuned on."""
    if oof_gain > 1e-12:
        return True, f"OOF gain {oof_gain:+.4f} > 0 (postprocess.crossval: false)"
    return False, "no OOF gain"
