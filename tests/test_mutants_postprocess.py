"""segkit.postprocess where mutation testing found it unchecked (`make mutate`): each step of the chain at its
boundaries (worked by hand on tiny arrays), the tuned file read back (v1 and v2) with its messages in full, and
what predict is told about the chain in force. Pure numpy, no training."""
import json
import math

import numpy as np
import pytest

from segkit.config import config_from_dict
from segkit.errors import TrainingError
from segkit.postprocess import chain as ch
from segkit.runs import RunDir


def test_binarise_is_strictly_above_the_threshold():
    out = ch.binarise(np.array([[0.3, 0.5, 0.5000001, 0.9]], np.float32), 0.5)
    assert out.tolist() == [[0, 0, 1, 1]] and out.dtype == np.uint8


def test_remove_small_keeps_components_of_exactly_min_area():
    m = np.zeros((6, 6), np.uint8)
    m[0, 0:3] = 1        # 3 pixels
    m[3:5, 3:5] = 1      # 4 pixels
    m[5, 0] = 1          # 1 pixel
    out = ch.remove_small(m, 3)
    assert out.tolist() == (m * (np.arange(6)[:, None] < 5)).tolist()  # only the lone pixel of row 5 goes
    assert out.dtype == np.uint8
    assert ch.remove_small(m, 4).sum() == 4 and ch.remove_small(m, 5).sum() == 0
    assert ch.remove_small(m, 1).sum() == 8
    assert ch.remove_small(m, 0) is m and ch.remove_small(m, -1) is m  # 0 and below: nothing to do
    blank = np.zeros((3, 3), np.uint8)
    assert ch.remove_small(blank, 2) is blank


def test_topk_mean_of_the_largest_k():
    p = np.array([[0.1, 0.9], [0.4, 0.6]], np.float32)
    assert ch.topk_mean(p, 1) == pytest.approx(0.9)
    assert ch.topk_mean(p, 2) == pytest.approx(0.75)
    assert ch.topk_mean(p, 3) == pytest.approx((0.9 + 0.6 + 0.4) / 3)
    assert ch.topk_mean(p, 4) == pytest.approx(0.5) == ch.topk_mean(p, 99)  # k capped at the pixels
    assert ch.topk_mean(p, 0) == pytest.approx(0.9) == ch.topk_mean(p, -3)  # at least one pixel
    assert isinstance(ch.topk_mean(p, 2), float)


def test_gate_scores_and_the_label_gate_without_a_head():
    p = np.array([[0.2, 0.7], [0.5, 0.9]], np.float32)
    assert ch.gate_score({"kind": "topk", "k": 2}, p, 0.5, None) == pytest.approx(0.8)
    assert ch.gate_score({"kind": "topk", "k": 2.7}, p, 0.5, None) == pytest.approx(0.8)  # k read as int
    assert ch.gate_score({"kind": "area"}, p, 0.5, None) == 2.0  # strictly above 0.5: 0.7 and 0.9
    assert ch.gate_score({"kind": "label"}, p, 0.5, 0.25) == 0.25
    with pytest.raises(TrainingError) as info:
        ch.gate_score({"kind": "label"}, p, 0.5, None)
    assert str(info.value) == ("post-processing gates on the classification head ('label'), but the ensemble has no "
                               "head; re-tune (segkit tune CONFIG) or set postprocess.gate to topk/area/none")


def test_passes_top_needs_top_k_pixels_strictly_above():
    p = np.array([[0.8, 0.9, 0.95]], np.float32)
    assert ch.passes_top(p, None, 10)
    assert ch.passes_top(p, 0.85, 2) and not ch.passes_top(p, 0.85, 3)
    assert not ch.passes_top(p, 0.95, 1)  # 0.95 is not above 0.95
    assert ch.passes_top(p, 0.9, 0) and not ch.passes_top(np.zeros((1, 2)), 0.5, 0)  # top_k 0 counts as 1


def test_describe_each_part_of_a_class_chain():
    assert ch.ClassParams("salt", 0.45, 10).describe() == "salt: threshold 0.45, min_area 10"
    gated = ch.ClassParams("ship", 0.5, 0, {"kind": "topk", "k": 20, "cut": 0.625}, 0.85, 3)
    assert gated.describe() == "ship: threshold 0.5, min_area 0, gate topk k=20 > 0.625, top 0.85 (k=3)"
    area = ch.ClassParams("c", 0.3, 4, {"kind": "area", "k": None, "cut": 12.0})
    assert area.describe() == "c: threshold 0.3, min_area 4, gate area > 12"


def test_chain_params_from_v1_and_v2_files():
    v1 = ch.ChainParams.from_dict({"classes": [{"threshold": 0.4, "min_area": 5}, {"threshold": 1, "min_area": 0}]},
                                  "src")
    assert v1.source == "src" and [c.name for c in v1.classes] == ["0", "1"]
    assert v1.thresholds == [0.4, 1.0] and v1.min_areas == [5, 0] and not v1.uses_label
    assert isinstance(v1.thresholds[1], float) and isinstance(v1.min_areas[0], int)
    assert all(c.gate is None and c.top_threshold is None and c.top_k == 1 for c in v1.classes)
    gate = {"kind": "label", "k": None, "cut": 0.5}
    v2 = ch.ChainParams.from_dict({"classes": [
        {"name": "a", "threshold": 0.5, "min_area": 2.0, "gate": gate, "top_threshold": 0.9, "top_k": 4},
        {"name": "b", "threshold": 0.5, "min_area": 0, "gate": None, "top_threshold": None, "top_k": None}]})
    a, b = v2.classes
    assert (a.name, a.gate, a.top_threshold, a.top_k, a.min_area) == ("a", gate, 0.9, 4, 2)
    assert a.gate is not gate  # a copy
    assert (b.gate, b.top_threshold, b.top_k) == (None, None, 1) and v2.uses_label
    plain = ch.ChainParams.plain([0.3, 0.6], [0, 7])
    assert [c.name for c in plain.classes] == ["0", "1"] and plain.min_areas == [0, 7]
    assert [c.name for c in ch.ChainParams.plain([0.3], [1], ["x"], "s").classes] == ["x"]


def test_apply_chain_gate_cut_and_triplet_by_hand():
    probs = np.zeros((3, 3, 3), np.float32)
    probs[..., 0] = [[0.6, 0.6, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.7]]  # a 2-pixel blob and a lone pixel
    probs[..., 1] = 0.55
    probs[..., 2] = [[0.9, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    params = ch.ChainParams([
        ch.ClassParams("a", 0.5, 2),                                                   # lone pixel removed
        ch.ClassParams("b", 0.5, 0, {"kind": "area", "k": None, "cut": 9.0}),          # 9 pixels: not > 9
        ch.ClassParams("c", 0.5, 0, None, 0.85, 1)])                                   # 0.9 passes the top
    out = ch.apply_chain(probs, params)
    assert out.dtype == np.uint8
    assert out[..., 0].tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 0]]
    assert out[..., 1].sum() == 0 and out[..., 2].tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]
    params.classes[1].gate["cut"] = 8.0  # now 9 > 8
    params.classes[2].top_threshold = 0.9  # 0.9 is not above 0.9
    out = ch.apply_chain(probs, params)
    assert out[..., 1].sum() == 9 and out[..., 2].sum() == 0
    # the gate looks at gate_probs (not probs), the label gate at its own class's head output
    label_params = {"classes": [{"threshold": 0.5, "min_area": 0, "gate": {"kind": "label", "cut": 0.5}}] * 3}
    out = ch.apply_chain(probs, label_params, label=np.array([[0.4, 0.6, 0.5]]))
    assert out[..., 0].sum() == 0 and out[..., 1].sum() == 9 and out[..., 2].sum() == 0
    area_gate = ch.ChainParams([ch.ClassParams(str(c), 0.5, 0, {"kind": "area", "cut": 0.0}) for c in range(3)])
    gate_probs = np.zeros_like(probs)
    gate_probs[0, 0, 2] = 1.0
    out = ch.apply_chain(probs, area_gate, gate_probs=gate_probs)
    assert out[..., :2].sum() == 0 and out[..., 2].sum() == 1
    with pytest.raises(TrainingError) as info:
        ch.apply_chain(probs[..., :2], params)
    assert str(info.value) == ("post-processing is tuned for 3 classes, the probabilities have shape (3, 3, 2); "
                               "re-tune (segkit tune CONFIG)")
    with pytest.raises(TrainingError, match=r"shape \(3, 3\); "):
        ch.apply_chain(probs[..., 0], params)


def test_apply_first_two_steps_per_class():
    p = np.zeros((4, 4, 2), np.float32)
    p[0, 0, 0] = p[0, 1, 0] = 0.6
    p[3, 3, 0] = 0.6
    p[..., 1] = 0.5
    out = ch.apply(p, [0.5, 0.5], [2, 0])
    assert out[..., 0].sum() == 2 and out[0, 0, 0] == 1 and out[..., 1].sum() == 0  # 0.5 is not above 0.5
    assert ch.apply(p, [0.5, 0.4], [1, 1])[..., 1].sum() == 16 and ch.apply(p, [0.5, 0.4], [0, 0])[..., 0].sum() == 3


def cfg_for(tmp_path, **post):
    return config_from_dict({"name": "r", "output": {"runs_dir": str(tmp_path / "runs")}, "postprocess": post})


def test_the_chain_in_force_from_the_config(tmp_path):
    cfg = cfg_for(tmp_path, tune=False, threshold=0.35, min_area=12)
    chain = ch.load_chain(cfg, ["a", "b"])
    assert chain.thresholds == [0.35, 0.35] and chain.min_areas == [12, 12]
    assert [c.name for c in chain.classes] == ["a", "b"]
    assert chain.source == "from config (postprocess.tune=false): threshold 0.35, min_area 12"
    run = RunDir.of(cfg)
    run.path.mkdir(parents=True)
    run.postprocess.write_text("{}")
    one = ch.load_chain(cfg)
    assert [c.name for c in one.classes] == ["0"] and one.thresholds == [0.35]
    assert one.source == (f"from config (postprocess.tune=false): threshold 0.35, min_area 12; {run.postprocess} "
                          "not used")
    post = ch.load_postprocess(cfg, ["a"])
    assert post == ch.Postprocess([0.35], [12], one.source)


def test_the_tuned_chain_read_back_and_its_damage(tmp_path):
    cfg = cfg_for(tmp_path)
    run = RunDir.of(cfg)
    with pytest.raises(TrainingError) as info:
        ch.load_chain(cfg, ["a"])
    assert str(info.value) == (f"{run.postprocess}: post-processing not tuned yet; finish training (segkit train) "
                               "or run `segkit tune CONFIG`, or set postprocess.tune=false")
    run.path.mkdir(parents=True)
    gate = {"kind": "topk", "k": 5, "cut": 0.5}
    run.write_postprocess({"classes": [{"name": "a", "threshold": 0.4, "min_area": 3, "gate": gate}]})
    chain = ch.load_chain(cfg, ["a"])
    assert chain.classes[0].gate == gate
    assert chain.source == (f"tuned on OOF ({run.postprocess}): a: threshold 0.4, min_area 3, gate topk k=5 > 0.5")
    run.write_postprocess({"classes": [{"threshold": 0.4, "min_area": 3}, {"threshold": 0.6, "min_area": 0}]})
    assert ch.load_chain(cfg, ["a", "b"]).source == (f"tuned on OOF ({run.postprocess}): 0: threshold 0.4, "
                                                     "min_area 3; 1: threshold 0.6, min_area 0")
    assert ch.load_postprocess(cfg, ["a", "b"]).thresholds == [0.4, 0.6]
    bad_gates = [{"kind": "top", "k": 5, "cut": 0.5}, {"kind": "topk", "k": 5}, {"kind": "topk", "cut": 0.5},
                 {"kind": "topk", "k": 0, "cut": 0.5}, {"cut": 0.5}]
    for bad in bad_gates:
        run.write_postprocess({"classes": [{"threshold": 0.4, "min_area": 3, "gate": bad}]})
        with pytest.raises(TrainingError) as info:
            ch.load_chain(cfg, ["a"])
        assert str(info.value) == (f"{run.postprocess}: damaged (bad gate {bad}); delete it and run `segkit tune "
                                   "CONFIG` to tune it again"), bad
    for gate in ({"kind": "area", "cut": 3}, {"kind": "label", "cut": 0.5}):
        run.write_postprocess({"classes": [{"threshold": 0.4, "min_area": 3, "gate": gate}]})
        assert ch.load_chain(cfg, ["a"]).classes[0].gate == gate
    run.write_postprocess({"classes": [{"threshold": 0.4, "min_area": 3, "top_threshold": "high"}]})
    with pytest.raises(TrainingError) as info:
        ch.load_chain(cfg, ["a"])
    assert str(info.value) == (f"{run.postprocess}: damaged (could not convert string to float: 'high'); delete it "
                               "and run `segkit tune CONFIG` to tune it again")
    run.write_postprocess({"classes": [{"threshold": 0.4, "min_area": 3, "gate": {"kind": "topk", "cut": 0.5,
                                                                               "x": "a  b\n" * 40}}]})
    with pytest.raises(TrainingError) as info:
        ch.load_chain(cfg, ["a"])
    inside = str(info.value).split(": damaged (", 1)[1].rsplit("); delete it", 1)[0]
    assert len(inside) == 120 and "  " not in inside and "\n" not in inside
    assert json.loads(run.postprocess.read_text())["classes"][0]["min_area"] == 3


# --- cross-validation's rule and folds (segkit.postprocess.crossval) --------------------------------------

def test_standard_error_and_the_keep_rule_messages():
    from segkit.postprocess.crossval import judge, standard_error

    assert standard_error([0.7]) == 0.0 and standard_error([]) == 0.0
    assert standard_error([1.0, 3.0]) == pytest.approx(1.0)  # std (ddof 1) √2, over √2
    assert standard_error([1.0, 2.0, 3.0]) == pytest.approx(1 / np.sqrt(3))
    assert judge([]) == (False, "cannot be judged out of sample (too few images)")
    assert judge([0.1, -0.1]) == (False, "CV gain +0.0000 ≤ 0")
    assert judge([-0.2, -0.1]) == (False, "CV gain -0.1500 ≤ 0")
    assert judge([0.1, 0.3]) == (True, "CV gain +0.2000 > SE 0.1000")  # SE 0.1414 / √2 = 0.1
    assert judge([0.05, 0.15], se_floor=0.2) == (False, "CV gain +0.1000 within noise (SE 0.2000)")
    assert judge([0.1], se_floor=0.1) == (False, "CV gain +0.1000 within noise (SE 0.1000)")  # not > 1 SE
    assert judge([0.1, 0.3], se_floor=0.05) == (True, "CV gain +0.2000 > SE 0.1000")  # the larger SE counts


def test_in_sample_rule_and_why_a_step_is_not_searched():
    from segkit.postprocess.crossval import Context, in_sample_rule, not_searched

    assert in_sample_rule([], 0.25) == (True, "OOF gain +0.2500 > 0 (postprocess.crossval: false)")
    assert in_sample_rule([1.0], 1e-12) == (False, "no OOF gain") == in_sample_rule([], -0.1)
    ctx = Context(grid=[0.5], areas=[0], tops=[0.9], kinds=[], cut_grid=None, triplet=False)
    assert not_searched("threshold", ctx) == ""
    assert not_searched("min area", ctx) == "not searched (postprocess.min_area_grid has no area > 0)"
    assert not_searched("gate", ctx) == "not searched (postprocess.gate: none)"
    assert not_searched("triplet", ctx) == "not searched (postprocess.triplet: false)"
    on = Context(grid=[0.5], areas=[0, 4], tops=[0.9], kinds=["topk"], cut_grid=None, triplet=True)
    assert [not_searched(s, on) for s in ("min area", "gate", "triplet")] == ["", "", ""]


def test_step_record_gain_and_its_standard_error():
    from segkit.postprocess.crossval import StepRecord

    rec = StepRecord("gate")
    assert rec.cv_gain is None and rec.cv_se is None
    rec.fold_gains = [0.1, 0.3]
    assert rec.cv_gain == pytest.approx(0.2) and rec.cv_se == pytest.approx(0.1)
    rec.boot_se = 0.25
    assert rec.cv_se == 0.25


def test_gate_cut_candidates_per_image_count():
    from segkit.postprocess.crossval import max_cuts

    assert [max_cuts(n) for n in (0, 10, 44, 45, 100, 1280, 1285, 10 ** 6)] == [8, 8, 8, 9, 20, 256, 256, 256]


def test_folds_to_cross_validate_over():
    from segkit.postprocess.crossval import choose_folds

    run = np.array([0, 1, 0, 1, 1, 0])  # two folds of 3 images: the run's own
    folds, source = choose_folds(run, 6)
    assert folds.tolist() == run.tolist() and source == "the run's 2 training folds"
    for bad in (np.array([0, 0, 0, 0, 1, 1]), np.zeros(6, int), None):  # a fold of 2, one fold, no folds
        folds, source = choose_folds(bad, 6, seed=3)
        assert source == "a seeded random split into 2 folds" and folds.dtype == np.int64
        assert sorted(np.bincount(folds).tolist()) == [3, 3]
    assert choose_folds(None, 5) == (None, "5 images: too few to judge any step out of sample")
    assert choose_folds(np.array([0, 0, 1, 1]), 4)[0] is None
    folds, source = choose_folds(None, 23, seed=1)  # 23 // 3 = 7 folds possible, at most 5
    assert source == "a seeded random split into 5 folds" and sorted(np.bincount(folds).tolist()) == [4, 4, 5, 5, 5]
    assert choose_folds(None, 23, seed=1)[0].tolist() == folds.tolist()  # seeded
    assert choose_folds(None, 23, seed=2)[0].tolist() != folds.tolist()
    assert choose_folds(None, 9)[1] == "a seeded random split into 3 folds"


# --- the searches' helpers (segkit.postprocess.search) ----------------------------------------------------

def test_coarse_to_fine_visits_every_other_value_then_the_neighbours_of_the_best():
    from segkit.postprocess.search import coarse_to_fine

    grid = [0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.3]  # 9 distinct values: stride ⌈9 / 6⌉ = 2
    calls = []

    def peak_at(p):
        def evaluate(b):
            calls.append(b)
            return -(b - p) ** 2, f"at {b}"
        return evaluate

    tried = []
    score, b, extra = coarse_to_fine(grid, 0.5, peak_at(0.4), tried=tried)
    # coarse: 0.5 first, then 0.1, 0.3, 0.7, 0.9; 0.3 ties 0.5 (both 0.01 off), the current one keeps it;
    # fine: 0.5's neighbours 0.4 (better) and 0.6
    assert calls == [0.5, 0.1, 0.3, 0.7, 0.9, 0.4, 0.6]
    assert (score, b, extra) == (0.0, 0.4, "at 0.4") and tried == [7]
    calls.clear()
    score, b, _ = coarse_to_fine(grid, 0.45, lambda x: (0.0, None), n_coarse=3)  # flat: the current value wins
    assert b == 0.45 and score == 0.0
    calls.clear()
    coarse_to_fine([0.2, 0.4], 0.3, peak_at(0.2))  # the current value joins the grid; stride 1: all of it
    assert calls == [0.3, 0.2, 0.4]


def test_gate_cut_candidates():
    from segkit.postprocess.search import gate_cuts

    assert gate_cuts(np.array([5.0]), [0.5, 0.2, 0.5]).tolist() == [0.2, 0.5]  # a given grid, sorted, once each
    # midpoints between distinct scores, then the largest (every image declared empty)
    assert gate_cuts(np.array([0.3, 0.1, 0.9, 0.3])).tolist() == pytest.approx([0.2, 0.6, 0.9])
    assert gate_cuts(np.array([0.4, 0.4])).tolist() == [0.4]
    scores = np.arange(10.0)  # 9 midpoints 0.5 ... 8.5; room for 3: the first, the middle, the last
    assert gate_cuts(scores, max_cuts=4).tolist() == [0.5, 4.5, 8.5, 9.0]
    assert gate_cuts(scores, max_cuts=10).tolist() == [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.0]
    assert gate_cuts(scores, max_cuts=1).tolist() == [0.5, 9.0]


def test_counts_are_used_only_when_they_score_the_same_metric():
    from segkit.postprocess.search import count_metric

    class Counts:
        def score_class(self, truth, pred):
            return 0.0

        def score_counts(self, inter, pred_area, true_area):
            return 0.0

    class OwnScore(Counts):  # overrides the metric, not the counts form: the counts would score another metric
        def score_class(self, truth, pred):
            return 1.0

    class OwnCounts(Counts):  # a counts form for its parent's metric
        def score_counts(self, inter, pred_area, true_area):
            return 1.0

    class NoCounts:
        def score_class(self, truth, pred):
            return 0.0

    assert count_metric(Counts()).__func__ is Counts.score_counts
    assert count_metric(OwnScore()) is None and count_metric(NoCounts()) is None
    assert count_metric(OwnCounts()).__func__ is OwnCounts.score_counts


# --- the tuned file and its table (segkit.postprocess.tuning) ---------------------------------------------

def test_gate_kinds_searched_per_config():
    from segkit.errors import ConfigError
    from segkit.postprocess.tuning import _gate_kinds

    def kinds(gate, has_label):
        return _gate_kinds(config_from_dict({"postprocess": {"gate": gate}}), has_label)

    assert kinds("none", True) == [] and kinds("topk", False) == ["topk"] and kinds("area", True) == ["area"]
    assert kinds("auto", False) == ["topk", "area"] and kinds("auto", True) == ["topk", "area", "label"]
    assert kinds("label", True) == ["label"]
    with pytest.raises(ConfigError) as info:
        kinds("label", False)
    assert str(info.value) == ("postprocess.gate: 'label' needs a classification head (a model with classifier: true "
                               "that wrote oof_label.npy); use topk, area, auto or none")


def test_a_state_in_oof_pixels_becomes_a_row_in_submission_pixels():
    from segkit.postprocess.crossval import State
    from segkit.postprocess.tuning import _row_of

    # OOF images at a quarter of the submission's pixels (area_scale 0.25); top-k fractions 0.5 % and 2 %
    gate = {"kind": "topk", "k": 50, "cut": 0.7}
    state = State(threshold=0.45, area=4, gate=gate, top=0.9)
    row = _row_of(state, {4: 16, 0: 0}, [0.005, 0.02], [10, 50], 1000, 0.25, 2)
    assert row == {"threshold": 0.45, "min_area": 16, "gate": {"kind": "topk", "k": 20, "cut": 0.7},
                   "top_threshold": 0.9, "top_k": 2}  # k: 2 % of 1000 submission pixels
    assert gate["k"] == 50  # the state is not changed
    row = _row_of(State(0.5, 3, {"kind": "topk", "k": 10, "cut": 0.1}), {}, [0.0001, 0.02], [10, 50], 1000, 0.25, 1)
    assert row["gate"]["k"] == 1 and row["min_area"] == 3  # at least one pixel; an area not on the grid as is
    row = _row_of(State(0.5, 0, {"kind": "area", "k": None, "cut": 8.0}), {0: 0}, [], [], 1000, 0.25, 1)
    assert row["gate"] == {"kind": "area", "k": None, "cut": 32.0}  # 8 OOF pixels = 32 submission pixels
    row = _row_of(State(0.5, 0, {"kind": "label", "k": None, "cut": 0.3}), {0: 0}, [], [], 1000, 0.25, 1)
    assert row["gate"] == {"kind": "label", "k": None, "cut": 0.3} and row["top_threshold"] is None
    assert isinstance(_row_of(State(1, 0), {0: 0}, [], [], 10, 1.0, 1)["threshold"], float)
    assert _row_of(State(), {0: 0}, [], [], 10, 1.0, 1)["gate"] is None


def test_step_decisions_as_printed():
    from segkit.postprocess.tuning import step_decision

    names = ["c1", "c2"]
    assert step_decision({"oof_score": 0.5}, None, names) == ""
    assert step_decision({"oof_score": 0.5}, 0.4, names) == ""
    assert step_decision({"oof_score": 0.5}, 0.5, names) == "(no gain: kept neutral)"
    assert step_decision({"oof_score": 0.5, "kept": []}, 0.6, names) == "(no gain: kept neutral)"
    same = {"oof_score": 0.5, "kept": [True, True], "reason": ["CV gain +0.1000 > SE 0.0100"] * 2}
    assert step_decision(same, None, names) == "kept: CV gain +0.1000 > SE 0.0100"
    assert step_decision({"kept": [False, False], "reason": ["x", "x"]}, None, names) == "dropped: x"
    assert step_decision({"kept": [True, False], "reason": ["a", "b"]}, None, names) == "c1 kept (a); c2 dropped (b)"
    assert step_decision({"kept": [True, True], "reason": ["a", "b"]}, None, names) == "c1 kept (a); c2 kept (b)"
    assert step_decision({"kept": [True]}, None, names) == "kept: "


def test_summary_lines_with_and_without_the_crossval_score():
    from segkit.postprocess.tuning import summary_lines

    assert summary_lines({}) == [] and summary_lines({"crossval": "x"}) == []
    assert summary_lines({"crossval": {}}) == ["rule: ", "cross-validated over ?"]
    cv = {"rule": "R", "folds": "the run's 3 training folds", "cv_score": 0.61234, "cv_score_plain": 0.5,
          "cv_score_empty": 0.6, "cv_gain_over_empty": 0.01234, "cv_se_over_empty": 0.02, "within_noise_of_empty": True}
    assert summary_lines({"crossval": cv}) == [
        "rule: R", "cross-validated over the run's 3 training folds",
        "cross-validated score of the chain 0.6123 (plain 0.5: 0.5000, all empty: 0.6000; gain over all empty "
        "+0.0123 ± 0.0200)",
        "warning: the final score is within noise (1 SE) of submitting all-empty masks: the model has not learnt "
        "to beat the trivial baseline"]
    cv["within_noise_of_empty"] = False
    assert len(summary_lines({"crossval": cv})) == 3


def test_a_probability_equal_to_the_threshold_is_not_above_it_in_float32():
    p = np.full((2, 2, 1), 0.3, np.float32)  # float32(0.3) is 0.30000001 as a float64
    assert ch.apply(p, [0.3], [0]).sum() == 0
    assert ch.apply_chain(p, ch.ChainParams.plain([0.3], [0])).sum() == 0  # the whole chain agrees
    assert ch.apply(p, [0.29], [0]).sum() == 4
    assert ch.ChainParams.plain([0.3], [0]).source == ""


def test_the_chain_in_force_must_match_the_classes(tmp_path):
    cfg = cfg_for(tmp_path)
    run = RunDir.of(cfg)
    run.path.mkdir(parents=True)
    run.write_postprocess({"classes": [{"threshold": 0.4, "min_area": 3}]})
    with pytest.raises(TrainingError, match="tuned for 1 classes, the data has 2"):
        ch.load_postprocess(cfg, ["a", "b"])


def _tuned(empty, n_folds, final, plain, base, records=()):
    from segkit.postprocess.crossval import CrossVal, State
    from segkit.postprocess.tuning import ClassTuning

    cv = CrossVal(State(), list(records), "the run's 2 training folds", n_folds, base, plain, final)
    return ClassTuning({}, [], cv, empty)


def test_crossval_summary_against_all_empty_worked_by_hand():
    from segkit.postprocess.crossval import RULE
    from segkit.postprocess.tuning import crossval_summary

    cfg = config_from_dict({})
    a = _tuned(0.5, 2, [0.8, 0.6], [0.7, 0.5], [0.5, 0.5])
    b = _tuned(0.3, 2, [0.6, 0.6], [0.5, 0.5], [0.4, 0.6])
    out = crossval_summary(cfg, [a, b])
    assert out["baseline"] == {"step": "all empty", "oof_score": pytest.approx(0.4), "per_class": [0.5, 0.3]}
    cv = out["crossval"]
    assert cv["rule"] == RULE and cv["folds"] == "the run's 2 training folds" and cv["n_folds"] == 2
    # per fold, mean over classes: final [0.7, 0.6], plain [0.6, 0.5], empty [0.45, 0.55]; over empty [0.25, 0.05]
    assert cv["cv_score"] == pytest.approx(0.65) and cv["cv_score_plain"] == pytest.approx(0.55)
    assert cv["cv_score_empty"] == pytest.approx(0.5) and cv["cv_gain_over_empty"] == pytest.approx(0.15)
    assert cv["cv_se_over_empty"] == pytest.approx(0.1) and cv["within_noise_of_empty"] is False
    near = crossval_summary(cfg, [_tuned(0.5, 2, [0.6, 0.45], [0.5, 0.5], [0.5, 0.5])])  # over [0.1, -0.05]
    assert near["crossval"]["within_noise_of_empty"] is True  # mean 0.025 ≤ SE 0.075
    uneven = crossval_summary(cfg, [a, _tuned(0.3, 0, [], [], [])])
    assert set(uneven["crossval"]) == {"rule", "folds", "n_folds"}
    assert set(crossval_summary(cfg, [ch_tuning_without_cv(0.2)])) == {"baseline"}
    free = crossval_summary(config_from_dict({"postprocess": {"crossval": False}}), [a])
    assert free["crossval"]["rule"] == ("postprocess.crossval: false: every step that improves the OOF is kept (not "
                                        "judged out of sample)")


def ch_tuning_without_cv(empty):
    from segkit.postprocess.tuning import ClassTuning

    return ClassTuning({}, [], None, empty)


def test_step_records_evidence_worked_by_hand():
    from segkit.postprocess.crossval import StepRecord
    from segkit.postprocess.tuning import ClassTuning, step_records

    def rec(step, gain, folds, boot=0.0, tried=3, kept=False, reason="r"):
        return StepRecord(step, oof_gain=gain, fold_gains=folds, boot_se=boot, tried=tried, kept=kept, reason=reason)

    ra = [rec("threshold", 0.1, [0.1, 0.3], tried=17, kept=True, reason="up"), rec("min area", 0.0, []),
          rec("gate", 0.0, [0.1]), rec("triplet", 0.2, [0.1, 0.1], boot=0.3)]
    rb = [rec("threshold", 0.0, [0.0, -0.1], tried=17, reason="down"), rec("min area", 0.0, [0.2, 0.2]),
          rec("gate", 0.0, [0.1, 0.2]), rec("triplet", 0.0, [0.1, 0.1], boot=0.4)]
    sa = [(0.5, {"threshold": 0.5}), (0.6, {"threshold": 0.4}), (0.6, {}), (0.7, {}), (0.7, {})]
    sb = [(0.3, {"threshold": 0.5}), (0.3, {"threshold": 0.5}), (0.4, {}), (0.4, {}), (0.5, {})]
    tuned = [ClassTuning({}, sa, _tuned(0.1, 2, [], [], [], ra).cv), ClassTuning({}, sb, _tuned(0.1, 2, [], [], [], rb).cv)]
    classes = [{"name": "a"}, {"name": "b"}]
    out = step_records(config_from_dict({}), classes, tuned)
    assert [e["step"] for e in out] == ["plain (0.5)", "threshold", "min area", "gate", "triplet"]
    assert out[0] == {"step": "plain (0.5)", "oof_score": pytest.approx(0.4), "per_class": [0.5, 0.3],
                      "params": {"a": {"threshold": 0.5}, "b": {"threshold": 0.5}}}
    t = out[1]
    assert t["oof_score"] == pytest.approx(0.45) and t["params"] == {"a": {"threshold": 0.4}, "b": {"threshold": 0.5}}
    assert t["oof_gain"] == pytest.approx(0.05) and t["oof_gain_per_class"] == [0.1, 0.0]
    # per fold, mean over classes: [0.05, 0.1] -> CV gain 0.075, SE 0.0354 / √2 = 0.025
    assert t["cv_gain"] == pytest.approx(0.075) and t["cv_se"] == pytest.approx(0.025)
    assert t["cv_gain_per_class"] == pytest.approx([0.2, -0.05]) and t["cv_se_per_class"] == pytest.approx([0.1, 0.05])
    assert (t["tried"], t["kept"], t["reason"]) == ([17, 17], [True, False], ["up", "down"])
    assert out[2]["cv_gain"] is None and out[2]["cv_se"] is None  # class a could not be judged
    assert out[3]["cv_gain"] is None  # 1 fold against 2
    # triplet: fold gains agree (SE 0); the bootstrap SE of the class mean √((0.3² + 0.4²) / 2 / 2) = 0.25
    assert out[4]["cv_gain"] == pytest.approx(0.1) and out[4]["cv_se"] == pytest.approx(0.25)
    fixed = step_records(config_from_dict({"postprocess": {"tune": False}}), classes, tuned)
    assert [e["step"] for e in fixed] == ["plain (0.5)", "config"] and "oof_gain" not in fixed[1]


def test_a_class_failing_its_top_threshold_leaves_the_next_classes_alone():
    probs = np.zeros((2, 2, 2), np.float32)
    probs[..., 0] = 0.6  # above its threshold, but no pixel above its top threshold 0.9
    probs[..., 1] = 0.7
    params = ch.ChainParams([ch.ClassParams("a", 0.5, 0, None, 0.9, 1), ch.ClassParams("b", 0.5, 0)])
    out = ch.apply_chain(probs, params)
    assert out[..., 0].sum() == 0 and out[..., 1].sum() == 4


# --- the statistics tables: both paths, the cache, the views, the bootstrap SE and run_step -----------------

class _Net:
    """A toy metric with a count form: per image 3·|pred ∩ truth| − |pred| − |truth| (hits minus false
    positives minus misses), averaged over images."""

    def score_class(self, truth, pred):
        t, p = np.asarray(truth) > 0, np.asarray(pred) > 0
        return float(np.mean([3 * np.count_nonzero(a & b) - np.count_nonzero(b) - np.count_nonzero(a)
                              for a, b in zip(t, p)]))

    def score_counts(self, inter, pred_area, true_area):
        return np.mean(3 * inter - pred_area - true_area, axis=-1)


def _four_images():
    """4 images of 4×4 (scores worked by hand below, per image at bottom threshold t and min area a):
    0: a 3-pixel hit at 0.8 (truth: those 3 and one more pixel) and a lone false pixel at 0.6 (t 0.5: 1, t 0.7: 2;
       a 2 at t 0.5: 2; a 5: −4 = empty);
    1: nothing above 0.1, one true pixel (−1 whatever is predicted above 0.5);
    2: a lone false pixel at 0.9, one true pixel elsewhere (−2; a 2: −1 = empty);
    3: a false 2×2 blob at 0.6, no truth (t 0.5: −4 unless a 5; t 0.7: 0 = empty)."""
    probs = np.zeros((4, 4, 4), np.float32)
    truth = np.zeros((4, 4, 4), np.uint8)
    probs[0, 0, 0:3] = 0.8
    probs[0, 3, 3] = 0.6
    truth[0, 0, 0:3] = 1
    truth[0, 1, 0] = 1
    probs[1] = 0.1
    truth[1, 2, 2] = 1
    probs[2, 1, 1] = 0.9
    truth[2, 3, 3] = 1
    probs[3, 2:4, 0:2] = 0.6
    return probs, truth


PER_IMAGE = {(0.5, 0): [1, -1, -2, -4], (0.5, 2): [2, -1, -1, -4], (0.5, 5): [-4, -1, -1, 0],
             (0.7, 0): [2, -1, -2, 0], (0.7, 2): [2, -1, -1, 0], (0.65, 0): [2, -1, -2, 0],
             (0.65, 2): [2, -1, -1, 0]}
EMPTY = [-4, -1, -1, 0]


def _tables(counts, **kw):
    from segkit.postprocess.search import ClassTables, Scorer

    probs, truth = _four_images()
    return ClassTables(probs, truth, Scorer(_Net(), truth, counts=counts), [0.7, 0.5], **kw)


@pytest.mark.parametrize("counts", [True, False])
def test_tables_score_every_threshold_and_area_as_worked_by_hand(counts):
    tab = _tables(counts)
    assert tab.scorer.counts is counts and tab.thresholds == [0.5, 0.7]
    for (t, a), per_image in PER_IMAGE.items():
        assert tab.score(t, a) == pytest.approx(np.mean(per_image)), (t, a)
    assert tab.score(0.5, 1) == pytest.approx(np.mean([1, -1, -2, -4]))  # a lone pixel is a component of area 1
    assert float(tab.scorer.reduce(tab.scorer.empty)) == pytest.approx(np.mean(EMPTY))
    keep = np.array([True, False, False, True])  # images 1 and 2 declared empty
    assert tab.score(0.5, 0, keep) == pytest.approx(np.mean([1, -1, -1, -4]))
    stats = tab.stats(0.5, [0, 2, 5])
    assert stats.shape == ((3, 4, 2) if counts else (3, 4, 1))
    if counts:  # (intersection, predicted area) per image
        assert stats[0].tolist() == [[3, 4], [0, 0], [0, 1], [0, 4]]  # area 0
        assert stats[1].tolist() == [[3, 3], [0, 0], [0, 0], [0, 4]]  # area 2
        assert stats[2].tolist() == [[0, 0], [0, 0], [0, 0], [0, 0]]  # area 5
    else:
        assert stats[..., 0].tolist() == [PER_IMAGE[0.5, 0], PER_IMAGE[0.5, 2], PER_IMAGE[0.5, 5]]


@pytest.mark.parametrize("counts", [True, False])
def test_tables_cache_a_pass_and_answer_any_subset_of_its_areas(counts):
    tab = _tables(counts)
    assert tab.passes == 0
    tab.stats(0.5, [0])
    assert tab.passes == 0  # area 0 alone needs no labelling
    first = tab.stats(0.5, [0, 2, 5])
    assert tab.passes == 1
    again = tab.stats(0.5, [5, 2])  # covered by the pass above: no new pass, rows in the order asked
    assert tab.passes == 1 and again.tolist() == first[[2, 1]].tolist()
    assert tab.stats(0.5, [0, 2, 5]) is first
    assert tab.stats(0.5, [5, 0, 2]).tolist() == first[[2, 0, 1]].tolist() and tab.passes == 1  # the same areas
    tab.stats(0.7, [2])  # another threshold: a pass of its own
    assert tab.passes == 2
    assert tab.stats(0.65, [0, 2])[..., 0 if not counts else 1].shape == (2, 4)  # off the grid: a pass too
    assert tab.passes == 3
    assert tab.score(0.65, 0) == pytest.approx(np.mean(PER_IMAGE[0.65, 0]))


def test_the_gate_probabilities_and_the_top_k_tables():
    probs, _ = _four_images()
    gate = np.zeros_like(probs)
    gate[0, :2, :2] = 0.9  # 4 pixels above 0.5 and 0.7
    gate[1, 0, 0] = 0.6  # 1 pixel above 0.5, none above 0.7
    tab = _tables(True, top_k=2, topk_ks=[1, 2, 99], gate_probs=gate, label=[[0.2], [0.4], [0.6], [0.8]])
    assert tab.area_above(0.5).tolist() == [4, 1, 0, 0] and tab.area_above(0.7).tolist() == [4, 0, 0, 0]
    assert tab.top_k == 2 and tab.topk_ks == [1, 2, 16]  # k capped at the 16 pixels
    assert tab.topk_means[0].tolist() == pytest.approx([0.9, 0.6, 0, 0])  # of the gate probabilities
    assert tab.topk_means[1].tolist() == pytest.approx([0.9, 0.3, 0, 0])
    assert tab.topk_means[2].tolist() == pytest.approx([0.225, 0.6 / 16, 0, 0])
    assert tab.kth.tolist() == pytest.approx([0.8, 0.1, 0.0, 0.6])  # the 2nd largest of the probabilities
    assert tab.top_keep(0.65).tolist() == [True, False, False, False]
    assert tab.top_keep(float(np.float32(0.8))).tolist() == [False] * 4  # strictly above
    assert tab.top_keep(None).tolist() == [True] * 4
    assert tab.label.tolist() == [0.2, 0.4, 0.6, 0.8] and tab.label.dtype == np.float64
    plain = _tables(True, topk_ks=[2])
    assert plain.area_above(0.5).tolist() == [4, 0, 1, 4] and plain.area_above(0.7).tolist() == [3, 0, 1, 0]
    assert plain.topk_means[0].tolist() == pytest.approx([0.8, 0.1, 0.45, 0.6]) and plain.label is None
    assert plain.kth.tolist() == pytest.approx([0.8, 0.1, 0.9, 0.6])  # top_k 1


@pytest.mark.parametrize("counts", [True, False])
def test_a_table_view_is_its_images_of_the_parent(counts):
    tab = _tables(counts, topk_ks=[2], label=[0.2, 0.4, 0.6, 0.8])
    view = tab.subset([3, 0])
    assert view.n == 2 and view.idx.dtype == np.int64 and view.thresholds == [0.5, 0.7]
    assert view.score(0.5, 0) == pytest.approx((-4 + 1) / 2) and view.score(0.5, 5) == pytest.approx((0 - 4) / 2)
    assert view.score(0.5, 0, np.array([False, True])) == pytest.approx((0 + 1) / 2)
    assert view.stats(0.5, [0, 2]).tolist() == tab.stats(0.5, [0, 2])[:, [3, 0]].tolist()
    assert view.area_above(0.7).tolist() == [0, 3] and view.kth.tolist() == pytest.approx([0.6, 0.8])
    assert view.topk_means[0].tolist() == pytest.approx([0.6, 0.8]) and view.label.tolist() == [0.8, 0.2]
    assert view.top_keep(0.7).tolist() == [False, True]
    assert float(view.scorer.reduce(view.scorer.empty)) == pytest.approx((0 - 4) / 2)
    inner = view.subset([1])  # positions in the view: image 0
    assert inner.idx.tolist() == [0] and inner.score(0.7, 2) == pytest.approx(2.0)
    assert _tables(counts).subset([1]).label is None
    none = tab.subset([])  # a view of no images (a list, not an index array)
    assert none.n == 0 and none.stats(0.5, [0]).shape[:2] == (1, 0) and none.kth.shape == (0,)
    assert view.subset([]).n == 0 and view.subset([]).label.shape == (0,)


def test_the_paired_bootstrap_standard_error_of_a_step():
    from segkit.postprocess import crossval as cv

    for counts in (True, False):
        tab = _tables(counts)
        tests = [tab.subset([0, 2]), tab.subset([1, 3])]
        before = [cv.State(), cv.State()]
        after = [cv.State(area=2), cv.State(threshold=0.7)]
        # per image after − before, in the held-out order 0, 2, 1, 3: 2 − 1, −1 − (−2), −1 − (−1), 0 − (−4)
        diff = np.array([1.0, 1.0, 0.0, 4.0])
        picks = np.random.default_rng(0).integers(0, 4, size=(cv.BOOTSTRAP, 4))
        expected = np.std(diff[picks].mean(axis=1), ddof=1)
        assert cv.paired_bootstrap_se(tab, tests, before, after) == pytest.approx(expected)
        assert expected == pytest.approx(np.std(diff) / 2, rel=0.25)  # the bootstrap estimates σ/√n
        other = np.random.default_rng(5).integers(0, 4, size=(cv.BOOTSTRAP, 4))
        assert cv.paired_bootstrap_se(tab, tests, before, after, seed=5) == pytest.approx(
            np.std(diff[other].mean(axis=1), ddof=1))
        assert cv.paired_bootstrap_se(tests[0], tests, before, after) == pytest.approx(expected)  # a view's root
        assert cv.paired_bootstrap_se(tab, tests, before, before) == 0.0
        assert cv.paired_bootstrap_se(tab, [], [], []) == 0.0


def test_run_step_passes_the_state_and_the_context_through():
    from segkit.postprocess.crossval import Context, State, run_step

    tab = _tables(False, topk_ks=[1])
    ctx = Context(grid=[0.5, 0.7], areas=[2, 5], tops=[0.85], kinds=["topk"], cut_grid=None, triplet=True)
    gate = {"kind": "topk", "k": 1, "cut": 0.75}
    tried = []
    # threshold, area 0: 0.5 → −1.5, 0.7 → −0.25; the rest of the state is kept
    assert run_step("threshold", tab, State(0.5, 2, gate, 0.3), ctx, 8, tried) == State(0.7, 2, gate, 0.3)
    assert tried == [2]
    # min area from the state's threshold: at 0.7 area 2 scores 0 (best); a grid of 0.5 alone: area 2 (−1)
    tried = []
    assert run_step("min area", tab, State(0.5, 0, gate, 0.3), ctx, 8, tried) == State(0.7, 2, gate, 0.3)
    assert tried == [2 * 3]  # 2 thresholds × areas {0, 2, 5}
    only = Context(grid=[0.5], areas=[2, 5], tops=[0.85], kinds=["topk"], cut_grid=None, triplet=True)
    assert run_step("min area", tab, State(0.5, 0), only, 8) == State(0.5, 2)
    # gate at (0.5, 0), top-1 means [0.8, 0.1, 0.9, 0.6]: cuts 0.35, 0.7, 0.85, 0.9 → −1.5, −0.5, −1.75, −1.5
    tried = []
    out = run_step("gate", tab, State(0.5, 0, None, 0.3), ctx, 8, tried)
    assert out.gate == {"kind": "topk", "k": 1, "cut": pytest.approx(0.7)} and tried == [4]
    assert (out.threshold, out.area, out.top) == (0.5, 0, 0.3)
    tried = []
    assert run_step("gate", tab, State(0.5, 0), ctx, 2, tried).gate is None and tried == [2]  # cuts 0.35, 0.9
    grid = Context(grid=[0.5], areas=[2], tops=[0.85], kinds=["topk"], cut_grid=[0.5, 0.75], triplet=True)
    assert run_step("gate", tab, State(0.5, 0), grid, 2).gate == {"kind": "topk", "k": 1, "cut": 0.75}
    # at (0.5, 2) the gate's cut 0.75 keeps images 0 and 2: 2 − 1 − 1 + 0 = 0 beats −1.5 with no gate
    assert run_step("gate", tab, State(0.5, 2), grid, 2).gate == {"kind": "topk", "k": 1, "cut": 0.75}
    # triplet at 0.5 under the gate (0.75: images 0 and 2 kept), areas {0, 2, 5}, tops {None, 0.85}:
    # a0 −0.5, a0/0.85 −1.75, a2 0, a2/0.85 −1.5, a5 −1.5, a5/0.85 −1.5 → area 2, no top (the state's own top
    # is not held)
    tried = []
    assert run_step("triplet", tab, State(0.5, 0, gate, 0.85), only, 8, tried) == State(0.5, 2, gate, None)
    assert tried == [6]


class _NetRun(_Net):
    classes = ["a", "b"]

    def __init__(self, size):
        self.size = size

    def submission_size(self, sample):
        return sample  # the fake run's samples are their submission sizes

    def metric_name(self):
        return "net"


def _fake_run(monkeypatch, size, copies=1, folds=None):
    """A 2-class run without training: class a is `_four_images`, class b the same probabilities with no truth
    (score: minus the predicted area). `tune` reads the OOF through `load_oof_class` (patched here)."""
    from types import SimpleNamespace

    from segkit.oof import OofClass
    from segkit.postprocess import tuning

    probs, truth = _four_images()
    probs, truth = np.concatenate([probs] * copies), np.concatenate([truth] * copies)
    masks = np.stack([truth, np.zeros_like(truth)], axis=-1)
    calls = []

    def load(cfg, n, c):
        calls.append((cfg, n, c))
        return OofClass(probs, probs, None)

    monkeypatch.setattr(tuning, "load_oof_class", load)
    samples = [size] + [(99, 99)] * (len(probs) - 1)  # the first sample's size is the submission's
    run = SimpleNamespace(adapter=_NetRun(size), samples=samples, cache=SimpleNamespace(masks=masks),
                          folds=np.zeros(len(probs), int) if folds is None else folds)
    return run, probs, masks, calls


def test_tune_with_the_config_chain_in_submission_pixels(tmp_path, monkeypatch, capsys):
    from segkit.postprocess.tuning import tune

    run, _, _, calls = _fake_run(monkeypatch, (8, 8))  # 64 submission pixels for 16 OOF pixels: areas × 0.25
    cfg = cfg_for(tmp_path, tune=False, threshold=0.7, min_area=8)  # min area 2 OOF pixels
    result = tune(cfg, run, quiet=True)
    assert calls == [(cfg, 4, 0), (cfg, 4, 1)] and capsys.readouterr().out == ""
    # class a at (0.7, 2): [2, −1, −1, 0] → 0; class b (minus the predicted area): 0.5 → [−4, 0, −1, −4], (0.7, 2) →
    # [−3, 0, 0, 0]; all empty: a [−4, −1, −1, 0], b 0
    assert result["version"] == 2 and result["metric"] == "net"
    row = {"threshold": 0.7, "min_area": 8, "gate": None, "top_threshold": None, "top_k": 1}
    assert result["classes"] == [{"name": "a", **row, "oof_score_default": -1.5, "oof_score_tuned": 0.0},
                                 {"name": "b", **row, "oof_score_default": -2.25, "oof_score_tuned": -0.75}]
    assert result["oof_score_default"] == pytest.approx(-1.875) and result["oof_score_tuned"] == pytest.approx(-0.375)
    assert [s["step"] for s in result["steps"]] == ["plain (0.5)", "config"]
    assert result["steps"][1]["per_class"] == [0.0, -0.75]
    config = {"threshold": 0.7, "min_area": 8}
    assert result["steps"][1]["params"] == {"a": config, "b": config}
    assert result["baseline"] == {"step": "all empty", "oof_score": -0.75, "per_class": [-1.5, 0.0]}
    assert "crossval" not in result
    assert json.loads(RunDir.of(cfg).postprocess.read_text()) == result
    tune(cfg, run)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("[tune] step") and out[1].startswith("[tune] all empty") and "config" in out[3]
    assert out[-2:] == ["[tune] a: threshold 0.7, min_area 8", "[tune] b: threshold 0.7, min_area 8"]


def test_tune_cross_validates_over_the_run_folds_and_its_chain_reproduces_its_score(tmp_path, monkeypatch):
    from segkit.postprocess.tuning import tune

    folds = np.arange(8) % 2
    run, probs, masks, _ = _fake_run(monkeypatch, (4, 4), copies=2, folds=folds)
    cfg = cfg_for(tmp_path, threshold_grid=[0.5, 0.7], min_area_grid=[2, 5], gate="topk", gate_topk_grid=[0.0625],
                  top_threshold_grid=[0.85])
    result = tune(cfg, run, quiet=True)
    assert [s["step"] for s in result["steps"]] == ["plain (0.5)", "threshold", "min area", "gate", "triplet"]
    assert result["crossval"]["folds"] == "the run's 2 training folds" and result["crossval"]["n_folds"] == 2
    chain = ch.ChainParams.from_dict(result)
    net = _Net()
    for c, cls in enumerate(result["classes"]):
        assert cls["oof_score_default"] == pytest.approx(-1.5 if c == 0 else -2.25)
        pred = np.stack([ch.apply_chain(p, chain) for p in np.stack([probs, probs], axis=-1)])
        # the saved chain applied image by image scores what the file says (the metric computed independently)
        assert net.score_class(masks[..., c], pred[..., c]) == pytest.approx(cls["oof_score_tuned"])
        assert result["steps"][-1]["per_class"][c] == pytest.approx(cls["oof_score_tuned"])
    assert result["oof_score_tuned"] == pytest.approx(np.mean([c["oof_score_tuned"] for c in result["classes"]]))
    assert result["oof_score_tuned"] > result["oof_score_default"]


def test_the_step_table_column_by_column():
    from segkit.postprocess.tuning import format_steps

    result = {
        "classes": [{"name": "a", "threshold": 0.4, "min_area": 0}, {"name": "b", "threshold": 0.5, "min_area": 10}],
        "baseline": {"step": "all empty", "oof_score": 0.25, "per_class": [0.5, 0.0]},
        "steps": [
            {"step": "plain (0.5)", "oof_score": 0.5, "per_class": [0.6, 0.4]},
            {"step": "threshold", "oof_score": 0.55, "per_class": [0.7, 0.4], "oof_gain": 0.05, "cv_gain": 0.03,
             "cv_se": 0.01, "tried": [17, 17], "kept": [True, False], "reason": ["up", "down"]},
            {"step": "min area", "oof_score": 0.55, "per_class": [0.7, 0.4], "oof_gain": 0.0, "cv_gain": None,
             "cv_se": None, "tried": [0, 0], "kept": [False, False], "reason": ["x", "x"]},
            {"step": "old", "oof_score": 0.5, "per_class": [0.6, 0.4]},  # a file without decisions: vs the row above
            {"step": "old2", "oof_score": 0.6, "per_class": [0.7, 0.5]},
            "junk",  # not a step: skipped
        ],
        "crossval": {"rule": "R", "folds": "F"},
    }
    # columns: step (12 wide, at least), OOF (7), OOF gain (8), CV gain ± SE (17), tried (5), one per class (9)
    blank = " " * 8 + "  " + " " * 17 + "  " + " " * 5
    assert format_steps(result).split("\n") == [
        "[tune] step        " + "      OOF  OOF gain       CV gain ± SE  tried          a          b  decision",
        "[tune] all empty   " + "   0.2500  " + blank + "     0.5000     0.0000  trivial baseline",
        "[tune] plain (0.5) " + "   0.5000  " + blank + "     0.6000     0.4000  ",
        "[tune] threshold   " + "   0.5500   +0.0500   +0.0300 ± 0.0100  17/17     0.7000     0.4000  "
        "a kept (up); b dropped (down)",
        "[tune] min area    " + "   0.5500   +0.0000  " + " " * 17 + "  " + " " * 5
        + "     0.7000     0.4000  dropped: x",
        "[tune] old         " + "   0.5000  " + blank + "     0.6000     0.4000  (no gain: kept neutral)",
        "[tune] old2        " + "   0.6000  " + blank + "     0.7000     0.5000  ",
        "[tune] rule: R",
        "[tune] cross-validated over F",
        "[tune] a: threshold 0.4, min_area 0",
        "[tune] b: threshold 0.5, min_area 10",
    ]
    result["steps"][0]["step"] = "a much longer step"  # 18 characters: the column widens
    assert format_steps(result).split("\n")[1] == "[tune] all empty" + " " * 9 + "   0.2500  " + blank + (
        "     0.5000     0.0000  trivial baseline")


def test_crossval_summary_with_uneven_folds_and_a_gain_of_exactly_one_se():
    from segkit.postprocess.tuning import crossval_summary

    cfg = config_from_dict({})
    two = _tuned(0.5, 2, [0.8, 0.6], [0.7, 0.5], [0.5, 0.5])
    three = _tuned(0.5, 3, [0.8, 0.6, 0.7], [0.7, 0.5, 0.6], [0.5, 0.5, 0.5])
    assert set(crossval_summary(cfg, [two, three])["crossval"]) == {"rule", "folds", "n_folds"}
    # over all empty [0.1, 0.0]: mean 0.05, SE (std 0.0707 / √2) 0.05: a gain of exactly 1 SE is within noise
    edge = crossval_summary(cfg, [_tuned(0.5, 2, [0.6, 0.5], [0.5, 0.5], [0.5, 0.5])])["crossval"]
    assert edge["cv_gain_over_empty"] == pytest.approx(0.05) and edge["cv_se_over_empty"] == pytest.approx(0.05)
    assert edge["within_noise_of_empty"] is True


def test_images_a_chain_keeps_and_their_statistics():
    from segkit.postprocess.crossval import State, chain_score, image_stats, keep_images

    tab = _tables(False, topk_ks=[2], label=[0.2, 0.4, 0.6, 0.8])  # top-1 probabilities [0.8, 0.1, 0.9, 0.6]
    label = {"kind": "label", "k": None, "cut": 0.6}
    assert keep_images(tab, State(gate=label)).tolist() == [False, False, False, True]  # strictly above the cut
    assert keep_images(tab, State(gate={**label, "cut": 0.3})).tolist() == [False, True, True, True]
    assert keep_images(tab, State(top=0.7)).tolist() == [True, False, True, False]
    # the gate and the top threshold must both pass
    assert keep_images(tab, State(top=0.7, gate={**label, "cut": 0.3})).tolist() == [False, False, True, False]
    area = {"kind": "area", "k": None, "cut": 1.0}  # pixels above the chain's threshold: 0.5 → [4, 0, 1, 4]
    assert keep_images(tab, State(gate=area)).tolist() == [True, False, False, True]
    assert keep_images(tab, State(0.7, gate=area)).tolist() == [True, False, False, False]  # 0.7 → [3, 0, 1, 0]
    topk = {"kind": "topk", "k": 2, "cut": 0.5}  # top-2 means [0.8, 0.1, 0.45, 0.6]
    assert keep_images(tab, State(gate=topk)).tolist() == [True, False, False, True]
    assert keep_images(tab, State()).tolist() == [True] * 4
    # declared-empty rows take the empty prediction's statistics: per image [1, −1, −2, −4] → [1, −1, −1, −4]
    assert image_stats(tab, State(gate=topk))[:, 0].tolist() == [1, -1, -1, -4]
    assert image_stats(tab, State(area=2, gate=label))[:, 0].tolist() == [-4, -1, -1, -4]
    assert chain_score(tab, State(gate=topk)) == pytest.approx(-1.25)
    assert chain_score(tab, State(0.7, 2, topk)) == pytest.approx((2 - 1 - 1 + 0) / 4)


def test_search_gate_over_every_kind_and_its_cut_grid():
    from segkit.postprocess.search import search_gate

    # at (0.5, 0) per image [1, −1, −2, −4], empty [−4, −1, −1, 0]: no gate −1.5
    tab = _tables(False, topk_ks=[1, 2], label=[0.9, 0.1, 0.5, 0.5])
    tried = []
    score, gate, keep = search_gate(tab, 0.5, 0, ["label"], cut_grid=[0.5, 0.05], tried=tried)
    # cut 0.05 keeps every image (−1.5: no better than no gate), 0.5 keeps image 0 only (strictly above): −0.25
    assert (score, gate) == (-0.25, {"kind": "label", "k": None, "cut": 0.5})
    assert keep.tolist() == [True, False, False, False]
    assert tried == [2]
    assert search_gate(tab, 0.5, 0, ["label"], cut_grid=[0.05])[:2] == (-1.5, None)  # a tie is no gain
    assert search_gate(tab, 0.5, 0, ["topk", "area"], cut_grid=[0.05])[1]["kind"] == "area"  # label not asked for
    # area above 0.5 [4, 0, 1, 4]: cuts 0.5, 2.5, 4 → −1.5, −1.25, −1.5
    score, gate, keep = search_gate(tab, 0.5, 0, ["area"])
    assert (score, gate) == (-1.25, {"kind": "area", "k": None, "threshold": 0.5, "cut": 2.5})
    assert keep.tolist() == [True, False, False, True]
    # top-1 means [0.8, 0.1, 0.9, 0.6] and top-2 [0.8, 0.1, 0.45, 0.6] on the grid [0.7]: top-1 keeps 0 and 2
    # (−0.5), top-2 keeps image 0 (−0.25); with the area gate's 3 data cuts and 2 label cuts: 7 candidates
    tried = []
    score, gate, _ = search_gate(tab, 0.5, 0, ["topk", "area", "label"], cut_grid=[0.7], tried=tried)
    assert (score, gate) == (-0.25, {"kind": "topk", "k": 2, "cut": 0.7}) and tried == [1 + 1 + 3 + 1]
    nolabel = _tables(False, topk_ks=[1])
    assert search_gate(nolabel, 0.5, 0, ["label"], cut_grid=[0.5])[1] is None
    none = search_gate(nolabel, 0.5, 0, [])
    assert none[:2] == (-1.5, None) and none[2].tolist() == [True] * 4 and none[2].dtype == bool


def test_gate_cuts_thinned_only_past_max_cuts():
    from segkit.postprocess.search import gate_cuts

    # 4 midpoints and room for 3: positions 0, 1.5 → 2, 3
    assert gate_cuts(np.arange(5.0), max_cuts=4).tolist() == [0.5, 2.5, 3.5, 4.0]
    assert gate_cuts(np.arange(5.0), max_cuts=5).tolist() == [0.5, 1.5, 2.5, 3.5, 4.0]
    assert gate_cuts(np.arange(3), [1, 2]).dtype == np.float64


def test_the_count_form_is_checked_against_the_metric():
    from segkit.postprocess.search import ClassTables, Scorer
    from segkit.postprocess.tuning import _counts_agree

    class Off(_Net):  # wrong by one on images with `bad` true pixels
        def __init__(self, bad):
            self.bad = bad

        def score_counts(self, inter, pred_area, true_area):
            return np.mean(3 * inter - pred_area - true_area + (true_area == self.bad), axis=-1)

    probs, truth = _four_images()
    probs[1, 0, 0] = 0.5  # exactly the threshold: not predicted

    def agree(adapter):
        scorer = Scorer(adapter, truth)
        return _counts_agree(adapter, scorer, ClassTables(probs, truth, scorer, [0.5]), truth, probs)

    assert agree(_Net()) is True
    assert agree(Off(4)) is False and agree(Off(0)) is False  # wrong on the first image only, the last only
    probs, truth = probs[:1], truth[:1]  # image 0 alone: 1 at 0.5, −4 when empty
    assert agree(_Net()) is True


def test_tune_class_in_sample_with_a_top_k_gate_in_submission_pixels():
    from segkit.oof import OofClass
    from segkit.postprocess.tuning import tune_class

    probs, truth = _four_images()
    cfg = config_from_dict({"postprocess": {"threshold_grid": [0.5], "min_area_grid": [8], "gate": "topk",
                                            "gate_topk_grid": [0.0625], "top_threshold_grid": [0.85],
                                            "crossval": False}})
    # 64 submission pixels for 16 OOF pixels: min area 8 → 2 OOF pixels, the top-k fraction 1/16 → k 1 (OOF), 4
    row, steps = tune_class(_Net(), truth, OofClass(probs, probs, None), cfg, 0.25, 64, np.arange(4) % 2)
    # threshold: 0.5 only (no gain); min area 2: −1; gate at (0.5, 2), per image [2, −1, −1, −4], top-1 means
    # [0.8, 0.1, 0.9, 0.6]: the cut 0.7 drops image 3 (0); the triplet finds nothing better
    assert [s for s, _ in steps] == pytest.approx([-1.5, -1.5, -1.0, 0.0, 0.0])
    assert row["threshold"] == 0.5 and row["min_area"] == 8 and row["top_threshold"] is None and row["top_k"] == 1
    assert row["gate"] == {"kind": "topk", "k": 4, "cut": pytest.approx(0.7)}
    assert steps[1][1] == {"threshold": 0.5} and steps[2][1] == {"threshold": 0.5, "min_area": 8}
    assert steps[4][1] == {"threshold": 0.5, "min_area": 8, "top_threshold": None, "top_k": 1}
    assert steps[3][1] == {"gate": {"kind": "topk", "k": 4, "cut": pytest.approx(0.7)}}


def test_a_probability_equal_to_a_grid_threshold_is_not_above_it_in_the_tables():
    from segkit.postprocess.search import ClassTables, Scorer

    probs, truth = _four_images()  # 0.6 (float32) on image 0's false pixel and image 3's blob
    for counts in (True, False):
        tab = ClassTables(probs, truth, Scorer(_Net(), truth, counts=counts), [0.6, float(np.float32(0.6))])
        # as binarise decides: a float32 0.6 is not above 0.6 (nor above itself)
        assert tab.area_above(0.6).tolist() == [3, 0, 1, 0]
        assert tab.area_above(float(np.float32(0.6))).tolist() == [3, 0, 1, 0]
        pred = np.stack([ch.binarise(p, 0.6) for p in probs])
        assert tab.score(0.6, 0) == pytest.approx(_Net().score_class(truth, pred)) == pytest.approx(-0.25)
        assert tab.score(0.6, 2) == pytest.approx(0.0)


def test_search_threshold_ties_go_to_the_value_nearest_0_5():
    from segkit.postprocess.search import search_min_area, search_threshold, search_triplet

    tab = _tables(False)
    # 0.2, 0.5 and 0.55 keep the same pixels (−1.5 each); 0.65 and 0.7 too (−0.25)
    assert search_threshold(tab, [0.2, 0.55, 0.5]) == (-1.5, 0.5)
    assert search_threshold(tab, [0.7, 0.65, 0.2]) == (-0.25, 0.65)
    assert search_threshold(tab, []) == (-math.inf, 0.5)  # nothing to try: 0.5 stays
    # an area that removes nothing useful ties with none: area 0 is kept
    tried = []
    assert search_min_area(tab, [0.5], [5], 0.5, tried) == (-1.5, 0.5, 0) and tried == [2]
    keep = np.array([True, False, True, False])  # images 1 and 3 declared empty by a gate
    # at 0.5 with area 2 and the gate: 2 − 1 − 1 + 0 = 0 (without the gate −1); no top threshold helps
    assert search_triplet(tab, [0.5], [2], [0.85], 0.5, keep) == (0.0, 0.5, 2, None)
    assert search_triplet(tab, [0.5], [2], [0.85], 0.5) == (-1.0, 0.5, 2, None)
    assert search_triplet(tab, [0.5], [5], [], 0.5)[2] == 0  # area 5 ties with none (−1.5)


def test_coarse_to_fine_stride_from_the_grid_length():
    from segkit.postprocess.search import coarse_to_fine

    grid = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]  # 7 values: stride ⌈7 / 6⌉ = 2
    tried = []
    assert coarse_to_fine(grid, 0.2, lambda b: (0.0, None), tried=tried)[1] == 0.2  # flat: the current one
    assert tried == [5]  # 0.2, then 0.1, 0.3, 0.5, 0.7; then 0.2's neighbours (0.1, 0.3: seen)
    calls = []

    def rising(b):
        calls.append(b)
        return b, None

    assert coarse_to_fine([0.1, 0.2, 0.3, 0.4], 0.1, rising)[1] == 0.4  # 4 values: stride 1, all in order
    assert calls == [0.1, 0.2, 0.3, 0.4]


def test_tune_in_sample_keeps_every_step_that_raises_the_oof(tmp_path, monkeypatch):
    from segkit.postprocess.tuning import tune

    run, _, _, _ = _fake_run(monkeypatch, (8, 8))  # areas × 0.25; the top-k fraction 1/16: k 1 OOF, 4 submission
    cfg = cfg_for(tmp_path, threshold_grid=[0.5], min_area_grid=[7, 8], gate="topk", gate_topk_grid=[0.0625],
                  top_threshold_grid=[0.85], crossval=False)
    result = tune(cfg, run, quiet=True)
    # min areas 7 and 8 are both 2 OOF pixels: the file says the smaller, 7
    # a: min area 2 (−1), the top-1 cut 0.7 drops image 3 (0); b (minus the predicted area): min area 2 leaves
    # [−3, 0, 0, −4] (−1.75), the cut 0.85 keeps image 2 only, now empty (0); the triplet adds nothing
    a, b = result["classes"]
    assert (a["threshold"], a["min_area"], a["top_threshold"]) == (0.5, 7, None)
    assert a["gate"] == {"kind": "topk", "k": 4, "cut": pytest.approx(0.7)}
    assert b["gate"] == {"kind": "topk", "k": 4, "cut": pytest.approx(0.85)} and b["min_area"] == 7
    assert (a["oof_score_default"], a["oof_score_tuned"]) == (-1.5, 0.0)
    assert (b["oof_score_default"], b["oof_score_tuned"]) == (-2.25, 0.0)
    assert [s["per_class"] for s in result["steps"]] == [[-1.5, -2.25], [-1.5, -2.25], [-1.0, -1.75], [0.0, 0.0],
                                                         [0.0, 0.0]]
    assert result["steps"][0]["params"]["a"] == {"threshold": 0.5, "min_area": 0}
    assert result["oof_score_tuned"] == 0.0 and result["oof_score_default"] == pytest.approx(-1.875)


def test_class_tables_units_and_search_context():
    from segkit.oof import OofClass
    from segkit.postprocess.tuning import class_tables

    probs, truth = _four_images()
    gate = np.zeros_like(probs)
    label = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    cfg = config_from_dict({"postprocess": {"threshold_grid": [0.5, 0.7], "min_area_grid": [40, 8, 7],
                                            "gate": "auto", "gate_topk_grid": [0.01, 0.125], "top_k": 8,
                                            "top_threshold_grid": [0.85, 0.9], "triplet": False,
                                            "gate_cut_grid": [0.3]}})

    class Off(_Net):  # a count form that does not score the metric: per-image scores instead
        def score_counts(self, inter, pred_area, true_area):
            return np.mean(3 * inter - pred_area - true_area, axis=-1) + 1

    for adapter, counts in ((_Net(), True), (Off(), False)):
        tab, ctx, units = class_tables(adapter, truth, OofClass(probs, gate, label), cfg, 0.25, 64)
        assert tab.scorer.counts is counts
        # 16 OOF pixels for 64: areas × 0.25 (7 and 8 → 2, 40 → 10; the smallest submission area per OOF area)
        assert units.scale(8) == 2 and units.scale(40) == 10 and units.unscale == {0: 0, 2: 7, 10: 40}
        assert units.fractions == [0.01, 0.125] and units.ks == [1, 2]  # k at least 1
        assert tab.top_k == 2 and tab.topk_ks == [1, 2]  # top_k 8 submission pixels → 2 OOF pixels
        assert tab.gate_probs is gate and tab.label.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
        assert tab.topk_means.tolist() == [[0.0] * 4, [0.0] * 4]  # of the gate probabilities
        assert list(ctx.grid) == [0.5, 0.7] and list(ctx.areas) == [2, 10] and list(ctx.tops) == [0.85, 0.9]
        assert list(ctx.kinds) == ["topk", "area", "label"] and list(ctx.cut_grid) == [0.3] and ctx.triplet is False
        assert tab.score(0.5, 2) == pytest.approx(-1.0)
    tab, ctx, _ = class_tables(_Net(), truth, OofClass(probs, probs, None), cfg, 1.0, 16)
    assert list(ctx.kinds) == ["topk", "area"] and tab.top_k == 8 and tab.label is None
    tab, _, _ = class_tables(_Net(), truth, OofClass(probs, probs, None), config_from_dict({}), 0.25, 64)
    assert tab.top_k == 1  # the default top_k 1 → 0.25 OOF pixels: at least 1


def test_tune_in_sample_area_gate_cut_in_submission_pixels(tmp_path, monkeypatch):
    from segkit.postprocess.tuning import tune

    run, _, _, _ = _fake_run(monkeypatch, (8, 8))
    cfg = cfg_for(tmp_path, threshold_grid=[0.5], min_area_grid=[8], gate="area", top_threshold_grid=[0.85],
                  crossval=False)
    result = tune(cfg, run, quiet=True)
    a, b = result["classes"]
    # at (0.5, 2 OOF pixels) the area above 0.5 is [4, 0, 1, 4]: for b (per image [−3, 0, 0, −4]) the cut 4 OOF
    # pixels (every image empty, 0) beats 0.5 and 2.5 (−1.75); for a no cut beats no gate (−1)
    assert a["gate"] is None and a["oof_score_tuned"] == -1.0
    assert b["gate"] == {"kind": "area", "k": None, "threshold": 0.5, "cut": 16.0} and b["oof_score_tuned"] == 0.0
    assert result["steps"][3]["params"]["b"] == {"gate": b["gate"]}


def test_a_seeded_random_split_when_the_run_folds_cannot_judge():
    from segkit.oof import OofClass
    from segkit.postprocess.crossval import choose_folds, crossval_chain
    from segkit.postprocess.tuning import class_tables, tune_class_cv

    probs, truth = _four_images()
    probs, truth = np.concatenate([probs] * 3), np.concatenate([truth] * 3)
    cfg = config_from_dict({"seed": 3, "postprocess": {"threshold_grid": [0.5, 0.7], "min_area_grid": [2]}})
    oof = OofClass(probs, probs, None)
    tuned = tune_class_cv(_Net(), truth, oof, cfg, 1.0, 16, np.zeros(12, int))  # one fold: unusable
    folds, source = choose_folds(None, 12, 3)  # 4 folds of 3, seeded by the config's seed
    assert tuned.cv.folds_source == source == "a seeded random split into 4 folds" and tuned.cv.n_folds == 4
    tab, ctx, _ = class_tables(_Net(), truth, oof, cfg, 1.0, 16)
    again = crossval_chain(tab, folds, ctx, source)
    assert [r.fold_gains for r in tuned.cv.records] == [r.fold_gains for r in again.records]
    assert tuned.cv.fold_plain == again.fold_plain


def test_the_bootstrap_se_decides_when_the_folds_agree():
    from segkit.postprocess.crossval import Context, crossval_chain

    probs, truth = _four_images()
    probs, truth = np.concatenate([probs] * 2), np.concatenate([truth] * 2)
    tab = _net_tables(probs, truth)
    ctx = Context(grid=[0.5, 0.7], areas=[0], tops=[], kinds=[], cut_grid=None, triplet=False)
    rec = crossval_chain(tab, np.repeat([0, 1], 4), ctx, "two equal folds").records[0]
    # both folds hold the same 4 images: the threshold 0.7 gains 1.25 on each (fold SE 0); per image the gain is
    # [1, 0, 0, 4] twice, whose bootstrap SE is about σ/√8 = 1.64 / 2.83 = 0.58
    assert rec.fold_gains == pytest.approx([1.25, 1.25])
    assert rec.boot_se == pytest.approx(np.std([1, 0, 0, 4]) / np.sqrt(8), rel=0.3)
    assert rec.cv_se == rec.boot_se and rec.kept and rec.reason == f"CV gain +1.2500 > SE {rec.boot_se:.4f}"


def _net_tables(probs, truth):
    from segkit.postprocess.search import ClassTables, Scorer

    return ClassTables(probs, truth, Scorer(_Net(), truth), [0.5, 0.7])


def test_the_triplet_step_holds_the_gate():
    from segkit.postprocess.crossval import Context, State, run_step

    tab = _tables(False, topk_ks=[1])
    gate = {"kind": "topk", "k": 1, "cut": 0.75}  # top-1 means [0.8, 0.1, 0.9, 0.6]: images 0 and 2 kept
    ctx = Context(grid=[0.5], areas=[2], tops=[0.7], kinds=["topk"], cut_grid=None, triplet=True)
    # the top threshold 0.7 keeps the same images as the gate: under the gate it adds nothing (area 2: 0 either
    # way, no top threshold wins the tie); without a gate it is what drops image 3 (area 2: −1 → 0)
    assert run_step("triplet", tab, State(0.5, 0, gate), ctx, 8) == State(0.5, 2, gate, None)
    assert run_step("triplet", tab, State(0.5, 0), ctx, 8) == State(0.5, 2, None, 0.7)
