# The two commands the README promises: `make demo` and `make test`. Each creates .venv if it is
# missing and installs what it needs first: `make demo` only the demo's packages (torch,
# scikit-learn, matplotlib, tqdm), `make test` the test, interop and docs packages too.
# `make test` is CI (.ci/test.sh): the full suite on the pinned torch, the package check, and the
# newest and oldest supported torch releases in cached environments; `make test-pinned` is the
# full suite alone, `make test-package` the package check alone.
# torch==2.13.0 (the CPU build) is installed before the package so that pip never resolves torch
# to a multi-GB CUDA build. --no-compile skips writing .pyc files for the thousands of modules
# in torch's wheel at install time; Python compiles the few the demo imports on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
PIP_INSTALL := $(PY) -m pip install --quiet --no-compile --disable-pip-version-check
DEMO_STAMP := $(VENV)/.dropkit-demo-installed
DEV_STAMP := $(VENV)/.dropkit-dev-installed
SOURCES := pyproject.toml setup.py $(wildcard src/dropkit/backends/cpu/*.c src/dropkit/backends/cpu/*.h)

.PHONY: demo test test-pinned test-package install bench lint docs clean clean-ci-cache

$(DEMO_STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) "$(TORCH_PIN)"
	$(PIP_INSTALL) -e ".[demo]"
	touch $(DEMO_STAMP)

$(DEV_STAMP): $(DEMO_STAMP)
	$(PIP_INSTALL) -e ".[dev]"
	touch $(DEV_STAMP)

install: $(DEV_STAMP)

demo: $(DEMO_STAMP)
	$(PY) -m dropkit demo

test: $(DEV_STAMP)
	bash .ci/test.sh

test-pinned: $(DEV_STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

test-package: $(DEV_STAMP)
	DROPKIT_CI_STAGES=package bash .ci/test.sh

bench: $(DEV_STAMP)
	$(PY) -m dropkit bench

lint: $(DEV_STAMP)
	$(PY) -m ruff check src tests benchmarks examples

# The documentation site, into site/; --strict turns every broken reference into an error.
docs: $(DEV_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build dist src/*.egg-info

# The cached CI environments of the other torch releases (.ci/envs.sh).
clean-ci-cache:
	rm -rf $${DROPKIT_CI_CACHE:-$$HOME/.cache/dropkit-ci}
