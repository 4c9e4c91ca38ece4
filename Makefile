# Two commands set everything up on a fresh machine:
#   make demo   create .venv, install, run the main job
#   make test   create .venv if needed, run the tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install model clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps moons1d==1.0.3
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m mtopnet.demo --out demo-output

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/simulate.py

clean:
	rm -rf $(VENV) demo-output
