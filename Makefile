# One command surface. `make run` and `make test` work on a fresh clone: both
# depend on `install`, which creates .venv when it is missing.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast lint typecheck bench images compile docker-test docs-assets screenshots clean help

help:
	@echo "make install   create $(VENV) and install semlayout with its dev extras"
	@echo "make run       the training pipeline end to end under kfp.local -> outputs/latest/"
	@echo "make test      the whole test suite (slow end-to-end tests included)"
	@echo "make lint      ruff (lint + format check) + mypy"
	@echo "make typecheck mypy alone"
	@echo "make bench     benchmarks: ratios against baselines measured in the same run"
	@echo "make images    build the docker images (needs a Docker engine)"
	@echo "make compile   compile the KFP pipelines to YAML in outputs/pipelines/"

# --no-compile: byte-compiling all of site-packages (torch, mlflow, kfp, ...) single-threaded
# was more than half of the install (121 s vs 268 s at load 8); Python compiles what it
# imports, once, on first use (+10 s on the first import of torch + mlflow + kfp)
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet --no-compile -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/semlayout pipeline run $(RUN_ARGS)

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

typecheck: install
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

images: install
	bash docker/build.sh

docker-test: install
	bash docker/test.sh

compile: install
	$(BIN)/semlayout pipeline compile --out outputs/pipelines

# the browser tests, saving their screenshots in docs/images (compare page, dashboard, report,
# API docs); the report pictured is outputs/latest/report.html when a `make run` made one
screenshots: install
	SEMLAYOUT_SCREENSHOT_DIR=$(CURDIR)/docs/images \
	SEMLAYOUT_SCREENSHOT_REPORT=$(wildcard $(CURDIR)/outputs/latest/report.html) \
	$(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_compare.py tests/test_docs_offline.py tests/test_operator_kit.py

# re-vendor /docs and /redoc assets from their npm packages (pinned in the script; needs npm)
docs-assets: install
	$(BIN)/python tools/vendor_docs_assets.py

clean:
	rm -rf outputs .pytest_cache .mypy_cache .ruff_cache
