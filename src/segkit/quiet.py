"""TensorFlow's start-up lines (CUDA probing, oneDNN and CPU-feature notes) and its Python warnings (retracing)
silenced, for the `segkit` command and for `import segkit` in a notebook alike. Standard library only: it must
run before TensorFlow is imported."""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from typing import Iterator


# C++ log lines TensorFlow writes while it loads (absl logs before absl::InitializeLog ignore TF_CPP_MIN_LOG_LEVEL)
_NOISE = re.compile(rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
                    rb"|[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.]+:\d+\]"
                    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] "
                    rb"|To enable the following instructions:)")


def quiet_tensorflow() -> None:
    """Silence TensorFlow's start-up lines (CUDA probing, cuDNN/cuBLAS factories, oneDNN and CPU-feature notes)
    and its Python warnings; must run before TensorFlow is imported. `TF_CPP_MIN_LOG_LEVEL=0 segkit ...` shows
    everything again."""
    import logging

    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() == "0":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


class _QuietImport(importlib.abc.MetaPathFinder):
    """Imports `tensorflow` (once) with the process's stderr captured: its C++ libraries log to file descriptor 2
    while they load, before any setting can reach them. Captured lines that are not such logs are replayed, and
    everything is replayed when the import fails."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader) -> None:
        self._loader = loader

    def __getattr__(self, name: str):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        with stderr_filtered():
            self._loader.exec_module(module)


@contextlib.contextmanager
def stderr_filtered() -> Iterator[None]:
    """Capture file descriptor 2 for the block, then write back the lines that are not TensorFlow's C++ start-up
    logs (all of them if the block fails)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield  # no real stderr (embedded): nothing to filter
        return
    failed = True
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
            failed = False
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().splitlines(keepends=True)
            kept = b"".join(ln for ln in lines if failed or not _NOISE.match(ln))
            if kept:
                os.write(2, kept)
