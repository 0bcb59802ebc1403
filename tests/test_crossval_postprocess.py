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
