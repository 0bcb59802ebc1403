"""SegmentationDataset + augmentations: shapes, raw float32 values, alignment under every augmentation,
per-epoch variation, reproducibility, and a real Keras fit with worker threads."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi

from segkit.config import AugmentConfig
from segkit.data import augment
from segkit.data.cache import prepare
from segkit.data.competitions.base import make_adapter
from segkit.data.competitions.cloud38 import read_patch_list
from segkit.data.generator import SegmentationDataset
from segkit.data.io import write_tiff
from segkit.data.synth.cloud38 import generate

P = 32
LOW, HIGH = 10000, 50000  # NIR level of clear / cloudy pixels in the alignment data


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """Real TIFF patches whose NIR band is the mask in disguise (HIGH where cloud, LOW elsewhere) and whose
    other bands are random texture, so any misalignment of image and mask shows."""
    root = generate(tmp_path_factory.mktemp("gen") / "d", seed=9, patch_size=P, n_train_scenes=2,
                    n_test_scenes=1, scene_patches=(3.0, 3.6))
    rng = np.random.default_rng(0)
    train = root / "38-Cloud_training"
    for name in read_patch_list(root / "training_patches_38-cloud_nonempty.csv"):
        gt = np.zeros((P, P), np.uint8)
        for _ in range(3):  # asymmetric blobs so every flip and rotation changes the mask
            y, x = rng.integers(0, P - 8, 2)
            gt[y: y + rng.integers(3, 10), x: x + rng.integers(3, 14)] = 255
        write_tiff(train / "train_gt" / f"gt_{name}.TIF", gt)
        write_tiff(train / "train_nir" / f"nir_{name}.TIF", np.where(gt > 0, HIGH, LOW).astype(np.uint16))
        for b in ("red", "green", "blue"):
            write_tiff(train / f"train_{b}" / f"{b}_{name}.TIF", rng.integers(1000, 30000, (P, P), dtype=np.uint16))
    adapter = make_adapter("cloud38", root)
    cache = prepare(adapter, adapter.train_samples(), (P, P), tmp_path_factory.mktemp("cache"), "t", quiet=True)
    return adapter, cache


def only(name: str) -> AugmentConfig:
    """An AugmentConfig with just `name` switched on, always applied."""
    return AugmentConfig(**{f.name: (1.0 if f.name == name else 0.0) for f in dataclasses.fields(AugmentConfig)})


def batches(ds):
    return [ds[i] for i in range(len(ds))]


def test_plain_batches_are_raw_cache_items_as_float32(aligned) -> None:
    """The model normalises its input itself, so batches carry the raw 16-bit values, exactly, as float32."""
    adapter, cache = aligned
    ds = SegmentationDataset(cache, np.arange(len(cache)), 3)
    x, y = ds[0]
    assert x.shape == (3, P, P, 4) and x.dtype == np.float32 and y.shape == (3, P, P, 1) and y.dtype == np.float32
    assert cache.images.dtype == np.uint16 and x.max() > 1000
    np.testing.assert_array_equal(x[1], cache.images[1].astype(np.float32))
    np.testing.assert_array_equal(y[1], cache.masks[1])
    assert len(ds) == -(-len(cache) // 3) and len(ds[len(ds) - 1][0]) == len(cache) - 3 * (len(ds) - 1)
    xt = SegmentationDataset(cache, [2, 0], 4, with_masks=False)[0]
    assert isinstance(xt, np.ndarray) and xt.shape == (2, P, P, 4)
    np.testing.assert_array_equal(xt[0], cache.images[2])


@pytest.mark.parametrize("name", augment.AUGMENTATIONS + ("all_geometric",))
def test_image_and_mask_stay_aligned(aligned, name: str) -> None:
    """Each augmentation alone (always applied), then every geometric one together at the default odds
    (brightness/contrast would move the NIR levels this check reads; alone it must leave the mask be)."""
    adapter, cache = aligned
    cfg = dataclasses.replace(AugmentConfig(), brightness_contrast=0.0) if name == "all_geometric" else only(name)
    ds = SegmentationDataset(cache, np.arange(len(cache)), 4, augment=cfg, seed=3)
    changed = 0
    for epoch in range(3):
        ds.epoch = epoch
        for b, (x, y) in enumerate(batches(ds)):
            assert x.shape[1:] == (P, P, 4) and y.shape[1:] == (P, P, 1)
            assert set(np.unique(y)) <= {0.0, 1.0}
            items = ds.order(epoch)[b * 4: b * 4 + len(x)]
            for xi, yi, i in zip(x, y, items):
                nir, mask = xi[..., 3], yi[..., 0]
                if name == "brightness_contrast":  # photometric only: the mask must not move at all
                    np.testing.assert_array_equal(mask, cache.masks[i][..., 0])
                    changed += not np.allclose(xi, cache.images[i])
                    continue
                # NIR is LOW/HIGH inside the image and 0 in the fill; with a linear image and nearest mask
                # interpolation, a pixel mostly (> 80 %) HIGH must be cloud and mostly LOW must not be,
                # away from the zero fill (whose blend with LOW mimics a cloud-free value)
                frac = (nir - LOW) / (HIGH - LOW)
                near_fill = ndi.binary_dilation(nir < LOW * 0.7)
                sure_cloud, sure_clear = (frac > 0.8) & ~near_fill, (frac < 0.2) & ~near_fill
                assert np.all(mask[sure_cloud] == 1) and np.all(mask[sure_clear] == 0)
                if name not in ("shift_scale_rotate", "all_geometric"):  # exact geometry: the image still encodes the mask exactly
                    np.testing.assert_array_equal(mask, (nir > (LOW + HIGH) / 2).astype(np.float32))
                else:
                    assert (sure_cloud | sure_clear).mean() > 0.6
                changed += not np.array_equal(mask, cache.masks[i][..., 0])
    assert changed > 0  # the augmentation really did something


def test_fill_outside_is_zero_for_image_and_mask(aligned) -> None:
    adapter, cache = aligned
    cfg = only("shift_scale_rotate")
    ds = SegmentationDataset(cache, np.arange(len(cache)), len(cache), augment=cfg, seed=1)
    x, y = ds[0]
    outside = x.max(-1) == 0
    assert outside.any() and np.all(y[..., 0][outside] == 0)


def test_different_per_epoch_reproducible_per_seed(aligned) -> None:
    adapter, cache = aligned
    make = lambda seed: SegmentationDataset(cache, np.arange(len(cache)), 2,  # noqa: E731
                                            augment=AugmentConfig(), shuffle=True, seed=seed)
    a, b, c = make(5), make(5), make(6)
    first = batches(a)
    # the same seed gives the same batches even when fetched in another order (as worker threads do)
    b_backwards = {i: b[i] for i in reversed(range(len(b)))}
    for i, (xa, ya) in enumerate(first):
        np.testing.assert_array_equal(xa, b_backwards[i][0])
        np.testing.assert_array_equal(ya, b_backwards[i][1])
    assert not all(np.array_equal(p[0], q[0]) for p, q in zip(first, batches(c)))  # another seed differs
    a.on_epoch_end()
    second = batches(a)
    assert not np.array_equal(a.order(0), a.order(1))  # a new order every epoch
    assert not all(np.array_equal(p[0], q[0]) for p, q in zip(first, second))
    b.on_epoch_end()
    for (xa, _), (xb, _) in zip(second, batches(b)):  # and epoch 1 is reproducible too
        np.testing.assert_array_equal(xa, xb)


def test_build_returns_none_when_everything_is_off() -> None:
    off = AugmentConfig(**{f.name: 0.0 for f in dataclasses.fields(AugmentConfig)})
    assert augment.build(off) is None and augment.build(None) is None
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment.transform("zoom", 1.0)


def test_safe_for_four_band_float_and_uint16_input() -> None:
    rng = np.random.default_rng(0)
    pipe = augment.build(AugmentConfig(1.0, 1.0, 1.0, 1.0, 1.0), seed=0)
    image = rng.uniform(-2.0, 3.0, (P, P, 4)).astype(np.float32)
    out = pipe(image=image, mask=np.ones((P, P, 1), np.uint8))
    assert out["image"].shape == (P, P, 4) and out["image"].dtype == np.float32
    assert out["mask"].shape == (P, P, 1) and out["mask"].dtype == np.uint8
    # brightness/contrast alone is an affine map of the values, never clipped to [0, 1]
    bc = augment.transform("brightness_contrast", 1.0)
    for seed in range(5):
        bc.set_random_seed(seed) if hasattr(bc, "set_random_seed") else None
        got = bc(image=image)["image"]
        slope, offset = np.polyfit(image.ravel(), got.ravel(), 1)
        np.testing.assert_allclose(got, slope * image + offset, atol=1e-4)
        assert 0.9 - 1e-6 <= slope <= 1.1 + 1e-6 and got.min() < -1.5 and got.max() > 2.5
    raw = rng.integers(60000, 65535, (P, P, 4), dtype=np.uint16)
    raw[:4] = 0  # no-data rows
    for seed in range(5):
        bc.set_random_seed(seed) if hasattr(bc, "set_random_seed") else None
        got = bc(image=raw)["image"]
        assert got.dtype == np.uint16 and not got[:4].any() and got[4:].min() > 0


def test_keras_fit_with_worker_threads(aligned) -> None:
    import keras

    adapter, cache = aligned
    keras.utils.set_random_seed(0)
    from segkit.models.layers import InputNormalisation

    inp = keras.Input((P, P, 4))
    x = InputNormalisation(*adapter.input_normalisation(cache.images.dtype))(inp)
    model = keras.Model(inp, keras.layers.Conv2D(1, 1, activation="sigmoid")(x))
    model.compile("adam", "binary_crossentropy")
    ds = SegmentationDataset(cache, np.arange(len(cache)), 2, augment=AugmentConfig(), shuffle=True, seed=0,
                             workers=2)
    history = model.fit(ds, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    assert ds.epoch >= 1


def test_tf_data_feed_serves_the_same_batches_and_advances_epochs(aligned) -> None:
    adapter, cache = aligned
    ds = SegmentationDataset(cache, np.arange(len(cache)), 4, augment=AugmentConfig(), shuffle=True, seed=5)
    feed = ds.as_tf_dataset(parallel_calls=2)
    epoch0 = [(x.numpy(), y.numpy()) for x, y in feed]
    expected0 = [ds.batch(i, 0) for i in range(len(ds))]
    assert len(epoch0) == len(expected0)
    for (x, y), (ex, ey) in zip(epoch0, expected0):
        assert np.array_equal(x, ex) and np.array_equal(y, ey)
    ds.epoch_callback().on_epoch_end(0)
    epoch1 = [x.numpy() for x, _ in feed]
    assert ds.epoch == 1
    assert all(np.array_equal(a, ds.batch(i, 1)[0]) for i, a in enumerate(epoch1))
    assert not all(np.array_equal(a, b[0]) for a, b in zip(epoch1, epoch0))
