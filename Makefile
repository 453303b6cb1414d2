# The two commands a new user needs: `make demo` and `make test`. Both bootstrap .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Every pip call, build environments included, keeps the CPU torch (see constraints.txt).
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt

.PHONY: demo test down status lint install

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

demo: $(STAMP)
	$(BIN)/python -m cluster.cli.demo

test: lint
	$(BIN)/python -m pytest

down: $(STAMP)
	$(BIN)/aimass down

status: $(STAMP)
	$(BIN)/aimass status

# Style (ruff) and the layer contracts in pyproject.toml (import-linter).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
