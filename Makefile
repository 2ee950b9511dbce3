# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: test test-vllm test-deploy prometheus-installed kcat-installed jdk-installed lint demo kafka-up kafka-down bench-ingest bench-pipeline bench-failover bench-chaos bench-priority bench-models bench-prefix bench-scale bench-engines clean

# The dev extra brings llama-cpp-python, built from source once per machine (a few
# minutes on 2 cores); pip keeps the built wheel in its cache for every later install.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet -e '.[vllm]' 'pytest>=8.2,<10' 'pytest-asyncio>=0.24,<2' 'pytest-timeout>=2.3,<3'
	touch $(VLLM_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check services tests
	$(BIN)/ruff format --check services tests
	$(BIN)/mypy

# The Prometheus integration test runs Debian's prometheus and promtool: installed here
# when missing, so that `make test` alone sets up everything the suite needs.
prometheus-installed:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus; \
	fi

# Some integration tests read and write topics with Debian's kcat, a client that shares
# no code with kbatch: installed here when missing, like prometheus.
kcat-installed:
	@if ! command -v kcat >/dev/null; then \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends kcat; \
	fi

# The test broker runs from Maven Central jars, and tests/interop builds a Java results
# reader against Avro from Maven Central: a JDK and Maven, installed here when missing.
jdk-installed:
	@if ! command -v java >/dev/null || ! command -v javac >/dev/null || ! command -v mvn >/dev/null; then \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends default-jdk-headless maven; \
	fi

# The test session starts its own broker (Maven Central jars) unless
# KBATCH_BOOTSTRAP_SERVERS names a running one.
# Two pytest workers, each with its own broker: the suite mostly waits (on Kafka, on
# services starting), so two halve its time on two cores; the chaos tests share one.
test: lint prometheus-installed kcat-installed jdk-installed
	$(BIN)/pytest -n 2 --dist loadgroup

# Opt-in: the vLLM adapter checked against the vLLM it pins, in its own venv (~10 GB,
# ~5 min to install the first time); no GPU needed.
test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/pytest tests/vllm_check

# Opt-in, not part of `make test`: deploy/compose.yaml with compose.cpu.yaml run on a real
# Docker engine (the one that answers, else a dockerd started as root and stopped after).
# Local stand-ins replace the upstream base images: see deploy/local/test-deploy.sh.
test-deploy: $(STAMP)
	deploy/local/test-deploy.sh

# ENGINE=simulated|llamacpp|vllm|openai chooses; default: vllm with a GPU, else llamacpp.
demo: $(STAMP)
	$(BIN)/kbatch demo $(if $(ENGINE),--engine $(ENGINE))

kafka-up: $(STAMP)
	$(BIN)/kbatch kafka up

kafka-down: $(STAMP)
	$(BIN)/kbatch kafka down

# Each bench prints JSON and keeps it, with its logs, under .kbatch/bench (--out DIR).
# Those behind the README's figures also update docs/bench and re-render the README.
bench-ingest bench-pipeline bench-failover bench-chaos bench-priority bench-models bench-prefix: bench-%: $(STAMP)
	$(BIN)/kbatch bench $*
	cp .kbatch/bench/$*.json docs/bench/$*.json
	$(BIN)/python -m services.bench.readme

# The README's figure; the plot needs `pip install -e '.[plots]'`.
bench-scale: $(STAMP)
	$(BIN)/kbatch bench scale --figure docs/scale.png
	cp .kbatch/bench/scale.json docs/bench/scale.json
	$(BIN)/python -m services.bench.readme

bench-engines: $(STAMP)
	$(BIN)/kbatch bench engines --out docs/bench/engines.json
	$(BIN)/python -m services.bench.readme

clean:
	rm -rf $(VENV) $(VLLM_VENV) .kbatch .mypy_cache .ruff_cache .pytest_cache
