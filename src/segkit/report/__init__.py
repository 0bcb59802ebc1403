"""The ablation report of a trained run: what each step of the leaderboard playbook gained on the out-of-fold
(OOF) predictions, in the competition's own metric.

`segkit report CONFIG` writes `runs/<name>/report.html` — self-contained: tables inline, plots as base64 PNG data
URIs — and prints the same table: the OOF score (adapter.score_class per class, mean over classes, as
post-processing tunes it) of each fold and model at a plain 0.5 threshold, of the ensemble, then after each
post-processing step in chain order as recorded in postprocess.json (`steps`, version 2; a version 1 file gives
default vs tuned), the weight-averaging checkpoints (raw vs averaged validation values from each fold's done.json)
and the pseudo-label round when there is one; then the tuned parameters per class. The HTML adds per-class score
curves versus threshold and a gallery of the worst OOF images after the post-processing chain.

- `scoring`: scores the run's OOF and builds the `Report` (`build_report`, `write_report`, `print_table`);
- `records`: the rows read from what the run recorded (postprocess.json's steps, done.json's averaging, pseudo
  rounds);
- `rendering`: the `Report` and its rows as the printed table and the HTML page.
"""
from segkit.report.rendering import PLAIN, Curve, GalleryItem, Report, Row
from segkit.report.scoring import (COARSE_THRESHOLDS, FINE_THRESHOLDS, build_report, check_trained, pixel_counts,
                                   print_table, threshold_sweep, write_report)

__all__ = ["COARSE_THRESHOLDS", "FINE_THRESHOLDS", "PLAIN", "Curve", "GalleryItem", "Report", "Row", "build_report",
           "check_trained", "pixel_counts", "print_table", "threshold_sweep", "write_report"]
