"""Airbus adapter and generator: real ship rows, union masks with touching ships kept apart, one row per ship."""
import numpy as np
import pandas as pd
import pytest

from segkit import rle
from segkit.data.competitions.airbus import separate_touching
from segkit.data.competitions.base import make_adapter
from segkit.data.synth import generate
from segkit.evaluate import airbus_score, label_objects
from segkit.data.competitions.base import validate_submission
from segkit.submission import write_rows

REAL_WITH_IMAGES = ("0a0df8299.jpg", "0a1a58833.jpg", "0a1b7d6ec.jpg")


@pytest.fixture(scope="module")
def real_csv(fixtures_dir):
    return pd.read_csv(fixtures_dir / "airbus" / "train_ship_segmentations_v2_subset.csv")


@pytest.fixture()
def real_root(fixtures_dir, real_csv, tmp_path):
    """The three real images (linked) with their real CSV rows, plus the four real ship-free rows."""
    (tmp_path / "train_v2").mkdir()
    for name in REAL_WITH_IMAGES:
        (tmp_path / "train_v2" / name).symlink_to(fixtures_dir / "airbus" / name)
    empty = ["0a00a69de.jpg", "0a0a623a0.jpg", "0a0ada7e3.jpg", "0a0aeea56.jpg"]
    for name in empty:  # ship-free images: any 768x768 JPEG will do for listing
        (tmp_path / "train_v2" / name).symlink_to(fixtures_dir / "airbus" / REAL_WITH_IMAGES[0])
    rows = real_csv[real_csv["ImageId"].isin(REAL_WITH_IMAGES + tuple(empty))]
    rows.to_csv(tmp_path / "train_ship_segmentations_v2.csv", index=False)
    return tmp_path


def test_real_rows_union_and_strata(real_root, real_csv):
    adapter = make_adapter("airbus", real_root, {"separate_ships": False})
    samples = {s.id: s for s in adapter.train_samples()}
    assert len(samples) == 7
    assert samples["0a0df8299.jpg"].stratum == 2 and samples["0a1b7d6ec.jpg"].stratum == 1
    assert samples["0a00a69de.jpg"].stratum == 0 and samples["0a00a69de.jpg"].meta["rle"] == ()
    for name in REAL_WITH_IMAGES:
        mask = adapter.read_mask(samples[name])
        assert mask.shape == (768, 768, 1)
        ships = [rle.decode(t, (768, 768)) for t in real_csv.loc[real_csv["ImageId"] == name, "EncodedPixels"]]
        np.testing.assert_array_equal(mask[..., 0], np.bitwise_or.reduce(ships))
    assert not adapter.read_mask(samples["0a00a69de.jpg"]).any()


def f2_of_the_union(ships: list[np.ndarray]) -> float:
    """Airbus F2 of predicting the union of `ships` as one mask, worked out without the Hungarian matching: the
    predicted objects are the union's 8-connected components; at a threshold t ≥ 0.5 a ship and a component with
    IoU > t cover more than half of each other's union, so each has at most one such partner and these pairs
    are the matches. IoU > k/20 is counted exactly in integers (20 · inter > k · union); the other components are
    false positives, unmatched ships false negatives."""
    from scipy import ndimage

    if not ships:
        return 1.0  # no ship, no prediction
    comp, n = ndimage.label(np.any(ships, axis=0), structure=np.ones((3, 3)))
    area = np.bincount(comp.ravel(), minlength=n + 1)[1:]
    inter = np.stack([np.bincount(comp[s > 0], minlength=n + 1)[1:] for s in ships])  # (ships, components)
    union = np.array([np.count_nonzero(s) for s in ships])[:, None] + area[None, :] - inter
    scores = []
    for k in range(10, 20):
        tp = int(np.count_nonzero(20 * inter > k * union))
        scores.append(5 * tp / (5 * tp + 4 * (len(ships) - tp) + (n - tp)))
    return float(np.mean(scores))


def test_touching_ships_are_kept_apart(real_csv):
    """Real ships lie side by side: components of the plain union merge them, the separated union does not."""
    truth, plain, separated = [], [], []
    for image, rows in real_csv.groupby("ImageId", sort=False):
        ships = [rle.decode(t, (768, 768)) for t in rows["EncodedPixels"].dropna()]
        labels = np.zeros((768, 768), np.int32)
        for k, s in enumerate(ships, start=1):
            labels[s > 0] = k
        truth.append(ships)
        plain.append((labels > 0).astype(np.uint8))
        separated.append(separate_touching(labels))
        if ships:
            assert separated[-1].sum() > 0.8 * plain[-1].sum()
    assert airbus_score(truth, plain) == pytest.approx(np.mean([f2_of_the_union(t) for t in truth]), abs=1e-12)
    assert airbus_score(truth, plain) < 0.9  # merging costs here, else the case says nothing
    assert airbus_score(truth, separated) > 0.95
    two = np.zeros((6, 6), np.int32)
    two[1:4, 0:2], two[1:4, 2:4] = 1, 2  # side by side
    assert label_objects(separate_touching(two)).max() == 2
    assert label_objects(two > 0).max() == 1


def test_submission_one_row_per_ship_round_trip(real_root, real_csv, tmp_path):
    """The ships of 0a1b7d6ec and one synthetic image go through submission_rows and back exactly."""
    adapter = make_adapter("airbus", real_root)
    sample = next(s for s in adapter.train_samples() if s.id == "0a1b7d6ec.jpg")
    text = real_csv.loc[real_csv["ImageId"] == "0a1b7d6ec.jpg", "EncodedPixels"].item()
    rows = list(adapter.submission_rows(sample, adapter.read_mask(sample)))
    assert rows == [("0a1b7d6ec.jpg", text)]
    empty = next(s for s in adapter.train_samples() if s.id == "0a00a69de.jpg")
    assert list(adapter.submission_rows(empty, np.zeros((768, 768, 1), np.uint8))) == [("0a00a69de.jpg", "")]
    many = np.zeros((768, 768, 1), np.uint8)
    many[10:20, 10:40] = many[100:130, 5:9] = many[700:768, 700:768] = 1
    many[50, 50] = many[51, 51] = 1  # diagonal neighbours: one ship
    rows = list(adapter.submission_rows(sample, many))
    assert len(rows) == 4
    decoded = [rle.decode(t, (768, 768), "F") for _, t in rows]
    np.testing.assert_array_equal(np.sum(decoded, axis=0), many[..., 0])  # disjoint, covering the mask
    path = tmp_path / "sub.csv"
    write_rows(path, adapter.submission_header, rows + [("0a00a69de.jpg", "")])
    assert validate_submission(path, "airbus") == []


def test_empty_fraction_keeps_a_stable_subset(real_root, fixtures_dir):
    none = make_adapter("airbus", real_root, {"empty_fraction": 0.0}).train_samples()
    assert sorted(s.id for s in none) == sorted(REAL_WITH_IMAGES)
    # 400 more ship-free images: about the fraction is kept, whatever the CSV order, a subset of any larger
    # fraction's; every image with ships always
    rows = pd.read_csv(real_root / "train_ship_segmentations_v2.csv")
    empty = [f"{i:05x}{i * 7919 % 4093:04x}.jpg" for i in range(400)]
    for name in empty:
        (real_root / "train_v2" / name).symlink_to(fixtures_dir / "airbus" / REAL_WITH_IMAGES[0])
    extra = pd.DataFrame({"ImageId": empty, "EncodedPixels": [None] * len(empty)})
    kept = {}
    for order in ("as is", "reversed"):
        table = pd.concat([rows, extra], ignore_index=True)
        table = table if order == "as is" else table.iloc[::-1]
        table.to_csv(real_root / "train_ship_segmentations_v2.csv", index=False)
        for f in (0.0, 0.25, 0.5, 0.75, 1.0):
            ids = {s.id for s in make_adapter("airbus", real_root, {"empty_fraction": f}).train_samples()}
            assert set(REAL_WITH_IMAGES) <= ids
            kept.setdefault(f, ids)
            assert ids == kept[f], (f, order)  # the same images, whatever the order of the rows
    shares = {f: len(kept[f] & set(empty)) / len(empty) for f in kept}
    assert shares[0.0] == 0 and shares[1.0] == 1
    for f in (0.25, 0.5, 0.75):
        assert abs(shares[f] - f) < 0.08, shares
    assert kept[0.0] <= kept[0.25] <= kept[0.5] <= kept[0.75] <= kept[1.0]


def test_synthetic_layout_and_full_submission(tmp_path):
    root = generate("airbus", tmp_path / "data", seed=4, image_size=48, n_train=12, n_test=4)
    adapter = make_adapter("airbus", root)
    samples = adapter.train_samples()
    table = pd.read_csv(root / "train_ship_segmentations_v2.csv")
    assert list(table.columns) == ["ImageId", "EncodedPixels"] and len(samples) == 12
    assert table["EncodedPixels"].isna().any() and table["ImageId"].duplicated().any()  # ship-free and multi-ship
    for s in samples:
        image, mask = adapter.read_image(s), adapter.read_mask(s)
        assert image.shape == (48, 48, 3) and mask.shape == (48, 48, 1)
        assert label_objects(mask[..., 0]).max() == len(s.meta["rle"])  # ships never touch
        if mask.any():
            grey = image.mean(axis=2)
            assert grey[mask[..., 0] > 0].mean() - grey[mask[..., 0] == 0].mean() > 80
    tests = adapter.test_samples()
    sample_csv = root / "sample_submission_v2.csv"
    rng = np.random.default_rng(1)
    rows = [r for s in tests for r in adapter.submission_rows(s, (rng.random((768, 768, 1)) < 0.001).astype(np.uint8))]
    path = tmp_path / "sub.csv"
    write_rows(path, adapter.submission_header, rows, sample_ids=[s.id for s in tests])
    assert validate_submission(path, "airbus", sample_csv) == []
