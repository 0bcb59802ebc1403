"""segkit.rle's relative scheme (SIIM-ACR Pneumothorax): hand-worked strings, the real row prefix of formats.md,
property tests against the standard scheme, and malformed input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from segkit import rle
from segkit.errors import RLEError

# a 4x4 mask worked by hand:      column-major pixel index (F)     row-major pixel index (C)
#   1 0 0 0                        0  4  8 12                       0  1  2  3
#   0 1 0 0                        1  5  9 13                       4  5  6  7
#   0 1 0 0                        2  6 10 14                       8  9 10 11
#   0 0 0 1                        3  7 11 15                      12 13 14 15
HAND = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], np.uint8)
# F: foreground 0 | 5 6 | 15 -> standard (1-based) "1 1 6 2 16 1";
#    relative: 0 (0-based), then 5 - (0+1) = 4, then 15 - (5+2) = 8
# C: foreground 0 | 5 | 9 | 15 -> standard "1 1 6 1 10 1 16 1"; relative: 0, 5-1 = 4, 9-6 = 3, 15-10 = 5
HAND_RLE = {"F": ("1 1 6 2 16 1", "0 1 4 2 8 1"), "C": ("1 1 6 1 10 1 16 1", "0 1 4 1 3 1 5 1")}

# formats.md: the real stage-1 train-rle.csv row of image 1.2.276.0.7230010.3.1.4.8323329.12743.1517875241.599591
# starts "810584 20 1003 22 1001 25"; its mask lies in rows 536-659, columns 791-820 (column-major relative decode).
REAL_PREFIX = "810584 20 1003 22 1001 25"


@pytest.mark.parametrize("order", ["F", "C"])
def test_hand_worked_4x4_both_ways(order):
    standard, relative = HAND_RLE[order]
    assert rle.encode(HAND, order) == standard
    assert rle.encode(HAND, order, scheme="relative") == relative
    np.testing.assert_array_equal(rle.decode(relative, (4, 4), order, scheme="relative"), HAND)
    np.testing.assert_array_equal(rle.decode(standard, (4, 4), order), HAND)
    assert rle.to_standard(relative, 16) == standard


def test_real_row_prefix_decodes_where_formats_md_says():
    # by hand, 1024 pixels per column: run 1 starts at 0-based 810584 = 791*1024 + 600 -> column 791, row 600,
    # length 20 (rows 600-619), ends at 810604; run 2 starts at 810604 + 1003 = 811607 = 792*1024 + 599 ->
    # column 792, rows 599-620, ends at 811629; run 3 starts at 811629 + 1001 = 812630 = 793*1024 + 598 ->
    # column 793, rows 598-622
    mask = rle.decode(REAL_PREFIX, (1024, 1024), "F", scheme="relative")
    expected = np.zeros((1024, 1024), np.uint8)
    expected[600:620, 791] = 1
    expected[599:621, 792] = 1
    expected[598:623, 793] = 1
    np.testing.assert_array_equal(mask, expected)
    rows, cols = np.nonzero(mask)
    assert 536 <= rows.min() and rows.max() <= 659 and 791 <= cols.min() and cols.max() <= 820
    assert rle.to_standard(REAL_PREFIX, 1024 * 1024) == "810585 20 811608 22 812631 25"
    assert rle.encode(mask, "F", scheme="relative") == REAL_PREFIX
    # the stage-1 CSV writes values with a leading space
    np.testing.assert_array_equal(rle.decode(" " + REAL_PREFIX, (1024, 1024), "F", scheme="relative"), mask)
    # read as the standard scheme the same string is not even valid: its later starts are small gaps
    with pytest.raises(RLEError, match="out of order"):
        rle.decode(REAL_PREFIX, (1024, 1024), "F")


def test_empty_masks():
    assert rle.encode(np.zeros((3, 5), np.uint8), "F", scheme="relative") == "-1"
    assert rle.encode(np.zeros((3, 5), np.uint8), "F") == ""  # the default scheme is unchanged
    for empty in ("-1", " -1", "-1\r", "", None, float("nan")):
        out = rle.decode(empty, (3, 5), "F", scheme="relative")
        assert out.shape == (3, 5) and not out.any()


def test_first_pixel_and_adjacent_runs():
    one = np.zeros((3, 3), np.uint8)
    one[0, 0] = 1
    assert rle.encode(one, "F", scheme="relative") == "0 1"  # a first start of 0 is legal
    # a later start of 0: the run begins right after the previous one (valid, as adjacent standard runs are)
    np.testing.assert_array_equal(rle.decode("1 2 0 1", (1, 4), "C", scheme="relative"), [[0, 1, 1, 1]])
    full = np.ones((2, 3), np.uint8)
    assert rle.encode(full, "C", scheme="relative") == "0 6"
    np.testing.assert_array_equal(rle.decode("5 1", (2, 3), "C", scheme="relative"), [[0, 0, 0], [0, 0, 1]])


@pytest.mark.parametrize(
    "text, words",
    [
        ("-1 5", "mixes '-1'"),
        ("5 3 -1 2", "mixes '-1'"),
        ("1 2 -1", "mixes '-1'"),
        ("1", "odd number"),
        ("0 1 4", "odd number"),
        ("3 0", "length 0"),
        ("-2 3", "'-2' is not a whole number"),
        ("3 -1 2 2", "mixes '-1'"),
        ("1 x", "'x' is not a whole number"),
        ("1.5 2", "'1.5' is not a whole number"),
        ("nan", "not a whole number"),
        ("16 1", "past the image's 16 pixels"),  # the first start is 0-based: 15 is the last pixel
        ("10 7", "ends at pixel 17, past the image's 16 pixels"),
        ("4 4 4 4 1 1", "pair 3 .* past the image's 16 pixels"),  # every value small, the accumulated end not
        ("0 1 99999999999999999 1", "pair 2 .* past the image's 16 pixels"),
        ("99999999999999999999999 1", "too large"),
    ],
)
def test_malformed_relative_rle_is_rejected_with_reason(text, words):
    with pytest.raises(RLEError, match=words):
        rle.decode(text, (4, 4), "F", scheme="relative")


def test_bad_scheme_is_rejected():
    with pytest.raises(RLEError, match="scheme"):
        rle.encode(HAND, "F", scheme="relatve")
    with pytest.raises(RLEError, match="scheme"):
        rle.decode("0 1", (4, 4), "F", scheme="siim")


masks = st.tuples(st.integers(1, 24), st.integers(1, 24)).flatmap(
    lambda s: arrays(np.uint8, s, elements=st.integers(0, 1)))


@settings(max_examples=150, deadline=None)
@given(mask=masks, order=st.sampled_from(["C", "F"]))
def test_relative_round_trip_and_same_runs_as_standard(mask, order):
    text = rle.encode(mask, order, scheme="relative")
    np.testing.assert_array_equal(rle.decode(text, mask.shape, order, scheme="relative"), mask)
    starts, lengths = rle.parse_runs(text, mask.size, scheme="relative")
    std_starts, std_lengths = rle.parse_runs(rle.encode(mask, order), mask.size)
    np.testing.assert_array_equal(starts, std_starts)
    np.testing.assert_array_equal(lengths, std_lengths)
    assert rle.to_standard(text, mask.size) == rle.encode(mask, order)
    if mask.any():
        values = [int(v) for v in text.split()]
        # the definition: standard 1-based start k = 1 + sum(start_j, j <= k) + sum(len_j, j < k)
        rel, lens = values[0::2], values[1::2]
        assert [1 + sum(rel[: k + 1]) + sum(lens[:k]) for k in range(len(rel))] == list(std_starts + 1)
        assert all(r >= 1 for r in rel[1:])  # runs of a mask are maximal: a gap of at least one pixel
    else:
        assert text == "-1"


@settings(max_examples=300, deadline=1000)
@given(text=st.text(alphabet=st.sampled_from(list("0123456789 -.\tx\n+e1")), max_size=40))
def test_any_string_decodes_or_raises_rle_error(text):
    try:
        out = rle.decode(text, (5, 7), "F", scheme="relative")
    except RLEError as exc:
        assert str(exc)
        return
    assert out.shape == (5, 7) and set(np.unique(out)) <= {0, 1}
    np.testing.assert_array_equal(rle.decode(rle.encode(out, "F", "relative"), (5, 7), "F", "relative"), out)


@settings(max_examples=200, deadline=1000)
@given(values=st.lists(st.integers(-2, 40), max_size=12))
def test_integer_pairs_decode_or_raise(values):
    text = " ".join(map(str, values))
    try:
        out = rle.decode(text, (5, 7), "C", scheme="relative")
    except RLEError:
        return
    if values != [-1]:
        assert int(out.sum()) == sum(values[1::2])
        assert sum(values) <= 35 and min(values, default=0) >= 0
