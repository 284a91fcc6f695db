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

# The C++ host (runtime/cpp): Debian packages it builds with, ONNX Runtime's headers and the wheel's
# library in CPP_DEPS, a release build and a sanitizer build, the export its tests read.
CPP_APT := cmake g++ pkg-config nlohmann-json3-dev libicu-dev libssl-dev libstb-dev libjpeg-dev libexif-dev libnetpbm-dev libwebp-dev libtiff-dev zlib1g-dev patchelf
CPP_DEPS ?= build/cpp-deps
CPP_BUILD ?= build/cpp
CPP_ASAN_BUILD ?= build/cpp-asan
CPP_EXPORT ?= build/cpp-golden/export
CPP_DIST ?= build/dist
CPP_CMAKE_ARGS = -DRESTR_ORT_INCLUDE_DIR=$(abspath $(CPP_DEPS))/root/usr/include/onnxruntime \
	-DRESTR_ORT_LIB_DIR=$(abspath $(CPP_DEPS))/lib -DRESTR_TEST_EXPORT=$(abspath $(CPP_EXPORT))

.PHONY: install serve-env demo lint test test-slow clean-demo cpp-apt cpp-deps cpp-build cpp-dist cpp-export cpp-test clean-cpp

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

# ruff's lint and format rules are in pyproject.toml; `ruff format .` applies the format.
lint: install
	$(PYTHON) -m ruff check --quiet .
	$(PYTHON) -m ruff format --check --quiet .

test: install lint serve-env cpp-test
	$(PYTHON) -m pytest --ignore=tests/test_cpp.py $(PYTEST_ARGS)

test-slow: install serve-env cpp-build
	$(PYTHON) -m pytest -m slow $(PYTEST_ARGS)

clean-demo:
	rm -rf runs/demo

# Installs only the packages that are missing (apt lists are refreshed only if that fails); apt's
# own output is shown only when it fails.
cpp-apt:
	@missing=$$(for p in $(CPP_APT); do dpkg -s $$p > /dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; log=$$(mktemp); \
		{ apt-get install -y -q $$missing || { apt-get update -q && apt-get install -y -q $$missing; }; } > $$log 2>&1 \
			|| { cat $$log; rm -f $$log; exit 1; }; rm -f $$log; \
	fi

cpp-deps: cpp-apt
	@runtime/cpp/scripts/fetch-deps.sh $(CPP_DEPS) $(PYTHON) > /dev/null

cpp-build: cpp-deps
	@cmake -S runtime/cpp -B $(CPP_BUILD) $(CPP_CMAKE_ARGS) > /dev/null
	cmake --build $(CPP_BUILD) -j2 -- --no-print-directory

# A binary package for machines without the build's Debian packages (runtime/cpp/README.md).
cpp-dist: cpp-build
	@runtime/cpp/scripts/make-dist.sh $(CPP_BUILD) $(CPP_DIST)

cpp-export:
	$(PYTHON) tests/golden/make_golden.py --export $(CPP_EXPORT)

# CTest on the release and the -fsanitize=address,undefined builds, then the parity tests with Python.
cpp-test: cpp-build cpp-export
	cd $(CPP_BUILD) && ctest --output-on-failure
	@cmake -S runtime/cpp -B $(CPP_ASAN_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRESTR_SANITIZE=ON $(CPP_CMAKE_ARGS) > /dev/null
	cmake --build $(CPP_ASAN_BUILD) -j2 -- --no-print-directory
	cd $(CPP_ASAN_BUILD) && ctest --output-on-failure
	RESTR_CPP_BUILD=$(abspath $(CPP_BUILD)) $(PYTHON) -m pytest tests/test_cpp.py $(PYTEST_ARGS)

clean-cpp:
	rm -rf $(CPP_DEPS) $(CPP_BUILD) $(CPP_ASAN_BUILD) $(CPP_DIST) $(dir $(CPP_EXPORT))
