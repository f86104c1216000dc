# Two entry points: `make up` (run the mesh) and `make test` (the test suite). Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: setup up test bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	# torch first, pinned: on this machine kind 2.13.0 is a local CPU wheel; an unpinned torch pulls a CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -e '.[ml,test]'
	touch $@

setup: $(VENV)/.installed

up: setup
	$(VENV)/bin/diffmesh up

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
