"""Competition submission CSVs: a streamed, atomic writer and a validator that names every problem by row.

The competition's rules (header, pixel order, image size, label rows, one row per object) are read from its
adapter class, so they live in one place:

- `submission_header`, `rle_order`, `classes` (the base Adapter attributes);
- `submission_shape`: (H, W) every RLE refers to, or None when it varies by image (then only the RLE's
  syntax is checked);
- `label_rows`: one row per image and label, id `<image>_<label>`, every label present (Understanding Clouds);
- `object_rows`: one row per object with several rows per id, objects of one id never overlapping, and an
  object-free id written as a single blank row (Airbus).
"""
from __future__ import annotations

import csv
import io
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from segkit import rle
from segkit.data.io import atomic_write
from segkit.errors import ConfigError, RLEError, SubmissionError

MAX_PER_KIND = 20  # problems listed per kind before summarising the rest
_UNBOUNDED = 1 << 62


@dataclass(frozen=True)
class SubmissionRules:
    """What a valid submission looks like for one competition."""

    competition: str
    header: tuple[str, str]
    order: str
    shape: tuple[int, int] | None
    labels: tuple[str, ...] = ()
    object_rows: bool = False


def rules_for(competition: str) -> SubmissionRules:
    """The submission rules of `competition`, taken from its registered adapter class."""
    from segkit.data.competitions.base import adapter_class

    try:
        cls = adapter_class(competition)
    except ConfigError as exc:
        raise SubmissionError(str(exc).replace("data.competition: ", "")) from None
    shape = getattr(cls, "submission_shape", None)
    return SubmissionRules(
        competition=competition,
        header=tuple(cls.submission_header),
        order=cls.rle_order,
        shape=tuple(int(s) for s in shape) if shape else None,
        labels=tuple(cls.classes) if getattr(cls, "label_rows", False) else (),
        object_rows=bool(getattr(cls, "object_rows", False)),
    )


# --- writing -----------------------------------------------------------------------------------

def write_rows(path: str | os.PathLike, header: Sequence[str], rows: Iterable[tuple[str, str | None]],
               sample_ids: Sequence[str] | None = None) -> int:
    """Write `rows` (id, rle) as a CSV, streamed one row at a time into a temporary file that replaces
    `path` only when every row is written; returns the number of rows.

    With `sample_ids` (the first column of sample_submission.csv) the rows come out in that order, all rows
    of one id together: rows already in order go straight to the file; once one arrives out of order the rest
    are spooled to a temporary file on disk and copied back in sample order, so memory never holds the rows.
    An id that is not in the sample, or a sample id that gets no row, raises SubmissionError (nothing written).
    """
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


# --- validating --------------------------------------------------------------------------------

class _Problems:
    """Problems grouped by kind, each kind listed up to MAX_PER_KIND times, then counted."""

    def __init__(self) -> None:
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
                out.append(f"... and {count - MAX_PER_KIND} more problems of the kind '{kind}'")
        return out


def _read_csv_rows(path: Path, what: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every line of a CSV, streamed."""
    if not path.is_file():
        raise SubmissionError(f"{path}: {what} not found")
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # a noisy full-size RLE runs to megabytes
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            for fields in reader:
                yield reader.line_num, fields
    except UnicodeDecodeError as exc:
        raise SubmissionError(f"{path}: {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise SubmissionError(f"{path}: {what} is not a readable CSV ({exc})") from None


def read_sample_ids(sample: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(header, ids in order) of a sample_submission.csv."""
    rows = _read_csv_rows(Path(sample), "sample submission")
    header: list[str] | None = None
    ids: list[str] = []
    for _, fields in rows:
        if header is None:
            header = [f.strip() for f in fields]
            continue
        if fields:
            ids.append(fields[0])
    if header is None:
        raise SubmissionError(f"{sample}: the sample submission is empty")
    return header, ids


def validate_submission(path: str | os.PathLike, competition: str,
                        sample: str | os.PathLike | None = None) -> list[str]:
    """Check a submission CSV against its competition's rules (and its sample_submission.csv when given):
    header, field count, duplicate ids, every RLE valid for the image size, labels complete, objects of one
    image disjoint, ids and their order equal to the sample's. Returns the problems, each naming its row;
    an empty list means the file is valid."""
    path = Path(path)
    rules = rules_for(competition)
    problems = _Problems()
    n_pixels = rules.shape[0] * rules.shape[1] if rules.shape else _UNBOUNDED
    size_text = f"{rules.shape[0]}x{rules.shape[1]}" if rules.shape else "any size"

    order: list[str] = []  # ids (or images for object rows) in order of first appearance
    first_row: dict[str, int] = {}
    labels_seen: dict[str, set[str]] = defaultdict(set)
    image_row: dict[str, int] = {}  # first row of each image (label rows)
    objects: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = defaultdict(list)  # id -> (row, starts, lengths)
    blank_rows: dict[str, int] = {}
    header_seen = False
    row = 0
    for line, fields in _read_csv_rows(path, "submission"):
        if not header_seen:
            header_seen = True
            got = tuple(f.strip().lstrip("\ufeff") for f in fields)
            if got != rules.header:
                problems.add("header", f"line {line}: header is {','.join(got) or '(empty)'}; "
                                       f"{competition} expects {','.join(rules.header)}")
            continue
        row += 1
        where = f"row {row} (line {line})"
        if not fields:
            problems.add("blank line", f"{where}: blank line")
            continue
        if len(fields) != 2:
            problems.add("field count", f"{where}: {len(fields)} fields, expected 2 ({','.join(rules.header)})")
            continue
        row_id, text = fields[0].strip(), fields[1]
        if not row_id:
            problems.add("empty id", f"{where}: empty id")
            continue
        if row_id in first_row and not rules.object_rows:
            problems.add("duplicate", f"{where}: duplicate id '{row_id}' (first at row {first_row[row_id]})")
            continue
        if row_id not in first_row:
            first_row[row_id] = row
            order.append(row_id)
        if rules.labels:
            image, sep, label = row_id.rpartition("_")
            if not sep or label not in rules.labels:
                problems.add("label", f"{where}: id '{row_id}' does not end in _<label> with a label of "
                                      f"{', '.join(rules.labels)}")
            else:
                labels_seen[image].add(label)
                image_row.setdefault(image, row)
        if text.strip().lower() in ("nan", "none", "null"):
            problems.add("rle", f"{where}, id '{row_id}': '{text.strip()}' written for an empty mask; leave the field blank")
            continue
        try:
            starts, lengths = rle.parse_runs(text, n_pixels)
        except RLEError as exc:
            problems.add("rle", f"{where}, id '{row_id}': {exc} (image {size_text}, order {rules.order})")
            continue
        if rules.object_rows:
            if starts.size == 0:
                if row_id in blank_rows or objects[row_id]:
                    problems.add("object rows", f"{where}, id '{row_id}': a blank row for an image that already has "
                                                f"rows; an object-free image gets exactly one blank row")
                blank_rows.setdefault(row_id, row)
            else:
                if row_id in blank_rows:
                    problems.add("object rows", f"{where}, id '{row_id}': an object row for an image written as "
                                                f"object-free at row {blank_rows[row_id]}")
                objects[row_id].append((row, starts, lengths))

    if not header_seen:
        problems.add("header", f"{path}: the file is empty; expected the header {','.join(rules.header)}")
        return problems.result()
    if rules.labels:
        for image, seen in labels_seen.items():
            missing = [lab for lab in rules.labels if lab not in seen]
            if missing:
                problems.add("label", f"row {image_row[image]}: image '{image}' lacks rows for {', '.join(missing)}")
    if rules.object_rows:
        for image_id, items in objects.items():
            _check_disjoint(image_id, items, problems)
    if sample is not None:
        _compare_with_sample(Path(sample), rules, order, first_row, problems)
    if row == 0:
        problems.add("rows", "the file has a header but no rows")
    return problems.result()


def _check_disjoint(image_id: str, items: list[tuple[int, np.ndarray, np.ndarray]], problems: _Problems) -> None:
    """Report any two object rows of one image whose runs share a pixel."""
    if len(items) < 2:
        return
    starts = np.concatenate([s for _, s, _ in items])
    ends = np.concatenate([s + n for _, s, n in items])
    owner = np.concatenate([np.full(len(s), r) for r, s, _ in items])
    order = np.argsort(starts, kind="stable")
    starts, ends, owner = starts[order], ends[order], owner[order]
    running_end = np.maximum.accumulate(ends)
    clash = np.flatnonzero(starts[1:] < running_end[:-1])
    reported = set()
    for i in clash:
        # the earlier run reaching furthest past this start belongs to the clashing row
        j = int(np.flatnonzero(ends[: i + 1] > starts[i + 1])[-1])
        pair = tuple(sorted((int(owner[j]), int(owner[i + 1]))))
        if pair in reported or pair[0] == pair[1]:
            continue
        reported.add(pair)
        problems.add("overlap", f"row {pair[1]}, id '{image_id}': its mask overlaps the mask of row {pair[0]}; "
                                f"masks of one image must not overlap")


def _compare_with_sample(sample: Path, rules: SubmissionRules, order: list[str], first_row: dict[str, int],
                         problems: _Problems) -> None:
    header, sample_ids = read_sample_ids(sample)
    if tuple(header) != rules.header:
        problems.add("sample", f"{sample}: the sample's header is {','.join(header)}, not the "
                               f"{rules.competition} header {','.join(rules.header)}: is it the right sample?")
    wanted = set(sample_ids)
    got = set(order)
    for sid in sample_ids:
        if sid not in got:
            problems.add("missing id", f"id '{sid}' of the sample has no row")
    for rid in order:
        if rid not in wanted:
            problems.add("unknown id", f"row {first_row[rid]}: id '{rid}' is not in the sample submission")
    common_sub = [r for r in order if r in wanted]
    common_sample = [s for s in sample_ids if s in got]
    for rid, sid in zip(common_sub, common_sample):
        if rid != sid:
            problems.add("order", f"row {first_row[rid]}: id '{rid}' is out of order; the sample has '{sid}' "
                                  f"there (row {first_row[sid]} in this file)")
            break
