"""Segmentation losses by name, written with `keras.ops` only so every backend runs them.

Every loss takes `y_true` of the model's output shape (N, H, W, C) with values in {0, 1} and `y_pred`
probabilities (the models end in sigmoid or softmax), and returns one value per image (so sample weights
work); Keras averages them over the batch. A loss is one `SegmentationLoss`: a weighted sum of named terms,
registered with Keras, so a model compiled with it saves and reloads with `keras.models.load_model(path)`
(after `import segkit.losses`) and no `custom_objects`.

`get(name)` (also the `train.loss` config key) takes a term, a weighted sum of terms such as
"bce+dice" or "0.75*bce+0.25*lovasz", or one of the older pair names. Terms:

sigmoid outputs (binary or multi-label masks, one channel per class)
    bce             binary cross-entropy, mean over pixels and classes
    dice            1 − soft Dice, per image and class (smooth 1), mean over classes
    jaccard         1 − soft Jaccard (IoU), per image and class (smooth 1), mean over classes
    focal           binary focal loss (gamma 2; alpha balancing off by default)
    lovasz          Lovász hinge, per image and class (on the logits recovered from the probabilities)
    tversky         1 − Tversky index TP / (TP + α·FP + β·FN), per image and class, mean over classes
                    (Salehi et al. 2017; α weighs false positives, β false negatives, as in
                    segmentation_models_pytorch); α = β = 0.5 is exactly `dice`. Defaults α = β = 0.5; give one
                    of them and the other is 1 − it: `tversky(alpha=0.3)` favours recall (β = 0.7)
    focal_tversky   mean over classes of (1 − Tversky index)^γ (Abraham & Khan 2019), γ = 0.75 by default
                    (their 1/γ with γ = 4/3); α, β as tversky
softmax outputs (multi-class, y_true one-hot over all n_classes channels, background included)
    cce             categorical cross-entropy, mean over pixels
    categorical_focal   categorical focal loss (gamma 2)
    lovasz_softmax  Lovász-softmax, per image, averaged over the classes present in the image
"dice", "jaccard", "tversky" and "focal_tversky" work for both output kinds.

A term takes its arguments inline: "0.5*bce+0.5*tversky(alpha=0.3)", "focal(gamma=3,alpha=0.25)",
"dice(smooth=0)", "focal_tversky(alpha=0.3,beta=0.7,gamma=0.75)". Inline arguments win over the loss-wide
`smooth` / `gamma` / `alpha` given to `get`; an unknown or ill-typed argument is a ConfigError naming it.

Older names: bce_dice = bce+dice, bce_jaccard = bce+jaccard, cce_dice = cce+dice; the classes of earlier
versions (BceDiceLoss ...) stay registered so checkpoints compiled with them still load.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import keras
from keras import ops

from segkit.errors import ConfigError, did_you_mean, unknown_name

EPSILON = 1e-7


# --- per-image loss functions (y_true, y_pred: (N, H, W, C) float32) ------------------------------

def _as_float(y_true, y_pred):
    return ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")


def _pixel_axes(x) -> tuple[int, ...]:
    return tuple(range(1, len(x.shape) - 1))


def _all_but_batch(x) -> tuple[int, ...]:
    return tuple(range(1, len(x.shape)))


def binary_crossentropy(y_true, y_pred):
    """Mean binary cross-entropy per image over pixels and classes."""
    y_true, y_pred = _as_float(y_true, y_pred)
    p = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
    bce = -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
    return ops.mean(bce, axis=_all_but_batch(bce))


def soft_dice_loss(y_true, y_pred, smooth: float = 1.0):
    """1 − mean over classes of (2·|T∩P| + s) / (|T| + |P| + s), per image; empty truth and prediction → 0."""
    y_true, y_pred = _as_float(y_true, y_pred)
    axes = _pixel_axes(y_true)
    inter = ops.sum(y_true * y_pred, axis=axes)
    total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    return 1.0 - ops.mean((2.0 * inter + smooth) / (total + smooth), axis=-1)


def soft_jaccard_loss(y_true, y_pred, smooth: float = 1.0):
    """1 − mean over classes of (|T∩P| + s) / (|T| + |P| − |T∩P| + s), per image."""
    y_true, y_pred = _as_float(y_true, y_pred)
    axes = _pixel_axes(y_true)
    inter = ops.sum(y_true * y_pred, axis=axes)
    total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    return 1.0 - ops.mean((inter + smooth) / (total - inter + smooth), axis=-1)


def tversky_index(y_true, y_pred, alpha: float = 0.5, beta: float = 0.5, smooth: float = 1.0):
    """(2·TP + s) / (2·TP + 2α·FP + 2β·FN + s) per image and class, i.e. the Tversky index
    TP / (TP + α·FP + β·FN) smoothed like the Dice term, so α = β = 0.5 gives exactly the soft Dice coefficient
    (empty truth and prediction → 1). Soft counts: TP = Σ t·p, FP = Σ (1 − t)·p, FN = Σ t·(1 − p)."""
    y_true, y_pred = _as_float(y_true, y_pred)
    axes = _pixel_axes(y_true)
    tp = ops.sum(y_true * y_pred, axis=axes)
    fp = ops.sum((1.0 - y_true) * y_pred, axis=axes)
    fn = ops.sum(y_true * (1.0 - y_pred), axis=axes)
    return (2.0 * tp + smooth) / (2.0 * tp + 2.0 * alpha * fp + 2.0 * beta * fn + smooth)


def _tversky_weights(alpha: float | None, beta: float | None) -> tuple[float, float]:
    """α, β with the defaults 0.5, 0.5, or 1 − the other where only one is given."""
    if alpha is None and beta is None:
        return 0.5, 0.5
    if beta is None:
        return alpha, 1.0 - alpha
    if alpha is None:
        return 1.0 - beta, beta
    return alpha, beta


def tversky_loss(y_true, y_pred, alpha: float | None = None, beta: float | None = None, smooth: float = 1.0):
    """1 − mean over classes of the Tversky index (see `tversky_index`), per image."""
    alpha, beta = _tversky_weights(alpha, beta)
    return 1.0 - ops.mean(tversky_index(y_true, y_pred, alpha, beta, smooth), axis=-1)


def focal_tversky_loss(y_true, y_pred, alpha: float | None = None, beta: float | None = None, gamma: float = 0.75,
                       smooth: float = 1.0):
    """Mean over classes of (1 − Tversky index)^γ, per image (Abraham & Khan 2019 with their 1/γ as γ)."""
    alpha, beta = _tversky_weights(alpha, beta)
    loss = ops.maximum(1.0 - tversky_index(y_true, y_pred, alpha, beta, smooth), 0.0)
    return ops.mean(ops.power(loss + EPSILON, gamma) if gamma < 1 else ops.power(loss, gamma), axis=-1)


def binary_focal_loss(y_true, y_pred, gamma: float = 2.0, alpha: float | None = None):
    """Mean of −α_t (1 − p_t)^γ log p_t per image (Lin et al.); α_t = α for positives, 1 − α for negatives."""
    y_true, y_pred = _as_float(y_true, y_pred)
    p = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
    p_t = y_true * p + (1.0 - y_true) * (1.0 - p)
    loss = -ops.power(1.0 - p_t, gamma) * ops.log(p_t)
    if alpha is not None:
        loss = loss * (y_true * alpha + (1.0 - y_true) * (1.0 - alpha))
    return ops.mean(loss, axis=_all_but_batch(loss))


def categorical_crossentropy(y_true, y_pred):
    """Mean over pixels of −Σ_c t_c log p_c (one-hot truth, softmax probabilities)."""
    y_true, y_pred = _as_float(y_true, y_pred)
    p = ops.clip(y_pred, EPSILON, 1.0)
    cce = -ops.sum(y_true * ops.log(p), axis=-1)
    return ops.mean(cce, axis=_all_but_batch(cce))


def categorical_focal_loss(y_true, y_pred, gamma: float = 2.0):
    """Mean over pixels of −Σ_c t_c (1 − p_c)^γ log p_c."""
    y_true, y_pred = _as_float(y_true, y_pred)
    p = ops.clip(y_pred, EPSILON, 1.0)
    loss = -ops.sum(y_true * ops.power(1.0 - p, gamma) * ops.log(p), axis=-1)
    return ops.mean(loss, axis=_all_but_batch(loss))


def _flatten_per_class(x):
    """(N, H, W, C) → (N, C, H·W)."""
    n_pix = 1
    for d in x.shape[1:-1]:
        n_pix *= int(d)
    return ops.reshape(ops.transpose(x, (0, 3, 1, 2)), (-1, int(x.shape[-1]), n_pix))


def _lovasz_weights(gt_sorted):
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. errors sorted in decreasing order."""
    gts = ops.sum(gt_sorted, axis=-1, keepdims=True)
    intersection = gts - ops.cumsum(gt_sorted, axis=-1)
    union = gts + ops.cumsum(1.0 - gt_sorted, axis=-1)  # >= 1 everywhere, so no division by zero
    jaccard = 1.0 - intersection / union
    return ops.concatenate([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], axis=-1)


def _lovasz_sorted(errors, gt):
    """Σ_i f(e_(i)) · g_i over errors sorted in decreasing order (last axis)."""
    order = ops.argsort(-errors, axis=-1)
    errors_sorted = ops.take_along_axis(errors, order, axis=-1)
    gt_sorted = ops.take_along_axis(gt, order, axis=-1)
    weights = ops.stop_gradient(_lovasz_weights(gt_sorted))
    return errors_sorted, weights


def lovasz_hinge_loss(y_true, y_pred):
    """Lovász hinge (Berman et al. 2018) per image and class, mean over classes.

    The models output probabilities, so the logits are recovered as log(p / (1 − p)) with p clipped to
    [1e-7, 1 − 1e-7]. An image with an empty mask costs relu(its largest hinge error), as in the reference.
    """
    y_true, y_pred = _as_float(y_true, y_pred)
    p = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
    logits = _flatten_per_class(ops.log(p) - ops.log(1.0 - p))
    gt = _flatten_per_class(y_true)
    errors = 1.0 - logits * (2.0 * gt - 1.0)
    errors_sorted, weights = _lovasz_sorted(errors, gt)
    per_class = ops.sum(ops.relu(errors_sorted) * weights, axis=-1)
    return ops.mean(per_class, axis=-1)


def lovasz_softmax_loss(y_true, y_pred):
    """Lovász-softmax per image over the classes present in it (errors |t_c − p_c|)."""
    y_true, y_pred = _as_float(y_true, y_pred)
    gt = _flatten_per_class(y_true)
    prob = _flatten_per_class(y_pred)
    errors_sorted, weights = _lovasz_sorted(ops.abs(gt - prob), gt)
    per_class = ops.sum(errors_sorted * weights, axis=-1)
    present = ops.cast(ops.sum(gt, axis=-1) > 0, "float32")
    return ops.sum(per_class * present, axis=-1) / ops.maximum(ops.sum(present, axis=-1), 1.0)


# --- terms and expressions ----------------------------------------------------------------------

@dataclass(frozen=True)
class Term:
    """One named loss term: its per-image function, the loss-wide parameters it takes (`get(..., smooth=2)`),
    the further arguments it takes inline only (`tversky(alpha=0.3)`), the outputs it is for."""

    fn: Callable
    params: tuple[str, ...] = ()
    softmax_only: bool = False
    inline: tuple[str, ...] = ()

    @property
    def arguments(self) -> tuple[str, ...]:
        """Every argument the term takes inline, in its canonical order."""
        return (*self.inline, *self.params)


TERMS: dict[str, Term] = {
    "bce": Term(binary_crossentropy),
    "dice": Term(soft_dice_loss, ("smooth",)),
    "jaccard": Term(soft_jaccard_loss, ("smooth",)),
    "focal": Term(binary_focal_loss, ("gamma", "alpha")),
    "lovasz": Term(lovasz_hinge_loss),
    "tversky": Term(tversky_loss, ("smooth",), inline=("alpha", "beta")),
    "focal_tversky": Term(focal_tversky_loss, ("smooth",), inline=("alpha", "beta", "gamma")),
    "cce": Term(categorical_crossentropy, softmax_only=True),
    "categorical_focal": Term(categorical_focal_loss, ("gamma",), softmax_only=True),
    "lovasz_softmax": Term(lovasz_softmax_loss, softmax_only=True),
}
# Names from before losses were composed; `train.loss: bce_dice` in existing configs.
ALIASES: dict[str, str] = {"bce_dice": "bce+dice", "bce_jaccard": "bce+jaccard", "cce_dice": "cce+dice"}
DEFAULTS: dict[str, Any] = {"smooth": 1.0, "gamma": 2.0, "alpha": None}
# what each argument may be: (check, what the error says it must be)
_ARGUMENTS: dict[str, tuple[Callable[[float], bool], str]] = {
    "smooth": (lambda v: v >= 0, "a number >= 0"),
    "gamma": (lambda v: v >= 0, "a number >= 0"),
    "alpha": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "beta": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
}

_NUMBER = r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_TERM_RE = re.compile(rf"\s*(?:({_NUMBER})\s*\*\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*(?:\(([^()]*)\))?\s*(\+|$)")
_VALUE_RE = re.compile(rf"^[-+]?{_NUMBER}$")


def _unknown(what: str, name: str, known: list[str], cutoff: float = 0.6) -> str:
    return str(unknown_name("train.loss", what, name, sorted(known), cutoff))


def _term_arguments(name: str, text: str, expression: str) -> dict[str, float]:
    """The inline arguments `alpha=0.3, beta=0.7` of term `name`, checked: ConfigError for an unknown, repeated,
    non-numeric or out-of-range argument, naming the term and the valid arguments."""
    valid = TERMS[name].arguments
    args: dict[str, float] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item and not args and not text.strip():
            break  # `dice()`: no arguments
        key, eq, raw = (x.strip() for x in item.partition("="))
        if not eq or not key:
            raise ConfigError(f"train.loss: cannot read '{item}' in '{name}({text})' of '{expression}'; write the "
                              f"arguments as key=value, e.g. {name}({valid[0] if valid else 'key'}=0.5)")
        if key not in valid:
            hint = did_you_mean(key, valid, cutoff=0.5)
            raise ConfigError(f"train.loss: unknown argument '{key}' of loss term '{name}'{hint} "
                              f"(valid: {', '.join(valid) or 'none'})")
        if key in args:
            raise ConfigError(f"train.loss: argument '{key}' given twice to '{name}' in '{expression}'")
        check, must = _ARGUMENTS[key]
        number = float(raw) if _VALUE_RE.match(raw) else None
        if number is None or not math.isfinite(number) or not check(number):
            raise ConfigError(f"train.loss: {name}({key}=...) must be {must}, got '{raw}' in '{expression}'")
        args[key] = number
    return args


def format_term(name: str, args: dict[str, float]) -> str:
    """The canonical text of one term: 'dice', 'tversky(alpha=0.3)' (arguments in the term's order)."""
    if not args:
        return name
    order = TERMS[name].arguments
    return f"{name}(" + ",".join(f"{k}={_weight_text(args[k])}" for k in order if k in args) + ")"


def split_term(text: str) -> tuple[str, dict[str, float]]:
    """'tversky(alpha=0.3)' → ('tversky', {'alpha': 0.3}); the inverse of `format_term`."""
    name, _, rest = text.partition("(")
    return name, (_term_arguments(name, rest.rstrip(")"), text) if rest else {})


def parse(expression: str) -> list[tuple[float, str]]:
    """'0.75*bce+0.25*tversky(alpha=0.3)' → [(0.75, 'bce'), (0.25, 'tversky(alpha=0.3)')]; aliases expand,
    repeated terms (same arguments) add up.

    ConfigError for an unknown term (with the closest name), a bad inline argument, or text that is not a
    weighted sum of terms."""
    text = str(expression)
    weights: dict[str, float] = {}
    pos, parts = 0, []
    while True:
        m = _TERM_RE.match(text, pos)
        if not m or (m.end() == pos and pos) or (not m.group(4) and m.end() < len(text)):
            raise ConfigError(f"train.loss: cannot read '{expression}' as a loss; expected a term name or a weighted "
                              "sum such as 'bce+dice', '0.75*bce+0.25*lovasz' or '0.5*bce+0.5*tversky(alpha=0.3)'")
        parts.append(m)
        pos = m.end()
        if not m.group(4):
            break
    for m in parts:
        weight = float(m.group(1)) if m.group(1) else 1.0
        name, args_text = m.group(2), m.group(3)
        if name in ALIASES:
            if args_text is not None:
                raise ConfigError(f"train.loss: '{name}' takes no arguments (it stands for '{ALIASES[name]}'); "
                                  "write the terms with their arguments instead")
            inner = parse(ALIASES[name])
        elif name in TERMS:
            args = _term_arguments(name, args_text, expression) if args_text is not None else {}
            inner = [(1.0, format_term(name, args))]
        else:
            raise ConfigError(_unknown("loss" if len(parts) == 1 and args_text is None else "loss term",
                                       name, list(TERMS) + list(ALIASES)))
        for w, term in inner:
            weights[term] = weights.get(term, 0.0) + weight * w
    return list((w, t) for t, w in weights.items())


def _weight_text(w: float) -> str:
    text = repr(float(w))  # repr round-trips exactly, so a saved expression gives the same weights back
    return text[:-2] if text.endswith(".0") else text


def format_expression(terms: list[tuple[float, str]]) -> str:
    """The canonical text of parsed terms: 'bce+dice', '0.75*bce+0.25*lovasz'."""
    return "+".join(t if w == 1.0 else f"{_weight_text(w)}*{t}" for w, t in terms)


# --- the Keras loss (serialisable) --------------------------------------------------------------

@keras.saving.register_keras_serializable(package="segkit")
class SegmentationLoss(keras.losses.Loss):
    """A weighted sum of named terms, e.g. SegmentationLoss("0.75*bce+0.25*lovasz").

    `smooth` goes to dice/jaccard/tversky terms, `gamma` to focal and categorical_focal, `alpha` to binary focal;
    a term's inline arguments (`tversky(alpha=0.3)`, `focal(gamma=3)`) win over these. Saved with its
    expression, so a model compiled with it reloads with `keras.models.load_model` after `import segkit.losses`.
    Losses add and scale: `get("bce") + 0.5 * get("dice")`.
    """

    def __init__(self, expression: str = "bce+dice", smooth: float = 1.0, gamma: float = 2.0,
                 alpha: float | None = None, name: str | None = None, **kwargs: Any):
        self.terms = parse(expression)
        self.expression = format_expression(self.terms)
        self.smooth, self.gamma = float(smooth), float(gamma)
        self.alpha = None if alpha is None else float(alpha)
        params = self.params()
        self._resolved = []  # (weight, per-image function, its keyword arguments)
        for w, text in self.terms:
            term_name, args = split_term(text)
            term = TERMS[term_name]
            self._resolved.append((w, term.fn, {**{k: params[k] for k in term.params}, **args}))
        super().__init__(name=name or _scope_name(self.expression), **kwargs)

    def params(self) -> dict[str, Any]:
        """The term parameters (smooth, gamma, alpha)."""
        return {"smooth": self.smooth, "gamma": self.gamma, "alpha": self.alpha}

    def call(self, y_true, y_pred):
        total = None
        for w, fn, kwargs in self._resolved:
            value = fn(y_true, y_pred, **kwargs)
            if w != 1.0:
                value = w * value
            total = value if total is None else total + value
        return total

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "expression": self.expression, **self.params()}

    def _combine(self, other: SegmentationLoss, scale_self: float = 1.0, scale_other: float = 1.0):
        if self.params() != other.params():
            raise ConfigError(f"losses '{self.expression}' and '{other.expression}' have different parameters "
                              f"({self.params()} vs {other.params()}); give both the same")
        terms = [(scale_self * w, t) for w, t in self.terms] + [(scale_other * w, t) for w, t in other.terms]
        return SegmentationLoss(format_expression(terms), **self.params())

    def __add__(self, other: Any) -> SegmentationLoss:
        if not isinstance(other, SegmentationLoss):
            return NotImplemented
        return self._combine(other)

    def __mul__(self, factor: Any) -> SegmentationLoss:
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor < 0:
            return NotImplemented
        return SegmentationLoss(format_expression([(float(factor) * w, t) for w, t in self.terms]), **self.params())

    __rmul__ = __mul__


def _scope_name(expression: str) -> str:
    """A loss name every backend accepts as a name scope ('0.75*bce+dice' → '0.75_bce_dice')."""
    return re.sub(r"[^A-Za-z0-9_.]+", "_", expression)


# --- the classes of earlier versions, so checkpoints compiled with them still load -----------------

class _LegacyLoss(SegmentationLoss):
    """A fixed expression under an old class name, with the old constructor arguments and config."""

    legacy_name = ""
    legacy_params: dict[str, Any] = {}
    legacy_expression = ""  # str.format template over legacy_params

    def __init__(self, name: str | None = None, **kwargs: Any):
        old = {k: kwargs.pop(k, v) for k, v in self.legacy_params.items()}
        self._legacy = old
        expression = self.legacy_expression.format(**{k: _weight_text(v) for k, v in old.items()
                                                      if k.endswith("_weight")})
        params = {k: v for k, v in old.items() if k in DEFAULTS}
        super().__init__(expression, name=name or self.legacy_name, **params, **kwargs)

    def get_config(self) -> dict[str, Any]:
        return {**keras.losses.Loss.get_config(self), **self._legacy}


def _legacy(class_name: str, legacy_name: str, expression: str, **params: Any) -> type[SegmentationLoss]:
    cls = type(class_name, (_LegacyLoss,), {
        "__doc__": f"Earlier name of `get('{legacy_name}')`, kept so checkpoints compiled with it still load.",
        "__module__": __name__,
        "legacy_name": legacy_name, "legacy_params": params, "legacy_expression": expression,
    })
    return keras.saving.register_keras_serializable(package="segkit")(cls)


_PAIR = {"bce_weight": 1.0, "overlap_weight": 1.0, "smooth": 1.0}
BinaryCrossentropy = _legacy("BinaryCrossentropy", "bce", "bce")
DiceLoss = _legacy("DiceLoss", "dice", "dice", smooth=1.0)
JaccardLoss = _legacy("JaccardLoss", "jaccard", "jaccard", smooth=1.0)
BceDiceLoss = _legacy("BceDiceLoss", "bce_dice", "{bce_weight}*bce+{overlap_weight}*dice", **_PAIR)
BceJaccardLoss = _legacy("BceJaccardLoss", "bce_jaccard", "{bce_weight}*bce+{overlap_weight}*jaccard", **_PAIR)
FocalLoss = _legacy("FocalLoss", "focal", "focal", gamma=2.0, alpha=None)
LovaszHingeLoss = _legacy("LovaszHingeLoss", "lovasz", "lovasz")
CategoricalCrossentropy = _legacy("CategoricalCrossentropy", "cce", "cce")
CceDiceLoss = _legacy("CceDiceLoss", "cce_dice", "{bce_weight}*cce+{overlap_weight}*dice", **_PAIR)
CategoricalFocalLoss = _legacy("CategoricalFocalLoss", "categorical_focal", "categorical_focal", gamma=2.0)
LovaszSoftmaxLoss = _legacy("LovaszSoftmaxLoss", "lovasz_softmax", "lovasz_softmax")


# --- by name ------------------------------------------------------------------------------------

def loss_names() -> list[str]:
    """Every single name `get` accepts (terms and the old pair names); any weighted sum of terms works too."""
    return sorted([*TERMS, *ALIASES])


def get(name: str, n_classes: int = 1, **params: Any) -> SegmentationLoss:
    """The loss `name`: a term ('focal'), an old pair name ('bce_dice') or a weighted sum ('0.75*bce+0.25*lovasz',
    '0.5*bce+0.5*tversky(alpha=0.3)'), with optional loss-wide term parameters (smooth, gamma, alpha).

    ConfigError, naming the closest valid spelling, for an unknown term or a parameter no term of the
    expression takes; also for a softmax-only term with n_classes < 2 (a one-channel softmax is constant).
    """
    terms = parse(name)
    names = [split_term(t)[0] for _, t in terms]
    softmax = [t for t in names if TERMS[t].softmax_only]
    if softmax and n_classes < 2:
        raise ConfigError(f"train.loss: '{softmax[0]}' in '{name}' is for softmax outputs with n_classes >= 2, "
                          f"got n_classes={n_classes}")
    valid = sorted({p for t in names for p in TERMS[t].params})
    for key in params:
        if key not in valid:
            hint = did_you_mean(key, valid, cutoff=0.5)
            inline = [t for t in names if key in TERMS[t].inline]
            if inline:
                hint += f"; give it inline: {inline[0]}({key}=...)"
            raise ConfigError(f"train.loss.{key}: unknown parameter of '{name}'{hint} "
                              f"(valid: {', '.join(valid) or 'none'})")
    return SegmentationLoss(format_expression(terms), name=_scope_name(str(name).replace(" ", "")),
                            **{**DEFAULTS, **params})


get_loss = get  # the name before segkit.losses.get


# --- the classification head's loss (models with `classifier: true`) ------------------------------

def label_target(y_true):
    """(B, C) float32: 1 where class c's mask target has any pixel > 0.5, else 0 ("mask non-empty"), from a
    (B, H, W, C) mask target; softmax one-hot targets the same, per channel. A (B, C) target passes through."""
    y_true = ops.cast(y_true, "float32")
    if len(y_true.shape) > 2:
        y_true = ops.max(y_true, axis=_pixel_axes(y_true))
    return ops.cast(y_true > 0.5, "float32")


@keras.saving.register_keras_serializable(package="segkit")
class ClassifierLoss(keras.losses.Loss):
    """Binary cross-entropy, mean over classes per image, of the head's (B, C) "class present" probabilities
    against `label_target` of the MASK target, so the data pipeline feeds the mask to both outputs."""

    def __init__(self, name: str = "classifier_bce", **kwargs: Any):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        target = label_target(y_true)
        p = ops.clip(ops.cast(y_pred, "float32"), EPSILON, 1.0 - EPSILON)
        return ops.mean(-(target * ops.log(p) + (1.0 - target) * ops.log(1.0 - p)), axis=-1)


def compile_args(loss: keras.losses.Loss, metrics: list, classifier_weight: float | None = None) -> dict[str, Any]:
    """`model.compile` keyword arguments for a segmentation loss and mask metrics: as given for a one-output
    model (`classifier_weight` None); for a model with the classification head (outputs `mask`, `label`) the
    loss is `loss` on the mask + classifier_weight × ClassifierLoss on the label, and the metrics read the mask
    only. Fit such a model with the mask target given to both outputs: `{"mask": y, "label": y}`.

    Lists in output order, not dicts keyed by output name: Keras 3.5 and 3.6 pair a loss dict with the outputs
    in the keys' alphabetical order ("label" before "mask"), i.e. wrongly; the identical targets make the
    order of the target dict irrelevant."""
    if classifier_weight is None:
        return {"loss": loss, "metrics": metrics}
    return {"loss": [loss, ClassifierLoss()], "loss_weights": [1.0, float(classifier_weight)],
            "metrics": [list(metrics), []]}
