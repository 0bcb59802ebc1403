"""Shared test setup: quiet TensorFlow, the real fixtures beside the repo, small seeded data."""
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest

REPO = Path(__file__).resolve().parents[1]
# SEGKIT_FIXTURES: where the tests run from a copy of the repo (`make mutate` runs them inside mutants/)
FIXTURES = Path(os.environ.get("SEGKIT_FIXTURES") or REPO.parent / "shared" / "fixtures")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """../shared/fixtures (real dataset samples, read in place, never copied)."""
    if not FIXTURES.is_dir():
        pytest.fail(f"real fixtures not found at {FIXTURES}: clone the repo with ../shared beside it")
    return FIXTURES
