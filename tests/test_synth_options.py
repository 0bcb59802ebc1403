"""Benchmark options of the synthetic Airbus and Understanding Clouds data: the share of empty images and small
faint objects, in the real file layout (read back through the competition adapters)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from segkit import rle
from segkit.cli import main
from segkit.data.competitions.base import make_adapter
from segkit.data.synth import generate
from segkit.data.synth.shapes import MARKER
from segkit.errors import ConfigError


def _masks_and_images(name: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
    adapter = make_adapter(name, root)
    samples = adapter.train_samples()
    masks = np.stack([adapter.read_mask(s) for s in samples])
    images = np.stack([adapter.read_image(s) for s in samples]).astype(np.float64).mean(-1)
    return masks, images


def _contrast(masks: np.ndarray, images: np.ndarray) -> tuple[float, float]:
    """(mean object brightness over a 3-pixel ring of background around it, mean object area) over the objects."""
    gaps, areas = [], []
    for m, im in zip(masks, images):
        for c in range(m.shape[-1]):
            lab, n = ndimage.label(m[..., c])
            for k in range(1, n + 1):
                obj = lab == k
                ring = ndimage.binary_dilation(obj, iterations=3) & ~m.any(-1).astype(bool) & (im > 5)
                if ring.any():
                    gaps.append(im[obj].mean() - im[ring].mean())
                    areas.append(obj.sum())
    return float(np.mean(gaps)), float(np.mean(areas))


def test_airbus_empty_fraction_and_faint_ships(tmp_path):
    root = generate("airbus", tmp_path / "a", seed=5, image_size=64, n_train=160, n_test=2, ship_free=0.6,
                    faint=1.0, quiet=True)
    masks, images = _masks_and_images("airbus", root)
    empty = ~masks.reshape(len(masks), -1).any(1)
    assert len(masks) == 160 and abs(empty.mean() - 0.6) < 0.1  # binomial sd ≈ 0.04
    bright = generate("airbus", tmp_path / "b", seed=5, image_size=64, n_train=160, n_test=2, ship_free=0.6,
                      quiet=True)
    faint_gap, faint_area = _contrast(*_masks_and_images("airbus", root))
    bright_gap, bright_area = _contrast(*_masks_and_images("airbus", bright))
    assert 10 < faint_gap < 50 < 100 < bright_gap
    assert faint_area < bright_area / 2


def test_airbus_clutter(tmp_path):
    """Clutter (whitecaps, cloud veils, coasts) brightens ship-free sea in most cluttered images, never touches a
    ship's mask or its 3-pixel ring (bar a thinned cloud veil), and without the option nothing bright lies off
    the ships; the ships in the CSV stay exact components."""
    kw = dict(seed=4, image_size=64, n_train=60, n_test=1, ship_free=0.5, quiet=True)
    clean = generate("airbus", tmp_path / "clean", **kw)
    busy = generate("airbus", tmp_path / "busy", clutter=1.0, **kw)
    assert json.loads((busy / MARKER).read_text())["clutter"] == 1.0
    assert "clutter" not in json.loads((clean / MARKER).read_text())

    def bright_off_ships(root):
        masks, images = _masks_and_images("airbus", root)
        away = [~ndimage.binary_dilation(m[..., 0] > 0, iterations=4) for m in masks]
        return np.array([(im[a] > 100).sum() for im, a in zip(images, away)]), masks

    clean_bright, _ = bright_off_ships(clean)
    busy_bright, masks = bright_off_ships(busy)
    assert (clean_bright == 0).all()
    assert (busy_bright > 0).mean() > 0.6  # a thin cloud veil or a few dim whitecaps may stay under 100
    assert (masks.reshape(len(masks), -1).max(1) == 0).mean() > 0.3  # ship-free images are still there
    rows = pd.read_csv(busy / "train_ship_segmentations_v2.csv").dropna()
    assert len(rows) > 20
    for encoded in rows["EncodedPixels"]:
        assert ndimage.label(rle.decode(encoded, (64, 64), order="F"))[1] == 1
    with pytest.raises(ConfigError, match="clutter"):
        generate("airbus", tmp_path / "bad", clutter=2.0, quiet=True)


def test_clouds_empty_fraction_and_faint_regions(tmp_path):
    root = generate("clouds", tmp_path / "c", seed=2, image_size=(32, 48), n_train=160, n_test=2,
                    empty_fraction=0.6, faint=1.0, quiet=True)
    masks, images = _masks_and_images("clouds", root)
    empty = ~masks.reshape(len(masks), -1).any(1)
    assert masks.shape[1:] == (32, 48, 4) and abs(empty.mean() - 0.6) < 0.1
    assert (~masks.reshape(len(masks), -1, 4).any(1)).mean() > 0.8  # each label missing from most images
    plain = generate("clouds", tmp_path / "d", seed=2, image_size=(32, 48), n_train=160, n_test=2,
                     empty_fraction=0.6, quiet=True)
    faint_gap, faint_area = _contrast(*_masks_and_images("clouds", root))
    plain_gap, plain_area = _contrast(*_masks_and_images("clouds", plain))
    assert 0 < faint_gap < plain_gap / 2 and faint_area < plain_area / 2


def test_defaults_unchanged_and_bad_values_refused(tmp_path):
    """Without the options the data and the reuse marker are those of earlier versions."""
    root = generate("clouds", tmp_path / "e", seed=1, image_size=(32, 48), n_train=4, n_test=1, quiet=True)
    assert set(json.loads((root / MARKER).read_text())) == {"generator", "version", "seed", "image_size",
                                                            "n_train", "n_test"}
    same = generate("clouds", tmp_path / "f", seed=1, image_size=(32, 48), n_train=4, n_test=1, faint=0.0,
                    quiet=True)
    assert (root / "train.csv").read_bytes() == (same / "train.csv").read_bytes()
    with pytest.raises(ConfigError, match="faint"):
        generate("airbus", tmp_path / "g", faint=1.5, quiet=True)
    with pytest.raises(ConfigError, match="empty_fraction"):
        generate("clouds", tmp_path / "h", empty_fraction=1.0, quiet=True)


def test_cli_options(tmp_path, capsys):
    out = tmp_path / "air"
    assert main(["-q", "synth", "airbus", "--out", str(out), "--n-train", "40", "--n-test", "3",
                 "--empty-fraction", "0.7", "--faint", "0.5", "--clutter", "0.4", "--patch-size", "32"]) == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker["ship_free"] == 0.7 and marker["faint"] == 0.5 and marker["clutter"] == 0.4
    assert marker["n_train"] == 40
    assert len(make_adapter("airbus", out).train_samples()) == 40
    assert main(["synth", "cloud38", "--out", str(tmp_path / "c38"), "--faint", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "takes no --faint" in err and "Traceback" not in err
