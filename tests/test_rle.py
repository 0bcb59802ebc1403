"""segkit.rle: round trips (property tests), malformed input, and real competition files in both orders."""
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from segkit import rle
from segkit.data.io import read_image
from segkit.errors import RLEError


def kaggle_encode(img: np.ndarray) -> str:
    """The encoder of the public Kaggle kernels (row-major over whatever array it is given)."""
    pixels = np.concatenate([[0], img.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


# --- property tests ---------------------------------------------------------------------------

shapes = st.tuples(st.integers(1, 24), st.integers(1, 24))
masks = shapes.flatmap(lambda s: arrays(np.uint8, s, elements=st.integers(0, 1)))


@settings(max_examples=150, deadline=None)
@given(mask=masks, order=st.sampled_from(["C", "F"]))
def test_round_trip_random_masks(mask, order):
    text = rle.encode(mask, order)
    out = rle.decode(text, mask.shape, order)
    assert out.dtype == np.uint8 and out.shape == mask.shape
    np.testing.assert_array_equal(out, mask)
    ref = kaggle_encode(mask if order == "C" else mask.T)
    assert text == ref


@settings(max_examples=60, deadline=None)
@given(shape=shapes, order=st.sampled_from(["C", "F"]), fill=st.sampled_from(["zeros", "ones", "first", "last", "row", "col"]))
def test_round_trip_edge_masks(shape, order, fill):
    h, w = shape
    mask = np.zeros(shape, np.uint8)
    if fill == "ones":
        mask[:] = 1
    elif fill == "first":
        mask[0, 0] = 1
    elif fill == "last":
        mask[-1, -1] = 1
    elif fill == "row":
        mask[h // 2, :] = 1  # one-pixel-wide horizontal line
    elif fill == "col":
        mask[:, w // 2] = 1  # one-pixel-wide vertical line
    text = rle.encode(mask, order)
    np.testing.assert_array_equal(rle.decode(text, shape, order), mask)
    if fill == "zeros":
        assert text == ""
    if fill == "ones":
        assert text == f"1 {h * w}"
    if fill == "first":
        assert text == "1 1"
    if fill == "last":
        assert text == f"{h * w} 1"


def test_encode_accepts_bool_and_non_binary():
    mask = np.array([[0, 3], [255, 0]], np.uint8)
    assert rle.encode(mask, "C") == "2 2"
    assert rle.encode(mask.astype(bool), "F") == "2 2"
    assert rle.encode(mask, "F") == rle.encode(mask.T, "C")


def test_empty_fields_decode_to_empty_mask():
    for empty in ("", "  ", "\r", None, float("nan"), np.nan):
        out = rle.decode(empty, (3, 4))
        assert out.shape == (3, 4) and not out.any()


def test_adjacent_runs_are_valid():
    np.testing.assert_array_equal(rle.decode("1 2 3 1", (1, 4), "C"), [[1, 1, 1, 0]])


@pytest.mark.parametrize(
    "text, words",
    [
        ("1", "odd number"),
        ("1 2 3", "odd number"),
        ("1 x", "'x' is not a whole number"),
        ("1.5 2", "'1.5' is not a whole number"),
        ("-1 2", "'-1' is not a whole number"),
        ("0 2", "start 0"),
        ("1 0", "length 0"),
        ("5 2 1 2", "out of order"),
        ("1 5 3 2", "overlaps"),
        ("1 3 3 1", "overlaps"),
        ("11 3", "past the image's 12 pixels"),
        ("12 2", "past the image's 12 pixels"),
        ("1 nan", "not a whole number"),
        ("99999999999999999999999 1", "too large"),
        ("1 ٣", "not a whole number"),
    ],
)
def test_malformed_rle_is_rejected_with_reason(text, words):
    with pytest.raises(RLEError, match=words):
        rle.decode(text, (3, 4))


def test_bad_arguments_are_rejected():
    with pytest.raises(RLEError, match="order"):
        rle.decode("1 1", (2, 2), order="X")
    with pytest.raises(RLEError, match="shape"):
        rle.decode("1 1", (0, 2))
    with pytest.raises(RLEError, match="2-D"):
        rle.encode(np.zeros((2, 2, 1)))
    with pytest.raises(RLEError, match="string"):
        rle.decode(5, (2, 2))


ASCII_SPACE = " \t\n\r\x0b\x0c"  # what separates RLE values; \x1c-\x1f (whitespace to str.split) do not


def reference_decode(text: str, shape: tuple[int, int], order: str):
    """The format's rules applied one by one in plain Python, independent of segkit.rle: (mask, None) for a
    valid RLE, else (None, the reasons it is invalid, as the words segkit's RLEError must use for one of them)."""
    h, w = shape
    if not text.strip():  # a blank field (what is_empty accepts)
        return np.zeros(shape, np.uint8), None
    tokens = [t for t in re.split(f"[{ASCII_SPACE}]+", text) if t]
    if not all(t.isascii() and t.isdigit() for t in tokens):
        return None, {"is not a whole number"}
    reasons = set()
    if any(len(t) > 18 for t in tokens):  # more digits than any pixel index of any image (int64) can have
        reasons.add("too large")
    if len(tokens) % 2:
        reasons.add("odd number")
    values = [int(t) for t in tokens]
    pairs = list(zip(values[0::2], values[1::2]))
    for start, length in pairs:
        if start == 0:
            reasons.add("start 0")
        if length == 0:
            reasons.add("length 0")
        if start + length - 1 > h * w:
            reasons.add(f"past the image's {h * w} pixels")
    for (s0, l0), (s1, _) in zip(pairs, pairs[1:]):
        if s1 < s0:
            reasons.add("out of order")
        elif s1 < s0 + l0:
            reasons.add("overlaps")
    if reasons:
        return None, reasons
    flat = np.zeros(h * w, np.uint8)
    for start, length in pairs:
        flat[start - 1:start - 1 + length] = 1
    return flat.reshape(shape, order=order), None


def check_against_reference(text: str, shape: tuple[int, int], order: str) -> np.ndarray | None:
    """rle.decode gives the reference's mask for a valid RLE, and for an invalid one an RLEError naming one of
    the reasons the reference found; returns the mask (None when invalid)."""
    want, reasons = reference_decode(text, shape, order)
    if reasons is None:
        np.testing.assert_array_equal(rle.decode(text, shape, order), want)
        return want
    with pytest.raises(RLEError) as err:
        rle.decode(text, shape, order)
    assert any(r in str(err.value) for r in reasons), (text, reasons, str(err.value))
    return None


def test_reference_decoder_on_hand_cases():
    """The reference itself, on cases worked by hand."""
    np.testing.assert_array_equal(reference_decode("2 3", (2, 3), "C")[0], [[0, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(reference_decode(" 2 3\n", (2, 3), "F")[0], [[0, 1, 0], [1, 1, 0]])
    assert reference_decode("1 2 2 1", (2, 3), "C")[1] == {"overlaps"}
    assert reference_decode("4 1 1 1 7", (2, 3), "C")[1] == {"out of order", "odd number"}
    assert reference_decode("6 2", (2, 3), "C")[1] == {"past the image's 6 pixels"}
    assert reference_decode("1\x1c1", (2, 3), "C")[1] == {"is not a whole number"}


@settings(max_examples=300, deadline=1000)
@given(text=st.text(alphabet=st.sampled_from(list("0123456789 -.\tx\n+e")), max_size=40))
def test_any_string_decodes_or_raises_rle_error(text):
    out = check_against_reference(text, (5, 7), "F")
    if out is not None:  # whatever decoded re-encodes to the same pixels (merging adjacent runs is the only change)
        np.testing.assert_array_equal(rle.decode(rle.encode(out, "F"), (5, 7), "F"), out)


@settings(max_examples=200, deadline=1000)
@given(values=st.lists(st.integers(-3, 40), max_size=12))
def test_integer_pairs_decode_or_raise(values):
    out = check_against_reference(" ".join(map(str, values)), (5, 7), "C")
    if out is not None:
        assert int(out.sum()) == sum(values[1::2])


@settings(max_examples=200, deadline=1000)
@given(runs=st.lists(st.tuples(st.integers(0, 4), st.integers(1, 5)), max_size=6),
       order=st.sampled_from(["C", "F"]))
def test_valid_runs_decode_to_their_pixels(runs, order):
    """Only valid input: sorted disjoint runs (gap ≥ 0, length ≥ 1) that fit in 6 × 7 decode to exactly them."""
    values, end = [], 1
    for gap, length in runs:
        values += [end + gap, length]
        end += gap + length
    text = " ".join(map(str, values))
    if end - 1 > 42:
        text = " ".join(map(str, values[:2]))  # keep the first run only: it always fits
    out = check_against_reference(text, (6, 7), order)
    assert out is not None and int(out.sum()) == sum(values[1::2][:len(text.split()) // 2])


# --- real files ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clouds(fixtures_dir):
    df = pd.read_csv(fixtures_dir / "understanding_clouds" / "train_small.csv")
    image = read_image(fixtures_dir / "understanding_clouds" / "0011165.jpg")
    return df, image


def test_clouds_train_rows_round_trip_exactly(clouds):
    df, image = clouds
    assert image.shape == (1400, 2100, 3)
    for label, text in zip(df["Image_Label"], df["EncodedPixels"]):
        text = text.strip() if isinstance(text, str) else text
        mask = rle.decode(text, (1400, 2100), "F")
        if label.endswith(("_Gravel", "_Sugar")):
            assert rle.is_empty(text) and not mask.any() and rle.encode(mask, "F") == ""
        else:
            assert mask.mean() > 0.2
            assert rle.encode(mask, "F") == text


def test_clouds_wrong_order_is_detectable(clouds):
    """The black no-data band is outside every label: the right order puts almost no mask on it,
    the wrong order smears the mask into stripes across it."""
    df, image = clouds
    black = image.mean(axis=2) <= 5
    assert 0.03 < black.mean() < 0.06
    for text in df["EncodedPixels"].dropna().str.strip():
        right = rle.decode(text, (1400, 2100), "F").astype(bool)
        wrong = rle.decode(text, (1400, 2100), "C").astype(bool)
        assert black[right].mean() < 0.001
        assert black[wrong].mean() > 5 * black[right].mean()
        # real label masks are blobs: few vertical transitions in the right order, stripes in the wrong one
        assert np.abs(np.diff(wrong.astype(np.int8), axis=0)).sum() > 100 * np.abs(np.diff(right.astype(np.int8), axis=0)).sum()


@pytest.fixture(scope="module")
def airbus(fixtures_dir):
    return pd.read_csv(fixtures_dir / "airbus" / "train_ship_segmentations_v2_subset.csv")


def test_airbus_rows_round_trip_without_overlap(airbus):
    assert len(airbus) == 29 and airbus["ImageId"].nunique() == 10
    empty = sorted(airbus.loc[airbus["EncodedPixels"].isna(), "ImageId"])
    assert empty == ["0a00a69de.jpg", "0a0a623a0.jpg", "0a0ada7e3.jpg", "0a0aeea56.jpg"]
    for image_id, rows in airbus.groupby("ImageId"):
        total = np.zeros((768, 768), np.int32)
        for text in rows["EncodedPixels"]:
            mask = rle.decode(text, (768, 768), "F")
            total += mask
            if rle.is_empty(text):
                assert not mask.any() and len(rows) == 1
            else:
                assert rle.encode(mask, "F") == text
                assert ndimage.label(mask)[1] >= 1
        assert total.max() <= 1, f"{image_id}: ships overlap"
    assert (airbus["ImageId"] == "0a1a7f395.jpg").sum() == 14


def test_airbus_wrong_order_is_detectable(airbus, fixtures_dir):
    """Square images hide a transposed mask from shape checks; the image does not: a ship's outline
    lies on strong image edges only in the right order."""

    def edge_ratio(grey, mask):
        grad = np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1))
        border = mask ^ ndimage.binary_erosion(mask)
        return grad[border].mean() / grad.mean()

    checked = 0
    for image_id in ("0a0df8299.jpg", "0a1a58833.jpg", "0a1b7d6ec.jpg"):
        grey = read_image(fixtures_dir / "airbus" / image_id).mean(axis=2)
        for text in airbus.loc[airbus["ImageId"] == image_id, "EncodedPixels"]:
            right = rle.decode(text, (768, 768), "F").astype(bool)
            wrong = rle.decode(text, (768, 768), "C").astype(bool)
            assert edge_ratio(grey, right) > edge_ratio(grey, wrong) + 0.05
            checked += 1
    assert checked == 5


def test_carvana_rle_is_row_major(fixtures_dir):
    lines = (fixtures_dir / "carvana" / "train_masks_head_truncated.txt").read_text().splitlines()
    rows = [ln.split(",") for ln in lines if ln and not ln.startswith("#")][1:]
    assert len(rows) == 5
    width, height = 1918, 1280
    for _, text in rows:
        starts0, lengths = rle.parse_runs(text, width * height)
        assert starts0.size == 4
        # row-major: the runs of a car outline fall in consecutive rows (stride about one width)
        # and start within a few hundred columns of each other
        rows, cols = np.divmod(starts0, width)
        assert np.all(np.diff(rows) <= 1) and rows.max() - rows.min() <= 3
        assert cols.max() - cols.min() < 300
        # read column-major (the wrong order) the same runs would jump hundreds of rows apart
        wrong_rows = starts0 % height
        assert np.abs(np.diff(wrong_rows)).max() > 250
        right = rle.decode(text, (height, width), "C")
        assert right.sum() == lengths.sum() and np.nonzero(right)[0].max() - np.nonzero(right)[0].min() <= 3


def test_carvana_sample_submission_rows_decode(fixtures_dir):
    df = pd.read_csv(fixtures_dir / "carvana" / "sample_submission_head20.csv")
    assert list(df.columns) == ["img", "rle_mask"]
    for text in df["rle_mask"]:
        mask = rle.decode(text, (1280, 1918), "C")
        assert mask[0, 0] == 1 and mask.sum() == 1
    image = read_image(fixtures_dir / "carvana" / "29bb3ece3180_11.jpg")
    assert image.shape == (1280, 1918, 3)


@settings(max_examples=300, deadline=1000)
@given(text=st.text(max_size=30))
@example(text="1\x1c1")  # a separator to str.split, not to the format: short and long RLEs alike refuse it
@example(text="\u20031 1")
@example(text="1 1\x85")
def test_any_unicode_text_decodes_or_raises_rle_error(text):
    check_against_reference(text, (4, 6), "C")
