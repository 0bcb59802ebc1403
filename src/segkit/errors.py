"""The kit's own exceptions: errors a user can cause, printed by the CLI without a traceback."""
from __future__ import annotations

from typing import Callable


class SegkitError(Exception):
    """Base of every user-facing error; the message says what went wrong and where."""


class ConfigError(SegkitError):
    """A config file or override is wrong (unknown key, bad type, bad value)."""


class DataError(SegkitError):
    """A dataset file is missing, corrupt, or inconsistent with its neighbours."""


class RLEError(SegkitError):
    """A run-length encoding is malformed or does not fit the image."""


class SubmissionError(SegkitError):
    """A submission file is invalid for its competition."""


class TrainingError(SegkitError):
    """Training or prediction cannot proceed (missing checkpoints, incompatible run)."""


class KaggleError(SegkitError):
    """The Kaggle API refused or failed a call, or credentials are missing."""


class StorageError(SegkitError):
    """A file or folder cannot be written: disk full, read-only file system, a file where a folder should be."""


def check_kwargs(func: Callable, kwargs: dict, where: str, skip: tuple[str, ...] = ("self",)) -> None:
    """Raise ConfigError naming the key (and the closest valid one) for any keyword `func` does not take."""
    import inspect

    params = inspect.signature(func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n in params if n not in skip]
    for key in kwargs:
        if key not in valid:
            hint = did_you_mean(key, valid, cutoff=0.5, show=lambda close: f"{where}.{close}")
            raise ConfigError(f"{where}.{key}: unknown key{hint} (valid: {', '.join(valid) or 'none'})")


def did_you_mean(name: object, known, cutoff: float = 0.6, show=str) -> str:
    """"; did you mean 'X'?" for the known name closest to a mistyped one (empty when none is close);
    `show` formats the suggestion (e.g. as a full dotted key)."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=cutoff)
    return f"; did you mean '{show(close[0])}'?" if close else ""


def unknown_name(where: str, what: str, name: object, known, cutoff: float = 0.6,
                 listed: str = "known") -> ConfigError:
    """The one error for a name that is not among the known ones: where it was given, the closest known name
    and the full list, e.g. "predict.tta: unknown augmentation 'hfilp'; did you mean 'hflip'? (known: …)"
    (`listed` is the word before the list)."""
    known = list(known)
    return ConfigError(f"{where}: unknown {what} '{name}'{did_you_mean(name, known, cutoff)} "
                       f"({listed}: {', '.join(str(k) for k in known)})")
