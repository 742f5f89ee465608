# The README's two commands. Both work on a fresh clone with nothing installed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Jittor on a machine without CUDA (see README); harmless where CUDA exists.
export use_mkl ?= 0
export nvcc_path ?=
# The compiled CPU operators build here on first use (see README, Speed), not in ~/.cache.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/build/torch_extensions

.PHONY: run test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[train,cam]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed-run

# The main job: BN vs NABN vs IEBN on the offline digits data (3 batch sizes x 3 seeds).
run: $(VENV)/.installed-run
	$(BIN)/augmentbn compare --preset digits --out runs/digits

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
