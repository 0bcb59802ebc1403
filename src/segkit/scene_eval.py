"""38-Cloud's official test evaluation: patches stitched into scenes, scored against the whole-scene GTs.

Per test scene, as the dataset's evaluation.m does:
  1. binary patch masks (a submission is already binarised; evaluation.m thresholds probabilities at 12/255),
  2. stitched by (row, col) into a (max_row * P) x (max_col * P) canvas,
  3. cropped to the scene GT's size, centred: offset floor((padded - gt) / 2) per axis (extra pixel bottom/right),
  4. scored for the cloud class over every pixel, no-data margins included: precision, recall, specificity,
     Jaccard = TP / (TP + FP + FN), overall accuracy (all in %),
  5. averaged over scenes (macro, as published for Cloud-Net) and, labelled separately, pooled over all pixels
     of all scenes (micro, as later papers report).
A ratio whose denominator is zero (recall and Jaccard of a scene with no cloud in its GT and none predicted,
precision of a scene with no predicted cloud) is undefined: it is NaN in the per-scene table and left out of
that metric's macro mean, and the report says which scenes were left out. Pooled figures are unaffected.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from segkit import rle
from segkit.data.competitions import cloud38 as fmt
from segkit.data.io import write_image
from segkit.progress import progress
from segkit.storage import atomic_write
from segkit.errors import DataError, RLEError, SubmissionError

METRICS = ("precision", "recall", "specificity", "jaccard", "accuracy")
OFFICIAL_THRESHOLD = 12 / 255  # evaluation.m's binarisation of probability patches


# --- arithmetic ------------------------------------------------------------------------------

def unpad_offset(padded: int, truth: int) -> int:
    """Top (or left) offset of the centred crop from a padded canvas side to the GT side."""
    if padded < truth:
        raise DataError(f"stitched side {padded} px is smaller than the scene ground truth's {truth} px")
    return (padded - truth) // 2


def stitch(patches: Mapping[tuple[int, int], np.ndarray], n_rows: int, n_cols: int, patch_size: int) -> np.ndarray:
    """Place patch (row, col) (1-based) at rows (row-1)*P.. and cols (col-1)*P.. of an
    (n_rows*P) x (n_cols*P) uint8 canvas; positions without a patch stay 0."""
    canvas = np.zeros((n_rows * patch_size, n_cols * patch_size), np.uint8)
    for (row, col), patch in patches.items():
        if not (1 <= row <= n_rows and 1 <= col <= n_cols):
            raise DataError(f"patch at row {row}, col {col} lies outside a {n_rows} x {n_cols} patch grid")
        if patch.shape != (patch_size, patch_size):
            raise DataError(f"patch at row {row}, col {col} is {patch.shape}, expected {patch_size} x {patch_size}")
        canvas[(row - 1) * patch_size: row * patch_size, (col - 1) * patch_size: col * patch_size] = patch
    return canvas


def crop_centre(canvas: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Remove the padding: the centred (H, W) window of the canvas (offsets from unpad_offset)."""
    h, w = shape
    oy, ox = unpad_offset(canvas.shape[0], h), unpad_offset(canvas.shape[1], w)
    return canvas[oy: oy + h, ox: ox + w]


def confusion(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) of the positive class over every pixel; inputs are read as `> 0`."""
    if pred.shape != truth.shape:
        raise DataError(f"prediction {pred.shape} and ground truth {truth.shape} differ in size")
    p, t = pred > 0, truth > 0
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(t)) - tp
    tn = int(p.size) - tp - fp - fn
    return tp, fp, fn, tn


def _ratio(num: int, den: int) -> float:
    return 100.0 * num / den if den else math.nan


def scores(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """The five official metrics in %; NaN where the denominator is zero."""
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "jaccard": _ratio(tp, tp + fp + fn),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
    }


# --- report ----------------------------------------------------------------------------------

@dataclass
class SceneReport:
    """Per-scene counts and metrics (%), their macro mean and the pooled figures."""

    scenes: pd.DataFrame  # scene, tp, fp, fn, tn, precision, recall, specificity, jaccard, accuracy
    macro: dict[str, float]
    pooled: dict[str, float]
    macro_counts: dict[str, int]  # scenes each macro mean covers
    notes: list[str] = field(default_factory=list)
    csv_path: Path | None = None
    previews: list[Path] = field(default_factory=list)

    @property
    def table(self) -> pd.DataFrame:
        """Per-scene rows plus the labelled macro and pooled rows (metrics in %)."""
        n = len(self.scenes)
        rows = self.scenes[["scene", *METRICS]].copy()
        extra = pd.DataFrame([
            {"scene": f"macro mean ({n} scenes)", **self.macro},
            {"scene": "pooled (all pixels)", **self.pooled},
        ])
        return pd.concat([rows, extra], ignore_index=True)

    def summary(self) -> str:
        """A printable table with notes."""
        text = self.table.to_string(index=False, float_format=lambda v: f"{v:.2f}")
        return "\n".join([text, *self.notes])


def summarise(rows: list[dict]) -> tuple[dict[str, float], dict[str, float], dict[str, int], list[str]]:
    """Macro means (NaN-skipping, with counts and notes) and pooled metrics of per-scene rows."""
    df = pd.DataFrame(rows)
    macro, counts, notes = {}, {}, []
    for m in METRICS:
        values = df[m].to_numpy(dtype=float)
        ok = ~np.isnan(values)
        counts[m] = int(ok.sum())
        macro[m] = float(values[ok].mean()) if ok.any() else math.nan
        if not ok.all():
            left = ", ".join(df.loc[~ok, "scene"])
            notes.append(f"{m}: undefined (0/0) for {left}; its macro mean covers {counts[m]} of {len(df)} scenes")
    totals = {k: int(df[k].sum()) for k in ("tp", "fp", "fn", "tn")}
    pooled = scores(**totals)
    return macro, pooled, counts, notes


def score_scenes(pairs: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> SceneReport:
    """Score (scene, predicted mask, true mask) triples of equal-sized scene masks."""
    rows = []
    for scene, pred, truth in pairs:
        tp, fp, fn, tn = confusion(pred, truth)
        rows.append({"scene": scene, "tp": tp, "fp": fp, "fn": fn, "tn": tn, **scores(tp, fp, fn, tn)})
    if not rows:
        raise DataError("no scenes to score")
    macro, pooled, counts, notes = summarise(rows)
    for r in rows:
        if r["tp"] + r["fn"] == 0:
            notes.append(f"{r['scene']}: no cloud in its ground truth")
    return SceneReport(pd.DataFrame(rows), macro, pooled, counts, notes)


# --- reading a submission --------------------------------------------------------------------

def read_submission(path: Path) -> dict[str, str]:
    """id → RLE of a 38-Cloud submission CSV (header id,EncodedPixels in any case)."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: submission file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SubmissionError(f"{path}: not a readable CSV ({exc})") from None
    except OSError as exc:
        raise SubmissionError(f"{path}: cannot read the submission ({exc.strerror or exc})") from None
    cols = {c.strip().lower(): c for c in df.columns}
    if "id" not in cols or "encodedpixels" not in cols:
        raise SubmissionError(f"{path}: expected columns id,EncodedPixels, got {','.join(df.columns)}")
    ids, rles = df[cols["id"]].str.strip(), df[cols["encodedpixels"]]
    dup = ids[ids.duplicated()]
    if len(dup):
        raise SubmissionError(f"{path}: id '{dup.iloc[0]}' appears more than once")
    if not len(ids):
        raise SubmissionError(f"{path}: the submission has no rows")
    return dict(zip(ids, rles))


def infer_patch_size(gt_dir: Path) -> int | None:
    """The test patches' side, from the header of one file in the sibling test_red folder (None if absent)."""
    red = fmt.find_ci(Path(gt_dir).parent, "test_red")
    if red is None or not red.is_dir():
        return None
    for f in sorted(red.iterdir()):
        if f.suffix.lower() in (".tif", ".tiff"):
            return fmt.tiff_shape(f)[0]
    return None


def _grid(names: Iterable[str]) -> dict[str, dict[str, fmt.PatchName]]:
    """scene → {lower-case patch name → parsed name}."""
    out: dict[str, dict[str, fmt.PatchName]] = {}
    for n in names:
        pn = fmt.parse_patch_name(n)
        out.setdefault(pn.scene, {})[pn.name.lower()] = pn
    return out


def evaluate_submission(
    submission: str | Path,
    gt_dir: str | Path,
    out_dir: str | Path | None = None,
    patches_csv: str | Path | None = None,
    patch_size: int | None = None,
    previews: bool = True,
    quiet: bool = False,
) -> SceneReport:
    """Score a 38-Cloud submission CSV on the whole-scene GTs in `gt_dir`; write scene_metrics.csv and
    previews/<scene>.png under out_dir (when given).

    patches_csv: the test patch list that fixes each scene's patch grid (default: test_patches_38-Cloud.csv
      beside gt_dir's parent; else the submission's own ids). Every listed patch must have a row.
    patch_size: the side of a patch (default: read from the sibling test_red folder; DataError when absent,
      as a guess would print wrong figures for other patch sizes).
    """
    submission, gt_dir = Path(submission), Path(gt_dir)
    if not gt_dir.is_dir():
        raise DataError(f"{gt_dir}: scene ground-truth folder not found")
    rows = read_submission(submission)
    if patches_csv is None:
        patches_csv = fmt.find_ci(gt_dir.parent, fmt.TEST_CSV)
    listed = fmt.read_patch_list(Path(patches_csv)) if patches_csv else list(rows)
    patch_size = patch_size or infer_patch_size(gt_dir)
    if not patch_size:
        raise DataError(f"{gt_dir.parent}: no test_red/ folder beside {gt_dir.name}/ to read the patch size from; "
                        "pass --patch-size (384 for the real 38-Cloud test set)")
    patch_size = int(patch_size)

    by_lower = _rows_of_listed(submission, rows, listed, patches_csv)
    grid = _grid(listed)

    def scenes():
        for scene, patches in progress(grid.items(), "evaluate scenes", quiet=quiet, unit="scene"):
            pred, truth = _scene_masks(submission, gt_dir, scene, patches, by_lower, patch_size)
            if out_dir is not None and previews:
                report_previews.append(write_preview(Path(out_dir) / "previews" / f"{scene}.png", pred, truth))
            yield scene, pred, truth

    report_previews: list[Path] = []
    report = score_scenes(scenes())
    report.previews = report_previews
    if out_dir is not None:
        report.csv_path = write_report_csv(report, Path(out_dir) / "scene_metrics.csv")
    return report


def _rows_of_listed(submission: Path, rows: dict[str, str], listed: list[str],
                    patches_csv: str | Path | None) -> dict[str, str]:
    """The submission's rows by lower-cased patch name; SubmissionError unless they are exactly the listed
    patches (names compared case-insensitively)."""
    by_lower = {k.lower(): v for k, v in rows.items()}
    listed_lower = {n.strip().lower() for n in listed}
    missing = [n for n in listed if n.strip().lower() not in by_lower]
    if missing:
        raise SubmissionError(f"{submission}: {len(missing)} test patches have no row, e.g. '{missing[0]}'")
    extra = [k for k in rows if k.lower() not in listed_lower]
    if extra:
        raise SubmissionError(f"{submission}: {len(extra)} rows are not in {patches_csv}, e.g. '{extra[0]}'")
    return by_lower


def _scene_masks(submission: Path, gt_dir: Path, scene: str, patches: dict, by_lower: dict[str, str],
                 patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene's predicted mask (its patches' RLEs decoded, stitched and cropped to the scene) and its
    ground truth; DataError when the patches cover less than the scene."""
    n_rows = max(p.row for p in patches.values())
    n_cols = max(p.col for p in patches.values())
    decoded = {}
    for key, pn in patches.items():
        try:
            decoded[(pn.row, pn.col)] = rle.decode(by_lower[key], (patch_size, patch_size), order="F")
        except RLEError as exc:
            raise SubmissionError(f"{submission}: row '{pn.name}': {exc}") from None
    canvas = stitch(decoded, n_rows, n_cols, patch_size)
    gt_path = fmt.scene_gt_path(gt_dir, scene)
    truth = (fmt.read_band(gt_path) > 0).astype(np.uint8)
    if canvas.shape[0] < truth.shape[0] or canvas.shape[1] < truth.shape[1]:
        raise DataError(f"{gt_path}: scene is {truth.shape[0]}x{truth.shape[1]} but its {n_rows}x{n_cols} "
                        f"patches of {patch_size} px cover only {canvas.shape[0]}x{canvas.shape[1]}")
    return crop_centre(canvas, truth.shape), truth


def write_report_csv(report: SceneReport, path: Path) -> Path:
    """Per-scene rows (counts and %) followed by the labelled macro and pooled rows, written atomically."""
    summary = pd.DataFrame([
        {"scene": "macro", **report.macro},
        {"scene": "pooled", **{k: int(report.scenes[k].sum()) for k in ("tp", "fp", "fn", "tn")}, **report.pooled},
    ])
    df = pd.concat([report.scenes, summary], ignore_index=True)
    df[["tp", "fp", "fn", "tn"]] = df[["tp", "fp", "fn", "tn"]].astype("Int64")  # blank in the macro row
    with atomic_write(path, newline="") as fh:
        df.to_csv(fh, index=False, float_format="%.4f")
    return path


def write_preview(path: Path, pred: np.ndarray, truth: np.ndarray, max_side: int = 512) -> Path:
    """PNG of three panels: predicted mask | true mask | errors (white TP, red FP, blue FN)."""
    import cv2

    p, t = pred > 0, truth > 0
    scale = min(1.0, max_side / max(p.shape))
    size = (max(1, round(p.shape[1] * scale)), max(1, round(p.shape[0] * scale)))

    def small(img: np.ndarray) -> np.ndarray:
        return cv2.resize(img, size, interpolation=cv2.INTER_AREA) if scale < 1 else img

    grey = lambda m: np.repeat((m.astype(np.uint8) * 255)[..., None], 3, axis=2)  # noqa: E731
    err = np.zeros(p.shape + (3,), np.uint8)
    err[p & t] = (255, 255, 255)
    err[p & ~t] = (255, 0, 0)
    err[~p & t] = (0, 0, 255)
    gap = np.full((size[1], 4, 3), 128, np.uint8)
    panels = [small(grey(p)), gap, small(grey(t)), gap, small(err)]
    canvas = np.concatenate(panels, axis=1)
    for i, label in enumerate(("predicted", "truth", "errors: FP red, FN blue")):
        cv2.putText(canvas, label, (i * (size[0] + 4) + 4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 200, 0), 1)
    write_image(path, canvas)
    return path
