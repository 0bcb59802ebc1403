"""The report's rows read from what the run recorded rather than scored again: the post-processing steps and
the all-empty baseline (postprocess.json), the cross-validation notes, weight averaging (each fold's done.json,
an `AveragingRecord`) and pseudo-label rounds. `tuned` below is postprocess.json as `RunDir.read_postprocess`
gives it (version 2 with `steps`, or version 1)."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from segkit.config import Config
from segkit.errors import TrainingError
from segkit.postprocess.tuning import summary_lines
from segkit.report.rendering import PARAM_SKIP, PLAIN, Row, number_text, param_text
from segkit.runs import RunDir, model_tags, pseudo_round_of

PLAIN_STEP = f"plain ({PLAIN})"  # the name postprocess.json gives the chain's starting point


def json_float(value: Any) -> float | None:
    """A recorded number as a float; None for anything else (missing, text, a boolean, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def tuned_params(tuned: dict[str, Any]) -> list[dict[str, Any]]:
    """The tuned parameters of each class (postprocess.json's rows without their scores)."""
    return [{k: v for k, v in row.items() if k not in PARAM_SKIP[1:]} for row in tuned["classes"]]


def final_class_score(tuned: dict[str, Any], c: int) -> float | None:
    """Class c's OOF score after the whole chain as recorded: the last step's, or a version 1 file's tuned."""
    steps = tuned.get("steps")
    if isinstance(steps, list) and steps and isinstance(steps[-1], dict):
        per = steps[-1].get("per_class") or []
        return json_float(per[c]) if c < len(per) else None
    return json_float(tuned["classes"][c].get("oof_score_tuned"))


def baseline_rows(tuned: dict[str, Any]) -> list[Row]:
    """The trivial baseline, all-empty masks (per class), when postprocess.json records it."""
    base = tuned.get("baseline")
    if not isinstance(base, dict) or json_float(base.get("oof_score")) is None:
        return []
    return [Row("baseline", "all empty (trivial baseline)", json_float(base["oof_score"]),
                [json_float(v) for v in base.get("per_class") or []], "every mask empty")]


def crossval_notes(tuned: dict[str, Any]) -> list[str]:
    """The rule the steps were judged by, the folds, and a warning when the cross-validated final score is
    within one standard error of all-empty masks."""
    return summary_lines(tuned)


# --- the post-processing steps -----------------------------------------------------------------------------------

def step_rows(tuned: dict[str, Any], ensemble: float | None = None) -> list[Row]:
    """The post-processing steps in chain order as postprocess.json records them: its `steps` (version 2) with
    Δ over the step before, and where recorded the OOF-tuned gain, the CV gain ± SE and the decision; else
    (version 1) the plain threshold and the tuned threshold + minimum area. The "plain (0.5)" step repeats the
    ensemble row (`ensemble`, its score) and is left out when it does."""
    steps = tuned.get("steps")
    if not (isinstance(steps, list) and steps):
        return _version1_rows(tuned)
    rows: list[Row] = []
    final = {str(c.get("name", i)): c for i, c in enumerate(tuned.get("classes") or [])}
    before = ensemble
    recorded = [s for s in steps if isinstance(s, dict)]
    for j, step in enumerate(recorded):
        score = json_float(step.get("oof_score"))
        plain = step.get("step") == PLAIN_STEP  # the starting point: nothing of it to replace
        if j == 0 and plain and ensemble is not None and score is not None and abs(score - ensemble) < 5e-5:
            before = score
            continue
        row = Row("step", f"+ {step.get('step', '?')}", score, [json_float(v) for v in step.get("per_class") or []],
                  _step_note(step, before, {} if plain else final, recorded[j + 1:]))
        row.delta = None if score is None or before is None else score - before
        row.oof_gain, row.cv_gain, row.cv_se = (json_float(step.get("oof_gain")), json_float(step.get("cv_gain")),
                                                json_float(step.get("cv_se")))
        rows.append(row)
        before = score
    return rows


def _version1_rows(tuned: dict[str, Any]) -> list[Row]:
    """A version 1 file: the plain threshold, then the tuned threshold + minimum area."""
    classes = tuned["classes"]
    return [
        Row("step", f"+ {PLAIN_STEP}", json_float(tuned.get("oof_score_default")),
            [json_float(c.get("oof_score_default")) for c in classes]),
        Row("step", "+ threshold + min area (tuned)", json_float(tuned.get("oof_score_tuned")),
            [json_float(c.get("oof_score_tuned")) for c in classes]),
    ]


def _step_note(step: dict[str, Any], before: float | None, final: dict[str, dict[str, Any]],
               later: list[dict[str, Any]]) -> str:
    """A step's decision (kept/dropped and why, values tried) and the parameters it settled on, each marked
    when a later step replaced it."""
    kept = step.get("kept")
    score = json_float(step.get("oof_score"))
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
        text = param_text(p)
        if isinstance(p, dict) and final and name in final:
            changed = [k for k, v in p.items() if k in final[name] and final[name][k] != v]
            if changed:
                by = next((str(s.get("step")) for s in reversed(list(later)) if _sets(s, name, changed, final[name])),
                          "a later step")
                text += (" (replaced by " + by + ": "
                         + " ".join(f"{k}={param_text(final[name][k])}" for k in changed) + ")")
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


# --- weight averaging and pseudo-labels --------------------------------------------------------------------------

def averaging_rows(cfg: Config) -> list[Row]:
    """EMA/SWA: per finished fold whose done.json records weight averaging, the monitored validation value of
    the raw and of the averaged weights (the Keras validation metric, not the competition's)."""
    rd = RunDir.of(cfg)
    rows = []
    for tag in model_tags(cfg):
        for k in range(cfg.train.folds):
            fold = rd.fold(tag, k)
            record = fold.read_averaging() if fold.is_done() else None
            if record is None:
                continue
            raw, averaged = record.val_raw, record.val_averaged
            note = f"{record.monitor or 'validation'}: raw {number_text(raw)} -> averaged {number_text(averaged)}"
            if averaged is not None and raw is not None:
                note += f" ({averaged - raw:+.4f})"
            settings = record.settings()
            if settings:
                note += "; " + ", ".join(f"{key} {param_text(v)}" for key, v in settings.items())
            rows.append(Row("averaging", f"{record.kind.upper()} {tag} fold {k}", None, [], note))
    return rows


def pseudo_rows(cfg: Config, tuned: dict[str, Any]) -> list[Row]:
    """The pseudo-label round: when this run trained on one (train.pseudo), its score with what the round kept
    and, when the run the round came from is tuned, that run's score as the baseline; when rounds were written
    from this run (runs/<name>/pseudo/round_<r>), what each kept. Nothing when there is no round."""
    rows = []
    used = pseudo_round_of(cfg) if cfg.train.pseudo else None
    if used is not None and used.is_complete():
        data = used.read_report()
        note = _kept(data)
        source = used.source
        if source.postprocess.is_file() and source.path != RunDir.of(cfg).path:
            base = json_float(source.read_postprocess().get("oof_score_tuned"))
            mine = json_float(tuned.get("oof_score_tuned"))
            if base is not None and mine is not None:
                note += f"; without it (run {source.path.name}): {base:.4f} ({mine - base:+.4f})"
        rows.append(Row("pseudo", f"+ pseudo-label round {data.get('round', used.round)}",
                        json_float(tuned.get("oof_score_tuned")),
                        [json_float(c.get("oof_score_tuned")) for c in tuned["classes"]], note))
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
