# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint demo kafka-up kafka-down bench-ingest bench-pipeline bench-failover bench-chaos bench-scale clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check services tests bench
	$(BIN)/ruff format --check services tests bench
	$(BIN)/mypy

# The test session starts its own broker (Maven Central jars) unless
# KBATCH_BOOTSTRAP_SERVERS names a running one.
test: lint
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/kbatch demo

kafka-up: $(STAMP)
	$(BIN)/kbatch kafka up

kafka-down: $(STAMP)
	$(BIN)/kbatch kafka down

bench-ingest: $(STAMP)
	$(BIN)/python -m bench.ingest

bench-pipeline: $(STAMP)
	$(BIN)/python -m bench.pipeline

bench-failover: $(STAMP)
	$(BIN)/python -m bench.failover

bench-chaos: $(STAMP)
	$(BIN)/python -m bench.chaos

bench-scale: $(STAMP)
	$(BIN)/python -m bench.scale

clean:
	rm -rf $(VENV) .kbatch .mypy_cache .ruff_cache .pytest_cache
