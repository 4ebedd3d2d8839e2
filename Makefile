# Two commands: `make demo` and `make test`. Both create the virtual environments they need.
# `make test-fast` is the inner loop: the suite without the slow and the MXNet tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
MXNET_VENV := .venv-mxnet
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=
# Spinning OpenMP threads of two torch processes on few cores slow both 20-30x (multi-process tests).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test test-fast venv venv-mxnet fixtures clean

venv: $(VENV)/.installed
$(VENV)/.installed: setup.cfg pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(VENV)/bin/python -m pip install -q -e ".[test]"
	touch $@

# MXNet 1.9.1 only serves as an interoperability oracle; it breaks on numpy>=1.24 without a shim.
# Its pack_img encodes through OpenCV (4.11: later releases require numpy>=2; `make fixtures` uses it).
venv-mxnet: $(MXNET_VENV)/.installed
$(MXNET_VENV)/.installed: Makefile
	test -d $(MXNET_VENV) || $(PYTHON) -m venv $(MXNET_VENV)
	$(MXNET_VENV)/bin/python -m pip install -q "mxnet==1.9.1" "numpy<2" "opencv-python-headless==4.11.0.86"
	touch $@

# Rewrites tests/fixtures with MXNet's own writer (byte for byte the committed files).
fixtures: venv-mxnet
	$(MXNET_VENV)/bin/python tests/fixtures/make_fixtures.py

test: venv venv-mxnet
	ADADISTILL_MXNET_PYTHON=$(abspath $(MXNET_VENV))/bin/python $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The inner loop: no multi-process / end-to-end runs, no MXNet venv.
test-fast: venv
	$(VENV)/bin/python -m pytest -m "not slow and not mxnet" $(PYTEST_ARGS)

demo: venv
	$(VENV)/bin/adadistill demo --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) $(MXNET_VENV) work_dirs $(DEMO_OUT)
