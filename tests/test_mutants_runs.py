"""segkit.runs where mutation testing found it unchecked (`make mutate`): the run folder's file names (what
train, predict, Kaggle kernels and a user's own scripts open), the pseudo-label round paths, the checkpoint
search under a Kaggle input, the weight-shaping settings and every damaged-file message in full. Each expected
path and message is written out from the layout in the module docstring, not read back from the code."""
import json

import numpy as np
import pytest

from segkit.config import config_from_dict
from segkit.errors import ConfigError, TrainingError
from segkit.runs import (FoldDir, PseudoData, PseudoRoundDir, RunDir, all_folds_done, changed_keys, ensembled_tags,
                         find_fold_dirs, fold_source_pattern, open_pseudo, pseudo_round_of, weight_settings)


def cfg_for(tmp_path, **sections):
    raw = {"name": "r1", "output": {"runs_dir": str(tmp_path / "runs")},
           "models": [{"name": "unet", "tag": "unet"}, {"name": "unet", "tag": "u2"}], "train": {"folds": 2}}
    raw.update(sections)
    return config_from_dict(raw)


def test_every_run_and_fold_file_name(tmp_path):
    run = RunDir(tmp_path / "r")
    names = {"weights": "weights.json", "metrics": "metrics.json", "report": "report.html", "plots": "plots",
             "evaluation": "evaluation", "pseudo": "pseudo", "kaggle": "kaggle", "plan": "plan.json",
             "config": "config.yaml", "folds": "folds.csv", "postprocess": "postprocess.json"}
    for attr, name in names.items():
        assert getattr(run, attr) == tmp_path / "r" / name, attr
    assert run.kaggle_pushes == tmp_path / "r" / "kaggle" / "pushes.json"
    assert run.kaggle_submissions == tmp_path / "r" / "kaggle" / "submissions.json"
    assert run.kaggle_logs == tmp_path / "r" / "kaggle" / "logs"
    fold = run.fold("unet", 3)
    assert (fold.tag, fold.k) == ("unet", 3) and repr(fold) == f"FoldDir({tmp_path / 'r' / 'unet' / 'fold_3'})"
    assert repr(run) == f"RunDir({tmp_path / 'r'})"
    assert fold.best_raw.name == "best_raw.keras" and fold.oof_label.name == "oof_label.npy"
    assert fold.fingerprint.name == "fingerprint.json" and fold.oof_tmp.name.endswith(".npy")
    assert fold.oof_tmp.name.startswith(".") and fold.oof_tmp.parent == fold.path
    assert fold.snapshot(7).name == "swa_epoch_0007.npz" and fold.snapshot(123).name == "swa_epoch_0123.npz"
    assert fold.restart_hint() == "`segkit train --restart-fold 3 CONFIG [key=value ...]`"
    assert fold_source_pattern("demo") == "<source>/runs/demo/<model>/fold_<k>/best.keras"


def test_swa_snapshots_listed_in_epoch_order(tmp_path):
    fold = FoldDir(tmp_path / "f", "unet", 0)
    fold.path.mkdir()
    for e in (12, 3, 100):
        fold.snapshot(e).write_bytes(b"")
    (fold.path / "swa_epoch_x.txt").write_bytes(b"")
    assert [p.name for p in fold.snapshots()] == ["swa_epoch_0003.npz", "swa_epoch_0012.npz", "swa_epoch_0100.npz"]


def test_fingerprint_round_trip_and_old_folds(tmp_path):
    fold = FoldDir(tmp_path / "run" / "unet" / "fold_0", "unet", 0)
    assert fold.read_fingerprint() is None  # not started
    fold.write_fingerprint({"seed": 1, "train.loss": "bce"})  # makes the folder
    assert json.loads(fold.fingerprint.read_text()) == {"settings": {"seed": 1, "train.loss": "bce"}}
    assert fold.read_fingerprint() == {"seed": 1, "train.loss": "bce"}
    fold.fingerprint.write_text('{"seed": 2}')  # an older segkit wrote the settings bare
    assert fold.read_fingerprint() == {"seed": 2}
    fold.fingerprint.write_text("{")
    with pytest.raises(TrainingError) as info:
        fold.read_fingerprint()
    assert str(info.value).startswith(f"{fold.fingerprint}: damaged (")
    assert str(info.value).endswith("); delete it (the fold is then trusted) or run "
                                    "`segkit train --restart-fold 0 CONFIG [key=value ...]`")


def test_done_and_state_need_their_fields(tmp_path):
    fold = FoldDir(tmp_path / "f", "unet", 2)
    fold.path.mkdir()
    assert not fold.is_done()
    fold.done.write_text('{"epochs": 3}')
    assert fold.is_done()
    with pytest.raises(TrainingError) as info:
        fold.read_done()
    assert str(info.value) == (f"{fold.done}: damaged (expected a JSON object with epochs, best); delete it and run "
                               "`segkit train --restart-fold 2 CONFIG [key=value ...]` to retrain this fold")
    fold.done.write_text('{"epochs": 3, "best": 0.5}')
    assert fold.read_done() == {"epochs": 3, "best": 0.5}
    fold.state.write_text('{"epoch": 1, "best": 0.2, "history": []}')
    assert fold.read_state() is None  # no last.keras beside it
    fold.last.write_bytes(b"")
    assert fold.read_state() == {"epoch": 1, "best": 0.2, "history": []}
    fold.state.write_text('{"epoch": 1, "best": 0.2}')
    with pytest.raises(TrainingError, match=r"expected a JSON object with epoch, best, history\); delete "):
        fold.read_state()
    fold.state.write_text('\xff')
    fold.state.write_bytes(b"\xff\xfe{")
    with pytest.raises(TrainingError, match=r"state.json: damaged \("):
        fold.read_state()


def test_missing_json_names_the_file_and_the_fix(tmp_path):
    run = RunDir(tmp_path / "r")
    with pytest.raises(TrainingError) as info:
        run.read_weights()
    assert str(info.value) == (f"{run.weights}: not found; run `segkit tune CONFIG` to tune the weights again, "
                               "or set predict.tune_weights=false")
    run.path.mkdir()
    run.postprocess.write_text("[1]")  # JSON, not an object
    with pytest.raises(TrainingError) as info:
        run.read_postprocess()
    assert str(info.value) == (f"{run.postprocess}: damaged (expected a JSON object with classes); delete it and "
                               "run `segkit tune CONFIG` to tune it again")


def test_long_errors_are_cut_to_one_short_line():
    from segkit.runs import _short

    assert _short(ValueError("bad\n   value " + "x" * 300)) == "bad value " + "x" * 150  # 160 characters
    assert _short(ValueError(" a\tb ")) == "a b"


@pytest.mark.parametrize("weights, ok", [
    ({"a": 1, "b": 0}, True), ({"a": 0.5}, True), ({"a": 0, "b": 0}, False), ({"a": -1, "b": 2}, False),
    ({"a": True}, False), ({"a": "1"}, False), ({}, False), ([1], False)])
def test_tuned_weights_are_numbers_at_least_zero_one_above(tmp_path, weights, ok):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    run.write_weights({"weights": weights, "score": 0.5})
    assert json.loads(run.weights.read_text()) == {"weights": weights, "score": 0.5}
    if ok:
        assert run.read_weights()["weights"] == weights
    else:
        with pytest.raises(TrainingError) as info:
            run.read_weights()
        assert str(info.value) == (f"{run.weights}: 'weights' must map model tags to numbers ≥ 0; run `segkit tune "
                                   "CONFIG` to tune the weights again, or set predict.tune_weights=false")


def test_postprocess_numbers_exclude_booleans(tmp_path):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    run.write_postprocess({"classes": [{"threshold": True, "min_area": 0}]})
    with pytest.raises(TrainingError) as info:
        run.read_postprocess()
    assert str(info.value) == (f"{run.postprocess}: 'classes' must list {{threshold, min_area}} per class; delete "
                               "it and run `segkit tune CONFIG` to tune it again")
    run.write_postprocess({"classes": [{"threshold": 0.5, "min_area": 10}, {"threshold": 1, "min_area": 0.0}]})
    assert json.loads(run.postprocess.read_text())["classes"][1] == {"threshold": 1, "min_area": 0.0}
    assert len(run.read_postprocess()["classes"]) == 2 and len(run.read_postprocess(["a", "b"])["classes"]) == 2
    with pytest.raises(TrainingError) as info:
        run.read_postprocess(["a"])
    assert str(info.value) == (f"{run.postprocess}: tuned for 2 classes, the data has 1; delete it and run "
                               "`segkit tune CONFIG` to tune it again")


def test_plan_and_metrics_files(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.read_plan() is None
    run.path.mkdir()
    run.write_plan({"spent_s": 12.5, "epochs": [3, 3]})
    assert run.read_plan() == {"spent_s": 12.5, "epochs": [3, 3]}
    run.plan.write_text('{"epochs": [3]}')
    with pytest.raises(TrainingError) as info:
        run.read_plan()
    assert str(info.value) == (f"{run.plan}: damaged (expected a JSON object with spent_s); delete {run.plan} to "
                               "plan the budget again")
    run.write_metrics({"score": 0.75})
    assert json.loads(run.metrics.read_text()) == {"score": 0.75}


def test_saved_config_round_trip_and_damage(tmp_path):
    cfg = cfg_for(tmp_path)
    run = RunDir.of(cfg)
    assert run.read_config() is None
    run.path.mkdir(parents=True)
    run.write_config(cfg)
    assert run.read_config().to_dict() == cfg.to_dict()
    run.config.write_text("train:\n  epoch: 3\n")
    with pytest.raises(TrainingError) as info:
        run.read_config()
    message = str(info.value)
    assert message.startswith(f"{run.config}: not a valid saved config (") and "train.epoch" in message
    assert message.endswith("); delete it to use the given config as it is")


def test_wipe_a_fold_a_link_and_a_run(tmp_path):
    run = RunDir(tmp_path / "r")
    fold = run.fold("unet", 0)
    fold.path.mkdir(parents=True)
    fold.best.write_bytes(b"w")
    fold.wipe()
    assert not fold.path.exists() and (tmp_path / "r" / "unet").is_dir()
    fold.wipe()  # nothing there: nothing to do
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "best.keras").write_bytes(b"w")
    fold.path.symlink_to(target)
    fold.wipe()
    assert not fold.path.is_symlink() and (target / "best.keras").is_file()  # the link goes, not what it points at
    fold.path.write_bytes(b"a file where the folder should be")
    fold.wipe()
    assert not fold.path.exists()
    run.wipe()
    assert not run.path.exists()
    run.wipe()
    other = tmp_path / "other_run"
    other.mkdir()
    linked = RunDir(tmp_path / "linked")
    linked.path.symlink_to(other)
    linked.wipe()
    assert not linked.path.is_symlink() and other.is_dir()


def test_pseudo_round_folders(tmp_path):
    run = RunDir(tmp_path / "demo")
    assert run.pseudo_rounds() == []
    rnd = run.pseudo_round(2)
    assert rnd.path == tmp_path / "demo" / "pseudo" / "round_2" and rnd.round == 2
    assert repr(rnd) == f"PseudoRoundDir({rnd.path})"
    assert (rnd.ids.name, rnd.report.name, rnd.cache.name) == ("ids.csv", "report.json", "cache")
    assert rnd.source.path == run.path
    assert PseudoRoundDir(tmp_path / "round_x").round is None and PseudoRoundDir(tmp_path / "xround_3").round is None
    for r in (10, 2, 1):
        run.pseudo_round(r).path.mkdir(parents=True)
    (run.pseudo / "round_a").mkdir()
    (run.pseudo / "notes").mkdir()
    assert [r.round for r in run.pseudo_rounds()] == [1, 2, 10]  # numeric order, not 1, 10, 2
    assert not rnd.is_complete()
    with pytest.raises(TrainingError) as info:
        rnd.read_report()
    assert str(info.value) == f"{rnd.report}: not found; run `segkit pseudo CONFIG` again to rewrite the round"
    rnd.write_report({"n_kept": 3, "classes": ["salt"], "digest": "abc"})
    assert rnd.is_complete() and rnd.read_report()["n_kept"] == 3
    assert rnd.report.read_text().startswith('{\n  "n_kept": 3')  # indented for a reader
    rnd.write_ids({"id": ["a", "b"], "salt": [1, 0]})
    assert rnd.ids.read_text().splitlines() == ["id,salt", "a,1", "b,0"]
    data = PseudoData(rnd, {"n_kept": "3", "digest": "abc"}, None)
    assert data.summary == "3 images, sha1 abc"


def test_train_pseudo_names_a_round(tmp_path):
    runs = tmp_path / "runs"
    assert pseudo_round_of(cfg_for(tmp_path)) is None
    for spec in ("demo/1", "demo/round_1", " demo/1 ", "demo\\1"):
        assert pseudo_round_of(cfg_for(tmp_path, train={"folds": 2, "pseudo": spec})).path == \
            runs / "demo" / "pseudo" / "round_1", spec
    folder = tmp_path / "my" / "round_4"
    assert pseudo_round_of(cfg_for(tmp_path, train={"folds": 2, "pseudo": str(folder)})).path == folder
    assert pseudo_round_of(cfg_for(tmp_path, train={"folds": 2, "pseudo": str(folder)})).round == 4
    local = tmp_path / "demo"
    (local / "2").mkdir(parents=True)  # an existing folder of that name is taken as the round folder
    assert pseudo_round_of(cfg_for(tmp_path, train={"folds": 2, "pseudo": str(local / "2")})).path == local / "2"


def test_open_pseudo_refuses_a_missing_incomplete_or_empty_round(tmp_path):
    assert open_pseudo(cfg_for(tmp_path), cache=None) is None
    cfg = cfg_for(tmp_path, train={"folds": 2, "pseudo": "demo/1"})
    rnd = RunDir(tmp_path / "runs" / "demo").pseudo_round(1)
    fix = ("write it with `segkit pseudo CONFIG name=<source run>` (then train.pseudo=<source run>/<round>), or "
           "set train.pseudo=null")
    with pytest.raises(TrainingError) as info:
        open_pseudo(cfg, cache=None)
    assert str(info.value) == f"train.pseudo: 'demo/1': pseudo-label round {rnd.path} not found; {fix}"
    rnd.path.mkdir(parents=True)
    with pytest.raises(TrainingError) as info:
        open_pseudo(cfg, cache=None)
    assert str(info.value) == (f"train.pseudo: 'demo/1': pseudo-label round {rnd.path} incomplete (no report.json); "
                               f"{fix}")
    rnd.write_report({"n_kept": 0, "classes": [], "digest": "x"})
    with pytest.raises(TrainingError) as info:
        open_pseudo(cfg, cache=None)
    assert str(info.value) == (f"train.pseudo: 'demo/1': round {rnd.path} kept no image; loosen pseudo.low / "
                               "pseudo.high / pseudo.max_uncertain and run `segkit pseudo` again, or set "
                               "train.pseudo=null")
    rnd.write_report({"n_kept": 2, "classes": [], "digest": "x"})
    with pytest.raises(TrainingError) as info:
        open_pseudo(cfg, cache=None)  # no cache/ in the round
    assert str(info.value).startswith("train.pseudo: 'demo/1': ")
    assert str(info.value).endswith(" (run `segkit pseudo CONFIG` again to rewrite the round)")


def test_checkpoints_found_at_any_depth_a_finished_fold_first(tmp_path):
    def ckpt(*parts, done=False):
        fold = tmp_path.joinpath(*parts)
        fold.mkdir(parents=True)
        (fold / "best.keras").write_bytes(b"")
        if done:
            (fold / "done.json").write_text("{}")
        return fold

    a = ckpt("runs", "demo", "unet", "fold_0")                      # depth 1
    b = ckpt("d1", "d2", "d3", "d4", "demo", "unet", "fold_1")      # depth 4
    ckpt("d1", "d2", "d3", "d4", "d5", "d6", "demo", "unet", "fold_2")  # depth 6: past max_depth 5
    ckpt("runs", "demo", "other", "fold_3")                         # a tag not asked for
    ckpt("runs", "demo", "unet", "fold_x")                          # not a fold number
    ckpt("runs", "other_run", "unet", "fold_4")                     # another run
    done = ckpt("x", "demo", "unet", "fold_0", done=True)           # depth 1 too, finished
    ckpt("y", "demo", "unet", "fold_0")                             # unfinished: does not replace the finished one
    found = find_fold_dirs(tmp_path, "demo", ["unet"])
    assert found == {("unet", 0): done, ("unet", 1): b}
    assert find_fold_dirs(tmp_path, "demo", ["unet"], max_depth=3) == {("unet", 0): done}
    assert find_fold_dirs(tmp_path / "runs", "demo", ["unet"], max_depth=0) == {("unet", 0): a}
    assert find_fold_dirs(tmp_path, "demo", ["unet"], max_depth=6)[("unet", 2)].name == "fold_2"
    assert find_fold_dirs(tmp_path / "runs", "demo", ["unet"]) == {("unet", 0): a}


def test_all_folds_done_and_the_ensembled_models(tmp_path):
    cfg = cfg_for(tmp_path)
    run = RunDir.of(cfg)
    assert not all_folds_done(cfg)
    for tag in ("unet", "u2"):
        for k in range(2):
            run.fold(tag, k).path.mkdir(parents=True)
            run.fold(tag, k).done.write_text("{}")
            assert all_folds_done(cfg) == ((tag, k) == ("u2", 1))
    assert ensembled_tags(cfg) == ["unet", "u2"]
    assert ensembled_tags(cfg_for(tmp_path, predict={"models": ["u2"]})) == ["u2"]
    with pytest.raises(ConfigError) as info:
        ensembled_tags(cfg_for(tmp_path, predict={"models": ["u2", "u3"]}))
    assert str(info.value) == "predict.models: no model tagged ['u3'] in this config (tags: ['unet', 'u2'])"


def test_weight_settings_list_what_shapes_the_weights(tmp_path):
    s = weight_settings(cfg_for(tmp_path))
    assert s["seed"] == 42 and s["train.folds"] == 2 and s["train.loss"] == "bce_dice"
    for key in ("data.competition", "data.options", "data.image_size", "data.max_train_samples", "models.unet",
                "models.u2", "train.metrics", "train.learning_rate", "train.batch_size", "train.augment",
                "train.steps_per_epoch", "train.early_stopping_patience", "train.reduce_lr_patience",
                "train.reduce_lr_factor"):
        assert key in s, key
    assert s["train.mixed_precision"] is None  # "auto", the default, reads as null did before it existed
    assert not any(k.startswith(("train.ema", "train.swa", "train.pseudo", "train.time_budget", "train.epochs"))
                   for k in s)
    assert weight_settings(cfg_for(tmp_path), "u2").keys() == s.keys() - {"models.unet"}
    set_ = weight_settings(cfg_for(tmp_path, train={"folds": 2, "ema": 0.99, "mixed_precision": "float32",
                                                    "warmup_epochs": 2}))
    assert set_["train.ema"] == 0.99 and set_["train.warmup_epochs"] == 2
    assert set_["train.mixed_precision"] == "float32"
    assert isinstance(s["data.image_size"], list)  # as it reads back from JSON


def test_changed_keys_show_unset_and_structured_values():
    old = {"a": 1, "b": [1, 2], "gone": "x"}
    new = {"a": 1, "b": [2, 1], "c": {"y": 1, "x": 2}}
    assert changed_keys(old, new) == ['b: [1, 2] → [2, 1]', 'c: \'(unset)\' → {"x": 2, "y": 1}',
                                      "gone: 'x' → '(unset)'"]
    assert changed_keys(new, new) == []
    assert np.array_equal(np.array(changed_keys({}, {"k": None})), np.array(["k: '(unset)' → None"]))


class FakeCache:
    """What RunData reads of a cache: images, masks, ids and a length."""

    def __init__(self, masks, prefix):
        self.masks = np.asarray(masks, np.uint8)
        self.images = np.zeros(self.masks.shape[:3] + (1,), np.uint8)
        self.ids = [f"{prefix}{i}" for i in range(len(self.masks))]
        self.path = prefix

    def __len__(self):
        return len(self.ids)


def test_a_fold_trains_on_its_split_plus_the_pseudo_images():
    from segkit.runs import RunData

    train = FakeCache(np.zeros((5, 2, 2, 2)), "t")
    masks = np.zeros((3, 2, 2, 2))
    masks[0, 0, 0, 0] = 1  # pseudo image 0: only channel 0 (a softmax model's background)
    masks[2, 1, 1, 1] = 1  # pseudo image 2: channel 1; pseudo image 1: empty
    pseudo = PseudoData(PseudoRoundDir("r/pseudo/round_1"), {"n_kept": 3, "digest": "d"}, FakeCache(masks, "p"))
    plain = RunData(None, [], train, np.zeros(5))
    cache, idx = plain.training_source(np.array([0, 2]))
    assert cache is train and idx.tolist() == [0, 2]
    data = RunData(None, [], train, np.zeros(5), pseudo)
    cache, idx = data.training_source(np.array([0, 2], np.int32))
    assert idx.tolist() == [0, 2, 5, 6, 7] and idx.dtype == np.int64  # pseudo images after the 5 training ones
    assert len(cache) == 8 and cache.ids == ["t0", "t1", "t2", "t3", "t4", "p0", "p1", "p2"]
    assert np.asarray(cache.masks[7]).tolist() == masks[2].tolist()
    assert data.training_source(np.array([1]), nonempty_only=True)[1].tolist() == [1, 5, 7]
    assert data.training_source(np.array([1]), nonempty_only=True, skip_first=True)[1].tolist() == [1, 7]
    assert data.training_source(np.array([1]), skip_first=True)[1].tolist() == [1, 5, 6, 7]


def test_fingerprint_names_the_samples_split_models_and_pseudo_round(tmp_path):
    import hashlib

    from segkit.runs import fold_fingerprint

    cfg = cfg_for(tmp_path)
    ids = ["a", "b", "c"]
    folds = np.array([0, 1, 0])
    fp = fold_fingerprint(cfg, "unet", ids, folds)
    assert fp["data.samples"] == f"3 ids, sha1 {hashlib.sha1(b'a' + bytes([10]) + b'b' + bytes([10]) + b'c').hexdigest()[:12]}"
    assert fp["train.split"] == f"sha1 {hashlib.sha1(np.array([0, 1, 0], np.int64).tobytes()).hexdigest()[:12]}"
    assert fold_fingerprint(cfg, "unet", ids, folds.astype(np.int32)) == fp  # the split, not its dtype
    assert fold_fingerprint(cfg, "unet", ids, [0, 1, 0]) == fp
    assert "train.pseudo_data" not in fp
    pseudo = PseudoData(PseudoRoundDir(tmp_path / "round_1"), {"n_kept": 3, "digest": "abc"}, None)
    assert fold_fingerprint(cfg, "unet", ids, folds, pseudo)["train.pseudo_data"] == "3 images, sha1 abc"
    deeper = cfg_for(tmp_path, models=[{"name": "unet", "tag": "unet", "depth": 3}, {"name": "unet", "tag": "u2"}])
    assert [k.split(":")[0] for k in changed_keys(fp, fold_fingerprint(deeper, "unet", ids, folds))] == ["models.unet"]
    assert fp["models.unet"]["name"] == "unet"


def test_between_two_unfinished_folds_the_first_found_stays(tmp_path):
    for parent in ("a", "b"):
        fold = tmp_path / parent / "demo" / "unet" / "fold_2"
        fold.mkdir(parents=True)
        (fold / "best.keras").write_bytes(b"")
    assert find_fold_dirs(tmp_path, "demo", ["unet"]) == {("unet", 2): tmp_path / "a" / "demo" / "unet" / "fold_2"}


def test_open_pseudo_checks_the_round_against_the_training_cache(tmp_path, monkeypatch):
    import segkit.data.cache

    cfg = cfg_for(tmp_path, train={"folds": 2, "pseudo": "demo/1"})
    rnd = RunDir(tmp_path / "runs" / "demo").pseudo_round(1)
    rnd.path.mkdir(parents=True)
    rnd.write_report({"n_kept": 2, "classes": ["a"], "digest": "d"})
    mine = FakeCache(np.zeros((4, 8, 8, 2)), "t")
    theirs = FakeCache(np.zeros((2, 8, 8, 2)), "p")
    monkeypatch.setattr(segkit.data.cache.Cache, "open", staticmethod(lambda path: theirs))
    data = open_pseudo(cfg, mine)
    assert data.round.path == rnd.path and data.report["digest"] == "d" and data.cache is theirs
    for images, masks, said in (((2, 16, 16, 1), (2, 16, 16, 2), "images (16, 16, 1) uint8 / masks (16, 16, 2)"),
                                ((2, 8, 8, 1), (2, 8, 8, 3), "images (8, 8, 1) uint8 / masks (8, 8, 3)")):
        theirs.images, theirs.masks = np.zeros(images, np.uint8), np.zeros(masks, np.uint8)
        with pytest.raises(TrainingError) as info:
            open_pseudo(cfg, mine)
        assert str(info.value) == (f"train.pseudo: 'demo/1': round {rnd.path} holds {said}, the training cache "
                                   "(8, 8, 1) uint8 / (8, 8, 2); write the round with the same data settings "
                                   "(data.image_size, data.competition)")
    theirs.images, theirs.masks = np.zeros((2, 8, 8, 1), np.float32), np.zeros((2, 8, 8, 2), np.uint8)
    with pytest.raises(TrainingError, match=r"holds images \(8, 8, 1\) float32 / masks \(8, 8, 2\), the training "):
        open_pseudo(cfg, mine)


def test_run_json_files_are_indented_for_reading(tmp_path):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    for write, path in ((run.write_metrics, run.metrics), (run.write_plan, run.plan),
                        (run.write_postprocess, run.postprocess), (run.write_weights, run.weights)):
        write({"k": [1]})
        assert path.read_text() == '{\n  "k": [\n    1\n  ]\n}', path.name


def test_a_fingerprint_is_rewritten_in_place_and_a_report_needs_its_digest(tmp_path):
    fold = FoldDir(tmp_path / "f", "unet", 0)
    fold.write_fingerprint({"seed": 1})
    fold.write_fingerprint({"seed": 2})  # the folder exists already
    assert fold.read_fingerprint() == {"seed": 2}
    rnd = PseudoRoundDir(tmp_path / "round_1")
    rnd.path.mkdir()
    rnd.report.write_text('{"n_kept": 1, "classes": []}')
    with pytest.raises(TrainingError) as info:
        rnd.read_report()
    assert str(info.value) == (f"{rnd.report}: damaged (expected a JSON object with n_kept, classes, digest); run "
                               "`segkit pseudo CONFIG` again to rewrite the round")
