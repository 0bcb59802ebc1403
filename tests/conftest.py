"""Shared test setup: quiet TensorFlow, the real fixtures beside the repo, small seeded data."""
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest

REPO = Path(__file__).resolve().parents[1]
# SEGKIT_FIXTURES: where the tests run from a copy of the repo (`make mutate` runs them inside mutants/)
FIXTURES = Path(os.environ.get("SEGKIT_FIXTURES") or REPO.parent / "shared" / "fixtures")


# The longest test files (minutes each), collected first: `make test` spreads files over parallel workers
# (pytest-xdist, --dist loadfile), and a long file started last would leave the other workers idle at the end.
LONG_FILES_FIRST = ("test_models_backends.py", "test_demo.py", "test_bulk_tta.py", "test_devices.py")


def pytest_collection_modifyitems(config, items):
    """Order the collected tests with the longest files first (stable: the order within them is kept)."""
    items.sort(key=lambda item: item.path.name not in LONG_FILES_FIRST)


def load_bench(name: str):
    """bench/<name>.py imported as a module (the bench folder is no package), registered in sys.modules under
    bench_<name> so its dataclasses can look their module up."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """../shared/fixtures (real dataset samples, read in place, never copied)."""
    if not FIXTURES.is_dir():
        pytest.fail(f"real fixtures not found at {FIXTURES}: clone the repo with ../shared beside it")
    return FIXTURES


@pytest.fixture(scope="module")
def base(request, tmp_path_factory) -> Path:
    """A folder per test module holding a tiny synthetic 38-Cloud dataset in data/ (3 training scenes, 1 test
    scene, 32 px patches); the module's runs, caches and submissions go beside it."""
    from segkit.data.synth import generate

    root = tmp_path_factory.mktemp(request.module.__name__.removeprefix("test_"))
    generate("cloud38", root / "data", seed=3, patch_size=32, n_train_scenes=3, n_test_scenes=1)
    return root
