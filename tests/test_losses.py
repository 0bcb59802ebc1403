"""Losses and metrics against values worked out by hand, including empty masks; composed losses against the
formulas of the per-pair classes they replace; checkpoints saved with either reload with keras alone."""
import json
import math
import zipfile

import keras
import numpy as np
import pytest

import segkit.losses as losses
from segkit.errors import ConfigError
from segkit.losses import get_loss, loss_names
from segkit.metrics import get_metrics


def img(values, classes=1):
    """A single (1, 1, W, C) image from per-pixel rows of class values."""
    return np.asarray(values, dtype="float32").reshape(1, 1, -1, classes)


def value(name, y_true, y_pred, n_classes=1, **params):
    return float(np.asarray(get_loss(name, n_classes, **params)(y_true, y_pred)))


T = img([1, 1, 0, 0])
P = img([0.5, 1.0, 0.0, 0.5])


def test_bce_hand_value():
    # -(ln 0.8 + ln 0.6) / 2
    assert value("bce", img([1, 0]), img([0.8, 0.4])) == pytest.approx((0.22314355 + 0.51082562) / 2, abs=1e-6)


def test_dice_and_jaccard_hand_values():
    # |T∩P| = 1.5, |T| + |P| = 4, smooth 1
    assert value("dice", T, P) == pytest.approx(1 - 4 / 5, abs=1e-6)
    assert value("jaccard", T, P) == pytest.approx(1 - 2.5 / 3.5, abs=1e-6)
    bce = -(math.log(0.5) + math.log(1 - 1e-7) + math.log(1 - 1e-7) + math.log(0.5)) / 4
    assert value("bce_dice", T, P) == pytest.approx(bce + 0.2, abs=1e-5)
    assert value("bce_jaccard", T, P) == pytest.approx(bce + 1 - 2.5 / 3.5, abs=1e-5)


def test_empty_masks():
    empty = img([0, 0, 0, 0])
    assert value("dice", empty, empty) == pytest.approx(0.0, abs=1e-7)
    assert value("jaccard", empty, empty) == pytest.approx(0.0, abs=1e-7)
    half = img([0.5] * 4)
    # (0 + 1) / (0 + 2 + 1) for both
    assert value("dice", empty, half) == pytest.approx(2 / 3, abs=1e-6)
    assert value("jaccard", empty, half) == pytest.approx(2 / 3, abs=1e-6)
    assert value("bce", empty, empty) == pytest.approx(-math.log(1 - 1e-7), abs=1e-6)


def test_multi_label_dice_averages_classes():
    # class 0 as above (Dice 0.8), class 1 empty in truth and prediction (Dice 1)
    t = np.stack([T[..., 0], np.zeros_like(T[..., 0])], axis=-1)
    p = np.stack([P[..., 0], np.zeros_like(P[..., 0])], axis=-1)
    assert value("dice", t, p) == pytest.approx(1 - 0.9, abs=1e-6)


def test_loss_is_per_image_mean_over_batch():
    t = np.concatenate([T, img([0, 0, 0, 0])])
    p = np.concatenate([P, img([0.5] * 4)])
    assert value("dice", t, p) == pytest.approx((0.2 + 2 / 3) / 2, abs=1e-6)


def test_focal_hand_value():
    # p_t = 0.8, 0.6: -(0.2² ln 0.8 + 0.4² ln 0.6) / 2
    expected = (0.04 * 0.22314355 + 0.16 * 0.51082562) / 2
    assert value("focal", img([1, 0]), img([0.8, 0.4])) == pytest.approx(expected, abs=1e-6)
    # alpha 0.25 weighs the positive by 0.25 and the negative by 0.75
    expected_a = (0.25 * 0.04 * 0.22314355 + 0.75 * 0.16 * 0.51082562) / 2
    assert value("focal", img([1, 0]), img([0.8, 0.4]), alpha=0.25) == pytest.approx(expected_a, abs=1e-6)


def sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, dtype="float64")))


def test_lovasz_hinge_hand_value():
    # logits 2, 0.5, -1 with truth 1, 0, 1 → hinge errors -1, 1.5, 2; sorted 2 (fg), 1.5 (bg), -1 (fg)
    # Jaccard losses along the order 1/2, 2/3, 1 → weights 1/2, 1/6, 1/3 → 2·1/2 + 1.5·1/6 + 0 = 1.25
    p = img(sigmoid([2.0, 0.5, -1.0]))
    assert value("lovasz", img([1, 0, 1]), p) == pytest.approx(1.25, abs=1e-4)
    # empty truth: errors 3, 1.5, 0 → weights 1, 0, 0 → 3
    assert value("lovasz", img([0, 0, 0]), p) == pytest.approx(3.0, abs=1e-4)


def test_categorical_losses_hand_values():
    t = img([1, 0, 0, 0, 0, 1], classes=3)
    p = img([0.7, 0.2, 0.1, 0.1, 0.3, 0.6], classes=3)
    assert value("cce", t, p, 3) == pytest.approx((0.35667494 + 0.51082562) / 2, abs=1e-6)
    focal = (0.09 * 0.35667494 + 0.16 * 0.51082562) / 2
    assert value("categorical_focal", t, p, 3) == pytest.approx(focal, abs=1e-6)


def test_lovasz_softmax_hand_value():
    # class 0: errors .2 (fg), .3 (bg) → sorted .3, .2, weights 1/2, 1/2 → 0.25
    # class 1: errors .2 (bg), .3 (fg) → sorted .3, .2, weights 1, 0 → 0.3
    t = img([1, 0, 0, 1], classes=2)
    p = img([0.8, 0.2, 0.3, 0.7], classes=2)
    assert value("lovasz_softmax", t, p, 2) == pytest.approx(0.275, abs=1e-6)


def test_unknown_loss_and_parameter_are_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'bce_dice'"):
        get_loss("bce_dise")
    with pytest.raises(ConfigError, match="did you mean 'smooth'"):
        get_loss("dice", smoth=2)
    with pytest.raises(ConfigError, match="n_classes"):
        get_loss("cce", 1)
    assert {"bce", "dice", "jaccard", "bce_dice", "focal", "lovasz", "cce", "cce_dice"} <= set(loss_names())


# --- composed losses --------------------------------------------------------------------------------
# The per-image formulas of the classes that composed losses replace (BceDiceLoss etc.), in float64 numpy.

def ref_bce(t, p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(axis=(1, 2, 3))


def ref_dice(t, p, smooth=1.0):
    inter, total = (t * p).sum(axis=(1, 2)), t.sum(axis=(1, 2)) + p.sum(axis=(1, 2))
    return 1 - ((2 * inter + smooth) / (total + smooth)).mean(axis=-1)


def ref_jaccard(t, p, smooth=1.0):
    inter, total = (t * p).sum(axis=(1, 2)), t.sum(axis=(1, 2)) + p.sum(axis=(1, 2))
    return 1 - ((inter + smooth) / (total - inter + smooth)).mean(axis=-1)


def ref_focal(t, p, gamma=2.0):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    p_t = t * p + (1 - t) * (1 - p)
    return (-(1 - p_t) ** gamma * np.log(p_t)).mean(axis=(1, 2, 3))


def ref_lovasz_hinge(t, p):
    """Berman et al.'s lovasz_hinge_flat per image and class on logit(p), mean over classes."""
    p = np.clip(p, 1e-7, 1 - 1e-7)
    out = np.zeros(t.shape[0])
    for i in range(t.shape[0]):
        for c in range(t.shape[-1]):
            gt, logit = t[i, ..., c].ravel(), np.log(p[i, ..., c] / (1 - p[i, ..., c])).ravel()
            errors = 1 - logit * (2 * gt - 1)
            order = np.argsort(-errors, kind="stable")
            g = gt[order]
            jac = 1 - (g.sum() - np.cumsum(g)) / (g.sum() + np.cumsum(1 - g))
            grad = np.concatenate([jac[:1], np.diff(jac)])
            out[i] += np.maximum(errors[order], 0) @ grad / t.shape[-1]
    return out


def ref_cce(t, p):
    return (-(t * np.log(np.clip(p, 1e-7, 1))).sum(-1)).mean(axis=(1, 2))


@pytest.fixture
def random_batch():
    rng = np.random.default_rng(7)
    t = (rng.random((3, 5, 6, 2)) > 0.6).astype("float32")
    t[0] = 0  # an empty mask
    p = rng.random((3, 5, 6, 2)).astype("float32")
    return t, p


def batch_value(name, t, p, n_classes=1, **params):
    return float(np.asarray(losses.get(name, n_classes, **params)(t, p)))


@pytest.mark.parametrize("name, reference", [
    ("bce_dice", lambda t, p: ref_bce(t, p) + ref_dice(t, p)),
    ("bce+dice", lambda t, p: ref_bce(t, p) + ref_dice(t, p)),
    ("bce_jaccard", lambda t, p: ref_bce(t, p) + ref_jaccard(t, p)),
    ("0.75*bce+0.25*lovasz", lambda t, p: 0.75 * ref_bce(t, p) + 0.25 * ref_lovasz_hinge(t, p)),
    ("focal + 2*dice", lambda t, p: ref_focal(t, p) + 2 * ref_dice(t, p)),
    ("bce_dice+0.5*bce", lambda t, p: 1.5 * ref_bce(t, p) + ref_dice(t, p)),
    ("lovasz", ref_lovasz_hinge),
])
def test_composed_losses_equal_the_old_formulas(random_batch, name, reference):
    t, p = random_batch
    expected = reference(t.astype("float64"), p.astype("float64")).mean()
    assert batch_value(name, t, p) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_cce_dice_and_parameters_reach_their_terms():
    rng = np.random.default_rng(3)
    t = np.eye(3, dtype="float32")[rng.integers(0, 3, (2, 4, 5))]
    p = rng.random((2, 4, 5, 3)).astype("float32")
    p /= p.sum(-1, keepdims=True)
    t64, p64 = t.astype("float64"), p.astype("float64")
    assert batch_value("cce_dice", t, p, 3) == pytest.approx((ref_cce(t64, p64) + ref_dice(t64, p64)).mean(), rel=1e-5)
    assert batch_value("bce+0.5*dice", t, p, smooth=2.0) == pytest.approx(
        (ref_bce(t64, p64) + 0.5 * ref_dice(t64, p64, 2.0)).mean(), rel=1e-5)
    assert batch_value("focal", t, p, gamma=1.5) == pytest.approx(ref_focal(t64, p64, 1.5).mean(), rel=1e-5)


def test_losses_add_and_scale():
    loss = losses.get("bce") + 0.5 * losses.get("dice")
    assert loss.expression == "bce+0.5*dice"
    assert losses.get("0.75*bce+0.25*lovasz").expression == "0.75*bce+0.25*lovasz"
    assert losses.get("bce_dice").expression == "bce+dice"
    with pytest.raises(ConfigError, match="different parameters"):
        losses.get("dice", smooth=2.0) + losses.get("jaccard")


def test_bad_expressions_are_config_errors():
    with pytest.raises(ConfigError, match="unknown loss term 'dise'; did you mean 'dice'"):
        losses.get("bce+dise")
    with pytest.raises(ConfigError, match="did you mean 'lovasz'"):
        losses.get("0.75*bce+0.25*lovaz")
    with pytest.raises(ConfigError, match="expected a term name or a weighted sum"):
        losses.get("0.75*")
    with pytest.raises(ConfigError, match=r"'cce' in 'bce\+cce' is for softmax outputs"):
        losses.get("bce+cce")
    with pytest.raises(ConfigError, match="unknown parameter of 'bce'"):
        losses.get("bce", smooth=2.0)
    assert losses.get_loss is losses.get


def tiny_model(loss):
    inp = keras.Input((4, 4, 1))
    model = keras.Model(inp, keras.layers.Conv2D(1, 1, activation="sigmoid")(inp))
    model.compile(keras.optimizers.SGD(0.1), loss=loss)
    return model


def test_a_checkpoint_with_a_composed_loss_reloads(random_batch, tmp_path):
    t, p = random_batch
    expression = "0.75*bce+0.25*lovasz+dice"
    tiny_model(losses.get(expression, smooth=3.0)).save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.loss, losses.SegmentationLoss)
    assert (loaded.loss.expression, loaded.loss.smooth) == (expression, 3.0)
    assert float(np.asarray(loaded.loss(t, p))) == pytest.approx(batch_value(expression, t, p, smooth=3.0))


def test_a_checkpoint_compiled_with_an_old_class_still_loads(random_batch, tmp_path):
    """The loss entry written by segkit before composed losses, as it stands in such a checkpoint."""
    t, p = random_batch
    tiny_model(losses.get("bce")).save(tmp_path / "new.keras")
    old_loss = {"module": "segkit.losses", "class_name": "BceJaccardLoss", "registered_name": "segkit>BceJaccardLoss",
                "config": {"name": "bce_jaccard", "reduction": "sum_over_batch_size", "bce_weight": 0.5,
                           "overlap_weight": 1.0, "smooth": 2.0}}
    with zipfile.ZipFile(tmp_path / "new.keras") as src, zipfile.ZipFile(tmp_path / "old.keras", "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                config["compile_config"]["loss"] = old_loss
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    loaded = keras.models.load_model(tmp_path / "old.keras")
    assert type(loaded.loss).__name__ == "BceJaccardLoss" and loaded.loss.expression == "0.5*bce+jaccard"
    t64, p64 = t.astype("float64"), p.astype("float64")
    expected = (0.5 * ref_bce(t64, p64) + ref_jaccard(t64, p64, 2.0)).mean()
    assert float(np.asarray(loaded.loss(t, p))) == pytest.approx(expected, rel=1e-5)
    assert loaded.loss.get_config()["bce_weight"] == 0.5  # re-saved, it stays loadable by the old name


def test_metrics_pooled_hand_counts():
    dice, iou = get_metrics(["dice", "iou"])
    assert (dice.name, iou.name) == ("dice", "iou")
    t, p = img([1, 1, 0, 0]), img([0.9, 0.2, 0.7, 0.1])  # TP 1, FP 1, FN 1
    for m in (dice, iou):
        m.update_state(t, p)
    assert float(dice.result()) == pytest.approx(2 / 4)
    assert float(iou.result()) == pytest.approx(1 / 3)
    # a second batch with TP 2 adds to the pooled counts: TP 3, FP 1, FN 1
    for m in (dice, iou):
        m.update_state(img([1, 1, 0, 0]), img([0.6, 0.8, 0.4, 0.0]))
    assert float(dice.result()) == pytest.approx(6 / 8)
    assert float(iou.result()) == pytest.approx(3 / 5)
    for m in (dice, iou):
        m.reset_state()
        m.update_state(img([0, 0, 0, 0]), img([0.1, 0.2, 0.3, 0.4]))  # nothing anywhere: perfect
        assert float(m.result()) == pytest.approx(1.0)


def test_metrics_softmax_argmax_and_unknown_name():
    (dice,) = get_metrics(["dice"], n_classes=2, activation="softmax")
    # pixel 0 right (class 0), pixel 1 wrong (true 1, predicted 0): class 0 TP1 FP1, class 1 FN1
    dice.update_state(img([1, 0, 0, 1], classes=2), img([0.8, 0.2, 0.6, 0.4], classes=2))
    assert float(dice.result()) == pytest.approx((2 / 3 + 0.0) / 2)
    with pytest.raises(ConfigError, match="did you mean 'iou'"):
        get_metrics(["iuo"])


# --- Tversky and focal Tversky, and inline term arguments ----------------------------------------------------

def test_tversky_with_equal_weights_is_dice(random_batch):
    t, p = random_batch
    assert batch_value("tversky", t, p) == pytest.approx(batch_value("dice", t, p), rel=1e-6)
    assert batch_value("tversky(alpha=0.5,beta=0.5,smooth=2)", t, p) == pytest.approx(
        batch_value("dice", t, p, smooth=2.0), rel=1e-6)


def test_tversky_and_focal_tversky_hand_values():
    # T = 1 1 1 0 0, P = .9 .6 .2 .5 .1: TP = 1.7, FP = 0.6, FN = 1.3
    t, p = img([1, 1, 1, 0, 0]), img([0.9, 0.6, 0.2, 0.5, 0.1])
    # α = 0.7 on FP, β = 1 − α = 0.3 on FN, smooth 1 as the dice term: (2·TP + 1) / (2·TP + 2αFP + 2βFN + 1)
    index = (3.4 + 1) / (3.4 + 2 * 0.7 * 0.6 + 2 * 0.3 * 1.3 + 1)
    assert value("tversky(alpha=0.7)", t, p) == pytest.approx(1 - index, abs=1e-6)
    # α = 0.3, β = 0.7 weighs the missed pixels more: a larger loss here
    recall = (3.4 + 1) / (3.4 + 2 * 0.3 * 0.6 + 2 * 0.7 * 1.3 + 1)
    assert value("tversky(beta=0.7)", t, p) == pytest.approx(1 - recall, abs=1e-6) and recall < index
    assert value("focal_tversky(alpha=0.3,beta=0.7)", t, p) == pytest.approx((1 - recall) ** 0.75, abs=1e-6)
    assert value("focal_tversky(alpha=0.3,beta=0.7,gamma=2)", t, p) == pytest.approx((1 - recall) ** 2, abs=1e-6)
    # in the algebra, beside another term; the loss-wide smooth reaches it, an inline smooth wins
    bce = float(np.mean(-np.log(np.clip([0.9, 0.6, 0.2, 0.5, 0.9], 1e-7, 1))))
    assert value("0.5*bce+0.5*tversky(alpha=0.7)", t, p) == pytest.approx(0.5 * bce + 0.5 * (1 - index), abs=1e-6)
    smooth0 = 1.7 / (1.7 + 0.7 * 0.6 + 0.3 * 1.3)
    assert value("tversky(alpha=0.7)", t, p, smooth=0.0) == pytest.approx(1 - smooth0, abs=1e-6)
    assert value("tversky(alpha=0.7,smooth=0)", t, p, smooth=5.0) == pytest.approx(1 - smooth0, abs=1e-6)


def test_inline_arguments_reach_the_older_terms_too(random_batch):
    t, p = random_batch
    t64, p64 = t.astype("float64"), p.astype("float64")
    assert batch_value("focal(gamma=1.5)+dice(smooth=2)", t, p) == pytest.approx(
        (ref_focal(t64, p64, 1.5) + ref_dice(t64, p64, 2.0)).mean(), rel=1e-5)
    loss = losses.get(" 0.5 * bce + tversky( beta = 0.7 , alpha=.3 ) + tversky(alpha=0.3,beta=0.7)")
    assert loss.expression == "0.5*bce+2*tversky(alpha=0.3,beta=0.7)"  # canonical text, same terms added up


@pytest.mark.parametrize("expression, match", [
    ("tversky(alpa=0.7)", r"unknown argument 'alpa' of loss term 'tversky'; did you mean 'alpha'\? "
                          r"\(valid: alpha, beta, smooth\)"),
    ("0.5*bce+0.5*tversky(alpha=high)", r"tversky\(alpha=...\) must be a number in \[0, 1\], got 'high'"),
    ("focal_tversky(gamma=-1)", r"focal_tversky\(gamma=...\) must be a number >= 0"),
    ("tversky(alpha=0.1,alpha=0.2)", "argument 'alpha' given twice"),
    ("bce(smooth=1)", "unknown argument 'smooth' of loss term 'bce'.*valid: none"),
    ("bce_dice(smooth=1)", "'bce_dice' takes no arguments"),
    ("tversky(0.7)", "write the arguments as key=value"),
    ("tversky(alpha=0.3", "cannot read"),
    ("tversy(alpha=0.3)", "did you mean 'tversky'"),
])
def test_bad_term_arguments_are_config_errors(expression, match):
    with pytest.raises(ConfigError, match=match):
        losses.get(expression)


def test_a_loss_wide_parameter_only_a_term_takes_inline_says_so():
    with pytest.raises(ConfigError, match=r"give it inline: tversky\(alpha=...\)"):
        losses.get("tversky", alpha=0.3)


def test_a_checkpoint_with_tversky_arguments_reloads(random_batch, tmp_path):
    t, p = random_batch
    expression = "0.5*bce+0.5*focal_tversky(alpha=0.3,beta=0.7,gamma=1.5)"
    tiny_model(losses.get(expression)).save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.loss.expression == expression
    assert float(np.asarray(loaded.loss(t, p))) == pytest.approx(batch_value(expression, t, p))
