# Two entry points do all the set-up on a fresh machine:
#   make demo   builds small models offline and runs a shipped recipe on them
#   make test   runs the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: install demo demo-docs test lint bench docs clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build lies on local disk; an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m mergeflow.demo --workdir demo_out

demo-docs: $(STAMP)
	$(BIN)/python -m mergeflow.demo --workdir demo_out --write-docs

# bytecode written (some machines set PYTHONDONTWRITEBYTECODE): every command a test starts would
# otherwise compile the package again
test: $(STAMP)
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -q -p no:cacheprovider -n auto

lint: $(STAMP)
	$(BIN)/ruff check mergeflow tests benchmarks
	$(BIN)/ruff format --check mergeflow tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_merge.py

docs: $(STAMP)
	$(BIN)/mergeflow docs > docs/recipes.md

clean:
	rm -rf $(VENV) demo_out
