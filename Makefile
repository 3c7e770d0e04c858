# Two commands a fresh machine needs (Python 3.11 and nothing else):
#   make study   install into .venv if needed, then run the default study (dvc repro -> snakemake)
#   make test    install into .venv if needed, then run the test suite
# and for contributors (CI runs it before the tests):
#   make lint    snakemake --lint (findings fail, but the two allowed in .ci/lint) and
#                snakefmt --check of the Snakefile and rules/ (settings: pyproject.toml)
# The venv is rebuilt when pyproject.toml or requirements.lock change; otherwise both are no-ops
# for the install step.

PYTHON ?= python3
VENV   ?= .venv
CORES  ?= 2
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.rra-installed

export DVC_NO_ANALYTICS := 1
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: study test test-fast lint venv dag snakemake-study bench clean-results

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "rra needs Python 3.11 (torch 2.14.1 wheels), found " + sys.version.split()[0]'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

study: $(STAMP)
	dvc repro

snakemake-study: $(STAMP)
	snakemake --cores $(CORES)

dag: $(STAMP)
	snakemake -n

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(PY) .ci/lint
	snakefmt --check Snakefile rules

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f --quick || exit 1; done
