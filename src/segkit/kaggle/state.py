"""The local record of what a Kaggle workflow already did (kernel versions pushed, submissions made), so that
rerunning an interrupted command resumes waiting instead of pushing or submitting again. One JSON file per
workflow, written atomically after every step; the run folder owns the paths (RunDir.kaggle_pushes /
kaggle_submissions)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from segkit.errors import KaggleError
from segkit.storage import atomic_write


class StateFile:
    """A JSON object of records under one top-level key (`kernels` or `submissions`), keyed by a string."""

    def __init__(self, path: str | Path, section: str) -> None:
        self.path = Path(path)
        self.section = section

    def _load(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise KaggleError(f"{self.path}: damaged Kaggle state file; delete it (reruns then push or submit "
                              "again) or pass --again") from None
        if not isinstance(data, dict) or not isinstance(data.get(self.section, {}), dict):
            raise KaggleError(f"{self.path}: not a segkit Kaggle state file; delete it or pass --again")
        return data

    def get(self, key: str) -> dict[str, Any] | None:
        """The record of `key`, if any."""
        rec = self._load().get(self.section, {}).get(key)
        return dict(rec) if isinstance(rec, dict) else None

    def put(self, key: str, **fields: Any) -> dict[str, Any]:
        """Replace the record of `key` (stamped with the time) and write the file atomically."""
        return self._write(key, {**fields, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}, replace=True)

    def update(self, key: str, **fields: Any) -> dict[str, Any]:
        """Add fields to the record of `key` and write the file atomically."""
        return self._write(key, {**fields, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}, replace=False)

    def _write(self, key: str, fields: dict[str, Any], replace: bool) -> dict[str, Any]:
        data = self._load()
        records = data.setdefault(self.section, {})
        rec = fields if replace else {**(records.get(key) or {}), **fields}
        records[key] = rec
        with atomic_write(self.path) as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
        return dict(rec)
