# Every target creates .venv on first use; `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# glibc returns big activation buffers to the OS after every pass; keeping them is 1.3-2x faster
# on CPU (see DESIGN.md, "Performance notes").
export GLIBC_TUNABLES ?= glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184
export PYTHONUNBUFFERED := 1
# OpenMP threads spin-wait by default; with DDP test processes sharing 2 cores that costs 5-25x.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: venv demo demo-ssfd test test-fast test-lowest lint bench clean

venv: $(STAMP)

# Exact versions come from constraints.txt (the tested set); pyproject.toml declares ranges only.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[all,dev]"
	# The medvae package is only the reference for the Med-VAE parity test; its own dependency
	# list (wandb, monai, hydra, ...) is not needed for its model class.
	$(PY) -m pip install -q --no-deps -c constraints.txt medvae einops
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

# SSFD end to end: self-supervised pretraining on the synthetic data, export, then a UNet run
# that logs and early-stops on the freshly pretrained SSFD.
demo-ssfd: $(STAMP)
	$(PY) examples/ssfd_demo.py

# Every test, `slow` ones included (CI runs this). pytest's exit code 5 ("no tests collected")
# is a failure here, never a silent pass.
test: $(STAMP)
	$(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# The quick loop while developing: everything but the multi-process / multi-epoch tests.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check lightning_dfd recon_models tests benchmarks examples

bench: $(STAMP)
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) $(LOWEST_VENV) .pytest_cache build *.egg-info

# The declared lower bounds (constraints-lowest.txt: torch 2.4.1, torchmetrics 1.4, numpy 1.24, ...)
# in their own venv, core install only, and the metric-core tests (tests needing an extra skip).
# About 4-5 min to build the venv (torch 2.4.1 pulls ~3 GB of CUDA wheels from PyPI) and 2.5 min of
# tests on 2 shared cores.
LOWEST_VENV := .venv-lowest
LOWEST_TESTS := tests/test_metrics_parity.py tests/test_spatial.py tests/test_composition.py \
	tests/test_ssfd_metric.py tests/test_weights.py tests/test_metric_harness.py
$(LOWEST_VENV)/.installed: pyproject.toml constraints-lowest.txt
	test -x $(LOWEST_VENV)/bin/python || $(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(LOWEST_VENV)/bin/python -m pip install -q -c constraints-lowest.txt -e . \
		"pytest>=8" "pytest-timeout>=2.3" "scikit-image>=0.21"
	touch $@

test-lowest: $(LOWEST_VENV)/.installed
	$(LOWEST_VENV)/bin/python -m pytest -q -m "not slow" $(LOWEST_TESTS)
