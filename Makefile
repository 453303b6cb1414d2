# The two commands a new user needs: `make demo` and `make test`. Both bootstrap .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Every pip call, build environments included, keeps the CPU torch (see constraints.txt).
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt

.PHONY: demo test down status lint install prometheus

# Ray's CLIs (`ray job submit`, `serve deploy`) send the cluster token only when their
# environment has RAY_AUTH_MODE=token (Ray 2.60 takes the mode from there alone; a token
# file does not turn it on), so the venv's activation sets it: bash/zsh, fish and csh.
install: $(STAMP)
	@grep -qx 'export RAY_AUTH_MODE=token' $(BIN)/activate || \
	  printf '\n# aimass (make install): Ray CLIs send the cluster token in token mode only\nexport RAY_AUTH_MODE=token\n' >> $(BIN)/activate
	@grep -qx 'set -gx RAY_AUTH_MODE token' $(BIN)/activate.fish || \
	  printf '\nset -gx RAY_AUTH_MODE token\n' >> $(BIN)/activate.fish
	@grep -qx 'setenv RAY_AUTH_MODE token' $(BIN)/activate.csh || \
	  printf '\nsetenv RAY_AUTH_MODE token\n' >> $(BIN)/activate.csh

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

demo: install prometheus
	$(BIN)/python -m cluster.cli.demo

test: lint prometheus
	$(BIN)/python -m pytest

down: install
	$(BIN)/aimass down

status: install
	$(BIN)/aimass status

# Style (ruff) and the layer contracts in pyproject.toml (import-linter).
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The cluster's Prometheus (cluster/monitoring): Debian's package, where the machine allows
# (root and apt; the lists refreshed only when the first try fails). Elsewhere it says so
# and carries on: `aimass up` then runs without metrics and tells how to install them.
prometheus:
	@command -v prometheus >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's prometheus (apt-get)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || \
	      { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; \
	  else \
	    echo "prometheus is not installed and this machine cannot apt-get it (needs root):" \
	      "install prometheus 2.x on the PATH for metrics and alerts"; \
	  fi; }
