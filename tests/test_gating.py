"""Empty-mask gating: the search finds the gate and cut known by construction on hand-made probability maps,
with the competition's own metric (per-image Dice through counts, Airbus' object F2 through per-image scores);
apply_chain gates the same way; the gate's config keys refuse bad values naming the key."""
import numpy as np
import pytest

from segkit.config import load_config
from segkit.data.competitions.base import Adapter, adapter_class
from segkit.errors import ConfigError, TrainingError
from segkit.postprocess import ChainParams, apply_chain
from segkit.postprocess.search import ClassTables, Scorer, count_metric, gate_cuts, search_gate

N, S = 24, 32


def adapter(name: str | None = None):
    """A competition's real adapter class; only its metric is used, so no dataset folder is needed."""
    if name is None:
        return Adapter(".")
    cls = adapter_class(name)
    return cls.__new__(cls)


def faint_spurious(seed: int = 0):
    """Even images hold a ship (8×8, probabilities 0.9); odd ones are empty with a faint spurious blob (4×4 at
    0.6): at threshold 0.5 the blobs are false positives; any top-1 cut in [0.6, 0.9) removes exactly them."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((N, S, S), np.uint8)
    probs = rng.uniform(0.0, 0.2, (N, S, S)).astype(np.float32)
    for i in range(N):
        if i % 2 == 0:
            truth[i, 8:16, 8:16] = 1
            probs[i, 8:16, 8:16] = 0.9
        else:
            probs[i, 20:24, 4 + i % 5:8 + i % 5] = 0.6
    return probs, truth


def tables(probs, truth, metric=None, ks=(1, 16), label=None, gate_probs=None, counts=True):
    scorer = Scorer(adapter(metric), truth, counts=counts)
    return ClassTables(probs, truth, scorer, [0.3, 0.5, 0.7], 1, ks, gate_probs, label)


@pytest.mark.parametrize("metric", [None, "airbus"])
def test_topk_gate_removes_faint_blobs_on_empty_images(metric):
    probs, truth = faint_spurious()
    tab = tables(probs, truth, metric)
    assert tab.scorer.counts == (metric is None)  # Airbus' F2 matches objects: scored per image
    plain = tab.score(0.5, 0)
    assert plain == pytest.approx(adapter(metric).score_class(truth, (probs > 0.5).astype(np.uint8)))
    assert plain == pytest.approx(0.5)  # every empty image has a false positive
    score, gate, keep = search_gate(tab, 0.5, 0, ["topk"])
    assert score == pytest.approx(1.0)
    assert gate["kind"] == "topk" and gate["k"] in (1, 16) and 0.6 <= gate["cut"] < 0.9
    np.testing.assert_array_equal(keep, np.arange(N) % 2 == 0)


def test_area_gate_when_blobs_are_strong_but_small():
    """Spurious blobs as strong as the ships (0.9) but 4 px against 64: top-1 cannot tell them apart, the area
    above the threshold can; `auto` picks it with a cut in [4, 64)."""
    probs, truth = faint_spurious()
    probs[probs == np.float32(0.6)] = 0.9
    probs[1::2] = np.where(probs[1::2] > 0.5, 0.0, probs[1::2])
    probs[1::2, 2:4, 2:4] = 0.9  # 4 px
    tab = tables(probs, truth, ks=(1,))
    top_only = search_gate(tab, 0.5, 0, ["topk"])
    assert top_only[1] is None  # no top-1 cut helps: the gate step stays neutral
    score, gate, _ = search_gate(tab, 0.5, 0, ["topk", "area", "label"])
    assert gate["kind"] == "area" and 4 <= gate["cut"] < 64 and gate["threshold"] == 0.5
    assert score == pytest.approx(1.0) and top_only[0] == pytest.approx(0.5)


def test_label_gate_cut_from_the_classification_head():
    """Blobs identical to the ships, so only the head separates: its OOF probabilities 0.2–0.45 on empty images
    and 0.55–0.8 on the others; the cut lands between."""
    probs, truth = faint_spurious()
    probs[1::2] = probs[0::2]
    truth[1::2] = 0
    label = np.where(np.arange(N) % 2 == 0, np.linspace(0.55, 0.8, N), np.linspace(0.2, 0.45, N))
    tab = tables(probs, truth, label=label)
    score, gate, _ = search_gate(tab, 0.5, 0, ["topk", "area", "label"])
    assert gate["kind"] == "label" and 0.45 <= gate["cut"] < 0.55 and score == pytest.approx(1.0)
    # an explicit cut grid (postprocess.gate_cut_grid) is searched as given
    score, gate, _ = search_gate(tab, 0.5, 0, ["label"], cut_grid=[0.3, 0.5, 0.7])
    assert gate["cut"] == 0.5 and score == pytest.approx(1.0)


def test_no_gate_when_gating_does_not_help():
    probs, truth = faint_spurious()
    truth[1::2, 20:24] = 0
    truth[1::2] = (probs[1::2] > 0.5)  # the blobs are real objects: predicting them is right
    tab = tables(probs, truth)
    score, gate, keep = search_gate(tab, 0.5, 0, ["topk", "area"])
    assert gate is None and keep.all() and score == pytest.approx(tab.score(0.5, 0)) == pytest.approx(1.0)


def test_gating_everything_is_a_candidate():
    """When every prediction is wrong the best gate declares every image empty (Airbus' empty submission)."""
    probs, truth = faint_spurious()
    truth[:] = 0
    score, gate, keep = search_gate(tables(probs, truth, "airbus"), 0.5, 0, ["topk"])
    assert not keep.any() and score == pytest.approx(1.0) and gate is not None


def test_gate_cuts_are_bounded_and_between_scores():
    scores = np.random.default_rng(1).random(5000)
    cuts = gate_cuts(scores)
    assert len(cuts) <= 256 and cuts[-1] == scores.max()
    assert list(gate_cuts(np.array([0.1, 0.3, 0.3]))) == [pytest.approx(0.2), 0.3]


def test_gate_probs_separate_from_mask_probs():
    """The gates read `gate_probs` (the ensemble without positive-only models), not the mask probabilities."""
    probs, truth = faint_spurious()
    gate_probs = probs.copy()
    probs = np.where(probs > 0.5, np.float32(0.9), probs)  # the masks cannot tell; the gate models can
    score, gate, _ = search_gate(tables(probs, truth, gate_probs=gate_probs), 0.5, 0, ["topk"])
    assert 0.6 <= gate["cut"] < 0.9 and score == pytest.approx(1.0)


@pytest.mark.parametrize("name", [None, "carvana", "clouds", "cloud38"])
def test_count_metrics_equal_the_competition_metric(name):
    """score_counts is what tuning scores with: it must equal score_class on any stack, empty masks included."""
    rng = np.random.default_rng(2)
    truth = (rng.random((12, 9, 9)) > 0.6).astype(np.uint8)
    pred = (rng.random((12, 9, 9)) > 0.5).astype(np.uint8)
    truth[:4] = 0
    pred[2:6] = 0
    a = adapter(name)
    fn = count_metric(a)
    assert fn is not None
    inter = (truth & pred).reshape(12, -1).sum(1)
    got = fn(inter, pred.reshape(12, -1).sum(1), truth.reshape(12, -1).sum(1))
    assert float(got) == pytest.approx(a.score_class(truth, pred))


def test_object_metrics_have_no_count_form():
    """Airbus overrides score_class without score_counts: the base Dice form must not be used for it."""
    assert count_metric(adapter("airbus")) is None


def test_apply_chain_gates_per_class():
    p = np.zeros((16, 16, 3), np.float32)
    p[2:6, 2:6, :] = 0.6  # a faint blob in every class
    p[10, 10, 1] = 0.95  # class 1 has a strong peak too
    chain = ChainParams.from_dict({"classes": [
        {"threshold": 0.5, "min_area": 0, "gate": {"kind": "topk", "k": 1, "cut": 0.8}},
        {"threshold": 0.5, "min_area": 0, "gate": {"kind": "topk", "k": 1, "cut": 0.8}},
        {"threshold": 0.5, "min_area": 0, "gate": {"kind": "label", "k": None, "cut": 0.5}}]})
    out = apply_chain(p, chain, label=np.array([0.0, 0.0, 0.9]))
    assert out[..., 0].sum() == 0 and out[..., 1].sum() == 17 and out[..., 2].sum() == 16
    gate_probs = p.copy()
    gate_probs[10, 10, 1] = 0.1  # the gate's models see no peak
    assert apply_chain(p, chain, gate_probs, label=np.array([0, 0, 0.9]))[..., 1].sum() == 0
    area = ChainParams.from_dict({"classes": [{"threshold": 0.5, "min_area": 0,
                                               "gate": {"kind": "area", "k": None, "cut": 16, "threshold": 0.5}}]})
    assert apply_chain(p[..., :1], area).sum() == 0  # 16 px is not above the cut 16
    with pytest.raises(TrainingError, match="no head"):
        apply_chain(p, chain)  # a label gate needs the heads' probabilities


@pytest.mark.parametrize("override, says", [
    ("postprocess.gate=clasifier", r"postprocess\.gate: unknown gate 'clasifier'"),
    ("postprocess.gate_topk_grid=[0.01,0]", r"postprocess\.gate_topk_grid\.1: must be a fraction"),
    ("postprocess.gate_topk_grid=[]", r"postprocess\.gate_topk_grid: must not be empty"),
    ("postprocess.gate_cut_grid=[0.5,1.5]", r"postprocess\.gate_cut_grid\.1: must be a probability"),
])
def test_gate_config_keys_refuse_bad_values(override, says):
    with pytest.raises(ConfigError, match=says):
        load_config(None, [override])


def test_label_gate_without_a_head_names_the_key():
    from segkit.postprocess.tuning import _gate_kinds

    cfg = load_config(None, ["postprocess.gate=label"])
    with pytest.raises(ConfigError, match=r"postprocess\.gate: 'label' needs a classification head"):
        _gate_kinds(cfg, has_label=False)
    assert _gate_kinds(load_config(None, []), has_label=False) == ["topk", "area"]
    assert _gate_kinds(load_config(None, []), has_label=True) == ["topk", "area", "label"]
