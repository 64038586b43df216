# Two commands on a fresh machine: `make demo` (train + evaluate on the embedded synthetic
# dataset) and `make test`. Both create the virtual environment they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q
DEMO_DIR ?= runs/demo

.PHONY: install demo test test-fast bench allocators compare clean

$(VENV)/.installed: setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip
	$(VENV)/bin/pip install $(PIP_FLAGS) -e '.[test]' --config-settings editable_mode=compat
	$(PY) -m tf_prob_unet.native
	touch $@

install: $(VENV)/.installed

# Train the Probabilistic U-Net on the synthetic LIDC-like dataset (built on the fly into
# runs/data) with GECO (synthetic_geco.flags: chosen over the ELBO of synthetic.flags on the
# validation split, docs/reproduction.md), draw 1/4/8/16 samples per test image and print GED and
# mode calibration.
demo: install
	$(PY) -m tf_prob_unet.train --flagfile=synthetic_geco.flags --model_dir=$(DEMO_DIR)/model
	$(PY) -m tf_prob_unet.evaluate --model_dir=$(DEMO_DIR)/model --output_dir=$(DEMO_DIR)/eval \
	  --num_samples=1,4,8,16

# The whole suite (what CI runs); `make test-fast` skips the tests marked slow.
test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# Every bench/ script, one after the other -> bench/results.json and bench/RESULTS.md. Run it on an
# otherwise idle machine.
bench: install allocators
	TF_PROB_UNET_ALLOCATOR=auto $(PY) bench/run_all.py

# Optional tuned allocators (Debian packages); the binaries preload one only when
# TF_PROB_UNET_ALLOCATOR asks for it (tf_prob_unet/runtime.py), the benchmarks do so explicitly.
# Skipped with a note where apt-get is not usable.
allocators:
	@if ls /usr/lib/*/libtcmalloc_minimal.so.4 /usr/lib/*/libjemalloc.so.2 >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q libtcmalloc-minimal4 libjemalloc2 >/dev/null || echo "note: allocators not installed"; \
	else echo "note: no apt-get as root here; the binaries use glibc malloc"; fi

# The Probabilistic U-Net against the baselines on the synthetic LIDC-like data, one budget
# (docs/reproduction.md, "Baselines"); COMPARE_FLAGS passes options to bench/compare_models.py.
COMPARE_FLAGS ?=
compare: install
	$(PY) bench/compare_models.py --output_dir=runs/compare $(COMPARE_FLAGS)

clean:
	rm -rf runs
