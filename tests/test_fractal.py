"""FractalNet-U-Net: block structure, join semantics (inference and training), drop-path statistics,
training with falling loss and .keras save/reload."""
import numpy as np
import pytest

import keras

from segkit.errors import ConfigError
from segkit.losses import get_loss
from segkit.metrics import get_metrics
from segkit.models.fractal import FractalJoin, deepest_column_model, fractal_block
from segkit.models.registry import build_model


def inbound_names(obj):
    """Names of the layers whose outputs feed a layer, read from its functional config."""
    if isinstance(obj, dict):
        if "keras_history" in obj.get("config", {}):
            return [obj["config"]["keras_history"][0]]
        return [n for v in obj.values() for n in inbound_names(v)]
    if isinstance(obj, (list, tuple)):
        return [n for v in obj for n in inbound_names(v)]
    return []


def conv_path_lengths(model, source, sink):
    """Longest and shortest number of Conv2D layers on any path from layer `source` to layer `sink`."""
    config = {la["name"]: la for la in model.get_config()["layers"]}
    memo = {}

    def walk(name):  # (longest, shortest) from source to the output of `name`, or None if unreachable
        if name == source:
            return (0, 0)
        if name not in memo:
            found = [r for r in (walk(n) for n in inbound_names(config[name]["inbound_nodes"])) if r is not None]
            is_conv = config[name]["class_name"] == "Conv2D"
            memo[name] = (max(f[0] for f in found) + is_conv, min(f[1] for f in found) + is_conv) if found else None
        return memo[name]

    return walk(sink)


def block_model(columns, filters=3, size=8, bands=2, drop_prob=0.15, inference="mean"):
    """One fractal block as a model of ([decision, x]); the decision is normally the network's sampler output."""
    x_in = keras.Input((size, size, bands), name="x")
    decision = keras.Input((2,), name="decision")
    out = fractal_block(x_in, filters, columns, "blk", decision, drop_prob=drop_prob, inference=inference, seed=3)
    model = keras.Model([decision, x_in], out)
    rng = np.random.default_rng(columns)
    for layer in model.layers:  # known, non-trivial weights, batch-norm statistics included
        if layer.weights:
            layer.set_weights([
                rng.uniform(0.5, 1.5, w.shape).astype("float32") if "variance" in w.path or "gamma" in w.path
                else rng.normal(0, 0.5, w.shape).astype("float32")
                for w in layer.weights
            ])
    return model


def unit(model, column, i, x, training):
    """Conv → BN → ReLU of the i-th unit down `column`, applied by hand."""
    x = model.get_layer(f"blk_col{column}_{i}_conv")(x)
    x = model.get_layer(f"blk_col{column}_{i}_bn")(x, training=training)
    return np.asarray(model.get_layer(f"blk_col{column}_{i}_relu")(x))


def column_chain(model, column, columns, x, training):
    """Column j's path alone: its 2^(C-1-j) units in order."""
    for i in range(2 ** (columns - 1 - column)):
        x = unit(model, column, i, x, training)
    return x


@pytest.mark.parametrize("columns", [1, 2, 3, 4])
def test_block_structure(columns):
    model = block_model(columns, filters=2)
    convs = [la.name for la in model.layers if isinstance(la, keras.layers.Conv2D)]
    assert len(convs) == 2**columns - 1
    for j in range(columns):  # column j holds 2^(C-1-j) units
        assert sum(n.startswith(f"blk_col{j}_") for n in convs) == 2 ** (columns - 1 - j)
    longest, shortest = conv_path_lengths(model, "x", model.layers[-1].name)
    assert (longest, shortest) == (2 ** (columns - 1), 1)
    joins = [la for la in model.layers if isinstance(la, FractalJoin)]
    # a join after every second unit down the deepest column (the paper's figure: C = 4 has 4 joins)
    assert len(joins) == (2 ** (columns - 2) if columns > 1 else 0)
    if columns > 1:
        assert len(model.layers[-1].input) == columns + 1  # the last join merges every column (+ decision)


def test_network_structure_every_join_reads_one_sampler():
    model = build_model({"name": "fractal_unet", "columns": 3, "depth": 2, "base_filters": 2}, (16, 16, 3), 1)
    convs = [la for la in model.layers if type(la) is keras.layers.Conv2D]
    assert len(convs) == 5 * 7 + 1  # 5 blocks of 7 units, plus the 1×1 head
    config = {la["name"]: la for la in model.get_config()["layers"]}
    joins = [n for n, la in config.items() if la["class_name"] == "FractalJoin"]
    assert len(joins) == 5 * 2
    assert all(inbound_names(config[n]["inbound_nodes"])[0] == "drop_path" for n in joins)
    assert [la.name for la in model.layers if la.__class__.__name__ == "DropPathSampler"] == ["drop_path"]
    # the U-Net skeleton is intact: skips are concatenations of encoder and up-sampled decoder tensors
    assert inbound_names(config["dec0_concat"]["inbound_nodes"]) == ["dec0_upconv", "enc0_join1"]


@pytest.mark.parametrize("columns", [2, 3])
def test_inference_join_is_mean_of_columns(columns):
    model = block_model(columns)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 2)).astype("float32")
    out = np.asarray(model([np.zeros((2, 2), "float32"), x], training=False))
    if columns == 2:
        cols = [unit(model, 0, 1, unit(model, 0, 0, x, False), False), unit(model, 1, 0, x, False)]
    else:
        mid = (unit(model, 0, 1, unit(model, 0, 0, x, False), False) + unit(model, 1, 0, x, False)) / 2
        cols = [unit(model, 0, 3, unit(model, 0, 2, mid, False), False), unit(model, 1, 1, mid, False),
                unit(model, 2, 0, x, False)]
    np.testing.assert_allclose(out, np.mean(cols, axis=0), rtol=1e-5, atol=1e-5)
    # deepest-only inference passes column 0 alone
    deep = block_model(columns, inference="deepest")
    deep_out = np.asarray(deep([np.zeros((2, 2), "float32"), x], training=False))
    np.testing.assert_allclose(deep_out, column_chain(deep, 0, columns, x, False), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("column", [0, 1, 2])
def test_training_global_mode_keeps_exactly_one_column(column):
    model = block_model(3)
    x = np.random.default_rng(1).normal(size=(4, 8, 8, 2)).astype("float32")
    decision = np.tile(np.array([[1.0, column]], "float32"), (4, 1))
    out = np.asarray(model([decision, x], training=True))
    np.testing.assert_allclose(out, column_chain(model, column, 3, x, True), rtol=1e-4, atol=1e-4)


def test_training_local_mode_never_drops_every_input():
    model = block_model(2, drop_prob=1.0)  # every input drawn as dropped: the join must keep one at random
    x = np.random.default_rng(2).normal(size=(2, 8, 8, 2)).astype("float32")
    cols = [column_chain(model, j, 2, x, True) for j in (0, 1)]
    seen = set()
    for _ in range(12):
        out = np.asarray(model([np.zeros((2, 2), "float32"), x], training=True))
        match = [j for j in (0, 1) if np.allclose(out, cols[j], rtol=1e-4, atol=1e-4)]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == {0, 1}


def test_drop_path_statistics_over_many_batches():
    p, ratio, n_batches, columns = 0.15, 0.5, 400, 3
    model = build_model(
        {"name": "fractal_unet", "columns": columns, "depth": 1, "base_filters": 2, "seed": 11,
         "drop_path_local": p, "global_ratio": ratio},
        (8, 8, 1), 1,
    )
    sampler = model.get_layer("drop_path")
    joins = [(la, len(la.input) - 1) for la in model.layers if isinstance(la, FractalJoin)]
    assert sorted(k for _, k in joins) == [2, 2, 2, 3, 3, 3]
    x = np.zeros((2, 8, 8, 1), "float32")
    n_global, chosen = 0, np.zeros(columns)
    dropped, draws = {2: 0, 3: 0}, {2: 0, 3: 0}
    for _ in range(n_batches):
        decision = sampler(x, training=True)
        d = np.asarray(decision)
        assert (d == d[0]).all()  # one decision for the whole batch
        is_global, column = bool(d[0, 0]), int(d[0, 1])
        weights = [(np.asarray(join.path_weights(decision, k)), k) for join, k in joins]
        for w, k in weights:
            assert w.sum() == pytest.approx(1.0) and (w > 0).sum() >= 1
            kept = w > 0
            np.testing.assert_allclose(w[kept], 1.0 / kept.sum(), rtol=1e-6)
        if is_global:
            n_global += 1
            chosen[column] += 1
            kept_columns = {int(np.argmax(w)) for w, k in weights if k > column}
            assert kept_columns == {column}
            assert all((w > 0).sum() == 1 for w, k in weights if k > column)
            assert all((w > 0).all() for w, k in weights if k <= column)  # off the path: plain mean
        else:
            for w, k in weights:
                dropped[k] += int((w == 0).sum())
                draws[k] += k
    assert abs(n_global / n_batches - ratio) < 0.1
    assert (chosen > 0.2 * n_global).all()
    for k in (2, 3):  # P(dropped) = p − p^k / k, the all-dropped case keeping one input
        assert abs(dropped[k] / draws[k] - (p - p**k / k)) < 0.035, (k, dropped[k] / draws[k])


def test_fractal_unet_trains_saves_reloads(tmp_path):
    keras.utils.set_random_seed(3)
    model = build_model({"name": "fractal_unet", "columns": 2, "depth": 2, "base_filters": 4, "seed": 5},
                        (32, 32, 4), 1)
    rng = np.random.default_rng(0)
    x = rng.random((8, 32, 32, 4)).astype("float32")
    y = (x[..., :1] > 0.5).astype("uint8")
    model.compile(keras.optimizers.Adam(1e-2), loss=get_loss("bce_dice"), metrics=get_metrics(["dice", "iou"]))
    losses = model.fit(x, y, epochs=4, batch_size=4, verbose=0, shuffle=False).history["loss"]
    assert losses[-1] < losses[0], losses
    path = tmp_path / "fractal.keras"
    model.save(path)
    again = keras.models.load_model(path)
    pred = model.predict(x, verbose=0)
    np.testing.assert_array_equal(pred, again.predict(x, verbose=0))
    # the deepest-column sub-network shares the weights but is a different function
    deep = deepest_column_model(again)
    deep_pred = deep.predict(x, verbose=0)
    assert not np.allclose(deep_pred, pred)
    built_deep = build_model({"name": "fractal_unet", "columns": 2, "depth": 2, "base_filters": 4,
                              "deepest_only": True}, (32, 32, 4), 1)
    built_deep.set_weights(model.get_weights())
    np.testing.assert_allclose(built_deep.predict(x, verbose=0), deep_pred, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "params, match",
    [({"columns": 0}, "columns"), ({"drop_path_local": 1.5}, "drop_path_local"),
     ({"global_ratio": -0.1}, "global_ratio"), ({"colums": 2}, "models.0: unknown fractal_unet key 'colums'; did you mean 'columns'")],
)
def test_bad_parameters(params, match):
    with pytest.raises(ConfigError, match=match):
        build_model({"name": "fractal_unet", "depth": 1, **params}, (8, 8, 1), 1)
