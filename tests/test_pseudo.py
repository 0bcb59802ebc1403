"""Pseudo-labelling: the selection rule on hand-made predictions (confident kept, uncertain dropped, a head or
gate that disagrees dropped), and one tiny run end to end through the CLI — train, `segkit pseudo`, train a new
run on the round — whose pseudo images are in every fold's training side and in no validation fold or OOF."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from segkit.cli import main
from segkit.config import load_config
from segkit.errors import ConfigError
from segkit.pseudo import binarise, select_confident

TINY_MODEL = "models=[{name: unet, tag: unet, depth: 2, base_filters: 4}]"


# --- the selection rule on hand-made arrays ---------------------------------------------------------------

def _maps() -> np.ndarray:
    """Five 4×4 images × 2 classes: 0 confident (an object in class 0, class 1 empty), 1 confident and empty,
    2 one uncertain pixel (0.5) in class 1, 3 one pixel at exactly `low` (0.05, not below it), 4 confident."""
    p = np.full((5, 4, 4, 2), 0.01, np.float32)
    p[0, :2, :2, 0] = 0.99
    p[2, 3, 3, 1] = 0.5
    p[3, 0, 0, 0] = 0.05
    p[4, 1:3, 1:3, 1] = 0.97
    return p


def test_confident_images_kept_uncertain_dropped():
    sel = select_confident(_maps(), low=0.05, high=0.95)
    assert sel.keep.tolist() == [True, True, False, False, True]
    assert sel.confident.tolist() == [[True, True], [True, True], [True, False], [False, True], [True, True]]
    assert sel.masks.dtype == np.uint8 and sel.masks[0, :2, :2, 0].all() and sel.masks[0].sum() == 4
    assert sel.masks[4, ..., 1].sum() == 4 and sel.masks[1].sum() == 0
    # one uncertain pixel of 16 (1/16 = 0.0625) is allowed from max_uncertain 1/16 on, not below
    assert select_confident(_maps(), max_uncertain=0.06).keep.tolist() == [True, True, False, False, True]
    assert select_confident(_maps(), max_uncertain=0.0625).keep.tolist() == [True] * 5
    # the band is configurable: with high 0.98 the 0.97 object of image 4 is no longer confident
    assert select_confident(_maps(), high=0.98).keep.tolist() == [True, True, False, False, False]


def test_classifier_head_must_be_confident_and_agree():
    p = _maps()
    label = np.array([[0.99, 0.02], [0.01, 0.01], [0.01, 0.01], [0.01, 0.01], [0.02, 0.98]], np.float32)
    assert select_confident(p, label=label).keep.tolist() == [True, True, False, False, True]
    disagree = label.copy()
    disagree[1, 0] = 0.99  # the head says class 0 is present in an image whose mask is empty
    disagree[4, 1] = 0.01  # ... and absent where the mask has an object
    sel = select_confident(p, label=disagree)
    assert sel.keep.tolist() == [True, False, False, False, False]
    assert sel.agrees[1].tolist() == [False, True] and sel.agrees[4].tolist() == [True, False]
    unsure = label.copy()
    unsure[0, 1] = 0.5  # agrees (says empty) but is not confident
    sel = select_confident(p, label=unsure)
    assert sel.keep.tolist() == [False, True, False, False, True] and sel.confident[0].tolist() == [True, False]


def test_gate_disagreement_dropped():
    p = _maps()
    present = np.array([[1, 0], [0, 0], [0, 0], [0, 0], [0, 1]], bool)
    assert select_confident(p, gate_empty=~present).keep.tolist() == [True, True, False, False, True]
    gate_empty = ~present
    gate_empty[0, 0] = True  # the gate empties class 0 of image 0, whose confident mask has an object
    sel = select_confident(p, gate_empty=gate_empty)
    assert sel.keep.tolist() == [False, True, False, False, True] and sel.agrees[0].tolist() == [False, True]


def test_thresholds_and_softmax_binarise():
    p = np.zeros((1, 2, 2, 3), np.float32)
    p[0, 0, 0] = [0.7, 0.2, 0.1]
    p[0, 0, 1] = [0.1, 0.3, 0.6]
    assert binarise(p, [0.5, 0.25, 0.5])[0, 0, 1].tolist() == [0, 1, 1]
    hot = binarise(p, activation="softmax")
    assert hot.sum(-1)[0].tolist() == [[1, 1], [1, 1]] and hot[0, 0, 0].tolist() == [1, 0, 0]
    assert hot[0, 0, 1].tolist() == [0, 0, 1]


@pytest.mark.parametrize("override, says", [
    ("pseudo.low=1.5", "pseudo.low: must be a probability"),
    ("pseudo.high=-0.1", "pseudo.high: must be a probability"),
    ("pseudo.low=0.96", "pseudo.low: must be below pseudo.high (0.95)"),
    ("pseudo.max_uncertain=1", "pseudo.max_uncertain: must be a fraction in [0, 1)"),
    ("pseudo.round=0", "pseudo.round: must be ≥ 1"),
    ("pseudo.gate=maybe", "pseudo.gate: expected true or false"),
    ("pseudo.hihg=0.9", "pseudo.hihg: unknown config key; did you mean 'pseudo.high'?"),
    ("train.pseudo=' '", "train.pseudo: give a round as <run>/<round>"),
])
def test_bad_keys_name_the_key(override, says):
    with pytest.raises(ConfigError) as err:
        load_config("demo", [override])
    assert says in str(err.value)


# --- a tiny run end to end ----------------------------------------------------------------------------------

def overrides(base: Path, *extra: str, runs: Path | None = None) -> list[str]:
    runs = runs or base / "runs"
    return [
        f"data.root={base / 'data'}", "data.image_size=32", f"data.cache_dir={base / 'cache'}",
        f"output.runs_dir={runs}", f"output.submissions_dir={runs.parent / 'subs'}",
        "train.folds=2", "train.epochs=1", "train.batch_size=8", "train.workers=1", "train.verbose=0",
        "train.early_stopping_patience=50", "predict.tta=[identity]", "postprocess.threshold_grid=[0.3,0.5,0.7]",
        TINY_MODEL, *extra,
    ]


# every probability is > 1e-6, so every test image is "confident"; threshold 0 makes every mask all ones
KEEP_ALL = ("pseudo.low=0", "pseudo.high=0.000001", "postprocess.tune=false", "postprocess.threshold=0")


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *says: str) -> None:
    assert code == 1, err
    line = err.strip()
    assert "\n" not in line and line.startswith("segkit: error: ") and "Traceback" not in line, err
    for text in says:
        assert text in line, line


@pytest.fixture(scope="module")
def rounds(tmp_path_factory):
    """A trained run `demo`, its pseudo-label round 1 (every test image kept) and a run `demo_p1` trained on it:
    (base folder, round-1 report, demo_p1's training log)."""
    import contextlib
    import io

    from segkit.data.synth import generate

    base = tmp_path_factory.mktemp("pseudo")
    generate("cloud38", base / "data", seed=3, patch_size=32, n_train_scenes=3, n_test_scenes=1)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        assert main(["train", "demo", *overrides(base)]) == 0
        assert main(["pseudo", "demo", *overrides(base, *KEEP_ALL)]) == 0
        assert main(["train", "demo", *overrides(base, "name=demo_p1", "train.pseudo=demo/1")]) == 0
    report = json.loads((base / "runs" / "demo" / "pseudo" / "round_1" / "report.json").read_text())
    return base, report, log.getvalue()


def test_round_holds_the_kept_test_images_and_masks(rounds):
    from segkit.data.cache import Cache

    base, report, log = rounds
    rnd = base / "runs" / "demo" / "pseudo" / "round_1"
    test = Cache.open(base / "cache" / "cloud38-test-32x32")
    assert report["n_test"] == len(test) and report["n_kept"] == len(test) > 0 and report["round"] == 1
    assert report["classes"] == [{"name": "cloud", "kept_nonempty": len(test), "kept_empty": 0,
                                  "confident": len(test)}]
    cache = Cache.open(rnd / "cache")
    assert cache.ids == test.ids and np.array_equal(np.asarray(cache.images), np.asarray(test.images))
    assert cache.masks.dtype == np.uint8 and np.asarray(cache.masks).min() == 1  # threshold 0: all ones
    ids = pd.read_csv(rnd / "ids.csv", dtype={"id": str})
    assert list(ids["id"]) == test.ids and (ids["cloud_pixels"] == 32 * 32).all()
    assert f"[pseudo] round 1: kept {len(test)} of {len(test)} test images" in log
    assert "kept non-empty" in log and "train.pseudo=demo/1" in log


def test_pseudo_images_train_every_fold_and_never_validate(rounds):
    from segkit.runs import RunDir, open_run_data

    base, report, log = rounds
    n_pseudo = report["n_kept"]
    rd = RunDir(base / "runs" / "demo_p1")
    source_folds = pd.read_csv(base / "runs" / "demo" / "folds.csv", dtype={"id": str})
    folds = pd.read_csv(rd.folds, dtype={"id": str})
    pseudo_ids = set(pd.read_csv(base / "runs" / "demo" / "pseudo" / "round_1" / "ids.csv", dtype={"id": str})["id"])
    assert folds.equals(source_folds)  # the split lists the training samples only
    assert not pseudo_ids & set(folds["id"])
    n = len(folds)
    covered = []
    for k in range(2):
        fold = rd.fold("unet", k)
        done = json.loads(fold.done.read_text())
        assert done["n_pseudo"] == n_pseudo and done["n_train"] == int((folds["fold"] != k).sum())
        assert done["n_val"] == int((folds["fold"] == k).sum())
        index = np.load(fold.oof_index)
        assert sorted(index.tolist()) == np.flatnonzero(folds["fold"].to_numpy() == k).tolist()
        assert np.load(fold.oof).shape[0] == len(index)
        covered += index.tolist()
        settings = json.loads(fold.fingerprint.read_text())["settings"]
        assert settings["train.pseudo"] == "demo/1"
        assert settings["train.pseudo_data"] == f"{n_pseudo} images, sha1 {report['digest']}"
        assert f"[unet fold {k}] {done['n_train']} train (+{n_pseudo} pseudo-labelled) / {done['n_val']} val" in log
    assert sorted(covered) == list(range(n))  # OOF: every true sample once, no pseudo image
    # the indices train_fold feeds: pseudo images past the training samples, on the training side only
    cfg = load_config("demo", overrides(base, "name=demo_p1", "train.pseudo=demo/1"))
    run = open_run_data(cfg, quiet=True, pseudo=True)
    for k in range(2):
        cache, idx = run.training_source(np.flatnonzero(run.folds != k))
        assert len(cache) == n + n_pseudo
        assert idx[idx >= n].tolist() == list(range(n, n + n_pseudo))
        assert set(idx[idx < n].tolist()).isdisjoint(np.flatnonzero(run.folds == k).tolist())
        assert np.array_equal(np.asarray(cache.masks[n]), np.asarray(run.pseudo.cache.masks[0]))
    import pickle

    again = pickle.loads(pickle.dumps(cache))  # worker processes get the caches by path, never copied arrays
    assert again.ids == cache.ids and np.array_equal(np.asarray(again.images[n + 1]), np.asarray(cache.images[n + 1]))
    assert open_run_data(cfg, quiet=True).pseudo is None  # tune / OOF readers never see the round
    assert "[train] finished folds:" in log and rd.postprocess.is_file()


def test_rounds_are_refused_when_missing_empty_own_or_changed(rounds, tmp_path, capsys):
    base, report, _ = rounds
    runs = tmp_path / "runs"
    shutil.copytree(base / "runs", runs, symlinks=True)

    def args(*extra: str) -> list[str]:
        return ["demo", *overrides(base, *extra, runs=runs)]

    code, _, err = cli(capsys, "train", *args("name=demo_p9", "train.pseudo=demo/9"))
    assert_one_line_error(code, err, "train.pseudo: 'demo/9'", str(runs / "demo" / "pseudo" / "round_9"),
                          "not found", "segkit pseudo CONFIG")
    assert not (runs / "demo_p9").exists()
    # a round that keeps nothing (nothing is below 0 or above 1) is written, reported and refused for training
    code, out, err = cli(capsys, "pseudo", *args("pseudo.low=0", "pseudo.high=1", "pseudo.round=3"))
    assert code == 0, err
    assert "[pseudo] round 3: kept 0 of" in out
    code, _, err = cli(capsys, "train", *args("name=demo_p3", "train.pseudo=demo/round_3"))
    assert_one_line_error(code, err, "train.pseudo: 'demo/round_3'", "kept no image", "pseudo.low")
    # the notebook API writes a round the same way
    import segkit as sk

    api = sk.Run("demo", overrides(base, runs=runs), quiet=True).pseudo(low=0, high=1, round=4)
    assert api["round"] == 4 and api["n_kept"] == 0 and (runs / "demo" / "pseudo" / "round_4" / "ids.csv").is_file()
    # a run cannot train on its own round (--restart would delete it)
    code, _, err = cli(capsys, "train", *args("train.pseudo=demo/1"))
    assert_one_line_error(code, err, "train.pseudo: 'demo/1' is a round of this run", "name=demo_p1")
    # the round's content is fingerprinted: rewritten with other masks, demo_p1 refuses to reuse its folds
    code, out, err = cli(capsys, "pseudo", *args(*KEEP_ALL[:3], "postprocess.threshold=1"))
    assert code == 0 and "replacing" in out, err
    rewritten = json.loads((runs / "demo" / "pseudo" / "round_1" / "report.json").read_text())
    assert rewritten["n_kept"] == report["n_kept"] and rewritten["classes"][0]["kept_empty"] == report["n_kept"]
    from segkit.runs import open_run_data

    run = open_run_data(load_config("demo", args("name=demo_p1", "train.pseudo=demo/1")[1:]), quiet=True, pseudo=True)
    assert len(run.training_source(np.arange(3))[1]) == 3 + report["n_kept"]
    assert run.training_source(np.arange(3), nonempty_only=True)[1].tolist() == [0, 1, 2]  # positive-only models
    code, _, err = cli(capsys, "train", *args("name=demo_p1", "train.pseudo=demo/1"))
    assert_one_line_error(code, err, f"train.pseudo_data: '{report['n_kept']} images, sha1 {report['digest']}' → "
                          f"'{rewritten['n_kept']} images, sha1 {rewritten['digest']}'")
    # a path to the round folder names it too
    code, _, err = cli(capsys, "train", *args("name=demo_p1", f"train.pseudo={runs / 'demo' / 'pseudo' / 'round_1'}"))
    assert_one_line_error(code, err, "train.pseudo: 'demo/1' → ", "train.pseudo_data")
