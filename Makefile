# Two commands for a fresh clone:
#   make reproduce   install everything (pinned) into .venv and run the default workflow (snakemake --cores 8)
#   make test        install everything and run the test suite
# Both are idempotent: the install step reruns only when a requirements file changes.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.featint-installed
CORES  ?= 8
PYTEST_ARGS ?=

.PHONY: install reproduce test test-fast lint bench clean-results

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# CPU wheel of torch first and pinned: an unpinned torch would pull several GB of CUDA.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

reproduce: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES)

# CI: the linters, the unit tests (fail fast), then the DAG, SLURM, deployment, browser and SAELens tests
test: lint test-fast
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -m "slow or cluster" --durations=25 $(PYTEST_ARGS)

# the unit tests only (no DAG runs, no SLURM, no LM splices): ~2 minutes on a quiet 2-core machine
test-fast: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -m "not slow and not cluster" $(PYTEST_ARGS)

# ruff on the package, tests and benchmarks; snakefmt on the workflow; Snakemake's own linter on the default and
# tiny configs
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --lint --quiet all
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --lint --quiet all --configfile config/tiny.yaml

# throughput ratios, each measured within one script's run, then benchmarks/results/summary.md (never gates CI)
bench: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/bench_extraction.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/bench_training.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/bench_behaviour.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/summary.py

clean-results:
	rm -rf results logs benchmarks/results .snakemake
