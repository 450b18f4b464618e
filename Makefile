# One-command set-up: every target creates .venv and installs what it needs.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
# Test environment pins; the package itself accepts a range so GPU clusters bring their CUDA build.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[test,bench]' $(TORCH_PINS)
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/vidbatch demo

test: venv
	$(VENV)/bin/ruff check vidbatch jobs tests
	$(PY) -m pytest -m "not gpu" tests

lint: venv
	$(VENV)/bin/ruff check vidbatch jobs tests
	$(VENV)/bin/ruff format --check vidbatch jobs tests

bench: venv
	$(PY) jobs/benchmark.py

clean:
	rm -rf $(VENV) .pytest_cache vidbatch-demo
