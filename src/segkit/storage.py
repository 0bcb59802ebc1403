"""Atomic file writes: the ground floor every writer of segkit stands on.

Every temporary file or folder a writer makes is named `.<name>.segkit-<pid>-<random>.tmp` beside its
destination, so one left behind by a killed process is recognisable and swept by the next writer in that folder;
an OSError while writing (disk full, read-only file system, a file where a folder should be) becomes a
StorageError naming the path and the reason.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from segkit.errors import StorageError

TMP_TAG = ".segkit-"  # temporary names: f".{name}{TMP_TAG}{pid}-{random}.tmp" (or ".old" for a folder moved aside)
_TMP_RE = re.compile(r"^\..+\.segkit-(\d+)-[A-Za-z0-9_]+\.(tmp|old)(\.[A-Za-z0-9]+)?$")  # (.keras/.npy kept)
_SWEPT: set[str] = set()  # folders already swept by this process

# errno -> (reason, what to do)
_REASONS = {
    errno.ENOSPC: ("no space left on device", "free some space or write somewhere else"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write somewhere else"),
    errno.EFBIG: ("file too large for this file system", "write somewhere else"),
    errno.EROFS: ("read-only file system", "choose a writable folder"),
    errno.EACCES: ("permission denied", "choose a folder you can write to"),
    errno.EPERM: ("operation not permitted", "choose a folder you can write to"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter path"),
}
# errors a write into an already open file can raise; others inside a writer's block are the caller's own
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


def storage_error(path: str | os.PathLike, exc: OSError, what: str = "cannot write") -> StorageError:
    """A one-line StorageError for an OSError met while writing `path`: the path, the reason and what to do."""
    path = Path(path)
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return StorageError(f"{path}: {what}: {blocker} is a file, not a folder; choose another path or move the file")
    if exc.errno == errno.EISDIR:
        return StorageError(f"{path}: {what}: it is a folder; choose a file path")
    reason, todo = _REASONS.get(exc.errno, (exc.strerror or str(exc), "check the path"))
    return StorageError(f"{path}: {what}: {reason}; {todo}")


@contextlib.contextmanager
def writing(path: str | os.PathLike, what: str = "cannot write") -> Iterator[None]:
    """Turn any OSError in the block into a StorageError naming `path` (for mkdir, open, rename and the like)."""
    try:
        yield
    except OSError as exc:
        raise storage_error(path, exc, what) from None


def temp_prefix(name: str) -> str:
    """The start of a temporary name for `name` in this process (see TMP_TAG); mkstemp/mkdtemp add the rest."""
    return f".{name}{TMP_TAG}{os.getpid()}-"


def sweep_stale(folder: str | os.PathLike) -> list[Path]:
    """Delete segkit temporary files and folders in `folder` left by processes that died (their pid is gone, or
    the pid now belongs to a process started after the file was last written). Once per folder per process;
    returns what was removed. Errors are ignored: sweeping is housekeeping, never a reason to fail."""
    folder = Path(folder)
    key = os.path.abspath(folder)
    if key in _SWEPT:
        return []
    _SWEPT.add(key)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        m = _TMP_RE.match(entry.name)
        if not m:
            continue
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
            if not _owner_is_gone(int(m.group(1)), mtime):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def _owner_is_gone(pid: int, mtime: float) -> bool:
    """True when the process that wrote a temporary file (last written at `mtime`) cannot still be writing it."""
    if pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except (PermissionError, OverflowError, OSError):
            return False  # alive (another user's), or we cannot tell
    start = _process_start(pid)
    # the pid's current process started after the file was last written: the writer was an earlier process
    return start is not None and mtime < start - 2.0


def _process_start(pid: int) -> float | None:
    """Start time (epoch seconds) of process `pid` from /proc (Linux); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside `path` and move it into place only if the block succeeds,
    so a crash never leaves a half-written file and an existing file is never lost. A full disk, a
    read-only folder or a file where a folder should be raises StorageError naming `path`; stale temporary
    files of killed writers in the folder are swept first."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
    try:
        os.chmod(tmp, _file_mode(path))
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            try:
                yield fh
            except OSError as exc:
                if exc.errno in _WRITE_ERRNOS and exc.filename in (None, tmp):
                    raise storage_error(path, exc) from None
                raise
            with writing(path):
                fh.flush()
                os.fsync(fh.fileno())
        with writing(path):
            os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS and exc.filename in (None, tmp):
            raise storage_error(path, exc) from None  # from closing the file (a last buffered write)
        raise


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `dest` that replaces `dest` only if the block succeeds, so
    readers see the old folder or the complete new one, never a half-written one; on failure `dest` is
    left as it was and the temporary folder removed. Disk-full and read-only errors while filling it raise
    StorageError naming `dest`; stale temporary folders of killed writers beside `dest` are swept first."""
    dest = Path(dest)
    with writing(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(dest.parent)
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(dest.name), suffix=".tmp", dir=dest.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary folder
        try:
            yield tmp
        except StorageError as exc:  # a file inside: name the destination, not the temporary folder
            message = str(exc)
            if message.startswith(f"{tmp}{os.sep}") and ": " in message:
                inner, rest = message[len(str(tmp)) + 1:].split(": ", 1)
                raise StorageError(f"{dest}: {rest} (while writing {inner})") from None
            raise StorageError(message.replace(str(tmp), str(dest))) from None
        except OSError as exc:
            if exc.errno in _WRITE_ERRNOS:
                raise storage_error(dest, exc) from None
            raise
        with writing(dest):
            if dest.exists():  # move the old one aside, swap the new one in, then delete the old one
                old = Path(tempfile.mkdtemp(prefix=temp_prefix(dest.name), suffix=".old", dir=dest.parent))
                os.replace(dest, old / "stale")
                os.replace(tmp, dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _file_mode(path: Path) -> int:
    """The mode a plain open() would give (umask applied), or the existing file's mode."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save an array as .npy atomically."""
    with atomic_write(path, "wb") as fh:
        np.save(fh, array)
