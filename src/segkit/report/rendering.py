"""What the ablation report shows and how: its rows, curves and worst images (`Report`), the printed table
(`Report.table`) and the self-contained HTML page (`Report.html`: tables inline, plots as base64 PNG data URIs).
Nothing here reads the run; `segkit.report.scoring` fills a Report in."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from segkit import plots

PLAIN = 0.5  # the untuned threshold the fold, model and ensemble rows use
PARAM_SKIP = ("name", "oof_score_default", "oof_score_tuned")  # postprocess.json class keys that are no parameter


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
        return [self.label, number_text(self.score), *(number_text(v) for v in _pad(self.per_class, n_classes)),
                signed_text(self.delta), signed_text(self.oof_gain), cv, self.note]


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
        """The ablation table's column titles."""
        return ["stage", "score", *self.classes, "Δ", "OOF-tuned gain", "CV gain ± SE", "note"]

    def param_table(self) -> tuple[list[str], list[list[str]]]:
        """The tuned parameters per class as (column titles, rows of cells)."""
        keys = _param_keys(self.params)
        return ["class", *keys], [[p.get("name", ""), *(param_text(p.get(k)) for k in keys)] for p in self.params]

    def table(self) -> str:
        """The ablation table and the tuned parameters as plain text."""
        body = [r.cells(len(self.classes)) for r in self.rows]
        lines = [f"[report] {self.name}: OOF score per stage, mean over {len(self.classes)} "
                 f"class{'es' if len(self.classes) != 1 else ''} (folds, models and ensemble at threshold {PLAIN}; "
                 f"metric: {self.metric.rstrip('.') or 'the competition metric'})"]
        lines += ["  " + line for line in _text_table(self.head(), body)]
        if self.params:
            lines.append("[report] tuned post-processing per class:")
            lines += ["  " + line for line in _text_table(*self.param_table())]
        lines += [f"[report] note: {n}" for n in self.notes]
        return "\n".join(lines)

    def html(self) -> str:
        """A self-contained HTML page: tables inline, plots embedded as PNG data URIs."""
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
            parts += ["<h2>Tuned post-processing per class</h2>", _html_table(*self.param_table())]
        if self.notes:
            parts.append("<ul class='notes'>" + "".join(f"<li>{e(n)}</li>" for n in self.notes) + "</ul>")
        parts += self._html_curves() + self._html_gallery()
        parts.append("</body></html>")
        return "\n".join(parts)

    def _html_curves(self) -> list[str]:
        if not self.curves:
            return []
        how = ("one pass over the pixel counts" if all(c.vectorised for c in self.curves)
               else "the metric at each threshold")
        return ["<h2>Score versus threshold</h2>",
                f"<p>OOF score of the ensemble per class with the threshold alone (no minimum area, no gate; "
                f"{html.escape(how)}). Dashed: the tuned threshold; dotted: the score after the whole chain.</p>",
                _img(plots.threshold_curves(self.curves), "score versus threshold per class")]

    def _html_gallery(self) -> list[str]:
        if not self.gallery:
            return []
        return [f"<h2>The {len(self.gallery)} worst OOF images</h2>",
                "<p>Per image score (mean over classes) after the post-processing chain; raw bands as "
                "RGB/false colour, truth and prediction with one colour per class.</p>",
                _img(plots.gallery([(g.id, g.score, g.image, g.truth, g.pred) for g in self.gallery],
                                   self.classes), "worst out-of-fold images")]


# --- formatting ---------------------------------------------------------------------------------------------------

def number_text(value: float | None) -> str:
    """A score as the table shows it: four decimals, "-" when there is none."""
    return "-" if value is None else f"{value:.4f}"


def signed_text(value: float | None) -> str:
    """A gain as the table shows it: signed, four decimals, empty when there is none."""
    return "" if value is None else f"{value:+.4f}"


def param_text(value: Any) -> str:
    """A tuned parameter (number, gate mapping, list) in a few characters: "-" when unset."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return " ".join(f"{k}={param_text(x)}" for k, x in value.items() if x is not None) or "-"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(param_text(x) for x in value) + "]"
    return str(value)


def _param_keys(params: Sequence[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for p in params:
        keys += [k for k in p if k not in PARAM_SKIP and k not in keys]
    return keys


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
