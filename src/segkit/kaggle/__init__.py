"""Kaggle: single-file kernel bundles and the API calls (push, status, output, submit).

The workflows of segkit.kaggle.workflows are reachable from here too (`segkit.kaggle.push_folds(...)`,
`sk.kaggle.submit(...)`), imported on first use."""
from __future__ import annotations

from typing import Any

_WORKFLOWS = ("build_kernel", "build_kernels", "push_kernel", "push_folds", "kernel_status", "wait_for_kernel",
              "kernel_output", "submit", "client", "fold_list", "validate_or_refuse", "submissions",
              "wait_for_submission", "competition_sample")


def __getattr__(name: str) -> Any:
    """The workflow functions, imported on first use."""
    if name in _WORKFLOWS:
        from segkit.kaggle import workflows

        return getattr(workflows, name)
    raise AttributeError(f"module 'segkit.kaggle' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WORKFLOWS))
