"""38-Cloud scene evaluation: stitching and centred un-padding worked by hand, metrics from hand-counted
confusion matrices (a scene without cloud included), and the `segkit evaluate` command on real TIFF files."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from segkit import rle
from segkit.cli import main
from segkit.data.io import write_tiff
from segkit.errors import DataError, SubmissionError
from segkit.scene_eval import (
    confusion,
    crop_centre,
    evaluate_submission,
    score_scenes,
    scores,
    stitch,
    unpad_offset,
)

SCENE_A = "LC08_L1TP_002053_20160520_20170324_01_T1"
SCENE_B = "LC08_L1TP_029032_20160720_20170222_01_T1"


# --- arithmetic by hand ----------------------------------------------------------------------

def test_unpad_offsets_by_hand() -> None:
    assert unpad_offset(768, 700) == 34  # (768 - 700) / 2
    assert unpad_offset(768, 701) == 33  # 67 spare pixels: 33 above, 34 below (extra goes bottom/right)
    assert unpad_offset(384, 384) == 0
    # the real scene LC08_L1TP_002053_...: GT 7761 x 7601 (rows x cols), n_cols = 20 (MANIFEST), so 21 rows
    assert unpad_offset(21 * 384, 7761) == 151  # (8064 - 7761) // 2
    assert unpad_offset(20 * 384, 7601) == 39  # (7680 - 7601) // 2
    with pytest.raises(DataError):
        unpad_offset(383, 384)


def test_stitch_places_row_col_patches_by_hand() -> None:
    patches = {(r, c): np.full((2, 2), 10 * r + c, np.uint8) for r in (1, 2) for c in (1, 2, 3)}
    del patches[(2, 3)]  # a missing patch stays zero
    expected = np.array([
        [11, 11, 12, 12, 13, 13],
        [11, 11, 12, 12, 13, 13],
        [21, 21, 22, 22, 0, 0],
        [21, 21, 22, 22, 0, 0],
    ], np.uint8)
    np.testing.assert_array_equal(stitch(patches, 2, 3, 2), expected)
    with pytest.raises(DataError, match="outside"):
        stitch({(3, 1): np.zeros((2, 2), np.uint8)}, 2, 3, 2)
    with pytest.raises(DataError, match="expected 2 x 2"):
        stitch({(1, 1): np.zeros((3, 2), np.uint8)}, 2, 3, 2)


def test_crop_centre_by_hand() -> None:
    canvas = np.arange(4 * 6).reshape(4, 6)
    # GT 3 x 3: row offset (4-3)//2 = 0, col offset (6-3)//2 = 1
    np.testing.assert_array_equal(crop_centre(canvas, (3, 3)), [[1, 2, 3], [7, 8, 9], [13, 14, 15]])
    # GT 2 x 5: row offset 1, col offset 0
    np.testing.assert_array_equal(crop_centre(canvas, (2, 5)), [[6, 7, 8, 9, 10], [12, 13, 14, 15, 16]])


PRED_A = np.array([[1, 1, 0, 0],
                   [1, 0, 0, 0],
                   [0, 1, 0, 0]])
TRUE_A = np.array([[1, 1, 1, 0],
                   [1, 0, 0, 0],
                   [0, 0, 1, 0]])
# TP: (0,0) (0,1) (1,0) = 3; FP: (2,1) = 1; FN: (0,2) (2,2) = 2; TN: 12 - 6 = 6
PRED_B = np.array([[0, 0, 0, 0],
                   [0, 0, 1, 1],
                   [0, 0, 0, 0]])
TRUE_B = np.zeros((3, 4), int)  # no cloud: TP 0, FP 2, FN 0, TN 10


def test_confusion_and_scores_by_hand() -> None:
    assert confusion(PRED_A, TRUE_A) == (3, 1, 2, 6)
    s = scores(3, 1, 2, 6)
    assert s["precision"] == pytest.approx(75.0)
    assert s["recall"] == pytest.approx(60.0)
    assert s["specificity"] == pytest.approx(100 * 6 / 7)
    assert s["jaccard"] == pytest.approx(50.0)
    assert s["accuracy"] == pytest.approx(75.0)
    with pytest.raises(DataError):
        confusion(PRED_A, TRUE_A[:2])


def test_scene_without_cloud_macro_and_pooled_by_hand() -> None:
    assert confusion(PRED_B, TRUE_B) == (0, 2, 0, 10)
    report = score_scenes([("A", PRED_A, TRUE_A), ("B", PRED_B, TRUE_B)])
    b = report.scenes.set_index("scene").loc["B"]
    assert b["precision"] == 0.0 and b["jaccard"] == 0.0  # 0 / 2: predicted cloud where there is none
    assert math.isnan(b["recall"])  # 0 / 0: nothing to find
    assert b["specificity"] == pytest.approx(100 * 10 / 12) and b["accuracy"] == pytest.approx(100 * 10 / 12)
    assert report.macro["precision"] == pytest.approx((75 + 0) / 2)
    assert report.macro["recall"] == pytest.approx(60.0) and report.macro_counts["recall"] == 1
    assert report.macro["jaccard"] == pytest.approx(25.0) and report.macro_counts["jaccard"] == 2
    assert report.macro["specificity"] == pytest.approx((100 * 6 / 7 + 100 * 10 / 12) / 2)
    assert report.macro["accuracy"] == pytest.approx((75 + 100 * 10 / 12) / 2)
    # pooled: TP 3, FP 3, FN 2, TN 16
    assert report.pooled["precision"] == pytest.approx(50.0)
    assert report.pooled["recall"] == pytest.approx(60.0)
    assert report.pooled["specificity"] == pytest.approx(100 * 16 / 19)
    assert report.pooled["jaccard"] == pytest.approx(37.5)
    assert report.pooled["accuracy"] == pytest.approx(100 * 19 / 24)
    assert any("recall: undefined (0/0) for B" in n for n in report.notes)
    assert any(n.startswith("B: no cloud") for n in report.notes)
    table = report.table
    assert list(table["scene"]) == ["A", "B", "macro mean (2 scenes)", "pooled (all pixels)"]


def test_cloud_free_scene_predicted_cloud_free() -> None:
    report = score_scenes([("clear", np.zeros((3, 3)), np.zeros((3, 3)))])
    row = report.scenes.iloc[0]
    assert math.isnan(row["precision"]) and math.isnan(row["recall"]) and math.isnan(row["jaccard"])
    assert row["specificity"] == 100.0 and row["accuracy"] == 100.0


# --- the whole evaluation on real files ------------------------------------------------------

P = 4


@pytest.fixture()
def dataset(tmp_path: Path):
    """Two test scenes of 4-px patches: A is 6 x 7 (2 x 2 patches, padding: 1 row above + 1 below,
    1 column right), B is 4 x 3 with no cloud (1 x 1 patch). Returns paths and the hand-made truth."""
    test = tmp_path / "38-Cloud_test"
    gts = test / "Entire_scene_gts"
    truth_a = np.zeros((6, 7), np.uint8)
    truth_a[1:4, 2:6] = 1  # 12 cloud pixels
    truth_b = np.zeros((4, 3), np.uint8)
    write_tiff(gts / f"edited_corrected_gts_{SCENE_A}.TIF", truth_a * 255)
    write_tiff(gts / f"edited_corrected_gts_{SCENE_B}.TIF", truth_b * 255)
    names_a = [f"patch_{(r - 1) * 2 + c}_{r}_by_{c}_{SCENE_A}" for r in (1, 2) for c in (1, 2)]
    names_b = [f"patch_1_1_by_1_{SCENE_B}"]
    (test / "test_patches_38-Cloud.csv").write_text("name\n" + "\n".join(names_a + names_b) + "\n")

    # prediction on the padded 8 x 8 canvas of A: the truth placed at offset (1, 0) ...
    canvas = np.zeros((8, 8), np.uint8)
    canvas[1:7, 0:7] = truth_a
    canvas[2, 0] = 1  # FP inside the scene
    canvas[5, 6] = 1  # FP inside the scene
    canvas[2, 2] = 0  # FN
    canvas[0, :] = 1  # padding above the scene: cropped away, never scored
    canvas[:, 7] = 1  # padding right of the scene: cropped away
    rows = {n: rle.encode(canvas[(r - 1) * P: r * P, (c - 1) * P: c * P], order="F")
            for n, (r, c) in zip(names_a, [(1, 1), (1, 2), (2, 1), (2, 2)])}
    pred_b = np.zeros((P, P), np.uint8)
    pred_b[3, 1] = 1  # B's 4 x 3 truth sits at row offset 0, col offset 0: (3, 1) is inside -> one FP
    rows[names_b[0]] = rle.encode(pred_b, order="F")
    sub = tmp_path / "submission.csv"
    sub.write_text("id,EncodedPixels\n" + "".join(f"{k},{v}\n" for k, v in rows.items()))
    return {"sub": sub, "gts": gts, "test": test, "names": names_a + names_b, "rows": rows}


def test_evaluate_submission_end_to_end(dataset, tmp_path: Path) -> None:
    report = evaluate_submission(dataset["sub"], dataset["gts"], out_dir=tmp_path / "out", patch_size=P, quiet=True)
    a = report.scenes.set_index("scene").loc[SCENE_A]
    assert (a["tp"], a["fp"], a["fn"], a["tn"]) == (11, 2, 1, 42 - 14)
    b = report.scenes.set_index("scene").loc[SCENE_B]
    assert (b["tp"], b["fp"], b["fn"], b["tn"]) == (0, 1, 0, 11)
    assert report.pooled["jaccard"] == pytest.approx(100 * 11 / (11 + 3 + 1))
    assert report.macro["jaccard"] == pytest.approx((100 * 11 / 14 + 0.0) / 2)
    csv = pd.read_csv(report.csv_path)
    assert list(csv["scene"]) == [SCENE_A, SCENE_B, "macro", "pooled"]
    assert int(csv.loc[3, "tp"]) == 11 and csv.loc[3, "jaccard"] == pytest.approx(report.pooled["jaccard"], abs=1e-4)
    assert len(report.previews) == 2
    png = cv2.imread(str(report.previews[0]))
    assert png is not None and png.shape[0] == 6 and png.shape[1] == 3 * 7 + 2 * 4  # pred | truth | errors


def test_evaluate_cli(dataset, tmp_path: Path, capsys) -> None:
    code = main(["evaluate", "cloud38", "--submission", str(dataset["sub"]), "--gt-dir", str(dataset["gts"]),
                 "--out", str(tmp_path / "o"), "--patch-size", str(P)])
    out = capsys.readouterr().out
    assert code == 0 and "macro mean (2 scenes)" in out and "pooled (all pixels)" in out
    assert (tmp_path / "o" / "scene_metrics.csv").is_file()


def _rewrite(dataset, rows: dict[str, str]) -> None:
    dataset["sub"].write_text("id,EncodedPixels\n" + "".join(f"{k},{v}\n" for k, v in rows.items()))


def test_bad_submissions_and_files(dataset, tmp_path: Path, capsys) -> None:
    rows = dict(dataset["rows"])
    victim = dataset["names"][1]
    del rows[victim]
    _rewrite(dataset, rows)
    with pytest.raises(SubmissionError, match=victim):
        evaluate_submission(dataset["sub"], dataset["gts"], patch_size=P)
    rows[victim] = "3 100"  # runs past the 16 pixels of a 4 x 4 patch
    _rewrite(dataset, rows)
    with pytest.raises(SubmissionError, match=f"row '{victim}'"):
        evaluate_submission(dataset["sub"], dataset["gts"], patch_size=P)
    rows[victim] = ""
    rows["patch_9_9_by_9_LC08_L1TP_000000_20160101_20160101_01_T1"] = ""
    _rewrite(dataset, rows)
    with pytest.raises(SubmissionError, match="not in"):
        evaluate_submission(dataset["sub"], dataset["gts"], patch_size=P)
    with pytest.raises(SubmissionError, match="not found"):
        evaluate_submission(tmp_path / "nope.csv", dataset["gts"], patch_size=P)
    dataset["sub"].write_text("name,rle\nx,1 1\n")
    with pytest.raises(SubmissionError, match="id,EncodedPixels"):
        evaluate_submission(dataset["sub"], dataset["gts"], patch_size=P)


def test_missing_or_corrupt_scene_gt(dataset) -> None:
    gt = dataset["gts"] / f"edited_corrected_gts_{SCENE_B}.TIF"
    gt.write_bytes(b"II*\x00 broken")
    with pytest.raises(DataError, match=gt.name):
        evaluate_submission(dataset["sub"], dataset["gts"], patch_size=P)
    gt.unlink()
    with pytest.raises(DataError, match=gt.name):
        evaluate_submission(dataset["sub"], dataset["gts"], patch_size=P)


def test_gt_larger_than_its_patches(dataset) -> None:
    write_tiff(dataset["gts"] / f"edited_corrected_gts_{SCENE_B}.TIF", np.zeros((5, 3), np.uint8))
    with pytest.raises(DataError, match="cover only 4x4"):
        evaluate_submission(dataset["sub"], dataset["gts"], patch_size=P)


def test_cli_errors_without_traceback(dataset, tmp_path: Path, capsys) -> None:
    code = main(["evaluate", "cloud38", "--submission", str(tmp_path / "missing.csv"), "--gt-dir", str(dataset["gts"])])
    err = capsys.readouterr().err
    assert code == 1 and "missing.csv" in err and "Traceback" not in err
    code = main(["evaluate", "cloud38", "--submission", str(dataset["sub"]), "--gt-dir", str(tmp_path / "nogt")])
    err = capsys.readouterr().err
    assert code == 1 and "nogt" in err and "Traceback" not in err
