# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

OLDEST := .venv-oldest

.PHONY: demo test test-all test-oldest bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/segkit demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

# The suite on the oldest supported TensorFlow / Keras / KerasHub / albumentations (no JAX there).
$(OLDEST)/.installed: requirements-oldest.txt pyproject.toml
	test -x $(OLDEST)/bin/python || $(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install -q -r requirements-oldest.txt
	$(OLDEST)/bin/python -m pip install -q --no-deps -e .
	touch $@

test-oldest: $(OLDEST)/.installed
	$(OLDEST)/bin/python -m pytest -q -m "not slow and not jax"

bench: $(STAMP)
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/rle.py
	$(BIN)/python bench/models.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/tiling.py

clean:
	rm -rf runs cache demo_out build .pytest_cache
