"""Cross-validated post-processing: a step is kept only when its gain holds on folds it was not tuned on.

On hand-made OOF maps: predictions that carry no signal (whether an image gets a prediction, how confident and
how large it is are all independent of the truth) keep no step, though tuning on all OOF finds "gains"; a
synthetic Airbus run whose empty images get small confident false blobs keeps the gate; the decisions and
their evidence are saved in postprocess.json, printed by `segkit tune` and shown by the report; the notebook
API and the CLI settle on the same chain; a postprocess.json written before cross-validation still loads.
"""
import json

import numpy as np
import pytest

from segkit.config import load_config
from segkit.data.competitions.base import Adapter, adapter_class
from segkit.oof import OofClass
from segkit.postprocess import ChainParams, apply_chain
from segkit.postprocess.crossval import judge, max_cuts, standard_error
from segkit.postprocess.tuning import STEP_NAMES, format_steps, tune_class, tune_class_cv

S = 32


def coin_flip_predictions(n_pairs: int, seed: int):
    """Predictions independent of the truth, exactly so within the sample: each pair of blobs (confidence
    uniform in [0.55, 0.95], side 3-9) is drawn once and put on two images, one holding that very object (a
    right mask) and one ship-free (a false positive); as many images again hold an object nobody predicted or
    nothing at all. Background 0.05 everywhere. On all images together every threshold, min area, gate or top
    threshold removes as many right masks as wrong ones (gain exactly 0); on part of them it can look better,
    and then does as much worse on the rest."""
    rng = np.random.default_rng(seed)
    n = 4 * n_pairs
    truth = np.zeros((n, S, S), np.uint8)
    probs = np.full((n, S, S), 0.05, np.float32)
    order = rng.permutation(n)  # image order: right blob, false blob, missed object, nothing
    for j in range(n_pairs):
        side, conf = int(rng.integers(3, 10)), np.float32(rng.uniform(0.55, 0.95))
        right, false, missed = order[4 * j], order[4 * j + 1], order[4 * j + 2]
        for i in (right, false, missed):
            y, x = rng.integers(0, S - side, 2)
            if i != false:
                truth[i, y:y + side, x:x + side] = 1
            if i != missed:
                probs[i, y:y + side, x:x + side] = conf
    return probs, truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_signal_keeps_no_step(seed):
    probs, truth = coin_flip_predictions(30, seed)
    folds = np.arange(len(probs)) % 3
    cfg = load_config(None, ["postprocess.min_area_grid=[0,10,30,60]"])
    cv = tune_class_cv(Adapter("."), truth, OofClass(probs, probs, None), cfg, 1.0, S * S, folds)
    assert [r.kept for r in cv.cv.records] == [False] * 4, [(r.step, r.reason) for r in cv.cv.records]
    assert cv.row["threshold"] == 0.5 and cv.row["min_area"] == 0
    assert cv.row["gate"] is None and cv.row["top_threshold"] is None
    assert len({round(s, 12) for s, _ in cv.steps}) == 1  # every step leaves the plain 0.5 score
    # what a step tuned on two folds gained there it lost on the third: the held-out gains are negative
    assert all(r.oof_gain == pytest.approx(0.0) for r in cv.cv.records)
    assert min(r.cv_gain for r in cv.cv.records) < 0


def ships_and_false_blobs(n: int, seed: int = 0):
    """Synthetic Airbus OOF: 40 % of the images hold one 4×4 ship predicted right (0.97) with a soft wake
    around it (0.45, below any useful threshold); the other 60 % are ship-free but hold a 4×4 false blob as
    confident as a ship and with nothing around it. No threshold, min area or top threshold tells the two
    apart; the mean of the top-k probabilities (k larger than a ship) does: only the gate can help."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((n, S, S), np.uint8)
    probs = rng.uniform(0.0, 0.1, (n, S, S)).astype(np.float32)
    ship = rng.permutation(np.arange(n) < int(0.4 * n))
    for i in range(n):
        y, x = rng.integers(2, S - 6, 2)
        if ship[i]:
            probs[i, y - 1:y + 5, x - 1:x + 5] = 0.45
            truth[i, y:y + 4, x:x + 4] = 1
        probs[i, y:y + 4, x:x + 4] = 0.97
    return probs, truth


def airbus():
    cls = adapter_class("airbus")
    return cls.__new__(cls)


def test_airbus_false_blobs_keep_the_gate_and_the_chain_reproduces_its_score():
    probs, truth = ships_and_false_blobs(60)
    cfg = load_config("airbus", ["postprocess.min_area_grid=[0,10]", "postprocess.gate_topk_grid=[0.001,0.05]"])
    t = tune_class_cv(airbus(), truth, OofClass(probs, probs, None), cfg, 1.0, S * S, np.arange(60) % 3)
    decided = {r.step: r for r in t.cv.records}
    assert decided["gate"].kept and decided["gate"].cv_gain > decided["gate"].cv_se > 0
    assert not decided["threshold"].kept and not decided["min area"].kept
    assert t.row["gate"]["kind"] in ("topk", "area") and t.steps[0][0] == pytest.approx(0.4)
    assert t.steps[-1][0] == pytest.approx(1.0)
    masks = np.stack([apply_chain(p[..., None], ChainParams.from_dict({"classes": [t.row]}))[..., 0] for p in probs])
    assert airbus().score_class(truth, masks) == pytest.approx(1.0)
    assert decided["gate"].tried > 0 and t.empty_score == pytest.approx(0.6)


def test_too_few_images_cannot_be_judged_and_tune_class_keeps_its_signature():
    probs, truth = ships_and_false_blobs(5)
    row, steps = tune_class(airbus(), truth, OofClass(probs, probs, None), load_config("airbus", []), 1.0, S * S)
    assert row["gate"] is None and row["threshold"] == 0.5 and row["top_threshold"] is None
    assert len(steps) == len(STEP_NAMES) and len({s for s, _ in steps}) == 1


def test_the_rule_and_the_grid_bound():
    assert judge([0.02, 0.03, 0.025])[0]
    assert not judge([0.05, -0.04, 0.01])[0]  # positive mean, but within one standard error
    assert not judge([-0.01, -0.02])[0] and not judge([])[0]
    assert standard_error([1.0, 3.0]) == pytest.approx(1.0)
    assert max_cuts(10) == 8 and max_cuts(1000) == 200 and max_cuts(10**6) == 256


def test_format_steps_shows_the_evidence_and_warns_near_all_empty():
    result = {
        "classes": [{"name": "ship", "threshold": 0.5, "min_area": 0}],
        "baseline": {"step": "all empty", "oof_score": 0.6, "per_class": [0.6]},
        "steps": [{"step": "plain (0.5)", "oof_score": 0.59, "per_class": [0.59]},
                  {"step": "threshold", "oof_score": 0.59, "per_class": [0.59], "oof_gain": 0.03,
                   "cv_gain": -0.01, "cv_se": 0.02, "tried": [17], "kept": [False],
                   "reason": ["CV gain -0.0100 ≤ 0"]}],
        "crossval": {"rule": "RULE", "folds": "the run's 3 training folds", "n_folds": 3, "cv_score": 0.59,
                     "cv_score_plain": 0.59, "cv_score_empty": 0.6, "cv_gain_over_empty": -0.01,
                     "cv_se_over_empty": 0.01, "within_noise_of_empty": True},
    }
    text = format_steps(result)
    assert "OOF gain" in text and "CV gain ± SE" in text and "+0.0300" in text and "-0.0100 ± 0.0200" in text
    assert "dropped: CV gain -0.0100 ≤ 0" in text and "all empty" in text and "trivial baseline" in text
    assert "warning: the final score is within noise" in text and "rule: RULE" in text
    assert " 17 " in text


MODEL = "models=[{name: unet, tag: unet, depth: 2, base_filters: 4}]"


@pytest.fixture(scope="module")
def airbus_run(tmp_path_factory):
    """A real synthetic Airbus run folder (60 images, 32 px, 3 folds) whose OOF is written by hand: ship images
    predicted right (0.97) with a soft wake (0.45) around the ships, ship-free images with one 3×3 false blob
    at 0.97 and nothing around it. → (base, overrides, run data)."""
    from scipy import ndimage

    from segkit.data.io import atomic_save_npy
    from segkit.data.synth import generate
    from segkit.runs import RunDir, open_run_data

    base = tmp_path_factory.mktemp("cvrun")
    generate("airbus", base / "data", seed=4, image_size=32, n_train=60, n_test=2, ship_free=0.6, quiet=True)
    args = [f"data.root={base / 'data'}", "data.image_size=32", f"data.cache_dir={base / 'cache'}",
            "data.options.empty_fraction=1.0", f"output.runs_dir={base / 'runs'}",
            f"output.submissions_dir={base / 'subs'}", "train.folds=3", "postprocess.min_area_grid=[0]",
            "postprocess.gate_topk_grid=[0.001,0.05]", MODEL]
    cfg = load_config("airbus", args)
    run = open_run_data(cfg, quiet=True)
    masks = np.asarray(run.cache.masks[..., 0]) > 0
    rng = np.random.default_rng(0)
    probs = rng.uniform(0, 0.1, masks.shape).astype(np.float32)
    for i, m in enumerate(masks):
        if m.any():
            probs[i][ndimage.binary_dilation(m, iterations=1) & ~m] = 0.45
            probs[i][m] = 0.97
        else:
            y, x = rng.integers(2, 28, 2)
            probs[i, y:y + 3, x:x + 3] = 0.97
    rd = RunDir.of(cfg)
    for k in range(3):
        fold = rd.fold("unet", k)
        fold.path.mkdir(parents=True)
        idx = np.flatnonzero(run.folds == k)
        atomic_save_npy(fold.oof, probs[idx][..., None].astype(np.float16))
        atomic_save_npy(fold.oof_index, idx.astype(np.int64))
        fold.write_json(fold.done, {"epochs": 1, "best": 0.0})
    return base, args, run


def test_cli_and_notebook_api_give_the_same_chain_and_show_the_evidence(airbus_run, capsys):
    import segkit as sk
    from segkit.cli import main

    base, args, run = airbus_run
    pp = base / "runs" / "airbus" / "postprocess.json"
    assert main(["tune", "airbus", *args]) == 0
    out = capsys.readouterr().out
    from_cli = json.loads(pp.read_text())
    pp.unlink()
    from_api = sk.Run("airbus", args, quiet=True).tune()
    assert json.loads(pp.read_text()) == from_api
    for key in ("classes", "steps", "baseline", "crossval"):
        assert from_api[key] == from_cli[key], key

    steps = {s["step"]: s for s in from_cli["steps"]}
    assert steps["gate"]["kept"] == [True] and from_cli["classes"][0]["gate"] is not None
    assert steps["gate"]["cv_gain"] > steps["gate"]["cv_se"] and steps["gate"]["tried"][0] > 0
    assert steps["min area"]["kept"] == [False] and "not searched" in steps["min area"]["reason"][0]
    assert from_cli["crossval"]["folds"] == "the run's 3 training folds"
    assert from_cli["crossval"]["within_noise_of_empty"] is False
    assert 0 < from_cli["baseline"]["oof_score"] < from_cli["oof_score_tuned"]
    assert "CV gain ± SE" in out and "[tune] all empty" in out and "[tune] rule: A post-processing step" in out
    assert "kept: CV gain" in out

    # the report shows the same evidence: Δ, OOF-tuned gain, CV gain ± SE, the decision, the baseline
    assert main(["report", "--worst", "0", "airbus", *args]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith("+ gate"))
    assert f"{steps['gate']['cv_gain']:+.4f} ± {steps['gate']['cv_se']:.4f}" in line and "kept" in line
    assert "all empty (trivial baseline)" in out and "+ plain (0.5)" not in out  # the ensemble row says it
    assert "note: rule: A post-processing step" in out


def test_a_postprocess_file_from_before_cross_validation_still_loads(airbus_run, capsys):
    """A version 2 file without decisions, baseline or crossval (as segkit wrote it before): predict's chain
    and the report read it; the report marks steps without gain and no CV columns."""
    from segkit.cli import main
    from segkit.postprocess import load_chain

    base, args, run = airbus_run
    pp = base / "runs" / "airbus" / "postprocess.json"
    saved = pp.read_text() if pp.is_file() else None
    old = {"version": 2, "metric": "F2", "oof_score_default": 0.4, "oof_score_tuned": 0.9,
           "classes": [{"name": "ship", "threshold": 0.4, "min_area": 0, "gate": None, "top_threshold": 0.9,
                        "top_k": 1, "oof_score_default": 0.4, "oof_score_tuned": 0.9}],
           "steps": [{"step": "plain (0.5)", "oof_score": 0.4, "per_class": [0.4], "params": {}},
                     {"step": "threshold", "oof_score": 0.6, "per_class": [0.6], "params": {"ship": {"threshold": 0.6}}},
                     {"step": "min area", "oof_score": 0.6, "per_class": [0.6],
                      "params": {"ship": {"threshold": 0.6, "min_area": 0}}},
                     {"step": "gate", "oof_score": 0.6, "per_class": [0.6], "params": {"ship": {"gate": None}}},
                     {"step": "triplet", "oof_score": 0.9, "per_class": [0.9],
                      "params": {"ship": {"threshold": 0.4, "min_area": 0, "top_threshold": 0.9, "top_k": 1}}}]}
    try:
        pp.write_text(json.dumps(old))
        chain = load_chain(load_config("airbus", args), ["ship"])
        assert chain.classes[0].threshold == 0.4 and chain.classes[0].top_threshold == 0.9
        assert main(["report", "--worst", "0", "airbus", *args]) == 0
        out = capsys.readouterr().out
        rows = {x.strip().split("  ")[0]: x for x in out.splitlines() if x.strip().startswith("+ ")}
        assert "+0.2000" in rows["+ threshold"] and "replaced by triplet: threshold=0.4" in rows["+ threshold"]
        assert "no gain: kept neutral" in rows["+ gate"]
        assert "± " not in rows["+ threshold"]
        from segkit.postprocess import format_steps

        assert "[tune] threshold" in format_steps(old)
    finally:
        if saved is not None:
            pp.write_text(saved)


def test_the_crossval_key_refuses_bad_values():
    from segkit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"postprocess\.crossval: expected true or false"):
        load_config(None, ["postprocess.crossval=maybe"])
    assert load_config(None, []).postprocess.crossval is True
