"""The run folder has one owner: segkit.runs knows its layout, reads its files and names the file and the fix
when one is damaged."""
import ast
import json
from pathlib import Path

import numpy as np
import pytest

import segkit
from segkit.config import config_from_dict
from segkit.data.sample import Sample
from segkit.errors import ConfigError, TrainingError
from segkit.runs import (AveragingRecord, FoldDir, RunDir, changed_keys, checkpoint_paths, fold_fingerprint, model_tags,
                         weight_settings)

SAMPLES = [Sample(id=f"p{i}", image=(f"p{i}.tif",), group=f"g{i % 3}") for i in range(6)]
FOLDS = np.array([0, 1, 0, 1, 0, 1])


def cfg_for(tmp_path, **sections):
    raw = {"name": "r1", "output": {"runs_dir": str(tmp_path / "runs")},
           "models": [{"name": "unet", "tag": "unet"}, {"name": "fractal_unet"}], "train": {"folds": 2}}
    raw.update(sections)
    return config_from_dict(raw)


def test_layout(tmp_path):
    cfg = cfg_for(tmp_path)
    run = RunDir.of(cfg)
    assert run.path == tmp_path / "runs" / "r1"
    assert [run.config.name, run.folds.name, run.postprocess.name] == ["config.yaml", "folds.csv", "postprocess.json"]
    fold = run.fold("unet", 1)
    assert fold.path == run.path / "unet" / "fold_1"
    names = [p.name for p in (fold.best, fold.last, fold.state, fold.history, fold.oof, fold.oof_index, fold.done)]
    assert names == ["best.keras", "last.keras", "state.json", "history.csv", "oof.npy", "oof_index.npy", "done.json"]
    tmp = FoldDir.temp_for(fold.best)
    assert tmp.parent == fold.path and tmp.suffix == ".keras" and tmp.name.startswith(".")
    assert RunDir.containing(fold.path).path == run.path
    assert model_tags(cfg) == ["unet", "fractal_unet1"]
    with pytest.raises(TrainingError, match=r"missing fold checkpoints: .*unet/fold_0/best.keras"):
        checkpoint_paths(cfg)
    for tag in model_tags(cfg):
        for k in range(2):
            run.fold(tag, k).path.mkdir(parents=True)
            run.fold(tag, k).best.write_bytes(b"")
    assert len(checkpoint_paths(cfg)) == 4
    cfg.predict.models = ["unet", "nope"]
    with pytest.raises(ConfigError, match=r"predict.models: no model tagged \['nope'\]"):
        checkpoint_paths(cfg)


def test_fold_split_round_trip_and_damage(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.read_folds(SAMPLES, 2) is None
    run.write_folds(SAMPLES, FOLDS)
    assert run.read_folds(SAMPLES, 2).tolist() == FOLDS.tolist()
    good = run.folds.read_text()
    cases = {
        "columns": (good.replace("id,", "name,", 1), r"columns \['id'\] missing"),
        "count": ("\n".join(good.splitlines()[:-1]) + "\n", "5 rows, the data has 6 training samples"),
        "ids": (good.replace("p3", "q3"), "row 5 has id 'q3', the data has 'p3'"),
        "folds": (good.replace(",0\n", ",7\n"), r"'fold' must hold integers 0..1"),
        "garbage": ("\x00\x01\x02 not, a\n\"csv", "folds.csv"),
    }
    for what, (text, says) in cases.items():
        run.folds.write_text(text)
        with pytest.raises(TrainingError, match=says) as info:
            run.read_folds(SAMPLES, 2)
        message = str(info.value)
        assert str(run.folds) in message and "--restart" in message and "\n" not in message, what
    run.folds.write_text(good)
    with pytest.raises(TrainingError, match="split into 2 folds, train.folds is 3"):
        run.read_folds(SAMPLES, 3)


def test_damaged_fold_and_postprocess_files_name_the_fix(tmp_path):
    fold = RunDir(tmp_path / "run").fold("unet", 1)
    fold.path.mkdir(parents=True)
    assert fold.read_state() is None
    fold.state.write_text('{"epoch": 2, "best": 0.5, "hist')  # torn
    assert fold.read_state() is None  # no last.keras: nothing to resume from
    fold.last.write_bytes(b"x")
    with pytest.raises(TrainingError) as info:
        fold.read_state()
    assert str(fold.state) in str(info.value) and f"delete {fold.last}" in str(info.value)
    assert "`segkit train --restart-fold 1 CONFIG [key=value ...]`" in str(info.value)
    fold.done.write_text("[]")
    with pytest.raises(TrainingError, match=r"done.json: damaged .*--restart-fold 1"):
        fold.read_done()

    run = RunDir(tmp_path / "run")
    for text, says in [("{", "damaged"), ('{"classes": [{"threshold": "x", "min_area": 0}]}', "'classes' must list"),
                       ('{"classes": []}', "'classes' must list")]:
        run.postprocess.write_text(text)
        with pytest.raises(TrainingError, match=says):
            run.read_postprocess(["cloud"])
    run.write_postprocess({"classes": [{"threshold": 0.3, "min_area": 0}]})
    with pytest.raises(TrainingError, match="tuned for 1 classes, the data has 4"):
        run.read_postprocess(["a", "b", "c", "d"])
    assert run.read_postprocess(["cloud"])["classes"][0]["threshold"] == 0.3


def test_the_fold_oof_has_one_reader_that_names_the_fold_and_the_fix(tmp_path):
    fold = FoldDir(tmp_path / "unet" / "fold_1", "unet", 1)
    with pytest.raises(TrainingError, match=r"fold_1: no out-of-fold predictions; finish training first"):
        fold.read_oof()
    fold.path.mkdir(parents=True)
    np.save(fold.oof, np.zeros((3, 4, 5, 2), np.float16))
    np.save(fold.oof_index, np.array([4, 0, 2], np.int32))
    probs, index = fold.read_oof()
    assert probs.shape == (3, 4, 5, 2) and isinstance(probs, np.memmap)
    assert index.dtype == np.int64 and index.tolist() == [4, 0, 2]
    np.save(fold.oof_index, np.array([4, 0]))
    with pytest.raises(TrainingError, match=r"oof_index.npy: does not match oof.npy; run .*--restart-fold 1"):
        fold.read_oof()
    fold.oof_index.write_bytes(b"garbage")
    with pytest.raises(TrainingError, match=r"fold_1: out-of-fold predictions unreadable"):
        fold.read_oof()
    np.save(fold.oof_label, np.ones((3, 2), np.float16))
    label = fold.read_oof_label(3)
    assert label.dtype == np.float32 and label.shape == (3, 2)
    with pytest.raises(TrainingError, match=r"oof_label.npy: shape \(3, 2\) does not match the fold's 4 OOF rows"):
        fold.read_oof_label(4)


def test_the_averaging_record_reads_back_what_it_writes_and_older_records():
    ema = AveragingRecord("ema", "val_dice", val_raw=0.25, val_averaged=0.3125, momentum=0.99)
    assert list(ema.to_json()) == ["kind", "momentum", "monitor", "val_raw", "val_averaged"]
    swa = AveragingRecord("swa", "val_loss", val_raw=0.5, val_averaged=0.25, how="best", n=3, epochs=[2, 5, 7],
                          bn_batches=4)
    assert swa.to_json() == {"kind": "swa", "best": 3, "monitor": "val_loss", "epochs": [2, 5, 7], "val_raw": 0.5,
                             "val_averaged": 0.25, "bn_batches": 4}
    skipped = AveragingRecord("swa", "val_dice", 0.5, None, how="last", n=2, epochs=[], skipped="no snapshots")
    for record in (ema, swa, skipped):
        assert AveragingRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
    assert ema.settings() == {"momentum": 0.99}
    assert swa.settings() == {"best": 3, "bn_batches": 4}
    assert skipped.settings() == {"last": 2, "skipped": "no snapshots"}
    old = AveragingRecord.from_json({"val_raw": 0.5, "val_averaged": "n/a"})  # a record without most fields
    assert old == AveragingRecord("averaging", None, 0.5, None) and old.settings() == {}


def test_a_fold_reads_its_averaging_record_with_the_fold_monitor_when_it_lacks_one(tmp_path):
    fold = FoldDir(tmp_path / "fold_0", "unet", 0)
    fold.path.mkdir()
    done = {"fold": 0, "best": 0.5, "epochs": 3, "monitor": "val_dice"}
    fold.write_json(fold.done, done)
    assert fold.read_averaging() is None
    fold.write_json(fold.done, {**done, "averaging": {"kind": "ema", "val_raw": 0.25, "val_averaged": 0.5}})
    assert fold.read_averaging() == AveragingRecord("ema", "val_dice", 0.25, 0.5)


def test_fingerprint_names_what_shapes_the_weights(tmp_path):
    cfg = cfg_for(tmp_path)
    ids = [s.id for s in SAMPLES]
    base = fold_fingerprint(cfg, "unet", ids, FOLDS)
    assert "models.unet" in base and "models.fractal_unet1" not in base and "train.epochs" not in base
    free = cfg_for(tmp_path, predict={"tta": ["hflip"], "batch_size": 2}, postprocess={"tune": False},
                   output={"runs_dir": str(tmp_path / "elsewhere")}, train={"folds": 2, "verbose": 2, "workers": 4})
    assert fold_fingerprint(free, "unet", ids, FOLDS) == base
    changed = cfg_for(tmp_path, train={"folds": 2, "loss": "bce", "learning_rate": 0.01})
    assert changed_keys(base, fold_fingerprint(changed, "unet", ids, FOLDS)) == [
        "train.loss: 'bce_dice' → 'bce'", "train.learning_rate: 0.001 → 0.01"]
    other_split = changed_keys(base, fold_fingerprint(cfg, "unet", ids, FOLDS[::-1]))
    assert len(other_split) == 1 and other_split[0].startswith("train.split:")
    assert json.loads(json.dumps(weight_settings(cfg))) == weight_settings(cfg)


MY_MODULES = ("train.py", "postprocess/chain.py", "postprocess/search.py", "postprocess/tuning.py", "predict.py",
              "demo.py", "pipeline.py", "kaggle/runtime.py", "cli/run.py", "report/scoring.py",
              "report/records.py", "report/rendering.py")
RUN_FILES = ("best.keras", "last.keras", "done.json", "state.json", "oof.npy", "oof_index.npy", "postprocess.json",
             "folds.csv", "config.yaml", "history.csv", "metrics.json", "fingerprint.json", "fold_", "report.html")


@pytest.mark.parametrize("module", MY_MODULES)
def test_run_file_names_are_spelled_only_in_runs(module):
    path = Path(segkit.__file__).parent / module
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    spelled = [(node.lineno, name) for node in ast.walk(tree)
               if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
               for name in RUN_FILES if name in node.value]
    assert not spelled, f"{module} spells run file names (ask segkit.runs): {spelled}"


def test_fold_temporaries_are_swept_after_a_crash(tmp_path):
    """Checkpoints and OOF arrays half-written by a killed trainer carry segkit's temporary names, so the next
    start sweeps them (a dead pid's file goes, the live process's own stays)."""
    import re

    from segkit.data.io import sweep_stale
    from segkit.runs import FoldDir

    fold = FoldDir(tmp_path / "unet" / "fold_0", "unet", 0)
    fold.path.mkdir(parents=True)
    mine = fold.temp_for(fold.best)
    assert mine.suffix == ".keras" and fold.oof_tmp.suffix == ".npy"
    dead = fold.path / re.sub(r"segkit-\d+-", "segkit-999999999-", mine.name)
    for p in (mine, dead, fold.oof_tmp):
        p.write_bytes(b"partial")
    removed = sweep_stale(fold.path)
    assert removed == [dead] and mine.is_file() and fold.oof_tmp.is_file()
