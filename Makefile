# Two commands set everything up on a fresh machine: `make book` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROFILE ?= quick

.PHONY: install book test lab clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is required: set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# pyradiomics 3.0.1 ships only an sdist whose build needs numpy already present.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --upgrade "pip==26.3" "setuptools==84.2.1" wheel
	$(BIN)/pip install "numpy==2.4.6" "torch==2.13.0"
	$(BIN)/pip install --no-build-isolation "pyradiomics==3.0.1"
	$(BIN)/pip install -e ".[test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

book: $(STAMP)
	$(BIN)/msutils book --profile $(PROFILE)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf _build results book/executed
