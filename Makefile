# Pulse: the single entry point. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
JARS := .cache/jars
MVN := mvn -q -B
DATA_DIR ?= .pulse

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-unit test-containers lint fmt bench bench-producer bench-processor bench-startup clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Pulse needs Python 3.11+")'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(VENV)/bin/python requirements.txt requirements-dev.txt pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	@# The notebook's kernel: this venv's python, whatever `python` is on PATH.
	$(PY) -m ipykernel install --sys-prefix --name pulse --display-name "Python (pulse)" >/dev/null
	@touch $@

$(JARS)/%/.fetched: jvm/%/pom.xml
	@command -v java >/dev/null || { echo "Java 17+ is required (the Kafka broker and Spark run on the JVM)"; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven is required to fetch the pinned JVM jars"; exit 1; }
	rm -rf $(JARS)/$*
	cd jvm/$* && $(MVN) dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=$(CURDIR)/$(JARS)/$*
	@touch $@

# One replay whose JVMs dump the classes they load: later broker and Spark starts map them (pulse/jvm.py).
$(JARS)/class-archives/.written: $(VENV)/.installed $(JARS)/kafka-broker/.fetched $(JARS)/spark-kafka/.fetched
	$(PY) -m pulse.warmup
	@touch $@

setup: $(VENV)/.installed $(JARS)/kafka-broker/.fetched $(JARS)/spark-kafka/.fetched $(JARS)/class-archives/.written ## venv, pinned packages, JVM jars and their class archives (idempotent)

demo: setup ## replay the bundled recording through Kafka -> Spark -> ClickHouse (chDB), with a live view
	$(VENV)/bin/pulse demo --data-dir $(DATA_DIR)

# pytest-xdist workers. The suite is JVM starts and waits, CPU-bound on two cores: three measured best
# (pytest 13:21, against 26:56 serially and 16:17 with four). tests/conftest.py says what each takes.
TEST_WORKERS ?= 3
test: setup lint ## lint, then unit and integration tests on the real local broker, Spark and chDB
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --no-loadscope-reorder

test-unit: setup ## only the pure unit tests
	$(VENV)/bin/pytest tests/unit

# Podman's configuration and storage live in the cache: a clean clone builds every image from scratch,
# a second run reuses the stand-ins and the image layers, and the host's own podman setup is untouched.
CONTAINERS := $(CURDIR)/.cache/containers
test-containers: export CONTAINERS_CONF := $(CONTAINERS)/containers.conf
test-containers: export CONTAINERS_STORAGE_CONF := $(CONTAINERS)/storage.conf
test-containers: setup ## build the three images on stand-in bases with podman and run them (as root)
	@[[ $$(id -u) == 0 ]] || { echo "make test-containers runs as root: debootstrap, chroot and podman need it"; exit 1; }
	@mkdir -p $(CONTAINERS)
	@missing="$$(for tool in podman runc debootstrap; do command -v $$tool >/dev/null || echo $$tool; done)"; \
	if [[ -n "$$missing" ]]; then \
	  echo "installing" $$missing "(log: $(CONTAINERS)/apt.log)"; \
	  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; } >$(CONTAINERS)/apt.log 2>&1 \
	    || { tail -n 20 $(CONTAINERS)/apt.log; exit 1; }; \
	fi
	@# runc, not crun, and cgroupfs with no default ulimits: what works on hosts with hybrid cgroups.
	@printf '%s\n' '[containers]' 'default_ulimits = []' '[engine]' 'cgroup_manager = "cgroupfs"' \
	  'runtime = "runc"' 'events_logger = "file"' 'tmp_dir = "$(CONTAINERS)/tmp"' >$(CONTAINERS_CONF)
	@printf '%s\n' '[storage]' 'driver = "overlay"' 'graphroot = "$(CONTAINERS)/storage"' \
	  'runroot = "$(CONTAINERS)/run"' >$(CONTAINERS_STORAGE_CONF)
	docker/standins/build.sh .cache/standins
	$(VENV)/bin/pytest -m containers tests/containers

lint: setup ## ruff and mypy over the whole code base
	$(VENV)/bin/ruff check pulse tests bench
	$(VENV)/bin/mypy

fmt: setup ## apply ruff's fixes
	$(VENV)/bin/ruff check --fix pulse tests bench

bench: bench-producer bench-processor bench-startup ## run every benchmark; results go to docs/benchmarks.md

bench-producer: setup ## producer throughput and added latency vs a send_and_wait-per-message producer
	$(PY) -m bench.producer_bench

bench-processor: setup ## processor freshness (trade time -> visible in ClickHouse) and sustained rate
	$(PY) -m bench.processor_bench

bench-startup: setup ## broker and `pulse demo` start-up with the JVMs' class archives vs without them
	$(PY) -m bench.startup_bench

clean: ## remove the venv, the jar cache and local run data
	rm -rf $(VENV) .cache $(DATA_DIR)
