"""The legacy `inflight_batcher_llm` ensemble for a trtllm-build engine (TensorRT-LLM <= 1.2).

The ensemble's tensors differ between TensorRT-LLM releases, and the container's model files
(preprocessing/postprocessing `model.py`, the C++ `tensorrtllm` backend) expect exactly the
tensors of their own release. So the I/O comes from that release's templates
(`triton_backend/all_models/inflight_batcher_llm/<model>/config.pbtxt`, passed as
`legacy_templates`), and the variables we know get typed values from `legacy_values`.

Filling follows NVIDIA's own `triton_backend/tools/fill_template.py` (TensorRT-LLM; the same
file since tensorrtllm_backend v0.16), which uses `string.Template.safe_substitute`: a variable
without a value stays in the text as the literal `${name}`. Upstream's readers rely on that:
they read some parameters without a default and treat a literal `${name}` (or "") as unset:
`preprocessing/1/model.py` reads `tokenizer_dir` and `multimodal_model_path` directly,
`postprocessing/1/model.py` reads `tokenizer_dir`, and the C++ backend
(`inflight_batcher_llm/src/model_instance_state.cc`, `getBatchingTypeFromParams` and
`getGuidedDecodingConfigFromParams`) reads `gpt_model_type`, `tokenizer_dir`,
`xgrammar_tokenizer_info_path` and `guided_decoding_backend` outside any try/catch: a missing
key fails model creation. So every parameter of a template survives, filled or kept as
`${name}`. Each filled text is parsed into Triton's `ModelConfig`; a variable without a value
in a typed field (a batch size, a data type) is an error, so nothing reaches Triton half-filled.
The key fields are set on the message itself, and the message is printed with protobuf's text
format. The model files next to each template (`1/model.py`) are copied as they are: they ship
with the release, not with this project.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minitron_deploy.errors import InputError
from minitron_deploy.fsutil import atomic_write_text
from minitron_deploy.triton.pbtxt import parse, render

if TYPE_CHECKING:
    from minitron_deploy.triton.config import PackageConfig

ENSEMBLE_MODELS = ("preprocessing", "tensorrt_llm", "postprocessing", "ensemble")
OPTIONAL_MODELS = ("tensorrt_llm_bls",)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Parameters upstream reads without a default (see the module docstring for the files).
REQUIRED_PARAMETERS = {
    "preprocessing": ("tokenizer_dir", "multimodal_model_path"),
    "postprocessing": ("tokenizer_dir",),
    "tensorrt_llm": (
        "gpt_model_type",
        "tokenizer_dir",
        "xgrammar_tokenizer_info_path",
        "guided_decoding_backend",
    ),
}


def legacy_values(cfg: PackageConfig, tokenizer_dir: str, engine_dir: str) -> dict[str, Any]:
    """Typed values for the inflight_batcher_llm template variables we set.

    Names and meanings follow TensorRT-LLM's triton_backend docs (model_config.md).
    """
    n = cfg.instance_count
    return {
        "triton_max_batch_size": cfg.max_batch_size,
        "decoupled_mode": cfg.decoupled,
        "max_queue_delay_microseconds": cfg.max_queue_delay_us,
        "max_queue_size": 0,
        "engine_dir": engine_dir,
        "tokenizer_dir": tokenizer_dir,
        "triton_backend": "tensorrtllm",
        "batching_strategy": "inflight_fused_batching",
        "batch_scheduler_policy": "guaranteed_no_evict",
        "kv_cache_free_gpu_mem_fraction": cfg.kv_cache_free_gpu_mem_fraction,
        "exclude_input_in_output": True,
        "max_beam_width": 1,
        "enable_kv_cache_reuse": False,
        "enable_chunked_context": False,
        "normalize_log_probs": True,
        "logits_datatype": "TYPE_FP32",
        "encoder_input_features_data_type": "TYPE_FP16",
        "preprocessing_instance_count": n,
        "postprocessing_instance_count": n,
        "bls_instance_count": n,
        "add_special_tokens": True,
        "skip_special_tokens": True,
        "accumulate_tokens": False,
        "tensorrt_llm_model_name": "tensorrt_llm",
        "cancellation_check_period_ms": 100,
        "stats_check_period_ms": 100,
        "iter_stats_max_iterations": 1000,
        "request_stats_max_iterations": 0,
        "max_num_images": 1,
        # a typed data_type in TensorRT-LLM >= 1.1 templates; upstream's docs fill TYPE_FP16
        "prompt_embedding_table_data_type": "TYPE_FP16",
    }


def _text_value(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def fill(template: str, values: dict[str, Any], where: str) -> Any:
    """Fill one config.pbtxt template as `fill_template.py` does, and parse it.

    Variables with a value are replaced; the others stay as the literal `${name}`
    (`string.Template.safe_substitute`), which upstream's readers treat as unset.

    Raises:
        InputError: a variable without a value sits in a typed field.
    """
    from string import Template

    text = Template(template).safe_substitute({k: _text_value(v) for k, v in values.items()})
    try:
        return parse(text, where=where)
    except InputError as e:
        left = sorted({m[1] for m in _VAR.finditer(text)})
        raise InputError(
            f"template variables without a value in a typed field ({e.what}); unset: {left}",
            where=where,
            fix="pass templates from the TensorRT-LLM release that built the engine",
        ) from e


def check_engine(engine_dir: Path) -> None:
    """A trtllm-build output folder: config.json and rank*.engine."""
    if not (engine_dir / "config.json").is_file() or not list(engine_dir.glob("rank*.engine")):
        raise InputError(
            f"{engine_dir} is not a TensorRT-LLM engine folder (needs config.json and "
            "rank0.engine)",
            where="--engine-dir",
            fix="pass the --output_dir of trtllm-build",
        )
    try:
        json.loads((engine_dir / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"engine config.json is not JSON: {e}", where=str(engine_dir)) from e


def write_ensemble(tmp: Path, model_dir: Path, cfg: PackageConfig) -> list[str]:
    """Write the filled inflight_batcher_llm models into `tmp`; returns their names."""
    engine_dir = Path(cfg.engine_dir or "")
    check_engine(engine_dir)
    if not cfg.legacy_templates:
        raise InputError(
            "a legacy engine needs the inflight_batcher_llm templates of its TensorRT-LLM release",
            where="--legacy-templates",
            fix="pass TensorRT-LLM's triton_backend/all_models/inflight_batcher_llm "
            "(same tag as trtllm-build; in the tritonserver trtllm container it is bundled)",
        )
    templates = Path(cfg.legacy_templates)
    missing = [m for m in ENSEMBLE_MODELS if not (templates / m / "config.pbtxt").is_file()]
    if missing:
        raise InputError(f"templates lack {missing}", where=str(templates))
    values = legacy_values(
        cfg,
        tokenizer_dir=cfg.served_model_path or str(model_dir.resolve()),
        engine_dir=cfg.served_engine_dir or str(engine_dir.resolve()),
    )
    names = [m for m in (*ENSEMBLE_MODELS, *OPTIONAL_MODELS) if (templates / m).is_dir()]
    for name in names:
        src = templates / name / "config.pbtxt"
        msg = fill(src.read_text(), values, where=str(src))
        msg.name = name
        msg.max_batch_size = cfg.max_batch_size
        if name in ("tensorrt_llm", "tensorrt_llm_bls"):
            msg.model_transaction_policy.decoupled = cfg.decoupled
        dest = tmp / name
        shutil.copytree(templates / name, dest, ignore=shutil.ignore_patterns("config.pbtxt"))
        (dest / "1").mkdir(exist_ok=True)
        text = render(msg)
        parse(text, where=str(dest / "config.pbtxt"))
        atomic_write_text(dest / "config.pbtxt", text)
    return names
