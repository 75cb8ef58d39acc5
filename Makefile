# visjax quick start.  `make demo` and `make test` work on a fresh machine with Python >= 3.11, pip and make.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch (CPU) is only a test/convert extra; pin the CPU build so pip never pulls CUDA wheels.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=20
STAMP  := $(VENV)/.installed
# One persistent XLA compilation cache for the whole test run (both xdist workers and the CLI subprocesses).
TEST_ENV := JAX_PLATFORMS=cpu JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.cache/jax-tests

.PHONY: demo test test-fast install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-installs only when the package metadata changes: a no-op otherwise.
$(STAMP): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[data,torch,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) -m visjax.main --config configs/demo_synthetic.py --workdir runs/demo

test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS) tests

# The inner loop: everything but the tests marked slow.
test-fast: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS) -m "not slow" tests

clean:
	rm -rf $(VENV) runs build *.egg-info .cache/jax-tests
