# Two commands that work on a fresh machine (see README):
#   make run    install into .venv, then run the pipeline on the offline default config
#   make test   install into .venv, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= all
SNAKEMAKE_ARGS ?=

.PHONY: install browser fonts slurm run readme-results test lint bench bench-cache bench-train bench-lm bench-vocab bench-cooccurrence bench-stream clean-venv

# torch==2.13.0 first: it is the CPU wheel on this machine; any other torch pulls CUDA builds.
$(VENV)/.installed: pyproject.toml envs/constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c envs/constraints.txt -e '.[test,lint]'
	touch $@

install: $(VENV)/.installed

run: install fonts
	$(VENV)/bin/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)

# The README's results tables, refreshed from this checkout's run (results/summary.md).
readme-results: install
	$(VENV)/bin/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS) results/summary.md
	$(PY) -m saelab.readme_results README.md results/summary.md

# The feature-page and trajectory-graph tests open the HTML in real headless Chromium (Debian's).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# Figures that show model tokens draw any script (saelab.plots.common.TOKEN_FONTS): Noto's core
# scripts, Droid Sans Fallback (CJK) and WenQuanYi Micro Hei (Hangul), about 16 MB from Debian.
FONTS := fonts-noto-core fonts-droid-fallback fonts-wqy-microhei
fonts:
	@dpkg -s $(FONTS) >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(FONTS); }

# The SLURM test submits the micro DAG to a one-node SLURM cluster on this machine (Debian's).
slurm:
	@workflow/profiles/slurm/local-cluster.sh install

test: install browser fonts slurm
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check src scripts tests benchmarks
	$(VENV)/bin/snakefmt --check Snakefile workflow/rules
	$(VENV)/bin/snakemake --lint
	PYRIGHT_PYTHON_IGNORE_WARNINGS=1 $(VENV)/bin/pyright --pythonpath $(PY)

# Benchmarks compare saelab with a peer or a bound in the same run; only a quiet machine decides.
bench: bench-cache bench-train bench-lm bench-vocab bench-cooccurrence bench-stream

bench-cache: install
	$(PY) benchmarks/cache_throughput.py

bench-train: install
	$(PY) benchmarks/train_throughput.py

bench-lm: install
	$(PY) benchmarks/lm_precision.py

bench-vocab: install
	$(PY) benchmarks/vocab_losses.py

bench-stream: install
	$(PY) benchmarks/stream_throughput.py --rounds 3

# Real codes of two 16,384-latent SAEs (trained first, ~5 min, by the DAG with an overlay config),
# then the synthetic worst case.
SAES_16K := $(foreach sae,matryoshka-16k batchtopk-16k,results/gemma-3-270m/blocks.6.hook_resid_pre/$(sae))
bench-cooccurrence: install
	$(VENV)/bin/snakemake --cores $(CORES) --configfile config/config.yaml benchmarks/config/cooccurrence_16k.yaml -- $(SAES_16K)
	for sae in $(SAES_16K); do \
		$(PY) benchmarks/cooccurrence_speed.py --codes sae --sae $$sae --cache data/cache/gemma-3-270m/main.zarr || exit 1; \
	done
	$(PY) benchmarks/cooccurrence_speed.py --codes clustered

clean-venv:
	rm -rf $(VENV)
