"""A run knows what it was trained with. One tiny run (synthetic 38-Cloud, 32 px, 2 folds × 1 epoch) is trained
once; each test works on a copy of it through `segkit.cli.main`: settings that shape the weights cannot change
under a trained run (unless --restart / --restart-fold), the others can; damaged run files end in one line naming
the file, with every earlier output intact; predict says which post-processing and which config are in force."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from segkit.cli import main

TINY_MODEL = "models=[{name: unet, tag: unet, depth: 2, base_filters: 4}]"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(base folder, its training log): data, cache and a finished run under base/runs/demo."""
    from segkit.data.synth import generate

    base = tmp_path_factory.mktemp("fingerprint")
    generate("cloud38", base / "data", seed=3, patch_size=32, n_train_scenes=3, n_test_scenes=1)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    # train.verbose left unset: stdout is a pipe, so Keras logs one line per epoch (verbose 2)
    args = ["train", "demo", *overrides(base, base / "runs")]
    proc = subprocess.run([sys.executable, "-m", "segkit", *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return base, proc.stdout


def overrides(base: Path, runs: Path, *extra: str) -> list[str]:
    return [
        f"data.root={base / 'data'}", "data.image_size=32", f"data.cache_dir={base / 'cache'}",
        f"output.runs_dir={runs}", f"output.submissions_dir={runs.parent / 'subs'}",
        "train.folds=2", "train.epochs=1", "train.batch_size=8", "train.workers=1",
        "train.early_stopping_patience=50", "predict.tta=[identity]", "postprocess.threshold_grid=[0.3,0.5,0.7]",
        TINY_MODEL, *extra,
    ]


@pytest.fixture
def run(trained, tmp_path):
    """A private copy of the trained run: (base, runs folder, run folder)."""
    base, _ = trained
    shutil.copytree(base / "runs", tmp_path / "runs", symlinks=True)
    return base, tmp_path / "runs", tmp_path / "runs" / "demo"


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line_error(code: int, err: str, *says: str) -> None:
    assert code == 1, err
    line = err.strip()
    assert "\n" not in line and line.startswith("segkit: error: ") and "Traceback" not in line, err
    for text in says:
        assert text in line, line


def test_readable_training_log(trained):
    base, log = trained
    assert "[unet fold 0] " in log and " train / " in log and " val patches (fold 1 of 2)" in log
    assert "[unet fold 1] compiling…" in log
    assert " - val_dice: " in log and "\x1b[" not in log and "━" not in log  # verbose 2: a line, no bars
    table = log[log.index("[train] finished folds:"):].splitlines()
    assert table[1].split() == ["model", "fold", "epochs", "monitor", "best"]
    assert [row.split()[:4] for row in table[2:4]] == [["unet", "0", "1", "val_dice"], ["unet", "1", "1", "val_dice"]]
    history = pd.read_csv(base / "runs" / "demo" / "unet" / "fold_0" / "history.csv")
    assert [c for c in history.columns if "lr" in c or "learning_rate" in c] == ["learning_rate"]


def test_free_settings_change_without_retraining(run, capsys):
    base, runs, rd = run
    before = {k: (rd / "unet" / f"fold_{k}" / "best.keras").stat().st_mtime_ns for k in (0, 1)}
    code, out, err = cli(capsys, "train", "demo", *overrides(base, runs, "predict.tta=[identity,hflip]",
                                                             "train.workers=2", "postprocess.tune=false"))
    assert code == 0, err
    assert "[unet fold 0] already trained, skipping" in out and "[unet fold 1] already trained, skipping" in out
    assert before == {k: (rd / "unet" / f"fold_{k}" / "best.keras").stat().st_mtime_ns for k in (0, 1)}
    assert "hflip" in (rd / "config.yaml").read_text()  # still true of the weights, so rewritten


def test_changed_weight_settings_refuse_and_keep_the_run(run, capsys):
    base, runs, rd = run
    before = snapshot(rd)
    code, _, err = cli(capsys, "train", "demo", *overrides(base, runs, "train.loss=bce", "train.learning_rate=0.01"))
    assert_one_line_error(code, err, str(rd), "train.loss: 'bce_dice' → 'bce' (unet/fold_0, unet/fold_1)",
                          "train.learning_rate: 0.003 → 0.01", "name=...", "`segkit train --restart CONFIG ...`", "--restart-fold K")
    code, _, err = cli(capsys, "train", "demo", *overrides(base, runs, "train.epochs=3"))
    assert_one_line_error(code, err, "train.epochs: 3 asked, the fold ran 1")
    code, _, err = cli(capsys, "train", "demo", *overrides(base, runs, "models.0.base_filters=8"))
    assert_one_line_error(code, err, "models.unet: ")
    assert snapshot(rd) == before  # config.yaml not rewritten, nothing retrained


def test_restart_fold_retrains_only_that_fold(run, capsys):
    base, runs, rd = run
    fold0, fold1 = rd / "unet" / "fold_0", rd / "unet" / "fold_1"
    before = snapshot(rd)
    # another loss for fold 1 alone still leaves fold 0 trained with the old one: refused, fold 1 kept
    code, _, err = cli(capsys, "train", "--restart-fold", "1", "demo", *overrides(base, runs, "train.loss=bce"))
    assert_one_line_error(code, err, "train.loss: 'bce_dice' → 'bce' (unet/fold_0)")
    assert snapshot(rd) == before
    code, out, err = cli(capsys, "train", "--restart-fold", "1", "demo", *overrides(base, runs))
    assert code == 0, err
    assert "[unet fold 0] already trained, skipping" in out
    assert "val patches (fold 2 of 2)" in out and "(fold 1 of 2)" not in out
    assert (fold0 / "best.keras").read_bytes() == before["unet/fold_0/best.keras"]
    assert (fold1 / "best.keras").read_bytes() != before["unet/fold_1/best.keras"]
    assert (rd / "postprocess.json").is_file()  # re-tuned once every fold was done again


def test_restart_wipes_the_run_and_trains_the_new_settings(run, capsys):
    base, runs, rd = run
    code, out, err = cli(capsys, "train", "--restart", "demo", *overrides(base, runs, "train.loss=bce"))
    assert code == 0, err
    assert "--restart: deleting" in out and "already trained" not in out
    assert "loss: bce\n" in (rd / "config.yaml").read_text()
    assert json.loads((rd / "unet" / "fold_1" / "fingerprint.json").read_text())["settings"]["train.loss"] == "bce"
    code, out, err = cli(capsys, "train", "demo", *overrides(base, runs, "train.loss=bce"))
    assert code == 0 and "[unet fold 1] already trained, skipping" in out, err


def _torn_state(rd: Path) -> Path:
    fold = rd / "unet" / "fold_1"
    (fold / "done.json").unlink()  # an interrupted fold: resumable from state.json + last.keras
    shutil.copyfile(fold / "best.keras", fold / "last.keras")
    (fold / "state.json").write_text('{"epoch": 1, "best": 0.4, "hist')
    return fold / "state.json"


def _garbage_last(rd: Path) -> Path:
    fold = rd / "unet" / "fold_1"
    (fold / "done.json").unlink()
    (fold / "state.json").write_text(json.dumps({"epoch": 1, "best": 0.4, "history": [], "stopped": False}))
    (fold / "last.keras").write_bytes(b"\x00garbage" * 64)
    return fold / "last.keras"


def _garbage_done(rd: Path) -> Path:
    (rd / "unet" / "fold_0" / "done.json").write_bytes(b"\xff\xfe not json")
    return rd / "unet" / "fold_0" / "done.json"


def _foreign_folds(rd: Path) -> Path:
    text = (rd / "folds.csv").read_text().splitlines()
    first = text[1].split(",")
    text[1] = ",".join(["someone-else", *first[1:]])
    (rd / "folds.csv").write_text("\n".join(text) + "\n")
    return rd / "folds.csv"


def _short_folds(rd: Path) -> Path:
    text = (rd / "folds.csv").read_text().splitlines()
    (rd / "folds.csv").write_text("\n".join(text[:-2]) + "\n")
    return rd / "folds.csv"


def _renamed_columns(rd: Path) -> Path:
    text = (rd / "folds.csv").read_text()
    (rd / "folds.csv").write_text(text.replace("fold", "split", 1))
    return rd / "folds.csv"


@pytest.mark.parametrize("damage, says", [
    (_torn_state, ["--restart-fold 1", "last.keras"]),
    (_garbage_last, ["--restart-fold 1", "delete"]),
    (_garbage_done, ["--restart-fold 0"]),
    (_foreign_folds, ["'someone-else'", "--restart"]),
    (_short_folds, ["rows, the data has"]),
    (_renamed_columns, ["columns ['fold'] missing"]),
])
def test_damaged_run_files_end_in_one_line(run, capsys, damage, says):
    base, runs, rd = run
    path = damage(rd)
    before = snapshot(rd)
    code, _, err = cli(capsys, "train", "demo", *overrides(base, runs))
    assert_one_line_error(code, err, str(path), *says)
    after = snapshot(rd)
    after.pop("config.yaml"), before.pop("config.yaml")  # may be rewritten: it still describes the weights
    assert after == before


def test_predict_postprocessing_in_force_and_saved_config(run, capsys):
    base, runs, rd = run
    tuned = json.loads((rd / "postprocess.json").read_text())["classes"][0]
    # a training override given to predict is replaced by the run's saved config, and said so
    code, out, err = cli(capsys, "predict", "demo", *overrides(base, runs, "train.epochs=5"))
    assert code == 0, err
    assert f"[predict] config: training settings from {rd / 'config.yaml'}" in out
    assert "train.epochs: 5 → 1" in out
    assert f"post-processing: tuned on OOF ({rd / 'postprocess.json'}): cloud: threshold {tuned['threshold']:g}" in out
    sub_tuned = (runs.parent / "subs" / "demo" / "submission.csv").read_bytes()

    # threshold 0 marks every pixel (sigmoid > 0), which the tuned threshold (0.3 or more) never asks for
    code, out, err = cli(capsys, "predict", "--out", str(runs.parent / "fixed.csv"), "demo",
                         *overrides(base, runs, "postprocess.tune=false", "postprocess.threshold=0"))
    assert code == 0, err
    assert "post-processing: from config (postprocess.tune=false): threshold 0, min_area 0" in out
    assert "postprocess.json not used" in out
    fixed = pd.read_csv(runs.parent / "fixed.csv", keep_default_na=False)
    assert set(fixed["EncodedPixels"]) == {"1 1024"}

    (rd / "postprocess.json").write_text('{"classes": [{"threshold": null}]}')
    code, _, err = cli(capsys, "predict", "demo", *overrides(base, runs))
    assert_one_line_error(code, err, str(rd / "postprocess.json"), "segkit tune CONFIG")
    assert (runs.parent / "subs" / "demo" / "submission.csv").read_bytes() == sub_tuned


def test_predict_with_a_damaged_best_checkpoint_names_the_fold(run, capsys):
    """A garbage best.keras at predict time: one line naming the file and which fold to retrain; nothing
    written."""
    base, runs, rd = run
    path = rd / "unet" / "fold_1" / "best.keras"
    path.write_bytes(b"PK\x03\x04 not really a zip" * 10)
    before = snapshot(rd)
    code, _, err = cli(capsys, "predict", "demo", *overrides(base, runs))
    assert_one_line_error(code, err, str(path), "--restart-fold 1")
    assert snapshot(rd) == before
    assert not (runs.parent / "subs" / "demo" / "submission.csv").exists()
