"""What the `segkit` command prints around the work itself: TensorFlow's start-up lines silenced, the device
reported once in segkit's words."""
from __future__ import annotations

import os
import sys

# commands that run a model, and the word for what they do on the device
DEVICE_COMMANDS = {"train": "training", "predict": "predicting", "demo": "training"}


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up lines (CUDA probing, cuDNN/cuBLAS factories, oneDNN notes) and absl
    warnings; must run before TensorFlow is imported. Values already set win, so `TF_CPP_MIN_LOG_LEVEL=0 segkit
    ...` shows everything again."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("GLOG_minloglevel", "2")
    try:
        import absl.logging
    except ImportError:
        return
    absl.logging.set_verbosity(absl.logging.ERROR)


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
