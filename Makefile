# Two commands on a fresh machine:  `make demo` (the main job end to end) and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# The CPU build of torch; on a machine whose pip finds no local CPU wheel, add
# TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" (or a CUDA index on a GPU box).
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install demo test test-slow clean-demo

# `.[dev]` = torch tools + the CPU onnxruntime (`cpu` extra) + test tools. A GPU machine installs
# ".[torch,gpu,test]" instead: onnxruntime and onnxruntime-gpu must not be installed together.
install:
	$(PIP) install -q "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(PIP) install -q -e ".[dev]"

demo: install
	$(PYTHON) -m restr.demo

test: install
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test-slow: install
	$(PYTHON) -m pytest -m slow $(PYTEST_ARGS)

clean-demo:
	rm -rf runs/demo
