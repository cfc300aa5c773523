# fyno-import: every target builds the virtual environment first when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install test demo lint shape bench soak package docs sample clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with its dev tools

test: $(STAMP) ## run the test suite (not the slow soak, not the packaging test)
	$(BIN)/python -m pytest -m "not slow and not package" -q

# The sample data holds deliberately bad rows, so the import ends with exit 1 ("finished, some
# rows rejected"); the demo fails only on 2 or 3.
demo: $(STAMP) ## import sample_data/ into the built-in emulator, with progress and a summary
	@$(BIN)/fyno-import run sample_data/ --mapping mappings/nightly_export.yaml --emulator \
		--show-profiles 3 --rejects demo.rejects.csv || [ $$? -eq 1 ]
	@echo "demo done: rejected rows and their reasons are in demo.rejects.csv"

lint: $(STAMP) shape ## ruff (lint + format check), mypy --strict on importer/, and the shape check
	$(BIN)/ruff check importer tests bench tools
	$(BIN)/ruff format --check importer tests bench tools
	$(BIN)/mypy

shape: ## the longest functions and modules of importer/; fails over 80 / 600 lines
	@$(PYTHON) tools/shape.py importer

bench: $(STAMP) ## run the benchmark suite and rewrite docs/benchmarks.md
	$(BIN)/python -m bench

soak: $(STAMP) ## the long fault soak (many seeds) and other slow tests
	$(BIN)/python -m pytest -m slow -q

package: $(STAMP) ## build the wheel and check it installs and runs in a fresh venv
	$(BIN)/python -m pytest -m package -q

docs: $(STAMP) ## regenerate docs/mapping.md's key reference and docs/ledger.md's example reports
	$(BIN)/python -m importer.mapping.tools docs/mapping.md
	$(BIN)/python tools/ledger_docs.py docs/ledger.md

sample: $(STAMP) ## regenerate sample_data/ from its script
	$(BIN)/python tools/sample_data.py

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
