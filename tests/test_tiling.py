"""Tiled inference (`predict.tiling`): window layout, blend weights, the band-by-band accumulate/normalise loop
(segkit.tiling), its wiring through the ensemble (segkit.predict.predict_tiled, sk.Ensemble) and the config key."""
import tracemalloc

import numpy as np
import pytest

import segkit as sk
from segkit import tiling as tl
from segkit.config import PredictConfig, TilingConfig, load_config
from segkit.errors import ConfigError


class Out:
    """What predict_ensemble yields per batch (probs, gate_probs, label), for the numpy models below."""

    def __init__(self, probs, gate=None, label=None):
        self.probs, self.gate_probs, self.label = probs, probs if gate is None else gate, label


def numpy_model(fn, batch=4):
    """A `run(source, indices)` that reads windows batch by batch as predict_ensemble does and maps each with
    `fn` (window (t, t, bands) float32 -> output (t, t, C))."""
    def run(source, indices):
        for start in range(0, len(indices), batch):
            x = np.stack([np.asarray(source.images[i]) for i in indices[start:start + batch]]).astype(np.float32)
            yield Out(np.stack([fn(w) for w in x]))
    return run


# --- layout and blending (pure numpy) ---------------------------------------------------------------------

@pytest.mark.parametrize("size,tile,overlap", [(100, 32, 0.25), (97, 32, 0.5), (33, 32, 0.0), (32, 32, 0.25),
                                               (31, 32, 0.25), (1000, 384, 0.9), (385, 384, 0.25)])
def test_windows_cover_every_pixel_up_to_the_right_and_bottom_edge(size, tile, overlap):
    starts = tl.window_starts(size, tile, overlap)
    assert starts[0] == 0 and (np.diff(starts) > 0).all()
    if size >= tile:
        assert starts[-1] == size - tile  # the last window ends on the last pixel
        stride = int(np.floor(tile * (1 - overlap)))
        assert (np.diff(starts) <= stride).all()  # neighbours overlap by at least `overlap`
    covered = np.zeros(max(size, tile), int)
    for s in starts:
        covered[s:s + tile] += 1
    assert covered[:size].min() >= 1


@pytest.mark.parametrize("shape", [(100, 37), (64, 64), (130, 200), (65, 129), (10, 300), (1, 5)])
@pytest.mark.parametrize("blend", tl.BLENDS)
def test_a_position_preserving_model_gives_back_the_image(shape, blend):
    """Every pixel (edges of sizes the stride does not divide, sides shorter than a tile) gets its own value
    back: windows cover it and are placed where they were cut."""
    rng = np.random.default_rng(0)
    image = rng.random((*shape, 2)).astype(np.float32)
    for overlap in (0.0, 0.25, 0.5):
        (part,) = tl.predict_canvases([tl.ImageCanvas(7, image=image)], 64, overlap, blend, numpy_model(lambda w: w))
        assert part.index == 7 and part.probs.shape == image.shape and part.gate_probs is part.probs
        np.testing.assert_allclose(part.probs, image, atol=1e-5)


@pytest.mark.parametrize("blend", tl.BLENDS)
def test_constant_output_is_seamless(blend):
    image = np.zeros((700, 523, 4), np.uint16)
    c = np.float32(0.6180339)
    (part,) = tl.predict_canvases([tl.ImageCanvas(0, image=image)], 96, 0.25, blend,
                                  numpy_model(lambda w: np.full((96, 96, 1), c, np.float32)))
    assert np.abs(part.probs - c).max() < 1e-6


def test_gaussian_weights_fall_off_and_blend_overlaps_smoothly():
    w = tl.blend_weights(64, "gaussian")
    assert w.argmax() in (31, 32) and w[0] < 0.01 * w.max() and np.allclose(w, w[::-1])
    assert (tl.blend_weights(64, "uniform") == 1).all()
    # a model whose output is its window's own offset: a gaussian blend ramps across an overlap, uniform averages
    lay = tl.Layout((64, 112), 64, 0.5, "gaussian")
    assert list(lay.xs) == [0, 24, 48]
    outs = [np.full((64, 64, 1), float(x), np.float32) for _, x in lay.windows()]
    row = np.concatenate([b.arrays[0] for b in tl.blend_windows(lay, outs)])[0, :, 0]
    assert row[0] == 0 and row[-1] == 48 and (np.diff(row) >= -1e-4).all()  # monotone: no jump at window edges
    assert np.abs(np.diff(row)).max() < 6


def test_grid_canvas_cuts_back_into_its_cells():
    """38-Cloud's scene geometry: cells placed by (row, col), a missing one read as zeros, each cell's output
    handed back once its rows are final, equal to the image under it."""
    rng = np.random.default_rng(1)
    scene = rng.random((64, 96, 1)).astype(np.float32)
    cells = {(r, c): 10 + r * 3 + c for r in range(2) for c in range(3) if (r, c) != (1, 1)}
    read = lambda i: scene[((i - 10) // 3) * 32:((i - 10) // 3 + 1) * 32, ((i - 10) % 3) * 32:((i - 10) % 3 + 1) * 32]
    canvas = tl.GridCanvas(cells, 2, 3, 32, read, "s")
    assert canvas.shape == (64, 96) and (canvas.rows(30, 64)[2:, 32:64] == 0).all()  # the missing cell
    np.testing.assert_array_equal(canvas.rows(30, 64)[:, :32], scene[30:64, :32])
    parts = list(tl.predict_canvases([canvas], 48, 0.5, "gaussian", numpy_model(lambda w: w)))
    assert [p.index for p in parts] == [10, 11, 12, 13, 15]  # row by row, as their rows become final
    for p in parts:
        np.testing.assert_allclose(p.probs, read(p.index), atol=1e-5)


def test_labels_are_the_largest_over_the_windows_of_a_part():
    def run(source, indices):
        for start in range(0, len(indices), 2):
            idx = indices[start:start + 2]
            wins = np.stack([np.asarray(source.images[i], np.float32) for i in idx])
            yield Out(wins[..., :1], gate=wins[..., :1] * 0.5, label=wins.max(axis=(1, 2)))
    image = np.zeros((100, 100, 1), np.float32)
    image[90, 5] = 0.9
    (part,) = tl.predict_canvases([tl.ImageCanvas(0, image=image)], 32, 0.25, "gaussian", run)
    assert part.label.tolist() == [pytest.approx(0.9)]
    np.testing.assert_allclose(part.gate_probs, image * 0.5, atol=1e-6)


def test_memory_is_bounded_by_a_band_of_tiles_on_6000x6000():
    """The blend of a 6000 x 6000 canvas in 384-px windows: traced numpy memory stays a band of windows wide,
    far below one float32 plane of the image (137 MB). Figures vs image size: bench/tiling.py."""
    lay = tl.Layout((6000, 6000), 384, 0.25)
    win = np.full((384, 384, 1), 0.5, np.float32)
    band_bytes = 384 * 6000 * 4
    tracemalloc.start()
    try:
        rows = 0
        for band in tl.blend_windows(lay, (win for _ in range(lay.n_windows))):
            rows += band.y1 - band.y0
            assert band.arrays[0].shape == (band.y1 - band.y0, 6000, 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows == 6000
    assert peak < 6 * band_bytes < 6000 * 6000 * 4 / 2


# --- the config key -------------------------------------------------------------------------------------

def test_tiling_config_from_yaml_overrides_and_python():
    assert load_config("demo").predict.tiling is None  # off by default
    cfg = load_config("demo", ["predict.tiling={tile: 128, overlap: 0.5, blend: uniform}"])
    assert cfg.predict.tiling == TilingConfig(128, 0.5, "uniform")
    assert load_config("demo", ["predict.tiling.tile=64"]).predict.tiling == TilingConfig(64, 0.25, "gaussian")
    assert cfg.to_dict()["predict"]["tiling"] == {"tile": 128, "overlap": 0.5, "blend": "uniform"}
    assert PredictConfig(tiling={"tile": 64}).tiling == TilingConfig(tile=64)
    assert sk.load_config("demo", predict={"tiling": {"tile": 256}}).predict.tiling.tile == 256


@pytest.mark.parametrize("bad,key", [({"tile": 0}, "tile"), ({"tile": 64.5}, "tile"), ({"tile": "big"}, "tile"),
                                     ({"overlap": 1.0}, "overlap"), ({"overlap": -0.1}, "overlap"),
                                     ({"blend": "gauss"}, "blend"), ({"tle": 64}, "tle")])
def test_bad_tiling_values_name_the_key(bad, key):
    with pytest.raises(ConfigError, match=rf"^predict\.tiling\.{key}:"):
        PredictConfig(tiling=bad)
    with pytest.raises(ConfigError, match=rf"^predict\.tiling\.{key}:"):
        load_config("demo", [f"predict.tiling.{k}={v}" for k, v in bad.items()])
    with pytest.raises(ConfigError, match=rf"^predict\.tiling\.{key}:"):
        TilingConfig(**{"tile": 64, **bad}) if key != "tle" else PredictConfig(tiling=bad)


# --- through the ensemble (real Keras models) --------------------------------------------------------------

@pytest.fixture(scope="module")
def unet():
    from segkit.models.registry import build_model

    import keras

    keras.utils.set_random_seed(0)
    return build_model({"name": "unet", "depth": 2, "base_filters": 4}, (32, 32, 4), 1,
                       normalisation=([1 / 65535] * 4, [0.0] * 4))


def test_one_tile_is_plain_inference(unet):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60000, size=(32, 32, 4), dtype=np.uint16)
    tta = ["identity", "hflip", "rot90"]
    plain = sk.Ensemble([unet], tta).predict(image)
    tiled = sk.Ensemble([unet], tta, tiling={"tile": 32, "overlap": 0.25}).predict(image)
    np.testing.assert_allclose(tiled, plain, atol=1e-6)
    assert np.abs(tiled - plain).max() == 0  # the same forward passes, weight 1 on a single window


def test_tiled_ensemble_at_any_size_and_the_step_check(unet):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 60000, size=(70, 45, 4), dtype=np.uint16)
    ens = sk.Ensemble([unet, unet], ["identity", "vflip"], batch_size=3, weights=[1.0, 2.0],
                      tiling=TilingConfig(tile=32, overlap=0.5))
    p = ens.predict(image)
    assert p.shape == (70, 45, 1) and p.dtype == np.float32 and 0 <= p.min() <= p.max() <= 1
    np.testing.assert_allclose(ens.predict(np.stack([image, image]))[1], p, atol=1e-6)
    assert [q.shape for q in ens.iter_predict(im for im in (image, image[:20, :40]))] == [(70, 45, 1), (20, 40, 1)]
    step = 4  # U-Net depth 2
    for tile in (2, 30):
        with pytest.raises(ConfigError, match=rf"^predict\.tiling\.tile: must be an integer ≥ the models' size "
                                              rf"step {step} and a multiple of it"):
            sk.Ensemble([unet], tiling={"tile": tile})
    with pytest.raises(ConfigError, match=r"^predict\.tiling\.blend"):
        sk.Ensemble([unet], tiling={"tile": 32, "blend": "cosine"})


def test_constant_keras_model_is_seamless_through_the_ensemble():
    """A real Keras model whose output is constant (zero kernel, bias b: sigmoid(b) everywhere), through
    predict_ensemble with TTA and two scales: the blended image has no seams."""
    import keras

    inp = keras.Input((32, 32, 3))
    out = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid", kernel_initializer="zeros",
                              bias_initializer=keras.initializers.Constant(0.3))(inp)
    model = keras.Model(inp, out)
    image = np.random.default_rng(2).integers(0, 255, size=(150, 97, 3), dtype=np.uint8)
    ens = sk.Ensemble([model], ["identity", "hflip"], batch_size=5, scales=[1.0, 1.5],
                      normalise=lambda im: im.astype(np.float32) / 255, tiling={"tile": 32, "overlap": 0.25})
    p = ens.predict(image)
    expected = np.float32(1 / (1 + np.exp(-0.3)))
    assert p.shape == (150, 97, 1) and np.abs(p - expected).max() < 1e-6


# --- `segkit predict` with predict.tiling (a tiny trained run) -------------------------------------------

@pytest.fixture(scope="module")
def cloud_run(tmp_path_factory):
    """A tiny 38-Cloud run on synthetic 32-px patches (scenes of 3-4 x 3-4 patches), trained at 32 px."""
    tmp = tmp_path_factory.mktemp("tiled")
    root = sk.synth("cloud38", tmp / "data", seed=5, patch_size=32, n_train_scenes=3, n_test_scenes=2, quiet=True)
    run = sk.Run("demo", ["predict.tta=[identity,hflip]"], quiet=True,
                 data={"root": root, "image_size": 32, "cache_dir": tmp / "cache", "options": {"stratify": False}},
                 models=[{"name": "unet", "tag": "unet", "depth": 2, "base_filters": 4}],
                 postprocess={"tune": False, "threshold": 0.5},
                 train={"folds": 2, "epochs": 1, "batch_size": 16, "workers": 1, "early_stopping_patience": 50})
    run.config.output.runs_dir, run.config.output.submissions_dir = str(tmp / "runs"), str(tmp / "subs")
    run.fit()
    return run, tmp


def _rows(path):
    return dict(line.split(",", 1) for line in path.read_text().splitlines()[1:])


@pytest.mark.slow  # trains a tiny run (~1-2 min on 2 shared CPUs)
def test_predict_tiles_whole_scenes_and_writes_the_patch_grid(cloud_run):
    from segkit.pipeline import predict
    from segkit.scene_eval import evaluate_submission

    run, tmp = cloud_run
    cfg = run.config
    plain = predict(cfg, quiet=True, out=tmp / "plain.csv")
    # windows of exactly one patch, no overlap: the scene grid gives back the patch-by-patch prediction
    same = predict(sk.load_config(cfg, ["predict.tiling={tile: 32, overlap: 0}"]), quiet=True, out=tmp / "t0.csv")
    assert _rows(same) == _rows(plain)
    tiled = predict(sk.load_config(cfg, ["predict.tiling={tile: 64, overlap: 0.5}"]), quiet=True,
                    out=tmp / "t1.csv")
    rows, ref = _rows(tiled), _rows(plain)
    assert list(rows) == list(ref) and rows != ref  # the same patches in scene order, other masks
    assert run.validate(tiled) == []
    adapter = run.adapter
    report = evaluate_submission(tiled, adapter.scene_gt_dir(), patch_size=32, previews=False, quiet=True)
    assert len(report.scenes) == 2 and 0 <= report.pooled["jaccard"] <= 100
    with pytest.raises(ConfigError, match=r"^predict\.tiling\.tile: must be an integer ≥ the models' size step 4"):
        predict(sk.load_config(cfg, ["predict.tiling.tile=30"]), quiet=True, out=tmp / "bad.csv")
    assert not (tmp / "bad.csv").exists()


def test_folder_adapter_predicts_large_test_images_one_at_a_time(tmp_path, unet):
    """The folder adapter's test images (of any size) as canvases read when their first window is and dropped
    after their last, through the ensemble at their stored size."""
    import cv2

    from segkit.data.competitions.base import make_adapter
    from segkit.predict import predict_tiled

    rng = np.random.default_rng(3)
    for sub in ("images", "masks", "test"):
        (tmp_path / sub).mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), rng.integers(0, 255, (32, 32, 4), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), (rng.random((32, 32)) > 0.5).astype(np.uint8))
    sizes = {"big1": (260, 150), "big2": (90, 200)}
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(tmp_path / "test" / f"{name}.png"), rng.integers(0, 255, (h, w, 4), dtype=np.uint8))
    adapter = make_adapter("folder", tmp_path)
    samples = adapter.test_samples()
    canvases = adapter.tiling_canvases(samples)
    assert [c.shape for c in canvases] == [sizes[s.id] for s in samples]
    held = []
    parts = predict_tiled([unet], canvases, adapter.normalise, ["identity", "hflip"], 4,
                          TilingConfig(tile=64, overlap=0.25), quiet=True)
    for part in parts:
        held.append([c._image is not None for c in canvases])  # which images are in memory
        assert part.probs.shape == (*sizes[samples[part.index].id], 1)
        plain = sk.Ensemble([unet], ["identity", "hflip"], tiling={"tile": 64, "overlap": 0.25}).predict(
            adapter.read_image(samples[part.index]))
        np.testing.assert_allclose(part.probs, plain, atol=1e-5)
    assert held == [[False, True], [False, True]]  # the first dropped once the second was read
    assert not any(c._image is not None for c in canvases)  # and the last when done


def test_a_tile_larger_than_the_training_size_is_warned_once(unet, capsys, monkeypatch):
    """`predict.tiling` with a tile larger than the models' training size ran silently (the README warns)."""
    monkeypatch.setattr(tl, "_NOTED", set())  # what earlier tests had said
    image = np.random.default_rng(3).integers(0, 60000, size=(70, 45, 4), dtype=np.uint16)
    sk.Ensemble([unet], ["identity"], tiling={"tile": 32}).predict(image)
    assert "warning" not in capsys.readouterr().err  # the training size itself: fine
    ens = sk.Ensemble([unet], ["identity"], tiling={"tile": 64})
    assert ens.predict(image).shape == (70, 45, 1)
    ens.predict(image)
    err = capsys.readouterr().err
    assert err.count("segkit: warning: predict.tiling.tile 64 is larger than the 32x32 the models were trained "
                     "at") == 1
