"""Tune the post-processing chain on OOF predictions, class by class, and save it as postprocess.json v2.

Steps in chain order, each kept only when it improves the OOF score (else neutral: no gate, no top threshold):
"plain (0.5)" (threshold 0.5, no min area) → "threshold" → "min area" → "gate" → "triplet". The score after each
step is saved under `steps` and printed as a table.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from segkit.config import Config
from segkit.errors import ConfigError, TrainingError
from segkit.oof import OofClass, load_oof_class
from segkit.postprocess.search import (ClassTables, Scorer, search_gate, search_min_area, search_threshold,
                                       search_triplet)
from segkit.runs import RunData, RunDir, ensembled_tags, open_run_data

STEP_NAMES = ("plain (0.5)", "threshold", "min area", "gate", "triplet")


def load_oof(cfg: Config, n_samples: int, channel: int | None = None) -> np.ndarray:
    """Out-of-fold probabilities of every training sample, averaged over the models predict ensembles
    (predict.models, else all): (N, H, W, C), or (N, H, W) for one `channel` (tuning goes class by class so
    memory holds one class at a time)."""
    rd = RunDir.of(cfg)
    tags = ensembled_tags(cfg)
    total = None
    for tag in tags:
        covered = np.zeros(n_samples, dtype=bool)
        for k in range(cfg.train.folds):
            fold = rd.fold(tag, k)
            if not fold.oof.is_file():
                raise TrainingError(f"{fold.path}: no out-of-fold predictions; finish training first (segkit train)")
            probs, index = _read_oof(fold)
            if channel is not None:
                probs = probs[..., channel]
            if total is None:
                total = np.zeros((n_samples,) + probs.shape[1:], dtype=np.float32)
            total[index] += probs
            covered[index] = True
        if not covered.all():
            raise TrainingError(f"{rd.path / tag}: out-of-fold predictions miss {int((~covered).sum())} samples")
    total /= len(tags)
    return total


def _read_oof(fold) -> tuple[np.ndarray, np.ndarray]:
    """One fold's OOF probabilities (memory-mapped) and sample indices; TrainingError naming a damaged file."""
    try:
        probs = np.load(fold.oof, mmap_mode="r")
        index = np.load(fold.oof_index)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{fold.path}: out-of-fold predictions unreadable ({' '.join(str(exc).split())[:120]}); "
                            f"run {fold.restart_hint()}") from None
    if index.ndim != 1 or len(index) != len(probs):
        raise TrainingError(f"{fold.oof_index}: does not match {fold.oof.name}; run {fold.restart_hint()}")
    return probs, index


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


def tune_class(adapter, truth: np.ndarray, oof: OofClass, cfg: Config, area_scale: float,
               sub_pixels: int) -> tuple[dict[str, Any], list[tuple[float, dict[str, Any]]]]:
    """Tune one class's chain → (its postprocess.json row, [(score, params) after each step])."""
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
    plain = tab.score(0.5, 0)
    if scorer.counts and not _counts_agree(adapter, scorer, tab, truth, oof.probs):  # then per-image scores
        scorer = Scorer(adapter, truth, counts=False)
        tab = ClassTables(oof.probs, truth, scorer, pc.threshold_grid, top_k, ks, oof.gate_probs, oof.label)
        plain = tab.score(0.5, 0)

    steps: list[tuple[float, dict[str, Any]]] = [(plain, {"threshold": 0.5, "min_area": 0})]
    row: dict[str, Any] = {"threshold": 0.5, "min_area": 0, "gate": None, "top_threshold": None,
                           "top_k": int(pc.top_k)}
    if not pc.tune:
        score = tab.score(pc.threshold, scale(pc.min_area))
        row.update(threshold=float(pc.threshold), min_area=int(pc.min_area))
        steps.append((score, {"threshold": row["threshold"], "min_area": row["min_area"]}))
        return row, steps

    score, b = search_threshold(tab, pc.threshold_grid)
    row["threshold"] = b
    steps.append((score, {"threshold": b}))

    a = 0
    if any(x > 0 for x in areas):
        score, b, a = search_min_area(tab, pc.threshold_grid, areas, b)
    row.update(threshold=b, min_area=unscale[a])
    steps.append((score, {"threshold": b, "min_area": unscale[a]}))

    keep = None
    kinds = _gate_kinds(cfg, oof.label is not None)
    if kinds:
        score, gate, keep = search_gate(tab, b, a, kinds, pc.gate_cut_grid)
        if gate is not None:
            if gate["kind"] == "topk":
                gate["k"] = max(1, round(fractions[ks.index(gate["k"])] * sub_pixels))
            elif gate["kind"] == "area":
                gate["cut"] = float(gate["cut"]) / area_scale
        row["gate"] = gate
    steps.append((score, {"gate": row["gate"]}))

    if pc.triplet:
        score, b, a, top = search_triplet(tab, pc.threshold_grid, areas, pc.top_threshold_grid, b, keep)
        row.update(threshold=b, min_area=unscale[a], top_threshold=top)
    steps.append((score, {"threshold": row["threshold"], "min_area": row["min_area"],
                          "top_threshold": row["top_threshold"], "top_k": row["top_k"]}))
    return row, steps


def tune(cfg: Config, run: RunData | None = None, quiet: bool = False) -> dict:
    """Tune the chain per class on the ensemble's OOF predictions with the competition's metric; save
    postprocess.json v2 (parameters, and the OOF score after each step) and print the step table."""
    run = run or open_run_data(cfg, quiet=quiet)
    masks = run.cache.masks  # memory-mapped (N, H, W, C)
    sub_h, sub_w = run.adapter.submission_size(run.samples[0])
    area_scale = (masks.shape[1] * masks.shape[2]) / float(sub_h * sub_w)  # areas are in submission pixels
    classes, per_step = [], []
    for c, name in enumerate(run.adapter.classes):
        oof = load_oof_class(cfg, len(run.samples), c)
        truth = np.ascontiguousarray(masks[..., c])
        row, steps = tune_class(run.adapter, truth, oof, cfg, area_scale, sub_h * sub_w)
        del oof, truth
        classes.append({"name": name, **row, "oof_score_default": float(steps[0][0]),
                        "oof_score_tuned": float(steps[-1][0])})
        per_step.append(steps)
    names = STEP_NAMES if cfg.postprocess.tune else (STEP_NAMES[0], "config")
    steps_out = []
    for j, step in enumerate(names):
        scores = [float(s[j][0]) for s in per_step]
        steps_out.append({"step": step, "oof_score": float(np.mean(scores)), "per_class": scores,
                          "params": {cls["name"]: s[j][1] for cls, s in zip(classes, per_step)}})
    doc = type(run.adapter).score_class.__doc__
    result = {
        "version": 2,
        "metric": doc.strip().splitlines()[0] if doc else "",
        "classes": classes,
        "steps": steps_out,
        "oof_score_default": float(np.mean([c["oof_score_default"] for c in classes])),
        "oof_score_tuned": float(np.mean([c["oof_score_tuned"] for c in classes])),
    }
    RunDir.of(cfg).write_postprocess(result)
    if not quiet:
        print(format_steps(result))
    return result


def format_steps(result: dict[str, Any]) -> str:
    """The OOF score after each step, overall and per class, with the parameters each step settled on."""
    names = [c["name"] for c in result["classes"]]
    width = max([len(s["step"]) for s in result["steps"]] + [12])
    lines = [f"[tune] {'step':<{width}}  {'OOF':>7}  " + "  ".join(f"{n:>9}" for n in names)]
    previous = None
    for s in result["steps"]:
        mark = "" if previous is None or s["oof_score"] > previous + 1e-12 else "  (no gain: kept neutral)"
        lines.append(f"[tune] {s['step']:<{width}}  {s['oof_score']:7.4f}  "
                     + "  ".join(f"{v:9.4f}" for v in s["per_class"]) + mark)
        previous = s["oof_score"]
    from segkit.postprocess.chain import ChainParams

    for c in ChainParams.from_dict(result).classes:
        lines.append(f"[tune] {c.describe()}")
    return "\n".join(lines)
