# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: test test-vllm test-deploy prometheus-installed kcat-installed jdk-installed deploy-tools-installed k8s-tools-installed test-k8s lint demo kafka-up kafka-down bench-ingest bench-pipeline bench-failover bench-chaos bench-priority bench-models bench-prefix bench-scale bench-engines clean

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

# $(call ensure-debs,COMMANDS,PACKAGES): Debian's PACKAGES installed when one of COMMANDS
# is missing, so that a make target sets up what it needs on a fresh machine.
define ensure-debs
	@missing=""; for c in $(1); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing $(2) (missing:$$missing)"; \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(2); \
	fi
endef

# The Prometheus integration test runs Debian's prometheus and promtool.
prometheus-installed:
	$(call ensure-debs,prometheus promtool,prometheus)

# Some integration tests read and write topics with Debian's kcat, a client that shares
# no code with kbatch.
kcat-installed:
	$(call ensure-debs,kcat,kcat)

# The test broker runs from Maven Central jars, and tests/interop builds a Java results
# reader against Avro from Maven Central: a JDK and Maven.
jdk-installed:
	$(call ensure-debs,java javac mvn,default-jdk-headless maven)

# make test-deploy: a Docker engine (started by the script, stopped after), debootstrap for
# the local base images, iptables to restore the rules dockerd changes.
deploy-tools-installed:
	$(call ensure-debs,dockerd debootstrap iptables-save iptables-restore,docker.io debootstrap iptables)

# make test-k8s: the node's container runtime (a private containerd with runc), the CNI
# plugins its pod network uses, openssl for the cluster's certificates.
k8s-tools-installed:
	$(call ensure-debs,containerd ctr runc openssl /usr/lib/cni/bridge /usr/lib/cni/firewall,containerd runc openssl containernetworking-plugins)

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
test-deploy: $(STAMP) deploy-tools-installed jdk-installed
	deploy/local/test-deploy.sh

# Opt-in, not part of `make test`: deploy/k8s applied to a single-node Kubernetes built from
# source and started here (root; ~15 min to build it the first time), torn down after.
test-k8s: $(STAMP) deploy-tools-installed k8s-tools-installed jdk-installed
	deploy/k8s/local/test-k8s.sh

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
