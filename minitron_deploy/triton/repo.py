"""Write Triton model repositories for a Llama checkpoint: `torch` (built in), `trtllm`, `vllm`.

Layouts:
- `torch`: `<name>/config.pbtxt` (python backend, dynamic batching), `<name>/1/model.py` (our
  `model_py/torch_model.py`) and, by default, a copy of the checkpoint in `<name>/1/model/`.
- `trtllm` (TensorRT-LLM PyTorch back end, the current path): `tensorrt_llm/config.pbtxt`
  (python backend, the llmapi model's inputs and outputs) and `tensorrt_llm/1/model.yaml`
  (`model`, `backend: pytorch`, parallelism, LLM() options, `triton_config`). The model file
  itself is TensorRT-LLM's (`triton_backend/all_models/llmapi/tensorrt_llm/1/{model.py,
  helpers.py}` at the tag matching the container's `tensorrt_llm.__version__`); pass
  `llmapi_src` to copy it in, else the repository's README says where to get it.
- `trtllm` with `engine_dir` (a legacy TensorRT engine): the `inflight_batcher_llm` ensemble,
  see `legacy.py`.
- `vllm` (Triton's vLLM backend, `triton-inference-server/vllm_backend`): `vllm_model/
  config.pbtxt` (`backend: "vllm"`, one `KIND_MODEL` instance, decoupled, max_batch_size 0: the
  backend fills in its inputs and outputs itself and batches inside vLLM) and
  `vllm_model/1/model.json`, the keyword arguments of vLLM's `AsyncEngineArgs`. Layout as in
  upstream's `samples/model_repository/vllm_model/{config.pbtxt,1/model.json}` on branch
  r26.01 (commit c70d654, Triton 26.01), whose `src/model.py` reads `1/model.json`, asserts the
  decoupled policy and sets max_batch_size 0 in `auto_complete_config`. The checkpoint is
  referenced by absolute path (`served_model_path`), never copied: the backend hands `model` to
  vLLM as is, and a relative path would resolve against the server's working folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from minitron_deploy.errors import InputError
from minitron_deploy.fsutil import atomic_dir, atomic_write_json, atomic_write_text
from minitron_deploy.model.io import read_config, weight_files
from minitron_deploy.triton import legacy
from minitron_deploy.triton.config import PackageConfig
from minitron_deploy.triton.model_py import TORCH_MODEL_PY
from minitron_deploy.triton.pbtxt import ModelSpec, TensorSpec, parse, render_spec

LLMAPI_FILES = ("model.py", "helpers.py")


# The llmapi model's I/O (TensorRT-LLM triton_backend/all_models/llmapi/tensorrt_llm/
# config.pbtxt, the 1.2.x layout); no batch dim. Every model type declares exactly these, so
# one client (raw infer, /generate, gRPC streaming) works against each.
LLM_INPUTS = (
    TensorSpec("text_input", "STRING", (-1,)),
    TensorSpec("streaming", "BOOL", (1,), optional=True),
    *(
        TensorSpec(f"sampling_param_{n}", t, (1,), optional=True)
        for n, t in (
            ("best_of", "INT32"),
            ("temperature", "FP32"),
            ("top_k", "INT32"),
            ("top_p", "FP32"),
            ("frequency_penalty", "FP32"),
            ("presence_penalty", "FP32"),
            ("max_tokens", "INT32"),
        )
    ),
    TensorSpec("sampling_param_stop", "STRING", (-1,), optional=True),
    TensorSpec("sampling_param_seed", "UINT64", (1,), optional=True),
    TensorSpec("sampling_param_exclude_input_from_output", "BOOL", (1,), optional=True),
    TensorSpec("sampling_param_return_perf_metrics", "BOOL", (1,), optional=True),
    TensorSpec("return_finish_reason", "BOOL", (1,), optional=True),
    TensorSpec("return_stop_reason", "BOOL", (1,), optional=True),
    TensorSpec("return_cumulative_logprob", "BOOL", (1,), optional=True),
    TensorSpec("stop", "BOOL", (1,), optional=True),
)
LLM_OUTPUTS = (
    TensorSpec("text_output", "STRING", (-1,)),
    TensorSpec("finish_reason", "STRING", (-1,)),
    TensorSpec("stop_reason", "STRING", (-1,)),
    TensorSpec("cumulative_logprob", "FP32", (-1,)),
    *(
        TensorSpec(f"kv_cache_{n}", "INT32", (-1,))
        for n in ("reused_block", "missed_block", "alloc_new_blocks", "alloc_total_blocks")
    ),
    TensorSpec("kv_cache_hit_rate", "FP32", (-1,)),
    *(
        TensorSpec(f"{n}_time_ns", "INT64", (1,))
        for n in ("arrival", "first_scheduled", "first_token", "last_token")
    ),
    TensorSpec("acceptance_rate", "FP32", (1,)),
    TensorSpec("total_accepted_draft_tokens", "INT32", (1,)),
    TensorSpec("total_draft_tokens", "INT32", (1,)),
)


def torch_spec(cfg: PackageConfig, model_dir_param: str) -> ModelSpec:
    """The `torch` model's typed configuration: the llmapi model's I/O and batching outside
    Triton's batcher (max_batch_size 0, as llmapi); the model batches concurrent requests
    itself when decoupled (up to `max_batch_size`, waiting `max_queue_delay_us`)."""
    return ModelSpec(
        name=cfg.name(),
        backend="python",
        max_batch_size=0,
        inputs=LLM_INPUTS,
        outputs=LLM_OUTPUTS,
        decoupled=cfg.decoupled,
        instance_count=cfg.instance_count,
        dynamic_batching=False,
        parameters={
            "model_dir": model_dir_param,
            "dtype": cfg.dtype,
            "device": cfg.device,
            "num_threads": str(cfg.num_threads),
            "default_max_tokens": str(cfg.max_tokens),
            "max_batch_size": str(cfg.max_batch_size),
            "max_queue_delay_us": str(cfg.max_queue_delay_us),
        },
    )


def gpu_device_ids(cfg: PackageConfig) -> str:
    """The llmapi model's `gpu_device_ids` parameter: each instance's GPUs, instances split by
    ";" ("0,1;2,3"): `cfg.gpu_device_ids`, else consecutive blocks of tensor_parallel_size."""
    if cfg.gpu_device_ids:
        return cfg.gpu_device_ids
    tp = cfg.tensor_parallel_size
    return ";".join(",".join(str(i * tp + g) for g in range(tp)) for i in range(cfg.instance_count))


def llmapi_spec(cfg: PackageConfig) -> ModelSpec:
    """TensorRT-LLM llmapi model's config.pbtxt.

    `model_transaction_policy` is written here too, equal to model.yaml's
    `triton_config.decoupled`: upstream's model.py applies model.yaml's value only through
    `auto_complete_config`, which Triton skips under `--disable-auto-complete-config` (what
    TensorRT-LLM's `launch_triton_server.py` passes), and the two agree otherwise. With more
    than one instance, newer model.py (after 1.2) refuses to start without a `gpu_device_ids`
    parameter, so it is written then (older model.py ignores it).
    """
    params = {"gpu_device_ids": gpu_device_ids(cfg)} if cfg.instance_count > 1 else {}
    return ModelSpec(
        name=cfg.name(),
        backend="python",
        max_batch_size=0,
        inputs=LLM_INPUTS,
        outputs=LLM_OUTPUTS,
        decoupled=cfg.decoupled,
        instance_count=cfg.instance_count,
        dynamic_batching=False,
        parameters=params,
    )


def llmapi_yaml(cfg: PackageConfig, model_path: str) -> dict[str, Any]:
    """`1/model.yaml`: LLM() arguments plus `triton_config`.

    The llmapi model batches inside TensorRT-LLM (in-flight batching), so Triton's own
    `max_batch_size` stays 0, as in TensorRT-LLM's reference model.yaml; `max_batch_size`
    goes to LLM() instead.
    """
    return {
        "model": model_path,
        "backend": "pytorch",
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "pipeline_parallel_size": 1,
        "max_batch_size": cfg.max_batch_size,
        "kv_cache_config": {"free_gpu_memory_fraction": cfg.kv_cache_free_gpu_mem_fraction},
        "triton_config": {"max_batch_size": 0, "decoupled": cfg.decoupled},
    }


def vllm_spec(cfg: PackageConfig) -> ModelSpec:
    """config.pbtxt for Triton's vLLM backend: no inputs or outputs (the backend's
    `auto_complete_config` adds `text_input`, `stream`, `sampling_parameters`, ...,
    `text_output`), the decoupled policy it asserts, and `KIND_MODEL` (vLLM places itself)."""
    return ModelSpec(
        name=cfg.name(),
        backend="vllm",
        max_batch_size=0,
        inputs=(),
        outputs=(),
        decoupled=True,
        instance_count=cfg.instance_count,
        instance_kind="KIND_MODEL",
        dynamic_batching=False,
    )


def vllm_model_json(cfg: PackageConfig, model_path: str) -> dict[str, Any]:
    """`1/model.json`: vLLM `AsyncEngineArgs` keyword arguments. Batching happens in vLLM
    (`max_num_seqs` = `max_batch_size`); `gpu_memory_utilization` only on a CUDA device (a CPU
    vLLM sizes its KV cache from `VLLM_CPU_KVCACHE_SPACE` in the server's environment)."""
    args: dict[str, Any] = {
        "model": model_path,
        "dtype": cfg.dtype,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "max_num_seqs": cfg.max_batch_size,
        "seed": 0,
    }
    if cfg.device.startswith("cuda"):
        args["gpu_memory_utilization"] = cfg.kv_cache_free_gpu_mem_fraction
    else:
        args["enforce_eager"] = True
    return args


def _write_vllm(tmp: Path, model_dir: Path, cfg: PackageConfig) -> list[str]:
    root = tmp / cfg.name()
    (root / "1").mkdir(parents=True)
    _write_config(root, vllm_spec(cfg))
    path = cfg.served_model_path or str(model_dir.resolve())
    atomic_write_json(root / "1" / "model.json", vllm_model_json(cfg, path))
    return [cfg.name()]


def _write_config(model_root: Path, spec: ModelSpec) -> str:
    text = render_spec(spec)
    parse(text, where=str(model_root / "config.pbtxt"))  # never write what Triton cannot read
    model_root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(model_root / "config.pbtxt", text)
    return text


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link where source and repository share a file system (the weights are immutable
    artifacts: a 16 GB checkpoint is packaged in no time and no disk), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _write_torch(tmp: Path, model_dir: Path, cfg: PackageConfig) -> list[str]:
    root = tmp / cfg.name()
    (root / "1").mkdir(parents=True)
    if cfg.copy_model:
        shutil.copytree(model_dir, root / "1" / "model", copy_function=_link_or_copy)
        param = "model"
    else:
        param = cfg.served_model_path or str(model_dir.resolve())
    _write_config(root, torch_spec(cfg, param))
    shutil.copy2(TORCH_MODEL_PY, root / "1" / "model.py")
    return [cfg.name()]


def _write_llmapi(tmp: Path, model_dir: Path, cfg: PackageConfig) -> list[str]:
    import yaml

    root = tmp / cfg.name()
    (root / "1").mkdir(parents=True)
    _write_config(root, llmapi_spec(cfg))
    path = cfg.served_model_path or str(model_dir.resolve())
    header = "# TensorRT-LLM LLM() arguments (PyTorch back end) + triton_config.\n"
    body = yaml.safe_dump(llmapi_yaml(cfg, path), sort_keys=False)
    atomic_write_text(root / "1" / "model.yaml", header + body)
    if cfg.llmapi_src:
        src = Path(cfg.llmapi_src)
        missing = [f for f in LLMAPI_FILES if not (src / f).is_file()]
        if missing:
            raise InputError(
                f"llmapi_src {src} lacks {missing}",
                where="--llmapi-src",
                fix="point it at TensorRT-LLM's triton_backend/all_models/llmapi/tensorrt_llm/1",
            )
        for f in LLMAPI_FILES:
            shutil.copy2(src / f, root / "1" / f)
    return [cfg.name()]


def _readme(cfg: PackageConfig, models: list[str]) -> str:
    lines = [f"# Triton model repository ({cfg.backend}): {', '.join(models)}", ""]
    if cfg.backend == "trtllm" and not cfg.llmapi_src and not cfg.engine_dir:
        lines += [
            "tensorrt_llm/1/ still needs TensorRT-LLM's llmapi model files. Inside",
            "nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3, take them from the",
            "TensorRT-LLM tag matching the container's version:",
            "  python3 -c 'import tensorrt_llm; print(tensorrt_llm.__version__)'",
            "  git clone -b v<version> --depth 1 https://github.com/NVIDIA/TensorRT-LLM",
            "  cp TensorRT-LLM/triton_backend/all_models/llmapi/tensorrt_llm/1/"
            "{model.py,helpers.py} tensorrt_llm/1/",
            "(or package again with --llmapi-src <that folder>).",
            "",
        ]
    if cfg.backend == "vllm":
        lines += [
            "Triton's vLLM backend: serve in nvcr.io/nvidia/tritonserver:<yy.mm>-vllm-python-py3",
            "(or any tritonserver with backends/vllm from triton-inference-server/vllm_backend",
            "and vLLM installed). vllm_model/1/model.json holds vLLM's engine arguments; its",
            "`model` path must exist where the server runs. The backend adds the inputs",
            "(text_input, stream, sampling_parameters as JSON, exclude_input_in_output, ...).",
            "  tritonserver --model-repository=$PWD",
            '  curl -X POST localhost:8000/v2/models/vllm_model/generate -d \'{"text_input":'
            ' "Hi", "parameters": {"stream": false, "temperature": 0, "max_tokens": 16}}\'',
        ]
        return "\n".join(lines) + "\n"
    lines += [
        "Serve: tritonserver --model-repository=$PWD  (or: minitron-deploy serve triton --repo .)",
        'Query: curl -X POST localhost:8000/v2/models/<model>/generate -d \'{"text_input": "Hi",'
        ' "sampling_param_max_tokens": 16}\'',
    ]
    return "\n".join(lines) + "\n"


def check_checkpoint(model_dir: str | Path) -> Path:
    """Fail early unless `model_dir` is a loadable HF Llama checkpoint with a tokenizer."""

    model_dir = Path(model_dir)
    read_config(model_dir)
    weight_files(model_dir)
    if not any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        raise InputError(
            f"{model_dir} has no tokenizer (tokenizer.json / tokenizer.model)",
            fix="copy the tokenizer files into the checkpoint folder",
        )
    return model_dir


def package_triton(
    model_dir: str | Path, out_repo: str | Path, cfg: PackageConfig, *, overwrite: bool = False
) -> dict[str, Any]:
    """Write a Triton model repository for the checkpoint in `model_dir` (atomically).

    Args:
        model_dir: HF Llama checkpoint (BF16 or Model-Optimizer FP8) with tokenizer.
        out_repo: the repository folder to create.
        cfg: packaging options.
        overwrite: replace an existing non-empty `out_repo`.

    Returns:
        A summary: repository path, backend, layout, model names and the config files written.

    Raises:
        InputError: `model_dir` is not a checkpoint, a legacy engine or template folder is
            missing or incomplete, or a rendered config does not parse.
    """

    model_dir = check_checkpoint(model_dir)
    if cfg.backend != "trtllm" and cfg.engine_dir:
        raise InputError("engine_dir is only used with backend 'trtllm'", where="--engine-dir")
    with atomic_dir(out_repo, overwrite=overwrite) as tmp:
        if cfg.backend == "torch":
            layout, models = "python-backend", _write_torch(tmp, model_dir, cfg)
        elif cfg.backend == "vllm":
            layout, models = "vllm-backend", _write_vllm(tmp, model_dir, cfg)
        elif cfg.engine_dir:
            layout, models = "inflight_batcher_llm", legacy.write_ensemble(tmp, model_dir, cfg)
        else:
            layout, models = "llmapi", _write_llmapi(tmp, model_dir, cfg)
        atomic_write_text(tmp / "README.md", _readme(cfg, models))
        summary = {
            "repo": str(Path(out_repo).resolve()),
            "backend": cfg.backend,
            "layout": layout,
            "models": models,
            "configs": sorted(str(p.relative_to(tmp)) for p in tmp.rglob("config.pbtxt")),
            "package_config": cfg.model_dump(),
            "source": str(model_dir.resolve()),
        }
        # The repository's own path is left out of the file: it may be moved (the pipeline
        # builds it in a temporary folder), and the file's bytes should not depend on it.
        atomic_write_json(
            tmp / "minitron_package.json", {k: v for k, v in summary.items() if k != "repo"}
        )
    return summary
