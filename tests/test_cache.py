"""Cache: decoded once, exact values, resizing, reuse, atomic build, bad input."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import segkit.data.cache as cache_mod
from segkit.data.cache import Cache, prepare, resize_mask
from segkit.data.competitions.base import make_adapter
from segkit.data.io import write_tiff
from segkit.data.synth.cloud38 import generate
from segkit.errors import DataError


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("cache") / "d", seed=2, patch_size=32, n_train_scenes=2,
                    n_test_scenes=1, scene_patches=(3.0, 4.0))


@pytest.fixture()
def adapter(root: Path):
    return make_adapter("cloud38", root, {"stratify": False})


def test_cache_holds_exact_raw_arrays(adapter, tmp_path: Path) -> None:
    samples = adapter.train_samples()
    cache = prepare(adapter, samples, (32, 32), tmp_path, "train", quiet=True)
    assert len(cache) == len(samples) and cache.ids == [s.id for s in samples]
    assert cache.images.shape == (len(samples), 32, 32, 4) and cache.images.dtype == np.uint16
    assert cache.masks.shape == (len(samples), 32, 32, 1) and cache.masks.dtype == np.uint8
    assert isinstance(cache.images, np.memmap)
    for i in (0, len(samples) - 1):
        np.testing.assert_array_equal(cache.images[i], adapter.read_image(samples[i]))
        np.testing.assert_array_equal(cache.masks[i], adapter.read_mask(samples[i]))
    reopened = Cache.open(tmp_path / "train")
    np.testing.assert_array_equal(reopened.images, cache.images)


def test_pickles_as_a_path_not_a_copy(adapter, tmp_path: Path) -> None:
    import pickle

    cache = prepare(adapter, adapter.train_samples(), (32, 32), tmp_path, "p", quiet=True)
    blob = pickle.dumps(cache)
    assert len(blob) < 10_000 < cache.images.nbytes
    clone = pickle.loads(blob)
    assert isinstance(clone.images, np.memmap) and clone.ids == cache.ids
    np.testing.assert_array_equal(clone.masks, cache.masks)


def test_test_cache_has_no_masks(adapter, tmp_path: Path) -> None:
    cache = prepare(adapter, adapter.test_samples(), (32, 32), tmp_path, "test", quiet=True)
    assert cache.masks is None and cache.meta["with_masks"] is False
    assert not (tmp_path / "test" / "masks.npy").exists()


def test_resize_keeps_dtype_and_masks_binary(adapter, tmp_path: Path) -> None:
    samples = adapter.train_samples()
    cache = prepare(adapter, samples, (20, 24), tmp_path, "small", quiet=True)
    assert cache.images.shape[1:] == (20, 24, 4) and cache.images.dtype == np.uint16
    assert set(np.unique(cache.masks)) <= {0, 1}
    mask = np.zeros((4, 4, 1), np.uint8)
    mask[:2, :2] = 1
    big = resize_mask(mask, (8, 8))
    assert big.shape == (8, 8, 1) and big[:4, :4].all() and not big[4:].any() and not big[:, 4:].any()


def test_reuse_and_rebuild(adapter, tmp_path: Path, monkeypatch) -> None:
    samples = adapter.train_samples()
    first = prepare(adapter, samples, (32, 32), tmp_path, "t", quiet=True)
    calls = []
    real_fill = cache_mod._fill
    monkeypatch.setattr(cache_mod, "_fill", lambda *a, **k: (calls.append(1), real_fill(*a, **k)))
    again = prepare(adapter, samples, (32, 32), tmp_path, "t", quiet=True)
    assert calls == [] and again.meta["fingerprint"] == first.meta["fingerprint"]
    smaller = prepare(adapter, samples[:-1], (32, 32), tmp_path, "t", quiet=True)  # other source list: rebuilt
    assert calls == [1] and len(smaller) == len(samples) - 1
    prepare(adapter, samples[:-1], (16, 16), tmp_path, "t", quiet=True)  # other size: rebuilt
    assert calls == [1, 1]
    gt = Path(samples[0].mask[0])
    os.utime(gt, ns=(gt.stat().st_atime_ns, gt.stat().st_mtime_ns + 10**9))  # a source file rewritten
    prepare(adapter, samples[:-1], (16, 16), tmp_path, "t", quiet=True)
    assert calls == [1, 1, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # no temporary folders left behind


def test_interrupted_prepare_leaves_no_cache(adapter, tmp_path: Path, monkeypatch) -> None:
    samples = adapter.train_samples()
    original = adapter.read_image
    count = {"n": 0}

    def flaky(sample):
        count["n"] += 1
        if count["n"] == 2:
            raise KeyboardInterrupt
        return original(sample)

    monkeypatch.setattr(adapter, "read_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare(adapter, samples, (32, 32), tmp_path, "t", quiet=True, workers=1)
    assert not (tmp_path / "t").exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="no complete cache"):
        Cache.open(tmp_path / "t")
    monkeypatch.setattr(adapter, "read_image", original)
    assert len(prepare(adapter, samples, (32, 32), tmp_path, "t", quiet=True)) == len(samples)


def test_failed_rebuild_keeps_the_previous_cache(adapter, root: Path, tmp_path: Path) -> None:
    samples = adapter.train_samples()
    prepare(adapter, samples, (32, 32), tmp_path, "t", quiet=True)
    bad = samples[-1]
    data = Path(bad.mask[0]).read_bytes()
    try:
        write_tiff(Path(bad.mask[0]), np.zeros((31, 32), np.uint8))
        with pytest.raises(DataError, match=Path(bad.mask[0]).name):
            prepare(adapter, samples, (16, 16), tmp_path, "t", quiet=True)
    finally:
        Path(bad.mask[0]).write_bytes(data)
    kept = Cache.open(tmp_path / "t")
    assert kept.image_size == (32, 32) and len(kept) == len(samples)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_empty_sample_list(adapter, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty"):
        prepare(adapter, [], (32, 32), tmp_path, "t")


def test_damaged_metadata(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="meta.json"):
        Cache.open(tmp_path / "c")
    assert os.path.isdir(tmp_path / "c")
