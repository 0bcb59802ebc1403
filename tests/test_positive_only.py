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
