# Two commands on a fresh machine:  `make demo` (the main job end to end) and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# The CPU build of torch; on a machine whose pip finds no local CPU wheel, add
# TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" (or a CUDA index on a GPU box).
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=
# restr-serve's own environment: nvidia-pytriton 0.7 needs numpy < 2, the main one keeps numpy 2
# (no torch there: the server runs the torch-free runtime). tests/test_serve.py starts servers from it.
SERVE_VENV ?= .venv-serve

.PHONY: install serve-env demo test test-slow clean-demo

# `.[dev]` = torch tools + the CPU onnxruntime (`cpu` extra) + test tools. A GPU machine installs
# ".[torch,gpu,test,client]" instead: onnxruntime and onnxruntime-gpu must not be installed together.
install:
	$(PIP) install -q "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(PIP) install -q -e ".[dev]"

serve-env:
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install -q -e ".[serve,cpu]"

demo: install
	$(PYTHON) -m restr.demo

test: install serve-env
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test-slow: install serve-env
	$(PYTHON) -m pytest -m slow $(PYTEST_ARGS)

clean-demo:
	rm -rf runs/demo
