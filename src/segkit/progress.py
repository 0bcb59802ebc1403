"""Progress of a long loop: a tqdm bar on a terminal or in a notebook; in a log file (stderr not a terminal) a
plain line now and then instead of the bar's hundreds of carriage-return updates on one line."""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")

LOG_EVERY_S = 30.0  # seconds between two progress lines in a log


def progress(items: Iterable[T], desc: str, total: int | None = None, quiet: bool = False, unit: str = "it",
             stream: TextIO | None = None) -> Iterator[T]:
    """`items`, reporting progress on `stream` (stderr): a bar where one can redraw itself, else a line
    "desc: i/total unit" at most every LOG_EVERY_S seconds and one when the loop ends; nothing when quiet."""
    stream = stream or sys.stderr
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if quiet or total == 0:
        return iter(items)
    if _is_terminal(stream) or "ipykernel" in sys.modules:
        from tqdm.auto import tqdm

        return iter(tqdm(items, desc=desc, total=total, unit=unit, leave=False, file=stream))
    return _lines(items, desc, total, unit, stream)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _lines(items: Iterable[T], desc: str, total: int | None, unit: str, stream: TextIO) -> Iterator[T]:
    last = time.monotonic()
    done = 0
    of = f"/{total}" if total is not None else ""
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= LOG_EVERY_S:
            print(f"{desc}: {done}{of} {unit}", file=stream, flush=True)
            last = now
    print(f"{desc}: {done}{of} {unit} done", file=stream, flush=True)
