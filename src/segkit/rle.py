"""Run-length encoding of binary masks as Kaggle writes it: `start length` pairs, 1-indexed, in either
pixel order ("C" row-major for Carvana, "F" column-major for Understanding Clouds and Airbus).

Two schemes: "standard" (the default; every start the 1-based absolute index of the run's first pixel, an
empty mask the empty string) and "relative" (SIIM-ACR Pneumothorax: the first start is the 0-based absolute
index of the first foreground pixel, every later start the count of background pixels since the end of the
previous run, lengths as usual; an empty mask is `-1`). In the relative scheme the 1-based standard start of
run k is 1 + sum(start_j, j <= k) + sum(len_j, j < k), and validation bounds that accumulated end by the image.

Both directions are vectorised (numpy comparisons and `np.repeat`), never a Python loop over runs or pixels.
NaN or None (what pandas reads for an empty field) decodes to an empty mask in either scheme.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from segkit.errors import RLEError

ORDERS = ("C", "F")
SCHEMES = ("standard", "relative")
EMPTY = {"standard": "", "relative": "-1"}  # how each scheme writes an empty mask


ORDER_NAMES = {"C": "row-major", "F": "column-major"}  # pixel orders in messages


def _check_order(order: str) -> str:
    if order not in ORDERS:
        raise RLEError(f"RLE pixel order must be 'C' (row-major) or 'F' (column-major), got {order!r}")
    return order


def _check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise RLEError(f"RLE scheme must be 'standard' or 'relative', got {scheme!r}")
    return scheme


def _check_shape(shape: Any) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise RLEError(f"RLE mask shape must be (height, width), got {shape!r}") from None
    if h <= 0 or w <= 0:
        raise RLEError(f"RLE mask shape must be positive, got {shape!r}")
    return h, w


def is_empty(rle: Any) -> bool:
    """True for what a CSV reader gives for an empty field: None, NaN, or a blank string."""
    if rle is None:
        return True
    if isinstance(rle, float) and math.isnan(rle):
        return True
    return isinstance(rle, str) and not rle.strip()


def encode(mask: np.ndarray, order: str = "F", scheme: str = "standard") -> str:
    """Encode a 2-D mask (nonzero = foreground) as Kaggle RLE in pixel order `order`; "" when empty.
    scheme="relative" writes SIIM-ACR's relative starts instead ("-1" when empty)."""
    _check_order(order)
    changes = _changes(mask, order)
    if scheme != "standard":
        _check_scheme(scheme)
        # 0-based [start, end, start, end, ...] differenced: first start, length, gap, length, ... = relative RLE
        return _join_ints(np.diff(changes, prepend=0)) if changes.size else EMPTY[scheme]
    if changes.size == 0:
        return ""
    runs = changes.reshape(-1, 2)
    runs[:, 1] -= runs[:, 0]
    runs[:, 0] += 1
    return _join_ints(runs.ravel())


def _changes(mask: np.ndarray, order: str) -> np.ndarray:
    """The 0-based [start, exclusive end, start, end, ...] of the foreground runs of a 2-D mask in `order`."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise RLEError(f"RLE encodes one 2-D mask at a time, got an array of shape {mask.shape}")
    if mask.size == 0:
        return np.zeros(0, np.int64)
    flat = _ravel(mask, order)
    if flat.dtype != np.bool_:
        flat = flat != 0
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    if flat[0]:
        changes = np.concatenate(([0], changes))
    if flat[-1]:
        changes = np.concatenate((changes, [flat.size]))
    return changes


def _ravel(mask: np.ndarray, order: str) -> np.ndarray:
    """The mask's pixels in `order`; a column-major uint8/bool mask is transposed by OpenCV (5x numpy's copy)."""
    if order == "C" or mask.dtype not in (np.uint8, np.bool_):
        return mask.ravel(order=order)
    import cv2

    transposed = cv2.transpose(np.ascontiguousarray(mask).view(np.uint8))
    return transposed.ravel().view(mask.dtype)


def _join_ints(values: np.ndarray) -> str:
    """Non-negative integers as one space-separated string, built digit column by digit column in numpy
    (2-3x faster than str() per number)."""
    n = values.size
    top = int(values.max())
    width = len(str(top))
    chars = np.empty((n, width + 1), np.uint8)
    keep = np.empty((n, width + 1), np.bool_)
    chars[:, width] = ord(" ")
    keep[:, width] = True
    rest = values.astype(np.int32 if top < 2**31 else np.int64)
    for col in range(width - 1, -1, -1):
        np.greater(rest, 0, out=keep[:, col])  # drops leading zeros
        rest, digit = np.divmod(rest, 10)
        np.add(digit, ord("0"), out=chars[:, col], casting="unsafe")
    keep[:, width - 1] = True
    return chars[keep][:-1].tobytes().decode("ascii")


def _bad_token(text: str, position: int) -> str:
    """The whitespace-delimited token of `text` around character `position` (for error messages)."""
    left = position
    while left > 0 and not text[left - 1].isspace():
        left -= 1
    right = position
    while right < len(text) and not text[right].isspace():
        right += 1
    return text[left:right][:30]


def _parse_integers(text: str) -> np.ndarray:
    """The whitespace-separated non-negative integers of `text`, checked byte-wise in numpy (no Python loop
    over tokens): anything but ASCII digits and whitespace raises RLEError naming the token."""
    if not text.isascii():
        first = next(i for i, ch in enumerate(text) if not ch.isascii())
        raise RLEError(f"RLE value {_bad_token(text, first)!r} is not a whole number")
    data = np.frombuffer(text.encode("ascii"), np.uint8)
    digit = (data >= 48) & (data <= 57)
    space = (data == 32) | ((data >= 9) & (data <= 13))
    wrong = ~(digit | space)
    if wrong.any():
        raise RLEError(f"RLE value {_bad_token(text, int(np.argmax(wrong)))!r} is not a whole number")
    edges = np.flatnonzero(np.diff(digit.astype(np.int8), prepend=0, append=0))
    if edges.size and int((edges[1::2] - edges[0::2]).max()) > 18:
        raise RLEError("RLE holds a number too large for any image")
    values = np.fromstring(text, dtype=np.int64, sep=" ") if edges.size else np.zeros(0, np.int64)
    if values.size != edges.size // 2:  # cannot happen for digits and whitespace; kept as a guard
        values = np.array(text.split(), dtype=np.int64)
    return values


_NOT_SEPARATORS = "\x1c\x1d\x1e\x1f"  # ASCII whitespace to str.split, not between RLE values
_SHORT_RLE = 256  # characters: below this, plain Python beats numpy's fixed cost per call (a validator reads 100k rows)


def _parse_short(text: str, n_pixels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(0-based starts, lengths) of a short valid RLE, or None when anything is off (the numpy path then
    names the problem)."""
    if not text.isascii() or any(sep in text for sep in _NOT_SEPARATORS):
        return None  # str.split would take these (and Unicode spaces) as separators; the format does not
    parts = text.split()
    if len(parts) % 2 or not all(p.isdigit() and len(p) <= 18 for p in parts):
        return None
    values = [int(p) for p in parts]
    end = 1  # 1-based exclusive end of the previous run
    for start, length in zip(values[0::2], values[1::2]):
        if start < end or length < 1:
            return None
        end = start + length
    if end - 1 > n_pixels:
        return None
    return np.array(values[0::2], np.int64) - 1, np.array(values[1::2], np.int64)


def parse_runs(rle: Any, n_pixels: int, scheme: str = "standard") -> tuple[np.ndarray, np.ndarray]:
    """Validate an RLE string against an image of `n_pixels` and return (0-based absolute starts, lengths).

    Raises RLEError naming the first problem: odd count, a non-integer, a zero or negative value,
    runs out of order or overlapping, or a run past the last pixel (scheme="relative": see _parse_relative)."""
    if is_empty(rle):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if not isinstance(rle, str):
        raise RLEError(f"RLE must be a string of 'start length' pairs, got {type(rle).__name__} {rle!r}")
    if scheme != "standard":
        return _parse_relative(rle, n_pixels, _check_scheme(scheme))
    if len(rle) < _SHORT_RLE:
        fast = _parse_short(rle, n_pixels)
        if fast is not None:
            return fast
    values = _parse_integers(rle)
    if values.size % 2:
        raise RLEError(f"RLE has an odd number of values ({values.size}); expected 'start length' pairs")
    starts, lengths = values[0::2], values[1::2]
    for name, arr in (("start", starts), ("length", lengths)):
        wrong = np.flatnonzero(arr <= 0)
        if wrong.size:
            i = int(wrong[0])
            raise RLEError(f"RLE pair {i + 1} has {name} {int(arr[i])}; starts and lengths must be >= 1")
    ends = starts + lengths  # 1-based exclusive end
    clash = np.flatnonzero(starts[1:] < ends[:-1])
    if clash.size:
        i = int(clash[0])
        how = "is out of order after" if starts[i + 1] < starts[i] else "overlaps"
        raise RLEError(
            f"RLE pair {i + 2} (start {int(starts[i + 1])}) {how} pair {i + 1} "
            f"(start {int(starts[i])}, length {int(lengths[i])}); runs must be sorted and disjoint"
        )
    if int(ends[-1]) - 1 > n_pixels:
        raise RLEError(
            f"RLE pair {len(starts)} (start {int(starts[-1])}, length {int(lengths[-1])}) ends at pixel "
            f"{int(ends[-1]) - 1}, past the image's {n_pixels} pixels"
        )
    return starts - 1, lengths


def _parse_relative(rle: str, n_pixels: int, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """parse_runs() for relative starts: `-1` alone is an empty mask (and stands with no run); the first start
    may be 0, later ones too (a run right after the previous one); lengths >= 1; the accumulated end of every
    run within the image. Each value is checked before summing, so no sum overflows."""
    if rle.strip() == EMPTY[scheme]:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    tokens = rle.split() if "-" in rle else []
    if EMPTY[scheme] in tokens:
        raise RLEError(f"RLE mixes {EMPTY[scheme]!r} (an empty mask) with runs (value "
                       f"{tokens.index(EMPTY[scheme]) + 1}); write '{EMPTY[scheme]}' alone or the runs alone")
    values = _parse_integers(rle)
    if values.size % 2:
        raise RLEError(f"RLE has an odd number of values ({values.size}); expected 'start length' pairs")
    rel, lengths = values[0::2], values[1::2]
    wrong = np.flatnonzero(lengths <= 0)
    if wrong.size:
        i = int(wrong[0])
        raise RLEError(f"RLE pair {i + 1} has length {int(lengths[i])}; lengths must be >= 1")
    big = np.flatnonzero(np.maximum(rel, lengths) > n_pixels)
    limit = int(big[0]) if big.size else rel.size  # the pairs before the first value larger than the image
    dtype = np.int64 if 2 * n_pixels * max(limit, 1) < 2**63 else object
    ends = np.cumsum((rel[:limit] + lengths[:limit]).astype(dtype))  # 0-based exclusive ends
    past = np.flatnonzero(ends > n_pixels)
    if past.size or big.size:
        i = int(past[0]) if past.size else limit
        end = int(ends[i]) if past.size else (int(ends[-1]) if limit else 0) + int(rel[i]) + int(lengths[i])
        first = end - int(lengths[i]) + 1  # counted from 1, as the standard scheme's starts and ends
        raise RLEError(
            f"RLE pair {i + 1} (relative start {int(rel[i])} = pixel {first}, length {int(lengths[i])}) ends at "
            f"pixel {end}, past the image's {n_pixels} pixels"
        )
    ends = ends.astype(np.int64)
    return ends - lengths, lengths


def to_standard(rle: Any, n_pixels: int) -> str:
    """A relative-scheme RLE (SIIM-ACR) as the standard 1-based absolute one, validated against `n_pixels`."""
    starts, lengths = parse_runs(rle, n_pixels, scheme="relative")
    if starts.size == 0:
        return ""
    return _join_ints(np.stack((starts + 1, lengths), axis=1).ravel())


def decode(rle: Any, shape: tuple[int, int], order: str = "F", scheme: str = "standard") -> np.ndarray:
    """Decode a Kaggle RLE into a uint8 {0, 1} mask of `shape` (H, W) in pixel order `order`
    (scheme="relative": SIIM-ACR's relative starts, `-1` for an empty mask)."""
    _check_order(order)
    h, w = _check_shape(shape)
    n = h * w
    starts, lengths = parse_runs(rle, n, scheme)
    if starts.size == 0:
        return np.zeros((h, w), np.uint8)
    # alternate background gaps and foreground runs, then expand them in one np.repeat
    counts = np.empty(2 * starts.size + 1, np.int64)
    counts[1::2] = lengths
    counts[0] = starts[0]
    counts[2:-1:2] = starts[1:] - (starts[:-1] + lengths[:-1])
    counts[-1] = n - (starts[-1] + lengths[-1])
    values = np.zeros(counts.size, np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, counts)
    if order == "F":  # column-major: OpenCV's transpose of the (W, H) view is 5x numpy's copy
        import cv2

        return cv2.transpose(flat.reshape(w, h))
    return flat.reshape(h, w)


def encode_instances(labels: np.ndarray, order: str = "F") -> list[str]:
    """One RLE per object of a label image (0 = background, objects 1..n, e.g. connected components),
    in label order; computed in one pass over the pixels rather than one pass per object."""
    _check_order(order)
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise RLEError(f"RLE encodes one 2-D label image at a time, got an array of shape {labels.shape}")
    n_objects = int(labels.max(initial=0))
    if n_objects == 0:
        return []
    flat = labels.ravel(order=order)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [flat.size]))
    values = flat[starts].astype(np.int64)
    keep = values > 0
    starts, ends, values = starts[keep], ends[keep], values[keep]
    by_label = np.argsort(values, kind="stable")  # stable: runs of one object stay in pixel order
    pairs = np.stack((starts + 1, ends - starts), axis=1)[by_label]
    counts = np.bincount(values, minlength=n_objects + 1)[1:]
    groups = np.split(pairs, np.cumsum(counts)[:-1])
    return [_join_ints(g.ravel()) if len(g) else "" for g in groups]
