"""Tune the post-processing chain on OOF predictions, class by class, and save it as postprocess.json v2.

Steps in chain order: "plain (0.5)" (threshold 0.5, no min area) → "threshold" → "min area" → "gate" →
"triplet". Each is judged by cross-validation over the run's folds (segkit.postprocess.crossval: tuned on the
other folds, scored on the held-out one) and kept only when its CV gain is > 0 and > 1 SE, else neutral (no
gate, no top threshold, threshold 0.5, min area 0); the chain in force is tuned on all OOF with the kept steps.
The OOF score after each step, with the OOF-tuned gain, the CV gain ± SE, the values tried and the decision,
is saved under `steps` (older files without the evidence still load) and printed as a table, beside the
all-empty baseline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from segkit.config import Config
from segkit.errors import ConfigError
from segkit.oof import OofClass, load_oof_class
from segkit.postprocess.chain import ChainParams
from segkit.postprocess.crossval import (RULE, Context, CrossVal, State, chain_score, choose_folds,
                                         crossval_chain, in_sample_rule, standard_error)
from segkit.postprocess.search import ClassTables, Scorer
from segkit.runs import RunData, RunDir, open_run_data

if TYPE_CHECKING:
    from segkit.data.competitions.base import Adapter

STEP_NAMES = ("plain (0.5)", "threshold", "min area", "gate", "triplet")


def _gate_kinds(cfg: Config, has_label: bool) -> list[str]:
    gate = cfg.postprocess.gate
    if gate == "none":
        return []
    if gate == "auto":
        return ["topk", "area"] + (["label"] if has_label else [])
    if gate == "label" and not has_label:
        raise ConfigError("postprocess.gate: 'label' needs a classification head (a model with classifier: true "
                          "that wrote oof_label.npy); use topk, area, auto or none")
    return [gate]


def _counts_agree(adapter, scorer: Scorer, tab: ClassTables, truth: np.ndarray, probs: np.ndarray) -> bool:
    """Whether the adapter's score_counts gives its score_class at threshold 0.5, checked on up to 64 images
    spread over the OOF (a guard against a count form that does not match the metric)."""
    idx = np.unique(np.linspace(0, len(truth) - 1, min(len(truth), 64)).round().astype(int))
    stats = tab.stats(0.5, [0])[0][idx]
    fast = float(scorer.fn(stats[:, 0], stats[:, 1], scorer.tsum[idx]))
    exact = adapter.score_class(truth[idx], (probs[idx] > 0.5).astype(np.uint8))
    return abs(fast - exact) <= 1e-6


class Units(NamedTuple):
    """Submission pixels ↔ OOF pixels for one class's tables: `scale` (area → OOF pixels), `unscale` (OOF min
    area → the grid's submission value), the top-k gate's fractions and their k in OOF pixels."""

    scale: Any
    unscale: dict[int, int]
    fractions: list[float]
    ks: list[int]


def class_tables(adapter: Adapter, truth: np.ndarray, oof: OofClass, cfg: Config, area_scale: float,
                 sub_pixels: int) -> tuple[ClassTables, Context, Units]:
    """The per-image statistics of one class's OOF (per-image scores when the adapter's count form does not
    match its metric), the search context of the config's grids, and the pixel units (what `tune_class_cv`
    and the benchmarks that score held-out images next to the OOF build on)."""
    pc = cfg.postprocess
    hw = int(np.prod(oof.probs.shape[1:]))
    fractions = list(pc.gate_topk_grid)
    ks = [max(1, round(f * hw)) for f in fractions]
    top_k = max(1, round(pc.top_k * area_scale))
    scale = lambda area: int(round(area * area_scale))  # noqa: E731 - submission pixels → OOF pixels
    areas = sorted({scale(a) for a in pc.min_area_grid})
    unscale = {scale(a): int(a) for a in sorted(pc.min_area_grid, reverse=True)}
    unscale.setdefault(0, 0)
    scorer = Scorer(adapter, truth)
    tab = ClassTables(oof.probs, truth, scorer, pc.threshold_grid, top_k, ks, oof.gate_probs, oof.label)
    if scorer.counts and not _counts_agree(adapter, scorer, tab, truth, oof.probs):  # then per-image scores
        scorer = Scorer(adapter, truth, counts=False)
        tab = ClassTables(oof.probs, truth, scorer, pc.threshold_grid, top_k, ks, oof.gate_probs, oof.label)
    ctx = Context(pc.threshold_grid, areas, pc.top_threshold_grid, _gate_kinds(cfg, oof.label is not None),
                  pc.gate_cut_grid, pc.triplet)
    return tab, ctx, Units(scale, unscale, fractions, ks)


@dataclass
class ClassTuning:
    """One class tuned: its postprocess.json row, [(OOF score, params) after each step of STEP_NAMES], the
    cross-validation evidence per step and the all-empty score (None when post-processing is not tuned)."""

    row: dict[str, Any]
    steps: list[tuple[float, dict[str, Any]]]
    cv: CrossVal | None = None
    empty_score: float | None = None


def tune_class(adapter: Adapter, truth: np.ndarray, oof: OofClass, cfg: Config, area_scale: float,
               sub_pixels: int, folds: np.ndarray | None = None,
               ) -> tuple[dict[str, Any], list[tuple[float, dict[str, Any]]]]:
    """Tune one class's chain → (its postprocess.json row, [(score, params) after each step]); see
    `tune_class_cv` (`folds`: the fold each image was validated in)."""
    tuned = tune_class_cv(adapter, truth, oof, cfg, area_scale, sub_pixels, folds)
    return tuned.row, tuned.steps


def tune_class_cv(adapter: Adapter, truth: np.ndarray, oof: OofClass, cfg: Config, area_scale: float,
                  sub_pixels: int, folds: np.ndarray | None = None) -> ClassTuning:
    """Tune one class's chain with each step judged out of sample (segkit.postprocess.crossval): cross-
    validated over `folds` (the fold each image was validated in; None or folds too small: a seeded random
    split), kept only when its CV gain is > 0 and > 1 SE (or, with `postprocess.crossval: false`, when it
    improves the OOF), then tuned on all OOF with the kept steps. A dropped step stays neutral and its row in
    `steps` repeats the score before it."""
    pc = cfg.postprocess
    tab, ctx, units = class_tables(adapter, truth, oof, cfg, area_scale, sub_pixels)
    scorer, scale, unscale, fractions, ks = tab.scorer, units.scale, units.unscale, units.fractions, units.ks
    plain = tab.score(0.5, 0)
    empty = float(scorer.reduce(scorer.empty))

    steps: list[tuple[float, dict[str, Any]]] = [(plain, {"threshold": 0.5, "min_area": 0})]
    row: dict[str, Any] = {"threshold": 0.5, "min_area": 0, "gate": None, "top_threshold": None,
                           "top_k": int(pc.top_k)}
    if not pc.tune:
        score = tab.score(pc.threshold, scale(pc.min_area))
        row.update(threshold=float(pc.threshold), min_area=int(pc.min_area))
        steps.append((score, {"threshold": row["threshold"], "min_area": row["min_area"]}))
        return ClassTuning(row, steps, None, empty)

    chosen, source = choose_folds(folds, tab.n, cfg.seed)
    cv = crossval_chain(tab, chosen, ctx, source, None if pc.crossval else in_sample_rule)
    # the score after each step of the final chain: a dropped step leaves the chain (and score) unchanged
    for rec in cv.records:
        state = rec.state
        params = _row_of(state, unscale, fractions, ks, sub_pixels, area_scale, int(pc.top_k))
        shown = {"threshold": {"threshold": params["threshold"]},
                 "min area": {"threshold": params["threshold"], "min_area": params["min_area"]},
                 "gate": {"gate": params["gate"]},
                 "triplet": {k: params[k] for k in ("threshold", "min_area", "top_threshold", "top_k")}}[rec.step]
        steps.append((chain_score(tab, state), shown))
    row.update(_row_of(cv.state, unscale, fractions, ks, sub_pixels, area_scale, int(pc.top_k)))
    return ClassTuning(row, steps, cv, empty)


def _row_of(state: State, unscale: dict[int, int], fractions: list[float], ks: list[int], sub_pixels: int,
            area_scale: float, top_k: int) -> dict[str, Any]:
    """A state in OOF units → postprocess.json's row in submission pixels."""
    gate = None
    if state.gate is not None:
        gate = dict(state.gate)
        if gate["kind"] == "topk":
            gate["k"] = max(1, round(fractions[ks.index(gate["k"])] * sub_pixels))
        elif gate["kind"] == "area":
            gate["cut"] = float(gate["cut"]) / area_scale
    return {"threshold": float(state.threshold), "min_area": unscale.get(state.area, state.area), "gate": gate,
            "top_threshold": state.top, "top_k": top_k}


def tune(cfg: Config, run: RunData | None = None, quiet: bool = False) -> dict:
    """Tune the chain per class on the ensemble's OOF predictions with the competition's metric, each step
    judged by cross-validation over the run's folds; save postprocess.json v2 (parameters, the OOF score after
    each step, and per step the OOF-tuned gain, the CV gain ± SE, the values tried and the decision) and print
    the step table."""
    run = run or open_run_data(cfg, quiet=quiet)
    masks = run.cache.masks  # memory-mapped (N, H, W, C)
    sub_h, sub_w = run.adapter.submission_size(run.samples[0])
    area_scale = (masks.shape[1] * masks.shape[2]) / float(sub_h * sub_w)  # areas are in submission pixels
    folds = np.asarray(run.folds)
    classes, tuned = [], []
    for c, name in enumerate(run.adapter.classes):
        oof = load_oof_class(cfg, len(run.samples), c)
        truth = np.ascontiguousarray(masks[..., c])
        t = tune_class_cv(run.adapter, truth, oof, cfg, area_scale, sub_h * sub_w, folds)
        del oof, truth
        classes.append({"name": name, **t.row, "oof_score_default": float(t.steps[0][0]),
                        "oof_score_tuned": float(t.steps[-1][0])})
        tuned.append(t)
    result = {
        "version": 2,
        "metric": run.adapter.metric_name(),
        "classes": classes,
        "steps": step_records(cfg, classes, tuned),
        "oof_score_default": float(np.mean([c["oof_score_default"] for c in classes])),
        "oof_score_tuned": float(np.mean([c["oof_score_tuned"] for c in classes])),
    }
    result.update(crossval_summary(cfg, tuned))
    RunDir.of(cfg).write_postprocess(result)
    if not quiet:
        print(format_steps(result))
    return result


def step_records(cfg: Config, classes: list[dict[str, Any]], tuned: list[ClassTuning]) -> list[dict[str, Any]]:
    """postprocess.json's `steps`: per step the OOF score (mean and per class) and parameters, and for a tuned
    step its evidence: OOF-tuned gain, CV gain ± SE (over folds, mean over classes), values tried, decision."""
    names = STEP_NAMES if cfg.postprocess.tune else (STEP_NAMES[0], "config")
    out = []
    for j, step in enumerate(names):
        scores = [float(t.steps[j][0]) for t in tuned]
        entry: dict[str, Any] = {"step": step, "oof_score": float(np.mean(scores)), "per_class": scores,
                                 "params": {c["name"]: t.steps[j][1] for c, t in zip(classes, tuned)}}
        if j and cfg.postprocess.tune:
            recs = [t.cv.records[j - 1] for t in tuned]
            entry["oof_gain"] = float(np.mean([r.oof_gain for r in recs]))
            entry["oof_gain_per_class"] = [float(r.oof_gain) for r in recs]
            gains = [r.fold_gains for r in recs]
            if all(gains) and len({len(g) for g in gains}) == 1:
                per_fold = np.mean(np.asarray(gains, dtype=np.float64), axis=0)
                entry["cv_gain"] = float(per_fold.mean())
                boot = float(np.sqrt(np.mean([r.boot_se ** 2 for r in recs]) / len(recs)))  # SE of a class mean
                entry["cv_se"] = max(standard_error(per_fold), boot)
            else:
                entry["cv_gain"] = entry["cv_se"] = None
            entry["cv_gain_per_class"] = [r.cv_gain for r in recs]
            entry["cv_se_per_class"] = [r.cv_se for r in recs]
            entry["tried"] = [int(r.tried) for r in recs]
            entry["kept"] = [bool(r.kept) for r in recs]
            entry["reason"] = [r.reason for r in recs]
        out.append(entry)
    return out


def crossval_summary(cfg: Config, tuned: list[ClassTuning]) -> dict[str, Any]:
    """The trivial all-empty baseline (OOF, per class) and, when tuned, how the rule was applied: the folds,
    the rule, and the cross-validated final score against all-empty (mean ± SE over folds, and whether the
    final score is within 1 SE of it)."""
    empty = [float(t.empty_score) for t in tuned]
    out: dict[str, Any] = {"baseline": {"step": "all empty", "oof_score": float(np.mean(empty)),
                                        "per_class": empty}}
    cvs = [t.cv for t in tuned if t.cv is not None]
    if not cvs:
        return out
    cv: dict[str, Any] = {"rule": RULE if cfg.postprocess.crossval else "postprocess.crossval: false: every step "
                          "that improves the OOF is kept (not judged out of sample)",
                          "folds": cvs[0].folds_source, "n_folds": cvs[0].n_folds}
    if all(c.n_folds >= 2 for c in cvs) and len({c.n_folds for c in cvs}) == 1:
        final = np.mean([c.fold_final for c in cvs], axis=0)
        plain = np.mean([c.fold_plain for c in cvs], axis=0)
        base = np.mean([c.fold_empty for c in cvs], axis=0)
        over = final - base
        cv.update(cv_score=float(final.mean()), cv_score_plain=float(plain.mean()), cv_score_empty=float(base.mean()),
                  cv_gain_over_empty=float(over.mean()), cv_se_over_empty=standard_error(over))
        cv["within_noise_of_empty"] = bool(over.mean() <= standard_error(over) + 1e-9)
    out["crossval"] = cv
    return out


def format_steps(result: dict[str, Any]) -> str:
    """The step table: OOF score after each step (overall and per class), the OOF-tuned gain beside the
    cross-validated gain ± SE, the values tried and the decision; the all-empty baseline, the rule, a warning
    when the final score is within noise of all-empty, and the parameters each class settled on."""
    names = [c["name"] for c in result["classes"]]
    steps = [s for s in result["steps"] if isinstance(s, dict)]
    width = max([len(str(s.get("step", ""))) for s in steps] + [12])
    head = (f"[tune] {'step':<{width}}  {'OOF':>7}  {'OOF gain':>8}  {'CV gain ± SE':>17}  {'tried':>5}  "
            + "  ".join(f"{n:>9}" for n in names) + "  decision")
    lines = [head]
    base = result.get("baseline")
    if isinstance(base, dict):
        lines.append(f"[tune] {'all empty':<{width}}  {base['oof_score']:7.4f}  {'':>8}  {'':>17}  {'':>5}  "
                     + "  ".join(f"{v:9.4f}" for v in base["per_class"]) + "  trivial baseline")
    previous = None
    for s in steps:
        gain, cv = "", ""
        if "oof_gain" in s:
            gain = f"{s['oof_gain']:+8.4f}"
            if s.get("cv_gain") is not None:
                cv = f"{s['cv_gain']:+.4f} ± {s['cv_se']:.4f}"
        tried = "/".join(str(t) for t in s.get("tried", [])) if any(s.get("tried", [])) else ""
        lines.append(f"[tune] {s['step']:<{width}}  {s['oof_score']:7.4f}  {gain:>8}  {cv:>17}  {tried:>5}  "
                     + "  ".join(f"{v:9.4f}" for v in s["per_class"]) + "  " + step_decision(s, previous, names))
        previous = s["oof_score"]
    lines += [f"[tune] {line}" for line in summary_lines(result)]
    for c in ChainParams.from_dict(result).classes:
        lines.append(f"[tune] {c.describe()}")
    return "\n".join(lines)


def step_decision(step: dict[str, Any], previous: float | None, names: list[str]) -> str:
    """'kept' / 'dropped: reason' (per class when the classes differ); for a file without decisions, whether
    the step raised the OOF score."""
    kept = step.get("kept")
    if not isinstance(kept, list) or not kept:
        if previous is None:
            return ""
        return "" if step["oof_score"] > previous + 1e-12 else "(no gain: kept neutral)"
    reasons = step.get("reason") or [""] * len(kept)
    if len(set(kept)) == 1 and len(set(reasons)) == 1:
        return ("kept: " if kept[0] else "dropped: ") + reasons[0]
    return "; ".join(f"{n} {'kept' if k else 'dropped'} ({r})" for n, k, r in zip(names, kept, reasons))


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The rule and the cross-validated final score against all-empty (with a warning within 1 SE)."""
    cv = result.get("crossval")
    if not isinstance(cv, dict):
        return []
    lines = [f"rule: {cv.get('rule', '')}", f"cross-validated over {cv.get('folds', '?')}"]
    if cv.get("cv_score") is not None:
        lines.append(f"cross-validated score of the chain {cv['cv_score']:.4f} (plain 0.5: {cv['cv_score_plain']:.4f},"
                     f" all empty: {cv['cv_score_empty']:.4f}; gain over all empty {cv['cv_gain_over_empty']:+.4f} ± "
                     f"{cv['cv_se_over_empty']:.4f})")
        if cv.get("within_noise_of_empty"):
            lines.append("warning: the final score is within noise (1 SE) of submitting all-empty masks: the "
                         "model has not learnt to beat the trivial baseline")
    return lines
