# The two commands: `make demo` and `make test`. Each creates the virtualenv it needs on first use.
PYTHON ?= python3
VENV := .venv
COLAB_VENV := .venv-colab
# The oldest versions the kit supports: Colab TPU's runtime (see README, "Versions").
COLAB_PINS := jax==0.7.2 jaxlib==0.7.2 flax==0.11.2 orbax-checkpoint==0.12.4 ipywidgets==7.7.1 "transformers>=5,<6"
export IIMAGEN_QUIET := 1
# XLA's persistent compilation cache: repeated programs (notebooks, subprocess tests) compile once per run.
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS ?= 0.5
# Tests and CI notebooks are dominated by XLA's compile time on a 2-core CPU: compile cheaply there.
TEST_XLA_FLAGS := --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true

.PHONY: demo test lane-newest lane-colab unit unit-colab notebooks notebooks-a notebooks-b browser bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

# After .venv's install (order-only): two editable installs of one source tree must not run at once under -j2.
$(COLAB_VENV)/.installed: pyproject.toml | $(VENV)/.installed
	test -x $(COLAB_VENV)/bin/python || $(PYTHON) -m venv $(COLAB_VENV)
	$(COLAB_VENV)/bin/pip install -q -U pip
	$(COLAB_VENV)/bin/pip install -q -e '.[dev]' $(COLAB_PINS)
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/iimagen demo

# The suites run in two lanes side by side (each suite is mostly one core's XLA compiles), each lane's output printed
# whole when it ends: the newest versions (unit ~10 min, notebooks 05/06/08 ~2.5 min, browser ~1 min) and Colab's
# (its install ~1 min, unit ~10 min, notebooks 00-04/07 ~2.5 min). Left to itself, make -j2 started a notebook half
# before the second unit suite and left that suite last, alone.
test: $(VENV)/.installed
	$(MAKE) -j2 --output-sync=target lane-newest lane-colab

lane-newest:
	$(MAKE) unit notebooks-b browser

lane-colab:
	$(MAKE) unit-colab notebooks-a

unit: $(VENV)/.installed
	IIMAGEN_PROFILE=ci XLA_FLAGS="$(TEST_XLA_FLAGS)" $(VENV)/bin/python -m pytest tests --ignore=tests/test_browser.py --durations=10

unit-colab: $(COLAB_VENV)/.installed
	IIMAGEN_PROFILE=ci XLA_FLAGS="$(TEST_XLA_FLAGS)" $(COLAB_VENV)/bin/python -m pytest tests --ignore=tests/test_browser.py --durations=10

# Notebooks 07 and 08 used in JupyterLab through Debian's Chromium (tests/test_browser.py): installs chromium with
# apt-get when root; without it (and not root) one SKIPPED line; under CI=true it must run. Failures: out/browser/.
browser: $(VENV)/.installed
	IIMAGEN_PROFILE=ci XLA_FLAGS="$(TEST_XLA_FLAGS)" $(VENV)/bin/python -m pytest -rs -p no:cacheprovider \
		tests/test_browser.py

# Two halves of about equal time; 05 and 06 stay in one (06 continues from the stage-1 run that 05 trains).
NOTEBOOKS_A := $(sort $(wildcard notebooks/0[0-47]_*.ipynb))
NOTEBOOKS_B := $(filter-out $(NOTEBOOKS_A),$(sort $(wildcard notebooks/*.ipynb)))
# Half A (with 01 and 07, the widgets) runs under Colab's pinned versions (.venv-colab: its kernel is that venv's
# python), half B under the newest; the browser suite runs 07 and 08 under the newest too.
notebooks: notebooks-a notebooks-b
notebooks-a: $(COLAB_VENV)/.installed
	IIMAGEN_PROFILE=ci XLA_FLAGS="$(TEST_XLA_FLAGS)" $(COLAB_VENV)/bin/python -m pytest --nbval-lax -p no:cacheprovider \
		$(NOTEBOOKS_A)
notebooks-b: $(VENV)/.installed
	IIMAGEN_PROFILE=ci XLA_FLAGS="$(TEST_XLA_FLAGS)" $(VENV)/bin/python -m pytest --nbval-lax -p no:cacheprovider \
		$(NOTEBOOKS_B)

bench: $(VENV)/.installed
	for b in benchmarks/*.py; do $(VENV)/bin/python $$b || exit 1; done

clean:
	rm -rf out .pytest_cache
