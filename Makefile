# Everyday verbs. `make test` runs every check CI runs.
VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
CONFIG  ?= examples/pipemon.yaml
LISTEN  ?= 127.0.0.1:9864
# The real pg-boss and graphile-worker the preset tests run (pinned by the lockfile).
NODE_FIXTURES := tests/queues/node/node_modules/.package-lock.json
# The example database `make run` creates (any PostgreSQL you can create a database on).
PIPEMON_POSTGRES_DSN ?= postgresql://postgres@127.0.0.1:5432/pipemon_demo
export PIPEMON_POSTGRES_DSN

.PHONY: install lint test test-fast run example-db bench clean

install: $(BIN)/pipemon $(NODE_FIXTURES)

$(BIN)/pipemon: pyproject.toml VERSION
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	@touch $@

$(NODE_FIXTURES): tests/queues/node/package-lock.json
	npm ci --prefix tests/queues/node --no-audit --no-fund --loglevel=error

lint: install
	$(BIN)/ruff check exporter tests bench

test: lint
	$(BIN)/pytest -q

# Unit tests only: no database, no promtool.
test-fast: install
	$(BIN)/pytest -q -m "not postgres and not e2e and not rules"

example-db: $(BIN)/pipemon
	$(BIN)/python examples/example_db.py

run: example-db
	$(BIN)/pipemon serve --config $(CONFIG) --web.listen-address $(LISTEN)

bench: $(BIN)/pipemon
	$(BIN)/python bench/bench_queue.py

clean:
	rm -rf $(VENV) dist build .pytest_cache .ruff_cache exporter/*.egg-info
