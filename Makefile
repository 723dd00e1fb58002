# The two commands the README promises: `make demo` and `make test`. Each creates .venv if it is
# missing and installs everything first. torch==2.13.0 (the CPU build) is installed before the
# package so that pip never resolves torch to a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.dropkit-installed

.PHONY: demo test install bench lint docs clean

$(STAMP): pyproject.toml setup.py $(wildcard src/dropkit/backends/cpu/*.c src/dropkit/backends/cpu/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[demo,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m dropkit demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	$(PY) -m dropkit bench

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks examples

# The documentation site, into site/; --strict turns every broken reference into an error.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build dist src/*.egg-info
