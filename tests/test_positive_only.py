"""Positive-only training (`train.positive_only`, per model `models[i].positive_only`) on one tiny real run:
synthetic Airbus (32 px, 40 % ship-free), a normal and a positive-only depth-2 U-Net, 2 folds × 1 epoch. The
positive-only model trains and validates on the non-empty images of its folds, writes OOF for all of them, and
the ensemble uses it for the masks only (`gate_probs` is the normal model's)."""
import json

import numpy as np
import pytest

from segkit.config import load_config
from segkit.errors import ConfigError, TrainingError

MODELS = ("models=[{name: unet, tag: full, depth: 2, base_filters: 4}, "
          "{name: unet, tag: pos, depth: 2, base_filters: 4, positive_only: true}]")


def overrides(base, *extra):
    return [f"data.root={base / 'data'}", "data.image_size=32", f"data.cache_dir={base / 'cache'}",
            "data.options.empty_fraction=1.0", f"output.runs_dir={base / 'runs'}",
            f"output.submissions_dir={base / 'subs'}", "train.folds=2", "train.epochs=1", "train.batch_size=8",
            "train.workers=1", "train.verbose=0", "train.early_stopping_patience=50", "predict.tta=[identity]",
            "postprocess.threshold_grid=[0.3,0.5,0.7]", "postprocess.min_area_grid=[0]", MODELS, *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(base folder, config, run data) of a finished run (folds only: no tuning)."""
    from segkit.data.synth import generate
    from segkit.runs import open_run_data
    from segkit.train import train

    base = tmp_path_factory.mktemp("positive_only")
    generate("airbus", base / "data", seed=5, image_size=32, n_train=20, n_test=3, ship_free=0.4, quiet=True)
    cfg = load_config("airbus", overrides(base, "predict.weights={full: 1, pos: 2}"))
    train(cfg, quiet=True)
    return base, cfg, open_run_data(cfg, quiet=True)


def nonempty(run, idx):
    return np.array([bool(np.asarray(run.cache.masks[i]).any()) for i in idx])


def test_fold_trains_and_validates_on_non_empty_images_and_writes_oof_for_all(trained):
    from segkit.runs import RunDir
    from segkit.train import positive_only_split

    _, cfg, run = trained
    rd = RunDir.of(cfg)
    flags = nonempty(run, np.arange(len(run.samples)))
    assert 0 < flags.sum() < len(flags)  # some images are ship-free, else the test says nothing
    for k in range(2):
        train_idx, val_idx = np.flatnonzero(run.folds != k), np.flatnonzero(run.folds == k)
        fit_train, fit_val = positive_only_split(run, cfg.models[1], train_idx, val_idx, "pos", k)
        np.testing.assert_array_equal(fit_train, train_idx[flags[train_idx]])
        np.testing.assert_array_equal(fit_val, val_idx[flags[val_idx]])
        pos, full = rd.fold("pos", k).read_done(), rd.fold("full", k).read_done()
        assert pos["positive_only"] is True and full["positive_only"] is False
        assert (pos["n_train"], pos["n_val_fit"]) == (len(fit_train), len(fit_val))
        assert (full["n_train"], full["n_val_fit"]) == (len(train_idx), len(val_idx))
        for tag in ("pos", "full"):  # OOF on every validation image
            fold = rd.fold(tag, k)
            np.testing.assert_array_equal(np.load(fold.oof_index), val_idx)
            assert np.load(fold.oof).shape[0] == len(val_idx)


def test_oof_roles_and_weights(trained):
    """probs = (1·full + 2·pos) / 3 as predict.weights says; gate_probs = the normal model's OOF alone."""
    from segkit.oof import ensemble_members, load_oof_class
    from segkit.runs import RunDir

    _, cfg, run = trained
    n = len(run.samples)
    members = ensemble_members(cfg)
    assert [(m.tag, m.weight, m.positive_only) for m in members] == [("full", 1.0, False), ("pos", 2.0, True)]
    each = {}
    for tag in ("full", "pos"):
        total = np.zeros((n, 32, 32), np.float32)
        for k in range(2):
            fold = RunDir.of(cfg).fold(tag, k)
            total[np.load(fold.oof_index)] = np.load(fold.oof)[..., 0]
        each[tag] = total
    oof = load_oof_class(cfg, n, 0)
    np.testing.assert_allclose(oof.probs, (each["full"] + 2 * each["pos"]) / 3, atol=1e-6)
    np.testing.assert_allclose(oof.gate_probs, each["full"], atol=1e-6)
    assert oof.label is None and oof.gate_probs is not oof.probs
    # the positive-only model alone cannot gate: refused unless it has a classification head
    with pytest.raises(ConfigError, match="every ensembled model trains on non-empty masks only"):
        ensemble_members(load_config("airbus", overrides(trained[0], "predict.models=[pos]")))


def test_predict_with_scales_weights_and_roles(trained, capsys):
    from segkit.predict import predict

    base, _, _ = trained
    cfg = load_config("airbus", overrides(base, "predict.weights={full: 1, pos: 2}", "predict.scales=[0.75,1.0]",
                                          "postprocess.tune=false"))
    path = predict(cfg)
    assert path.is_file()
    out = capsys.readouterr().out
    assert "3 test samples × 4 checkpoints × 1 TTA × 2 scales" in out
    assert "ensemble: full ×1, pos ×2 (positive-only: masks, not the gate)" in out


def test_positive_only_shapes_the_weights(trained):
    """The per-model key is part of the model's fingerprint, train.positive_only enters it once set."""
    from segkit.runs import weight_settings
    from segkit.train import train

    base, _, _ = trained
    assert "train.positive_only" not in weight_settings(load_config("airbus", overrides(base)))
    keep_one = MODELS.replace("tag: full,", "tag: full, positive_only: false,")
    on = weight_settings(load_config("airbus", overrides(base, "train.positive_only=true", keep_one)))
    assert on["train.positive_only"] is True
    flipped = MODELS.replace("positive_only: true", "positive_only: false")
    with pytest.raises(TrainingError, match="models.pos"):
        train(load_config("airbus", overrides(base, flipped)), quiet=True)
    done = json.loads((base / "runs" / "airbus" / "pos" / "fold_0" / "done.json").read_text())
    assert done["positive_only"] is True  # nothing was retrained


def test_notebook_ensemble_carries_weights_scales_and_roles(trained):
    import segkit as sk

    base, _, _ = trained
    run = sk.Run("airbus", overrides(base, "predict.weights={full: 1, pos: 2}", "predict.scales=[0.75,1.0]",
                                     "postprocess.tune=false"), quiet=True)
    ens = run.ensemble()
    assert ens.weights == [1.0, 1.0, 2.0, 2.0] and ens.positive_only == [False, False, True, True]
    assert ens.scales == [0.75, 1.0]
    _, image = next(run.iter_images("test", limit=1))
    probs = ens.predict(image)
    assert probs.shape == image.shape[:2] + (1,) and 0 <= probs.min() <= probs.max() <= 1
    assert ens.predict_masks(image).shape == probs.shape


def test_tune_chooses_weights_then_tunes_the_chain_on_their_mix(trained, capsys):
    from segkit.oof import ensemble_members
    from segkit.pipeline import tune
    from segkit.runs import RunDir

    base, _, _ = trained
    cfg = load_config("airbus", overrides(base, "predict.tune_weights=true"))
    result = tune(cfg, quiet=False, saved_config=False)
    out = capsys.readouterr().out
    rd = RunDir.of(cfg)
    saved = rd.read_weights()
    assert sorted(saved["weights"]) == ["full", "pos"] and saved["weights"]["full"] > 0  # a gate model stays
    assert saved["oof_score"] >= saved["oof_score_equal"] - 1e-12
    assert "[tune] ensemble weights full: " in out
    assert [m.weight for m in ensemble_members(cfg)] == [saved["weights"]["full"], saved["weights"]["pos"]]
    assert rd.postprocess.is_file() and result["classes"]


# --- config → prediction, checked against numpy ----------------------------------------------------------
# The run's four checkpoints (full × 2 folds, pos × 2 folds: different weights) are run by hand with keras on
# the raw images, TTA and scales done in numpy/cv2, mixed with the weights, gated on the normal models only, and
# compared with what `segkit predict` writes and what the notebook Ensemble returns. Each config key is also
# shown to change the expected masks, so a predict that ignored it would fail.

TTA_NAMES = ("identity", "hflip")
SCALES = (0.75, 1.0)
WEIGHTS = {"full": 1.0, "pos": 3.0}
AMBIGUOUS = 2e-6  # pixels this close to the threshold may go either way (float32 sums in another order)


def _any_size(model):
    """The checkpoint's network rebuilt with an input of any height and width, same weights."""
    config = model.get_config()
    first = config["layers"][0]["config"]
    first["batch_shape"] = [None, None, None, first["batch_shape"][-1]]
    net = model.__class__.from_config(config)
    net.set_weights(model.get_weights())
    return net


def _by_hand(nets, images, scales):
    """Per model (M, N, H, W): the mean over TTA_NAMES × scales of its ship probability, at the images' size."""
    import cv2

    n, h, w = images.shape[:3]
    out = np.zeros((len(nets), n, h, w), np.float64)
    for m, net in enumerate(nets):
        for s in scales:
            sh, sw = int(h * s), int(w * s)
            assert (sh % 4, sw % 4) == (0, 0)  # a depth-2 U-Net takes multiples of 4: no rounding to mirror
            x = images if s == 1 else np.stack([cv2.resize(im, (sw, sh), interpolation=cv2.INTER_LINEAR)
                                                 for im in images])
            part = np.zeros((n, sh, sw), np.float32)
            for name in TTA_NAMES:
                flip = (lambda a: a[:, :, ::-1]) if name == "hflip" else (lambda a: a)
                part += flip(np.asarray(net.predict_on_batch(flip(x)))[..., 0])
            if s != 1:
                part = np.stack([cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR) for p in part])
            out[m] += part
    return out / (len(TTA_NAMES) * len(scales))


def _mix(per_model, weights, gate_members):
    """(probs, gate probs): the weighted mean of the models, and of the `gate_members` only."""
    w = np.asarray(weights, np.float64)[:, None, None, None]
    g = w * np.asarray(gate_members, bool)[:, None, None, None]
    return (w * per_model).sum(0) / w.sum(), (g * per_model).sum(0) / g.sum()


def _pick_chain(right, variants):
    """A threshold (the median of the right probabilities) and an area gate cut that one image's gate decision
    turns on: with the gate on the normal models it passes and with every model it fails, or the reverse."""
    probs, gate = right
    threshold = float(np.median(probs))
    area_gate = (gate > threshold).sum(axis=(1, 2))
    area_all = (probs > threshold).sum(axis=(1, 2))
    i = int(np.argmax(np.abs(area_gate - area_all)))
    low, high = sorted((int(area_gate[i]), int(area_all[i])))
    counts = [((g > threshold).sum(axis=(1, 2)), (np.abs(g - threshold) < AMBIGUOUS).sum(axis=(1, 2)))
              for _, g in [right, *variants]]
    # the cut nearest the middle at which no image's gate decision rests on its ambiguous pixels
    for cut in sorted(np.arange(low, high) + 0.5, key=lambda c: abs(c - (low + high) / 2)):
        if all((np.abs(area - cut) > ambiguous).all() for area, ambiguous in counts):
            break
    else:
        pytest.fail(f"no clear gate cut between {low} and {high}")
    return threshold, cut


def _masks(mixed, threshold, cut):
    probs, gate = mixed
    passed = (gate > threshold).sum(axis=(1, 2)) > cut
    return (probs > threshold) & passed[:, None, None]


def _assert_same(got, want, probs, threshold, what):
    differ = (got != want) & (np.abs(probs - threshold) >= AMBIGUOUS)
    assert not differ.any(), f"{what}: {int(differ.sum())} pixels differ from the numpy ensemble"


def _changes(want, other, probs, threshold, what):
    """`other` (the expected masks had predict ignored a key) differs from `want` on unambiguous pixels."""
    assert ((want != other) & (np.abs(probs - threshold) >= AMBIGUOUS)).sum() > 10, f"{what} changes nothing here"


@pytest.fixture(scope="module")
def by_hand(trained, tmp_path_factory):
    """(overrides, checkpoint tags, per-model probabilities at scales and at scale 1 for test then train images,
    number of test images) for a copy of the trained run."""
    import shutil

    import keras

    import segkit as sk
    from segkit.runs import checkpoint_folds

    base, _, _ = trained
    out = tmp_path_factory.mktemp("by_hand")
    shutil.copytree(base / "runs", out / "runs")
    weights = "{" + ", ".join(f"{t}: {w:g}" for t, w in WEIGHTS.items()) + "}"
    args = [*overrides(base), f"output.runs_dir={out / 'runs'}", f"output.submissions_dir={out / 'subs'}",
            f"predict.tta=[{','.join(TTA_NAMES)}]", f"predict.scales=[{','.join(map(str, SCALES))}]",
            f"predict.weights={weights}"]
    run = sk.Run("airbus", args, quiet=True)
    folds = checkpoint_folds(run.config)
    nets = [_any_size(keras.models.load_model(f.best)) for f in folds]
    test = [(i, im) for i, im in run.iter_images("test")]
    train = [(i, im) for i, im in run.iter_images("train")]
    images = np.stack([im for _, im in test + train]).astype(np.float32)
    assert images.shape[1:] == (32, 32, 3)
    return dict(args=args, run=run, tags=[f.tag for f in folds], ids=[i for i, _ in test], n_test=len(test),
                images=images, scaled=_by_hand(nets, images, SCALES), plain=_by_hand(nets, images, (1.0,)))


def _variants(hand, size=None):
    """The expected (probs, gate) as the config says, then as predict would make them ignoring predict.weights,
    predict.scales, the positive-only role; resized to `size` (submission pixels) when given."""
    import cv2

    tags = hand["tags"]
    weights = [WEIGHTS[t] for t in tags]
    normal = [t != "pos" for t in tags]
    out = [_mix(hand["scaled"], weights, normal), _mix(hand["scaled"], [1.0] * len(tags), normal),
           _mix(hand["plain"], weights, normal), _mix(hand["scaled"], weights, [True] * len(tags))]
    if size is not None:
        up = lambda a: np.stack([cv2.resize(p.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)  # noqa: E731
                                 for p in a[:hand["n_test"]]])
        out = [(up(p), up(g)) for p, g in out]
    return out


def _expected_and_saved_chain(by_hand, **size) -> tuple:
    """The numpy ensemble's variants (as configured, then ignoring each key), a threshold and area-gate cut picked from them, the masks they give (each
    ignored key shown to change them), with that chain saved as the run's postprocess.json."""
    from segkit.runs import RunDir

    right, *ignored = _variants(by_hand, **size)
    threshold, cut = _pick_chain(right, ignored)
    want = _masks(right, threshold, cut)
    for other, key in zip(ignored, ("predict.weights", "predict.scales", "the positive-only role")):
        _changes(want, _masks(other, threshold, cut), right[0], threshold, key)
    RunDir.of(by_hand["run"].config).write_postprocess(
        {"classes": [{"name": "ship", "threshold": threshold, "min_area": 0,
                      "gate": {"kind": "area", "k": None, "cut": cut}}]})
    return right, ignored, threshold, want


def test_submission_follows_weights_scales_and_role_as_numpy_says(by_hand):
    """`segkit predict` writes, image by image, the masks of the numpy ensemble: weights 1:3, scales 0.75 and 1,
    identity + hflip, the area gate (tuned file) on the normal models only, then the threshold, at 768 px."""
    import pandas as pd

    from segkit import rle
    from segkit.cli import main

    right, _, threshold, want = _expected_and_saved_chain(by_hand, size=(768, 768))
    assert main(["-q", "predict", "airbus", *by_hand["args"]]) == 0
    sub = pd.read_csv(by_hand["run"].config.submission_dir / "submission.csv", keep_default_na=False)
    for n, image_id in enumerate(by_hand["ids"]):
        rows = sub.loc[sub["ImageId"] == image_id, "EncodedPixels"]
        assert len(rows) >= 1, image_id
        got = np.zeros((768, 768), bool)
        for text in rows:
            if text:
                got |= rle.decode(text, (768, 768), order="F") > 0
        _assert_same(got, want[n], right[0][n], threshold, image_id)


def test_notebook_ensemble_follows_weights_scales_and_role_as_numpy_says(by_hand):
    """Run.ensemble(): `predict` returns the numpy ensemble's probabilities, `predict_masks` its gated masks,
    on every train and test image at 32 px."""
    import segkit as sk

    right, ignored, threshold, want = _expected_and_saved_chain(by_hand)
    ens = sk.Run("airbus", by_hand["args"], quiet=True).ensemble()
    images = by_hand["images"]
    probs = ens.predict(images)[..., 0]
    np.testing.assert_allclose(probs, right[0], rtol=0, atol=AMBIGUOUS / 2)
    for other in ignored[:2]:  # weights and scales move the probabilities far beyond that tolerance
        assert np.abs(other[0] - right[0]).max() > 50 * AMBIGUOUS
    _assert_same(ens.predict_masks(images)[..., 0].astype(bool), want, right[0], threshold, "predict_masks")
