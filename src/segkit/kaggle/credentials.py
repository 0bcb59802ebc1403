"""Find Kaggle credentials the way the kaggle client does, before importing it, so a missing or broken
setup becomes a clear error instead of the client's SystemExit. Secrets are read only to check they exist;
they are never returned, printed or logged."""
from __future__ import annotations

import json
import logging
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from segkit.errors import KaggleError

log = logging.getLogger("segkit.kaggle")

SETUP_HELP = (
    "set up Kaggle credentials in one of these ways:\n"
    "  1. an API token: create one at https://www.kaggle.com/settings (API > Generate New Token) and\n"
    "     export KAGGLE_API_TOKEN=<token>   (or save it to ~/.kaggle/access_token)\n"
    "  2. a legacy API key: put {\"username\": ..., \"key\": ...} in ~/.kaggle/kaggle.json (see\n"
    "     kaggle.json.example; `chmod 600` it), or export KAGGLE_USERNAME and KAGGLE_KEY\n"
    "  KAGGLE_CONFIG_DIR moves the folder that holds kaggle.json."
)


@dataclass(frozen=True)
class Credentials:
    """Which credentials the kaggle client will use (never the secret itself)."""

    method: str  # "token", "key" or "oauth"
    username: str | None  # known without a network call for "key"; None otherwise
    source: str  # where they came from (an environment variable name or a file path)
    config_dir: Path  # the folder the client reads kaggle.json from


def config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The folder holding kaggle.json: KAGGLE_CONFIG_DIR, ~/.kaggle, or (Linux, when ~/.kaggle is absent)
    $XDG_CONFIG_HOME/kaggle; the same rule as the client."""
    env = os.environ if environ is None else environ
    if env.get("KAGGLE_CONFIG_DIR"):
        return Path(env["KAGGLE_CONFIG_DIR"]).expanduser()
    home = Path(env.get("HOME") or Path.home())
    legacy = home / ".kaggle"
    if sys.platform.startswith("linux") and not legacy.exists():
        return Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"
    return legacy


def find_credentials(environ: Mapping[str, str] | None = None) -> Credentials:
    """The credentials the client will pick, in its order: an access token, then a legacy key (kaggle.json,
    overridden by KAGGLE_USERNAME/KAGGLE_KEY), then `kaggle auth login` OAuth credentials.
    Raises KaggleError explaining the setup when there are none or kaggle.json is broken."""
    env = os.environ if environ is None else environ
    home = Path(env.get("HOME") or Path.home())
    cdir = config_dir(env)

    if env.get("KAGGLE_API_TOKEN"):
        return Credentials("token", None, "KAGGLE_API_TOKEN", cdir)
    for name in ("access_token", "access_token.txt"):
        token_file = home / ".kaggle" / name
        if token_file.is_file() and token_file.read_text().strip():
            warn_if_readable(token_file)
            return Credentials("token", None, str(token_file), cdir)

    file_values = read_kaggle_json(cdir / "kaggle.json")
    username = env.get("KAGGLE_USERNAME") or file_values.get("username")
    key_set = bool(env.get("KAGGLE_KEY") or file_values.get("key"))
    if username and key_set:
        source = "KAGGLE_USERNAME/KAGGLE_KEY" if env.get("KAGGLE_KEY") else str(cdir / "kaggle.json")
        return Credentials("key", str(username), source, cdir)
    if (home / ".kaggle" / "credentials.json").is_file():
        return Credentials("oauth", None, str(home / ".kaggle" / "credentials.json"), cdir)
    if username or key_set:
        missing = "KAGGLE_KEY (or 'key' in kaggle.json)" if username else "KAGGLE_USERNAME (or 'username')"
        raise KaggleError(f"Kaggle credentials are incomplete: {missing} is missing; {SETUP_HELP}")
    raise KaggleError(f"no Kaggle credentials found; {SETUP_HELP}")


def read_kaggle_json(path: Path) -> dict:
    """The username/key mapping in kaggle.json ({} when absent); KaggleError naming the file when it is not
    the expected JSON object (the client would silently ignore it)."""
    if not path.is_file():
        return {}
    warn_if_readable(path)
    try:
        data = json.loads(path.read_text() or "{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise KaggleError(
            f'{path}: not valid JSON; expected {{"username": "...", "key": "..."}} (see kaggle.json.example)'
        ) from None
    if not isinstance(data, dict):
        raise KaggleError(f'{path}: expected a JSON object {{"username": "...", "key": "..."}}')
    for field in ("username", "key"):
        if field in data and not isinstance(data[field], str):
            raise KaggleError(f"{path}: '{field}' must be a string")
    return data


def warn_if_readable(path: Path) -> bool:
    """Warn (once per call) when a secrets file is readable by group or others; True if it is."""
    if os.name == "nt":
        return False
    mode = path.stat().st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWGRP | stat.S_IWOTH):
        log.warning("%s is readable by other users of this machine; run: chmod 600 %s", path, path)
        return True
    return False


def secret_values(environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(where, value) of every Kaggle secret present in this environment, so a kernel build can refuse to
    embed one; never print the values."""
    env = os.environ if environ is None else environ
    home = Path(env.get("HOME") or Path.home())
    found: list[tuple[str, str]] = []
    for var in ("KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        if env.get(var):
            found.append((var, env[var]))
    for name in ("access_token", "access_token.txt"):
        path = home / ".kaggle" / name
        if path.is_file():
            found.append((str(path), path.read_text().strip()))
    path = config_dir(env) / "kaggle.json"
    try:
        key = json.loads(path.read_text()).get("key") if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        key = None
    if isinstance(key, str):
        found.append((str(path), key))
    return [(where, value) for where, value in found if len(value) >= 8]
