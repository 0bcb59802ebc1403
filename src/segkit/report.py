"""The ablation report of a trained run: what each step of the leaderboard playbook gained on the out-of-fold
(OOF) predictions, in the competition's own metric.

`segkit report CONFIG` writes `runs/<name>/report.html` — self-contained: tables inline, plots as base64 PNG data
URIs — and prints the same table: the OOF score (adapter.score_class per class, mean over classes, as
post-processing tunes it) of each fold and model at a plain 0.5 threshold, of the ensemble, then after each
post-processing step in chain order as recorded in postprocess.json (`steps`, version 2; a version 1 file gives
default vs tuned), the weight-averaging checkpoints (raw vs averaged validation values from each fold's done.json)
and the pseudo-label round when there is one; then the tuned parameters per class. The HTML adds per-class score
curves versus threshold and a gallery of the worst OOF images after the post-processing chain.

Memory: one class of the ensemble's OOF (N, H, W) is held at a time, as tuning does.
"""
from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from segkit.config import Config
from segkit.errors import TrainingError
from segkit.runs import FoldDir, RunData, RunDir, model_tags, open_run_data

PLAIN = 0.5  # the untuned threshold the fold, model and ensemble rows use
# A metric of per-image counts (adapter.score_counts) is swept at every one of these in one pass; any other
# metric is called once per threshold of the coarser grid.
FINE_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.02, 0.99, 0.02), 2))
COARSE_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.05, 0.96, 0.05), 2))
_PARAM_SKIP = ("name", "oof_score_default", "oof_score_tuned")


@dataclass
class Row:
    """One line of the ablation table: a stage and its OOF score (mean over classes and per class)."""

    section: str  # baseline | fold | model | ensemble | step | averaging | pseudo
    label: str
    score: float | None
    per_class: list[float | None] = field(default_factory=list)
    note: str = ""
    delta: float | None = None  # gain over the row before it in the chain (ensemble over model, step over step)
    oof_gain: float | None = None  # a step's gain tuned and scored on all OOF (kept or not)
    cv_gain: float | None = None  # a step's cross-validated gain (tuned on the other folds) ...
    cv_se: float | None = None  # ... and its standard error over folds

    def cells(self, n_classes: int) -> list[str]:
        """The row's table cells: stage, score, per class, Δ, OOF-tuned gain, CV gain ± SE, note."""
        cv = "" if self.cv_gain is None else f"{self.cv_gain:+.4f} ± {self.cv_se or 0.0:.4f}"
        return [self.label, _num(self.score), *(_num(v) for v in _pad(self.per_class, n_classes)),
                _signed(self.delta), _signed(self.oof_gain), cv, self.note]


@dataclass
class Curve:
    """One class's OOF score versus threshold (threshold only: no min area, no gate)."""

    name: str
    thresholds: list[float]
    scores: list[float]
    tuned_threshold: float | None
    tuned_score: float | None  # the class's score after the whole chain
    vectorised: bool


@dataclass
class GalleryItem:
    """One of the worst OOF images: raw image, truth and prediction after the chain (H, W, C), its score."""

    id: str
    score: float
    image: np.ndarray
    truth: np.ndarray
    pred: np.ndarray


@dataclass
class Report:
    """Everything the report shows; `table()` is the printed text, `html()` the page."""

    name: str
    metric: str
    classes: list[str]
    rows: list[Row]
    params: list[dict[str, Any]]
    postprocess_version: int
    postprocess_file: str = ""
    notes: list[str] = field(default_factory=list)
    curves: list[Curve] = field(default_factory=list)
    gallery: list[GalleryItem] = field(default_factory=list)

    def head(self) -> list[str]:
        return ["stage", "score", *self.classes, "Δ", "OOF-tuned gain", "CV gain ± SE", "note"]

    def table(self) -> str:
        """The ablation table and the tuned parameters as plain text."""
        head = self.head()
        body = [r.cells(len(self.classes)) for r in self.rows]
        lines = [f"[report] {self.name}: OOF score per stage, mean over {len(self.classes)} "
                 f"class{'es' if len(self.classes) != 1 else ''} (folds, models and ensemble at threshold {PLAIN}; "
                 f"metric: {self.metric.rstrip('.') or 'the competition metric'})"]
        lines += ["  " + line for line in _text_table(head, body)]
        if self.params:
            keys = _param_keys(self.params)
            lines.append("[report] tuned post-processing per class:")
            lines += ["  " + line for line in _text_table(
                ["class", *keys], [[p.get("name", ""), *(_param(p.get(k)) for k in keys)] for p in self.params])]
        lines += [f"[report] note: {n}" for n in self.notes]
        return "\n".join(lines)

    def html(self) -> str:
        """A self-contained HTML page: tables inline, plots embedded as PNG data URIs."""
        from segkit import plots

        e = html.escape
        parts = [
            "<!doctype html>", "<html lang='en'><head><meta charset='utf-8'>",
            f"<title>segkit report: {e(self.name)}</title>", f"<style>{_CSS}</style></head><body>",
            f"<h1>segkit report: {e(self.name)}</h1>",
            f"<p>Metric: {e(self.metric or 'the competition metric')} — per class, mean over classes. "
            f"Folds, models and the ensemble at threshold {PLAIN}; then each post-processing step in chain order "
            f"({e(self.postprocess_file)} version {self.postprocess_version}).</p>",
            "<h2>Ablation on out-of-fold predictions</h2>",
            _html_table(self.head(), [r.cells(len(self.classes)) for r in self.rows], [r.section for r in self.rows]),
        ]
        if self.params:
            keys = _param_keys(self.params)
            parts += ["<h2>Tuned post-processing per class</h2>",
                      _html_table(["class", *keys], [[p.get("name", ""), *(_param(p.get(k)) for k in keys)]
                                                     for p in self.params])]
        if self.notes:
            parts.append("<ul class='notes'>" + "".join(f"<li>{e(n)}</li>" for n in self.notes) + "</ul>")
        if self.curves:
            how = ("one pass over the pixel counts" if all(c.vectorised for c in self.curves)
                   else "the metric at each threshold")
            parts += ["<h2>Score versus threshold</h2>",
                      f"<p>OOF score of the ensemble per class with the threshold alone (no minimum area, no gate; "
                      f"{e(how)}). Dashed: the tuned threshold; dotted: the score after the whole chain.</p>",
                      _img(plots.threshold_curves(self.curves), "score versus threshold per class")]
        if self.gallery:
            parts += [f"<h2>The {len(self.gallery)} worst OOF images</h2>",
                      "<p>Per image score (mean over classes) after the post-processing chain; raw bands as "
                      "RGB/false colour, truth and prediction with one colour per class.</p>",
                      _img(plots.gallery([(g.id, g.score, g.image, g.truth, g.pred) for g in self.gallery],
                                         self.classes), "worst out-of-fold images")]
        parts.append("</body></html>")
        return "\n".join(parts)


# --- building the report -------------------------------------------------------------------------------------

def check_trained(cfg: Config) -> RunDir:
    """The run folder, when every fold of every model is trained and the post-processing tuned; else a
    TrainingError saying what to run."""
    rd = RunDir.of(cfg)
    tags = model_tags(cfg)
    folds = [rd.fold(t, k) for t in tags for k in range(cfg.train.folds)]
    missing = [f.path.relative_to(rd.path).as_posix() for f in folds if not f.is_done()]
    if len(missing) == len(folds):
        raise TrainingError(f"{rd.path}: run not trained yet (no finished fold); run `segkit train CONFIG` first")
    if missing:
        more = " ..." if len(missing) > 3 else ""
        raise TrainingError(f"{rd.path}: not every fold is trained ({', '.join(missing[:3])}{more} missing); "
                            "finish training with `segkit train CONFIG` first")
    if not rd.postprocess.is_file():
        raise TrainingError(f"{rd.postprocess}: post-processing not tuned yet; run `segkit tune CONFIG` first")
    return rd


def build_report(cfg: Config, run: RunData | None = None, curves: bool = True, worst: int = 8,
                 quiet: bool = True) -> Report:
    """Score every stage of the run on its OOF predictions. `curves` adds the score-versus-threshold sweeps,
    `worst` the gallery's size (0: none); both off gives the printed table only (what `segkit train` shows)."""
    rd = check_trained(cfg)
    run = run or open_run_data(cfg, quiet=quiet)
    adapter, classes = run.adapter, list(run.adapter.classes)
    pp = rd.read_postprocess(classes)
    version = int(pp.get("version", 1))
    n, masks = len(run.samples), run.cache.masks
    sub_h, sub_w = adapter.submission_size(run.samples[0])
    area_scale = (masks.shape[1] * masks.shape[2]) / float(sub_h * sub_w)  # min_area is in submission pixels
    report = Report(cfg.name, str(pp.get("metric", "")), classes, [], _params(pp), version, rd.postprocess.name)
    report.rows += _fold_rows(cfg, run)

    plain: list[float] = []
    chained: list[float] = []
    per_image = np.zeros((n, len(classes)), np.float64) if worst > 0 else None
    for c, name in enumerate(classes):
        oof = load_class(cfg, n, c)
        truth = np.ascontiguousarray(masks[..., c])
        plain.append(float(adapter.score_class(truth, (oof.probs > PLAIN).astype(np.uint8))))
        if curves:
            grid, scores, vec = threshold_sweep(adapter, truth, oof.probs)
            row = pp["classes"][c]
            report.curves.append(Curve(name, grid, scores, _float(row.get("threshold")),
                                       _step_class_score(pp, c), vec))
        if per_image is not None:
            pred = chain_class(pp, c, oof, area_scale)
            chained.append(float(adapter.score_class(truth, pred)))
            per_image[:, c] = [adapter.score_class(truth[i:i + 1], pred[i:i + 1]) for i in range(n)]
        del oof
    models = [r.score for r in report.rows if r.section == "model" and r.score is not None]
    ensemble = Row("ensemble", _ensemble_label(cfg), float(np.mean(plain)), plain, _ensemble_note(cfg))
    if len(models) > 1:
        ensemble.delta = ensemble.score - max(models)
        ensemble.note = "; ".join(x for x in (ensemble.note, "Δ: over the best model") if x)
    report.rows.append(ensemble)
    report.rows += step_rows(pp, ensemble.score)
    report.rows[:0] = baseline_rows(pp)
    report.notes += crossval_notes(pp)
    report.rows += averaging_rows(cfg)
    report.rows += pseudo_rows(cfg, pp)

    if per_image is not None:
        recorded = _float(pp.get("oof_score_tuned"))
        again = float(np.mean(chained))
        if recorded is not None and abs(again - recorded) > 1e-6:
            report.notes.append(f"the chain re-applied to today's OOF scores {again:.4f}, {rd.postprocess.name} records "
                                f"{recorded:.4f}: the OOF or the file changed since tuning (run `segkit tune CONFIG`)")
        report.gallery = _gallery(cfg, run, pp, per_image, worst, area_scale)
    return report


def write_report(cfg: Config, worst: int = 8, quiet: bool = False) -> Path:
    """Build the full report, write runs/<name>/report.html atomically, print the table (unless quiet) and
    return the page's path."""
    from segkit.data.io import atomic_write

    report = build_report(cfg, worst=worst, quiet=quiet)
    path = RunDir.of(cfg).report
    with atomic_write(path) as fh:
        fh.write(report.html())
    if not quiet:
        print(report.table())
        print(f"[report] written: {path}")
    return path


def print_table(cfg: Config, run: RunData | None = None) -> None:
    """Print the ablation table (no plots, no gallery): what `segkit train` ends with."""
    print(build_report(cfg, run, curves=False, worst=0).table(), flush=True)


# --- OOF of one class ------------------------------------------------------------------------------------------

@dataclass
class OofClass:
    """One class of the ensemble's OOF: probabilities (N, H, W), the gate's probabilities (the same object when
    every model gates) and the classification heads' (N,) probabilities, or None."""

    probs: np.ndarray
    gate_probs: np.ndarray
    label: np.ndarray | None


def load_class(cfg: Config, n_samples: int, c: int) -> OofClass:
    """The ensemble's OOF for class c exactly as post-processing tunes on it (postprocess.load_oof_class: the
    ensemble's weights, positive-only models and heads), or the plain mean of the models' OOF."""
    from segkit import postprocess

    load = getattr(postprocess, "load_oof_class", None)
    if load is None:
        probs = postprocess.load_oof(cfg, n_samples, channel=c)
        return OofClass(probs, probs, None)
    got = load(cfg, n_samples, c)
    return OofClass(got.probs, got.gate_probs if got.gate_probs is not None else got.probs, got.label)


def chain_class(pp: dict[str, Any], c: int, oof: OofClass, area_scale: float) -> np.ndarray:
    """Class c's OOF masks (N, H, W) uint8 after the tuned chain: postprocess.apply_chain when it exists, else
    threshold and minimum area (postprocess.apply), with pixel counts scaled to the OOF's resolution."""
    from segkit import postprocess

    row = oof_class_params(pp["classes"][c], area_scale)
    out = np.empty(oof.probs.shape, np.uint8)
    chain = getattr(postprocess, "apply_chain", None)
    for i in range(len(out)):
        if chain is not None:
            gate = oof.gate_probs[i][..., None] if oof.gate_probs is not None else None
            label = oof.label[i:i + 1] if oof.label is not None else None
            out[i] = chain(oof.probs[i][..., None], {"classes": [row]}, gate_probs=gate, label=label)[..., 0]
        else:
            out[i] = postprocess.apply(oof.probs[i][..., None], [float(row["threshold"])],
                                       [int(row["min_area"])])[..., 0]
    return out


def oof_class_params(row: dict[str, Any], area_scale: float) -> dict[str, Any]:
    """One class's postprocess.json row with its pixel counts — min_area, top_k, a top-k gate's k, an area
    gate's cut — from submission pixels to the OOF's (training) resolution, as tuning scaled them."""
    out = dict(row)
    out["min_area"] = int(round(float(row.get("min_area") or 0) * area_scale))
    if row.get("top_k") is not None:
        out["top_k"] = max(1, int(round(float(row["top_k"]) * area_scale)))
    gate = row.get("gate")
    if isinstance(gate, dict):
        gate = dict(gate)
        if gate.get("kind") == "topk" and gate.get("k") is not None:
            gate["k"] = max(1, int(round(float(gate["k"]) * area_scale)))
        elif gate.get("kind") == "area":
            gate["cut"] = float(gate["cut"]) * area_scale
        out["gate"] = gate
    return out


# --- the rows ---------------------------------------------------------------------------------------------------

def _fold_rows(cfg: Config, run: RunData) -> list[Row]:
    """Per model: each fold's OOF score on its own validation images and the model's score over all folds, at
    threshold 0.5. One class at a time: its truth and one model's binarised OOF (N, H, W) uint8 are held."""
    rd = RunDir.of(cfg)
    adapter, masks, n = run.adapter, run.cache.masks, len(run.samples)
    n_classes = len(adapter.classes)
    tags = model_tags(cfg)
    folds = {tag: [rd.fold(tag, k) for k in range(cfg.train.folds)] for tag in tags}
    fold_scores = {tag: [[0.0] * n_classes for _ in folds[tag]] for tag in tags}
    model_scores = {tag: [0.0] * n_classes for tag in tags}
    sizes: dict[tuple[str, int], int] = {}
    for c in range(n_classes):
        truth = np.ascontiguousarray(masks[..., c])
        for tag in tags:
            whole = np.zeros(truth.shape, np.uint8)
            for j, fold in enumerate(folds[tag]):
                probs, index = read_fold_oof(fold)
                pred = (np.asarray(probs[..., c]) > PLAIN).astype(np.uint8)
                whole[index] = pred
                sizes[(tag, j)] = len(index)
                fold_scores[tag][j][c] = float(adapter.score_class(truth[index], pred))
            model_scores[tag][c] = float(adapter.score_class(truth, whole))
    rows: list[Row] = []
    for tag in tags:
        for j, fold in enumerate(folds[tag]):
            rows.append(Row("fold", f"{tag} fold {fold.k}", float(np.mean(fold_scores[tag][j])), fold_scores[tag][j],
                            f"{sizes[(tag, j)]} val images"))
        rows.append(Row("model", f"{tag} (all folds)", float(np.mean(model_scores[tag])), model_scores[tag]))
    return rows


def read_fold_oof(fold: FoldDir) -> tuple[np.ndarray, np.ndarray]:
    """One fold's OOF probabilities (memory-mapped) and sample indices; TrainingError naming a damaged file."""
    try:
        probs = np.load(fold.oof, mmap_mode="r")
        index = np.load(fold.oof_index)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{fold.path}: out-of-fold predictions unreadable ({' '.join(str(exc).split())[:120]}); "
                            f"run {fold.restart_hint()}") from None
    if index.ndim != 1 or len(index) != len(probs) or probs.ndim != 4:
        raise TrainingError(f"{fold.oof_index}: does not match {fold.oof.name}; run {fold.restart_hint()}")
    return probs, index


def _ensemble_label(cfg: Config) -> str:
    from segkit.runs import ensembled_tags

    tags = ensembled_tags(cfg)
    return f"ensemble of {'+'.join(tags)} ({PLAIN})" if len(tags) > 1 else f"ensemble ({PLAIN})"


def _ensemble_note(cfg: Config) -> str:
    """The ensemble's weights and positive-only models when they are not plain equal weights (segkit.oof)."""
    try:
        from segkit.oof import ensemble_members
    except ImportError:
        return ""
    members = ensemble_members(cfg)
    bits = []
    if len({m.weight for m in members}) > 1:
        bits.append("weights " + ", ".join(f"{m.tag} {m.weight:g}" for m in members))
    if any(m.positive_only for m in members):
        bits.append("positive-only " + ", ".join(m.tag for m in members if m.positive_only))
    return "; ".join(bits)


def step_rows(pp: dict[str, Any], ensemble: float | None = None) -> list[Row]:
    """The post-processing steps in chain order as postprocess.json records them: its `steps` (version 2) with
    Δ over the step before, and where recorded the OOF-tuned gain, the CV gain ± SE and the decision; else
    (version 1) the plain threshold and the tuned threshold + minimum area. The "plain (0.5)" step repeats the
    ensemble row (`ensemble`, its score) and is left out when it does."""
    steps = pp.get("steps")
    if isinstance(steps, list) and steps:
        rows: list[Row] = []
        final = {str(c.get("name", i)): c for i, c in enumerate(pp.get("classes") or [])}
        before = ensemble
        later = [s for s in steps if isinstance(s, dict)]
        for j, s in enumerate(later):
            score = _float(s.get("oof_score"))
            if (j == 0 and s.get("step") == f"plain ({PLAIN})" and ensemble is not None and score is not None
                    and abs(score - ensemble) < 5e-5):
                before = score
                continue
            plain = s.get("step") == f"plain ({PLAIN})"  # the starting point: nothing of it to replace
            row = Row("step", f"+ {s.get('step', '?')}", score, [_float(v) for v in s.get("per_class") or []],
                      _step_note(s, before, {} if plain else final, later[j + 1:]))
            row.delta = None if score is None or before is None else score - before
            row.oof_gain, row.cv_gain, row.cv_se = (_float(s.get("oof_gain")), _float(s.get("cv_gain")),
                                                    _float(s.get("cv_se")))
            rows.append(row)
            before = score
        return rows
    cls = pp["classes"]
    return [
        Row("step", f"+ plain ({PLAIN})", _float(pp.get("oof_score_default")),
            [_float(c.get("oof_score_default")) for c in cls]),
        Row("step", "+ threshold + min area (tuned)", _float(pp.get("oof_score_tuned")),
            [_float(c.get("oof_score_tuned")) for c in cls]),
    ]


def _step_note(step: dict[str, Any], before: float | None, final: dict[str, dict[str, Any]],
               later: list[dict[str, Any]]) -> str:
    """A step's decision (kept/dropped and why, values tried) and the parameters it settled on, each marked
    when a later step replaced it."""
    kept = step.get("kept")
    score = _float(step.get("oof_score"))
    if isinstance(kept, list) and kept:
        reasons = step.get("reason") or [""] * len(kept)
        tried = step.get("tried") or []
        names = list(final) or [str(i) for i in range(len(kept))]
        if len(set(kept)) == 1 and len(set(reasons)) == 1:
            decision = ("kept: " if kept[0] else "dropped: ") + str(reasons[0])
        else:
            decision = "; ".join(f"{n} {'kept' if k else 'dropped'}" for n, k in zip(names, kept))
        if any(tried):
            decision += f" ({'/'.join(str(t) for t in tried)} values tried)"
        if not any(kept):
            return decision
        return f"{decision}; {_step_params(step.get('params'), final, later)}"
    if before is not None and score is not None and score <= before + 1e-12:
        return "no gain: kept neutral"
    return _step_params(step.get("params"), final, later)


def _step_params(params: Any, final: dict[str, dict[str, Any]] | None = None,
                 later: Sequence[dict[str, Any]] = ()) -> str:
    """A step's parameters per class, once when every class has the same; a value a later step replaced is
    marked with what is in force in the end and which step set it."""
    if not isinstance(params, dict) or not params:
        return ""
    shown = {}
    for name, p in params.items():
        text = _param(p)
        if isinstance(p, dict) and final and name in final:
            changed = [k for k, v in p.items() if k in final[name] and final[name][k] != v]
            if changed:
                by = next((str(s.get("step")) for s in reversed(list(later)) if _sets(s, name, changed, final[name])),
                          "a later step")
                text += " (replaced by " + by + ": " + " ".join(f"{k}={_param(final[name][k])}" for k in changed) + ")"
        shown[name] = text
    if len(set(shown.values())) == 1:
        return f"{next(iter(shown.values()))} (every class)"
    return "; ".join(f"{name}: {v}" for name, v in shown.items())


def _sets(step: dict[str, Any], name: str, keys: Sequence[str], final: dict[str, Any]) -> bool:
    """Whether `step` (kept for class `name`, or a file without decisions) set one of `keys` to its final value."""
    params = step.get("params")
    mine = params.get(name) if isinstance(params, dict) else None
    if not isinstance(mine, dict):
        return False
    kept = step.get("kept")
    names = list(params)
    if isinstance(kept, list) and name in names and names.index(name) < len(kept) and not kept[names.index(name)]:
        return False
    return any(k in mine and mine[k] == final.get(k) for k in keys)


def baseline_rows(pp: dict[str, Any]) -> list[Row]:
    """The trivial baseline, all-empty masks (per class), when postprocess.json records it."""
    base = pp.get("baseline")
    if not isinstance(base, dict) or _float(base.get("oof_score")) is None:
        return []
    return [Row("baseline", "all empty (trivial baseline)", _float(base["oof_score"]),
                [_float(v) for v in base.get("per_class") or []], "every mask empty")]


def crossval_notes(pp: dict[str, Any]) -> list[str]:
    """The rule the steps were judged by, the folds, and a warning when the cross-validated final score is
    within one standard error of all-empty masks."""
    from segkit.postprocess.tuning import summary_lines

    return summary_lines(pp)


def _step_class_score(pp: dict[str, Any], c: int) -> float | None:
    steps = pp.get("steps")
    if isinstance(steps, list) and steps and isinstance(steps[-1], dict):
        per = steps[-1].get("per_class") or []
        return _float(per[c]) if c < len(per) else None
    return _float(pp["classes"][c].get("oof_score_tuned"))


_RAW_KEYS = ("raw", "before", "val_raw", "raw_val", "raw_best", "best_raw")
_AVG_KEYS = ("averaged", "after", "val_averaged", "averaged_val", "averaged_best", "best_averaged")


def averaging_rows(cfg: Config) -> list[Row]:
    """EMA/SWA: per fold whose done.json records `averaging`, the monitored validation value of the raw and of
    the averaged weights (the Keras validation metric, not the competition's)."""
    rd = RunDir.of(cfg)
    rows = []
    for tag in model_tags(cfg):
        for k in range(cfg.train.folds):
            fold = rd.fold(tag, k)
            if not fold.is_done():
                continue
            done = fold.read_done()
            avg = done.get("averaging")
            if not isinstance(avg, dict) or not avg:
                continue
            kind = str(avg.get("kind") or avg.get("method") or "averaging").upper()
            raw = next((_float(avg[key]) for key in _RAW_KEYS if key in avg), None)
            new = next((_float(avg[key]) for key in _AVG_KEYS if key in avg), None)
            monitor = avg.get("monitor") or done.get("monitor") or "validation"
            rest = {key: v for key, v in avg.items()
                    if key not in (*_RAW_KEYS, *_AVG_KEYS, "kind", "method", "monitor") and _scalar(v)}
            note = f"{monitor}: raw {_num(raw)} -> averaged {_num(new)}"
            if new is not None and raw is not None:
                note += f" ({new - raw:+.4f})"
            if rest:
                note += "; " + ", ".join(f"{key} {_param(v)}" for key, v in rest.items())
            rows.append(Row("averaging", f"{kind} {tag} fold {k}", None, [], note))
    return rows


def pseudo_rows(cfg: Config, pp: dict[str, Any]) -> list[Row]:
    """The pseudo-label round: when this run trained on one (train.pseudo), its score with what the round kept
    and, when the run the round came from is tuned, that run's score as the baseline; when rounds were written
    from this run (runs/<name>/pseudo/round_<r>), what each kept. Nothing when there is no round."""
    from segkit.runs import pseudo_round_of

    rows = []
    used = pseudo_round_of(cfg) if getattr(cfg.train, "pseudo", None) else None
    if used is not None and used.is_complete():
        data = used.read_report()
        note = _kept(data)
        source = used.source
        if source.postprocess.is_file() and source.path != RunDir.of(cfg).path:
            base = _float(source.read_postprocess().get("oof_score_tuned"))
            mine = _float(pp.get("oof_score_tuned"))
            if base is not None and mine is not None:
                note += f"; without it (run {source.path.name}): {base:.4f} ({mine - base:+.4f})"
        rows.append(Row("pseudo", f"+ pseudo-label round {data.get('round', used.round)}",
                        _float(pp.get("oof_score_tuned")), [_float(c.get("oof_score_tuned")) for c in pp["classes"]],
                        note))
    for rnd in RunDir.of(cfg).pseudo_rounds():
        if not rnd.is_complete():
            continue
        try:
            data = rnd.read_report()
        except TrainingError as exc:
            rows.append(Row("pseudo", f"pseudo-label round {rnd.round} written", None, [], str(exc)))
            continue
        rows.append(Row("pseudo", f"pseudo-label round {rnd.round} written", None, [],
                        _kept(data) + f"; train on it with train.pseudo={cfg.name}/{rnd.round}"))
    return rows


def _kept(data: dict[str, Any]) -> str:
    """What a pseudo-label round kept: overall and the non-empty masks per class."""
    note = f"kept {data.get('n_kept', '?')} of {data.get('n_test', '?')} test images"
    per = [c for c in data.get("classes") or [] if isinstance(c, dict)]
    if per:
        note += " (non-empty: " + ", ".join(f"{c.get('name', '?')} {c.get('kept_nonempty', '?')}" for c in per) + ")"
    return note


def _params(pp: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in _PARAM_SKIP[1:]} for row in pp["classes"]]


def _param_keys(params: Sequence[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for p in params:
        keys += [k for k in p if k not in _PARAM_SKIP and k not in keys]
    return keys


# --- the sweep ----------------------------------------------------------------------------------------------

def threshold_sweep(adapter, truth: np.ndarray, probs: np.ndarray,
                    thresholds: Sequence[float] | None = None) -> tuple[list[float], list[float], bool]:
    """(thresholds, scores, vectorised): the adapter's metric of `probs > t` against `truth` (N, H, W) for each t.
    When the metric is a function of per-image counts (the adapter's `score_counts`, as post-processing's search
    uses it), one histogram pass over the pixels gives every threshold of a fine grid at once; otherwise
    score_class is called once per threshold of a coarser grid."""
    fn = _count_metric(adapter)
    if fn is not None:
        grid = sorted({*(list(thresholds) if thresholds is not None else FINE_THRESHOLDS), PLAIN})
        tp, pos, true_n = pixel_counts(truth, probs, grid)
        scores = np.asarray(fn(tp.T.astype(np.float64), pos.T.astype(np.float64), true_n.astype(np.float64)))
        scores = scores.reshape(len(grid))
        exact = adapter.score_class(truth, (probs > np.float32(PLAIN)).astype(np.uint8))
        if abs(scores[grid.index(PLAIN)] - exact) <= 1e-6:  # else score_counts is not this metric: call it
            return grid, [float(v) for v in scores], True
    grid = list(thresholds) if thresholds is not None else list(COARSE_THRESHOLDS)
    scores = [float(adapter.score_class(truth, (probs > np.float32(t)).astype(np.uint8))) for t in grid]
    return grid, scores, False


def _count_metric(adapter):
    """The adapter's per-image count metric when post-processing knows one for it (see postprocess.search)."""
    try:
        from segkit.postprocess.search import count_metric
    except ImportError:
        return None
    return count_metric(adapter)


def pixel_counts(truth: np.ndarray, probs: np.ndarray, thresholds: Sequence[float],
                 chunk: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image and threshold: true positives (N, T), predicted positives (N, T) of `probs > t`, and the true
    pixels (N,), from one histogram of each image's probabilities over the threshold bins (chunks of images)."""
    t32 = np.asarray(thresholds, np.float32)
    if np.any(np.diff(t32) <= 0):
        raise ValueError("thresholds must increase")
    n, bins = len(probs), len(t32) + 1
    tp = np.zeros((n, len(t32)), np.int64)
    pos = np.zeros((n, len(t32)), np.int64)
    true_n = np.zeros(n, np.int64)
    for s in range(0, n, chunk):
        p = np.asarray(probs[s:s + chunk], np.float32).reshape(min(chunk, n - s), -1)
        t = np.asarray(truth[s:s + chunk]).reshape(len(p), -1).astype(bool)
        b = np.searchsorted(t32, p, side="left")  # how many thresholds lie below p: positive for those
        offset = (np.arange(len(p)) * bins)[:, None]
        all_hist = np.bincount((b + offset).ravel(), minlength=len(p) * bins).reshape(len(p), bins)
        true_hist = np.bincount((b + offset)[t], minlength=len(p) * bins).reshape(len(p), bins)
        # positive at threshold j <=> bin > j: a reversed cumulative sum from the top bin
        pos[s:s + len(p)] = np.cumsum(all_hist[:, ::-1], axis=1)[:, ::-1][:, 1:]
        tp[s:s + len(p)] = np.cumsum(true_hist[:, ::-1], axis=1)[:, ::-1][:, 1:]
        true_n[s:s + len(p)] = t.sum(1)
    return tp, pos, true_n


# --- the gallery --------------------------------------------------------------------------------------------------

def _gallery(cfg: Config, run: RunData, pp: dict[str, Any], per_image: np.ndarray, worst: int,
             area_scale: float) -> list[GalleryItem]:
    """The `worst` images by mean per-image score over classes after the chain (a second pass, one class at a
    time, keeps only their masks)."""
    mean = per_image.mean(1)
    picks = np.argsort(mean, kind="stable")[:worst]
    if not len(picks):
        return []
    masks = run.cache.masks
    preds = np.zeros((len(picks),) + masks.shape[1:], np.uint8)
    for c in range(len(run.adapter.classes)):
        oof = load_class(cfg, len(run.samples), c)
        sub = OofClass(oof.probs[picks], oof.gate_probs[picks] if oof.gate_probs is not None else None,
                       oof.label[picks] if oof.label is not None else None)
        preds[..., c] = chain_class(pp, c, sub, area_scale)
        del oof
    return [GalleryItem(run.samples[i].id, float(mean[i]), np.asarray(run.cache.images[i]), np.asarray(masks[i]),
                        preds[j]) for j, i in enumerate(picks)]


# --- formatting ---------------------------------------------------------------------------------------------------

def _float(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
        return None
    v = float(v)
    return None if math.isnan(v) else v


def _scalar(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool)) or v is None


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _signed(v: float | None) -> str:
    return "" if v is None else f"{v:+.4f}"


def _param(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return " ".join(f"{k}={_param(x)}" for k, x in v.items() if x is not None) or "-"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_param(x) for x in v) + "]"
    return str(v)


def _pad(values: Sequence[float | None], n: int) -> list[float | None]:
    values = list(values)
    return values[:n] if len(values) >= n else values + [None] * (n - len(values))


def _text_table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    return ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in [head, *rows]]


def _html_table(head: list[str], rows: list[list[str]], classes: Sequence[str] = ()) -> str:
    e = html.escape
    out = ["<table>", "<tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
    for i, r in enumerate(rows):
        cls = f" class='{e(classes[i])}'" if i < len(classes) else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{e(str(v))}</td>" for v in r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _img(png: bytes, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"


_CSS = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}"
        "td:first-child,th:first-child,td:last-child{text-align:left}tr.step{background:#eef5ff}"
        "tr.ensemble{background:#f3f3f3;font-weight:bold}tr.averaging,tr.pseudo{background:#f7fff0}"
        "img{max-width:100%}")
