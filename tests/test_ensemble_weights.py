"""Ensemble weights per model tag: the config keys (`predict.weights`, `predict.scales`, `predict.tune_weights`,
`train.positive_only`) refuse bad values naming the key, unknown tags get the closest tag, and the weights tuned on
hand-made OOF predictions (no training: a real synthetic Airbus run folder with OOF files written by hand) are the
known best ones, saved where predict and `load_oof_class` find them."""
import numpy as np
import pytest

from segkit.config import load_config
from segkit.errors import ConfigError, TrainingError

MODELS = ("models=[{name: unet, tag: good, depth: 2, base_filters: 4}, "
          "{name: unet, tag: noisy, depth: 2, base_filters: 4}]")


@pytest.mark.parametrize("override, says", [
    ("predict.scales=[]", "predict.scales: must not be empty"),
    ("predict.scales=[0.75, 0]", "predict.scales.1: must be a scale factor in [0.25, 4]"),
    ("predict.scales=[9]", "predict.scales.0"),
    ("predict.scales=big", "predict.scales: expected a list"),
    ("predict.weights={good: -1}", "predict.weights.good: must be a number ≥ 0"),
    ("predict.weights={good: .nan}", "predict.weights.good: must be a number ≥ 0"),
    ("predict.weights={good: heavy}", "predict.weights.good"),
    ("predict.weights={good: 0, noisy: 0}", "predict.weights: every weight is 0"),
    ("predict.weights=[1, 2]", "predict.weights: expected a mapping"),
    ("predict.tune_weights=maybe", "predict.tune_weights: expected true or false"),
    ("train.positive_only=2", "train.positive_only: expected true or false"),
    ("models=[{name: unet, positive_only: 1}]", "models.0.positive_only: must be true or false"),
    ("models=[{name: unet, positive_only: true}]", "models.0.positive_only: every model trains on non-empty"),
])
def test_config_keys_reject_bad_values(override, says):
    with pytest.raises(ConfigError) as err:
        load_config(None, [MODELS, override])
    assert says in str(err.value)


@pytest.mark.parametrize("scales, says", [
    ([0.2], "ensemble scales.0: must be a scale factor in [0.25, 4]"),
    ([1.0, 4.5], "ensemble scales.1: must be a scale factor in [0.25, 4]"),
    ([float("nan")], "ensemble scales.0"),
    (["1.0"], "ensemble scales.0"),
    ([], "ensemble scales: must not be empty"),
])
def test_the_notebook_ensemble_and_predict_ensemble_take_the_configs_scale_rule(scales, says):
    """One TTA-scale rule: sk.Ensemble and predict_ensemble refuse what `predict.scales` refuses (0.2 was taken
    by both before), and take its edges."""
    import keras

    import segkit as sk
    from segkit.predict import predict_ensemble

    inp = keras.Input((8, 8, 1))
    model = keras.Model(inp, keras.layers.Conv2D(1, 1, activation="sigmoid")(inp))
    with pytest.raises(ConfigError) as err:
        sk.Ensemble([model], scales=scales)
    assert says in str(err.value)

    class Images:
        images = np.zeros((1, 8, 8, 1), np.float32)

    with pytest.raises(ConfigError) as err:
        next(predict_ensemble([model], Images, np.arange(1), lambda im: im, ["identity"], 1, True, scales=scales))
    assert says in str(err.value)
    assert sk.Ensemble([model], scales=[0.25, 4]).scales == [0.25, 4.0]


def test_weights_and_tuning_together_are_refused_and_a_head_allows_all_positive_only():
    with pytest.raises(ConfigError, match="predict.weights: set together with predict.tune_weights"):
        load_config(None, [MODELS, "predict.weights={good: 1}", "predict.tune_weights=true"])
    cfg = load_config(None, ["train.positive_only=true", "models=[{name: unet, classifier: true}]"])
    assert cfg.train.positive_only and cfg.predict.scales == [1.0] and cfg.predict.weights is None


def test_weight_candidates():
    from segkit.oof import weight_candidates

    two = weight_candidates(2)
    assert two[0] == (1.0, 1.0)  # equal weights first: they win ties
    ratios = {round(a / (a + b), 4) for a, b in two}
    assert ratios == {0.0, 1.0, 0.5, round(1 / 3, 4), round(2 / 3, 4), 0.2, 0.8}
    assert len(two) == len(ratios)  # no vector twice up to scale
    # with a positive-only model every candidate keeps some gate model
    assert all(a > 0 for a, _ in weight_candidates(2, roles=[False, True]))


@pytest.fixture(scope="module")
def oof_run(tmp_path_factory):
    """A run folder over synthetic Airbus (24 images, 32 px) with hand-made OOF for two tags: `good` puts 0.8 on
    the true ship pixels and 0.2 elsewhere, `noisy` is uniform noise."""
    from segkit.data.io import atomic_save_npy
    from segkit.runs import RunDir, open_run_data

    from segkit.data.synth import generate

    base = tmp_path_factory.mktemp("weights")
    generate("airbus", base / "data", seed=2, image_size=32, n_train=24, n_test=2, ship_free=0.3, quiet=True)
    args = [f"data.root={base / 'data'}", "data.image_size=32", f"data.cache_dir={base / 'cache'}",
            "data.options.empty_fraction=1.0", f"output.runs_dir={base / 'runs'}", "train.folds=2",
            "postprocess.threshold_grid=[0.3,0.5,0.7]", MODELS]
    cfg = load_config("airbus", args)
    run = open_run_data(cfg, quiet=True)
    masks = np.asarray(run.cache.masks, dtype=np.float32)
    rng = np.random.default_rng(0)
    oof = {"good": 0.2 + 0.6 * masks, "noisy": rng.uniform(0, 1, masks.shape)}
    rd = RunDir.of(cfg)
    for tag, probs in oof.items():
        for k in range(2):
            fold = rd.fold(tag, k)
            fold.path.mkdir(parents=True)
            idx = np.flatnonzero(run.folds == k)
            atomic_save_npy(fold.oof, probs[idx].astype(np.float16))
            atomic_save_npy(fold.oof_index, idx.astype(np.int64))
    return base, args, run, oof


def test_tuned_weights_drop_the_noisy_model(oof_run):
    from segkit.oof import ensemble_members, load_oof_class, tune_weights
    from segkit.runs import RunDir

    base, args, run, oof = oof_run
    cfg = load_config("airbus", [*args, "predict.tune_weights=true"])
    with pytest.raises(TrainingError, match="weights.json: ensemble weights not tuned yet"):
        ensemble_members(cfg)
    result = tune_weights(cfg, run, quiet=True)
    assert result["weights"]["noisy"] == 0 and result["weights"]["good"] > 0
    assert result["oof_score"] == pytest.approx(1.0) and result["oof_score_equal"] < 1.0
    # judged like a post-processing step: chosen on one fold, it also beats equal weights on the other
    assert result["kept"] and result["cv_gain"] > result["cv_se"] and len(result["cv_fold_gains"]) == 2
    assert result["tuned_weights"] == result["weights"] and "training folds" in result["folds"]
    assert RunDir.of(cfg).read_weights()["weights"] == result["weights"]
    got = load_oof_class(cfg, len(run.samples), 0)  # the tuned weights in force: the good model alone
    np.testing.assert_allclose(got.probs, oof["good"][..., 0], atol=1e-3)
    assert got.gate_probs is got.probs and got.label is None
    # weights tuned for other models are refused
    other = load_config("airbus", [*args, "predict.tune_weights=true", "predict.models=[good]"])
    with pytest.raises(TrainingError, match="tuned for models"):
        ensemble_members(other)


def test_given_weights_and_unknown_tags(oof_run):
    from segkit.oof import ensemble_members, load_oof_class

    base, args, run, oof = oof_run
    cfg = load_config("airbus", [*args, "predict.weights={good: 3, noisy: 1}"])
    got = load_oof_class(cfg, len(run.samples), 0)
    np.testing.assert_allclose(got.probs, (3 * oof["good"][..., 0] + oof["noisy"][..., 0]) / 4, atol=1e-3)
    cfg = load_config("airbus", [*args, "predict.weights={god: 1}"])
    with pytest.raises(ConfigError, match="did you mean 'good'"):
        ensemble_members(cfg)
    cfg = load_config("airbus", [*args, "predict.weights={noisy: 1}", "predict.models=[good]"])
    with pytest.raises(ConfigError, match="predict.weights: every ensembled model"):
        ensemble_members(cfg)
