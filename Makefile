# Ecovisor developer entry points. Every target does its own setup.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SITE ?= examples/demo-site.yaml

.PHONY: setup run test lint bench evaluate clean

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
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# The paper's §5 experiments (needs ../shared/data beside the clone for the CAISO traces):
# one report folder per experiment under reports/ (docs/evaluation.md).
evaluate: setup
	@$(BIN)/pip install -q -e '.[experiments]'
	@for e in experiments/paper-5.*.yaml; do n=$$(basename $$e .yaml); echo "== $$e"; \
	  $(BIN)/ecovisor evaluate $$e --out reports/$$n || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ecovisor
