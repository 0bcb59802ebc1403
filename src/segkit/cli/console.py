"""What the `segkit` command prints around the work itself: TensorFlow's start-up lines silenced, the device
reported once in segkit's words."""
from __future__ import annotations

import os
import sys

from segkit.quiet import quiet_tensorflow, stderr_filtered  # noqa: F401  (the CLI's names for them)

# commands that run a model, and the word for what they do on the device
DEVICE_COMMANDS = {"train": "training", "predict": "predicting", "pseudo": "predicting", "demo": "training"}


def gpu_visible() -> bool | None:
    """Whether a GPU or TPU can be visible to the deep-learning framework, from device files alone (no
    TensorFlow import); None where this cannot be told (macOS: Metal)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if sys.platform == "darwin":
        return None
    if os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR"):
        return True
    devices = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd", "/dev/dxg", "/dev/accel0", "/dev/vfio")
    return any(os.path.exists(d) for d in devices)


_noted = False


def note_device(action: str = "training") -> None:
    """Say once, in segkit's words, that no GPU is present (instead of TensorFlow's CUDA warnings)."""
    global _noted
    if not _noted and gpu_visible() is False:
        print(f"segkit: no GPU found; {action} on CPU", flush=True)
    _noted = True
