"""Durations as a user writes them ("30m", "1h30m", "90s" or seconds) and as segkit prints them, and Kaggle's
session limits: plain Python, so the config can check train.time_budget without importing Keras."""
from __future__ import annotations

import math
import re
from typing import Any

from segkit.errors import ConfigError

# Kaggle's session limits (seconds): 12 h for CPU / GPU kernels, 9 h for TPU kernels
KAGGLE_SESSION_S, KAGGLE_TPU_SESSION_S = 12 * 3600, 9 * 3600
_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m(?:in)?)?\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$")


def parse_duration(value: Any, where: str = "train.time_budget") -> float | None:
    """Seconds of a duration: a number of seconds, or text such as "30m", "1h30m", "90s", "2h"; None stays None.
    ConfigError naming `where` otherwise."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected seconds or a duration such as 30m / 1h30m, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            m = _DURATION.match(text)
            if not text or not m or not any(m.groups()):
                raise ConfigError(f"{where}: expected seconds or a duration such as 30m / 1h30m / 90s, "
                                  f"got {value!r}") from None
            seconds = sum(float(g) * u for g, u in zip(m.groups(), (3600.0, 60.0, 1.0)) if g)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigError(f"{where}: must be a duration > 0, got {value!r}")
    return seconds


def kaggle_budget(session_s: float) -> float:
    """The training budget of a Kaggle kernel with a `session_s` limit: the limit less a margin for reading the
    data, writing the cache, the OOF predictions and the outputs (the larger of 30 minutes and 15 %, at most
    half the session)."""
    return session_s - min(max(1800.0, 0.15 * session_s), 0.5 * session_s)


def format_duration(seconds: float) -> str:
    """"1h05m", "12m30s", "45s"."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
