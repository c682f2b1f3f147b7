# modelfleet — `make demo` serves the example fleet, `make test` runs the tests.
# Both do all set-up first; set-up is idempotent and quick when nothing changed.

PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
INSTALLED := $(VENV)/.installed
AZURITE  := .tools/azurite/node_modules/.bin/azurite-blob
CHROMIUM := /usr/bin/chromium
SSHD     := /usr/sbin/sshd
POSTGRES := /usr/bin/pg_ctlcluster
PROMETHEUS := /usr/bin/promtool
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DIGITS   := examples/digits/artifacts/digits/1/model.safetensors
MINILM   := examples/embeddings/artifacts/all-MiniLM-L6-v2/config.json
FRAUD    := examples/fraud/artifacts/metrics.json
HOST     ?= 127.0.0.1
# Two pytest workers: one runs every test that uses a Ray (one Ray at a time), the other the Ray-free tests
# (tests/conftest.py groups them).
PYTEST_WORKERS ?= -n 2
PORT     ?= 8000

export HF_HUB_OFFLINE := 1

# Debian packages: install, and if the package lists are stale or missing, update them and try again.
APT_GET := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get
apt_install = $(APT_GET) install -y -q $(1) >/dev/null || ($(APT_GET) update -q >/dev/null && $(APT_GET) install -y -q $(1) >/dev/null)

.PHONY: setup artifacts demo demo-cluster demo-cluster-down lint test test-fast test-cluster bench clean

setup: $(INSTALLED) $(AZURITE)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned: its CPU build lies on this disk; an unpinned torch pulls a multi-GB CUDA build.
$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,examples]'
	touch $@

# Azurite (the Azure Blob emulator) from npm, project-local.
$(AZURITE):
	npm install --silent --no-audit --no-fund --prefix .tools/azurite azurite@3

$(DIGITS): | $(INSTALLED)
	$(BIN)/python -m examples.digits.train

$(MINILM): | $(INSTALLED)
	$(BIN)/python -m examples.embeddings.prepare

$(FRAUD): | $(INSTALLED)
	$(BIN)/python -m examples.fraud.train

artifacts: $(DIGITS) $(MINILM) $(FRAUD)

demo: setup artifacts
	$(BIN)/modelfleet run examples/fleet.yaml --host $(HOST) --port $(PORT)

# The on-prem example on this machine (as root): a test bed of 3 hosts (network namespaces with sshd), a Ray cluster
# launched on them over SSH, and fraud deployed from here with a key made for it. `make demo-cluster-down` ends it.
TESTBED_HEAD := 10.213.0.10
demo-cluster: setup artifacts $(SSHD)
	$(BIN)/python -m cluster.testbed up --hosts 3
	$(BIN)/modelfleet cluster up examples/clusters/onprem-testbed.yaml
	@key=$$($(BIN)/python -c 'from serve_apps.auth import new_key; print(new_key())') && \
	MODELFLEET_API_KEYS="$$key=invoke:*" $(BIN)/modelfleet deploy examples/fraud/app.yaml \
	  --address $(TESTBED_HEAD):6379 --host 0.0.0.0 && \
	$(BIN)/modelfleet status --address $(TESTBED_HEAD):6379 && \
	echo "try: curl -H 'Authorization: Bearer $$key' http://$(TESTBED_HEAD):8000/v2/models/fraud"

demo-cluster-down:
	-$(BIN)/modelfleet cluster down examples/clusters/onprem-testbed.yaml
	$(BIN)/python -m cluster.testbed down

# Debian's Chromium, to check the load-test reports in a real browser (tests/test_report.py).
$(CHROMIUM):
	$(call apt_install,chromium)

# Debian's sshd (and rsync, which Ray's launcher copies files with), for the on-prem test bed's hosts
# (cluster/testbed.py, tests/test_testbed.py).
$(SSHD):
	$(call apt_install,--no-install-recommends openssh-server rsync)

# Debian's PostgreSQL, for the registry's conformance tests (tests/fixtures/postgres.py starts its own server, as
# the unprivileged `postgres` user, in a temporary folder on a free loopback port).
$(POSTGRES):
	$(call apt_install,--no-install-recommends postgresql)

# Debian's Prometheus and promtool: tests scrape a running app with a real Prometheus and check and unit-test the
# shipped and generated rules (tests/fixtures/prometheus.py starts it on a free loopback port).
$(PROMETHEUS):
	$(call apt_install,--no-install-recommends prometheus)

# Style, lint and the rooms' layering (pyproject.toml's import-linter contracts): seconds, before the tests.
lint: setup
	$(BIN)/ruff format --check --quiet .
	$(BIN)/ruff check --quiet .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

test: setup artifacts $(CHROMIUM) $(SSHD) $(POSTGRES) $(PROMETHEUS) lint
	$(BIN)/pytest $(PYTEST_WORKERS) -m "not multinode"

# The everyday lane: every test that needs no Ray (specs, tensors, storage against its emulators, the CLI's errors,
# reports in Chromium, the batcher and the coalescer, the test bed's SSH hosts): about two minutes.
test-fast: setup artifacts $(CHROMIUM) $(SSHD) $(POSTGRES) $(PROMETHEUS) lint
	$(BIN)/pytest $(PYTEST_WORKERS) --without-ray -m "not multinode"

# Rays of several nodes (the `multinode` marker), one at a time: local-sim's simulated CPU and GPU pools scaling on
# this machine (tests/test_local_sim.py), and a real multi-node Ray on the on-prem test bed (hosts in network
# namespaces, reached over SSH), launched, deployed to and stopped from here (tests/test_onprem_cluster.py).
# Needs root; `.ci/run` runs it after `make test`.
test-cluster: setup artifacts $(SSHD)
	$(BIN)/pytest -m multinode

# Benchmarks with their baselines run side by side (minutes; not part of `make test`): see BENCHMARKS.md.
bench: setup artifacts
	$(BIN)/python -m bench.ingress
	$(BIN)/python -m bench.embeddings
	$(BIN)/python -m bench.tuner
	$(BIN)/python -m bench.faults
	$(BIN)/python -m bench.coldstart
	$(BIN)/python -m bench.many_models
	$(BIN)/python -m bench.autoscale

clean:
	rm -rf $(VENV) .tools examples/*/artifacts .pytest_cache
