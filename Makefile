# neuralsde-lab: `make train` and `make test` do all the set-up (a .venv with the project installed).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# A specific torch to install before the project, e.g. TORCH=torch==2.13.0 (CPU build on CI machines).
TORCH ?=
ARGS ?=

.PHONY: help install train test test-full bench bench-quick paper-tables format clean

help:  ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-14s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(if $(TORCH),$(PY) -m pip install "$(TORCH)")
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## Create .venv if missing and install the project into it

train: install  ## Train the default experiment (ou_sdegan); extra Hydra overrides via ARGS="..."
	$(PY) train.py $(ARGS)

test: install  ## Run the fast test tier
	$(PY) -m pytest -m "not slow" -q $(ARGS)

test-full: install  ## Run every test, slow ones included
	$(PY) -m pytest -q $(ARGS)

bench: install  ## Benchmarks (~12 min on 2 CPU cores): writes bench/results.md and bench/results.json
	$(PY) scripts/bench.py $(ARGS)

bench-quick: install  ## Benchmarks at small sizes (~1 min): writes bench/results_quick.md and .json
	$(PY) scripts/bench.py --quick $(ARGS)

paper-tables: install  ## Reproduce the papers' comparison tables at CPU scale (~1 hour)
	$(PY) scripts/paper_tables.py $(ARGS)

# Lint only, as the pre-commit hook does: the code is wrapped by hand, and `ruff format .` rewrote 117 files.
format: install  ## Lint with ruff and apply its safe fixes (ruff check --fix)
	$(PY) -m ruff check --fix .

clean:  ## Remove run outputs and caches (keeps .venv and datasets/)
	rm -rf logs outputs multirun wandb .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path "./.venv/*" -exec rm -rf {} +
