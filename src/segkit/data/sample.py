"""The record every adapter produces: one image (+ mask) with its fold group and stratum."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, eq=False)
class Sample:
    """One training or test item.

    id: unique id (the submission row id for test items, e.g. a patch name or image file name).
    image: source files of the image (one per band for 38-Cloud, else one).
    mask: source files of the mask; empty when there is no ground truth or it lives in `meta`.
    group: fold grouping key (scene id, car id); items of one group never straddle a fold split.
    stratum: integer bin for stratified folds (e.g. cloud-cover decile).
    meta: adapter-specific extras (patch row/col, RLE strings, ...).
    """

    id: str
    image: tuple[str, ...]
    mask: tuple[str, ...] = ()
    group: str = ""
    stratum: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
