"""segkit.rle where mutation testing found it unchecked (`make mutate`): per-object encoding, argument checks,
the error messages' positions and values, long RLEs (the numpy parser), big numbers and whitespace. Every
expected string is worked by hand from the RLE definition in the module docstring."""
import numpy as np
import pytest

from segkit import rle
from segkit.errors import RLEError

# objects 1 and 3 (label 2 absent); row-major runs: 1 at 0-1 and 4; 3 at 6-7
LABELS = np.array([[1, 1, 0, 0],
                   [1, 0, 3, 3]])


def test_encode_instances_one_rle_per_label_in_both_orders():
    assert rle.encode_instances(LABELS, "C") == ["1 2 5 1", "", "7 2"]
    # column-major pixels: (0,0) (1,0) (0,1) (1,1) (0,2) (1,2) (0,3) (1,3) -> 1 at 1-3; 3 at 6 and 8
    assert rle.encode_instances(LABELS, "F") == ["1 3", "", "6 1 8 1"]
    assert rle.encode_instances(LABELS) == rle.encode_instances(LABELS, "F")  # the default order is "F"
    assert [rle.encode(LABELS == k, "F") for k in (1, 2, 3)] == rle.encode_instances(LABELS, "F")


def test_encode_instances_edges():
    assert rle.encode_instances(np.zeros((3, 3), np.int32)) == []
    one = np.full((2, 2), 1)
    assert rle.encode_instances(one, "C") == ["1 4"]
    last = np.zeros((2, 3), np.int64)
    last[1, 2] = 2
    assert rle.encode_instances(last, "C") == ["", "6 1"]
    first = np.zeros((2, 3), np.int64)
    first[0, 0] = 1
    assert rle.encode_instances(first, "C") == ["1 1"]
    with pytest.raises(RLEError, match=r"one 2-D label image at a time, got an array of shape \(1, 2, 2\)"):
        rle.encode_instances(np.ones((1, 2, 2), np.int64))
    with pytest.raises(RLEError, match="order"):
        rle.encode_instances(LABELS, "Z")


@pytest.mark.parametrize("call, message", [
    (lambda: rle.encode(np.zeros((2, 2)), "X"), r"'C' \(row-major\) or 'F' \(column-major\), got 'X'"),
    (lambda: rle.encode(np.ones((2, 2)), "F", scheme="siim"), r"'standard' or 'relative', got 'siim'"),
    (lambda: rle.decode("1 1", "ab"), r"must be \(height, width\), got 'ab'"),
    (lambda: rle.decode("1 1", (2, 2, 2)), r"must be \(height, width\), got \(2, 2, 2\)"),
    (lambda: rle.decode("1 1", (2, 0)), r"must be positive, got \(2, 0\)"),
    (lambda: rle.decode("1 1", (-1, 3)), r"must be positive, got \(-1, 3\)"),
    (lambda: rle.encode(np.ones(3)), r"one 2-D mask at a time, got an array of shape \(3,\)"),
    (lambda: rle.parse_runs(5, 4), r"got int 5"),
], ids=["order", "scheme", "shape text", "shape 3-D", "zero side", "negative side", "1-D mask", "not text"])
def test_argument_checks_name_the_bad_value(call, message):
    with pytest.raises(RLEError, match=message):
        call()


def test_shape_accepts_any_pair_of_integers():
    np.testing.assert_array_equal(rle.decode("2 1", [np.int64(1), 3.0], "C"), [[0, 1, 0]])


def test_is_empty():
    for empty in (None, float("nan"), np.float64("nan"), "", " \t\n"):
        assert rle.is_empty(empty)
    for text in ("0", "1 1", "-1", 0, 0.0):
        assert not rle.is_empty(text)


def test_encode_of_masks_of_other_types():
    mask = np.array([[0, 2], [0, 0], [7, 7]], np.uint16)  # nonzero is foreground, any dtype
    assert rle.encode(mask, "C") == "2 1 5 2"
    assert rle.encode(mask, "F") == "3 2 6 1"
    assert rle.encode(mask.astype(np.float32) / 10, "F") == "3 2 6 1"
    assert rle.encode(mask > 0, "F") == "3 2 6 1"
    assert rle.encode(np.zeros((0, 3)), "C") == ""
    assert rle.encode(np.zeros((0, 3)), "C", scheme="relative") == "-1"
    assert rle.encode(mask, "C", scheme="relative") == "1 1 2 2"  # first start 0-based, then gaps
    assert rle.encode(mask, "F", scheme="relative") == "2 2 1 1"
    with pytest.raises(RLEError, match="scheme"):
        rle.encode(np.zeros((2, 2)), "C", scheme="siim")  # checked for an empty mask too


def test_numbers_of_every_width_are_written_exactly():
    h, w = 3, 2**31 // 3 + 7  # more pixels than int32 holds
    values = np.array([1, 9, 10, 99, 100, 12345, 2**31 - 1, 2**31 + 5])
    assert rle._join_ints(values) == "1 9 10 99 100 12345 2147483647 2147483653"
    assert rle._join_ints(np.array([0, 5, 0])) == "0 5 0"
    assert rle._join_ints(np.array([7])) == "7"
    starts, lengths = rle.parse_runs(f"{h * w - 1} 2", h * w)
    assert starts.tolist() == [h * w - 2] and lengths.tolist() == [2]


def long_text(pairs: int) -> str:
    """A valid RLE longer than the short-path limit: runs of 1 pixel every 3 pixels."""
    return " ".join(f"{3 * k + 1} 1" for k in range(pairs))


def test_long_rles_take_the_numpy_path_with_the_same_result():
    text = long_text(60)
    assert len(text) >= rle._SHORT_RLE
    starts, lengths = rle.parse_runs(text, 180)
    assert starts.tolist() == [3 * k for k in range(60)] and lengths.tolist() == [1] * 60
    mask = rle.decode(text, (1, 180), "C")
    assert mask.sum() == 60 and mask[0, ::3].all()
    assert rle.encode(mask, "C") == text
    # whitespace of any kind separates values, in both parsers
    assert rle.parse_runs("1\t2\n4  1", 9)[0].tolist() == [0, 3]
    assert rle.parse_runs(text.replace(" ", "\t"), 180)[0].tolist() == starts.tolist()


@pytest.mark.parametrize("short", [True, False])
@pytest.mark.parametrize("tail,message", [
    ("1", r"odd number of values \(121\)"),
    ("0 2", r"pair 61 has start 0; starts and lengths must be >= 1"),
    ("500 0", r"pair 61 has length 0; starts and lengths must be >= 1"),
    ("170 3", r"pair 61 \(start 170\) is out of order after pair 60 \(start 178, length 1\)"),
    ("178 2", r"pair 61 \(start 178\) overlaps pair 60 \(start 178, length 1\)"),
    ("181 5", r"pair 61 \(start 181, length 5\) ends at pixel 185, past the image's 183 pixels"),
    ("1x 5", r"RLE value '1x' is not a whole number"),
])
def test_errors_name_the_pair_and_its_values(short, tail, message):
    """The same message from the short-string parser and the numpy one (an RLE of 256 characters or more)."""
    head = long_text(60)
    if short:  # the same problem as the last pair after one good pair
        head = "178 1"
        message = message.replace("pair 61", "pair 2").replace("pair 60", "pair 1").replace("(121", "(3")
    with pytest.raises(RLEError, match=message):
        rle.parse_runs(f"{head} {tail}", 183)


def test_out_of_order_and_overlap_are_told_apart():
    with pytest.raises(RLEError, match=r"pair 2 \(start 3\) is out of order after pair 1 \(start 5, length 1\)"):
        rle.parse_runs("5 1 3 1", 9)
    with pytest.raises(RLEError, match=r"pair 2 \(start 5\) overlaps pair 1 \(start 5, length 1\)"):
        rle.parse_runs("5 1 5 1", 9)
    assert rle.parse_runs("5 1 6 1", 9)[0].tolist() == [4, 5]  # adjacent runs are fine
    assert rle.parse_runs("8 2", 9)[1].tolist() == [2]  # ends exactly at the last pixel
    with pytest.raises(RLEError, match="ends at pixel 10, past the image's 9 pixels"):
        rle.parse_runs("8 3", 9)


@pytest.mark.parametrize("text, message", [
    ("1 2 x7y 3", r"RLE value 'x7y' is not a whole number"),
    ("1 2\t5é 3", r"RLE value '5é' is not a whole number"),
    ("-4 3", r"RLE value '-4' is not a whole number"),
    ("1 2 " + "a" * 40, rf"RLE value '{'a' * 30}' is not"),  # a long token: its first 30 characters
], ids=["letters", "accent after a tab", "negative", "long"])
def test_bad_tokens_are_quoted_whole(text, message):
    with pytest.raises(RLEError, match=message):
        rle.parse_runs(text, 99)


def test_numbers_too_large_for_any_image():
    with pytest.raises(RLEError, match="too large for any image"):
        rle.parse_runs("1 1234567890123456789", 10)  # 19 digits
    with pytest.raises(RLEError, match="past the image's 10 pixels"):
        rle.parse_runs("1 123456789012345678", 10)  # 18 digits: a number, past the image


def test_relative_errors_and_conversion():
    assert rle.to_standard("0 1 2 2", 9) == "1 1 4 2"  # 0-based first start; then 2 background pixels
    assert rle.to_standard("-1", 9) == ""
    assert rle.to_standard(None, 9) == ""
    with pytest.raises(RLEError, match=r"pair 2 \(relative start 5 = pixel 10, length 1\) ends at pixel 10, past the image's 9"):
        rle.to_standard("3 1 5 1", 9)
    with pytest.raises(RLEError, match=r"pair 1 \(relative start 20 = pixel 21, length 1\) ends at pixel 21"):
        rle.to_standard("20 1", 9)
    with pytest.raises(RLEError, match=r"pair 2 \(relative start 1 = pixel 4, length 30\) ends at pixel 33"):
        rle.to_standard("0 2 1 30", 9)
    with pytest.raises(RLEError, match=r"mixes '-1' \(an empty mask\) with runs \(value 3\)"):
        rle.to_standard("0 2 -1 1", 9)
    with pytest.raises(RLEError, match=r"pair 2 has length 0; lengths must be >= 1"):
        rle.to_standard("0 2 1 0", 9)
    with pytest.raises(RLEError, match=r"odd number of values \(3\)"):
        rle.to_standard("0 2 1", 9)
    assert rle.to_standard("0 9", 9) == "1 9"


def test_decode_orders_and_gaps():
    np.testing.assert_array_equal(rle.decode("2 2 6 1", (2, 3), "C"), [[0, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(rle.decode("2 2 6 1", (2, 3), "F"), [[0, 1, 0], [1, 0, 1]])
    np.testing.assert_array_equal(rle.decode("2 2 6 1", (2, 3)), rle.decode("2 2 6 1", (2, 3), "F"))
    out = rle.decode("1 6", (2, 3), "C")
    assert out.dtype == np.uint8 and out.all()
    np.testing.assert_array_equal(rle.decode("0 1 3 2", (2, 3), "C", scheme="relative"),
                                  [[1, 0, 0], [0, 1, 1]])


def test_encode_instances_keeps_each_objects_runs_in_pixel_order():
    """Many runs of two objects interleaved (row-major: columns alternate between them)."""
    labels = np.tile(np.array([[1, 1, 2, 2]]), (1, 30))  # 60 runs: 1 at 0-1, 2 at 2-3, 1 at 4-5 ...
    one, two = rle.encode_instances(labels, "C")
    assert one == " ".join(f"{4 * k + 1} 2" for k in range(30))
    assert two == " ".join(f"{4 * k + 3} 2" for k in range(30))
    assert rle.encode_instances(np.zeros((0, 3), np.int64)) == []  # no pixels, no objects


def test_parsed_runs_are_int64_in_both_schemes_empty_or_not():
    for rle_text, scheme in (("-1", "relative"), (" -1 ", "relative"), ("", "standard"), ("2 1", "standard"),
                             ("1 1", "relative"), (None, "relative")):
        starts, lengths = rle.parse_runs(rle_text, 10, scheme)
        assert starts.dtype == np.int64 and lengths.dtype == np.int64, (rle_text, scheme)


def test_relative_runs_of_an_unbounded_image_are_exact():
    """Eighteen-digit values (the largest admitted) on an image with no fixed size (the validator's bound is
    2**62 pixels): sums are exact integers, not floats rounded to 16 digits."""
    big = 1 << 62
    # 0-based first pixel 123456789012345678, one pixel long: 1-based start 123456789012345679
    assert rle.to_standard("123456789012345678 1", big) == "123456789012345679 1"
    starts, lengths = rle.parse_runs("123456789012345678 3 5 7", big, "relative")
    assert starts.tolist() == [123456789012345678, 123456789012345678 + 3 + 5] and lengths.tolist() == [3, 7]
    assert starts.dtype == np.int64
    # a small image: the same runs through the int64 path
    assert rle.to_standard("3 2 0 1 4 1", 20) == "4 2 6 1 11 1"


def test_numbers_at_two_to_the_31_are_written_exactly():
    big = 1 << 62
    # relative start 2147483647 (0-based) = standard 1-based start 2**31
    assert rle.to_standard("2147483647 1", big) == "2147483648 1"
    assert rle.to_standard("2147483646 1", big) == "2147483647 1"


def test_nineteen_digit_values_are_refused_on_any_image():
    with pytest.raises(RLEError, match="^RLE holds a number too large for any image$"):
        rle.parse_runs("1000000000000000000 1", 1 << 62)  # 10**18: 19 digits
    assert rle.parse_runs("999999999999999999 1", 1 << 62)[0].tolist() == [999999999999999998]


def test_a_short_rle_out_of_order_is_refused():
    # pairs (1, 1), (5, 2), (3, 1): the third starts before the second ends
    with pytest.raises(RLEError, match=r"^RLE pair 3 \(start 3\) is out of order after pair 2 \(start 5, length 2\)"):
        rle.parse_runs("1 1 5 2 3 1", 100)


def test_a_colon_or_a_control_character_is_not_a_number_or_a_separator():
    # ':' follows '9' in ASCII; '\x0e' follows '\r': neither is part of an RLE
    for text, token in (("1 2 3:4", "3:4"), ("1 2 " + "5 1 " * 80 + "900 1:2", "1:2")):
        with pytest.raises(RLEError, match=f"^RLE value '{token}' is not a whole number$"):
            rle.parse_runs(text, 10000)
    long_text = " ".join(f"{2 * k + 1} 1" for k in range(60))  # 300+ characters: the numpy parser
    with pytest.raises(RLEError, match=r"^RLE value '1\\x0e3' is not a whole number$"):  # shown escaped
        rle.parse_runs(long_text.replace("1 3", "1\x0e3", 1), 10000)


def test_every_ascii_whitespace_separates_values_in_a_long_rle():
    pairs = [(2 * k + 1, 1) for k in range(60)]
    seps = [" ", "\t", "\n", "\v", "\f", "\r"]
    text = "".join(f"{s}{seps[i % 6]}{n}{seps[(i + 1) % 6]}" for i, (s, n) in enumerate(pairs))
    assert len(text) > 256
    starts, lengths = rle.parse_runs(text, 200)
    assert starts.tolist() == [2 * k for k in range(60)] and lengths.tolist() == [1] * 60
