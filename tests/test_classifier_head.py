"""The classification head (`classifier: true`): its target and loss on hand-computed cases, every model family
building with it (sigmoid and softmax) and training a step, the config's checks of its keys, and one tiny
`segkit train` + `segkit predict` run whose fold writes the head's OOF probabilities and whose checkpoint reloads
with plain Keras in a fresh process."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest

from segkit.config import load_config
from segkit.errors import ConfigError
from segkit.losses import ClassifierLoss, compile_args, get_loss, label_target
from segkit.metrics import get_metrics
from segkit.models.registry import build_model, has_classifier, split_outputs

P = 32
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")


def bce(t: float, p: float) -> float:
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


# --- target and loss ---------------------------------------------------------------------------------

def masks_2x2() -> np.ndarray:
    """Two 2×2 masks of two classes: image 0 has one class-0 pixel and no class 1; image 1 no class 0 and a
    full class 1."""
    y = np.zeros((2, 2, 2, 2), np.float32)
    y[0, 1, 0, 0] = 1
    y[1, :, :, 1] = 1
    return y


def test_label_target_is_mask_non_empty_per_class():
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(label_target(masks_2x2())), [[1, 0], [0, 1]])
    onehot = np.zeros((1, 2, 2, 3), np.float32)  # softmax target: background, class 1, class 2 absent
    onehot[0, ..., 0] = 1
    onehot[0, 0, 0] = [0, 1, 0]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(label_target(onehot)), [[1, 1, 0]])
    # a (B, C) label target passes through
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(label_target(np.array([[0.0, 1.0]]))), [[0, 1]])


def test_classifier_loss_and_its_weight_in_the_compiled_loss():
    y = masks_2x2()
    label = np.array([[0.8, 0.3], [0.4, 0.9]], np.float32)
    head = ((bce(1, 0.8) + bce(0, 0.3)) / 2 + (bce(0, 0.4) + bce(1, 0.9)) / 2) / 2
    assert float(ClassifierLoss()(y, label)) == pytest.approx(head, rel=1e-5)

    # a model whose two outputs are its inputs, compiled as segkit compiles a model with the head
    mask_in, label_in = keras.Input((2, 2, 2)), keras.Input((2,))
    model = keras.Model([mask_in, label_in], [keras.layers.Activation("linear", name="mask")(mask_in),
                                              keras.layers.Activation("linear", name="label")(label_in)])
    model.compile(**compile_args(get_loss("bce", 2), get_metrics(["dice"], 2), classifier_weight=0.2))
    mask = np.full((2, 2, 2, 2), 0.25, np.float32)
    seg = float(np.mean(np.where(y > 0, -np.log(0.25), -np.log(0.75))))
    logs = model.evaluate([mask, label], {"mask": y, "label": y}, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(seg + 0.2 * head, rel=1e-5)
    # newer Keras logs each output's loss unweighted, Keras 3.5 weighted
    assert logs["label_loss"] in (pytest.approx(head, rel=1e-5), pytest.approx(0.2 * head, rel=1e-5))
    assert not any(k.startswith("label_") and k != "label_loss" for k in logs), logs  # metrics: mask only


def test_split_outputs():
    m, lab = np.zeros((1, 2, 2, 1)), np.zeros((1, 1))
    assert split_outputs(m) == (m, None)
    assert split_outputs([m, lab]) == (m, lab) and split_outputs((m, lab)) == (m, lab)
    assert split_outputs({"label": lab, "mask": m}) == (m, lab)
    assert split_outputs([m]) == (m, None)


# --- every family -------------------------------------------------------------------------------------

FAMILIES = [
    {"name": "unet", "depth": 2, "base_filters": 4},
    {"name": "fractal_unet", "depth": 2, "base_filters": 4, "columns": 2},
    {"name": "resnet_unet", "backbone": "resnet18", "decoder_filters": [8]},
    # the same encoder_unet builder as resnet_unet with another backbone, so only in the slow run
    pytest.param({"name": "efficientnet_unet", "decoder_filters": [8]}, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("spec", FAMILIES, ids=["unet", "fractal_unet", "resnet_unet", "efficientnet_unet"])
def test_every_family_builds_with_the_head_and_trains_a_step(spec):
    keras.utils.set_random_seed(0)
    softmax = spec["name"] in ("unet", "resnet_unet")  # both output kinds, on a plain and an encoder family
    activation, n = ("softmax", 3) if softmax else ("sigmoid", 2)
    spec = {**spec, "activation": activation}
    plain = build_model(spec, (P, P, 3), n)
    model = build_model({**spec, "classifier": True, "classifier_weight": 0.5}, (P, P, 3), n)
    assert not has_classifier(plain) and has_classifier(model)
    assert model.output_names == ["mask", "label"]
    assert [tuple(o.shape) for o in model.outputs] == [(None, P, P, n), (None, n)]
    # the head is one dense layer on the pooled bottleneck; the rest of the model is the plain one
    bottleneck = model.get_layer("label_pool").input.shape[-1]
    assert model.count_params() == plain.count_params() + (bottleneck + 1) * n
    assert ({la.name for la in model.layers} - {la.name for la in plain.layers}
            == {"mask", "label_pool", "label_logits", "label"})

    rng = np.random.default_rng(0)
    x = rng.random((4, P, P, 3)).astype("float32")
    cls = rng.integers(0, n, (4, P, P))
    cls[:2] = 0  # two images hold class 0 only
    y = np.eye(n, dtype="float32")[cls] if softmax else (cls[..., None] == np.arange(1, n + 1)).astype("float32")
    model.compile(keras.optimizers.Adam(1e-3),
                  **compile_args(get_loss("bce_dice", n), get_metrics(["dice"], n, activation=activation), 0.5))
    logs = model.train_on_batch(x, {"mask": y, "label": y}, return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["label_loss"] > 0
    assert logs["loss"] in (pytest.approx(logs["mask_loss"] + 0.5 * logs["label_loss"], rel=1e-4),  # Keras >= 3.6
                            pytest.approx(logs["mask_loss"] + logs["label_loss"], rel=1e-4))  # 3.5: weighted
    mask, label = split_outputs(model.predict_on_batch(x))
    assert mask.shape == (4, P, P, n) and label.shape == (4, n) and 0 <= label.min() <= label.max() <= 1


def test_plain_models_are_unchanged():
    model = build_model({"name": "unet", "depth": 2, "base_filters": 4}, (P, P, 4), 1)
    assert len(model.outputs) == 1 and model.layers[-1].name == "probabilities"
    assert model.count_params() == build_model({"name": "unet", "depth": 2, "base_filters": 4, "classifier": False},
                                               (P, P, 4), 1).count_params()


@pytest.mark.parametrize("override, match", [
    ("models.0.classifier=maybe", r"models\.0\.classifier: must be true or false"),
    ("models.0.classifier_weight=-1", r"models\.0\.classifier_weight: must be a number >= 0"),
    ("models.0.classifier_weight=0.5", r"models\.0\.classifier_weight: set but models\.0\.classifier is not true"),
])
def test_bad_head_settings_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, ["models=[{name: unet}]", override])


# --- a tiny run through the CLI ------------------------------------------------------------------------

PLAIN_LOAD = """
import sys, numpy as np
import segkit.models
import keras
model = keras.models.load_model(sys.argv[1])
x = np.random.default_rng(0).random((2, 32, 32, 4)).astype("float32") * 4000
mask, label = model.predict(x, verbose=0)
y = (mask > 0.5).astype("float32")
logs = model.train_on_batch(x, {"mask": y, "label": y}, return_dict=True)  # the compiled loss came back too
print(mask.shape, label.shape, sorted(logs))
"""


@pytest.fixture(scope="module")
def head_run(tmp_path_factory):
    """A U-Net with the head trained one epoch per fold on synthetic 38-Cloud by `segkit train` (which tunes
    on the OOF), then `segkit predict`: (base folder, fold 0's folder)."""
    from segkit.data.synth import generate

    base = tmp_path_factory.mktemp("head")
    root = generate("cloud38", base / "data", seed=4, patch_size=P, n_train_scenes=3, n_test_scenes=1)
    args = [f"data.root={root}", f"data.image_size={P}", f"data.cache_dir={base / 'cache'}",
            f"output.runs_dir={base / 'runs'}", f"output.submissions_dir={base / 'subs'}", "train.folds=2",
            "train.epochs=1", "train.batch_size=8", "train.workers=1", "train.verbose=0",
            "predict.tta=[identity,hflip]", "postprocess.threshold_grid=[0.3,0.5]",
            "models=[{name: unet, tag: head, depth: 2, base_filters: 4, classifier: true, classifier_weight: 0.3}]"]
    for command in ("train", "predict"):
        proc = subprocess.run([sys.executable, "-m", "segkit", "-q", command, "demo", *args], env=ENV,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return base, base / "runs" / "demo" / "head" / "fold_0"


def test_fold_writes_the_head_oof_and_monitors_val_dice(head_run):
    base, fold = head_run
    oof, index, label = (np.load(fold / f) for f in ("oof.npy", "oof_index.npy", "oof_label.npy"))
    assert label.dtype == np.float16 and label.shape == (len(index), 1) and oof.shape == (len(index), P, P, 1)
    assert 0 <= label.min() <= label.max() <= 1
    done = json.loads((fold / "done.json").read_text())
    assert done["classifier"] is True and done["monitor"] == "val_dice" and done["best"] is not None
    history = pd.read_csv(fold / "history.csv")
    assert {"dice", "val_dice", "mask_loss", "label_loss", "val_label_loss"} <= set(history.columns)
    assert not any(c.endswith("mask_dice") for c in history.columns)
    assert done["best"] == pytest.approx(history["val_dice"].max())
    assert (base / "subs" / "demo" / "submission.csv").is_file()


def test_head_checkpoint_loads_with_plain_keras_in_a_fresh_process(head_run):
    _, fold = head_run
    proc = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(fold / "best.keras")], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(2, 32, 32, 1) (2, 1)" in proc.stdout and "label_loss" in proc.stdout, proc.stdout
