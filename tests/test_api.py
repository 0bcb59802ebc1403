"""The notebook API (`import segkit as sk`) on a tiny synthetic 38-Cloud run: lazy imports, configs with
keyword overrides, Run.fit/tune/ensemble/write_submission/validate, the Ensemble on raw numpy images against
the probabilities behind the written submission, the model builders and the Kaggle workflows from Python."""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import segkit as sk
from segkit.config import load_config as cli_load_config

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
HEAVY = ("tensorflow", "keras", "kaggle", "jax", "torch", "keras_hub", "cv2")


def _heavy_imports(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json\nprint(json.dumps(sorted("
                          f"m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"],
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- import and configs ----------------------------------------------------------------------------------

def test_import_segkit_is_cheap_and_lists_its_exports():
    assert _heavy_imports("import segkit") == []
    # configs, the Run class and the Kaggle workflows are reachable without TensorFlow or the kaggle client
    assert _heavy_imports("import segkit as sk\nsk.load_config('demo', train={'epochs': 2})\nsk.Run\n"
                          "sk.kaggle.push_folds\nsk.validate\nsk.rle") == []
    assert "tensorflow" in _heavy_imports("import segkit as sk\nsk.models.unet")
    names = dir(sk)
    for name in ("load_config", "Run", "Ensemble", "write_submission", "validate", "models", "losses", "rle",
                 "kaggle", "ConfigError", "__version__"):
        assert name in names
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sk.nope  # noqa: B018


def test_load_config_merges_keyword_dotted_and_cli_overrides(tmp_path):
    cfg = sk.load_config("demo", ["train.epochs=3", "predict.tta=[identity]"],
                         train={"batch_size": 4, "augment": {"hflip": 0}}, data={"root": tmp_path / "d"},
                         **{"data.image_size": 32, "models.0.depth": 2})
    demo = cli_load_config("demo")
    assert cfg.train.epochs == 3 and cfg.train.batch_size == 4 and cfg.predict.tta == ["identity"]
    assert cfg.train.augment.hflip == 0 and cfg.train.augment.vflip == demo.train.augment.vflip  # merged
    assert cfg.train.learning_rate == demo.train.learning_rate  # untouched keys keep the config's values
    assert cfg.data.root == str(tmp_path / "d") and cfg.data.image_size == [32, 32]
    assert cfg.data.options == demo.data.options and cfg.data.cache_dir == demo.data.cache_dir
    assert cfg.models[0]["depth"] == 2 and cfg.models[0]["base_filters"] == 8 and len(cfg.models) == 2
    # a YAML path, and a Config (copied, never changed)
    path = tmp_path / "c.yaml"
    path.write_text("base: demo\nname: mine\ntrain: {epochs: 5}\n")
    mine = sk.load_config(path, train={"folds": 2})
    assert (mine.name, mine.train.epochs, mine.train.folds) == ("mine", 5, 2)
    again = sk.load_config(mine, ["seed=1"], models=[{"name": "unet"}])
    assert again.seed == 1 and again.models == [{"name": "unet"}] and mine.seed == demo.seed


def test_load_config_wrong_keys_are_the_cli_errors():
    with pytest.raises(sk.ConfigError) as cli:
        cli_load_config("demo", ["train.epoch=2"])
    for kwargs in ({"train": {"epoch": 2}}, {"train.epoch": 2}):
        with pytest.raises(sk.ConfigError) as err:
            sk.load_config("demo", **kwargs)
        assert str(err.value) == str(cli.value) == "train.epoch: unknown config key; did you mean 'train.epochs'?"
    with pytest.raises(sk.ConfigError, match="did you mean 'train'"):
        sk.load_config("demo", trian={"epochs": 2})
    with pytest.raises(sk.ConfigError, match=r"train\.epochs: must be ≥ 1"):
        sk.load_config("demo", train={"epochs": 0})
    with pytest.raises(sk.ConfigError, match="config file not found"):
        sk.load_config("no-such-config")


# --- a tiny run ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained through the API: fold 0 first, then `fit()` again for the rest. The model takes
    16x16 inputs while the patches are 32x32, so prediction resizes both ways."""
    tmp = tmp_path_factory.mktemp("api")
    root = sk.synth("cloud38", tmp / "data", seed=3, patch_size=32, quiet=True)
    run = sk.Run("demo", ["predict.tta=[identity,hflip]"], quiet=True,
                 data={"root": root, "image_size": 16, "cache_dir": tmp / "cache"},
                 models=[{"name": "unet", "tag": "unet", "depth": 2, "base_filters": 4}],
                 train={"folds": 2, "epochs": 1, "batch_size": 8, "workers": 1, "early_stopping_patience": 50},
                 output={"runs_dir": tmp / "runs", "submissions_dir": tmp / "subs"})
    before = repr(run)
    run.fit(folds=[0])
    after_one = {"folds_done": run.folds_done, "postprocess": run.postprocess, "oof": run.oof_score,
                 "mtime": (run.dir / "unet" / "fold_0" / "best.keras").stat().st_mtime_ns}
    assert run.fit() is run  # resumes: fold 1 only
    return {"run": run, "root": root, "tmp": tmp, "before": before, "after_one": after_one}


def test_fit_selects_folds_and_resumes(trained):
    run, first = trained["run"], trained["after_one"]
    assert "0/2 folds trained" in trained["before"]
    assert first["folds_done"] == {"unet": [0]} and first["postprocess"] is None and first["oof"] is None
    assert run.folds_done == {"unet": [0, 1]}
    assert (run.dir / "unet" / "fold_0" / "best.keras").stat().st_mtime_ns == first["mtime"]  # not retrained
    assert run.dir == trained["tmp"] / "runs" / "demo" and run.config.train.train_folds is None
    saved = json.loads((run.dir / "postprocess.json").read_text())
    assert run.oof_score == pytest.approx(saved["oof_score_tuned"]) and "2/2 folds trained, OOF" in repr(run)


def test_tune_returns_what_it_saves(trained):
    run = trained["run"]
    tuned = run.tune()
    assert tuned == json.loads((run.dir / "postprocess.json").read_text()) == run.postprocess
    assert [c["name"] for c in tuned["classes"]] == ["cloud"]
    # the scores again from the OOF files and the cached masks: 38-Cloud's pooled Jaccard, TP / (TP + FP + FN)
    from segkit.data.cache import Cache

    cache = next(Cache.open(p) for p in (trained["tmp"] / "cache").iterdir() if "train" in p.name)
    truth = np.asarray(cache.masks)[..., 0] > 0
    probs = np.full(truth.shape, np.nan, np.float32)
    for k in (0, 1):
        fold = run.dir / "unet" / f"fold_{k}"
        probs[np.load(fold / "oof_index.npy")] = np.load(fold / "oof.npy")[..., 0]
    assert not np.isnan(probs).any()

    def jaccard(pred):
        union = np.count_nonzero(truth | pred)
        return 1.0 if union == 0 else np.count_nonzero(truth & pred) / union

    by_threshold = {t: jaccard(probs > t) for t in run.config.postprocess.threshold_grid}
    steps = {s["step"]: s for s in tuned["steps"]}
    assert tuned["oof_score_default"] == pytest.approx(jaccard(probs > 0.5), abs=1e-9)
    assert steps["threshold"]["oof_score"] == pytest.approx(max(by_threshold.values()), abs=1e-9)
    assert by_threshold[steps["threshold"]["params"]["cloud"]["threshold"]] == max(by_threshold.values())
    assert len(set(by_threshold.values())) > 1  # the threshold matters on this OOF, else the check says nothing
    assert tuned["oof_score_tuned"] >= steps["threshold"]["oof_score"]  # later steps are kept only if better


def test_ensemble_predict_matches_the_written_submission(trained):
    import cv2

    from segkit.data.cache import prepare
    from segkit.postprocess import apply_chain
    from segkit.predict import predict_probabilities
    from segkit.rle import decode

    run = trained["run"]
    ens = run.ensemble()
    assert ens.tta == ["identity", "hflip"] and len(ens.models) == 2 and ens.image_size == (16, 16)
    ids, images = zip(*run.iter_images("test"))
    images = np.stack(images)
    assert images.dtype == np.uint16 and images.shape[1:] == (32, 32, 4)
    probs = ens.predict(images)
    assert probs.shape == (len(ids), 32, 32, 1) and probs.dtype == np.float32

    # the probabilities `segkit predict` computes: the test cache (resized to 16x16) through the same
    # ensemble, each resized back to its 32x32 patch
    cfg = run.config
    adapter = run.adapter
    cache = prepare(adapter, adapter.test_samples(), (16, 16), cfg.data.cache_dir, name="cloud38-test-16x16",
                    with_masks=False, quiet=True)
    behind = np.concatenate(list(predict_probabilities(ens.models, cache, np.arange(len(ids)), adapter.normalise,
                                                       ens.tta, 8, quiet=True)))
    behind = np.stack([cv2.resize(p, (32, 32), interpolation=cv2.INTER_LINEAR)[..., None] for p in behind])
    np.testing.assert_allclose(probs, behind, atol=1e-5)

    path = run.write_submission()
    assert path == run.submission_path and path.is_file()
    rows = dict(line.split(",") for line in path.read_text().splitlines()[1:])
    assert list(rows) == list(ids)
    threshold = run.postprocess["classes"][0]["threshold"]
    masks = ens.predict_masks(images)
    for image_id, p, m in zip(ids, probs, masks):
        written = decode(rows[image_id], (32, 32), order="F")
        np.testing.assert_array_equal(m, apply_chain(p, run.postprocess))  # the tuned chain, gates included
        differ = written != m[..., 0]
        assert not differ.any() or np.abs(p[..., 0][differ] - threshold).max() < 1e-4
    assert run.validate() == [] and sk.validate(path, "cloud38") == []


def test_ensemble_takes_raw_uint16_at_any_size(trained):
    import cv2
    import keras

    from segkit.data.cache import resize_image

    run = trained["run"]
    ens = run.ensemble(tta=["identity"], batch_size=2)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 40000, size=(40, 24, 4), dtype=np.uint16)
    p = ens.predict(image)
    assert p.shape == (40, 24, 1) and p.dtype == np.float32 and 0 <= p.min() <= p.max() <= 1
    # plain Keras on the raw values (the checkpoints normalise in their first layer), averaged over folds
    x = resize_image(image, (16, 16)).astype(np.float32)[None]
    plain = np.mean([keras.models.load_model(c)(x, training=False)[0, ..., 0] for c in ens.checkpoints], axis=0)
    np.testing.assert_allclose(p[..., 0], cv2.resize(plain, (24, 40), interpolation=cv2.INTER_LINEAR), atol=1e-5)
    # a batch, a float copy of the same values and a generator of mixed sizes agree
    batch = np.stack([image, image[::-1]])
    pb = ens.predict(batch)
    np.testing.assert_allclose(pb[0], p, atol=1e-5)
    np.testing.assert_allclose(ens.predict(batch.astype(np.float32)), pb, atol=1e-5)
    others = [image, image[:32, :16], image[::-1], image[:16, :16], image]
    got = list(ens.iter_predict(im for im in others))
    assert [g.shape for g in got] == [(40, 24, 1), (32, 16, 1), (40, 24, 1), (16, 16, 1), (40, 24, 1)]
    np.testing.assert_allclose(got[2], pb[1], atol=1e-5)
    np.testing.assert_allclose(got[4], p, atol=1e-5)


def test_ensemble_refuses_bad_input(trained):
    run = trained["run"]
    ens = run.ensemble()
    for bad in (np.zeros((32, 32, 3), np.uint16), np.zeros((32, 32), np.uint16), np.zeros((1, 2, 32, 32, 4))):
        with pytest.raises(sk.DataError, match="expected images shaped"):
            ens.predict(bad)
    with pytest.raises(sk.ConfigError, match="did you mean 'hflip'"):
        run.ensemble(tta=["hflp"])
    with pytest.raises(sk.ConfigError, match="no model tagged"):
        run.ensemble(models=["fractal"])


def test_validate_names_problems(trained, tmp_path):
    run = trained["run"]
    bad = tmp_path / "bad.csv"
    bad.write_text("id,EncodedPixels\nnot_a_patch,1 5000\n")
    assert sk.validate(bad, "cloud38") == []  # a well-formed row; only the test list knows the ids
    test_list = next(trained["root"].rglob("test_patches_38-Cloud.csv"))
    assert any("not_a_patch" in p for p in sk.validate(bad, "cloud38", sample=test_list))
    past_end = tmp_path / "past_end.csv"
    past_end.write_text("id,EncodedPixels\nnot_a_patch,147000 500\n")  # 38-Cloud patches are 384x384
    assert sk.validate(past_end, "cloud38") != []
    problems = run.validate(bad)  # checked against the test images under data.root
    assert len(problems) == 2 and all(str(bad) in p for p in problems)
    assert "test images" in problems[0] and "have no row" in problems[0] and "not_a_patch" in problems[1]
    with pytest.raises(sk.SubmissionError, match="submission not found"):
        run.validate(tmp_path / "missing.csv")


def test_write_submission_without_a_run_object_and_run_open(trained, tmp_path):
    run = trained["run"]
    out = sk.write_submission(run.config, tmp_path / "again.csv")
    assert out.read_text() == run.write_submission().read_text()
    opened = sk.Run.open(run.dir, quiet=True, output={"submissions_dir": tmp_path / "subs"})
    assert opened.name == "demo" and opened.folds_done == run.folds_done and opened.oof_score == run.oof_score
    assert opened.config.data.image_size == [16, 16]  # the saved training settings
    with pytest.raises(sk.DataError, match="config.yaml: not found"):
        sk.Run.open(tmp_path)
    # without the dataset (a run folder attached on Kaggle), the ensemble still maps arrays to probabilities
    bare = sk.Run.open(run.dir, quiet=True, data={"root": tmp_path / "no-data"})
    image = next(run.iter_images("test"))[1]
    ens = bare.ensemble()
    assert ens.classes == ["cloud"]
    np.testing.assert_allclose(ens.predict(image), run.ensemble().predict(image), atol=1e-6)
    assert ens.predict_masks(image).shape == (32, 32, 1)


# --- builders, losses, RLE, Kaggle -----------------------------------------------------------------------

def test_model_builders_losses_and_rle_at_the_top():
    unet = sk.models.unet((32, 32, 4), 2, depth=2, base_filters=4)
    assert unet.output_shape == (None, 32, 32, 2)
    fractal = sk.models.fractal_unet((16, 16, 3), 1, columns=2, depth=2, base_filters=4)
    assert fractal.output_shape == (None, 16, 16, 1)
    for builder in (sk.models.unet, sk.models.fractal_unet, sk.models.encoder_unet, sk.models.resnet_unet,
                    sk.models.efficientnet_unet):
        assert list(inspect.signature(builder).parameters)[:2] == ["input_shape", "n_classes"]
    assert {"unet", "fractal_unet", "resnet_unet", "efficientnet_unet"} <= set(sk.models.model_names())
    import importlib

    assert importlib.import_module("segkit.models.unet").unet is sk.models.unet  # the module stays importable

    loss = sk.losses.get("bce+dice")
    y = np.zeros((1, 8, 8, 1), np.float32)
    y[:, 2:5, 2:6] = 1
    assert float(loss(y, y * 0.98 + 0.01)) < float(loss(y, 1 - y))
    mask = y[0, ..., 0].astype(np.uint8)
    assert np.array_equal(sk.rle.decode(sk.rle.encode(mask), mask.shape), mask)


def test_kaggle_workflows_from_python(tmp_path):
    cfg = sk.load_config("kaggle_example", train={"folds": 2})
    built = sk.kaggle.build_kernels(cfg, tmp_path / "k", owner="someone")
    assert [b.folder.name for b in built] == ["segkit-cloud38-fold0", "segkit-cloud38-fold1", "segkit-cloud38-infer"]
    assert all((b.folder / "kernel-metadata.json").is_file() for b in built)
    dry = sk.kaggle.push_folds(cfg, folds=[1], owner="someone", out_dir=tmp_path / "d", dry_run=True, progress=None)
    assert dry.pushed == [] and [b.folder.name for b in dry.fold_kernels] == ["segkit-cloud38-fold1"]
    for name in ("push_kernel", "kernel_status", "wait_for_kernel", "kernel_output", "submit", "build_kernel"):
        assert callable(getattr(sk.kaggle, name))
