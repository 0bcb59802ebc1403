# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

OLDEST := .venv-oldest

# -rs: every skip printed with its reason (and counted in the summary line); the 20 slowest tests printed.
# PARALLEL: test files spread over the machine's cores (pytest-xdist; a file's tests stay on one worker, so a
# module's fixture is built once), in collection order (tests/conftest.py puts the longest files first; xdist's
# default order, most tests first, started the one-test JAX pass last); `make test PARALLEL=` runs them in one process.
REPORT := -rs --durations=20
PARALLEL := -n auto --maxprocesses=4 --dist loadfile --no-loadscope-reorder

.PHONY: demo test test-all test-fast test-oldest mutate bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/segkit demo

# Every test, the slow ones included (what CI runs); `make test-fast` leaves the slow ones out.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "" $(PARALLEL) $(REPORT)

test-all: test

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PARALLEL)

# The suite on the oldest supported TensorFlow / Keras / KerasHub / albumentations (no JAX there).
$(OLDEST)/.installed: requirements-oldest.txt pyproject.toml
	test -x $(OLDEST)/bin/python || $(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install -q -r requirements-oldest.txt
	$(OLDEST)/bin/python -m pip install -q --no-deps -e .
	touch $@

# Every test already runs in `make test`; here only what the oldest pins can change. Left out (CI's time budget):
# the Kaggle client tests (`kaggle` is the same unpinned version in both stacks), the wheel build, the OS-level
# fault injection, the mutation-killing tests of the pure numpy core, the decoders (Keras layers only; the
# KerasHub encoders' tests, which the pins do change, stay) and the bench scripts' tests.
OLDEST_SKIP := $(addprefix --ignore=tests/,test_kaggle_api.py test_kaggle_build.py test_kaggle_credentials.py \
	test_kaggle_deps.py test_kaggle_kernel_run.py test_kaggle_reality.py test_kaggle_workflows.py test_wheel.py \
	test_faults.py test_decoders.py test_mutants_rle.py test_mutants_evaluate.py test_mutants_submission.py \
	test_mutants_tiling.py test_mutants_runs.py test_mutants_postprocess.py test_bench_models.py \
	test_bench_decoders_tgs.py)

test-oldest: $(OLDEST)/.installed
	$(OLDEST)/bin/python -m pytest -q -m "not slow and not jax" $(OLDEST_SKIP) $(PARALLEL) $(REPORT)

# Mutation testing of the pure core, not in CI (the tests run once per mutant, ~6,300 of them): mutmut mutates
# rle.py, evaluate.py, submission.py, tiling.py, runs.py and postprocess/ (see [tool.mutmut] in pyproject.toml)
# inside mutants/, runs the tests that reach each mutant, and prints killed / total per module. mutmut is
# installed by this target only.
MUTMUT := mutmut==3.8.1
mutate: $(STAMP)
	$(BIN)/python -m pip install -q $(MUTMUT)
	SEGKIT_FIXTURES=$(CURDIR)/../shared/fixtures CUDA_VISIBLE_DEVICES= TF_CPP_MIN_LOG_LEVEL=3 \
		nice -n 15 $(BIN)/python -m mutmut run --max-children 2
	$(BIN)/python bench/mutation_score.py

bench: $(STAMP)
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/rle.py
	$(BIN)/python bench/models.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/tiling.py

clean:
	rm -rf runs cache demo_out build .pytest_cache mutants
