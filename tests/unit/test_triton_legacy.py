"""The legacy inflight_batcher_llm ensemble, filled from (stand-in) release templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minitron_deploy.errors import InputError
from minitron_deploy.triton import PackageConfig, package_triton
from minitron_deploy.triton.legacy import REQUIRED_PARAMETERS, fill
from minitron_deploy.triton.pbtxt import parse_file

pytest.importorskip("tritonclient.grpc.model_config_pb2")

# Stand-ins for TensorRT-LLM's inflight_batcher_llm templates (1.1/1.2 layout): our own files
# with upstream's `${var}` conventions and its parameter keys and variables per model (from
# triton_backend/all_models/inflight_batcher_llm/*/config.pbtxt), and few tensors.
PARAMS = {
    "preprocessing": (
        ("tokenizer_dir", "tokenizer_dir"),
        ("add_special_tokens", "add_special_tokens"),
        ("multimodal_model_path", "multimodal_model_path"),
        ("gpt_model_path", "engine_dir"),
        ("max_num_images", "max_num_images"),
        ("hf_model_path", "hf_model_path"),
    ),
    "postprocessing": (
        ("tokenizer_dir", "tokenizer_dir"),
        ("skip_special_tokens", "skip_special_tokens"),
    ),
    "tensorrt_llm": tuple(
        (k, {"gpt_model_type": "batching_strategy", "gpt_model_path": "engine_dir"}.get(k, k))
        for k in (  # noqa: SIM905 - one string reads better than 44 quoted names
            "max_beam_width gpt_model_type gpt_model_path encoder_model_path "
            "max_tokens_in_paged_kv_cache max_attention_window_size sink_token_length "
            "batch_scheduler_policy kv_cache_free_gpu_mem_fraction cross_kv_cache_fraction "
            "kv_cache_host_memory_bytes kv_cache_onboard_blocks exclude_input_in_output "
            "cancellation_check_period_ms stats_check_period_ms iter_stats_max_iterations "
            "request_stats_max_iterations enable_kv_cache_reuse normalize_log_probs "
            "enable_chunked_context gpu_device_ids participant_ids num_nodes "
            "lora_cache_optimal_adapter_size lora_cache_max_adapter_size "
            "lora_cache_gpu_memory_fraction lora_cache_host_memory_bytes lora_prefetch_dir "
            "decoding_mode lookahead_window_size lookahead_ngram_size "
            "lookahead_verification_set_size medusa_choices eagle_choices gpu_weights_percent "
            "enable_context_fmha_fp32_acc multi_block_mode cuda_graph_mode cuda_graph_cache_size "
            "speculative_decoding_fast_logits tokenizer_dir guided_decoding_backend "
            "xgrammar_tokenizer_info_path enable_trt_overlap"
        ).split()
    ),
    "tensorrt_llm_bls": (
        ("accumulate_tokens", "accumulate_tokens"),
        ("tensorrt_llm_model_name", "tensorrt_llm_model_name"),
        ("tensorrt_llm_draft_model_name", "tensorrt_llm_draft_model_name"),
        ("multimodal_encoders_name", "multimodal_encoders_name"),
    ),
    "ensemble": (),
}
BACKEND = {
    "tensorrt_llm": 'backend: "${triton_backend}"',
    "ensemble": 'platform: "ensemble"',
}
TYPED_IO = {  # typed variables beyond the batch size, as upstream places them
    "tensorrt_llm": 'input [ { name: "prompt_embedding_table" '
    "data_type: ${prompt_embedding_table_data_type} dims: [ -1 ] optional: true } ]\n"
    'output [ { name: "generation_logits" data_type: ${logits_datatype} dims: [ -1 ] } ]',
    "tensorrt_llm_bls": 'input [ { name: "x" data_type: TYPE_INT32 dims: [ -1 ] } ]\n'
    'output [ { name: "y" data_type: ${logits_datatype} dims: [ -1 ] } ]\n'
    "instance_group [ { count: ${bls_instance_count} kind: KIND_CPU } ]",
    "preprocessing": "instance_group [ { count: ${preprocessing_instance_count} kind: KIND_CPU } ]",
    "postprocessing": "instance_group [ { count: ${postprocessing_instance_count} "
    "kind: KIND_CPU } ]",
}
MODELS = tuple(PARAMS)


def _template(name: str) -> str:
    lines = [f'name: "{name}"', BACKEND.get(name, 'backend: "python"')]
    lines.append("max_batch_size: ${triton_max_batch_size}")
    if name in ("tensorrt_llm", "tensorrt_llm_bls"):
        lines.append("model_transaction_policy { decoupled: ${decoupled_mode} }")
    lines.append(TYPED_IO.get(name, 'input [ { name: "x" data_type: TYPE_INT32 dims: [ -1 ] } ]'))
    for key, var in PARAMS[name]:
        lines.append(f'parameters: {{ key: "{key}" value: {{ string_value: "${{{var}}}" }} }}')
    return "\n".join(lines) + "\n"


def _templates(root: Path) -> Path:
    for name in MODELS:
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(_template(name))
        if name != "ensemble":
            (root / name / "1" / "model.py").write_text("# release model file stand-in\n")
    return root


def _engine(root: Path) -> Path:
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"version": "1.2.0", "build_config": {}}))
    (root / "rank0.engine").write_bytes(b"\0" * 16)
    return root


def test_legacy_ensemble_with_standin_templates(tiny_ckpt, tmp_path):
    cfg = PackageConfig(
        backend="trtllm",
        max_batch_size=16,
        decoupled=True,
        kv_cache_free_gpu_mem_fraction=0.7,
        engine_dir=str(_engine(tmp_path / "engine")),
        legacy_templates=str(_templates(tmp_path / "tpl")),
    )
    summary = package_triton(tiny_ckpt, tmp_path / "repo", cfg)
    repo = Path(summary["repo"])
    assert summary["layout"] == "inflight_batcher_llm"
    assert sorted(summary["models"]) == sorted(MODELS)
    for name in MODELS:
        msg = parse_file(repo / name / "config.pbtxt")
        assert msg.name == name and msg.max_batch_size == 16
        params = {k: v.string_value for k, v in msg.parameters.items()}
        # Every parameter of the template survives: filled, or kept as `${var}` exactly as
        # NVIDIA's fill_template.py leaves it (upstream treats that as unset).
        assert set(params) == {key for key, _ in PARAMS[name]}, name
        for key, var in PARAMS[name]:
            assert params[key] == f"${{{var}}}" or "${" not in params[key], (name, key)
        for key in REQUIRED_PARAMETERS.get(name, ()):
            assert key in params, (name, key)  # upstream reads these without a default
        if "tokenizer_dir" in params:
            assert params["tokenizer_dir"] == str(Path(tiny_ckpt).resolve())
    trt = parse_file(repo / "tensorrt_llm" / "config.pbtxt")
    params = {k: v.string_value for k, v in trt.parameters.items()}
    assert trt.backend == "tensorrtllm" and trt.model_transaction_policy.decoupled
    assert params["gpt_model_path"] == str((tmp_path / "engine").resolve())
    assert params["gpt_model_type"] == "inflight_fused_batching"
    assert params["kv_cache_free_gpu_mem_fraction"] == "0.7"
    assert params["guided_decoding_backend"] == "${guided_decoding_backend}"
    assert params["xgrammar_tokenizer_info_path"] == "${xgrammar_tokenizer_info_path}"
    assert params["lora_prefetch_dir"] == "${lora_prefetch_dir}"
    pre = {k: v.string_value for k, v in parse_file(repo / "preprocessing" / "config.pbtxt")
           .parameters.items()}  # fmt: skip
    assert pre["multimodal_model_path"] == "${multimodal_model_path}"
    from tritonclient.grpc import model_config_pb2

    dtype = model_config_pb2.DataType.Name(trt.input[0].data_type)
    assert dtype == "TYPE_FP16"  # prompt_embedding_table_data_type, as upstream's docs fill it
    assert (repo / "preprocessing" / "1" / "model.py").is_file()


def test_fill_refuses_an_unset_typed_field():
    with pytest.raises(InputError, match="no_such_count"):
        fill('name: "m"\nmax_batch_size: ${no_such_count}\n', {}, where="t")


def test_legacy_needs_engine_and_templates(tiny_ckpt, tmp_path):
    not_engine = tmp_path / "e"
    not_engine.mkdir()
    with pytest.raises(InputError, match="not a TensorRT-LLM engine"):
        package_triton(
            tiny_ckpt, tmp_path / "r", PackageConfig(backend="trtllm", engine_dir=str(not_engine))
        )
    with pytest.raises(InputError, match="templates"):
        package_triton(
            tiny_ckpt,
            tmp_path / "r",
            PackageConfig(backend="trtllm", engine_dir=str(_engine(tmp_path / "eng"))),
        )
    assert not (tmp_path / "r").exists()
