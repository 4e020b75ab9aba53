# Ecovisor developer entry points. Every target does its own setup.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SITE ?= examples/demo-site.yaml

.PHONY: setup run test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip
	@$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)
	@bash scripts/install-system-deps.sh

# Run the demo site on the embedded stack (foreground; Ctrl-C stops everything).
run: setup
	$(BIN)/ecovisor up --config $(SITE)

# The whole test suite (unit, property, integration on the real embedded stack).
test: setup
	$(BIN)/python -m pytest -q -ra

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ecovisor
