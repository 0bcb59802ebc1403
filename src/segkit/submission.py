"""Competition submission CSVs: the format a competition declares, a streamed atomic writer, and a validator
that names every problem by file, line and id.

Each adapter declares its competition's format once, as a `SubmissionFormat` class attribute
(`submission_format`): header, pixel order, the (H, W) every RLE refers to, rows per image / per label / per
object, and the form of an id. The writer (`SubmissionFormat.rows_for`, `write_rows`), the validator
(`validate`, behind `segkit validate`, `segkit predict`, `Run.validate` and `segkit submit`) and predict
(`Adapter.submission_size`) all read that one declaration. A format is found by competition name on the
adapter side (`segkit.data.competitions.base.format_for`), so this module never imports the adapters.
"""
from __future__ import annotations

import csv
import io
import os
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from segkit import rle
from segkit.storage import atomic_write
from segkit.errors import RLEError, SubmissionError

MAX_PER_KIND = 20  # problems listed per kind before summarising the rest
ROWS = ("image", "label", "object")
_UNBOUNDED = 1 << 62


@dataclass(frozen=True)
class SubmissionFormat:
    """What a valid submission looks like for one competition, declared once on its adapter.

    header: the two column names, exactly as Kaggle expects them.
    order: RLE pixel order, "C" (row-major) or "F" (column-major).
    scheme: RLE scheme, "standard" (1-based absolute starts, an empty mask a blank field) or "relative"
        (SIIM-ACR: each start counted from the previous run's end, an empty mask `-1`); see segkit.rle.
    shape: (H, W) every RLE refers to; None when it is each image's own size (only the syntax is checked
        then, unless the validator is given each id's size).
    own_size: each id is encoded at its own image's size and `shape` is that size in the real data (38-Cloud:
        384x384 patches; synthetic or cropped data may differ); the validator bounds runs by `shape`.
    rows: "image" (one row per image), "label" (one row per image and label, id `<image>_<label>`, every label
        present) or "object" (one row per object, objects of one image disjoint, an object-free image one
        blank row).
    labels: the labels of "label" rows, in column order of the mask.
    id_suffix: every image id ends with it (".jpg": Kaggle ids are the test file names).
    id_pattern: a regular expression every image id matches in full (TGS: ten hex digits), checked like
        id_suffix when no sample is given; "" checks nothing.
    id_list: the one column of a plain id list that `--sample` may also be (38-Cloud's test_patches CSV,
        column `name`, read with or without its header row).
    competition: the registered name, filled in by `register_adapter`.
    """

    header: tuple[str, str]
    order: str = "F"
    shape: tuple[int, int] | None = None
    own_size: bool = False
    rows: str = "image"
    labels: tuple[str, ...] = ()
    id_suffix: str = ""
    id_pattern: str = ""
    id_list: str = ""
    competition: str = ""
    scheme: str = "standard"

    def __post_init__(self) -> None:
        if len(self.header) != 2:
            raise ValueError(f"SubmissionFormat.header: expected two column names, got {self.header!r}")
        if self.order not in rle.ORDERS:
            raise ValueError(f"SubmissionFormat.order: expected 'C' or 'F', got {self.order!r}")
        if self.scheme not in rle.SCHEMES:
            raise ValueError(f"SubmissionFormat.scheme: expected one of {', '.join(rle.SCHEMES)}, got {self.scheme!r}")
        if self.scheme != "standard" and self.rows == "object":
            raise ValueError("SubmissionFormat.scheme: object rows are written in the standard scheme only")
        if self.rows not in ROWS:
            raise ValueError(f"SubmissionFormat.rows: expected one of {', '.join(ROWS)}, got {self.rows!r}")
        if (self.rows == "label") != bool(self.labels):
            raise ValueError("SubmissionFormat.labels: give labels exactly when rows='label'")
        if self.own_size and self.shape is None:
            raise ValueError("SubmissionFormat.own_size: needs `shape`, the size in the real data")
        object.__setattr__(self, "header", tuple(self.header))
        object.__setattr__(self, "labels", tuple(self.labels))
        if self.shape is not None:
            object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))

    @property
    def name(self) -> str:
        """The competition's name for messages."""
        return self.competition or "this competition"

    @property
    def empty(self) -> str:
        """How this format writes an empty mask: a blank field, or `-1` in the relative scheme."""
        return rle.EMPTY[self.scheme]

    def split_label(self, row_id: str) -> tuple[str, str] | None:
        """(image, label) of a label row's id `<image>_<label>`, or None when it ends in no declared label
        (labels may hold "_" themselves, so the longest matching label wins)."""
        for label in sorted(self.labels, key=len, reverse=True):
            if row_id.endswith("_" + label) and len(row_id) > len(label) + 1:
                return row_id[: -len(label) - 1], label
        return None

    def image_of(self, row_id: str) -> str:
        """The image a row id belongs to (`<image>_<label>` -> `<image>` for label rows)."""
        split = self.split_label(row_id) if self.rows == "label" else None
        return split[0] if split else row_id

    def rows_for(self, image_id: str, mask: np.ndarray) -> Iterator[tuple[str, str]]:
        """Rows (id, rle) of one image; `mask` is uint8 (H, W, classes) at its submission size."""
        if self.rows == "label":
            for c, label in enumerate(self.labels):
                yield f"{image_id}_{label}", rle.encode(mask[..., c], order=self.order, scheme=self.scheme)
        elif self.rows == "object":
            from segkit.evaluate import label_objects  # lazy: evaluate imports scipy

            encoded = rle.encode_instances(label_objects(mask[..., 0]), order=self.order)
            if not encoded:
                yield image_id, ""
            for text in encoded:
                yield image_id, text
        else:
            yield image_id, rle.encode(mask[..., 0], order=self.order, scheme=self.scheme)


# --- writing -----------------------------------------------------------------------------------

def write_rows(path: str | os.PathLike, header: Sequence[str] | SubmissionFormat,
               rows: Iterable[tuple[str, str | None]], sample_ids: Sequence[str] | None = None) -> int:
    """Write `rows` (id, rle) as a CSV under `header` (or a format's header), streamed one row at a time into
    a temporary file that replaces `path` only when every row is written; returns the number of rows.

    With `sample_ids` (the first column of sample_submission.csv) the rows come out in that order, all rows
    of one id together: rows already in order go straight to the file; once one arrives out of order the rest
    are spooled to a temporary file on disk and copied back in sample order, so memory never holds the rows.
    An id that is not in the sample, or a sample id that gets no row, raises SubmissionError (nothing written).
    """
    if isinstance(header, SubmissionFormat):
        header = header.header
    path = Path(path)
    with atomic_write(path, newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(list(header))
        if sample_ids is None:
            n = 0
            for row_id, text in rows:
                writer.writerow([row_id, "" if rle.is_empty(text) else text])
                n += 1
            return n
        return _write_in_sample_order(path, fh, rows, list(sample_ids))


def _write_in_sample_order(path: Path, fh, rows: Iterable, sample_ids: list[str]) -> int:
    position = {sid: i for i, sid in enumerate(sample_ids)}
    if len(position) != len(sample_ids):
        raise SubmissionError(f"{path}: the sample ids hold duplicates; cannot order rows by them")
    done = 0  # sample positions [0, done) are complete in the output
    current = -1  # position whose rows are being written directly
    spool = None
    spooled: dict[int, list[tuple[int, int]]] = defaultdict(list)  # position -> (offset, size) in the spool
    n = 0
    try:
        for row_id, text in rows:
            pos = position.get(row_id)
            if pos is None:
                raise SubmissionError(f"{path}: row id '{row_id}' is not in the sample submission")
            line = _csv_line([row_id, "" if rle.is_empty(text) else text])
            n += 1
            if spool is None and pos in (current, done):
                if pos == done:
                    current, done = pos, pos + 1
                fh.write(line)
                continue
            if pos < done:
                raise SubmissionError(
                    f"{path}: rows of '{row_id}' arrived after rows of later ids had been written; "
                    "give each id's rows together")
            if spool is None:
                spool = tempfile.TemporaryFile(mode="w+b", dir=path.parent)
            data = line.encode("utf-8")
            spooled[pos].append((spool.tell(), len(data)))
            spool.write(data)
        missing = [sample_ids[p] for p in range(done, len(sample_ids)) if p not in spooled]
        if missing:
            raise SubmissionError(
                f"{path}: {len(missing)} sample ids got no row (first: {', '.join(missing[:5])})")
        if spool is not None:
            for pos in range(done, len(sample_ids)):
                for offset, size in spooled[pos]:
                    spool.seek(offset)
                    fh.write(spool.read(size).decode("utf-8"))
    finally:
        if spool is not None:
            spool.close()
    return n


def _csv_line(fields: list[str]) -> str:
    """One CSV line, quoted only when a field needs it (ids and RLEs never do)."""
    if any(c in f for f in fields for c in ',"\n\r'):
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(fields)
        return buf.getvalue()
    return ",".join(fields) + "\n"


# --- reading -----------------------------------------------------------------------------------

@dataclass
class _Record:
    """One CSV record: the line it starts on, its fields (None when unreadable) and the reader's error."""

    line: int
    fields: list[str] | None
    error: str = ""


def _records(path: Path, what: str) -> Iterator[_Record]:
    """Every record of a CSV, streamed, as pandas would split them: CRLF, LF or lone CR line ends, quoted
    fields over several lines, a UTF-8 byte-order mark ignored. A record the csv module cannot read (a quote
    never closed, text after a closing quote) comes back with its error, and reading goes on."""
    if not path.is_file():
        raise SubmissionError(f"{path}: {what} not found")
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # a noisy full-size RLE runs to megabytes
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh, strict=True)
            last = 0
            while True:
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield _Record(last + 1, None, str(exc))
                    if reader.line_num == last:
                        return
                    last = reader.line_num
                    continue
                yield _Record(last + 1, fields)
                last = reader.line_num
    except UnicodeDecodeError as exc:
        raise SubmissionError(f"{path}: {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise SubmissionError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None


def _show(text: str) -> str:
    """An id as one printable line (a line break inside a quoted field shown as \\n)."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _csv_error(path: Path, record: _Record) -> str:
    if "unexpected end of data" in record.error:
        return (f"{path}, line {record.line}: a quoted field opened on this line is never closed; pandas cannot "
                f"read the file (close the quote)")
    return f"{path}, line {record.line}: not valid CSV ({record.error}); pandas would misread this row"


@dataclass
class SampleIds:
    """The ids of a sample submission (or of a plain id list) in order, each with its line."""

    path: Path
    header: tuple[str, ...]
    ids: list[str]
    lines: dict[str, int]
    is_list: bool = False
    problems: list[str] = field(default_factory=list)


def read_sample(sample: str | os.PathLike, fmt: SubmissionFormat | None = None) -> SampleIds:
    """The ids of a sample_submission.csv in order, each once (Airbus' sample repeats an id per ship). With a
    format that has `id_list`, a one-column list of ids (with or without its header row) is read too."""
    path = Path(sample)
    header: tuple[str, ...] | None = None
    ids: list[str] = []
    lines: dict[str, int] = {}
    problems: list[str] = []
    is_list = False
    for record in _records(path, "sample submission"):
        if record.fields is None:
            problems.append(_csv_error(path, record))
            continue
        if header is None:
            header = tuple(record.fields)
            is_list = bool(fmt and fmt.id_list and len(header) == 1 and header != fmt.header)
            if not is_list or header[0].strip().lower() == fmt.id_list.lower():
                continue  # a header row; a plain id list may come without one
        if record.fields and record.fields[0] not in lines:
            ids.append(record.fields[0])
            lines[record.fields[0]] = record.line
    if header is None:
        raise SubmissionError(f"{path}: the sample submission is empty")
    return SampleIds(path, header, ids, lines, is_list, problems)


def read_sample_ids(sample: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(header, ids in order, each once) of a sample_submission.csv."""
    got = read_sample(sample)
    return list(got.header), got.ids


# --- validating --------------------------------------------------------------------------------

class _Problems:
    """Problems grouped by kind, each kind listed up to MAX_PER_KIND times, then counted."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[str] = []
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= MAX_PER_KIND:
            self.items.append(message)

    def result(self) -> list[str]:
        out = list(self.items)
        for kind, count in self.counts.items():
            if count > MAX_PER_KIND:
                out.append(f"{self.path}: ... and {count - MAX_PER_KIND} more problems of the kind '{kind}'")
        return out


@dataclass
class SubmissionCheck:
    """What validating one submission CSV found: problems (the file is invalid when there is any), notes
    (worth knowing, not wrong), and the number of data rows as a CSV reader counts them."""

    path: Path
    competition: str
    problems: list[str]
    notes: list[str]
    rows: int

    @property
    def ok(self) -> bool:
        """True when the file has no problem."""
        return not self.problems


def validate(path: str | os.PathLike, fmt: SubmissionFormat, sample: str | os.PathLike | None = None,
             test_ids: Sequence[str] | None = None, *, shapes: Mapping[str, tuple[int, int]] | None = None,
             test_root: str | os.PathLike | None = None) -> SubmissionCheck:
    """Check a submission CSV against its competition's declared format: the one validator behind
    `segkit validate`, `segkit predict`, `Run.validate` and `segkit submit`.

    sample: the competition's sample_submission.csv (38-Cloud: the test patch list); the ids must be its ids.
    test_ids: the test images the submission must cover (when there is no sample file); every image id of
        the file must be one of them, and each of them must have a row. `test_root` names where they are.
    shapes: image id -> (H, W) every RLE of that image refers to (for formats that declare no fixed size).
    """
    check = _check_file(Path(path), fmt, sample, shapes)
    if test_ids is not None:
        check.problems += _id_problems(check.path, fmt, list(test_ids), test_root)
    return check


def _id_problems(path: Path, fmt: SubmissionFormat, test_ids: list[str],
                 root: str | os.PathLike | None) -> list[str]:
    """A submission's image ids against the test images: which have no row, which are not test images."""
    try:
        images = {fmt.image_of(i) for i in read_sample(path).ids}
    except SubmissionError:  # an empty file: its problem is already listed
        return []
    missing = [i for i in test_ids if i not in images]
    extra = sorted(images - set(test_ids))
    under = f" under {root}" if root is not None else ""
    out = []
    if missing:
        out.append(f"{path}: {len(missing)} of the {len(test_ids)} test images{under} have no row "
                   f"(first: {missing[0]}); predict every test image")
    if extra:
        out.append(f"{path}: {len(extra)} ids are not test images{under} (first: {extra[0]})")
    return out


def _check_file(path: Path, fmt: SubmissionFormat, sample: str | os.PathLike | None,
                shapes: Mapping[str, tuple[int, int]] | None) -> SubmissionCheck:
    """Check a submission CSV against a declared format (and its sample_submission.csv, or for 38-Cloud the
    test patch list, when given): CSV syntax as pandas reads it, header, field count, ids
    (exact, no spaces around them, the declared form), duplicates, every RLE valid for the image size (from
    `shapes`, image id -> (H, W), when given), labels complete, objects of one image disjoint, ids equal to
    the sample's. Rows in another order than the sample are a note: Kaggle matches rows by id.
    Every problem names the file, the line (and row) and the id."""
    problems = _Problems(path)
    notes: list[str] = []
    seen = _RowsSeen()
    header_seen = False
    row = 0
    for record in _records(path, "submission"):
        if record.fields is None:
            problems.add("csv", _csv_error(path, record))
            row += header_seen
            header_seen = True
        elif not header_seen:
            header_seen = True
            _check_header(path, record.line, tuple(record.fields), fmt, problems)
        elif not record.fields:
            problems.add("blank line", f"{path}, line {record.line}: blank line (pandas skips it; remove it)")
        else:
            row += 1
            _check_row(path, row, record.line, record.fields, fmt, sample, shapes, seen, problems)
    if not header_seen:
        problems.add("header", f"{path}: the file is empty; expected the header {','.join(fmt.header)}")
        return SubmissionCheck(path, fmt.name, problems.result(), notes, 0)
    _check_images(path, fmt, seen, problems)
    if sample is not None:
        _compare_with_sample(path, read_sample(sample, fmt), fmt, seen.order, seen.first_row, problems, notes)
    if row == 0:
        problems.add("rows", f"{path}: the file has a header but no rows")
    return SubmissionCheck(path, fmt.name, problems.result(), notes, row)


@dataclass
class _RowsSeen:
    """What `_check_file` has read of a submission's rows so far, for the checks across rows."""

    order: list[str] = field(default_factory=list)  # ids (images for object rows) in order of first appearance
    first_row: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (row, line)
    labels: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # image -> labels with a row
    image_row: dict[str, tuple[int, int]] = field(default_factory=dict)  # first (row, line) of each image (label rows)
    objects: dict[str, list[tuple[int, int, np.ndarray, np.ndarray]]] = field(
        default_factory=lambda: defaultdict(list))  # image -> (row, line, starts, lengths) of each object
    blank_rows: dict[str, int] = field(default_factory=dict)  # image -> line of its object-free row


def _check_row(path: Path, row: int, line: int, fields: list[str], fmt: SubmissionFormat,
               sample: str | os.PathLike | None, shapes: Mapping[str, tuple[int, int]] | None,
               seen: _RowsSeen, problems: _Problems) -> None:
    """One data row: its field count, its id, its RLE (against the image's size); what it adds to `seen`."""
    where = f"{path}, line {line} (row {row})"
    if len(fields) != 2:
        problems.add("field count", f"{where}, id '{_show(fields[0])}': {len(fields)} fields, expected 2 "
                                    f"({','.join(fmt.header)})")
        return
    raw_id, text = fields
    where_id = f"{where}, id '{_show(raw_id)}'"
    image = _check_row_id(where, where_id, raw_id, row, line, fmt, sample, seen, problems)
    if image is None:
        return
    shape = shapes.get(image, fmt.shape) if shapes is not None else fmt.shape
    runs = _parse_row_rle(where_id, text, shape, fmt, problems)
    if runs is not None and fmt.rows == "object":
        _add_object(where_id, raw_id.strip(), row, line, runs, seen, problems)


def _check_row_id(where: str, where_id: str, raw_id: str, row: int, line: int, fmt: SubmissionFormat,
                  sample: str | os.PathLike | None, seen: _RowsSeen, problems: _Problems) -> str | None:
    """A row's id: exact, unique (but for object rows), of the declared form; noted in `seen`. Returns the
    image it belongs to ("" when a label row's id names no label), or None when the row is not read further."""
    row_id = raw_id.strip()
    if not row_id:
        problems.add("empty id", f"{where}: empty id")
        return None
    if row_id != raw_id:
        problems.add("spaces", f"{where_id}: spaces around the id; Kaggle matches ids exactly (write '{_show(row_id)}')")
    if "\n" in row_id or "\r" in row_id:
        problems.add("line break", f"{where_id}: the id holds a line break (a quoted field over several "
                                   f"lines); Kaggle would not match it")
    if row_id in seen.first_row and fmt.rows != "object":
        problems.add("duplicate", f"{where_id}: duplicate id (first at line {seen.first_row[row_id][1]})")
        return None
    if row_id not in seen.first_row:
        seen.first_row[row_id] = (row, line)
        seen.order.append(row_id)
    image = row_id
    if fmt.rows == "label":
        split = fmt.split_label(row_id)
        if split is None:
            problems.add("label", f"{where_id}: the id does not end in _<label> with a label of "
                                  f"{', '.join(fmt.labels)}")
            image = ""
        else:
            image, label = split
            seen.labels[image].add(label)
            seen.image_row.setdefault(image, (row, line))
    if sample is None and fmt.id_suffix and image and not image.endswith(fmt.id_suffix):
        form = f"<image>{fmt.id_suffix}_<label>" if fmt.rows == "label" else f"<image>{fmt.id_suffix}"
        problems.add("id form", f"{where_id}: {fmt.name} ids are {form} (the test file name)")
    elif sample is None and fmt.id_pattern and image and not re.fullmatch(fmt.id_pattern, image):
        form = "<image>_<label> with <image> matching" if fmt.rows == "label" else "image ids matching"
        problems.add("id form", f"{where_id}: {fmt.name} ids are {form} {fmt.id_pattern}")
    return image


def _parse_row_rle(where_id: str, text: str, shape: tuple[int, int] | None, fmt: SubmissionFormat,
                   problems: _Problems) -> tuple[np.ndarray, np.ndarray] | None:
    """A row's RLE field as (starts, lengths) for an image of `shape` (any size when None); None, with the
    problem added, when it is not a valid RLE in the format's scheme."""
    write_empty = f"write '{fmt.empty}'" if fmt.empty else "leave the field blank"
    if text.strip().lower() in ("nan", "none", "null"):
        problems.add("rle", f"{where_id}: '{text.strip()}' written for an empty mask; {write_empty}")
        return None
    if fmt.empty and not text.strip():
        problems.add("rle", f"{where_id}: blank field; {fmt.name} writes an empty mask as '{fmt.empty}'")
        return None
    if "\n" in text or "\r" in text:
        problems.add("line break", f"{where_id}: the RLE holds a line break (a quoted field over several "
                                   f"lines); write each row on one line")
        return None
    try:
        return rle.parse_runs(text, shape[0] * shape[1] if shape else _UNBOUNDED, fmt.scheme)
    except RLEError as exc:
        size = f"{shape[0]}x{shape[1]}" if shape else "any size"
        scheme = ", relative starts" if fmt.scheme == "relative" else ""
        problems.add("rle", f"{where_id}: {exc} (image {size}, {rle.ORDER_NAMES[fmt.order]}{scheme})")
        return None


def _add_object(where_id: str, image: str, row: int, line: int, runs: tuple[np.ndarray, np.ndarray],
                seen: _RowsSeen, problems: _Problems) -> None:
    """An object row: one object of `image`, or its one blank row when it has none (never both)."""
    starts, lengths = runs
    if starts.size == 0:
        if image in seen.blank_rows or seen.objects[image]:
            problems.add("object rows", f"{where_id}: a blank row for an image that already has rows; "
                                        f"an object-free image gets exactly one blank row")
        seen.blank_rows.setdefault(image, line)
    else:
        if image in seen.blank_rows:
            problems.add("object rows", f"{where_id}: an object row for an image written as object-free "
                                        f"at line {seen.blank_rows[image]}")
        seen.objects[image].append((row, line, starts, lengths))


def _check_images(path: Path, fmt: SubmissionFormat, seen: _RowsSeen, problems: _Problems) -> None:
    """The checks across rows: every label of a label-row image has a row; objects of one image are disjoint."""
    if fmt.rows == "label":
        for image, labels in seen.labels.items():
            missing = [lab for lab in fmt.labels if lab not in labels]
            if missing:
                r, ln = seen.image_row[image]
                problems.add("label", f"{path}, line {ln} (row {r}), id '{image}': the image lacks rows for "
                                      f"{', '.join(missing)}")
    if fmt.rows == "object":
        for image_id, items in seen.objects.items():
            _check_disjoint(path, image_id, items, problems)


def _check_header(path: Path, line: int, got: tuple[str, ...], fmt: SubmissionFormat, problems: _Problems) -> None:
    if got == fmt.header:
        return
    if tuple(f.strip() for f in got) == fmt.header:
        spaced = ", ".join(f"'{f}'" for f in got if f != f.strip())
        problems.add("header", f"{path}, line {line}: spaces around the header name(s) {spaced}; Kaggle matches "
                               f"column names exactly (write {','.join(fmt.header)})")
        return
    problems.add("header", f"{path}, line {line}: header is {','.join(got) or '(empty)'}; "
                           f"{fmt.name} expects {','.join(fmt.header)}")


def _check_disjoint(path: Path, image_id: str, items: list[tuple[int, int, np.ndarray, np.ndarray]],
                    problems: _Problems) -> None:
    """Report any two object rows of one image whose runs share a pixel."""
    if len(items) < 2:
        return
    line_of = {r: ln for r, ln, _, _ in items}
    starts = np.concatenate([s for _, _, s, _ in items])
    ends = np.concatenate([s + n for _, _, s, n in items])
    owner = np.concatenate([np.full(len(s), r) for r, _, s, _ in items])
    order = np.argsort(starts, kind="stable")
    starts, ends, owner = starts[order], ends[order], owner[order]
    running_end = np.maximum.accumulate(ends)
    clash = np.flatnonzero(starts[1:] < running_end[:-1])
    reported = set()
    for i in clash:
        # the earlier run reaching furthest past this start belongs to the clashing row
        j = int(np.flatnonzero(ends[: i + 1] > starts[i + 1])[-1])
        first, second = sorted((int(owner[j]), int(owner[i + 1])))
        if (first, second) in reported or first == second:
            continue
        reported.add((first, second))
        problems.add("overlap", f"{path}, line {line_of[second]} (row {second}), id '{image_id}': its mask overlaps "
                                f"the mask of row {first} (line {line_of[first]}); masks of one image must not overlap")


def _compare_with_sample(path: Path, sample: SampleIds, fmt: SubmissionFormat, order: list[str],
                         first_row: dict[str, tuple[int, int]], problems: _Problems, notes: list[str]) -> None:
    for text in sample.problems:
        problems.add("sample", text)
    if not sample.is_list and tuple(h.strip() for h in sample.header) != fmt.header:
        problems.add("sample", f"{sample.path}, line 1: the sample's header is {','.join(sample.header)}, not the "
                               f"{fmt.name} header {','.join(fmt.header)}: is it the right sample?")
    wanted = set(sample.ids)
    got = set(order)
    for sid in sample.ids:
        if sid not in got:
            problems.add("missing id", f"{sample.path}, line {sample.lines[sid]}, id '{_show(sid)}': this id of the sample "
                                       f"has no row in {path}")
    for rid in order:
        if rid not in wanted:
            row, line = first_row[rid]
            problems.add("unknown id", f"{path}, line {line} (row {row}), id '{_show(rid)}': not in the sample {sample.path}")
    common_sub = [r for r in order if r in wanted]
    common_sample = [s for s in sample.ids if s in got]
    for rid, sid in zip(common_sub, common_sample):
        if rid != sid:
            row, line = first_row[rid]
            notes.append(f"{path}, line {line} (row {row}), id '{_show(rid)}': rows are in another order than the sample "
                         f"{sample.path} (it has '{_show(sid)}' there); fine, Kaggle matches rows by id")
            break
