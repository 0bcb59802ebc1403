"""Triplet thresholds (bottom threshold, min component area, top threshold) and the whole chain tuned on
hand-made OOF maps with a known best: the searches find it at a bounded number of labelling passes, the step
scores never decrease, and applying the tuned chain image by image reproduces the reported score."""
import numpy as np
import pytest

from segkit.config import load_config
from segkit.data.competitions.base import Adapter, adapter_class
from segkit.errors import ConfigError
from segkit.oof import OofClass
from segkit.postprocess import ChainParams, apply_chain
from segkit.postprocess.search import ClassTables, Scorer, coarse_to_fine, search_min_area, search_triplet
from segkit.postprocess.tuning import STEP_NAMES, tune_class

N, S = 24, 32
GRID = [round(0.05 * i, 2) for i in range(2, 19)]  # the default threshold grid


def siim_like(seed: int = 0):
    """Non-empty images: a true 8×8 object predicted at 0.45 with a 2×2 core at 0.95, and a one-pixel speck at
    0.5 elsewhere; empty images: a 6×6 blob at 0.7. Best by construction: bottom in [0.1, 0.45) (the background is below 0.1) (whole object),
    min area in (1, 64] (no speck, object kept), top in [0.7, 0.95) (blobs dropped, cores kept) → score 1."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((N, S, S), np.uint8)
    probs = rng.uniform(0.0, 0.1, (N, S, S)).astype(np.float32)
    for i in range(N):
        if i % 2 == 0:
            truth[i, 8:16, 8:16] = 1
            probs[i, 8:16, 8:16] = 0.45
            probs[i, 11:13, 11:13] = 0.95
            probs[i, 28, 2 + i % 7] = 0.5
        else:
            probs[i, 20:26, 4:10] = 0.7
    return probs, truth


def tables(probs, truth, metric=None, top_k=1):
    a = Adapter(".") if metric is None else adapter_class(metric).__new__(adapter_class(metric))
    return ClassTables(probs, truth, Scorer(a, truth), GRID, top_k, [1])


@pytest.mark.parametrize("metric", [None, "airbus"])
def test_triplet_search_finds_the_constructed_best(metric):
    probs, truth = siim_like()
    tab = tables(probs, truth, metric)
    score, bottom, area, top = search_triplet(tab, GRID, [0, 2, 100], [0.6, 0.8, 0.9, 0.99], threshold=0.5)
    assert score == pytest.approx(1.0)
    assert 0.1 <= bottom < 0.45 and area == 2 and top in (0.8, 0.9)
    assert tab.score(0.5, 0) < 0.6  # plain 0.5: cores only on ships, blobs on empty images


def test_the_current_parameters_win_ties_and_no_top_threshold_when_useless():
    probs, truth = siim_like()
    truth[1::2, 20:26, 4:10] = 1  # the blobs are real: nothing to gate
    tab = tables(probs, truth)
    best = search_triplet(tab, GRID, [0, 2], [0.8, 0.9], threshold=0.4)
    assert best[3] is None and best[0] == pytest.approx(1.0)


def test_min_area_search_drops_the_speck():
    probs, truth = siim_like()
    truth[1::2, 20:26, 4:10] = 1
    tab = tables(probs, truth)
    score, b, area = search_min_area(tab, GRID, [0, 2, 100], threshold=0.4)
    assert score == pytest.approx(1.0) and area == 2 and 0.1 <= b < 0.45


def test_labelling_passes_are_bounded():
    """Coarse-to-fine: ⌈G/stride⌉ + 1 + 2·(stride − 1) labelling passes per step at most (11 for G = 17), the
    triplet reusing the passes of the min-area step."""
    probs, truth = siim_like()
    tab = tables(probs, truth)
    search_min_area(tab, GRID, [0, 2, 100], threshold=0.5)
    first = tab.passes
    assert 7 <= first <= 11
    search_triplet(tab, GRID, [0, 2, 100], [0.8, 0.9], threshold=0.5)
    assert tab.passes <= first + 11
    seen = []
    coarse_to_fine(GRID, 0.5, lambda b: (seen.append(b) or -abs(b - 0.2), None))
    assert len(seen) == len(set(seen)) <= 11 and 0.2 in seen


def test_top_k_pixels_must_pass():
    """top_k = 4: one pixel above the top threshold is not enough (blobs with one hot pixel are dropped, the
    cores of 4 are kept)."""
    probs, truth = siim_like()
    probs[1::2, 21, 5] = 0.97  # one hot pixel in every blob
    tab1, tab4 = tables(probs, truth, top_k=1), tables(probs, truth, top_k=4)
    assert search_triplet(tab1, GRID, [0, 2], [0.9, 0.96], threshold=0.5)[0] < 1.0
    score, _, _, top = search_triplet(tab4, GRID, [0, 2], [0.9, 0.96], threshold=0.5)
    assert score == pytest.approx(1.0) and top in (0.9, 0.96)
    chain = ChainParams.from_dict({"classes": [{"threshold": 0.3, "min_area": 2, "top_threshold": 0.9, "top_k": 4}]})
    masks = np.stack([apply_chain(p[..., None], chain)[..., 0] for p in probs])
    np.testing.assert_array_equal(masks, truth)


@pytest.mark.parametrize("metric", [None, "airbus"])
def test_tune_class_steps_never_decrease_and_apply_chain_reproduces_them(metric):
    probs, truth = siim_like()
    probs[1::2, 2:5, 20:23] = 0.45  # a faint 3×3 blob on empty images: more for the min area to do
    a = Adapter(".") if metric is None else adapter_class(metric).__new__(adapter_class(metric))
    cfg = load_config(None, ["postprocess.min_area_grid=[0,2,10,100]", "postprocess.gate_topk_grid=[0.001,0.05]"])
    row, steps = tune_class(a, truth, OofClass(probs, probs, None), cfg, area_scale=1.0, sub_pixels=S * S)
    scores = [s for s, _ in steps]
    assert len(steps) == len(STEP_NAMES)
    assert scores[0] == pytest.approx(a.score_class(truth, (probs > 0.5).astype(np.uint8)))
    assert all(b >= a_ - 1e-12 for a_, b in zip(scores, scores[1:])), scores
    assert scores[-1] == pytest.approx(1.0) and scores[0] < 0.6
    chain = ChainParams.from_dict({"classes": [row]})
    masks = np.stack([apply_chain(p[..., None], chain)[..., 0] for p in probs])
    assert a.score_class(truth, masks) == pytest.approx(scores[-1])


def test_tune_class_without_triplet_or_gate_keeps_those_steps_neutral():
    probs, truth = siim_like()
    cfg = load_config(None, ["postprocess.triplet=false", "postprocess.gate=none"])
    row, steps = tune_class(Adapter("."), truth, OofClass(probs, probs, None), cfg, 1.0, S * S)
    assert row["gate"] is None and row["top_threshold"] is None
    assert steps[3][0] == steps[2][0] == steps[4][0]


@pytest.mark.parametrize("override, says", [
    ("postprocess.triplet=maybe", r"postprocess\.triplet: expected true or false"),
    ("postprocess.top_threshold_grid=[0.8,1.2]", r"postprocess\.top_threshold_grid\.1: must be a probability"),
    ("postprocess.top_threshold_grid=[]", r"postprocess\.top_threshold_grid: must not be empty"),
    ("postprocess.top_k=0", r"postprocess\.top_k: must be ≥ 1, got 0"),
])
def test_triplet_config_keys_refuse_bad_values(override, says):
    with pytest.raises(ConfigError, match=says):
        load_config(None, [override])


class _MeanIoU(Adapter):
    """A metric (mean IoU per image) whose count form is wrongly declared as Dice: tuning must notice."""

    def score_class(self, truth, pred):
        t = truth.reshape(len(truth), -1) > 0
        p = pred.reshape(len(pred), -1) > 0
        union = (t | p).sum(1)
        return float(np.where(union == 0, 1.0, (t & p).sum(1) / np.maximum(union, 1)).mean())

    def score_counts(self, inter, pred_area, true_area):
        return super().score_counts(inter, pred_area, true_area)  # Dice: not this metric


def test_a_count_form_that_disagrees_with_the_metric_is_not_used():
    probs, truth = siim_like()
    a = _MeanIoU(".")
    cfg = load_config(None, ["postprocess.min_area_grid=[0,2]"])
    row, steps = tune_class(a, truth, OofClass(probs, probs, None), cfg, 1.0, S * S)
    assert steps[0][0] == pytest.approx(a.score_class(truth, (probs > 0.5).astype(np.uint8)))
    chain = ChainParams.from_dict({"classes": [row]})
    masks = np.stack([apply_chain(p[..., None], chain)[..., 0] for p in probs])
    assert a.score_class(truth, masks) == pytest.approx(steps[-1][0])
