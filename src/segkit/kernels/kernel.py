"""segkit @@KIND@@ kernel: @@DESCRIPTION@@.

Built by `segkit kernel build` (segkit @@VERSION@@, package digest @@DIGEST@@). The segkit package and the
resolved run config are embedded below, so the kernel needs no internet and no pip install. Data and sources
are read from $SEGKIT_KAGGLE_INPUT (default /kaggle/input); outputs go to $SEGKIT_KAGGLE_WORKING (default
/kaggle/working). @@ROLE@@ Do not edit: rebuild instead.
"""
import base64
import io
import json
import sys
import tempfile
import zipfile

KIND = @@KIND_LITERAL@@
FOLD = @@FOLD@@  # @@FOLD_NOTE@@
SEGKIT_CONFIG = json.loads(@@CONFIG@@)
SEGKIT_BUNDLE = (
@@BUNDLE@@
)


def unpack_segkit(bundle: str) -> str:
    """Unpack the embedded segkit package into a fresh temporary folder and put it first on sys.path."""
    target = tempfile.mkdtemp(prefix="segkit-bundle-")
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(bundle))) as zf:
        zf.extractall(target)
    sys.path.insert(0, target)
    return target


unpack_segkit(SEGKIT_BUNDLE)
from segkit.kaggle.runtime import main  # noqa: E402  (importable only after unpacking)

_rc = main(KIND, SEGKIT_CONFIG, FOLD)
if _rc:
    raise SystemExit(_rc)
