# Two commands that work on a fresh machine (see README):
#   make run    install into .venv, then run the pipeline on the offline default config
#   make test   install into .venv, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= all
SNAKEMAKE_ARGS ?=

.PHONY: install browser run test lint bench clean-venv

# torch==2.13.0 first: it is the CPU wheel on this machine; any other torch pulls CUDA builds.
$(VENV)/.installed: pyproject.toml envs/constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c envs/constraints.txt -e '.[test,lint]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)

# The feature-page and trajectory-graph tests open the HTML in real headless Chromium (Debian's).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: install browser
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check src scripts tests benchmarks
	$(VENV)/bin/snakefmt --check Snakefile workflow/rules
	$(VENV)/bin/snakemake --lint

bench: install
	$(PY) benchmarks/cache_throughput.py

clean-venv:
	rm -rf $(VENV)
