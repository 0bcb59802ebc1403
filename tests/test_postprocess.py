"""Binarisation and small-component removal; the chain tuned and applied end to end through the CLI."""
import json

import numpy as np
import pytest

from segkit.postprocess import apply, remove_small


def test_remove_small_keeps_large_components_only():
    m = np.zeros((10, 10), np.uint8)
    m[0:2, 0:2] = 1  # 4 px
    m[5:9, 5:9] = 1  # 16 px
    m[0, 9] = 1  # 1 px
    out = remove_small(m, 5)
    assert out.sum() == 16 and out[5:9, 5:9].all()
    assert remove_small(np.zeros((4, 4), np.uint8), 3).sum() == 0


def test_diagonal_pixels_are_one_component():
    m = np.eye(5, dtype=np.uint8)
    assert remove_small(m, 5).sum() == 5


def test_apply_per_class_thresholds_and_areas():
    p = np.zeros((8, 8, 2), np.float32)
    p[0:3, 0:3, 0] = 0.6
    p[6, 6, 0] = 0.9
    p[:, :, 1] = 0.4
    out = apply(p, [0.5, 0.3], [2, 0])
    assert out.dtype == np.uint8 and out.shape == (8, 8, 2)
    assert out[..., 0].sum() == 9  # the lone pixel is removed
    assert out[..., 1].all()
    assert apply(p, [0.7, 0.5], [0, 0]).sum() == 1


def test_threshold_and_min_area_searches_remove_false_specks():
    from segkit.data.competitions.base import Adapter
    from segkit.postprocess.search import ClassTables, Scorer, search_min_area, search_threshold

    rng = np.random.default_rng(0)
    truth = np.zeros((6, 32, 32), np.uint8)
    probs = rng.uniform(0.0, 0.45, (6, 32, 32)).astype(np.float32)
    for i in range(6):
        truth[i, 8:20, 8:20] = 1
        probs[i, 8:20, 8:20] = 0.6  # the object: above 0.5, below 0.7
        probs[i, 26, 2 + i] = 0.9  # a one-pixel false positive per image
    adapter = Adapter(".")  # the default metric: mean Dice per image
    tab = ClassTables(probs, truth, Scorer(adapter, truth), [0.3, 0.5, 0.7])
    score, threshold = search_threshold(tab, [0.3, 0.5, 0.7])
    assert threshold == 0.5 and score < 1.0
    assert score == pytest.approx(adapter.score_class(truth, (probs > 0.5).astype(np.uint8)))
    score, threshold, area = search_min_area(tab, [0.3, 0.5, 0.7], [0, 4], threshold)
    assert (threshold, area) == (0.5, 4) and score == pytest.approx(1.0)


# --- the chain through the CLI on a tiny trained run -----------------------------------------------------

TINY_MODEL = "models=[{name: unet, tag: unet, depth: 2, base_filters: 4}]"


def overrides(base, *extra):
    return [f"data.root={base / 'data'}", "data.image_size=32", f"data.cache_dir={base / 'cache'}",
            f"output.runs_dir={base / 'runs'}", f"output.submissions_dir={base / 'subs'}", "train.folds=2",
            "train.epochs=1", "train.batch_size=8", "train.workers=1", "train.verbose=0", "predict.tta=[identity]",
            "postprocess.threshold_grid=[0.3,0.5,0.7]", "postprocess.min_area_grid=[0,4]", TINY_MODEL, *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run (synthetic 38-Cloud, 32 px, 2 folds × 1 epoch) and the output of `segkit train`."""
    import io
    from contextlib import redirect_stdout

    from segkit.cli import main
    from segkit.data.synth import generate

    base = tmp_path_factory.mktemp("chain")
    generate("cloud38", base / "data", seed=3, patch_size=32, n_train_scenes=3, n_test_scenes=1)
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["train", "demo", *overrides(base)])
    assert code == 0, out.getvalue()[-3000:]
    return base, out.getvalue()


def test_tune_writes_v2_with_the_score_after_each_step(trained):
    base, log = trained
    data = json.loads((base / "runs" / "demo" / "postprocess.json").read_text())
    assert data["version"] == 2
    steps = data["steps"]
    assert [s["step"] for s in steps] == ["plain (0.5)", "threshold", "min area", "gate", "triplet"]
    scores = [s["oof_score"] for s in steps]
    assert all(b >= a - 1e-12 for a, b in zip(scores, scores[1:])), scores
    assert scores[0] == data["oof_score_default"] and scores[-1] == data["oof_score_tuned"]
    row = data["classes"][0]
    assert {"name", "threshold", "min_area", "gate", "top_threshold", "top_k"} <= set(row)
    assert row["threshold"] in (0.3, 0.5, 0.7) and row["min_area"] in (0, 4) and row["top_k"] == 1
    assert "[tune] plain (0.5)" in log and "[tune] triplet" in log


def test_predict_applies_the_chain(trained, capsys, tmp_path):
    """predict binarises with apply_chain: a gate no image passes empties the submission, a v1 file (threshold
    and min area only) still reads, and a label gate without heads ends in one line."""
    import pandas as pd

    from segkit.cli import main

    base, _ = trained
    pp = base / "runs" / "demo" / "postprocess.json"
    tuned = pp.read_text()

    def predict(doc) -> set:
        pp.write_text(json.dumps(doc))
        out = tmp_path / "sub.csv"
        code = main(["predict", "--out", str(out), "demo", *overrides(base)])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        return set(pd.read_csv(out, keep_default_na=False)["EncodedPixels"]), captured.out

    row = {"name": "cloud", "threshold": 0.0, "min_area": 0, "top_k": 1}
    try:
        rows, out = predict({"classes": [row]})  # v1: every pixel is above 0
        assert rows == {"1 1024"}
        rows, out = predict({"version": 2, "classes": [{**row, "gate": {"kind": "topk", "k": 1, "cut": 1.0}}]})
        assert rows == {""} and "gate topk k=1 > 1" in out  # no probability is above 1: every mask is gated
        rows, _ = predict({"version": 2, "classes": [{**row, "top_threshold": 1.0}]})
        assert rows == {""}  # no pixel passes the top threshold
        pp.write_text(json.dumps({"version": 2, "classes": [{**row, "gate": {"kind": "label", "k": None, "cut": 0.5}}]}))
        code = main(["predict", "--out", str(tmp_path / "x.csv"), "demo", *overrides(base)])
        err = capsys.readouterr().err
        assert code == 1 and "no head" in err and "Traceback" not in err
    finally:
        pp.write_text(tuned)
